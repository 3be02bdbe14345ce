//! The bootstrap weft-proxy starts from: the very file the agent writes
//! for Envoy (binary `Bootstrap`), read for what a sidecar needs — who it
//! is (the node), where its ADS server is and how to reach it (a static
//! cluster with mutual TLS, the credential as initial metadata), where
//! its SDS socket is, and its admin address. Without dynamic resources it
//! is a static configuration (YAML or JSON too, as Envoy takes it): its
//! listeners, clusters and secrets, converted as xDS resources are.
//! Anything else in it is refused by name, as an xDS resource would be.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::StaticResources;
use envoy_types::pb::envoy::config::core::v3::address::Address as XdsAddress;
use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, ApiConfigSource, Node};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use prost::Message;

use crate::config::{Cluster, Discovery, Listener, Target, UpstreamTls};
use crate::tls::Secrets;
use crate::xds::Resources;

/// What weft-proxy takes from its bootstrap.
#[derive(Debug, Clone)]
pub struct Start {
    pub node: Node,
    pub source: Source,
    pub admin: SocketAddr,
    /// Upper bounds of the duration histograms (microseconds).
    pub histogram_bounds: Option<Vec<f64>>,
}

/// Where the listeners and clusters come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Delta ADS from the edge, secrets from the agent (a sidecar).
    Ads(Box<AdsLink>),
    /// Given whole in the bootstrap's static resources, with their
    /// secrets.
    Static(Resources, Arc<Secrets>),
}

/// How a sidecar reaches its edge and its agent.
#[derive(Debug, Clone)]
pub struct AdsLink {
    /// The ADS server's address and the mutual TLS to it.
    pub address: SocketAddr,
    pub tls: UpstreamTls,
    /// gRPC initial metadata for the ADS stream (the credential).
    pub metadata: Vec<(String, String)>,
    /// The agent's SDS server (a Unix socket).
    pub sds_socket: PathBuf,
    /// Where counted stats are sent (OTLP over the ADS server's
    /// connection), if anywhere.
    pub metrics: Option<MetricsSink>,
}

/// Envoy's OpenTelemetry stats sink, as weft's agent configures it.
#[derive(Debug, Clone)]
pub struct MetricsSink {
    /// Resource attributes naming the proxy.
    pub attributes: Vec<(String, String)>,
    /// Only stats whose full name starts with it are sent.
    pub prefix: String,
    pub every: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("bootstrap {path}: {problem}")]
pub struct BootstrapError {
    path: String,
    problem: String,
}

/// Reads the bootstrap at `path`: binary protobuf, or YAML or JSON (by
/// the extension) as Envoy takes them.
pub fn read(path: &Path) -> Result<Start, BootstrapError> {
    let fail = |problem: String| BootstrapError {
        path: path.display().to_string(),
        problem,
    };
    let mut bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    if matches!(extension, "yaml" | "yml" | "json") {
        let json: serde_json::Value =
            serde_norway::from_slice(&bytes).map_err(|e| fail(format!("not YAML or JSON: {e}")))?;
        bytes = weft_xds::json::from_json("envoy.config.bootstrap.v3.Bootstrap", json)
            .map_err(|e| fail(e.to_string()))?;
    }
    let bootstrap =
        Bootstrap::decode(bytes.as_slice()).map_err(|e| fail(format!("not a Bootstrap: {e}")))?;
    from_bootstrap(&bootstrap).map_err(fail)
}

fn from_bootstrap(bootstrap: &Bootstrap) -> Result<Start, String> {
    let node = bootstrap.node.clone().ok_or("node: missing")?;
    let admin = bootstrap
        .admin
        .as_ref()
        .and_then(|a| a.address.as_ref())
        .and_then(|a| match &a.address {
            Some(XdsAddress::SocketAddress(s)) => {
                let port = match s.port_specifier {
                    Some(PortSpecifier::PortValue(p)) => u16::try_from(p).ok()?,
                    _ => return None,
                };
                Some(SocketAddr::new(s.address.parse().ok()?, port))
            }
            _ => None,
        })
        .ok_or("admin.address: an IP socket address")?;
    let histogram_bounds = bootstrap
        .stats_config
        .as_ref()
        .and_then(|c| c.histogram_bucket_settings.first())
        .map(|b| b.buckets.clone());
    let source = match &bootstrap.dynamic_resources {
        Some(_) => Source::Ads(Box::new(ads_link(bootstrap)?)),
        None => {
            if !bootstrap.stats_sinks.is_empty() {
                return Err("stats_sinks: only with dynamic_resources (ADS)".into());
            }
            let statics = bootstrap.static_resources.clone().unwrap_or_default();
            let secrets = crate::sds::secrets_of(&statics.secrets)?;
            Source::Static(static_resources(&statics)?, Arc::new(secrets))
        }
    };
    Ok(Start {
        node,
        source,
        admin,
        histogram_bounds,
    })
}

