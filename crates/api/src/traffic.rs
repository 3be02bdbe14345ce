//! Traffic kinds: how requests to a service are routed (ServiceRoute) and
//! the resilience settings of calls to it (TrafficSetting). Both belong to
//! the traffic concern: traffic editors own them.
//!
//! A TrafficSetting attached to a workspace is the default for every
//! service in it; one in a traffic group applies there; one naming a
//! `service` overrides the others for that service.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::problems::{Problems, check_dns_label, field, index};
use crate::specs::Spec;

/// A service in the mesh: the name its workloads announce, in a namespace.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    pub name: String,
    pub namespace: String,
}

impl ServiceRef {
    pub(crate) fn check(&self, at: &str, problems: &mut Problems) {
        for (name, value) in [("name", &self.name), ("namespace", &self.namespace)] {
            if let Err(e) = check_dns_label(value) {
                problems.add(field(at, name), e);
            }
        }
    }
}

/// Longest duration any setting accepts.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses "250ms", "5s", "1m30s"; reports what is wrong at `at`.
pub(crate) fn duration(value: &str, at: &str, problems: &mut Problems) -> Option<Duration> {
    match humantime::parse_duration(value) {
        Ok(d) if d.is_zero() => problems.add(at, "must be longer than zero"),
        Ok(d) if d > MAX_DURATION => problems.add(at, "must be at most 24h"),
        Ok(d) => return Some(d),
        Err(_) => problems.add(
            at,
            format!("{value:?} is not a duration like 250ms, 5s or 1m30s"),
        ),
    }
    None
}

/// Header names as HTTP/2 carries them: lowercase tokens.
pub(crate) fn check_header_name(name: &str, at: &str, problems: &mut Problems) {
    let ok = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
        });
    if !ok {
        problems.add(at, format!("{name:?} is not a lowercase HTTP header name"));
    }
}

/// Reports unless exactly one of the named options is set.
pub(crate) fn exactly_one(at: &str, options: &[(&str, bool)], problems: &mut Problems) {
    let set = options.iter().filter(|(_, is_set)| *is_set).count();
    if set != 1 {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        problems.add(at, format!("set exactly one of {}", names.join(", ")));
    }
}

// ---------------------------------------------------------------- routes

/// How requests to one service are routed: ordered rules, first match wins.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRouteSpec {
    pub service: ServiceRef,
    /// Named groups of the service's instances, by their labels.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Tried in order; a rule without `matches` catches everything and
    /// must be last.
    #[schemars(length(min = 1))]
    pub rules: Vec<RouteRule>,
    /// Keep a client on one instance by hashing a header or a cookie.
    pub sticky_session: Option<StickySession>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    /// Instances with all of these labels (e.g. `version: v2`).
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// The rule applies when any of these matches (none: always).
    #[serde(default)]
    pub matches: Vec<RequestMatch>,
    /// Where matching requests go; weights are shares of 100.
    #[schemars(length(min = 1))]
    pub destinations: Vec<Destination>,
}

/// All conditions given must hold.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatch {
    pub path: Option<PathMatch>,
    pub method: Option<Method>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    /// Query parameters (routes only: authorization rules cannot see
    /// them).
    #[serde(default)]
    pub query: Vec<QueryMatch>,
}

/// The path without its query: set exactly one.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    pub exact: Option<String>,
    /// Segment-agnostic: `/api` matches `/api`, `/api/v1` and `/apis`.
    pub prefix: Option<String>,
    /// The whole path must match (RE2 syntax, as Envoy's).
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    /// The whole value must match (RE2 syntax).
    pub regex: Option<String>,
    /// `true`: the header must be there; `false`: it must not.
    pub present: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryMatch {
    pub name: String,
    pub exact: Option<String>,
    /// The whole value must match (RE2 syntax).
    pub regex: Option<String>,
    /// `true`: the parameter must be there (any value).
    pub present: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// A subset's name; none means every instance of the service.
    pub subset: Option<String>,
    #[serde(default = "full_weight")]
    #[schemars(range(max = 100))]
    pub weight: u32,
}

