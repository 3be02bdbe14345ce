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
