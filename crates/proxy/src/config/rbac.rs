//! Authorization rules (Envoy's RBAC, given per virtual host): each
//! policy matches when one of its principals (who calls) and one of its
//! permissions (what is asked) match. A deny filter refuses what any of
//! its policies match; an allow filter refuses what none match.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::permission::Rule;
use envoy_types::pb::envoy::config::rbac::v3::principal::Identifier;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{
    MetadataSource, Permission as XdsPermission, Policy as XdsPolicy, Principal as XdsPrincipal,
    Rbac, SourcedMetadata,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute;
use envoy_types::pb::envoy::r#type::matcher::v3::list_matcher::MatchPattern as ListPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule as PathRule;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::Refusals;
use super::route::{HeaderMatch, ValueMatch, checked_regex, header_match};

/// One filter's rules for a virtual host.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// A deny filter's rules (else an allow filter's).
    pub deny: bool,
    /// By name (how a refusal names the policy that matched).
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    /// Any of them.
    pub principals: Vec<Principal>,
    /// Any of them.
    pub permissions: Vec<Permission>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Any,
    /// The caller's certificate URI SAN, proved over mutual TLS.
    Authenticated(ValueMatch),
    /// The connection's own peer address in a range.
    DirectRemoteIp(IpAddr, u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    Any,
    /// All of them.
    And(Vec<Permission>),
    /// The path, without its query string.
    Path(ValueMatch),
    Header(HeaderMatch),
    /// A claim of the request's valid end-user token (`a.b` nested) is
    /// one of the values, or a list holding one.
    Claim {
        path: Vec<String>,
        values: Vec<String>,
    },
}

const RBAC_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";

/// A virtual host's settings for filter `filter`: only authorization
/// rules are taken.
pub(crate) fn per_route(any: &Any, here: &str, r: &mut Refusals) -> Option<Rules> {
    if any.type_url != RBAC_PER_ROUTE {
        r.refuse(here, format!("{} is not supported yet", any.type_url));
        return None;
    }
    let Ok(per_route) = RbacPerRoute::decode(any.value.as_slice()) else {
        r.refuse(here, "does not decode");
        return None;
    };
    let filter = per_route.rbac.unwrap_or_default();
    let only_rules = envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac {
        rules: filter.rules.clone(),
        ..Default::default()
    };
    if filter != only_rules {
        r.refuse(here, "only rules (no shadow rules, no matcher)");
    }
    rules(
        &filter.rules.unwrap_or_default(),
        &format!("{here}.rbac.rules"),
        r,
    )
}

fn rules(rbac: &Rbac, here: &str, r: &mut Refusals) -> Option<Rules> {
    r.unset(
        &format!("{here}.audit_logging_options"),
        &rbac.audit_logging_options,
    );
    let deny = match RbacAction::try_from(rbac.action) {
        Ok(RbacAction::Allow) => false,
        Ok(RbacAction::Deny) => true,
        _ => {
            r.refuse(format!("{here}.action"), "only ALLOW and DENY");
            return None;
        }
    };
    let mut names: Vec<&String> = rbac.policies.keys().collect();
    names.sort();
    let policies = names
        .into_iter()
        .map(|name| {
            policy(
                name,
                &rbac.policies[name],
                &format!("{here}.policies[{name}]"),
                r,
            )
        })
        .collect();
    Some(Rules { deny, policies })
}

fn policy(name: &str, p: &XdsPolicy, here: &str, r: &mut Refusals) -> Policy {
    r.unset(&format!("{here}.condition"), &p.condition);
    r.unset(&format!("{here}.checked_condition"), &p.checked_condition);
    Policy {
        name: name.to_string(),
        principals: p
            .principals
            .iter()
            .enumerate()
            .filter_map(|(i, x)| principal(x, &format!("{here}.principals[{i}]"), r))
            .collect(),
        permissions: p
            .permissions
            .iter()
            .enumerate()
            .filter_map(|(i, x)| permission(x, &format!("{here}.permissions[{i}]"), r))
            .collect(),
    }
}

fn principal(p: &XdsPrincipal, here: &str, r: &mut Refusals) -> Option<Principal> {
    match &p.identifier {
        Some(Identifier::Any(true)) => Some(Principal::Any),
        Some(Identifier::Authenticated(a)) => {
            let matcher = a.principal_name.clone().unwrap_or_default();
            match (&matcher.match_pattern, matcher.ignore_case) {
                (Some(MatchPattern::Exact(v)), false) => {
                    Some(Principal::Authenticated(ValueMatch::Exact(v.clone())))
                }
                (Some(MatchPattern::Prefix(v)), false) => {
                    Some(Principal::Authenticated(ValueMatch::Prefix(v.clone())))
                }
                _ => {
                    r.refuse(here, "only an exact or prefix principal name");
                    None
                }
            }
        }
        Some(Identifier::DirectRemoteIp(range)) => cidr(range, here, r),
        _ => {
            r.refuse(here, "only any, authenticated and direct_remote_ip");
            None
        }
    }
}

fn cidr(range: &CidrRange, here: &str, r: &mut Refusals) -> Option<Principal> {
    let Ok(address) = range.address_prefix.parse::<IpAddr>() else {
        r.refuse(
            here,
            format!("{:?} is not an IP address", range.address_prefix),
        );
        return None;
    };
    let full = if address.is_ipv4() { 32 } else { 128 };
    let length = range.prefix_len.map_or(full, |l| l.value);
    match u8::try_from(length) {
        Ok(length) if u32::from(length) <= full => Some(Principal::DirectRemoteIp(address, length)),
        _ => {
            r.refuse(here, format!("prefix length {length} is out of range"));
            None
        }
    }
}

fn permission(p: &XdsPermission, here: &str, r: &mut Refusals) -> Option<Permission> {
    match &p.rule {
        Some(Rule::Any(true)) => Some(Permission::Any),
        Some(Rule::AndRules(set)) => Some(Permission::And(
            set.rules
                .iter()
                .enumerate()
                .filter_map(|(i, x)| permission(x, &format!("{here}.and_rules[{i}]"), r))
                .collect(),
        )),
        Some(Rule::UrlPath(path)) => match &path.rule {
            Some(PathRule::Path(m)) if !m.ignore_case => match &m.match_pattern {
                Some(MatchPattern::Exact(v)) => {
                    Some(Permission::Path(ValueMatch::Exact(v.clone())))
                }
                Some(MatchPattern::Prefix(v)) => {
                    Some(Permission::Path(ValueMatch::Prefix(v.clone())))
                }
                Some(MatchPattern::SafeRegex(re)) => {
                    checked_regex(&re.regex, &format!("{here}.url_path"), r)
                        .map(|pattern| Permission::Path(ValueMatch::Regex(pattern)))
                }
                _ => {
                    r.refuse(here, "only an exact, prefix or regex path");
                    None
                }
            },
            _ => {
                r.refuse(here, "only a case-sensitive path");
                None
            }
        },
        Some(Rule::Header(h)) => Some(Permission::Header(header_match(
            h,
            &format!("{here}.header"),
            r,
        ))),
        Some(Rule::SourcedMetadata(sourced)) => claim(sourced, here, r),
        _ => {
            r.refuse(
                here,
                "only any, and_rules, url_path, header and end-user token claims",
            );
            None
        }
    }
}

/// The one metadata rule weft writes: a claim of the JWT filter's payload
/// equal to one of some strings, or a list holding one.
fn claim(sourced: &SourcedMetadata, here: &str, r: &mut Refusals) -> Option<Permission> {
    let refuse = |r: &mut Refusals| {
        r.refuse(
            here,
            "only a claim of the end-user token equal to (or, for a list, holding) one of some strings",
        );
        None
    };
    if sourced.metadata_source != MetadataSource::Dynamic as i32 {
        return refuse(r);
    }
    let Some(matcher) = &sourced.metadata_matcher else {
        return refuse(r);
    };
    if matcher.filter != JWT_FILTER || matcher.invert {
        return refuse(r);
    }
    let keys: Vec<String> = matcher
        .path
        .iter()
        .filter_map(|p| p.segment.as_ref().map(|Segment::Key(k)| k.clone()))
        .collect();
    // The payload's own key first, then the claim's.
    let Some((_, path)) = keys.split_first() else {
        return refuse(r);
    };
    let Some(ValuePattern::OrMatch(or)) = matcher
        .value
        .as_ref()
        .and_then(|v| v.match_pattern.as_ref())
    else {
        return refuse(r);
    };
    let (mut values, mut listed) = (Vec::new(), Vec::new());
    for m in &or.value_matchers {
        match &m.match_pattern {
            Some(ValuePattern::StringMatch(s)) if !s.ignore_case => match &s.match_pattern {
                Some(MatchPattern::Exact(v)) => values.push(v.clone()),
                _ => return refuse(r),
            },
            Some(ValuePattern::ListMatch(list)) => match &list.match_pattern {
                Some(ListPattern::OneOf(inner)) => match &inner.match_pattern {
                    Some(ValuePattern::StringMatch(s)) if !s.ignore_case => {
                        match &s.match_pattern {
                            Some(MatchPattern::Exact(v)) => listed.push(v.clone()),
                            _ => return refuse(r),
                        }
                    }
                    _ => return refuse(r),
                },
                None => return refuse(r),
            },
            _ => return refuse(r),
        }
    }
    values.sort();
    values.dedup();
    listed.sort();
    listed.dedup();
    // Each value is matched as a string and as a list member alike.
    if values != listed {
        return refuse(r);
    }
    Some(Permission::Claim {
        path: path.to_vec(),
        values,
    })
}
