//! Routing: which virtual host a request lands on, which route takes it,
//! and which of the route's clusters it goes to, by Envoy's rules:
//! domains exact first, then the longest `*.` suffix, the longest `.*`
//! prefix, then `*`; routes in order, the first whose conditions all
//! hold; exact and regex paths compared without the query string, regexes
//! matching whole values, header values of one name joined by commas.

use http::request::Parts;

use crate::config::{
    Forward, HeaderMatch, PathMatch, QueryMatch, Route, RouteMatch, RouteTable, ValueMatch,
    VirtualHost,
};

/// A request's value for a header name, pseudo-headers included.
pub fn header_value(parts: &Parts, name: &str) -> Option<String> {
    match name {
        ":method" => Some(parts.method.as_str().to_string()),
        ":path" => parts.uri.path_and_query().map(|p| p.as_str().to_string()),
        ":authority" | "host" => host(parts).map(str::to_string),
        ":scheme" => Some(parts.uri.scheme_str().unwrap_or("http").to_string()),
        other => {
            let values: Vec<&str> = parts
                .headers
                .get_all(other)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        }
    }
}

/// The request's host: `Host`, or the URI's authority (HTTP/2).
fn host(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
}

/// `host` without its port, lowercase, as the listeners strip any port.
pub fn host_without_port(parts: &Parts) -> String {
    let host = host(parts).unwrap_or_default();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    };
    name.to_ascii_lowercase()
}

impl ValueMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => value == v,
            ValueMatch::Prefix(p) => value.starts_with(p.as_str()),
            ValueMatch::Regex(pattern) => pattern.matches(value),
            ValueMatch::Present => true,
        }
    }
}

impl HeaderMatch {
    pub fn matches(&self, parts: &Parts) -> bool {
        let matched = header_value(parts, &self.name).is_some_and(|v| self.test.matches(&v));
        matched != self.invert
    }
}

impl QueryMatch {
    fn matches(&self, query: &str) -> bool {
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .any(|(name, value)| {
                name == self.name && self.test.as_ref().is_none_or(|t| t.matches(value))
            })
    }
}

impl RouteMatch {
    pub fn matches(&self, parts: &Parts) -> bool {
        let full = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let (path, query) = full.split_once('?').unwrap_or((full, ""));
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => full.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(pattern) => pattern.matches(path),
        };
        path_ok
            && self.headers.iter().all(|h| h.matches(parts))
            && self.query.iter().all(|q| q.matches(query))
    }
}

impl RouteTable {
    /// The virtual host for `host` (lowercase, without a port).
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let hosts = || self.virtual_hosts.iter();
        if let Some(vh) = hosts().find(|vh| vh.domains.iter().any(|d| d == host)) {
            return Some(vh);
        }
        let longest = |pick: &dyn Fn(&str) -> Option<usize>| {
            hosts()
                .filter_map(|vh| {
                    vh.domains
                        .iter()
                        .filter_map(|d| pick(d))
                        .max()
                        .map(|n| (n, vh))
                })
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
        longest(&suffix)
            .or_else(|| longest(&prefix))
            .or_else(|| hosts().find(|vh| vh.domains.iter().any(|d| d == "*")))
    }
}

impl VirtualHost {
    /// The first route that matches, and its place.
    pub fn route(&self, parts: &Parts) -> Option<(usize, &Route)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matcher.matches(parts))
    }
}

