//! Routing: a service's routes (its ServiceRoute's rules in order, then
//! everything to all instances), the names callers use for it, and the
//! answer for names nobody serves.

use std::collections::BTreeMap;

use weft_api::traffic::RequestMatch;

use super::plan::{ServiceKey, ServicePlan};
use crate::proxy::{
    Action, HeaderCondition, HeaderTest, QueryCondition, Route, RouteMatch, ValueTest, VirtualHost,
};

impl ServicePlan<'_> {
    /// The service's routes: its ServiceRoute's rules in order, then
    /// everything else to all instances.
    pub(super) fn routes(&self) -> Vec<Route> {
        let mut routes = Vec::new();
        let mut caught_all = false;
        if let Some(route) = self.route {
            for (i, rule) in route.spec.rules.iter().enumerate() {
                let clusters: BTreeMap<String, u32> = rule
                    .destinations
                    .iter()
                    .map(|d| (self.key.cluster_name(d.subset.as_deref()), d.weight))
                    .collect();
                let action = Action::Forward(self.forward(clusters));
                let name = format!("{}#spec.rules[{i}]", route.path);
                if rule.matches.is_empty() {
                    routes.push(Route::new(RouteMatch::default(), action).named(name));
                    caught_all = true;
                    break;
                }
                for (j, m) in rule.matches.iter().enumerate() {
                    let route = Route::new(request_match(m), action.clone());
                    routes.push(route.named(format!("{name}.matches[{j}]")));
                }
            }
        }
        if !caught_all {
            let all = BTreeMap::from([(self.key.cluster_name(None), 100)]);
            routes.push(Route::new(
                RouteMatch::default(),
                Action::Forward(self.forward(all)),
            ));
        }
        routes
    }

    /// Names a caller in `namespace` may use for this service.
    pub(super) fn domains(&self, caller_namespace: &str) -> Vec<String> {
        let ServiceKey { name, namespace } = &self.key;
        let mut domains = vec![
            format!("{name}.{namespace}"),
            format!("{name}.{namespace}.svc"),
        ];
        if namespace == caller_namespace {
            domains.insert(0, name.clone());
        }
        domains
    }
}

/// A request condition in proxy terms; the method is the `:method` header.
pub(super) fn request_match(m: &RequestMatch) -> RouteMatch {
    let mut headers: Vec<HeaderCondition> = m
        .headers
        .iter()
        .map(|h| HeaderCondition {
            name: h.name.clone(),
            test: match (&h.exact, &h.prefix, &h.regex, h.present) {
                (Some(v), _, _, _) => HeaderTest::Exact(v.clone()),
                (None, Some(v), _, _) => HeaderTest::Prefix(v.clone()),
                (None, None, Some(v), _) => HeaderTest::Regex(v.clone()),
                (None, None, None, present) => HeaderTest::Present(present.unwrap_or(true)),
            },
        })
        .collect();
    if let Some(method) = m.method {
        headers.insert(
            0,
            HeaderCondition {
                name: ":method".into(),
                test: HeaderTest::Exact(method.as_str().into()),
            },
        );
    }
    let (path, prefix, regex) = match &m.path {
        Some(p) => (p.exact.clone(), p.prefix.clone(), p.regex.clone()),
        None => (None, None, None),
    };
    let query = m
        .query
        .iter()
        .map(|q| QueryCondition {
            name: q.name.clone(),
            test: match (&q.exact, &q.regex) {
                (Some(v), _) => Some(ValueTest::Exact(v.clone())),
                (None, Some(v)) => Some(ValueTest::Regex(v.clone())),
                (None, None) => None,
            },
        })
        .collect();
    RouteMatch {
        path,
        prefix,
        regex,
        headers,
        query,
    }
}

/// The virtual host of names nobody serves.
pub(super) const UNKNOWN_HOST: &str = "unknown";

/// The answer for a hostname the mesh does not know, or (`declared`) one
/// the proxy did not declare it calls.
pub(super) fn unknown_host(declared: bool) -> VirtualHost {
    let body = if declared {
        "weft: this proxy declared the services it calls (weft sidecar --calls) and this is not one of them; add it there, or call one of them as <service>, <service>.<namespace> or <service>.<namespace>.svc\n"
    } else {
        "weft: no service by this name is reachable from here; call it as <service>, <service>.<namespace> or <service>.<namespace>.svc\n"
    };
    VirtualHost {
        name: UNKNOWN_HOST.into(),
        domains: vec!["*".into()],
        routes: vec![Route::new(
            RouteMatch::default(),
            Action::DirectResponse {
                status: 404,
                body: body.into(),
            },
        )],
        authorization: None,
        rate_limit: None,
        shared_limits: Vec::new(),
        login: None,
    }
}
