//! Route tables, in the proxy model and as Envoy's `RouteConfiguration`
//! (RDS): matches, weighted forwards, retries, hashing, rewrites, direct
//! responses, redirects, header changes and CORS.

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, data_source::Specifier as DataSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::retry_policy::{
    RetryPriority, retry_priority::ConfigType as RetryPriorityConfig,
};
use envoy_types::pb::envoy::config::route::v3::route::Action as XdsAction;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    Cookie, Header, PolicySpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterSpecifier, HashPolicy};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::{
    ClusterWeight, RandomValueSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RetryPolicy, Route as XdsRoute,
    RouteAction, RouteConfiguration, RouteMatch as XdsRouteMatch, VirtualHost as XdsVirtualHost,
    WeightedCluster, retry_policy::RetryHostPredicate,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

use super::convert::{duration, regex, string_matcher, uint};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction as AppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::config::route::v3::RedirectAction;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_action::HostRewriteSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as XdsCorsPolicy;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Authorization, LoginCheck, RateLimit, SharedLimit};

// ------------------------------------------------------------- the model

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    /// Who may call, on a listener that authorizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// How many requests it takes, on a listener that limits them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The shared rules its requests are counted by, on a listener with
    /// a [`RateLimitService`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_limits: Vec<SharedLimit>,
    /// Its sign-in check, on a gateway chain with an [`AuthService`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<LoginCheck>,
}

/// First matching route wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Where the route comes from (`PATH#rules[i].matches[j]`): Envoy
    /// logs it with each request it routes, and `weft explain` names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    #[serde(flatten)]
    pub action: Action,
    /// What the route changes on the way (a gateway's).
    #[serde(flatten)]
    pub changes: RouteChanges,
}

impl Route {
    /// A route that only matches and acts.
    pub fn new(matcher: RouteMatch, action: Action) -> Route {
        Route {
            name: None,
            matcher,
            action,
            changes: RouteChanges::default(),
        }
    }

