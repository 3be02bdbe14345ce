//! The OTLP metrics service proxies send their request counts to, on
//! the edge's xDS port (mutual TLS). An export names its proxy by
//! `service.instance.id`; it is taken only from a registered proxy over
//! a connection made with that proxy's own certificate.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as NumberValue;
use opentelemetry_proto::tonic::metrics::v1::{HistogramDataPoint, NumberDataPoint};
use tonic::{Request, Response, Status};
use weft_agent::stats::{INSTANCE_ATTRIBUTE, duration_buckets_us};
use weft_agent::workload::Workload;
use weft_identity::transport::Peer;

use super::{MeshMetrics, Party, Reporter, Series, UNKNOWN};
use crate::proxy::telemetry::{
    INBOUND_DURATION, INBOUND_REQUESTS, OUTBOUND_DURATION, OUTBOUND_REQUESTS, STATS_SCOPE,
    TAG_CLUSTER, TAG_CODE, TAG_FLAGS, TAG_PEER_CLUSTER, TAG_PRINCIPAL, TAG_SOURCE,
};
use crate::registry::Registry;
use crate::translate::ServiceKey;

/// The gRPC service.
pub fn service(
    metrics: Arc<MeshMetrics>,
    registry: Registry,
    cluster: &str,
) -> MetricsServiceServer<Receiver> {
    MetricsServiceServer::new(Receiver {
        metrics,
        registry,
        cluster: cluster.to_string(),
        bounds_us: duration_buckets_us(),
    })
}

pub struct Receiver {
    metrics: Arc<MeshMetrics>,
    registry: Registry,
    cluster: String,
    bounds_us: Vec<f64>,
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

/// A tag's value; Envoy writes `-` for an empty substitution in some
/// versions and nothing in others.
fn tag<'a>(attributes: &'a [KeyValue], key: &str) -> &'a str {
    match attribute(attributes, key) {
        Some("-") | None => "",
        Some(value) => value,
    }
}

impl Receiver {
    /// The workload behind an export, checked against the connection.
    fn proxy(&self, node: Option<&str>, peer: Option<&Peer>) -> Result<Workload, Status> {
        let node = node.ok_or_else(|| {
            Status::invalid_argument(format!(
                "weft edge {}: the export names no proxy (resource attribute {INSTANCE_ATTRIBUTE})",
                self.cluster
            ))
        })?;
        let workload = self.registry.workload(node).ok_or_else(|| {
            Status::permission_denied(format!(
                "weft edge {}: no proxy {node} is registered here",
                self.cluster
            ))
        })?;
        let own = peer.and_then(|p| p.id.as_ref()).is_some_and(|id| {
            id.namespace() == workload.namespace && id.service_account() == workload.service_account
        });
        if !own {
            return Err(Status::permission_denied(format!(
                "weft edge {}: the connection's certificate is not proxy {node}'s ({}/{})",
                self.cluster, workload.namespace, workload.service_account
            )));
        }
        Ok(workload)
    }

    fn own_party(&self, workload: &Workload, peer: Option<&Peer>) -> Party {
        Party {
            cluster: self.cluster.clone(),
            namespace: workload.namespace.clone(),
            service: workload.service.clone(),
            version: workload.labels.get("version").cloned().unwrap_or_default(),
            principal: peer
                .and_then(|p| p.id.as_ref())
                .map(ToString::to_string)
                .unwrap_or_default(),
        }
    }

