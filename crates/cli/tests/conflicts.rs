//! Conflicts the configuration alone shows are refused at apply, with
//! the field paths of both sides and nothing stored; `weft analyze`
//! lists them (and warnings) in the stored configuration and in
//! manifests offline.

mod support;

use serde_json::Value;
use support::{Server, api, write};

const BASE: &str = "\
apiVersion: weft.dev/v1alpha1
kind: Cluster
metadata: {name: east}
spec: {region: us-east-1}
---
apiVersion: weft.dev/v1alpha1
kind: Tenant
metadata: {name: retail}
spec: {}
---
apiVersion: weft.dev/v1alpha1
kind: Workspace
metadata: {name: shop, tenant: retail}
spec: {namespaceSelector: [east/shop]}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficGroup
metadata: {name: web, tenant: retail, workspace: shop}
spec: {}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficGroup
metadata: {name: api, tenant: retail, workspace: shop}
spec: {}
---
apiVersion: weft.dev/v1alpha1
kind: GatewayGroup
metadata: {name: front, tenant: retail, workspace: shop}
spec: {}
---
apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {name: calls, tenant: retail, workspace: shop}
spec:
  authorization:
    allow: [{from: [{sameWorkspace: true}]}]
";

fn route(group: &str, name: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1
kind: ServiceRoute
metadata: {{name: {name}, tenant: retail, workspace: shop, trafficGroup: {group}}}
spec:
  service: {{name: cart, namespace: shop}}
  rules: [{{destinations: [{{weight: 100}}]}}]
"
    )
}

fn traffic(name: &str, timeout: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1
kind: TrafficSetting
metadata: {{name: {name}, tenant: retail, workspace: shop}}
spec: {{timeout: {timeout}}}
"
    )
}

fn gateway(name: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {{name: {name}, tenant: retail, workspace: shop, gatewayGroup: front}}
spec:
  workloadSelector: {{namespace: shop}}
  http: [{{name: web, port: 8080, hostname: shop.example.com, routes: [{{to: [{{service: shop/cart}}]}}]}}]
"
    )
}

const CLAIMS: &str = "\
apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {name: admins, tenant: retail, workspace: shop}
spec:
  service: {name: cart, namespace: shop}
  authorization:
    allow: [{claims: {groups: [admin]}}]
";

/// The store's revision: it moves with every stored change.
async fn revision(server: &Server, admin: &str) -> Value {
    api(server, "GET", "/v1/tenants", Some(admin), None).await.1["revision"].clone()
}

