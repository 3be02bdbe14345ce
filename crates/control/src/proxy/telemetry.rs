//! What a listener reports about its requests → Envoy: the caller's
//! stamp on the way out, its reading on the way in, and the per-request
//! counts (Envoy's stats access logger) its proxy sends the edge.
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
use serde::{Deserialize, Serialize};

use super::Telemetry;

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
/// A request sent (tags: [`TAG_CLUSTER`], [`TAG_PRINCIPAL`],
/// [`TAG_CODE`], [`TAG_FLAGS`]).
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

    /// The stats access logger counting each finished request.
    pub(super) fn access_log(&self) -> AccessLog {
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
