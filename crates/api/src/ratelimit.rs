//! Rate limiting, on a Gateway's http server (its requests) or in a
//! TrafficSetting (the requests each instance of a service takes). For
//! now `local`: a token bucket kept by each proxy on its own (each gateway
//! replica, each instance's sidecar), with Envoy's local rate limit
//! filter; a request over it gets 429 with `x-ratelimit-*` headers.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::problems::{Problems, field};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimiting {
    /// Each proxy's own limit.
    pub local: Option<LocalLimit>,
    /// Count what would be refused, and refuse nothing.
    #[serde(default)]
    pub shadow_mode: bool,
}

/// `requests` per `unit`, refilled whole each `unit`; up to `burst` at
/// once [default: `requests`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalLimit {
    pub requests: u32,
    pub unit: TimeUnit,
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    Second,
    Minute,
    Hour,
    Day,
}

impl TimeUnit {
    pub fn seconds(self) -> u64 {
        match self {
            TimeUnit::Second => 1,
            TimeUnit::Minute => 60,
            TimeUnit::Hour => 3_600,
            TimeUnit::Day => 86_400,
        }
    }
}

impl RateLimiting {
    pub(crate) fn check(&self, at: &str, problems: &mut Problems) {
        let Some(local) = &self.local else {
            problems.add(at, "sets no limit: give local");
            return;
        };
        let local_at = field(at, "local");
        if local.requests == 0 {
            problems.add(
                field(&local_at, "requests"),
                "must be at least 1 (to refuse everything, use an authorization rule)",
            );
        }
        if local.burst == Some(0) {
            problems.add(field(&local_at, "burst"), "must be at least 1");
        }
    }
}
