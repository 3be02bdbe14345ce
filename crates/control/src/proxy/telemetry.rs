//! What a listener reports about its requests → Envoy: the caller's
//! stamp on the way out, its reading on the way in, the per-request
//! counts (Envoy's stats access logger) its proxy sends the edge, spans
//! (Envoy's OpenTelemetry tracer, W3C `traceparent`), and one JSON log
//! object per request (to standard error, or OTLP log records).
//!
//! RED numbers come from stock Envoy: the stats access logger turns each
//! finished request into a counter and a duration histogram tagged with
//! what the request carried (caller, response code and flags); the
//! proxy's OpenTelemetry stat sink (in its bootstrap) sends the edge only
//! these `weft.` stats, as deltas. The edge adds what it knows about the
//! proxy itself (service, version, cluster) and serves the series.

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType as AccessLogConfig;
use envoy_types::pb::envoy::config::common::mutation_rules::v3::HeaderMutation as HeaderMutationRule;
use envoy_types::pb::envoy::config::common::mutation_rules::v3::header_mutation::Action as HeaderMutationAction;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::access_loggers::stats::v3::Config as StatsLog;
use envoy_types::pb::envoy::extensions::access_loggers::stats::v3::config::histogram::Unit;
use envoy_types::pb::envoy::extensions::access_loggers::stats::v3::config::{
    Counter, Histogram, Stat, Tag,
};
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::{
    HeaderMutation as HeaderMutationFilter, Mutations,
};
use envoy_types::pb::envoy::extensions::filters::http::header_to_metadata::v3::Config as HeaderToMetadata;
use envoy_types::pb::envoy::extensions::filters::http::header_to_metadata::v3::config::{
    KeyValuePair, Rule, ValueType,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::r#type::v3::Scope;
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};
use envoy_types::util::pack_any;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format as SubstitutionFormat;
use envoy_types::pb::envoy::config::core::v3::{
    GrpcService, SubstitutionFormatString, TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig;
use envoy_types::pb::envoy::config::trace::v3::tracing::Http as TraceProvider;
use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType as TraceProviderConfig;
use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StderrAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stderr_access_log::AccessLogFormat as StderrFormat;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as HcmTracing;
use envoy_types::pb::envoy::extensions::tracers::opentelemetry::resource_detectors::v3::StaticConfigResourceDetectorConfig;
use envoy_types::pb::envoy::r#type::tracing::v3::CustomTag;
use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag::{Literal, Type as CustomTagType};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Struct as ProtoStruct, Value as ProtoValue, value::Kind as ProtoKind};
use envoy_types::pb::opentelemetry::proto::common::v1::any_value::Value as OtelValue;
use envoy_types::pb::opentelemetry::proto::common::v1::{
    AnyValue as OtelAnyValue, KeyValue as OtelKeyValue, KeyValueList as OtelKeyValueList,
};
use serde::{Deserialize, Serialize};

use super::{RequestLog, Telemetry, Tracing};

/// The header a caller's proxy stamps on each call: who calls
/// (`CLUSTER/NAMESPACE/SERVICE/VERSION`), for the callee's counts. The
/// callee's proxy moves it into request metadata and drops it, so the
/// app never sees it; whatever the app sent is replaced.
pub const SOURCE_HEADER: &str = "x-weft-source";

/// The dynamic metadata namespace the callee keeps the stamp in.
const METADATA_NAMESPACE: &str = "weft";

/// The stats scope of every series the edge collects. The bootstrap's
/// sink sends only stats under it.
pub const STATS_SCOPE: &str = "weft";

