//! `weft explain` against a live mesh: for a weighted split, a header
//! match, a deny rule and rules on end-user claims, what it says the mesh
//! does is what real requests through Envoy meet: the same route (Envoy
//! logs the route's name), the same destinations in the weights it
//! names, the same status, the same deciding rule (Envoy names the deny
//! policy that refused). The cross-cluster failover order is checked
//! against real failover in `multicluster/failover.rs`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::mesh::{Mesh, logged};
use support::tokens::{Issuer, JwksServer};
use support::{free_port, until, write};

const ROUTE: &str = "\
apiVersion: weft.dev/v1alpha1
kind: ServiceRoute
metadata: {name: reviews, tenant: retail, workspace: shop, trafficGroup: traffic}
spec:
  service: {name: reviews, namespace: shop}
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
  rules:
    - matches: [{headers: [{name: x-canary, exact: 'yes'}]}]
      destinations: [{subset: v2}]
    - destinations: [{subset: v1, weight: 70}, {subset: v2, weight: 30}]
---
apiVersion: weft.dev/v1alpha1
kind: TrafficSetting
metadata: {name: reviews, tenant: retail, workspace: shop, trafficGroup: traffic}
spec:
  service: {name: reviews, namespace: shop}
  timeout: 7s
";

fn security(jwks_port: u16) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {{name: reviews-callers, tenant: retail, workspace: shop}}
spec:
  service: {{name: reviews, namespace: shop}}
  authentication:
    jwt:
      - issuer: https://login.test
        audiences: [reviews]
        jwksUri: http://127.0.0.1:{jwks_port}/jwks.json
    requireFor: [{{path: {{prefix: /api}}}}]
  authorization:
    allow:
      - from: [{{serviceAccount: {{name: client, namespace: shop}}}}]
        to: [{{method: GET}}]
      - from: [{{sameWorkspace: true}}]
        claims: {{groups: [admin]}}
    deny:
      - to: [{{path: {{prefix: /admin}}}}]
"
    )
}

