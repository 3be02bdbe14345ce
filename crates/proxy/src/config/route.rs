//! Route tables (RDS): virtual hosts by domain, routes in order (the
//! first that matches wins), and what a route does: forward to weighted
//! clusters with a timeout, retries and sticky hashing, or answer itself.
//! A virtual host also carries the authorization rules each RBAC filter
//! applies to its requests.

use std::collections::BTreeMap;
use std::time::Duration;

use super::rbac::{Rules, per_route};
use super::{Refusals, Refused, duration};
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as DataSpecifier;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action as XdsAction;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterSpecifier, HashPolicy};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::RandomValueSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, Route as XdsRoute, RouteAction, RouteConfiguration,
    RouteMatch as XdsRouteMatch, VirtualHost as XdsVirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

#[derive(Debug, Clone, PartialEq)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    pub name: String,
    /// Lowercase; `*`, `*.suffix` and `prefix.*` as Envoy reads them.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    /// Authorization rules, by the name of the filter that applies them.
    pub authorization: BTreeMap<String, Rules>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Logged with each request it routes.
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole `:path` starts with it.
    Prefix(String),
    /// The path without its query string is exactly it.
    Exact(String),
    /// The path without its query string matches it whole.
    Regex(Pattern),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: String,
    pub test: ValueMatch,
    /// The result is inverted (an absent header then matches).
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    Exact(String),
    Prefix(String),
    Regex(Pattern),
    Present,
}

