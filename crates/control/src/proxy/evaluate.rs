//! What a proxy does with one request, worked out on the proxy model by
//! the rules Envoy applies to the resources it becomes: virtual hosts by
//! domain (exact, then the longest `*.` suffix, then `.*` prefix, then
//! `*`), the first route whose conditions all hold, deny rules before
//! allow rules. `weft explain` follows a request through it; the tests
//! that compare it with real traffic keep the two in step.

use std::collections::BTreeMap;

use super::{
    AccessRule, Authorization, CallerId, HeaderCondition, HeaderTest, JwtCheck, Route, RouteMatch,
    RouteTable, ValueTest, VirtualHost,
};

/// A request as the proxies see it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// `:path`: the path and its query string.
    pub path: String,
    /// The host, without a port.
    pub host: String,
    /// By lowercase name.
    pub headers: BTreeMap<String, String>,
    /// The caller's SPIFFE ID, proved over mutual TLS.
    pub principal: Option<String>,
    /// The claims of a valid end-user token; none without one.
    pub claims: Option<BTreeMap<String, Vec<String>>>,
}

impl Request {
    /// A header's value; the pseudo-headers too.
    fn header(&self, name: &str) -> Option<&str> {
        match name {
            ":method" => Some(&self.method),
            ":path" => Some(&self.path),
            ":authority" | "host" => Some(&self.host),
            other => self.headers.get(other).map(String::as_str),
        }
    }

    /// The path without its query string.
    fn path_only(&self) -> &str {
        self.path
            .split_once('?')
            .map_or(&self.path, |(path, _)| path)
    }

    /// The query string's parameters, as sent.
    fn query(&self) -> impl Iterator<Item = (&str, &str)> {
        let query = self.path.split_once('?').map_or("", |(_, q)| q);
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
    }
}

/// Envoy's safe regexes match the whole value.
fn full_match(pattern: &str, value: &str) -> bool {
    regex::Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|r| r.is_match(value))
}

impl HeaderCondition {
    pub fn matches(&self, request: &Request) -> bool {
        let value = request.header(&self.name);
        match (&self.test, value) {
            (HeaderTest::Present(present), value) => value.is_some() == *present,
            (HeaderTest::NotRegex(pattern), value) => {
                !value.is_some_and(|v| full_match(pattern, v))
            }
            (_, None) => false,
            (HeaderTest::Exact(expected), Some(v)) => v == expected,
            (HeaderTest::Prefix(prefix), Some(v)) => v.starts_with(prefix.as_str()),
            (HeaderTest::Regex(pattern), Some(v)) => full_match(pattern, v),
        }
    }
}

impl RouteMatch {
    /// Whether a route (or an authorization rule's request) matches.
    pub fn matches(&self, request: &Request) -> bool {
        let path = match (&self.path, &self.prefix, &self.regex) {
            (Some(exact), _, _) => request.path_only() == exact,
            (None, Some(prefix), _) => request.path.starts_with(prefix.as_str()),
            (None, None, Some(pattern)) => full_match(pattern, request.path_only()),
            (None, None, None) => true,
        };
        path && self.headers.iter().all(|h| h.matches(request))
            && self.query.iter().all(|q| {
                request.query().any(|(name, value)| {
                    name == q.name
                        && match &q.test {
                            None => true,
                            Some(ValueTest::Exact(expected)) => value == expected,
                            Some(ValueTest::Regex(pattern)) => full_match(pattern, value),
                        }
                })
            })
    }
}