#[tokio::test]
async fn conflicts_are_refused_at_apply_with_both_sides_and_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let admin = server.admin_token();
    let base = write(dir.path(), "base.yaml", BASE);
    let applied = server.weft(&admin, &["apply", "-f", &base]);
    assert_eq!(applied.code, 0, "{applied:?}");

    // Each pair: what is stored first, what then conflicts with it, and
    // the field paths of both sides.
    let cases = [
        (
            route("web", "cart-a"),
            route("api", "cart-b"),
            "second.yaml#1: spec.service",
            "trafficgroups/web/serviceroutes/cart-a spec.service",
        ),
        (
            traffic("fast", "2s"),
            traffic("slow", "30s"),
            "second.yaml#1: spec.timeout",
            "trafficsettings/fast spec.timeout",
        ),
        (
            gateway("a"),
            gateway("b"),
            "second.yaml#1: spec.http[0].hostname",
            "gateways/a spec.http[0].hostname",
        ),
    ];
    for (first, second, here, there) in cases {
        let first = write(dir.path(), "first.yaml", &first);
        let run = server.weft(&admin, &["apply", "-f", &first]);
        assert_eq!(run.code, 0, "{run:?}");
        let second = write(dir.path(), "second.yaml", &second);
        let before = revision(&server, &admin).await;
        for dry_run in [true, false] {
            let mut args = vec!["apply", "-f", &second];
            if dry_run {
                args.push("--dry-run");
            }
            let refused = server.weft(&admin, &args);
            assert_eq!(refused.code, 4, "{refused:?}");
            assert!(refused.stderr.contains(here), "{here}: {refused:?}");
            assert!(refused.stderr.contains(there), "{there}: {refused:?}");
        }
        assert_eq!(revision(&server, &admin).await, before, "nothing stored");
    }

    // Claims where nobody is authenticated: refused on its own.
    let claims = write(dir.path(), "claims.yaml", CLAIMS);
    let refused = server.weft(&admin, &["apply", "-f", &claims]);
    assert_eq!(refused.code, 4, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("claims.yaml#1: spec.authorization.allow[0].claims"),
        "{refused:?}"
    );
    // With authentication for the service in the same apply, accepted.
    let authenticated = write(
        dir.path(),
        "authenticated.yaml",
        &format!(
            "{CLAIMS}---
apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {{name: tokens, tenant: retail, workspace: shop}}
spec:
  service: {{name: cart, namespace: shop}}
  authentication: {{jwt: [{{issuer: 'https://idp.example.com', jwksUri: 'https://idp.example.com/jwks.json'}}]}}
"
        ),
    );
    let run = server.weft(&admin, &["apply", "-f", &authenticated]);
    assert_eq!(run.code, 0, "{run:?}");
    // Removing the authentication would leave the claims without tokens.
    let run = server.weft(
        &admin,
        &[
            "delete",
            "securitysetting",
            "tokens",
            "--tenant",
            "retail",
            "--workspace",
            "shop",
        ],
    );
    assert_eq!(run.code, 4, "{run:?}");

    // A user who may not read the other side is told there is one, not
    // what it is.
    let other = write(
        dir.path(),
        "olga.yaml",
        "\
apiVersion: weft.dev/v1alpha1
kind: User
metadata: {name: olga}
spec: {}
---
apiVersion: weft.dev/v1alpha1
kind: AccessBinding
metadata: {name: olga-edits-api, tenant: retail, workspace: shop, trafficGroup: api}
spec:
  role: editor
  subjects: [{user: olga}]
",
    );
    let run = server.weft(&admin, &["apply", "-f", &other]);
    assert_eq!(run.code, 0, "{run:?}");
    let created = server.weft(&admin, &["token", "create", "--user", "olga"]);
    let olga = created.stdout.trim().to_string();
    let mine = write(dir.path(), "mine.yaml", &route("api", "olgas-cart"));
    let refused = server.weft(&olga, &["apply", "-f", &mine]);
    assert_eq!(refused.code, 4, "{refused:?}");
    assert!(
        refused.stderr.contains("a resource you may not read"),
        "{refused:?}"
    );
    assert!(!refused.stderr.contains("trafficgroups/web"), "{refused:?}");

    // weft analyze: every conflict was refused, so what is stored has
    // only warnings.
    let analyzed = server.weft(&admin, &["analyze", "-o", "json"]);
    assert_eq!(analyzed.code, 0, "{analyzed:?}");
    let report: Value = serde_json::from_str(&analyzed.stdout).unwrap();
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["severity"] == "warning"),
        "{report}"
    );
}

#[test]
fn analyze_lists_conflicts_and_warnings_in_manifests_offline() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = write(
        dir.path(),
        "all.yaml",
        &format!(
            "{BASE}---
apiVersion: weft.dev/v1alpha1
kind: Workspace
metadata: {{name: nowhere, tenant: retail}}
spec: {{namespaceSelector: [west/shop]}}
---
{}---
{}---
{}---
apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {{name: nothing, tenant: retail, workspace: nowhere}}
spec:
  authorization:
    deny: [{{to: [{{path: {{prefix: /admin}}}}]}}]
",
            route("web", "cart-a"),
            route("api", "cart-b"),
            traffic("fast", "2s"),
        ),
    );
    let run =
        support::run(std::process::Command::new(support::WEFT).args(["analyze", "-f", &manifests]));
    assert_eq!(run.code, 4, "{run:?}");
    for expected in [
        "conflict   tenants/retail/workspaces/shop/trafficgroups/web/serviceroutes/cart-a spec.service",
        "warning    tenants/retail/workspaces/nowhere spec.namespaceSelector[0]",
        "warning    tenants/retail/workspaces/nowhere  ",
        "warning    tenants/retail/workspaces/nowhere/securitysettings/nothing spec.authorization",
    ] {
        assert!(run.stdout.contains(expected), "{expected:?} in {run:?}");
    }
}
