//! Local rate limits → Envoy's local rate limit filter: on the listener
//! with no bucket of its own (so it limits nothing there), and each
//! virtual host's token bucket in the route table, where a change applies
//! without a new listener.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::XRateLimitHeadersRfcVersion;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;

use super::RateLimit;
use super::convert::{duration, uint};

pub(super) const LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";
const STAT_PREFIX: &str = "local_rate_limit";

fn percent(value: u32) -> RuntimeFractionalPercent {
    RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: value,
            denominator: DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    }
}

/// The filter on a listener: each virtual host brings its bucket.
pub(super) fn local_rate_limit_filter() -> HttpFilter {
    HttpFilter {
        name: LOCAL_RATE_LIMIT.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(pack_any(LocalRateLimit {
            stat_prefix: STAT_PREFIX.into(),
            ..Default::default()
        }))),
        ..Default::default()
    }
}

impl RateLimit {
    /// The virtual host's bucket, with the `x-ratelimit-*` headers on
    /// every answer.
    pub(super) fn per_filter_config(&self) -> Any {
        pack_any(LocalRateLimit {
            stat_prefix: STAT_PREFIX.into(),
            token_bucket: Some(TokenBucket {
                max_tokens: self.max_tokens,
                tokens_per_fill: Some(uint(self.tokens_per_fill)),
                fill_interval: Some(duration(self.fill_interval_ms)),
            }),
            filter_enabled: Some(percent(100)),
            filter_enforced: Some(percent(if self.shadow { 0 } else { 100 })),
            enable_x_ratelimit_headers: XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
            ..Default::default()
        })
    }
}

// Shared limits → Envoy's rate limit filter, asking the rate limit
// service over gRPC; each virtual host's rules as its `rate_limits`
// descriptors (one per rule), and the service's rules as its resource.

use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::{ApiVersion, GrpcService};
use envoy_types::pb::envoy::config::ratelimit::v3::RateLimitServiceConfig;
use envoy_types::pb::envoy::config::route::v3::RateLimit as XdsRateLimit;
use envoy_types::pb::envoy::config::route::v3::rate_limit::Action;
use envoy_types::pb::envoy::config::route::v3::rate_limit::action::{
    ActionSpecifier, GenericKey, MetaData, RemoteAddress, RequestHeaders, meta_data,
};
use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3::RateLimit as RateLimitFilter;
use envoy_types::pb::envoy::r#type::metadata::v3::MetadataKey;
use envoy_types::pb::envoy::r#type::metadata::v3::metadata_key::{PathSegment, path_segment};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use weft_xds::ratelimit::{DOMAIN, RULE_KEY, RateLimitRule, RateLimitRules, RuleDimension};

use super::jwt::{JWT_FILTER, JWT_PAYLOAD};
use super::{DescriptorEntry, RateLimitService, ServiceRule, SharedLimit};

const RATE_LIMIT: &str = "envoy.filters.http.ratelimit";

impl DescriptorEntry {
    /// The descriptor key its entry has, which the service's rule names.
    pub fn key(&self) -> String {
        match self {
            // The key Envoy's remote address action writes.
            DescriptorEntry::ClientAddress => "remote_address".into(),
            DescriptorEntry::Header(name) => format!("header.{name}"),
            DescriptorEntry::Claim(name) => format!("claim.{name}"),
            DescriptorEntry::Path => "path".into(),
            DescriptorEntry::Method => "method".into(),
        }
    }

    fn action(&self) -> Action {
        let header = |name: &str| {
            ActionSpecifier::RequestHeaders(RequestHeaders {
                header_name: name.into(),
                descriptor_key: self.key(),
                skip_if_absent: false,
            })
        };
        let specifier = match self {
            // Envoy's downstream address: the peer's, since gateways and
            // sidecars never trust x-forwarded-for for it.
            DescriptorEntry::ClientAddress => ActionSpecifier::RemoteAddress(RemoteAddress {}),
            DescriptorEntry::Header(name) => header(name),
            DescriptorEntry::Path => header(":path"),
            DescriptorEntry::Method => header(":method"),
            DescriptorEntry::Claim(name) => ActionSpecifier::Metadata(MetaData {
                descriptor_key: self.key(),
                metadata_key: Some(MetadataKey {
                    key: JWT_FILTER.into(),
                    path: [JWT_PAYLOAD, name.as_str()]
                        .into_iter()
                        .map(|key| PathSegment {
                            segment: Some(path_segment::Segment::Key(key.into())),
                        })
                        .collect(),
                }),
                source: meta_data::Source::Dynamic as i32,
                ..Default::default()
            }),
        };
        Action {
            action_specifier: Some(specifier),
        }
    }
}

impl SharedLimit {
    pub(super) fn to_xds(&self) -> XdsRateLimit {
        let rule = Action {
            action_specifier: Some(ActionSpecifier::GenericKey(GenericKey {
                descriptor_value: self.rule.clone(),
                descriptor_key: RULE_KEY.into(),
                default_value: String::new(),
            })),
        };
        XdsRateLimit {
            actions: std::iter::once(rule)
                .chain(self.dimensions.iter().map(DescriptorEntry::action))
                .collect(),
            ..Default::default()
        }
    }
}

impl RateLimitService {
    /// The filter on a listener whose virtual hosts have shared limits:
    /// after authorization (a refused caller spends nothing), with the
    /// `x-ratelimit-*` headers the service's answer fills in.
    pub(super) fn filter(&self) -> HttpFilter {
        HttpFilter {
            name: RATE_LIMIT.into(),
            config_type: Some(HttpFilterConfig::TypedConfig(pack_any(RateLimitFilter {
                domain: DOMAIN.into(),
                request_type: "both".into(),
                timeout: Some(duration(self.timeout_ms)),
                failure_mode_deny: self.fail_closed,
                rate_limit_service: Some(RateLimitServiceConfig {
                    grpc_service: Some(GrpcService {
                        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                            cluster_name: self.cluster.clone(),
                            // Else the cluster's name, whose `|` no
                            // HTTP/2 server takes in an authority.
                            authority: weft_identity::RATELIMIT_ACCOUNT.into(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }),
                    transport_api_version: ApiVersion::V3 as i32,
                }),
                enable_x_ratelimit_headers: XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
                // No decision is not "too many requests": the client may
                // retry at once.
                status_on_error: Some(HttpStatus {
                    code: StatusCode::ServiceUnavailable as i32,
                }),
                ..Default::default()
            }))),
            ..Default::default()
        }
    }
}

/// The rate limit service's resource.
pub(super) fn rules_to_xds(rules: &[ServiceRule]) -> RateLimitRules {
    RateLimitRules {
        rules: rules
            .iter()
            .map(|rule| RateLimitRule {
                id: rule.id.clone(),
                name: rule.name.clone(),
                requests: rule.requests,
                unit_seconds: rule.unit_seconds,
                shadow_mode: rule.shadow,
                dimensions: rule
                    .dimensions
                    .iter()
                    .map(|d| RuleDimension {
                        key: d.key.clone(),
                        value: d.value.clone(),
                        prefix: d.prefix.clone(),
                        strip_query: d.strip_query,
                    })
                    .collect(),
            })
            .collect(),
    }
}