impl RouteTable {
    /// The virtual host a request for `host` lands on.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let host = host.to_ascii_lowercase();
        let domains = |vh: &VirtualHost| -> Vec<String> {
            vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect()
        };
        let all = || self.virtual_hosts.iter().map(|vh| (vh, domains(vh)));
        if let Some((vh, _)) = all().find(|(_, d)| d.contains(&host)) {
            return Some(vh);
        }
        let longest = |pick: &dyn Fn(&str) -> Option<usize>| {
            all()
                .filter_map(|(vh, d)| d.iter().filter_map(|d| pick(d)).max().map(|n| (n, vh)))
                .max_by_key(|(n, _)| *n)
                .map(|(_, vh)| vh)
        };
        let suffix = |d: &str| {
            d.strip_prefix('*')
                .filter(|s| !s.is_empty() && host.len() > s.len() && host.ends_with(s))
                .map(str::len)
        };
        let prefix = |d: &str| {
            d.strip_suffix('*')
                .filter(|p| !p.is_empty() && host.len() > p.len() && host.starts_with(p))
                .map(str::len)
        };
        longest(&suffix).or_else(|| longest(&prefix)).or_else(|| {
            all()
                .find(|(_, d)| d.iter().any(|d| d == "*"))
                .map(|(vh, _)| vh)
        })
    }
}

impl VirtualHost {
    /// The first route that matches, and its place.
    pub fn route(&self, request: &Request) -> Option<(usize, &Route)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matcher.matches(request))
    }
}

impl AccessRule {
    pub fn matches(&self, request: &Request) -> bool {
        let principal = request.principal.as_deref();
        let caller = self.callers.is_empty() && self.sources.is_empty()
            || self.callers.iter().any(|c| match (c, principal) {
                (CallerId::Exact(id), Some(p)) => p == id,
                (CallerId::Prefix(prefix), Some(p)) => p.starts_with(prefix.as_str()),
                (_, None) => false,
            });
        let to = self.requests.is_empty() || self.requests.iter().any(|r| r.matches(request));
        let claims = self.claims.iter().all(|(claim, accepted)| {
            let carried = request.claims.as_ref().and_then(|c| c.get(claim));
            carried.is_some_and(|values| values.iter().any(|v| accepted.contains(v)))
        });
        caller && to && claims
    }
}

/// How the service called decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A deny rule matches (its name).
    Denied(String),
    /// An allow rule matches and no deny rule does.
    Allowed(String),
    /// No allow rule matches: refused.
    NotAllowed,
}

impl Authorization {
    pub fn decide(&self, request: &Request) -> Decision {
        if let Some(rule) = self.deny.iter().find(|r| r.matches(request)) {
            return Decision::Denied(rule.name.clone());
        }
        match self.allow.iter().find(|r| r.matches(request)) {
            Some(rule) => Decision::Allowed(rule.name.clone()),
            None => Decision::NotAllowed,
        }
    }
}