fn full_weight() -> u32 {
    100
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StickySession {
    /// Hash this request header.
    pub header: Option<String>,
    /// Hash this cookie, set by the proxy if the client has none.
    pub cookie: Option<StickyCookie>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StickyCookie {
    pub name: String,
    /// Lifetime of a cookie the proxy sets (e.g. 1h).
    pub ttl: Option<String>,
}

impl Spec for ServiceRouteSpec {
    fn check(&self, at: &str, problems: &mut Problems) {
        self.service.check(&field(at, "service"), problems);
        let subsets_at = field(at, "subsets");
        let mut subset_names = BTreeSet::new();
        for (i, subset) in self.subsets.iter().enumerate() {
            let here = index(&subsets_at, i);
            if let Err(e) = check_dns_label(&subset.name) {
                problems.add(field(&here, "name"), e);
            } else if !subset_names.insert(subset.name.as_str()) {
                problems.add(
                    field(&here, "name"),
                    format!("{:?} is listed twice", subset.name),
                );
            }
            if subset.labels.is_empty() {
                problems.add(
                    field(&here, "labels"),
                    "name at least one label the subset's instances carry",
                );
            }
        }
        let rules_at = field(at, "rules");
        for (i, rule) in self.rules.iter().enumerate() {
            let here = index(&rules_at, i);
            if rule.matches.is_empty() && i + 1 < self.rules.len() {
                problems.add(
                    &here,
                    "a rule without matches catches every request, so it must be the last rule",
                );
            }
            for (j, m) in rule.matches.iter().enumerate() {
                check_match(m, &index(&field(&here, "matches"), j), problems);
            }
            let destinations_at = field(&here, "destinations");
            for (j, d) in rule.destinations.iter().enumerate() {
                if let Some(subset) = &d.subset
                    && !subset_names.contains(subset.as_str())
                {
                    problems.add(
                        field(&index(&destinations_at, j), "subset"),
                        format!("no subset {subset:?} in spec.subsets"),
                    );
                }
            }
            let total: u32 = rule.destinations.iter().map(|d| d.weight).sum();
            if total != 100 {
                problems.add(
                    &destinations_at,
                    format!("weights must add up to 100, not {total}"),
                );
            }
        }
        if let Some(sticky) = &self.sticky_session {
            let here = field(at, "stickySession");
            exactly_one(
                &here,
                &[
                    ("header", sticky.header.is_some()),
                    ("cookie", sticky.cookie.is_some()),
                ],
                problems,
            );
            if let Some(header) = &sticky.header {
                check_header_name(header, &field(&here, "header"), problems);
            }
            if let Some(cookie) = &sticky.cookie {
                let cookie_at = field(&here, "cookie");
                check_header_name(&cookie.name, &field(&cookie_at, "name"), problems);
                if let Some(ttl) = &cookie.ttl {
                    duration(ttl, &field(&cookie_at, "ttl"), problems);
                }
            }
        }
    }
}

pub(crate) fn check_match(m: &RequestMatch, at: &str, problems: &mut Problems) {
    if m.path.is_none() && m.method.is_none() && m.headers.is_empty() && m.query.is_empty() {
        problems.add(at, "give at least one of path, method, headers or query");
    }
    if let Some(path) = &m.path {
        let here = field(at, "path");
        exactly_one(
            &here,
            &[
                ("exact", path.exact.is_some()),
                ("prefix", path.prefix.is_some()),
                ("regex", path.regex.is_some()),
            ],
            problems,
        );
        for (name, value) in [("exact", &path.exact), ("prefix", &path.prefix)] {
            if let Some(value) = value
                && !value.starts_with('/')
            {
                problems.add(field(&here, name), format!("{value:?} must start with /"));
            }
        }
        if let Some(regex) = &path.regex {
            check_regex(regex, &field(&here, "regex"), problems);
        }
    }
    for (i, header) in m.headers.iter().enumerate() {
        let here = index(&field(at, "headers"), i);
        check_header_name(&header.name, &field(&here, "name"), problems);
        let options = [
            ("exact", header.exact.is_some()),
            ("prefix", header.prefix.is_some()),
            ("regex", header.regex.is_some()),
            ("present", header.present.is_some()),
        ];
        exactly_one(&here, &options, problems);
        if let Some(regex) = &header.regex {
            check_regex(regex, &field(&here, "regex"), problems);
        }
    }
    for (i, query) in m.query.iter().enumerate() {
        let here = index(&field(at, "query"), i);
        if query.name.is_empty() {
            problems.add(field(&here, "name"), "must not be empty");
        }
        let options = [
            ("exact", query.exact.is_some()),
            ("regex", query.regex.is_some()),
            ("present", query.present.is_some()),
        ];
        exactly_one(&here, &options, problems);
        if query.present == Some(false) {
            problems.add(
                field(&here, "present"),
                "only true can be matched: a parameter that must be absent is not",
            );
        }
        if let Some(regex) = &query.regex {
            check_regex(regex, &field(&here, "regex"), problems);
        }
    }
}

/// Envoy matches with RE2; Rust's `regex` takes the same syntax but for
/// rare corners, so what it refuses Envoy would too.
fn check_regex(regex: &str, at: &str, problems: &mut Problems) {
    if let Err(e) = regex::Regex::new(regex) {
        let reason = e.to_string();
        let last = reason.lines().last().unwrap_or_default().trim();
        problems.add(at, format!("{regex:?} is not a regular expression: {last}"));
    }
}

// -------------------------------------------------------------- settings

/// Resilience settings for calls to services.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSettingSpec {
    /// The one service these settings are for; none: every service where
    /// the setting is attached.
    pub service: Option<ServiceRef>,
    /// Whole-request timeout, retries included (e.g. 15s).
    pub timeout: Option<String>,
    pub retries: Option<Retries>,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub outlier_detection: Option<OutlierDetection>,
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    /// How calls use instances in other clusters.
    pub locality: Option<LocalityPolicy>,
    /// How many requests each instance takes.
    pub rate_limiting: Option<crate::ratelimit::RateLimiting>,
}

/// Local instances serve first; other clusters' east-west gateways back
/// them up, nearest first.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityPolicy {
    /// Whether calls may go to other clusters (default true); false: local
    /// instances only.
    pub cross_cluster: Option<bool>,
    /// What ranks other clusters, most important first: `region`, `zone`,
    /// `network`, or `label:KEY` (a label of the Cluster resources).
    /// Clusters that match the caller's on more leading entries come
    /// first. Default: [region, zone].
    #[serde(default)]
    pub failover_priority: Vec<String>,
}

