//! How a proxy sends its edge the request counts its listeners keep:
//! Envoy's OpenTelemetry stat sink over the ADS connection's cluster
//! (mutual TLS, the workload credential), every [`FLUSH_INTERVAL`], as
//! deltas, and only the stats under `weft.` (the stats access loggers'
//! series, see the edge's translation): Envoy's thousands of its own
//! stats stay on its admin port.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{GrpcService, TypedExtensionConfig};
use envoy_types::pb::envoy::config::metrics::v3::stats_sink::ConfigType as SinkConfigType;
use envoy_types::pb::envoy::config::metrics::v3::{
    HistogramBucketSettings, StatsConfig, StatsSink,
};
use envoy_types::pb::envoy::extensions::matching::common_inputs::stats::v3::StatFullNameMatchInput;
use envoy_types::pb::envoy::extensions::stat_sinks::open_telemetry::v3::SinkConfig;
use envoy_types::pb::envoy::extensions::stat_sinks::open_telemetry::v3::sink_config::{
    DropAction, ProtocolSpecifier,
};
use envoy_types::pb::envoy::extensions::tracers::opentelemetry::resource_detectors::v3::StaticConfigResourceDetectorConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    StringMatcher as EnvoyStringMatcher, string_matcher::MatchPattern as EnvoyPattern,
};
use envoy_types::pb::xds::core::v3::TypedExtensionConfig as XdsExtension;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::predicate::single_predicate::Matcher as PredicateMatcher;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::predicate::{
    MatchType, SinglePredicate,
};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::{FieldMatcher, Predicate};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::on_match::OnMatch as OnMatchKind;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{MatcherList, MatcherType, OnMatch};
use envoy_types::pb::xds::r#type::matcher::v3::{
    Matcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::util::pack_any;
use weft_api::traffic_stats::DURATION_BOUNDS_SECONDS;

/// How often a proxy sends its counts.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// The stats sent, by the start of their full name.
const SENT_PREFIX: &str = "weft.";

/// The resource attribute naming the proxy (its node id), as
/// OpenTelemetry's semantic conventions name an instance.
pub const INSTANCE_ATTRIBUTE: &str = "service.instance.id";

/// Upper bounds of the request duration buckets in microseconds, the
/// unit the stats access loggers record.
pub fn duration_buckets_us() -> Vec<f64> {
    DURATION_BOUNDS_SECONDS
        .iter()
        .map(|s| (s * 1e6).round())
        .collect()
}

/// The sink: to `edge` (the bootstrap's gRPC service for the edge),
/// naming the proxy by `node`.
pub fn sink(edge: GrpcService, node: &str) -> StatsSink {
    let not_sent = Predicate {
        match_type: Some(MatchType::NotMatcher(Box::new(Predicate {
            match_type: Some(MatchType::SinglePredicate(SinglePredicate {
                input: Some(XdsExtension {
                    name: "stat_full_name".into(),
                    typed_config: Some(pack_any(StatFullNameMatchInput {})),
                }),
                matcher: Some(PredicateMatcher::ValueMatch(StringMatcher {
                    match_pattern: Some(MatchPattern::Prefix(SENT_PREFIX.into())),
                    ignore_case: false,
                })),
            })),
        }))),
    };
    let drop_the_rest = Matcher {
        matcher_type: Some(MatcherType::MatcherList(MatcherList {
            matchers: vec![FieldMatcher {
                predicate: Some(not_sent),
                on_match: Some(OnMatch {
                    on_match: Some(OnMatchKind::Action(XdsExtension {
                        name: "drop".into(),
                        typed_config: Some(pack_any(DropAction {})),
                    })),
                    keep_matching: false,
                }),
            }],
        })),
        on_no_match: None,
    };
    let resource = StaticConfigResourceDetectorConfig {
        attributes: [(INSTANCE_ATTRIBUTE.to_string(), node.to_string())].into(),
    };
    let config = SinkConfig {
        protocol_specifier: Some(ProtocolSpecifier::GrpcService(edge)),
        resource_detectors: vec![TypedExtensionConfig {
            name: "envoy.tracers.opentelemetry.resource_detectors.static_config".into(),
            typed_config: Some(pack_any(resource)),
        }],
        // Deltas: an edge that restarts counts only what happened since,
        // and a proxy that restarts does not look like a counter reset.
        report_counters_as_deltas: true,
        report_histograms_as_deltas: true,
        custom_metric_conversions: Some(drop_the_rest),
        ..Default::default()
    };
    StatsSink {
        name: "envoy.stat_sinks.open_telemetry".into(),
        config_type: Some(SinkConfigType::TypedConfig(pack_any(config))),
    }
}

/// The buckets of weft's duration histograms.
pub fn config() -> StatsConfig {
    StatsConfig {
        histogram_bucket_settings: vec![HistogramBucketSettings {
            r#match: Some(EnvoyStringMatcher {
                match_pattern: Some(EnvoyPattern::Prefix(SENT_PREFIX.into())),
                ignore_case: false,
            }),
            buckets: duration_buckets_us(),
            ..Default::default()
        }],
        ..Default::default()
    }
}