impl JwtCheck {
    /// Whether the request must carry a valid token (elsewhere one is
    /// checked only when present).
    pub fn requires_token(&self, request: &Request) -> bool {
        self.required_for.is_empty() || self.required_for.iter().any(|m| m.matches(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{Action, Forward};

    fn request(path: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            host: "reviews".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Request::default()
        }
    }

    fn host(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: Vec::new(),
            authorization: None,
            rate_limit: None,
            shared_limits: Vec::new(),
            login: None,
        }
    }

    #[test]
    fn virtual_hosts_are_picked_as_envoy_picks_them() {
        let table = RouteTable {
            name: "t".into(),
            virtual_hosts: vec![
                host("any", &["*"]),
                host("short", &["*.example.com"]),
                host("long", &["*.api.example.com"]),
                host("prefix", &["api.*"]),
                host("exact", &["Reviews", "reviews.shop"]),
            ],
        };
        let picked = |h: &str| table.virtual_host(h).map(|vh| vh.name.as_str());
        assert_eq!(picked("reviews"), Some("exact"));
        assert_eq!(picked("a.api.example.com"), Some("long"));
        assert_eq!(picked("a.b.example.com"), Some("short"));
        assert_eq!(picked("api.other"), Some("prefix"));
        assert_eq!(picked("example.com"), Some("any"));
    }

    #[test]
    fn routes_match_on_path_headers_and_query() {
        let m = |path: Option<&str>, prefix: Option<&str>, regex: Option<&str>| RouteMatch {
            path: path.map(str::to_string),
            prefix: prefix.map(str::to_string),
            regex: regex.map(str::to_string),
            ..RouteMatch::default()
        };
        assert!(m(Some("/a"), None, None).matches(&request("/a?x=1", &[])));
        assert!(!m(Some("/a"), None, None).matches(&request("/ab", &[])));
        assert!(m(None, Some("/beta/"), None).matches(&request("/beta/x", &[])));
        assert!(m(None, None, Some("/items/[0-9]+")).matches(&request("/items/42?q", &[])));
        assert!(!m(None, None, Some("/items/[0-9]+")).matches(&request("/items/42x", &[])));
        let header = |test| RouteMatch {
            headers: vec![HeaderCondition {
                name: "x-canary".into(),
                test,
            }],
            ..RouteMatch::default()
        };
        let canary = request("/", &[("x-canary", "yes")]);
        let plain = request("/", &[]);
        assert!(header(HeaderTest::Exact("yes".into())).matches(&canary));
        assert!(!header(HeaderTest::Exact("yes".into())).matches(&plain));
        assert!(header(HeaderTest::Present(false)).matches(&plain));
        assert!(header(HeaderTest::NotRegex("y.*".into())).matches(&plain));
        assert!(!header(HeaderTest::NotRegex("y.*".into())).matches(&canary));
        let query = RouteMatch {
            query: vec![super::super::QueryCondition {
                name: "preview".into(),
                test: Some(ValueTest::Exact("1".into())),
            }],
            ..RouteMatch::default()
        };
        assert!(query.matches(&request("/cart?a=b&preview=1", &[])));
        assert!(!query.matches(&request("/cart?preview=2", &[])));
        let table = VirtualHost {
            routes: vec![
                Route::new(
                    header(HeaderTest::Exact("yes".into())),
                    Action::Forward(Forward::to("v2")),
                ),
                Route::new(RouteMatch::default(), Action::Forward(Forward::to("v1"))),
            ],
            ..host("reviews", &["reviews"])
        };
        assert_eq!(table.route(&canary).map(|(i, _)| i), Some(0));
        assert_eq!(table.route(&plain).map(|(i, _)| i), Some(1));
    }

    #[test]
    fn deny_rules_come_before_allow_rules_and_claims_must_be_carried() {
        let rule = |name: &str, caller: Option<&str>, claims: &[(&str, &str)]| AccessRule {
            name: name.into(),
            callers: caller
                .map(|c| CallerId::Exact(c.into()))
                .into_iter()
                .collect(),
            sources: Vec::new(),
            requests: Vec::new(),
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
        };
        let authorization = Authorization {
            deny: vec![rule(
                "deny-mallory",
                Some("spiffe://weft/ns/shop/sa/mallory"),
                &[],
            )],
            allow: vec![rule("admins", None, &[("groups", "admin")])],
        };
        let from = |principal: &str, groups: Option<&[&str]>| Request {
            principal: Some(principal.into()),
            claims: groups.map(|g| {
                BTreeMap::from([(
                    "groups".to_string(),
                    g.iter().map(|s| s.to_string()).collect(),
                )])
            }),
            ..request("/", &[])
        };
        let client = "spiffe://weft/ns/shop/sa/client";
        assert_eq!(
            authorization.decide(&from("spiffe://weft/ns/shop/sa/mallory", Some(&["admin"]))),
            Decision::Denied("deny-mallory".into())
        );
        assert_eq!(
            authorization.decide(&from(client, Some(&["dev", "admin"]))),
            Decision::Allowed("admins".into())
        );
        assert_eq!(
            authorization.decide(&from(client, Some(&["dev"]))),
            Decision::NotAllowed
        );
        assert_eq!(
            authorization.decide(&from(client, None)),
            Decision::NotAllowed
        );
    }
}