impl LocalityPolicy {
    /// The ranking used when no setting gives one.
    pub const DEFAULT_PRIORITY: [&'static str; 2] = ["region", "zone"];
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first try.
    #[schemars(range(max = 10))]
    pub attempts: u32,
    pub per_try_timeout: Option<String>,
    /// When to retry (default: connect-failure, refused-stream, reset, 5xx).
    #[serde(default)]
    pub retry_on: Vec<RetryOn>,
    /// Caps retries at a share of active requests, so retries cannot
    /// multiply an outage.
    pub budget: Option<RetryBudget>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum RetryOn {
    #[serde(rename = "5xx")]
    ServerError,
    #[serde(rename = "gateway-error")]
    GatewayError,
    #[serde(rename = "reset")]
    Reset,
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    #[serde(rename = "refused-stream")]
    RefusedStream,
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries may be at most this percentage of active requests.
    pub percent: f64,
    /// Retries always allowed regardless of the percentage.
    pub min_concurrency: Option<u32>,
}

/// Limits per upstream service; over them, calls fail fast with 503.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    #[schemars(range(min = 1))]
    pub max_pending_requests: Option<u32>,
    #[schemars(range(min = 1))]
    pub max_requests: Option<u32>,
    /// Retries in flight to the service at once. Without it (or a retry
    /// budget), each request's `attempts` is the only bound.
    #[schemars(range(min = 1))]
    pub max_retries: Option<u32>,
}

/// Ejects instances that keep failing, and brings them back later.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers that eject an instance (default 5).
    #[schemars(range(min = 1))]
    pub consecutive_5xx: Option<u32>,
    /// How often instances are evaluated (default 10s).
    pub interval: Option<String>,
    /// First ejection time; it grows with each ejection (default 30s).
    pub base_ejection_time: Option<String>,
    /// At most this share of instances is ejected at once (default 10).
    #[schemars(range(min = 1, max = 100))]
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    RoundRobin,
    LeastRequest,
    /// Consistent hashing; pairs with a ServiceRoute's stickySession.
    RingHash,
    Random,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    pub connect_timeout: Option<String>,
    /// Close connections idle this long.
    pub idle_timeout: Option<String>,
    #[schemars(range(min = 1))]
    pub max_requests_per_connection: Option<u32>,
}

