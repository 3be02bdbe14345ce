//! The traffic kinds' validation: bad settings are refused with the field
//! path of every problem; good ones resolve to their place.

mod common;

use common::{Case, assert_problems};
use serde_json::{Value, json};
use weft_api::validate;

fn route(spec: Value) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "ServiceRoute",
           "metadata": {"name": "reviews", "tenant": "retail", "workspace": "shop", "trafficGroup": "web"}, "spec": spec})
}

fn setting(metadata: Value, spec: Value) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "TrafficSetting", "metadata": metadata, "spec": spec})
}

fn at_workspace() -> Value {
    json!({"name": "defaults", "tenant": "retail", "workspace": "shop"})
}

#[test]
fn bad_traffic_settings_name_every_problem() {
    let service = json!({"name": "reviews", "namespace": "shop"});
    let cases: Vec<Case> = vec![
        (
            "split weights, unknown subset, catch-all before others",
            route(json!({"service": service,
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v1", "labels": {}}],
            "rules": [
                {"destinations": [{"subset": "v1", "weight": 90}, {"subset": "v3", "weight": 20}]},
                {"matches": [{"path": {"prefix": "api"}}], "destinations": [{}]}
            ]})),
            vec![
                ("spec.subsets[1].name", "listed twice"),
                ("spec.subsets[1].labels", "at least one label"),
                ("spec.rules[0]", "must be the last rule"),
                ("spec.rules[0].destinations[1].subset", "no subset \"v3\""),
                ("spec.rules[0].destinations", "add up to 100, not 110"),
                ("spec.rules[1].matches[0].path.prefix", "must start with /"),
            ],
        ),
        (
            "regular expressions must compile; query parameters take one test",
            route(json!({"service": service,
                "rules": [{"matches": [
                    {"path": {"regex": "/items/[0-9"}},
                    {"headers": [{"name": "x-user", "regex": "(a"}]},
                    {"query": [{"name": "", "exact": "1"}, {"name": "lang", "regex": "en", "exact": "en"}, {"name": "debug", "present": false}]}
                ], "destinations": [{}]}]})),
            vec![
                (
                    "spec.rules[0].matches[0].path.regex",
                    "is not a regular expression",
                ),
                (
                    "spec.rules[0].matches[1].headers[0].regex",
                    "is not a regular expression",
                ),
                (
                    "spec.rules[0].matches[2].query[0].name",
                    "must not be empty",
                ),
                (
                    "spec.rules[0].matches[2].query[1]",
                    "exactly one of exact, regex, present",
                ),
                (
                    "spec.rules[0].matches[2].query[2].present",
                    "only true can be matched",
                ),
            ],
        ),
        (
            "matches need a condition; headers exactly one test; sticky exactly one",
            route(json!({"service": service,
                "rules": [{"matches": [{}, {"headers": [{"name": "X-User", "exact": "a", "present": true}]}], "destinations": [{}]}],
                "stickySession": {}})),
            vec![
                (
                    "spec.rules[0].matches[0]",
                    "at least one of path, method, headers or query",
                ),
                (
                    "spec.rules[0].matches[1].headers[0].name",
                    "not a lowercase HTTP header name",
                ),
                (
                    "spec.rules[0].matches[1].headers[0]",
                    "exactly one of exact, prefix, regex, present",
                ),
                ("spec.stickySession", "exactly one of header, cookie"),
            ],
        ),
        (
            "unknown method and weight over 100 are schema errors",
            route(
                json!({"service": service, "rules": [{"matches": [{"method": "FETCH"}], "destinations": [{"weight": 101}]}]}),
            ),
            vec![
                ("spec.rules[0].matches[0].method", ""),
                ("spec.rules[0].destinations[0].weight", ""),
            ],
        ),
        (
            "durations, ranges and retry conditions",
            setting(
                at_workspace(),
                json!({
                "timeout": "2s",
                "retries": {"attempts": 11, "perTryTimeout": "5s", "retryOn": ["5xx", "5xx", "sometimes"]},
                "outlierDetection": {"interval": "soon", "maxEjectionPercent": 0},
                "connectionPool": {"idleTimeout": "0s"},
                "loadBalancer": "fastest"}),
            ),
            vec![
                ("spec.retries.attempts", ""),
                ("spec.retries.retryOn[2]", ""),
                ("spec.outlierDetection.maxEjectionPercent", ""),
                ("spec.loadBalancer", ""),
            ],
        ),
        (
            "rules the schema cannot say",
            setting(
                at_workspace(),
                json!({
                "timeout": "2s",
                "retries": {"attempts": 3, "perTryTimeout": "5s", "retryOn": ["5xx", "5xx"], "budget": {"percent": 0}},
                "outlierDetection": {"interval": "soon"},
                "connectionPool": {"idleTimeout": "0s", "connectTimeout": "48h"}}),
            ),
            vec![
                (
                    "spec.retries.perTryTimeout",
                    "longer than the whole request's timeout",
                ),
                ("spec.retries.retryOn[1]", "listed twice"),
                ("spec.retries.budget.percent", "more than 0"),
                ("spec.outlierDetection.interval", "not a duration"),
                ("spec.connectionPool.idleTimeout", "longer than zero"),
                ("spec.connectionPool.connectTimeout", "at most 24h"),
            ],
        ),
        (
            "a setting that sets nothing",
            setting(
                at_workspace(),
                json!({"service": {"name": "Reviews", "namespace": "shop"}}),
            ),
            vec![
                ("spec", "sets nothing"),
                ("spec.service.name", "not a DNS label"),
            ],
        ),
        (
            "locality: unknown, repeated and pointless failover priorities",
            setting(
                at_workspace(),
                json!({"locality": {"failoverPriority": ["region", "planet", "region", "label:"]}}),
            ),
            vec![
                (
                    "spec.locality.failoverPriority[1]",
                    "not region, zone, network or label:KEY",
                ),
                ("spec.locality.failoverPriority[2]", "listed twice"),
                (
                    "spec.locality.failoverPriority[3]",
                    "not region, zone, network or label:KEY",
                ),
            ],
        ),
        (
            "locality: a priority for calls that never leave",
            setting(
                at_workspace(),
                json!({"locality": {"crossCluster": false, "failoverPriority": ["zone"]}}),
            ),
            vec![(
                "spec.locality.failoverPriority",
                "no effect with crossCluster: false",
            )],
        ),
        (
            "a route must be in a traffic group",
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "ServiceRoute",
                   "metadata": {"name": "r", "tenant": "retail", "workspace": "shop"},
                   "spec": {"service": service, "rules": [{"destinations": [{}]}]}}),
            vec![(
                "metadata.workspace",
                "a ServiceRoute sits under a TrafficGroup",
            )],
        ),
    ];
    assert_problems(cases);
}