/// A regular expression (RE2 syntax) that must match a whole value, as
/// Envoy's safe regexes do: compiled once, when the configuration
/// arrives, not per request.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    whole: regex::Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, regex::Error> {
        Ok(Pattern {
            source: source.to_string(),
            whole: regex::Regex::new(&format!("^(?:{source})$"))?,
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        self.whole.is_match(value)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryMatch {
    pub name: String,
    /// None: present with any value.
    pub test: Option<ValueMatch>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Forward(Forward),
    Respond { status: u16, body: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// Clusters and their weights (one cluster: weight 1).
    pub clusters: Vec<(String, u32)>,
    /// None: Envoy's default (15 s); zero: none.
    pub timeout: Option<Duration>,
    pub retry: Option<Retry>,
    /// Sticky sessions: what the upstream is chosen by (and, for a split,
    /// the side of it).
    pub hash_on: Option<HashOn>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(String),
    Cookie { name: String, ttl: Option<Duration> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Envoy's `retry_on` conditions.
    pub on: Vec<RetryOn>,
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// Each retry goes to the next priority (another cluster) first.
    pub next_priority: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    FiveXx,
    GatewayError,
    Reset,
    ConnectFailure,
    RefusedStream,
    Retriable4xx,
}

const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";

impl TryFrom<&RouteConfiguration> for RouteTable {
    type Error = Refused;

    fn try_from(config: &RouteConfiguration) -> Result<RouteTable, Refused> {
        let mut r = Refusals::default();
        let supported = RouteConfiguration {
            name: config.name.clone(),
            virtual_hosts: config.virtual_hosts.clone(),
            ..Default::default()
        };
        if *config != supported {
            r.refuse("", "only name and virtual_hosts");
        }
        let virtual_hosts = config
            .virtual_hosts
            .iter()
            .enumerate()
            .map(|(i, vh)| virtual_host(vh, &format!("virtual_hosts[{i}]"), &mut r))
            .collect();
        r.finish(
            format!("RouteConfiguration {}", config.name),
            RouteTable {
                name: config.name.clone(),
                virtual_hosts,
            },
        )
    }
}

#[allow(deprecated)]
fn virtual_host(vh: &XdsVirtualHost, here: &str, r: &mut Refusals) -> VirtualHost {
    let XdsVirtualHost {
        name: _,
        domains: _,
        routes: _,
        matcher,
        require_tls,
        virtual_clusters,
        rate_limits,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cors,
        typed_per_filter_config: _,
        include_request_attempt_count,
        include_attempt_count_in_response,
        retry_policy,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        request_mirror_policies,
        metadata,
        route_specifiers,
    } = vh;
    let field = |name: &str| format!("{here}.{name}");
    r.unset(&field("matcher"), matcher);
    r.unset(&field("require_tls"), require_tls);
    r.unset(&field("virtual_clusters"), virtual_clusters);
    r.unset(&field("rate_limits"), rate_limits);
    r.unset(&field("request_headers_to_add"), request_headers_to_add);
    r.unset(
        &field("request_headers_to_remove"),
        request_headers_to_remove,
    );
    r.unset(&field("response_headers_to_add"), response_headers_to_add);
    r.unset(
        &field("response_headers_to_remove"),
        response_headers_to_remove,
    );
    r.unset(&field("cors"), cors);
    r.unset(
        &field("include_request_attempt_count"),
        include_request_attempt_count,
    );
    r.unset(
        &field("include_attempt_count_in_response"),
        include_attempt_count_in_response,
    );
    r.unset(&field("retry_policy"), retry_policy);
    r.unset(
        &field("retry_policy_typed_config"),
        retry_policy_typed_config,
    );
    r.unset(&field("hedge_policy"), hedge_policy);
    r.unset(
        &field("include_is_timeout_retry_header"),
        include_is_timeout_retry_header,
    );
    r.unset(
        &field("per_request_buffer_limit_bytes"),
        per_request_buffer_limit_bytes,
    );
    r.unset(
        &field("request_body_buffer_limit"),
        request_body_buffer_limit,
    );
    r.unset(&field("request_mirror_policies"), request_mirror_policies);
    r.unset(&field("metadata"), metadata);
    r.unset(&field("route_specifiers"), route_specifiers);
    VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        routes: vh
            .routes
            .iter()
            .enumerate()
            .map(|(j, route)| self::route(route, &format!("{here}.routes[{j}]"), r))
            .collect(),
        authorization: vh
            .typed_per_filter_config
            .iter()
            .filter_map(|(filter, any)| {
                let at = format!("{here}.typed_per_filter_config[{filter}]");
                Some((filter.clone(), per_route(any, &at, r)?))
            })
            .collect(),
    }
}

#[allow(deprecated)]
fn route(route: &XdsRoute, here: &str, r: &mut Refusals) -> Route {
    let XdsRoute {
        name: _,
        r#match: _,
        metadata,
        decorator,
        typed_per_filter_config,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        tracing,
        per_request_buffer_limit_bytes,
        stat_prefix,
        request_body_buffer_limit,
        route_specifiers,
        action: _,
    } = route;
    let field = |name: &str| format!("{here}.{name}");
    r.unset(&field("metadata"), metadata);
    r.unset(&field("decorator"), decorator);
    r.unset(&field("typed_per_filter_config"), typed_per_filter_config);
    r.unset(&field("request_headers_to_add"), request_headers_to_add);
    r.unset(
        &field("request_headers_to_remove"),
        request_headers_to_remove,
    );
    r.unset(&field("response_headers_to_add"), response_headers_to_add);
    r.unset(
        &field("response_headers_to_remove"),
        response_headers_to_remove,
    );
    r.unset(&field("tracing"), tracing);
    r.unset(
        &field("per_request_buffer_limit_bytes"),
        per_request_buffer_limit_bytes,
    );
    r.unset(&field("stat_prefix"), stat_prefix);
    r.unset(
        &field("request_body_buffer_limit"),
        request_body_buffer_limit,
    );
    r.unset(&field("route_specifiers"), route_specifiers);
    let matcher = route_match(route.r#match.as_ref(), &format!("{here}.match"), r);
    let action = match &route.action {
        Some(XdsAction::Route(action)) => {
            Action::Forward(forward(action, &format!("{here}.route"), r))
        }
        Some(XdsAction::DirectResponse(direct)) => {
            let body = match direct.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => String::new(),
                Some(DataSpecifier::InlineString(text)) => text.clone(),
                Some(_) => {
                    r.refuse(format!("{here}.direct_response.body"), "only inline_string");
                    String::new()
                }
            };
            r.unset(
                &format!("{here}.direct_response.body_format"),
                &direct.body_format,
            );
            let status = u16::try_from(direct.status).unwrap_or(500);
            Action::Respond { status, body }
        }
        _ => {
            r.refuse(here, "only route and direct_response actions");
            Action::Respond {
                status: 500,
                body: String::new(),
            }
        }
    };
    Route {
        name: route.name.clone(),
        matcher,
        action,
    }
}

pub(crate) fn route_match(m: Option<&XdsRouteMatch>, here: &str, r: &mut Refusals) -> RouteMatch {
    let m = m.cloned().unwrap_or_default();
    let supported = XdsRouteMatch {
        path_specifier: m.path_specifier.clone(),
        headers: m.headers.clone(),
        query_parameters: m.query_parameters.clone(),
        ..Default::default()
    };
    if m != supported {
        r.refuse(here, "only a path, headers and query parameters");
    }
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(PathSpecifier::SafeRegex(re)) => {
            match checked_regex(&re.regex, &format!("{here}.safe_regex"), r) {
                Some(pattern) => PathMatch::Regex(pattern),
                None => PathMatch::Prefix("/".into()),
            }
        }
        _ => {
            r.refuse(here, "only prefix, path and safe_regex");
            PathMatch::Prefix("/".into())
        }
    };
    RouteMatch {
        path,
        headers: m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| header_match(h, &format!("{here}.headers[{i}]"), r))
            .collect(),
        query: m
            .query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| query_match(q, &format!("{here}.query_parameters[{i}]"), r))
            .collect(),
    }
}