/// A request received (tags: [`TAG_SOURCE`], [`TAG_PRINCIPAL`],
/// [`TAG_CODE`], [`TAG_FLAGS`]).
pub const INBOUND_REQUESTS: &str = "inbound_requests";
/// Its duration in microseconds (the same tags but flags).
pub const INBOUND_DURATION: &str = "inbound_duration";
/// A request sent (tags: [`TAG_CLUSTER`], [`TAG_PEER_CLUSTER`],
/// [`TAG_PRINCIPAL`], [`TAG_CODE`], [`TAG_FLAGS`]).
pub const OUTBOUND_REQUESTS: &str = "outbound_requests";
/// Its duration in microseconds (the same tags but flags).
pub const OUTBOUND_DURATION: &str = "outbound_duration";

/// The caller's stamp, as received (empty: none).
pub const TAG_SOURCE: &str = "source";
/// The peer's SPIFFE ID: the caller's (inbound), the callee's
/// (outbound); empty without mutual TLS.
pub const TAG_PRINCIPAL: &str = "principal";
pub const TAG_CODE: &str = "code";
/// Envoy's response flags (`-`: none).
pub const TAG_FLAGS: &str = "flags";
/// The upstream cluster a call went to.
pub const TAG_CLUSTER: &str = "cluster";
/// Which weft cluster answered: the EDS hostname of the host it went to
/// (a service's instances carry their cluster's name, other clusters'
/// gateways theirs); an address for any other host.
pub const TAG_PEER_CLUSTER: &str = "peer_cluster";

/// How many distinct series one listener may create in its proxy; more
/// are not counted (Envoy's scope limit), so a flood of odd values
/// cannot grow a proxy's memory without bound.
const MAX_SERIES: u32 = 5_000;

/// Which side of a call a listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Side {
    /// Requests to this proxy's workload: counted as the callee saw them.
    Inbound,
    /// Requests the workload (or gateway) makes: counted as the caller
    /// saw them, and stamped with the caller.
    Outbound,
}

impl Telemetry {
    /// The filters that carry the caller's stamp: set on the way out,
    /// read (and removed) on the way in. First in the chain, so a
    /// request refused by a later filter is still attributed.
    pub(super) fn filters(&self) -> Vec<HttpFilter> {
        match (self.side, &self.source) {
            (Side::Outbound, Some(source)) => vec![stamp_filter(source)],
            (Side::Outbound, None) => Vec::new(),
            (Side::Inbound, _) => vec![read_stamp_filter()],
        }
    }

    /// What each finished request is written to: the counts, and the
    /// log line unless it is off.
    pub(super) fn access_logs(&self) -> Vec<AccessLog> {
        let line = match &self.requests_log {
            RequestLog::Stderr => Some(stderr_log(self.side)),
            RequestLog::Otlp(collector) => Some(otlp_log(self.side, collector)),
            RequestLog::Off => None,
        };
        std::iter::once(self.counts()).chain(line).collect()
    }

    /// The HTTP connection manager's tracing, if the listener traces.
    pub(super) fn tracing(&self) -> Option<HcmTracing> {
        self.tracing.as_ref().map(Tracing::to_xds)
    }

