//! Rate limiting, on a Gateway's http server (its requests) or in a
//! TrafficSetting (the requests each instance of a service takes).
//!
//! Two kinds of limit, which may be combined:
//! - `local`: a token bucket each proxy keeps on its own (each gateway
//!   replica, each instance's sidecar), with Envoy's local rate limit filter;
//! - `rules`: limits shared by every proxy of the cluster, counted by
//!   `weft ratelimit` in Redis through Envoy's rate limit service API. Each
//!   rule picks the requests it counts by its dimensions; every rule that
//!   matches a request counts it, and a request over any rule is refused.
//!
//! A refused request gets 429 with `x-ratelimit-*` headers.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::problems::{Problems, check_dns_label, field};

/// How long a proxy waits for the rate limit service before it gives up
/// on a decision (and lets the request through, or refuses it with
/// `failClosed`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimiting {
    /// Each proxy's own limit.
    pub local: Option<LocalLimit>,
    /// Limits shared by the cluster's proxies, counted by `weft ratelimit`.
    #[serde(default)]
    pub rules: Vec<RateLimitRule>,
    /// When no decision comes in time (the rate limit service or its
    /// Redis is down, or slow), refuse the request (503) instead of
    /// letting it through.
    #[serde(default)]
    pub fail_closed: bool,
    /// How long to wait for a decision (e.g. 20ms) [default: 20ms].
    pub timeout: Option<String>,
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

/// A shared limit on the requests its dimensions pick.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitRule {
    /// Names the rule in metrics and logs; unique in its rateLimiting.
    pub name: String,
    /// What the rule counts by. None: every request, in one counter. A
    /// dimension with `value` (or `prefix`) takes only matching requests;
    /// without, each distinct value gets its own counter (per client
    /// address, per user). A request that lacks a dimension (no such
    /// header, no token) is not counted by the rule.
    #[serde(default)]
    pub dimensions: Vec<Dimension>,
    pub limit: Limit,
}

/// `requests` per `unit`, in a window that starts on the unit's boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limit {
    pub requests: u32,
    pub unit: TimeUnit,
}

/// One property of a request a rule counts by.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dimension {
    pub of: DimensionOf,
    /// The header's or the claim's name (`header`, `claim`).
    pub name: Option<String>,
    /// Only requests with exactly this value.
    pub value: Option<String>,
    /// Only requests whose value starts with this (`path`, `header`).
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DimensionOf {
    /// The address of the connection's peer (never `x-forwarded-for`).
    ClientAddress,
    /// A request header.
    Header,
    /// A claim of the request's verified JWT (the server's
    /// `authentication.jwt`), e.g. `sub`.
    Claim,
    /// The request's path, without its query.
    Path,
    /// The request's method.
    Method,
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
    /// How long a proxy waits for a decision.
    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
            .unwrap_or(DEFAULT_TIMEOUT)
    }

    /// Whether a proxy asks the rate limit service (rules, not only a
    /// local limit).
    pub fn is_shared(&self) -> bool {
        !self.rules.is_empty()
    }

    pub(crate) fn check(&self, at: &str, problems: &mut Problems) {
        if self.local.is_none() && self.rules.is_empty() {
            problems.add(at, "sets no limit: give local, rules or both");
            return;
        }
        if let Some(local) = &self.local {
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
        let mut names = std::collections::BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let rule_at = field(at, &format!("rules[{i}]"));
            rule.check(&rule_at, problems);
            if !names.insert(rule.name.as_str()) {
                problems.add(
                    field(&rule_at, "name"),
                    format!("{:?} names two rules", rule.name),
                );
            }
        }
        if let Some(timeout) = &self.timeout {
            let timeout_at = field(at, "timeout");
            match humantime::parse_duration(timeout) {
                Ok(d) if d.is_zero() => problems.add(timeout_at, "must be longer than zero"),
                Ok(d) if d > Duration::from_secs(10) => problems.add(
                    timeout_at,
                    "must be at most 10s: every request waits for the decision",
                ),
                Ok(_) => {}
                Err(_) => problems.add(
                    timeout_at,
                    format!("{timeout:?} is not a duration like 20ms or 1s"),
                ),
            }
            if self.rules.is_empty() {
                problems.add(
                    field(at, "timeout"),
                    "applies to rules, and none are given (a local limit needs no service)",
                );
            }
        }
        if self.fail_closed && self.rules.is_empty() {
            problems.add(
                field(at, "failClosed"),
                "applies to rules, and none are given (a local limit needs no service)",
            );
        }
    }
}

impl RateLimitRule {
    fn check(&self, at: &str, problems: &mut Problems) {
        if let Err(message) = check_dns_label(&self.name) {
            problems.add(field(at, "name"), message);
        }
        if self.limit.requests == 0 {
            problems.add(
                field(&field(at, "limit"), "requests"),
                "must be at least 1 (to refuse everything, use an authorization rule)",
            );
        }
        for (i, dimension) in self.dimensions.iter().enumerate() {
            dimension.check(&field(at, &format!("dimensions[{i}]")), problems);
        }
    }
}

impl Dimension {
    fn check(&self, at: &str, problems: &mut Problems) {
        let named = matches!(self.of, DimensionOf::Header | DimensionOf::Claim);
        match (&self.name, named) {
            (None, true) => problems.add(
                field(at, "name"),
                format!("is required for a {} dimension", self.of.as_str()),
            ),
            (Some(_), false) => problems.add(
                field(at, "name"),
                format!(
                    "applies to header and claim dimensions, not {}",
                    self.of.as_str()
                ),
            ),
            (Some(name), true) if self.of == DimensionOf::Header => {
                crate::traffic::check_header_name(name, &field(at, "name"), problems)
            }
            (Some(name), true) if name.is_empty() => {
                problems.add(field(at, "name"), "must not be empty")
            }
            _ => {}
        }
        if self.value.is_some() && self.prefix.is_some() {
            problems.add(at, "give value or prefix, not both");
        }
        if self.prefix.is_some() && !matches!(self.of, DimensionOf::Path | DimensionOf::Header) {
            problems.add(
                field(at, "prefix"),
                format!(
                    "applies to path and header dimensions, not {}",
                    self.of.as_str()
                ),
            );
        }
        match (self.of, self.value.as_deref(), self.prefix.as_deref()) {
            (DimensionOf::Path, Some(p), _) | (DimensionOf::Path, _, Some(p))
                if !p.starts_with('/') =>
            {
                let which = if self.value.is_some() {
                    "value"
                } else {
                    "prefix"
                };
                problems.add(field(at, which), format!("{p:?} must start with /"));
            }
            (DimensionOf::Method, Some(m), _)
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) =>
            {
                problems.add(
                    field(at, "value"),
                    format!("{m:?} is not a method like GET or POST"),
                );
            }
            (DimensionOf::ClientAddress, Some(a), _) if a.parse::<std::net::IpAddr>().is_err() => {
                problems.add(field(at, "value"), format!("{a:?} is not an IP address"));
            }
            _ => {}
        }
    }
}

impl DimensionOf {
    pub fn as_str(self) -> &'static str {
        match self {
            DimensionOf::ClientAddress => "clientAddress",
            DimensionOf::Header => "header",
            DimensionOf::Claim => "claim",
            DimensionOf::Path => "path",
            DimensionOf::Method => "method",
        }
    }
}