/// `weft explain` through the server, as JSON.
fn explain(mesh: &Mesh, args: &[&str]) -> Value {
    let mut all = vec!["explain"];
    all.extend(args);
    all.extend(["--cluster", "east", "-o", "json"]);
    let run = mesh.server().weft(&mesh.admin, &all);
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

/// One request through a sidecar's outbound port: its status.
async fn status(
    mesh: &Mesh,
    port: u16,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> u16 {
    let mut request = mesh
        .http
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .header("host", "reviews");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.map_or(0, |r| r.status().as_u16())
}

/// The weight each destination subset gets, from an explanation.
fn weights(explanation: &Value) -> BTreeMap<String, u64> {
    explanation["route"]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["subset"].as_str().unwrap().to_string(),
                d["weight"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_says_what_real_requests_meet() {
    let key = Issuer::new("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let mut mesh = Mesh::start().await;
    let _v1 = mesh.workload("reviews", "reviews-v1", "v1");
    let _v2 = mesh.workload("reviews", "reviews-v2", "v2");
    let (_client, port) = mesh.client();
    let other_credential = mesh.credential("other");
    let other_port = free_port();
    let _other = mesh.sidecar("other", "other-1", None, &other_credential, other_port);
    mesh.until_in_sync(4).await;
    mesh.apply(&format!("{ROUTE}---\n{}", security(jwks.port)), 4)
        .await;
    until(
        "both versions answer the client",
        Duration::from_secs(30),
        async || mesh.instances(port, 20, "/").await.len() == 2,
    )
    .await;

    // A header match: the rule, its one destination, the setting's
    // timeout and where it comes from.
    let canary = explain(&mesh, &["client-1", "reviews", "-H", "x-canary: yes"]);
    eprintln!("{canary:#}");
    assert_eq!(canary["verdict"]["outcome"], "forwarded", "{canary}");
    let canary_route = canary["route"]["name"].as_str().unwrap().to_string();
    assert!(
        canary_route.ends_with("#spec.rules[0].matches[0]"),
        "{canary}"
    );
    assert_eq!(weights(&canary), BTreeMap::from([("v2".into(), 100)]));
    assert_eq!(canary["route"]["timeoutMs"], 7000, "{canary}");
    let timeout = canary["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["part"] == "timeout")
        .unwrap();
    assert_eq!(timeout["value"], "7s");
    assert_eq!(
        timeout["from"],
        "tenants/retail/workspaces/shop/trafficgroups/traffic/trafficsettings/reviews"
    );
    for _ in 0..20 {
        let (_, body) = mesh
            .call(port, "reviews", "/", &[("x-canary", "yes")])
            .await;
        assert_eq!(body.unwrap()["version"], "v2");
    }
    until(
        "the client's sidecar logs the canary route",
        Duration::from_secs(10),
        async || {
            logged(
                &mesh.sidecar_log("client-1"),
                &[
                    ("side", "outbound"),
                    ("route", &canary_route),
                    ("upstream_cluster", "out|reviews.shop|v2"),
                ],
            )
        },
    )
    .await;

    // The weighted split: the share each version gets is the weight
    // explain names (1,000 requests: four standard deviations of a
    // binomial at 30% are about 0.06).
    let split = explain(&mesh, &["client-1", "reviews/items"]);
    let split_route = split["route"]["name"].as_str().unwrap().to_string();
    assert!(split_route.ends_with("#spec.rules[1]"), "{split}");
    let expected = weights(&split);
    assert_eq!(expected.values().sum::<u64>(), 100);
    let seen = mesh.instances(port, 1000, "/items").await;
    eprintln!("split as explained {expected:?}, as answered {seen:?}");
    for (subset, weight) in &expected {
        let share = seen
            .get(&format!("reviews-{subset}"))
            .copied()
            .unwrap_or_default() as f64
            / 1000.0;
        assert!(
            (share - *weight as f64 / 100.0).abs() < 0.06,
            "{subset} got {share}, explain says {weight}%: {seen:?}"
        );
    }
    assert!(logged(
        &mesh.sidecar_log("client-1"),
        &[("side", "outbound"), ("route", &split_route)]
    ));
    // The failover order of a service with instances here only.
    let localities = &split["failover"][0]["localities"];
    assert_eq!(localities.as_array().unwrap().len(), 1, "{split}");
    assert_eq!(localities[0]["cluster"], "east");

    // A deny rule: refused, and Envoy names the same policy.
    use reqwest::Method;
    let admin = explain(&mesh, &["client-1", "reviews/admin/x"]);
    assert_eq!(admin["verdict"]["outcome"], "denied", "{admin}");
    assert_eq!(admin["verdict"]["status"], 403);
    let deny_rule = admin["authorization"]["rule"].as_str().unwrap().to_string();
    assert_eq!(
        deny_rule,
        "tenants/retail/workspaces/shop/securitysettings/reviews-callers#deny[0]"
    );
    assert_eq!(
        status(&mesh, port, Method::GET, "/admin/x", None).await,
        403
    );
    let refused_by = format!("rbac_access_denied_matched_policy[{deny_rule}]");
    until(
        "a reviews sidecar names the deny rule",
        Duration::from_secs(10),
        async || {
            ["reviews-v1", "reviews-v2"].iter().any(|node| {
                logged(
                    &mesh.sidecar_log(node),
                    &[
                        ("path", "/admin/x"),
                        ("response_code", "403"),
                        ("response_code_details", &refused_by),
                    ],
                )
            })
        },
    )
    .await;

    // The allow rule for the client's GETs; another caller's DELETE
    // matches no allow rule.
    let get = explain(&mesh, &["client-1", "reviews/"]);
    assert_eq!(get["verdict"]["outcome"], "forwarded", "{get}");
    assert_eq!(
        get["authorization"]["rule"],
        "tenants/retail/workspaces/shop/securitysettings/reviews-callers#allow[0]"
    );
    assert_eq!(status(&mesh, port, Method::GET, "/", None).await, 200);
    let delete = explain(&mesh, &["other-1", "reviews/", "-X", "DELETE"]);
    assert_eq!(delete["verdict"]["status"], 403, "{delete}");
    assert!(delete["authorization"]["rule"].is_null(), "{delete}");
    assert_eq!(
        status(&mesh, other_port, Method::DELETE, "/", None).await,
        403
    );

    // Rules on claims: the same DELETE with a token of an admin is
    // allowed by the claims rule; without the claim it is not; without a
    // token where one is required, 401.
    let token = |groups: &[&str]| {
        key.token(serde_json::json!({
            "iss": "https://login.test", "aud": "reviews", "sub": "ann", "groups": groups}))
    };
    let admin_token = token(&["dev", "admin"]);
    until(
        "the issuer's keys are fetched",
        Duration::from_secs(20),
        async || {
            status(
                &mesh,
                other_port,
                Method::DELETE,
                "/api/x",
                Some(&admin_token),
            )
            .await
                == 200
        },
    )
    .await;
    let claims = explain(
        &mesh,
        &[
            "other-1",
            "reviews/api/x",
            "-X",
            "DELETE",
            "--jwt",
            &admin_token,
        ],
    );
    assert_eq!(claims["verdict"]["outcome"], "forwarded", "{claims}");
    assert_eq!(
        claims["authorization"]["rule"],
        "tenants/retail/workspaces/shop/securitysettings/reviews-callers#allow[1]"
    );
    assert_eq!(claims["authentication"]["required"], true);
    let dev_token = token(&["dev"]);
    let dev = explain(
        &mesh,
        &[
            "other-1",
            "reviews/api/x",
            "-X",
            "DELETE",
            "--jwt",
            &dev_token,
        ],
    );
    assert_eq!(dev["verdict"]["status"], 403, "{dev}");
    assert_eq!(
        status(
            &mesh,
            other_port,
            Method::DELETE,
            "/api/x",
            Some(&dev_token)
        )
        .await,
        403
    );
    let claimed = explain(
        &mesh,
        &[
            "other-1",
            "reviews/api/x",
            "-X",
            "DELETE",
            "--claim",
            "groups=admin",
        ],
    );
    assert_eq!(claimed["verdict"]["outcome"], "forwarded", "{claimed}");
    let none = explain(&mesh, &["other-1", "reviews/api/x", "-X", "DELETE"]);
    assert_eq!(none["verdict"]["outcome"], "unauthenticated", "{none}");
    assert_eq!(none["verdict"]["status"], 401);
    assert_eq!(
        status(&mesh, other_port, Method::DELETE, "/api/x", None).await,
        401
    );

    // A caller by service account, with no proxy running as it: the
    // workspace-wide rule does not apply to reviews (its own setting
    // decides), so it is refused, as a proxy of it would be.
    let newcomer = explain(&mesh, &["shop/newcomer", "reviews/"]);
    assert!(newcomer["caller"]["node"].is_null(), "{newcomer}");
    assert_eq!(newcomer["verdict"]["status"], 403, "{newcomer}");
    // An unknown host: the 404 the caller's proxy answers itself.
    let unknown = explain(&mesh, &["client-1", "nope"]);
    assert_eq!(unknown["verdict"]["outcome"], "not-found", "{unknown}");
    let (code, _) = mesh.call(port, "nope", "/", &[]).await;
    assert_eq!(code, 404);

    // Offline, from the same manifests and a registry file, the same
    // route and weights.
    let manifests = write(
        mesh.dir.path(),
        "offline.yaml",
        &format!(
            "{}---\n{}---\n{ROUTE}---\n{}",
            support::mesh::SHOP,
            support::mesh::TRAFFIC_GROUP,
            security(jwks.port)
        ),
    );
    let registry = write(
        mesh.dir.path(),
        "registry.yaml",
        "- {node: client-1, service: client, namespace: shop, serviceAccount: client, address: 127.0.0.1, port: 1, outboundPort: 2}
- {node: reviews-v1, service: reviews, namespace: shop, serviceAccount: reviews, labels: {version: v1}, address: 127.0.0.1, port: 3, appPort: 4}
- {node: reviews-v2, service: reviews, namespace: shop, serviceAccount: reviews, labels: {version: v2}, address: 127.0.0.1, port: 5, appPort: 6}
",
    );
    let offline = support::run(std::process::Command::new(support::WEFT).args([
        "explain",
        "client-1",
        "reviews/items",
        "-f",
        &manifests,
        "--registry",
        &registry,
        "--cluster",
        "east",
        "-o",
        "json",
    ]));
    assert_eq!(offline.code, 0, "{offline:?}");
    let offline: Value = serde_json::from_str(&offline.stdout).unwrap();
    assert_eq!(offline["route"], split["route"]);
    assert_eq!(offline["verdict"], split["verdict"]);

    // A route to a subset no running instance carries is accepted with
    // a warning naming the field (the edges report v1 and v2 running).
    let v3 = write(
        mesh.dir.path(),
        "v3.yaml",
        &ROUTE
            .replace(
                "    - {name: v2, labels: {version: v2}}\n",
                "    - {name: v2, labels: {version: v2}}\n    - {name: v3, labels: {version: v3}}\n",
            )
            .replace(
                "{subset: v2, weight: 30}",
                "{subset: v2, weight: 20}, {subset: v3, weight: 10}",
            ),
    );
    let applied = mesh
        .server()
        .weft(&mesh.admin, &["apply", "-f", &v3, "--dry-run"]);
    assert_eq!(applied.code, 0, "{applied:?}");
    assert!(
        applied.stderr.contains(
            "serviceroutes/reviews spec.rules[1].destinations[2].subset: subset v3 (version=v3) matches none of the 2 running instances of reviews.shop (in east)"
        ),
        "{applied:?}"
    );

    // A running service whose deciding setting allows nobody is named by
    // `weft analyze`, from what the edge reports running.
    let sealed = write(
        mesh.dir.path(),
        "sealed.yaml",
        "apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {name: other-sealed, tenant: retail, workspace: shop}
spec:
  service: {name: other, namespace: shop}
  authorization:
    deny: [{to: [{method: DELETE}]}]
",
    );
    let applied = mesh.server().weft(&mesh.admin, &["apply", "-f", &sealed]);
    assert_eq!(applied.code, 0, "{applied:?}");
    let analyzed = mesh.server().weft(&mesh.admin, &["analyze", "-o", "json"]);
    let report: Value = serde_json::from_str(&analyzed.stdout).unwrap();
    let nobody: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("nobody may call"))
        })
        .collect();
    assert_eq!(nobody.len(), 1, "{report}");
    assert_eq!(
        nobody[0]["path"],
        "tenants/retail/workspaces/shop/securitysettings/other-sealed"
    );
    assert!(
        nobody[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("nobody may call other.shop (running in east)")
    );

    // Bad questions: a caller nobody knows, a header without a value.
    let run = mesh.server().weft(
        &mesh.admin,
        &["explain", "nobody", "reviews", "--cluster", "east"],
    );
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.stderr.contains("NAMESPACE/SERVICE_ACCOUNT"), "{run:?}");
    let run = mesh.server().weft(
        &mesh.admin,
        &[
            "explain",
            "client-1",
            "reviews",
            "-H",
            "x-canary",
            "--cluster",
            "east",
        ],
    );
    assert_eq!(run.code, 3, "{run:?}");
    // Reading it needs read on the cluster.
    let olga = support::user_with_token(mesh.server(), &mesh.admin, "olga").await;
    let refused = mesh.server().weft(
        &olga,
        &["explain", "client-1", "reviews", "--cluster", "east"],
    );
    assert_eq!(refused.code, 5, "{refused:?}");
}