/// A static bootstrap's listeners and clusters, converted as xDS's are.
fn static_resources(statics: &StaticResources) -> Result<Resources, String> {
    let mut resources = Resources::default();
    let mut problems = Vec::new();
    for (i, cluster) in statics.clusters.iter().enumerate() {
        match Cluster::try_from(cluster) {
            Ok(c) => {
                let key = (crate::xds::CLUSTER_TYPE.to_string(), c.name.clone());
                resources
                    .raw
                    .insert(key, envoy_types::util::pack_any(cluster.clone()));
                resources.clusters.insert(c.name.clone(), c.into());
            }
            Err(e) => problems.push(format!("static_resources.clusters[{i}]: {e}")),
        }
    }
    for (i, listener) in statics.listeners.iter().enumerate() {
        match Listener::try_from(listener) {
            Ok(l) => {
                let key = (crate::xds::LISTENER_TYPE.to_string(), l.name.clone());
                resources
                    .raw
                    .insert(key, envoy_types::util::pack_any(listener.clone()));
                resources.listeners.insert(l.name.clone(), l.into());
            }
            Err(e) => problems.push(format!("static_resources.listeners[{i}]: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(resources)
    } else {
        Err(problems.join("; "))
    }
}

fn ads_link(bootstrap: &Bootstrap) -> Result<AdsLink, String> {
    let dynamic = bootstrap
        .dynamic_resources
        .as_ref()
        .ok_or("dynamic_resources: missing")?;
    let ads: &ApiConfigSource = dynamic
        .ads_config
        .as_ref()
        .ok_or("dynamic_resources.ads_config: missing")?;
    // Delta only: the state-of-the-world protocol is not implemented.
    if ads.api_type
        != envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType::DeltaGrpc as i32
    {
        return Err(
            "dynamic_resources.ads_config.api_type: weft-proxy speaks delta xDS only (DELTA_GRPC)"
                .into(),
        );
    }
    let [service] = ads.grpc_services.as_slice() else {
        return Err("dynamic_resources.ads_config.grpc_services: exactly one".into());
    };
    let Some(TargetSpecifier::EnvoyGrpc(target)) = &service.target_specifier else {
        return Err("dynamic_resources.ads_config.grpc_services[0]: only envoy_grpc".into());
    };
    let metadata = service
        .initial_metadata
        .iter()
        .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
        .collect();
    let statics = bootstrap
        .static_resources
        .as_ref()
        .map(|s| s.clusters.as_slice())
        .unwrap_or_default();
    let ads_cluster = statics
        .iter()
        .find(|c| c.name == target.cluster_name)
        .ok_or_else(|| {
            format!(
                "static_resources.clusters: no cluster {:?} (the ADS server's)",
                target.cluster_name
            )
        })?;
    let converted = Cluster::try_from(ads_cluster).map_err(|e| e.to_string())?;
    let address = match &converted.discovery {
        Discovery::Static(assignment) => assignment
            .groups
            .iter()
            .flat_map(|g| &g.endpoints)
            .find_map(|e| match e.address {
                Target::Ip(address) => Some(address),
                Target::Host(..) => None,
            }),
        _ => None,
    }
    .ok_or_else(|| format!("Cluster {}: one static IP endpoint", converted.name))?;
    let tls = converted.tls.clone().ok_or_else(|| {
        format!(
            "Cluster {}: the ADS server is reached over mutual TLS",
            converted.name
        )
    })?;
    // The SDS socket: the one static cluster whose endpoint is a pipe.
    let sds_socket = statics
        .iter()
        .filter_map(|c| c.load_assignment.as_ref())
        .flat_map(|a| &a.endpoints)
        .flat_map(|l| &l.lb_endpoints)
        .find_map(|e| match &e.host_identifier {
            Some(HostIdentifier::Endpoint(endpoint)) => match &endpoint.address {
                Some(Address {
                    address: Some(XdsAddress::Pipe(pipe)),
                }) => Some(PathBuf::from(&pipe.path)),
                _ => None,
            },
            _ => None,
        })
        .ok_or("static_resources.clusters: no cluster reaches an SDS socket (a pipe)")?;
    let metrics = match bootstrap.stats_sinks.as_slice() {
        [] => None,
        [sink] => Some(metrics_sink(sink, &target.cluster_name, bootstrap)?),
        _ => return Err("stats_sinks: at most one".into()),
    };
    Ok(AdsLink {
        address,
        tls,
        metadata,
        sds_socket,
        metrics,
    })
}

const OTEL_SINK: &str = "envoy.stat_sinks.open_telemetry";

/// The OpenTelemetry sink: over the ADS server's cluster, as deltas, with
/// static resource attributes, dropping every stat outside one prefix.
fn metrics_sink(
    sink: &envoy_types::pb::envoy::config::metrics::v3::StatsSink,
    ads_cluster: &str,
    bootstrap: &Bootstrap,
) -> Result<MetricsSink, String> {
    use envoy_types::pb::envoy::config::metrics::v3::stats_sink::ConfigType;
    use envoy_types::pb::envoy::extensions::stat_sinks::open_telemetry::v3::SinkConfig;
    use envoy_types::pb::envoy::extensions::stat_sinks::open_telemetry::v3::sink_config::ProtocolSpecifier;
    use envoy_types::pb::envoy::extensions::tracers::opentelemetry::resource_detectors::v3::StaticConfigResourceDetectorConfig;
    use envoy_types::pb::xds::r#type::matcher::v3::matcher::MatcherType;
    use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::predicate::MatchType;
    use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::predicate::single_predicate::Matcher as PredicateMatcher;
    use envoy_types::pb::xds::r#type::matcher::v3::string_matcher::MatchPattern;
    let here = "stats_sinks[0]";
    let Some(ConfigType::TypedConfig(any)) = &sink.config_type else {
        return Err(format!("{here}: only a typed_config"));
    };
    if sink.name != OTEL_SINK {
        return Err(format!("{here}: only {OTEL_SINK}"));
    }
    let config = SinkConfig::decode(any.value.as_slice())
        .map_err(|e| format!("{here}.typed_config: {e}"))?;
    match &config.protocol_specifier {
        Some(ProtocolSpecifier::GrpcService(service))
            if matches!(&service.target_specifier,
                Some(TargetSpecifier::EnvoyGrpc(g)) if g.cluster_name == ads_cluster) => {}
        _ => {
            return Err(format!(
                "{here}.typed_config.grpc_service: only the ADS server's cluster"
            ));
        }
    }
    if !config.report_counters_as_deltas || !config.report_histograms_as_deltas {
        return Err(format!("{here}.typed_config: only deltas"));
    }
    let mut attributes = Vec::new();
    for detector in &config.resource_detectors {
        let detected = detector
            .typed_config
            .as_ref()
            .and_then(|a| StaticConfigResourceDetectorConfig::decode(a.value.as_slice()).ok())
            .ok_or_else(|| format!("{here}.typed_config.resource_detectors: only static ones"))?;
        attributes.extend(detected.attributes);
    }
    // What is kept: the stats a "not prefix P" predicate does not drop.
    let prefix = config
        .custom_metric_conversions
        .as_ref()
        .and_then(|m| match &m.matcher_type {
            Some(MatcherType::MatcherList(list)) => list.matchers.first(),
            _ => None,
        })
        .and_then(|field| match &field.predicate.as_ref()?.match_type {
            Some(MatchType::NotMatcher(inner)) => match &inner.match_type {
                Some(MatchType::SinglePredicate(single)) => match &single.matcher {
                    Some(PredicateMatcher::ValueMatch(m)) => match &m.match_pattern {
                        Some(MatchPattern::Prefix(p)) => Some(p.clone()),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .ok_or_else(|| {
            format!(
                "{here}.typed_config.custom_metric_conversions: only dropping what is not under one prefix"
            )
        })?;
    let every = bootstrap
        .stats_flush_interval
        .as_ref()
        .map_or(std::time::Duration::from_secs(5), |d| {
            std::time::Duration::new(d.seconds.max(1) as u64, 0)
        });
    Ok(MetricsSink {
        attributes,
        prefix,
        every,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::DynamicResources;

    #[test]
    fn a_state_of_the_world_bootstrap_is_refused_by_field() {
        use envoy_types::pb::envoy::config::bootstrap::v3::Admin;
        use envoy_types::pb::envoy::config::core::v3::SocketAddress;
        let bootstrap = Bootstrap {
            node: Some(Node::default()),
            dynamic_resources: Some(DynamicResources {
                ads_config: Some(ApiConfigSource::default()),
                ..Default::default()
            }),
            admin: Some(Admin {
                address: Some(Address {
                    address: Some(XdsAddress::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(PortSpecifier::PortValue(0)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let error = from_bootstrap(&bootstrap).unwrap_err();
        assert!(
            error.starts_with("dynamic_resources.ads_config.api_type"),
            "{error}"
        );
    }
}
