//! Gateway validation: bad gateways are refused with the field path of
//! every problem; a good one resolves to its place in a GatewayGroup.

mod common;

use common::{Case, assert_problems};
use serde_json::{Value, json};
use weft_api::validate;

fn gateway(spec: Value) -> Value {
    json!({
        "apiVersion": "weft.dev/v1alpha1",
        "kind": "Gateway",
        "metadata": {"name": "shop-ingress", "tenant": "retail", "workspace": "shop", "gatewayGroup": "edge"},
        "spec": spec,
    })
}

fn selector() -> Value {
    json!({"namespace": "shop-gateways", "labels": {"app": "ingress"}})
}

/// An HTTPS server of `hostname` on 443 routing everything to reviews.
fn https(name: &str, hostname: &str) -> Value {
    json!({
        "name": name, "port": 443, "hostname": hostname,
        "tls": {"certificate": "shop.example.com"},
        "routes": [{"to": [{"service": "shop/reviews"}]}]
    })
}

#[test]
fn a_full_gateway_is_accepted_in_its_gateway_group() {
    let manifest = gateway(json!({
        "workloadSelector": selector(),
        "http": [
            {
                "name": "shop", "port": 443, "hostname": "shop.example.com",
                "tls": {"mode": "mutual", "certificate": "shop.example.com", "clientCa": "partners.example.com"},
                "authentication": {"jwt": [{"issuer": "https://id.example.com", "jwksUri": "https://id.example.com/jwks"}]},
                "authorization": {
                    "allow": [{"sources": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"], "claims": {"sub": ["alice"]}}],
                    "deny": [{"to": [{"path": {"prefix": "/admin"}}]}]
                },
                "routes": [
                    {
                        "matches": [{"path": {"prefix": "/api"}, "method": "GET"}],
                        "to": [
                            {"service": "shop/reviews", "labels": {"version": "v1"}, "weight": 90},
                            {"service": "shop/reviews", "labels": {"version": "v2"}, "weight": 10}
                        ],
                        "rewrite": {"pathPrefix": "/", "authority": "reviews.internal"},
                        "requestHeaders": {"set": {"x-from": "gateway"}, "remove": ["x-debug"]},
                        "responseHeaders": {"add": {"x-served-by": "weft"}},
                        "cors": {"allowOrigins": ["https://shop.example.com"], "allowMethods": ["GET"], "maxAge": "1h", "allowCredentials": true},
                        "timeout": "5s",
                        "retries": {"attempts": 2, "retryOn": ["connect-failure", "5xx"]}
                    },
                    {"matches": [{"path": {"exact": "/old"}}], "redirect": {"path": "/new", "code": 308}},
                    {"matches": [{"headers": [{"name": "x-region", "exact": "eu"}]}], "clusters": [{"name": "eu-west", "weight": 100}]},
                    {"directResponse": {"status": 404, "body": "nothing here"}}
                ]
            },
            {
                "name": "shop-plain", "port": 80, "hostname": "shop.example.com",
                "routes": [{"redirect": {"scheme": "https"}}]
            },
            https("wildcard", "*.example.com")
        ],
        "tlsPassthrough": [{"name": "db", "port": 8443, "hostname": "db.example.com", "service": "data/postgres"}],
        "tcp": [{"name": "mqtt", "port": 1883, "service": "iot/broker"}]
    }));
    let validated = validate(&manifest).unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(
        validated.path,
        "tenants/retail/workspaces/shop/gatewaygroups/edge/gateways/shop-ingress"
    );
}

#[test]
fn bad_gateways_name_every_problem() {
    let cases: Vec<Case> = vec![
        (
            "no server at all; a bad selector",
            gateway(json!({"workloadSelector": {"namespace": "Shop"}})),
            vec![
                ("spec", "has no server"),
                ("spec.workloadSelector.namespace", "DNS label"),
            ],
        ),
        (
            "two servers claiming one port and hostname; a name used twice",
            gateway(json!({
                "workloadSelector": selector(),
                "http": [https("shop", "shop.example.com"), https("shop", "shop.example.com")]
            })),
            vec![
                ("spec.http[1].name", "spec.http[0] already has this name"),
                (
                    "spec.http[1].hostname",
                    "spec.http[0] already serves shop.example.com on port 443",
                ),
            ],
        ),
        (
            "plain HTTP, TLS terminated, TLS passed through and TCP cannot share a port",
            gateway(json!({
                "workloadSelector": selector(),
                "http": [
                    https("secure", "shop.example.com"),
                    {"name": "plain", "port": 443, "hostname": "other.example.com", "routes": [{"to": [{"service": "shop/reviews"}]}]}
                ],
                "tlsPassthrough": [{"name": "vault", "port": 443, "hostname": "vault.example.com", "service": "shop/vault"}],
                "tcp": [{"name": "raw", "port": 443, "service": "shop/db"}]
            })),
            vec![
                (
                    "spec.http[1].port",
                    "port 443 is taken by spec.http[0] (TLS terminated here)",
                ),
                (
                    "spec.tlsPassthrough[0].port",
                    "port 443 is taken by spec.http[0] (TLS terminated here); TLS passed through",
                ),
                (
                    "spec.tcp[0].port",
                    "port 443 is taken by spec.http[0] (TLS terminated here); TCP",
                ),
            ],
        ),
        (
            "hostnames, ports, certificate names and services are checked",
            gateway(json!({
                "workloadSelector": selector(),
                "http": [{
                    "name": "bad", "port": 0, "hostname": "Shop.Example.com",
                    "tls": {"certificate": "../etc/passwd", "clientCa": "ca.example.com"},
                    "routes": [{"to": [{"service": "reviews"}]}]
                }],
                "tlsPassthrough": [{"name": "pass", "port": 8443, "hostname": "*.*.example.com", "service": "data/Db"}]
            })),
            vec![
                ("spec.http[0].port", "between 1 and 65535"),
                ("spec.http[0].hostname", "not a DNS name"),
                ("spec.http[0].tls.certificate", "not a DNS name"),
                ("spec.http[0].tls.clientCa", "only mutual TLS"),
                (
                    "spec.http[0].routes[0].to[0].service",
                    "is not namespace/name",
                ),
                ("spec.tlsPassthrough[0].hostname", "not a DNS name"),
                ("spec.tlsPassthrough[0].service", "its name"),
            ],
        ),
        (
            "routes: one action each, weights of 100, modifiers only when forwarding",
            gateway(json!({
                "workloadSelector": selector(),
                "http": [{
                    "name": "shop", "port": 80, "hostname": "shop.example.com",
                    "routes": [
                        {"to": [{"service": "shop/a", "weight": 60}, {"service": "shop/b", "weight": 30}]},
                        {"matches": [{"method": "GET"}], "to": [{"service": "shop/a"}], "redirect": {"scheme": "https"}},
                        {"matches": [{"method": "POST"}], "directResponse": {"status": 99}, "timeout": "1s"},
                        {"matches": [{"method": "PUT"}], "redirect": {"code": 200}},
                        {"matches": [{"path": {"exact": "/x"}}], "to": [{"service": "shop/a"}], "rewrite": {"pathPrefix": "/y"}},
                        {"matches": [{"method": "DELETE"}], "clusters": [{"name": "east", "weight": 50}, {"name": "east", "weight": 50}]}
                    ]
                }]
            })),
            vec![
                ("spec.http[0].routes[0]", "must be the last route"),
                ("spec.http[0].routes[0].to", "add up to 100, not 90"),
                (
                    "spec.http[0].routes[1]",
                    "exactly one of to, clusters, anyCluster, redirect, directResponse",
                ),
                ("spec.http[0].routes[2].directResponse.status", "200 to 599"),
                (
                    "spec.http[0].routes[2].timeout",
                    "applies only to requests sent on",
                ),
                ("spec.http[0].routes[3].redirect", "changes nothing"),
                (
                    "spec.http[0].routes[3].redirect.code",
                    "200 is not a redirect",
                ),
                (
                    "spec.http[0].routes[4].rewrite.pathPrefix",
                    "every match of the route must be a path prefix",
                ),
                ("spec.http[0].routes[5].clusters[1].name", "is listed twice"),
            ],
        ),
        (
            "shared rate limit rules: dimensions, limits, names, and one way to fail per plain-HTTP port",
            gateway(json!({
                "workloadSelector": selector(),
                "http": [{
                    "name": "shop", "port": 80, "hostname": "shop.example.com",
                    "rateLimiting": {
                        "timeout": "0s",
                        "rules": [
                            {"name": "per-user", "dimensions": [{"of": "claim"}], "limit": {"requests": 0, "unit": "minute"}},
                            {"name": "per-user", "dimensions": [
                                {"of": "path", "prefix": "api", "value": "/x"},
                                {"of": "method", "value": "post"},
                                {"of": "clientAddress", "name": "x", "value": "nowhere"},
                                {"of": "header", "name": "X-Tenant"},
                                {"of": "method", "prefix": "P"}
                            ], "limit": {"requests": 5, "unit": "second"}},
                            {"name": "Bad_Name", "limit": {"requests": 5, "unit": "second"}}
                        ]
                    },
                    "routes": [{"to": [{"service": "shop/reviews"}]}]
                }, {
                    "name": "other", "port": 80, "hostname": "other.example.com",
                    "rateLimiting": {"failClosed": true, "rules": [{"name": "all", "limit": {"requests": 5, "unit": "second"}}]},
                    "routes": [{"to": [{"service": "shop/reviews"}]}]
                }, {
                    "name": "local", "port": 81, "hostname": "local.example.com",
                    "rateLimiting": {"failClosed": true, "timeout": "10ms", "local": {"requests": 5, "unit": "second"}},
                    "routes": [{"to": [{"service": "shop/reviews"}]}]
                }]
            })),
            vec![
                ("spec.http[0].rateLimiting.timeout", "longer than zero"),
                (
                    "spec.http[0].rateLimiting.rules[0].limit.requests",
                    "at least 1",
                ),
                (
                    "spec.http[0].rateLimiting.rules[0].dimensions[0].name",
                    "required for a claim dimension",
                ),
                (
                    "spec.http[0].rateLimiting.rules[0].dimensions[0]",
                    "give the server authentication",
                ),
                ("spec.http[0].rateLimiting.rules[1].name", "names two rules"),
                (
                    "spec.http[0].rateLimiting.rules[1].dimensions[0]",
                    "value or prefix, not both",
                ),
                (
                    "spec.http[0].rateLimiting.rules[1].dimensions[0].value",
                    "must start with /",
                ),
                (
                    "spec.http[0].rateLimiting.rules[1].dimensions[1].value",
                    "not a method",
                ),
                (
                    "spec.http[0].rateLimiting.rules[1].dimensions[2].name",
                    "not clientAddress",
                ),
                (
                    "spec.http[0].rateLimiting.rules[1].dimensions[2].value",
                    "not an IP address",
                ),
                (
                    "spec.http[0].rateLimiting.rules[1].dimensions[3].name",
                    "not a lowercase HTTP header name",
                ),
                (
                    "spec.http[0].rateLimiting.rules[1].dimensions[4].prefix",
                    "not method",
                ),
                ("spec.http[0].rateLimiting.rules[2].name", "not a DNS label"),
                ("spec.http[1].rateLimiting", "share one rate limit filter"),
                ("spec.http[2].rateLimiting.timeout", "none are given"),
                ("spec.http[2].rateLimiting.failClosed", "none are given"),
            ],
        ),
        (
            "browser sign-in: https, provider URLs, a secret's file name, paths, timeouts",
            gateway(json!({
                "workloadSelector": selector(),
                "http": [{
                    "name": "shop", "port": 80, "hostname": "shop.example.com",
                    "authentication": {"oidc": {
                        "issuer": "http://id.example.com",
                        "endpoints": {"authorization": "https://id.example.com/a", "token": "ftp://x", "jwks": "not a url"},
                        "clientId": " ",
                        "clientSecret": "S3cret!",
                        "callbackPath": "cb",
                        "logoutPath": "/out?x=1",
                        "scopes": ["openid", "two words"],
                        "forward": {"idToken": "X-Id", "accessToken": "x-id"},
                        "session": {"idleTimeout": "9h", "absoluteTimeout": "8h", "store": "redis"}
                    }},
                    "authorization": {"allow": [{"claims": {"sub": ["alice"]}}]},
                    "routes": [{"to": [{"service": "shop/reviews"}]}]
                }, {
                    "name": "both", "port": 443, "hostname": "both.example.com",
                    "tls": {"certificate": "both.example.com"},
                    "authentication": {
                        "jwt": [{"issuer": "https://id.example.com", "jwksUri": "https://id.example.com/keys"}],
                        "oidc": {"issuer": "https://id.example.com", "clientId": "c", "clientSecret": "c", "postLogoutRedirect": "/"}
                    },
                    "routes": [{"to": [{"service": "shop/reviews"}]}]
                }]
            })),
            vec![
                ("spec.http[0].authentication.oidc.issuer", "must be https"),
                (
                    "spec.http[0].authentication.oidc.endpoints.token",
                    "must be https",
                ),
                (
                    "spec.http[0].authentication.oidc.endpoints.jwks",
                    "not a URL",
                ),
                (
                    "spec.http[0].authentication.oidc.clientId",
                    "must not be empty",
                ),
                (
                    "spec.http[0].authentication.oidc.clientSecret",
                    "names a file",
                ),
                (
                    "spec.http[0].authentication.oidc.callbackPath",
                    "must be a path",
                ),
                (
                    "spec.http[0].authentication.oidc.logoutPath",
                    "must be a path",
                ),
                ("spec.http[0].authentication.oidc.scopes[1]", "not a scope"),
                (
                    "spec.http[0].authentication.oidc.forward.idToken",
                    "not a lowercase HTTP header name",
                ),
                (
                    "spec.http[0].authentication.oidc.session.idleTimeout",
                    "not be longer than absoluteTimeout",
                ),
                ("spec.http[0].authentication.oidc", "needs HTTPS"),
                (
                    "spec.http[0].authorization.allow[0].claims",
                    "authentication.jwt",
                ),
                ("spec.http[1].authentication", "jwt or oidc, not both"),
            ],
        ),
        (
            "mutual TLS needs a client CA; claims need authentication; sources are ranges",
            gateway(json!({
                "workloadSelector": selector(),
                "http": [{
                    "name": "shop", "port": 443, "hostname": "shop.example.com",
                    "tls": {"mode": "mutual", "certificate": "shop.example.com"},
                    "authorization": {"allow": [{"sources": ["10.0.0.0/33", "nowhere"], "claims": {"sub": []}}]},
                    "rateLimiting": {"local": {"requests": 0, "unit": "second", "burst": 0}},
                    "routes": [{
                        "to": [{"service": "shop/reviews"}],
                        "requestHeaders": {"set": {"Host": "x", "content-length": "0"}},
                        "cors": {"allowOrigins": ["*", "shop.example.com"], "allowCredentials": true}
                    }]
                }]
            })),
            vec![
                ("spec.http[0].tls.clientCa", "mutual TLS needs the CA"),
                ("spec.http[0].rateLimiting.local.requests", "at least 1"),
                ("spec.http[0].rateLimiting.local.burst", "at least 1"),
                (
                    "spec.http[0].authorization.allow[0].sources[0]",
                    "prefix length must be 0 to 32",
                ),
                (
                    "spec.http[0].authorization.allow[0].sources[1]",
                    "not an address range",
                ),
                (
                    "spec.http[0].authorization.allow[0].claims.sub",
                    "at least one accepted value",
                ),
                (
                    "spec.http[0].authorization.allow[0].claims",
                    "give the server authentication",
                ),
                (
                    "spec.http[0].routes[0].requestHeaders.set.Host",
                    "not a lowercase HTTP header name",
                ),
                (
                    "spec.http[0].routes[0].requestHeaders.set.content-length",
                    "cannot be changed",
                ),
                (
                    "spec.http[0].routes[0].cors.allowOrigins[1]",
                    "not an origin",
                ),
                (
                    "spec.http[0].routes[0].cors.allowCredentials",
                    "refuse credentials with a * origin",
                ),
            ],
        ),
        (
            "a gateway sits in a GatewayGroup",
            json!({
                "apiVersion": "weft.dev/v1alpha1", "kind": "Gateway",
                "metadata": {"name": "gw", "tenant": "retail", "workspace": "shop"},
                "spec": {"workloadSelector": selector(), "tcp": [{"name": "raw", "port": 9000, "service": "shop/db"}]}
            }),
            vec![("metadata.workspace", "a Gateway sits under a GatewayGroup")],
        ),
    ];
    assert_problems(cases);
}