#[test]
fn good_traffic_settings_resolve_to_their_place() {
    let canary = route(json!({
        "service": {"name": "reviews", "namespace": "shop"},
        "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}],
        "rules": [
            {"matches": [{"headers": [{"name": "x-canary", "exact": "yes"}]}, {"path": {"prefix": "/beta"}, "method": "GET"}],
             "destinations": [{"subset": "v2"}]},
            {"destinations": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}]}
        ],
        "stickySession": {"cookie": {"name": "session", "ttl": "1h"}}
    }));
    assert_eq!(
        validate(&canary).unwrap().path,
        "tenants/retail/workspaces/shop/trafficgroups/web/serviceroutes/reviews"
    );
    let defaults = setting(
        at_workspace(),
        json!({
            "timeout": "15s",
            "retries": {"attempts": 2, "perTryTimeout": "5s", "retryOn": ["connect-failure", "5xx"], "budget": {"percent": 20, "minConcurrency": 3}},
            "circuitBreaker": {"maxConnections": 1000, "maxPendingRequests": 100, "maxRequests": 1000, "maxRetries": 3},
            "outlierDetection": {"consecutive5xx": 5, "interval": "10s", "baseEjectionTime": "30s", "maxEjectionPercent": 50},
            "loadBalancer": "least-request",
            "connectionPool": {"connectTimeout": "1s", "idleTimeout": "5m", "maxRequestsPerConnection": 100},
            "locality": {"failoverPriority": ["network", "region", "label:tier"]}
        }),
    );
    assert_eq!(
        validate(&defaults).unwrap().path,
        "tenants/retail/workspaces/shop/trafficsettings/defaults"
    );
}