    /// The same route, named.
    pub fn named(self, name: String) -> Route {
        Route {
            name: Some(name),
            ..self
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderEdits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderEdits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsPolicy>,
}

/// Headers replaced (or added), appended, and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderEdits {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Cross-origin requests the route answers for browsers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Exact origins, or `*` for any.
    pub allow_origins: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_s: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// "/" when none of path, prefix and regex is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The whole path (without the query) matches this RE2 expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderCondition>,
    /// Query parameters (routes only: RBAC cannot see them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<QueryCondition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryCondition {
    pub name: String,
    /// None: the parameter is present, with any value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<ValueTest>,
}

/// How a value must read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ValueTest {
    Exact(String),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderCondition {
    pub name: String,
    #[serde(flatten)]
    pub test: HeaderTest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HeaderTest {
    Exact(String),
    Prefix(String),
    Regex(String),
    /// The header is absent or does not match this expression.
    NotRegex(String),
    Present(bool),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Forward(Forward),
    DirectResponse { status: u32, body: String },
    Redirect(Redirect),
}

/// Answers with a redirect; what is none stays as requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 301, 302, 303, 307 or 308.
    pub code: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Forward {
    /// Cluster names and their weights (shares of 100).
    pub clusters: BTreeMap<String, u32>,
    /// Whole-request timeout; 0 disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// Replaces the path prefix the route matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// The Host the upstream sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_rewrite: Option<String>,
}

impl Forward {
    /// Everything to `cluster`, with Envoy's defaults for the rest.
    pub fn to(cluster: impl Into<String>) -> Forward {
        Forward {
            clusters: BTreeMap::from([(cluster.into(), 100)]),
            timeout_ms: None,
            retries: None,
            hash_on: None,
            prefix_rewrite: None,
            authority_rewrite: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    pub retry_on: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Each retry goes to the next priority (the next-nearest cluster)
    /// rather than back to the one that failed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub next_priority: bool,
}

/// What consistent hashing keys on (sticky sessions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HashOn {
    Header(String),
    Cookie {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
}

// ------------------------------------------------- Envoy's form of it

impl HeaderCondition {
    pub(super) fn to_xds(&self) -> HeaderMatcher {
        let HeaderCondition { name, test } = self;
        let string = |pattern| {
            HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(pattern),
                ignore_case: false,
            })
        };
        let (specifier, invert_match) = match &test {
            HeaderTest::Exact(v) => (string(MatchPattern::Exact(v.clone())), false),
            HeaderTest::Prefix(v) => (string(MatchPattern::Prefix(v.clone())), false),
            HeaderTest::Regex(v) => (string(MatchPattern::SafeRegex(regex(v))), false),
            HeaderTest::NotRegex(v) => (string(MatchPattern::SafeRegex(regex(v))), true),
            HeaderTest::Present(present) => (HeaderMatchSpecifier::PresentMatch(true), !present),
        };
        HeaderMatcher {
            name: name.clone(),
            invert_match,
            header_match_specifier: Some(specifier),
            ..Default::default()
        }
    }
}

impl Forward {
    pub(super) fn to_xds(&self) -> RouteAction {
        let Forward {
            clusters,
            timeout_ms,
            retries,
            hash_on,
            prefix_rewrite,
            authority_rewrite,
        } = self;
        let cluster_specifier = if clusters.len() == 1 {
            let name = clusters.keys().next().cloned().unwrap_or_default();
            ClusterSpecifier::Cluster(name)
        } else {
            ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: clusters
                    .iter()
                    .map(|(name, weight)| ClusterWeight {
                        name: name.clone(),
                        weight: Some(uint(*weight)),
                        ..Default::default()
                    })
                    .collect(),
                // A sticky client also keeps its side of a split.
                random_value_specifier: hash_on
                    .as_ref()
                    .map(|_| RandomValueSpecifier::UseHashPolicy(BoolValue { value: true })),
                ..Default::default()
            })
        };
        let retry_policy = retries.as_ref().map(|r| RetryPolicy {
            retry_on: r.retry_on.clone(),
            num_retries: Some(uint(r.attempts)),
            per_try_timeout: r.per_try_timeout_ms.map(duration),
            // Retry on another instance than the ones that failed.
            retry_host_predicate: vec![RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(
                    envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                        pack_any(PreviousHostsPredicate::default()),
                    ),
                ),
            }],
            host_selection_retry_max_attempts: 5,
            retry_priority: r.next_priority.then(|| RetryPriority {
                name: "envoy.retry_priorities.previous_priorities".into(),
                config_type: Some(RetryPriorityConfig::TypedConfig(pack_any(
                    PreviousPrioritiesConfig {
                        update_frequency: 1,
                    },
                ))),
            }),
            ..Default::default()
        });
        let hash_policy = hash_on
            .iter()
            .map(|h| HashPolicy {
                policy_specifier: Some(match h {
                    HashOn::Header(name) => PolicySpecifier::Header(Header {
                        header_name: name.clone(),
                        ..Default::default()
                    }),
                    HashOn::Cookie { name, ttl_ms } => PolicySpecifier::Cookie(Cookie {
                        name: name.clone(),
                        ttl: ttl_ms.map(duration),
                        path: "/".into(),
                        ..Default::default()
                    }),
                }),
                terminal: false,
            })
            .collect();
        RouteAction {
            cluster_specifier: Some(cluster_specifier),
            timeout: timeout_ms.map(duration),
            retry_policy,
            hash_policy,
            prefix_rewrite: prefix_rewrite.clone().unwrap_or_default(),
            host_rewrite_specifier: authority_rewrite
                .clone()
                .map(HostRewriteSpecifier::HostRewriteLiteral),
            ..Default::default()
        }
    }
}

impl RouteMatch {
    pub(super) fn to_xds(&self) -> XdsRouteMatch {
        let RouteMatch {
            path,
            prefix,
            regex: path_regex,
            headers,
            query,
        } = self;
        let path_specifier = match (&path, &prefix, &path_regex) {
            (Some(path), _, _) => PathSpecifier::Path(path.clone()),
            (None, Some(prefix), _) => PathSpecifier::Prefix(prefix.clone()),
            (None, None, Some(expression)) => PathSpecifier::SafeRegex(regex(expression)),
            (None, None, None) => PathSpecifier::Prefix("/".into()),
        };
        let query_parameters = query
            .iter()
            .map(|condition| QueryParameterMatcher {
                name: condition.name.clone(),
                query_parameter_match_specifier: Some(match &condition.test {
                    None => QueryParameterMatchSpecifier::PresentMatch(true),
                    Some(ValueTest::Exact(v)) => QueryParameterMatchSpecifier::StringMatch(
                        string_matcher(MatchPattern::Exact(v.clone())),
                    ),
                    Some(ValueTest::Regex(v)) => QueryParameterMatchSpecifier::StringMatch(
                        string_matcher(MatchPattern::SafeRegex(regex(v))),
                    ),
                }),
            })
            .collect();
        XdsRouteMatch {
            path_specifier: Some(path_specifier),
            headers: headers.iter().map(HeaderCondition::to_xds).collect(),
            query_parameters,
            ..Default::default()
        }
    }
}