/// A regular expression the proxy can run as RE2 would; none (refused)
/// otherwise.
pub(crate) fn checked_regex(pattern: &str, here: &str, r: &mut Refusals) -> Option<Pattern> {
    let compiled = Pattern::new(pattern).ok();
    if compiled.is_none() {
        r.refuse(
            here,
            format!("{pattern:?} is not a regular expression weft-proxy runs"),
        );
    }
    compiled
}

fn string_match(m: &StringMatcher, here: &str, r: &mut Refusals) -> ValueMatch {
    if m.ignore_case {
        r.refuse(format!("{here}.ignore_case"), "not supported by weft-proxy");
    }
    match &m.match_pattern {
        Some(MatchPattern::Exact(v)) => ValueMatch::Exact(v.clone()),
        Some(MatchPattern::Prefix(v)) => ValueMatch::Prefix(v.clone()),
        Some(MatchPattern::SafeRegex(re)) => {
            match checked_regex(&re.regex, &format!("{here}.safe_regex"), r) {
                Some(pattern) => ValueMatch::Regex(pattern),
                None => ValueMatch::Present,
            }
        }
        _ => {
            r.refuse(here, "only exact, prefix and safe_regex");
            ValueMatch::Present
        }
    }
}

pub(crate) fn header_match(h: &HeaderMatcher, here: &str, r: &mut Refusals) -> HeaderMatch {
    r.unset(
        &format!("{here}.treat_missing_header_as_empty"),
        &h.treat_missing_header_as_empty,
    );
    let test = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(m)) => string_match(m, here, r),
        Some(HeaderMatchSpecifier::PresentMatch(true)) => ValueMatch::Present,
        _ => {
            r.refuse(here, "only string_match and present_match: true");
            ValueMatch::Present
        }
    };
    HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        test,
        invert: h.invert_match,
    }
}

fn query_match(q: &QueryParameterMatcher, here: &str, r: &mut Refusals) -> QueryMatch {
    let test = match &q.query_parameter_match_specifier {
        Some(QueryParameterMatchSpecifier::StringMatch(m)) => Some(string_match(m, here, r)),
        Some(QueryParameterMatchSpecifier::PresentMatch(true)) => None,
        _ => {
            r.refuse(here, "only string_match and present_match: true");
            None
        }
    };
    QueryMatch {
        name: q.name.clone(),
        test,
    }
}