impl Forward {
    /// The cluster at `point` of the weights (any number: taken modulo
    /// their total), so a random point splits by weight and a request's
    /// hash keeps a sticky client on its side.
    pub fn cluster_at(&self, point: u64) -> Option<&str> {
        let total: u64 = self.clusters.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return self.clusters.first().map(|(c, _)| c.as_str());
        }
        let mut at = point % total;
        for (cluster, weight) in &self.clusters {
            let weight = u64::from(*weight);
            if at < weight {
                return Some(cluster);
            }
            at -= weight;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, Pattern, Route};

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: Vec::new(),
            authorization: Default::default(),
        }
    }

    #[test]
    fn hosts_are_picked_as_envoy_picks_them() {
        let table = RouteTable {
            name: "t".into(),
            virtual_hosts: vec![
                vh("any", &["*"]),
                vh("short", &["*.example.com"]),
                vh("long", &["*.api.example.com"]),
                vh("prefix", &["api.*"]),
                vh("exact", &["reviews", "reviews.shop"]),
            ],
        };
        let picked = |h: &str| table.virtual_host(h).map(|v| v.name.as_str());
        assert_eq!(picked("reviews"), Some("exact"));
        assert_eq!(picked("a.api.example.com"), Some("long"));
        assert_eq!(picked("a.b.example.com"), Some("short"));
        assert_eq!(picked("api.other"), Some("prefix"));
        assert_eq!(picked("nope"), Some("any"));
        let p = parts("GET", "/", &[("host", "Reviews.Shop:8080")]);
        assert_eq!(host_without_port(&p), "reviews.shop");
    }

    #[test]
    fn routes_match_paths_headers_and_queries_in_order() {
        let header = |name: &str, test: ValueMatch, invert: bool| HeaderMatch {
            name: name.into(),
            test,
            invert,
        };
        let m = |path: PathMatch, headers: Vec<HeaderMatch>| RouteMatch {
            path,
            headers,
            query: Vec::new(),
        };
        let forward = |c: &str| {
            Action::Forward(Forward {
                clusters: vec![(c.into(), 1)],
                timeout: None,
                retry: None,
                hash_on: None,
            })
        };
        let route = |name: &str, matcher: RouteMatch| Route {
            name: name.into(),
            matcher,
            action: forward(name),
        };
        let host = VirtualHost {
            routes: vec![
                route(
                    "canary",
                    m(
                        PathMatch::Prefix("/".into()),
                        vec![header("x-canary", ValueMatch::Exact("yes".into()), false)],
                    ),
                ),
                route(
                    "items",
                    m(
                        PathMatch::Regex(Pattern::new("/items/[0-9]+").unwrap()),
                        vec![],
                    ),
                ),
                route(
                    "delete",
                    m(
                        PathMatch::Exact("/cart".into()),
                        vec![header(":method", ValueMatch::Exact("DELETE".into()), false)],
                    ),
                ),
                route(
                    "no-debug",
                    m(
                        PathMatch::Prefix("/".into()),
                        vec![header("x-debug", ValueMatch::Present, true)],
                    ),
                ),
                route("rest", m(PathMatch::Prefix("/".into()), vec![])),
            ],
            ..vh("reviews", &["reviews"])
        };
        let routed = |p: Parts| host.route(&p).map(|(_, r)| r.name.clone());
        assert_eq!(
            routed(parts("GET", "/", &[("x-canary", "yes")])).as_deref(),
            Some("canary")
        );
        assert_eq!(
            routed(parts("GET", "/items/42?x=1", &[])).as_deref(),
            Some("items")
        );
        assert_eq!(
            routed(parts("DELETE", "/cart?y", &[])).as_deref(),
            Some("delete")
        );
        assert_eq!(
            routed(parts("GET", "/items/4x", &[])).as_deref(),
            Some("no-debug")
        );
        assert_eq!(
            routed(parts("GET", "/", &[("x-debug", "1")])).as_deref(),
            Some("rest")
        );
        let query = RouteMatch {
            path: PathMatch::Prefix("/".into()),
            headers: Vec::new(),
            query: vec![QueryMatch {
                name: "preview".into(),
                test: Some(ValueMatch::Exact("1".into())),
            }],
        };
        assert!(query.matches(&parts("GET", "/cart?a=b&preview=1", &[])));
        assert!(!query.matches(&parts("GET", "/cart?preview=2", &[])));
    }

    #[test]
    fn weights_split_by_point() {
        let forward = Forward {
            clusters: vec![("v1".into(), 80), ("v2".into(), 20)],
            timeout: None,
            retry: None,
            hash_on: None,
        };
        let v2 = (0..1000)
            .filter(|p| forward.cluster_at(*p) == Some("v2"))
            .count();
        assert_eq!(v2, 200);
    }
}
