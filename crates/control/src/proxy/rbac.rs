//! Authorization → Envoy's RBAC filters: two filters on the listener
//! that refuse on their own, and the rules per virtual host (RDS).

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::util::pack_any;
use envoy_types::pb::envoy::config::rbac::v3::permission::{Rule as PermissionRule, Set as PermissionSet};
use envoy_types::pb::envoy::config::rbac::v3::principal::{Authenticated, Identifier};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal, Rbac};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::{
    Rbac as RbacFilter, RbacPerRoute,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule as PathRule;
use envoy_types::pb::envoy::config::rbac::v3::{MetadataSource, SourcedMetadata};
use envoy_types::pb::envoy::r#type::matcher::v3::list_matcher::MatchPattern as ListPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::PathSegment as MetadataPath;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment as MetadataSegment;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, OrMatcher, ValueMatcher,
};

use envoy_types::pb::envoy::config::core::v3::CidrRange;

use super::convert::{regex, string_matcher, uint};
use super::jwt::{JWT_FILTER, JWT_PAYLOAD};
use super::{AccessRule, Authorization, CallerId};

/// A claim (`a.b` for nested) of the request's valid token is one of
/// `values`, or is a list holding one of them.
pub(super) fn claim_permission(claim: &str, values: &[String]) -> Permission {
    let value_matchers = values
        .iter()
        .flat_map(|value| {
            let exact = ValueMatcher {
                match_pattern: Some(ValuePattern::StringMatch(string_matcher(
                    MatchPattern::Exact(value.clone()),
                ))),
            };
            let in_list = ValueMatcher {
                match_pattern: Some(ValuePattern::ListMatch(Box::new(ListMatcher {
                    match_pattern: Some(ListPattern::OneOf(Box::new(exact.clone()))),
                }))),
            };
            [exact, in_list]
        })
        .collect();
    Permission {
        rule: Some(PermissionRule::SourcedMetadata(SourcedMetadata {
            metadata_matcher: Some(MetadataMatcher {
                filter: JWT_FILTER.into(),
                path: std::iter::once(JWT_PAYLOAD)
                    .chain(claim.split('.'))
                    .map(|key| MetadataPath {
                        segment: Some(MetadataSegment::Key(key.into())),
                    })
                    .collect(),
                value: Some(ValueMatcher {
                    match_pattern: Some(ValuePattern::OrMatch(OrMatcher { value_matchers })),
                }),
                invert: false,
            }),
            metadata_source: MetadataSource::Dynamic as i32,
        })),
    }
}

impl AccessRule {
    pub(super) fn policy(&self) -> Policy {
        let callers = self.callers.iter().map(|caller| {
            let pattern = match caller {
                CallerId::Exact(id) => MatchPattern::Exact(id.clone()),
                CallerId::Prefix(prefix) => MatchPattern::Prefix(prefix.clone()),
            };
            Principal {
                identifier: Some(Identifier::Authenticated(Authenticated {
                    principal_name: Some(string_matcher(pattern)),
                })),
            }
        });
        let sources = self.sources.iter().map(|range| {
            let (address, length) = range.split_once('/').unwrap_or((range, ""));
            let full = if address.contains(':') { 128 } else { 32 };
            Principal {
                identifier: Some(Identifier::DirectRemoteIp(CidrRange {
                    address_prefix: address.to_string(),
                    prefix_len: Some(uint(length.parse().unwrap_or(full))),
                })),
            }
        });
        let mut principals: Vec<Principal> = callers.chain(sources).collect();
        if principals.is_empty() {
            principals.push(Principal {
                identifier: Some(Identifier::Any(true)),
            });
        }
        let permissions = if self.requests.is_empty() {
            vec![Permission {
                rule: Some(PermissionRule::Any(true)),
            }]
        } else {
            self.requests
                .iter()
                .map(|request| {
                    let path = request
                        .path
                        .clone()
                        .map(MatchPattern::Exact)
                        .or_else(|| request.prefix.clone().map(MatchPattern::Prefix))
                        .or_else(|| {
                            request
                                .regex
                                .as_deref()
                                .map(|r| MatchPattern::SafeRegex(regex(r)))
                        })
                        .map(|pattern| Permission {
                            rule: Some(PermissionRule::UrlPath(PathMatcher {
                                rule: Some(PathRule::Path(string_matcher(pattern))),
                            })),
                        });
                    let headers = request.headers.iter().map(|h| Permission {
                        rule: Some(PermissionRule::Header(h.to_xds())),
                    });
                    let rules: Vec<Permission> = path.into_iter().chain(headers).collect();
                    Permission {
                        rule: Some(PermissionRule::AndRules(PermissionSet { rules })),
                    }
                })
                .collect()
        };
        // Claims are conditions on the request (its token) as a whole.
        let permissions = if self.claims.is_empty() {
            permissions
        } else {
            permissions
                .into_iter()
                .map(|request| Permission {
                    rule: Some(PermissionRule::AndRules(PermissionSet {
                        rules: std::iter::once(request)
                            .chain(
                                self.claims
                                    .iter()
                                    .map(|(claim, values)| claim_permission(claim, values)),
                            )
                            .collect(),
                    })),
                })
                .collect()
        };
        Policy {
            permissions,
            principals,
            ..Default::default()
        }
    }
}

/// The RBAC filters' names: the route table's virtual host gives each its
/// rules. Rules live in the route table (RDS) rather than the listener so
/// that a change applies to the next request, also on open connections (a
/// new listener would leave them on the old rules until they drain).
pub(super) const DENY_FILTER: &str = "weft.authorization.deny";
pub(super) const ALLOW_FILTER: &str = "weft.authorization.allow";

pub(super) fn rbac(action: RbacAction, rules: &[AccessRule]) -> Rbac {
    Rbac {
        action: action as i32,
        policies: rules.iter().map(|r| (r.name.clone(), r.policy())).collect(),
        ..Default::default()
    }
}

/// Deny rules first, then allow rules. On their own (no virtual host
/// rules), the first refuses nothing and the second everything.
pub(super) fn authorization_filters() -> Vec<HttpFilter> {
    [
        (DENY_FILTER, RbacAction::Deny),
        (ALLOW_FILTER, RbacAction::Allow),
    ]
    .into_iter()
    .map(|(name, action)| HttpFilter {
        name: name.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(pack_any(RbacFilter {
            rules: Some(rbac(action, &[])),
            ..Default::default()
        }))),
        ..Default::default()
    })
    .collect()
}

impl Authorization {
    /// The virtual host's rules for the two RBAC filters.
    pub(super) fn per_filter_config(&self) -> std::collections::HashMap<String, Any> {
        [
            (DENY_FILTER, rbac(RbacAction::Deny, &self.deny)),
            (ALLOW_FILTER, rbac(RbacAction::Allow, &self.allow)),
        ]
        .into_iter()
        .map(|(name, rules)| {
            (
                name.to_string(),
                pack_any(RbacPerRoute {
                    rbac: Some(RbacFilter {
                        rules: Some(rules),
                        ..Default::default()
                    }),
                }),
            )
        })
        .collect()
    }
}
