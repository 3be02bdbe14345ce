//! Authorization at the service's proxy: the RBAC filters of its listener
//! in order, each with the rules the virtual host gives it. A deny
//! filter refuses what one of its policies matches (the refusal names
//! it, as Envoy's `rbac_access_denied_matched_policy[NAME]` does); an
//! allow filter refuses what none matches.

use std::net::IpAddr;

use http::request::Parts;
use serde_json::Value;

use crate::config::{HttpFilter, Permission, Policy, Principal, Rules, VirtualHost};

/// Who sent the request, as the connection proves it.
pub struct Caller<'a> {
    /// The URI SAN of the client certificate, checked by mutual TLS.
    pub principal: Option<&'a str>,
    pub address: IpAddr,
    /// The payload of its valid end-user token.
    pub claims: Option<&'a Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused by a deny filter's policy (named), or by an allow filter
    /// no policy of which matched (none).
    Denied(Option<String>),
}

impl Verdict {
    /// Envoy's response code details for the verdict.
    pub fn details(&self) -> Option<String> {
        match self {
            Verdict::Allowed => None,
            Verdict::Denied(Some(policy)) => {
                Some(format!("rbac_access_denied_matched_policy[{policy}]"))
            }
            Verdict::Denied(None) => Some("rbac_access_denied_matched_policy[none]".into()),
        }
    }
}

/// The verdict of `filters` (a listener's, in order) on a request to
/// `host`.
pub fn authorize(
    filters: &[HttpFilter],
    host: &VirtualHost,
    parts: &Parts,
    caller: &Caller,
) -> Verdict {
    for filter in filters {
        let HttpFilter::Rbac { name, deny } = filter else {
            continue;
        };
        // A filter the virtual host gives no rules: Envoy applies the
        // listener's own, which weft leaves empty.
        let empty = Rules {
            deny: *deny,
            policies: Vec::new(),
        };
        let rules = host.authorization.get(name).unwrap_or(&empty);
        let matched = rules.policies.iter().find(|p| p.matches(parts, caller));
        match (rules.deny, matched) {
            (true, Some(policy)) => return Verdict::Denied(Some(policy.name.clone())),
            (false, None) => return Verdict::Denied(None),
            _ => {}
        }
    }
    Verdict::Allowed
}

impl Policy {
    pub fn matches(&self, parts: &Parts, caller: &Caller) -> bool {
        self.principals.iter().any(|p| p.matches(caller))
            && self.permissions.iter().any(|p| p.matches(parts, caller))
    }
}

impl Principal {
    fn matches(&self, caller: &Caller) -> bool {
        match self {
            Principal::Any => true,
            Principal::Authenticated(m) => caller.principal.is_some_and(|p| m.matches(p)),
            Principal::DirectRemoteIp(net, length) => in_range(caller.address, *net, *length),
        }
    }
}

fn in_range(address: IpAddr, net: IpAddr, length: u8) -> bool {
    let bits = |a: IpAddr| -> (u128, u32) {
        match a {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    };
    let ((a, width), (n, net_width)) = (bits(address), bits(net));
    if width != net_width {
        return false;
    }
    let mask = if length == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(length))
    };
    a & mask == n & mask
}

impl Permission {
    fn matches(&self, parts: &Parts, caller: &Caller) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(all) => all.iter().all(|p| p.matches(parts, caller)),
            Permission::Path(m) => m.matches(parts.uri.path()),
            Permission::Header(h) => h.matches(parts),
            Permission::Claim { path, values } => {
                let claim = caller
                    .claims
                    .and_then(|claims| path.iter().try_fold(claims, |v, key| v.get(key.as_str())));
                match claim {
                    Some(Value::String(s)) => values.contains(s),
                    Some(Value::Array(items)) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .any(|s| values.iter().any(|v| v == s)),
                    _ => false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HeaderMatch, ValueMatch};

    fn parts(method: &str, uri: &str) -> Parts {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn host() -> VirtualHost {
        let policy = |name: &str, principals, permissions| Policy {
            name: name.into(),
            principals,
            permissions,
        };
        let client = "spiffe://weft/ns/shop/sa/client";
        VirtualHost {
            name: "inbound".into(),
            domains: vec!["*".into()],
            routes: Vec::new(),
            authorization: [
                (
                    "deny".to_string(),
                    Rules {
                        deny: true,
                        policies: vec![policy(
                            "s#deny[0]",
                            vec![Principal::Any],
                            vec![Permission::Path(ValueMatch::Prefix("/admin".into()))],
                        )],
                    },
                ),
                (
                    "allow".to_string(),
                    Rules {
                        deny: false,
                        policies: vec![
                            policy(
                                "s#allow[0]",
                                vec![Principal::Authenticated(ValueMatch::Exact(client.into()))],
                                vec![Permission::And(vec![Permission::Header(HeaderMatch {
                                    name: ":method".into(),
                                    test: ValueMatch::Exact("GET".into()),
                                    invert: false,
                                })])],
                            ),
                            policy(
                                "s#allow[1]",
                                vec![Principal::DirectRemoteIp("10.0.0.0".parse().unwrap(), 8)],
                                vec![Permission::Claim {
                                    path: vec!["realm".into(), "roles".into()],
                                    values: vec!["admin".into()],
                                }],
                            ),
                        ],
                    },
                ),
            ]
            .into(),
        }
    }

    #[test]
    fn deny_filters_come_first_and_allow_filters_need_a_match() {
        let filters = [
            HttpFilter::Rbac {
                name: "deny".into(),
                deny: true,
            },
            HttpFilter::Rbac {
                name: "allow".into(),
                deny: false,
            },
            HttpFilter::Router {
                envoy_headers: true,
            },
        ];
        let loopback = "127.0.0.1".parse().unwrap();
        let client = Caller {
            principal: Some("spiffe://weft/ns/shop/sa/client"),
            address: loopback,
            claims: None,
        };
        let h = host();
        let verdict = |p: Parts, c: &Caller| authorize(&filters, &h, &p, c);
        assert_eq!(verdict(parts("GET", "/"), &client), Verdict::Allowed);
        assert_eq!(
            verdict(parts("GET", "/admin/x"), &client)
                .details()
                .unwrap(),
            "rbac_access_denied_matched_policy[s#deny[0]]"
        );
        assert_eq!(
            verdict(parts("DELETE", "/"), &client),
            Verdict::Denied(None)
        );
        let admin = serde_json::json!({"realm": {"roles": ["dev", "admin"]}});
        let from_inside = Caller {
            principal: None,
            address: "10.1.2.3".parse().unwrap(),
            claims: Some(&admin),
        };
        assert_eq!(
            verdict(parts("DELETE", "/"), &from_inside),
            Verdict::Allowed
        );
        let outside = Caller {
            address: "11.0.0.1".parse().unwrap(),
            ..from_inside
        };
        assert_eq!(
            verdict(parts("DELETE", "/"), &outside),
            Verdict::Denied(None)
        );
    }
}
