//! Counted stats sent to the edge as Envoy's OpenTelemetry stats sink
//! sends them: every flush interval, OTLP metrics over the ADS server's
//! connection, the proxy named by the bootstrap's resource attributes,
//! only the stats under the sink's prefix, counters and histograms as
//! deltas since the last export.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::bootstrap::MetricsSink;
use crate::stats::{Key, Stats};
use crate::xds::XdsError;

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.tags.iter().map(|(k, v)| string(k, v)).collect()
}

/// What was last sent, to send only what changed since.
#[derive(Default)]
struct Sent {
    counters: HashMap<Key, u64>,
    histograms: HashMap<Key, (Vec<u64>, u64, u64)>,
}

/// The export of what changed since `sent`, or none when nothing did.
fn export(
    sink: &MetricsSink,
    stats: &Stats,
    sent: &mut Sent,
) -> Option<ExportMetricsServiceRequest> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let (counters, histograms) = stats.under(&sink.prefix);
    let mut sums: HashMap<String, Vec<NumberDataPoint>> = HashMap::new();
    for (key, value) in counters {
        let before = sent.counters.insert(key.clone(), value).unwrap_or(0);
        let delta = value.saturating_sub(before);
        if delta == 0 {
            continue;
        }
        sums.entry(key.name.clone())
            .or_default()
            .push(NumberDataPoint {
                attributes: attributes(&key),
                time_unix_nano: now,
                value: Some(number_data_point::Value::AsInt(delta as i64)),
                ..Default::default()
            });
    }
    let mut timed: HashMap<String, Vec<HistogramDataPoint>> = HashMap::new();
    for (key, histogram) in histograms {
        let (buckets, count, sum) = histogram.read();
        let (was_buckets, was_count, was_sum) = sent
            .histograms
            .insert(key.clone(), (buckets.clone(), count, sum))
            .unwrap_or_else(|| (vec![0; buckets.len()], 0, 0));
        if count == was_count {
            continue;
        }
        timed
            .entry(key.name.clone())
            .or_default()
            .push(HistogramDataPoint {
                attributes: attributes(&key),
                time_unix_nano: now,
                count: count - was_count,
                sum: Some((sum - was_sum) as f64),
                bucket_counts: buckets
                    .iter()
                    .zip(&was_buckets)
                    .map(|(n, was)| n - was)
                    .collect(),
                explicit_bounds: histogram.bounds().to_vec(),
                ..Default::default()
            });
    }
    if sums.is_empty() && timed.is_empty() {
        return None;
    }
    let delta = AggregationTemporality::Delta as i32;
    let metrics = sums
        .into_iter()
        .map(|(name, data_points)| Metric {
            name,
            data: Some(metric::Data::Sum(Sum {
                data_points,
                aggregation_temporality: delta,
                is_monotonic: true,
            })),
            ..Default::default()
        })
        .chain(timed.into_iter().map(|(name, data_points)| Metric {
            name,
            data: Some(metric::Data::Histogram(Histogram {
                data_points,
                aggregation_temporality: delta,
            })),
            ..Default::default()
        }))
        .collect();
    Some(ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: sink.attributes.iter().map(|(k, v)| string(k, v)).collect(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

/// Sends the stats every flush interval for as long as the proxy runs,
/// over channels `connect` opens; an export that fails is dropped (the
/// next carries only later changes, as Envoy's sink).
pub async fn run(
    sink: MetricsSink,
    stats: std::sync::Arc<Stats>,
    mut connect: impl AsyncFnMut() -> Result<tonic::transport::Channel, XdsError>,
) {
    let mut sent = Sent::default();
    let mut client = None;
    let mut every = tokio::time::interval(sink.every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(request) = export(&sink, &stats, &mut sent) else {
            continue;
        };
        if client.is_none() {
            match connect().await {
                Ok(channel) => client = Some(MetricsServiceClient::new(channel)),
                Err(e) => {
                    tracing::debug!(error = %e, "stats not sent: the edge cannot be reached");
                    continue;
                }
            }
        }
        if let Some(c) = client.as_mut()
            && let Err(status) = c.export(request).await
        {
            tracing::warn!(%status, "stats not taken by the edge");
            client = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn only_changes_under_the_prefix_are_sent_as_deltas() {
        let stats = Stats::new(None);
        let sink = MetricsSink {
            attributes: vec![("service.instance.id".into(), "client-1".into())],
            prefix: "weft.".into(),
            every: std::time::Duration::from_secs(5),
        };
        let key = Key {
            name: "weft.outbound_requests".into(),
            tags: vec![("code".into(), "200".into())],
        };
        stats
            .tagged_counter(key.clone())
            .fetch_add(3, Ordering::Relaxed);
        stats
            .counter("cluster.x.upstream_rq_total")
            .fetch_add(9, Ordering::Relaxed);
        let mut sent = Sent::default();
        let first = export(&sink, &stats, &mut sent).unwrap();
        let metrics = &first.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 1);
        assert_eq!(metrics[0].name, "weft.outbound_requests");
        assert!(
            export(&sink, &stats, &mut sent).is_none(),
            "nothing changed"
        );
        stats.tagged_counter(key).fetch_add(2, Ordering::Relaxed);
        let next = export(&sink, &stats, &mut sent).unwrap();
        let Some(metric::Data::Sum(sum)) =
            &next.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            panic!("a sum")
        };
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsInt(2))
        );
    }
}