impl Spec for TrafficSettingSpec {
    fn check(&self, at: &str, problems: &mut Problems) {
        if let Some(service) = &self.service {
            service.check(&field(at, "service"), problems);
        }
        let nothing_set = self.timeout.is_none()
            && self.retries.is_none()
            && self.circuit_breaker.is_none()
            && self.outlier_detection.is_none()
            && self.load_balancer.is_none()
            && self.connection_pool.is_none()
            && self.locality.is_none()
            && self.rate_limiting.is_none();
        if nothing_set {
            problems.add(at, "sets nothing: give at least one of timeout, retries, circuitBreaker, outlierDetection, loadBalancer, connectionPool, locality, rateLimiting");
        }
        if let Some(rate_limiting) = &self.rate_limiting {
            rate_limiting.check(&field(at, "rateLimiting"), problems);
        }
        if let Some(locality) = &self.locality {
            let here = field(at, "locality");
            let mut seen = BTreeSet::new();
            for (i, entry) in locality.failover_priority.iter().enumerate() {
                let at = index(&field(&here, "failoverPriority"), i);
                let known = matches!(entry.as_str(), "region" | "zone" | "network")
                    || entry
                        .strip_prefix("label:")
                        .is_some_and(|key| !key.is_empty());
                if !known {
                    problems.add(
                        at,
                        format!("{entry:?} is not region, zone, network or label:KEY"),
                    );
                } else if !seen.insert(entry) {
                    problems.add(at, "is listed twice");
                }
            }
            if locality.cross_cluster == Some(false) && !locality.failover_priority.is_empty() {
                problems.add(
                    field(&here, "failoverPriority"),
                    "has no effect with crossCluster: false (calls stay in the cluster)",
                );
            }
        }
        let timeout = self
            .timeout
            .as_deref()
            .and_then(|t| duration(t, &field(at, "timeout"), problems));
        if let Some(retries) = &self.retries {
            retries.check(&field(at, "retries"), timeout, problems);
        }
        if let Some(outlier) = &self.outlier_detection {
            let here = field(at, "outlierDetection");
            for (name, value) in [
                ("interval", &outlier.interval),
                ("baseEjectionTime", &outlier.base_ejection_time),
            ] {
                if let Some(value) = value {
                    duration(value, &field(&here, name), problems);
                }
            }
        }
        if let Some(pool) = &self.connection_pool {
            let here = field(at, "connectionPool");
            for (name, value) in [
                ("connectTimeout", &pool.connect_timeout),
                ("idleTimeout", &pool.idle_timeout),
            ] {
                if let Some(value) = value {
                    duration(value, &field(&here, name), problems);
                }
            }
        }
    }
}

impl Retries {
    /// `timeout`: the whole request's, if one is set.
    pub(crate) fn check(&self, here: &str, timeout: Option<Duration>, problems: &mut Problems) {
        let per_try = self
            .per_try_timeout
            .as_deref()
            .and_then(|t| duration(t, &field(here, "perTryTimeout"), problems));
        if let (Some(per_try), Some(timeout)) = (per_try, timeout)
            && per_try > timeout
        {
            problems.add(
                field(here, "perTryTimeout"),
                "is longer than the whole request's timeout",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, condition) in self.retry_on.iter().enumerate() {
            if !seen.insert(format!("{condition:?}")) {
                problems.add(index(&field(here, "retryOn"), i), "is listed twice");
            }
        }
        if let Some(budget) = &self.budget
            && !(budget.percent > 0.0 && budget.percent <= 100.0)
        {
            problems.add(
                field(&field(here, "budget"), "percent"),
                "must be more than 0 and at most 100",
            );
        }
    }
}

/// A service named by a traffic kind must be in a namespace its parent
/// (workspace or group) selects. A group that selects nothing itself
/// covers its workspace's namespaces, which are checked when it is applied.
pub fn check_service_within_parent(spec: &Value, parent_spec: &Value, problems: &mut Problems) {
    if let Some(namespace) = spec.pointer("/service/namespace").and_then(Value::as_str)
        && let Err(selector) = namespace_within(namespace, parent_spec)
    {
        problems.add(
            "spec.service.namespace",
            format!("{namespace:?} is not among the namespaces this is attached to ({selector})"),
        );
    }
}

/// Whether `parent_spec`'s `namespaceSelector` covers `namespace` (one
/// that selects nothing covers its parent's, checked when it was
/// applied); else the selector, to show.
pub(crate) fn namespace_within(namespace: &str, parent_spec: &Value) -> Result<(), String> {
    let selector: Vec<&str> = parent_spec
        .get("namespaceSelector")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let covered = selector.is_empty()
        || selector.iter().any(|entry| {
            entry
                .split_once('/')
                .is_some_and(|(_, ns)| ns == "*" || ns == namespace)
        });
    if covered {
        Ok(())
    } else {
        Err(selector.join(", "))
    }
}
