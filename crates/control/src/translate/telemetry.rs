//! What each proxy reports: its listeners' side of a call, the stamp a
//! caller puts on its calls so the callee counts it by service, version
//! and cluster (the caller's SPIFFE ID alone names only its namespace and
//! service account), and, from the TelemetrySettings that apply to its
//! workload's service, spans and where request logs go.

use weft_agent::workload::Workload;
use weft_api::edge::ConfigError;
use weft_api::telemetry::{AccessLogTo, TelemetrySettingSpec};

use super::Config;
use super::parse::LevelClaims;
use super::plan::ServiceKey;
use super::resilience::single_host_cluster;
use crate::proxy::{
    Cluster, ExternalHost, FixedHost, RequestLog, Side, Telemetry, Tracing, collector_cluster,
};

/// The label of a workload's version.
const VERSION_LABEL: &str = "version";

/// The share of requests traced when a setting gives none: 1%.
const DEFAULT_SAMPLING_BASIS_POINTS: u32 = 100;

/// `CLUSTER/NAMESPACE/SERVICE/VERSION`: who `w` is, as callees count it.
pub fn source_stamp(cluster: &str, w: &Workload) -> String {
    format!(
        "{cluster}/{}/{}/{}",
        w.namespace,
        w.service,
        w.labels.get(VERSION_LABEL).map_or("", String::as_str)
    )
}

/// What a workload's proxy reports, and the collector clusters that
/// takes.
pub(super) struct WorkloadTelemetry {
    source: String,
    tracing: Option<Tracing>,
    requests_log: RequestLog,
    pub(super) clusters: Vec<Cluster>,
}

impl WorkloadTelemetry {
    /// From the TelemetrySettings for `w`'s service, merged part by part
    /// (workspace < group < service); two settings of one level setting
    /// one part are reported, the first by path applying.
    pub(super) fn new(config: &Config, w: &Workload, errors: &mut Vec<ConfigError>) -> Self {
        let key = ServiceKey {
            namespace: w.namespace.clone(),
            name: w.service.clone(),
        };
        let mut tracing = None;
        let mut access_log = None;
        if let Some(workspace) = config.workspace_of(&w.namespace) {
            let levels = config.levels(
                &config.telemetry_settings,
                &config.groups,
                &workspace.path,
                &key,
            );
            for level in levels {
                let mut claims = LevelClaims::new(&key);
                for setting in level {
                    let spec: &TelemetrySettingSpec = &setting.spec;
                    let mut claim = |part: &'static str, present: bool| {
                        claims.claim(&setting.path, part, present, errors)
                    };
                    if claim("tracing", spec.tracing.is_some()) {
                        tracing = spec.tracing.clone();
                    }
                    if claim("accessLog", spec.access_log.is_some()) {
                        access_log = spec.access_log.clone();
                    }
                }
            }
        }
        let mut clusters = Vec::new();
        let mut collector = |address: &str| -> String {
            let name = collector_cluster(address);
            if !clusters.iter().any(|c: &Cluster| c.name == name) {
                clusters.push(collector_cluster_of(&name, address));
            }
            address.to_string()
        };
        let tracing = tracing.map(|t| Tracing {
            collector: collector(&t.collector),
            service_name: w.service.clone(),
            service_namespace: w.namespace.clone(),
            sampling_basis_points: t
                .sampling_percent
                .map_or(DEFAULT_SAMPLING_BASIS_POINTS, |p| {
                    (p * 100.0).round() as u32
                }),
            tags: t.tags,
        });
        let requests_log = match access_log {
            None => RequestLog::Stderr,
            Some(log) => match (log.to, log.collector) {
                (AccessLogTo::Otlp, Some(address)) => RequestLog::Otlp(collector(&address)),
                (AccessLogTo::Off, _) => RequestLog::Off,
                _ => RequestLog::Stderr,
            },
        };
        WorkloadTelemetry {
            source: source_stamp(&config.cluster, w),
            tracing,
            requests_log,
            clusters,
        }
    }

    /// A listener the workload calls out through.
    pub(super) fn caller(&self) -> Telemetry {
        Telemetry {
            side: Side::Outbound,
            source: Some(self.source.clone()),
            tracing: self.tracing.clone(),
            requests_log: self.requests_log.clone(),
        }
    }

    /// A listener that receives the workload's calls.
    pub(super) fn callee(&self) -> Telemetry {
        Telemetry {
            side: Side::Inbound,
            source: None,
            tracing: self.tracing.clone(),
            requests_log: self.requests_log.clone(),
        }
    }
}

/// An OTLP collector at `address` (`host:port`, checked at apply):
/// plaintext HTTP/2.
fn collector_cluster_of(name: &str, address: &str) -> Cluster {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "4317"));
    Cluster {
        fixed: Some(FixedHost::External(ExternalHost {
            host: host.to_string(),
            port: port.parse().unwrap_or(4317),
            tls: false,
        })),
        grpc: true,
        ..single_host_cluster(name)
    }
}