impl Redirect {
    fn to_xds(&self) -> RedirectAction {
        let Redirect {
            scheme,
            host,
            port,
            path,
            code,
        } = self;
        let response_code = match code {
            302 => RedirectResponseCode::Found,
            303 => RedirectResponseCode::SeeOther,
            307 => RedirectResponseCode::TemporaryRedirect,
            308 => RedirectResponseCode::PermanentRedirect,
            _ => RedirectResponseCode::MovedPermanently,
        };
        RedirectAction {
            host_redirect: host.clone().unwrap_or_default(),
            port_redirect: port.map_or(0, u32::from),
            response_code: response_code as i32,
            scheme_rewrite_specifier: scheme.clone().map(SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier: path.clone().map(PathRewriteSpecifier::PathRedirect),
            ..Default::default()
        }
    }
}

impl HeaderEdits {
    fn to_add(&self) -> Vec<HeaderValueOption> {
        let value = |(name, value): (&String, &String), action: AppendAction| HeaderValueOption {
            header: Some(HeaderValue {
                key: name.clone(),
                value: value.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        };
        self.set
            .iter()
            .map(|h| value(h, AppendAction::OverwriteIfExistsOrAdd))
            .chain(
                self.add
                    .iter()
                    .map(|h| value(h, AppendAction::AppendIfExistsOrAdd)),
            )
            .collect()
    }
}

/// The name of Envoy's CORS filter, whose policy each route gives.
pub(super) const CORS_FILTER: &str = "envoy.filters.http.cors";

impl CorsPolicy {
    fn to_xds(&self) -> XdsCorsPolicy {
        XdsCorsPolicy {
            allow_origin_string_match: self
                .allow_origins
                .iter()
                .map(|origin| {
                    string_matcher(if origin == "*" {
                        MatchPattern::Prefix(String::new())
                    } else {
                        MatchPattern::Exact(origin.clone())
                    })
                })
                .collect(),
            allow_methods: self.allow_methods.join(","),
            allow_headers: self.allow_headers.join(","),
            expose_headers: self.expose_headers.join(","),
            max_age: self.max_age_s.map(|s| s.to_string()).unwrap_or_default(),
            allow_credentials: self.allow_credentials.then_some(BoolValue { value: true }),
            ..Default::default()
        }
    }
}

impl Route {
    pub(super) fn to_xds(&self) -> XdsRoute {
        let Route {
            name,
            matcher,
            action,
            changes,
        } = self;
        let RouteChanges {
            request_headers,
            response_headers,
            cors,
        } = changes;
        let action = match &action {
            Action::Forward(forward) => XdsAction::Route(forward.to_xds()),
            Action::DirectResponse { status, body } => {
                XdsAction::DirectResponse(DirectResponseAction {
                    status: *status,
                    body: Some(DataSource {
                        specifier: Some(DataSpecifier::InlineString(body.clone())),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }
            Action::Redirect(redirect) => XdsAction::Redirect(redirect.to_xds()),
        };
        XdsRoute {
            name: name.clone().unwrap_or_default(),
            r#match: Some(matcher.to_xds()),
            action: Some(action),
            request_headers_to_add: request_headers
                .as_ref()
                .map(HeaderEdits::to_add)
                .unwrap_or_default(),
            request_headers_to_remove: request_headers
                .as_ref()
                .map(|h| h.remove.clone())
                .unwrap_or_default(),
            response_headers_to_add: response_headers
                .as_ref()
                .map(HeaderEdits::to_add)
                .unwrap_or_default(),
            response_headers_to_remove: response_headers
                .as_ref()
                .map(|h| h.remove.clone())
                .unwrap_or_default(),
            typed_per_filter_config: cors
                .iter()
                .map(|c| (CORS_FILTER.to_string(), pack_any(c.to_xds())))
                .collect(),
            ..Default::default()
        }
    }
}

impl RouteTable {
    pub(super) fn to_xds(&self) -> RouteConfiguration {
        let RouteTable {
            name,
            virtual_hosts,
        } = self;
        RouteConfiguration {
            name: name.clone(),
            virtual_hosts: virtual_hosts
                .iter()
                .map(|vh| XdsVirtualHost {
                    name: vh.name.clone(),
                    domains: vh.domains.clone(),
                    routes: vh.routes.iter().map(Route::to_xds).collect(),
                    typed_per_filter_config: vh
                        .authorization
                        .as_ref()
                        .map(Authorization::per_filter_config)
                        .unwrap_or_default()
                        .into_iter()
                        .chain(vh.rate_limit.as_ref().map(|limit| {
                            (
                                super::ratelimit::LOCAL_RATE_LIMIT.to_string(),
                                limit.per_filter_config(),
                            )
                        }))
                        .chain(vh.login.as_ref().map(|login| {
                            (
                                super::authservice::EXT_AUTHZ.to_string(),
                                login.per_filter_config(),
                            )
                        }))
                        .collect(),
                    rate_limits: vh.shared_limits.iter().map(SharedLimit::to_xds).collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}