    /// The stats access logger counting each finished request.
    fn counts(&self) -> AccessLog {
        let peer = match self.side {
            Side::Inbound => "%DOWNSTREAM_PEER_URI_SAN%",
            Side::Outbound => "%UPSTREAM_PEER_URI_SAN%",
        };
        let who = match self.side {
            Side::Inbound => (
                TAG_SOURCE,
                format!("%DYNAMIC_METADATA({METADATA_NAMESPACE}:{TAG_SOURCE})%"),
            ),
            Side::Outbound => (TAG_CLUSTER, "%UPSTREAM_CLUSTER%".to_string()),
        };
        let (requests, duration) = match self.side {
            Side::Inbound => (INBOUND_REQUESTS, INBOUND_DURATION),
            Side::Outbound => (OUTBOUND_REQUESTS, OUTBOUND_DURATION),
        };
        let tag = |name: &str, value: &str| Tag {
            name: name.into(),
            value_format: value.into(),
            ..Default::default()
        };
        let mut tags = vec![
            tag(who.0, &who.1),
            tag(TAG_PRINCIPAL, peer),
            tag(TAG_CODE, "%RESPONSE_CODE%"),
        ];
        if self.side == Side::Outbound {
            tags.push(tag(TAG_PEER_CLUSTER, "%UPSTREAM_HOST_NAME_WITHOUT_PORT%"));
        }
        let histogram_tags = tags.clone();
        tags.push(tag(TAG_FLAGS, "%RESPONSE_FLAGS%"));
        let config = StatsLog {
            stats_scope: Some(Scope {
                prefix: STATS_SCOPE.into(),
                max_counters: Some(UInt32Value { value: MAX_SERIES }),
                max_histograms: Some(UInt32Value { value: MAX_SERIES }),
                ..Default::default()
            }),
            counters: vec![Counter {
                stat: Some(Stat {
                    name: requests.into(),
                    tags,
                }),
                value_fixed: Some(UInt64Value { value: 1 }),
                ..Default::default()
            }],
            histograms: vec![Histogram {
                stat: Some(Stat {
                    name: duration.into(),
                    tags: histogram_tags,
                }),
                unit: Unit::Microseconds as i32,
                // From the first byte received to the last byte sent, in
                // microseconds (`%DURATION%` has only milliseconds).
                value_format: "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%".into(),
            }],
            ..Default::default()
        };
        AccessLog {
            name: "envoy.access_loggers.stats".into(),
            config_type: Some(AccessLogConfig::TypedConfig(pack_any(config))),
            ..Default::default()
        }
    }
}