#[allow(deprecated)]
fn forward(action: &RouteAction, here: &str, r: &mut Refusals) -> Forward {
    let RouteAction {
        cluster_not_found_response_code,
        metadata_match,
        prefix_rewrite,
        regex_rewrite,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host,
        idle_timeout,
        flush_timeout,
        early_data_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        include_vh_rate_limits,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
        host_rewrite_specifier,
        timeout: _,
        retry_policy: _,
        hash_policy: _,
        cluster_specifier: _,
    } = action;
    let field = |name: &str| format!("{here}.{name}");
    r.unset(
        &field("cluster_not_found_response_code"),
        cluster_not_found_response_code,
    );
    r.unset(&field("metadata_match"), metadata_match);
    r.unset(&field("prefix_rewrite"), prefix_rewrite);
    r.unset(&field("regex_rewrite"), regex_rewrite);
    r.unset(&field("path_rewrite_policy"), path_rewrite_policy);
    r.unset(&field("path_rewrite"), path_rewrite);
    r.unset(&field("append_x_forwarded_host"), append_x_forwarded_host);
    r.unset(&field("idle_timeout"), idle_timeout);
    r.unset(&field("flush_timeout"), flush_timeout);
    r.unset(&field("early_data_policy"), early_data_policy);
    r.unset(
        &field("retry_policy_typed_config"),
        retry_policy_typed_config,
    );
    r.unset(&field("request_mirror_policies"), request_mirror_policies);
    r.unset(&field("priority"), priority);
    r.unset(&field("rate_limits"), rate_limits);
    r.unset(&field("include_vh_rate_limits"), include_vh_rate_limits);
    r.unset(&field("cors"), cors);
    r.unset(&field("max_grpc_timeout"), max_grpc_timeout);
    r.unset(&field("grpc_timeout_offset"), grpc_timeout_offset);
    r.unset(&field("upgrade_configs"), upgrade_configs);
    r.unset(&field("internal_redirect_policy"), internal_redirect_policy);
    r.unset(&field("internal_redirect_action"), internal_redirect_action);
    r.unset(&field("max_internal_redirects"), max_internal_redirects);
    r.unset(&field("hedge_policy"), hedge_policy);
    r.unset(&field("max_stream_duration"), max_stream_duration);
    r.unset(&field("host_rewrite_specifier"), host_rewrite_specifier);
    let clusters = match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) => vec![(name.clone(), 1)],
        Some(ClusterSpecifier::WeightedClusters(weighted)) => {
            let sticky = matches!(
                weighted.random_value_specifier,
                None | Some(RandomValueSpecifier::UseHashPolicy(_))
            );
            let only = WeightedCluster {
                clusters: weighted.clusters.clone(),
                random_value_specifier: weighted.random_value_specifier.clone(),
                ..Default::default()
            };
            if !sticky || *weighted != only {
                r.refuse(
                    format!("{here}.weighted_clusters"),
                    "only clusters with weights (and use_hash_policy)",
                );
            }
            weighted
                .clusters
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let only = envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight {
                        name: c.name.clone(),
                        weight: c.weight,
                        ..Default::default()
                    };
                    if *c != only {
                        r.refuse(
                            format!("{here}.weighted_clusters.clusters[{i}]"),
                            "only name and weight",
                        );
                    }
                    (c.name.clone(), c.weight.map_or(0, |w| w.value))
                })
                .collect()
        }
        _ => {
            r.refuse(here, "only cluster and weighted_clusters");
            Vec::new()
        }
    };
    let hash_on = match action.hash_policy.as_slice() {
        [] => None,
        [
            HashPolicy {
                policy_specifier: Some(policy),
                terminal: false,
            },
        ] => match policy {
            PolicySpecifier::Header(h) if h.regex_rewrite.is_none() => {
                Some(HashOn::Header(h.header_name.to_ascii_lowercase()))
            }
            PolicySpecifier::Cookie(c) if c.path == "/" && c.attributes.is_empty() => {
                Some(HashOn::Cookie {
                    name: c.name.clone(),
                    ttl: duration(
                        c.ttl.as_ref(),
                        &format!("{here}.hash_policy[0].cookie.ttl"),
                        r,
                    ),
                })
            }
            _ => {
                r.refuse(
                    format!("{here}.hash_policy[0]"),
                    "only a header or a cookie at path /",
                );
                None
            }
        },
        _ => {
            r.refuse(format!("{here}.hash_policy"), "only one header or cookie");
            None
        }
    };
    let retry = action.retry_policy.as_ref().map(|policy| {
        let at = format!("{here}.retry_policy");
        let supported = envoy_types::pb::envoy::config::route::v3::RetryPolicy {
            retry_on: policy.retry_on.clone(),
            num_retries: policy.num_retries,
            per_try_timeout: policy.per_try_timeout,
            retry_host_predicate: policy.retry_host_predicate.clone(),
            host_selection_retry_max_attempts: policy.host_selection_retry_max_attempts,
            retry_priority: policy.retry_priority.clone(),
            ..Default::default()
        };
        if *policy != supported {
            r.refuse(
                &at,
                "only retry_on, num_retries, per_try_timeout, previous_hosts and previous_priorities",
            );
        }
        let on = policy
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .filter_map(|condition| {
                Some(match condition {
                    "5xx" => RetryOn::FiveXx,
                    "gateway-error" => RetryOn::GatewayError,
                    "reset" => RetryOn::Reset,
                    "connect-failure" => RetryOn::ConnectFailure,
                    "refused-stream" => RetryOn::RefusedStream,
                    "retriable-4xx" => RetryOn::Retriable4xx,
                    other => {
                        r.refuse(format!("{at}.retry_on"), format!("{other:?} is not supported"));
                        return None;
                    }
                })
            })
            .collect();
        // Retries always avoid the hosts that failed (weft always asks
        // for it, and weft-proxy always does it).
        if !policy
            .retry_host_predicate
            .iter()
            .all(|p| p.name == PREVIOUS_HOSTS)
        {
            r.refuse(format!("{at}.retry_host_predicate"), format!("only {PREVIOUS_HOSTS}"));
        }
        let next_priority = match &policy.retry_priority {
            None => false,
            Some(p) if p.name == PREVIOUS_PRIORITIES => true,
            Some(_) => {
                r.refuse(format!("{at}.retry_priority"), format!("only {PREVIOUS_PRIORITIES}"));
                false
            }
        };
        Retry {
            on,
            attempts: policy.num_retries.map_or(1, |n| n.value),
            per_try_timeout: duration(policy.per_try_timeout.as_ref(), &format!("{at}.per_try_timeout"), r),
            next_priority,
        }
    });
    Forward {
        clusters,
        timeout: duration(action.timeout.as_ref(), &format!("{here}.timeout"), r),
        retry,
        hash_on,
    }
}