    /// The series a data point of `inbound` (or outbound) counts.
    fn series(&self, own: &Party, inbound: bool, attributes: &[KeyValue]) -> Series {
        let principal = tag(attributes, TAG_PRINCIPAL).to_string();
        let code = match tag(attributes, TAG_CODE) {
            "" => "0".to_string(),
            code => code.to_string(),
        };
        let flags = tag(attributes, TAG_FLAGS).to_string();
        let flags = if flags.is_empty() && attribute(attributes, TAG_FLAGS).is_some() {
            "-".to_string()
        } else {
            flags
        };
        if inbound {
            let mut source = caller(tag(attributes, TAG_SOURCE));
            source.principal = if principal.is_empty() {
                UNKNOWN.into()
            } else {
                principal.clone()
            };
            Series {
                reporter: Reporter::Destination,
                source,
                destination: own.clone(),
                code,
                flags,
                mtls: !principal.is_empty(),
            }
        } else {
            let cluster = tag(attributes, TAG_CLUSTER);
            // A cluster's name is a DNS label; an address is any other
            // host (or none was chosen).
            let answered_in = tag(attributes, TAG_PEER_CLUSTER);
            let answered_in = if !answered_in.is_empty()
                && answered_in
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                answered_in.to_string()
            } else {
                UNKNOWN.to_string()
            };
            let destination = match ServiceKey::from_cluster_name(cluster) {
                Some((key, subset)) => Party {
                    cluster: answered_in,
                    namespace: key.namespace,
                    service: key.name,
                    version: subset.unwrap_or_default().to_string(),
                    principal: principal.clone(),
                },
                None => Party {
                    service: if cluster.is_empty() {
                        UNKNOWN.into()
                    } else {
                        cluster.to_string()
                    },
                    ..Party::unknown()
                },
            };
            Series {
                reporter: Reporter::Source,
                source: own.clone(),
                destination,
                code,
                flags,
                mtls: !principal.is_empty(),
            }
        }
    }

    fn counts(&self, own: &Party, inbound: bool, points: &[NumberDataPoint]) {
        for point in points {
            let count = match point.value {
                Some(NumberValue::AsInt(n)) => u64::try_from(n).unwrap_or(0),
                Some(NumberValue::AsDouble(n)) if n > 0.0 => n as u64,
                _ => 0,
            };
            self.metrics
                .count(self.series(own, inbound, &point.attributes), count);
        }
    }

    fn durations(&self, own: &Party, inbound: bool, points: &[HistogramDataPoint]) {
        for point in points {
            // Bounds other than weft's (another release's proxy) cannot
            // be added to the others.
            let same = point.explicit_bounds.len() == self.bounds_us.len()
                && point
                    .explicit_bounds
                    .iter()
                    .zip(&self.bounds_us)
                    .all(|(a, b)| (a - b).abs() < 0.5);
            if !same {
                self.metrics.dropped_series.inc();
                continue;
            }
            let series = self.series(own, inbound, &point.attributes);
            let never_arrived = series.never_arrived();
            let series = Series {
                flags: String::new(),
                ..series
            };
            let sum_seconds = point.sum.unwrap_or(0.0) / 1e6;
            self.metrics
                .time(series, &point.bucket_counts, sum_seconds, never_arrived);
        }
    }
}

/// Who called, from the stamp `CLUSTER/NAMESPACE/SERVICE/VERSION` its
/// proxy set; unknown without one.
fn caller(stamp: &str) -> Party {
    let parts: Vec<&str> = stamp.split('/').collect();
    match parts.as_slice() {
        [cluster, namespace, service, version] if !service.is_empty() => Party {
            cluster: cluster.to_string(),
            namespace: namespace.to_string(),
            service: service.to_string(),
            version: version.to_string(),
            principal: String::new(),
        },
        _ => Party::unknown(),
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let peer = request.extensions().get::<Peer>().cloned();
        let export = request.into_inner();
        for resource_metrics in &export.resource_metrics {
            let attributes = resource_metrics
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or_default();
            let workload =
                match self.proxy(attribute(attributes, INSTANCE_ATTRIBUTE), peer.as_ref()) {
                    Ok(workload) => workload,
                    Err(status) => {
                        self.metrics.refused_exports.inc();
                        tracing::warn!(message = status.message(), "request counts refused");
                        return Err(status);
                    }
                };
            let own = self.own_party(&workload, peer.as_ref());
            for metric in resource_metrics
                .scope_metrics
                .iter()
                .flat_map(|s| &s.metrics)
            {
                let Some(name) = metric
                    .name
                    .strip_prefix(STATS_SCOPE)
                    .and_then(|n| n.strip_prefix('.'))
                else {
                    continue;
                };
                match (name, &metric.data) {
                    (INBOUND_REQUESTS, Some(Data::Sum(sum))) => {
                        self.counts(&own, true, &sum.data_points)
                    }
                    (OUTBOUND_REQUESTS, Some(Data::Sum(sum))) => {
                        self.counts(&own, false, &sum.data_points)
                    }
                    (INBOUND_DURATION, Some(Data::Histogram(h))) => {
                        self.durations(&own, true, &h.data_points)
                    }
                    (OUTBOUND_DURATION, Some(Data::Histogram(h))) => {
                        self.durations(&own, false, &h.data_points)
                    }
                    _ => {}
                }
            }
        }
        self.metrics.exports.inc();
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_names_the_caller_or_nothing() {
        let party = caller("east-1/shop/web/v2");
        assert_eq!(
            (
                party.cluster.as_str(),
                party.service.as_str(),
                party.version.as_str()
            ),
            ("east-1", "web", "v2")
        );
        assert_eq!(caller(""), Party::unknown());
        assert_eq!(caller("a/b"), Party::unknown());
        assert_eq!(caller("a/b//v1"), Party::unknown());
    }
}