fn stamp_filter(source: &str) -> HttpFilter {
    let stamp = HeaderMutationFilter {
        mutations: Some(Mutations {
            request_mutations: vec![HeaderMutationRule {
                action: Some(HeaderMutationAction::Append(HeaderValueOption {
                    header: Some(HeaderValue {
                        key: SOURCE_HEADER.into(),
                        value: source.into(),
                        ..Default::default()
                    }),
                    append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                    ..Default::default()
                })),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    HttpFilter {
        name: "weft.telemetry.stamp-source".into(),
        config_type: Some(HttpFilterConfig::TypedConfig(pack_any(stamp))),
        ..Default::default()
    }
}

fn read_stamp_filter() -> HttpFilter {
    let read = HeaderToMetadata {
        request_rules: vec![Rule {
            header: SOURCE_HEADER.into(),
            on_header_present: Some(KeyValuePair {
                metadata_namespace: METADATA_NAMESPACE.into(),
                key: TAG_SOURCE.into(),
                r#type: ValueType::String as i32,
                ..Default::default()
            }),
            remove: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    HttpFilter {
        name: "envoy.filters.http.header_to_metadata".into(),
        config_type: Some(HttpFilterConfig::TypedConfig(pack_any(read))),
        ..Default::default()
    }
}

impl Tracing {
    fn to_xds(&self) -> HcmTracing {
        let Tracing {
            collector,
            service_name,
            service_namespace,
            sampling_basis_points,
            tags,
        } = self;
        let resource = StaticConfigResourceDetectorConfig {
            attributes: [("service.namespace".to_string(), service_namespace.clone())].into(),
        };
        let tracer = OpenTelemetryConfig {
            grpc_service: Some(collector_service(collector)),
            service_name: service_name.clone(),
            resource_detectors: vec![TypedExtensionConfig {
                name: "envoy.tracers.opentelemetry.resource_detectors.static_config".into(),
                typed_config: Some(pack_any(resource)),
            }],
            ..Default::default()
        };
        HcmTracing {
            provider: Some(TraceProvider {
                name: "envoy.tracers.opentelemetry".into(),
                config_type: Some(TraceProviderConfig::TypedConfig(pack_any(tracer))),
            }),
            random_sampling: Some(Percent {
                value: f64::from(*sampling_basis_points) / 100.0,
            }),
            custom_tags: tags
                .iter()
                .map(|(tag, value)| CustomTag {
                    tag: tag.clone(),
                    r#type: Some(CustomTagType::Literal(Literal {
                        value: value.clone(),
                    })),
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// The fields of a request's log line: name → Envoy's substitution.
fn log_fields(side: Side) -> Vec<(&'static str, &'static str)> {
    let mut fields = vec![
        ("start_time", "%START_TIME%"),
        ("method", "%REQ(:METHOD)%"),
        ("authority", "%REQ(:AUTHORITY)%"),
        ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
        ("protocol", "%PROTOCOL%"),
        ("response_code", "%RESPONSE_CODE%"),
        ("response_flags", "%RESPONSE_FLAGS%"),
        ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
        ("duration_ms", "%DURATION%"),
        ("bytes_received", "%BYTES_RECEIVED%"),
        ("bytes_sent", "%BYTES_SENT%"),
        ("route", "%ROUTE_NAME%"),
        ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
        ("upstream_host", "%UPSTREAM_HOST%"),
        ("trace_id", "%TRACE_ID%"),
        ("request_id", "%REQ(X-REQUEST-ID)%"),
        ("user_agent", "%REQ(USER-AGENT)%"),
    ];
    match side {
        Side::Inbound => fields.extend([
            ("side", "inbound"),
            // Verified by this listener's mutual TLS.
            ("caller", "%DOWNSTREAM_PEER_URI_SAN%"),
            ("source", "%DYNAMIC_METADATA(weft:source)%"),
        ]),
        Side::Outbound => fields.extend([
            ("side", "outbound"),
            // The connection's own address, never x-forwarded-for.
            ("client", "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%"),
            ("caller", "%DOWNSTREAM_PEER_URI_SAN%"),
            ("upstream_peer", "%UPSTREAM_PEER_URI_SAN%"),
        ]),
    }
    fields
}

/// One JSON object per request on the proxy's standard error.
fn stderr_log(side: Side) -> AccessLog {
    let fields = log_fields(side)
        .into_iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                ProtoValue {
                    kind: Some(ProtoKind::StringValue(value.into())),
                },
            )
        })
        .collect();
    let format = SubstitutionFormatString {
        format: Some(SubstitutionFormat::JsonFormat(ProtoStruct { fields })),
        ..Default::default()
    };
    AccessLog {
        name: "envoy.access_loggers.stderr".into(),
        config_type: Some(AccessLogConfig::TypedConfig(pack_any(StderrAccessLog {
            access_log_format: Some(StderrFormat::LogFormat(format)),
        }))),
        ..Default::default()
    }
}

/// The cluster of an OTLP collector at `address` (`host:port`).
pub fn collector_cluster(address: &str) -> String {
    format!("telemetry|{address}")
}

/// Envoy's gRPC client for the collector at `address`; the authority is
/// the address (the cluster's name, with its `|`, is no valid one).
fn collector_service(address: &str) -> GrpcService {
    GrpcService {
        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
            cluster_name: collector_cluster(address),
            authority: address.to_string(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// One OpenTelemetry log record per request, to the collector at
/// `collector`: the fields as attributes.
fn otlp_log(side: Side, collector: &str) -> AccessLog {
    let string = |value: &str| OtelAnyValue {
        value: Some(OtelValue::StringValue(value.into())),
    };
    let attributes = log_fields(side)
        .into_iter()
        .map(|(name, value)| OtelKeyValue {
            key: name.into(),
            value: Some(string(value)),
            ..Default::default()
        })
        .collect();
    let config = OpenTelemetryAccessLogConfig {
        log_name: "weft-requests".into(),
        grpc_service: Some(collector_service(collector)),
        body: Some(string(
            "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE%",
        )),
        attributes: Some(OtelKeyValueList { values: attributes }),
        ..Default::default()
    };
    AccessLog {
        name: "envoy.access_loggers.open_telemetry".into(),
        config_type: Some(AccessLogConfig::TypedConfig(pack_any(config))),
        ..Default::default()
    }
}
