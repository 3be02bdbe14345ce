//! End-to-end gateway tests: the real `weft server`, `weft edge`, `weft
//! sidecar` and `weft gateway` with real Envoy; clients outside the mesh
//! (reqwest with rustls, and curl) speak real TLS to the gateway.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::gateway::{GATEWAY_ALLOWED, GatewayMesh};
use support::mesh::logged;
use support::tls::{self, TestCa, served_certificate};
use support::tokens::Issuer;
use support::{Proc, WEFT, free_port, until, write};

/// The hostnames the tests reach at the gateway.
const HOSTS: [&str; 7] = [
    "shop.example.com",
    "a.apps.example.com",
    "b.apps.example.com",
    "partners.example.com",
    "api.example.com",
    "internal.example.com",
    "vault.example.com",
];

/// A client outside the mesh that trusts `ca` (see [`tls::client`]).
fn client(ca: &str, identity: Option<(&str, &str)>, fresh_connections: bool) -> reqwest::Client {
    tls::client(ca, identity, &HOSTS, fresh_connections)
}

/// A status and, from the echo app, what it saw (or the body as text).
async fn get(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Value, reqwest::header::HeaderMap), String> {
    let mut request = http.get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.map_err(|e| format!("{e:?}"))?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body, headers))
}

/// The Gateway of the tests, on ports `http` and `https`; `jwks` is the
/// token issuer's key set.
fn gateway_manifest(http: u16, https: u16, jwks: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {{name: ingress, tenant: retail, workspace: edge, gatewayGroup: front}}
spec:
  workloadSelector: {{namespace: edge, labels: {{app: ingress}}}}
  http:
    - name: to-https
      port: {http}
      hostname: shop.example.com
      routes:
        - redirect: {{scheme: https, port: {https}}}
    - name: shop
      port: {https}
      hostname: shop.example.com
      tls: {{certificate: shop.example.com}}
      routes:
        - matches: [{{path: {{prefix: /reviews}}, headers: [{{name: x-canary, exact: 'yes'}}]}}]
          to: [{{service: shop/reviews, labels: {{version: v2}}}}]
          responseHeaders: {{set: {{x-served-by: canary}}}}
        - matches: [{{path: {{prefix: /reviews}}}}]
          to: [{{service: shop/reviews}}]
        - matches: [{{path: {{prefix: /ratings/}}}}]
          to: [{{service: shop/ratings}}]
          rewrite: {{pathPrefix: /internal/, authority: ratings.internal}}
          requestHeaders: {{set: {{x-entry: shop}}, remove: [x-debug]}}
        - matches: [{{path: {{exact: /healthz}}}}]
          directResponse: {{status: 200, body: ok}}
    - name: apps
      port: {https}
      hostname: '*.apps.example.com'
      tls: {{certificate: apps.example.com}}
      routes:
        - to: [{{service: shop/ratings}}]
    - name: partners
      port: {https}
      hostname: partners.example.com
      tls: {{mode: mutual, certificate: partners.example.com, clientCa: partners-ca}}
      routes:
        - to: [{{service: shop/ratings}}]
    - name: api
      port: {https}
      hostname: api.example.com
      tls: {{certificate: api.example.com}}
      authentication:
        jwt: [{{issuer: https://login.test, jwks: '{jwks}'}}]
      authorization:
        allow: [{{claims: {{scope: [reviews.read]}}}}]
      routes:
        - to: [{{service: shop/reviews}}]
    - name: internal
      port: {https}
      hostname: internal.example.com
      tls: {{certificate: internal.example.com}}
      authorization:
        allow: [{{sources: [10.0.0.0/8]}}]
      routes:
        - to: [{{service: shop/ratings}}]
    - name: far
      port: {http}
      hostname: far.example.com
      routes:
        - clusters: [{{name: west}}]
"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ingress_gateway_serves_clients_outside_the_mesh() {
    let mut mesh = GatewayMesh::start().await;
    let dir = mesh.certificates.clone();
    mesh.ca
        .install(&dir, "shop.example.com", &["shop.example.com"]);
    mesh.ca
        .install(&dir, "apps.example.com", &["*.apps.example.com"]);
    mesh.ca
        .install(&dir, "partners.example.com", &["partners.example.com"]);
    mesh.ca
        .install(&dir, "api.example.com", &["api.example.com"]);
    mesh.ca
        .install(&dir, "internal.example.com", &["internal.example.com"]);
    let partners = TestCa::new("partners");
    std::fs::write(dir.join("partners-ca.crt"), &partners.pem).unwrap();

    let issuer = Issuer::new("k1");
    let jwks = serde_json::json!({"keys": [issuer.jwk()]}).to_string();
    let (http_port, https_port) = (free_port(), free_port());
    mesh.apply(&gateway_manifest(http_port, https_port, &jwks));
    mesh.workload("reviews", "reviews-v1", "v1");
    mesh.workload("reviews", "reviews-v2", "v2");
    mesh.workload("ratings", "ratings-1", "v1");
    mesh.gateway("ingress", "edge", None);
    mesh.until_in_sync(4).await;

    let outside = client(&mesh.ca.pem, None, false);
    let shop = format!("https://shop.example.com:{https_port}");

    // Deny-all holds for the gateway too: the shop's services refuse it
    // until a SecuritySetting allows its identity.
    until(
        "the gateway reaches reviews and is refused",
        Duration::from_secs(30),
        async || {
            matches!(
                get(&outside, &format!("{shop}/reviews"), &[]).await,
                Ok((403, _, _))
            )
        },
    )
    .await;
    mesh.apply(GATEWAY_ALLOWED);
    until(
        "the gateway is allowed",
        Duration::from_secs(30),
        async || {
            matches!(
                get(&outside, &format!("{shop}/reviews"), &[]).await,
                Ok((200, _, _))
            )
        },
    )
    .await;

    // Rules in order: the header picks v2; otherwise both versions answer.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..20 {
        let (status, body, headers) =
            get(&outside, &format!("{shop}/reviews"), &[("x-canary", "yes")])
                .await
                .unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-served-by"], "canary");
        *seen
            .entry(body["instance"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["reviews-v2"], "{seen:?}");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..30 {
        let (status, body, headers) = get(&outside, &format!("{shop}/reviews/1"), &[])
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(headers.get("x-served-by").is_none());
        *seen
            .entry(body["instance"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["reviews-v1", "reviews-v2"],
        "{seen:?}"
    );

    // A rewrite the app sees, with the header changes (once ratings'
    // sidecar takes connections: its edge counts it in sync when its
    // Envoy accepts the configuration, a moment before its certificate
    // lets the listener serve).
    until(
        "ratings answers through the gateway",
        Duration::from_secs(20),
        async || {
            matches!(
                get(&outside, &format!("{shop}/ratings/0"), &[]).await,
                Ok((200, _, _))
            )
        },
    )
    .await;
    let (status, body, _) = get(
        &outside,
        &format!("{shop}/ratings/5?x=1"),
        &[("x-debug", "1"), ("x-entry", "spoofed")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["instance"], "ratings-1");
    assert_eq!(body["path"], "/internal/5");
    assert_eq!(body["headers"]["host"], "ratings.internal");
    assert_eq!(body["headers"]["x-entry"], "shop");
    assert!(body["headers"].get("x-debug").is_none(), "{body}");

    // A direct response, through curl as any client would.
    let curl = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(write(mesh.dir.path(), "ca.pem", &mesh.ca.pem))
        .args([
            "--resolve",
            &format!("shop.example.com:{https_port}:127.0.0.1"),
            &format!("{shop}/healthz"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "ok", "{curl:?}");

    // Plain HTTP on the other port redirects to HTTPS.
    let (status, _, headers) = get(
        &outside,
        &format!("http://shop.example.com:{http_port}/reviews?page=2"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, 301);
    assert_eq!(
        headers["location"],
        format!("https://shop.example.com:{https_port}/reviews?page=2").as_str()
    );

    // SNI: each hostname gets its own certificate (the client checks the
    // name), the wildcard one for any name under it.
    for host in ["a.apps.example.com", "b.apps.example.com"] {
        let (status, body, _) = get(&outside, &format!("https://{host}:{https_port}/"), &[])
            .await
            .unwrap();
        assert_eq!(status, 200, "{host}: {body}");
        assert_eq!(body["instance"], "ratings-1");
    }

    // Mutual TLS: no client certificate, no connection; one from the
    // partners' CA gets through.
    let partners_url = format!("https://partners.example.com:{https_port}/");
    let refused = get(&outside, &partners_url, &[]).await;
    assert!(refused.is_err(), "{refused:?}");
    let (cert, key, _) = partners.leaf(&["partner-1"], true);
    let partner = client(&mesh.ca.pem, Some((&cert, &key)), false);
    let (status, body, _) = get(&partner, &partners_url, &[]).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (cert, key, _) = mesh.ca.leaf(&["stranger"], true);
    let stranger = client(&mesh.ca.pem, Some((&cert, &key)), false);
    assert!(get(&stranger, &partners_url, &[]).await.is_err());

    // End-user tokens: none or invalid → 401; a valid one without the
    // claim → 403; with it → 200.
    let api = format!("https://api.example.com:{https_port}/");
    let bearer = |token: &str| format!("Bearer {token}");
    let other_key = Issuer::new("k1");
    let cases =
        [
            ("no token", None, 401),
            (
                "another key",
                Some(other_key.token(
                    serde_json::json!({"iss": "https://login.test", "scope": "reviews.read"}),
                )),
                401,
            ),
            (
                "no scope",
                Some(issuer.token(serde_json::json!({"iss": "https://login.test"}))),
                403,
            ),
            (
                "the scope",
                Some(issuer.token(
                    serde_json::json!({"iss": "https://login.test", "scope": "reviews.read"}),
                )),
                200,
            ),
        ];
    for (case, token, expected) in cases {
        let header = token.as_deref().map(bearer);
        let headers: Vec<(&str, &str)> = header
            .as_deref()
            .map(|h| vec![("authorization", h)])
            .unwrap_or_default();
        let (status, body, _) = get(&outside, &api, &headers).await.unwrap();
        assert_eq!(status, expected, "{case}: {body}");
    }

    // Source ranges: only 10.0.0.0/8 may use internal.example.com.
    let (status, body, _) = get(
        &outside,
        &format!("https://internal.example.com:{https_port}/"),
        &[("x-forwarded-for", "10.1.2.3")],
    )
    .await
    .unwrap();
    assert_eq!(
        status, 403,
        "the client's own claim is not its address: {body}"
    );

    // A certificate replaced under load: the new one is served within
    // seconds, and no request fails.
    let fresh = client(&mesh.ca.pem, None, true);
    let first = fresh.get(format!("{shop}/healthz")).send().await.unwrap();
    let old = served_certificate(&first).expect("the TLS connection's certificate");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, fresh, shop) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            fresh.clone(),
            shop.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match fresh.get(format!("{shop}/reviews")).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    other => {
                        eprintln!("failed under rotation: {other:?}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let new = mesh
        .ca
        .install(&dir, "shop.example.com", &["shop.example.com"]);
    assert_ne!(old, new);
    until(
        "the replaced certificate is served",
        Duration::from_secs(20),
        async || {
            let response = fresh.get(format!("{shop}/healthz")).send().await;
            response
                .ok()
                .and_then(|r| served_certificate(&r))
                .is_some_and(|served| served == new)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("certificate replaced under load: {ok} requests ok, {failed} failed");
    assert!(ok > 20, "the load ran: {ok}");
    assert_eq!(failed, 0);

    // `weft get gateways` shows the servers, the instance running them,
    // and what the edge could not translate, by field.
    let gateway_status = async || -> Value {
        let run = mesh
            .server
            .weft(&mesh.admin, &["get", "gateways", "-o", "json"]);
        assert_eq!(run.code, 0, "{run:?}");
        let list: Value = serde_json::from_str(&run.stdout).unwrap();
        let items = list.as_array().cloned().unwrap_or_default();
        items
            .into_iter()
            .find(|g| g["metadata"]["name"] == "ingress")
            .map(|g| g["status"].clone())
            .unwrap_or(Value::Null)
    };
    until(
        "weft get gateways shows the running instance",
        Duration::from_secs(20),
        async || gateway_status().await["instances"]["east"][0]["inSync"] == true,
    )
    .await;
    let status = gateway_status().await;
    assert_eq!(
        status["instances"]["east"][0]["node"], "ingress-1",
        "{status}"
    );
    assert_eq!(status["servers"].as_array().unwrap().len(), 7, "{status}");
    assert_eq!(
        status["errors"][0]["field"], "spec.http[6].routes[0]",
        "no cluster west serves far.example.com: {status}"
    );
    assert_eq!(status["errors"][0]["cluster"], "east", "{status}");
    let table = mesh.server.weft(&mesh.admin, &["get", "gateways"]);
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("ingress "))
        .unwrap_or_default()
        .to_string();
    for cell in ["shop.example.com", "*.apps.example.com"] {
        assert!(row.contains(cell), "{}", table.stdout);
    }
    assert!(
        table
            .stdout
            .lines()
            .next()
            .unwrap_or_default()
            .contains("RUNNING"),
        "{}",
        table.stdout
    );

    // The gateway's requests are in its log, with their verdicts.
    let log = std::fs::read_to_string(mesh.dir.path().join("ingress-1.log")).unwrap();
    assert!(
        logged(
            &log,
            &[
                ("authority", "api.example.com"),
                ("method", "GET"),
                ("path", "/"),
                ("response_code", "401"),
                ("client", "127.0.0.1"),
            ]
        ),
        "{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
}

/// Egress: the shop's sidecars send names that are no mesh service to the
/// egress gateway over mutual TLS; it lets the client reach the listed
/// host (a local server standing in for an external one), refuses other
/// hosts, and refuses the same host to a caller the rule does not name.
#[tokio::test(flavor = "multi_thread")]
async fn an_egress_gateway_lets_only_named_callers_out() {
    let mut mesh = GatewayMesh::start().await;
    let external = free_port();
    let partner = Command::new(WEFT)
        .args(["x", "echo", "--service", "partner", "--listen"])
        .arg(format!("127.0.0.1:{external}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    mesh.processes.push(Proc(partner));
    mesh.apply(&format!(
        "apiVersion: weft.dev/v1alpha1
kind: GatewayGroup
metadata: {{name: out, tenant: retail, workspace: shop}}
spec: {{namespaceSelector: [east/shop]}}
---
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {{name: egress, tenant: retail, workspace: shop, gatewayGroup: out}}
spec:
  workloadSelector: {{namespace: shop, labels: {{app: egress}}}}
  egress:
    - host: localhost
      port: {external}
      from: [{{serviceAccount: {{namespace: shop, name: client}}}}]
"
    ));
    let client = mesh.client("client");
    let intruder = mesh.client("intruder");
    mesh.gateway("egress", "shop", Some(free_port()));
    mesh.until_in_sync(3).await;

    let call = async |port: u16, host: &str| -> (u16, Value) {
        let url = format!("http://127.0.0.1:{port}/out?x=1");
        let response = mesh
            .http
            .get(url)
            .header("host", host)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    };
    let listed = format!("localhost:{external}");
    until(
        "the client reaches the listed host through the egress gateway",
        Duration::from_secs(30),
        async || call(client, &listed).await.0 == 200,
    )
    .await;
    let (_, body) = call(client, &listed).await;
    assert_eq!(body["service"], "partner", "{body}");
    assert_eq!(body["path"], "/out");
    assert!(
        body["headers"].get("x-forwarded-client-cert").is_none(),
        "the caller's identity stays in the mesh: {body}"
    );

    let (status, body) = call(client, "partner.example.org").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.as_str().unwrap_or_default().contains("no egress rule"),
        "{body}"
    );
    let (status, body) = call(intruder, &listed).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.as_str()
            .unwrap_or_default()
            .contains("gateways/egress#spec.egress[0]"),
        "the refusal names the rule: {body}"
    );
}

/// Relays: a `tcp` server carries bytes to a service (HTTP here, unread
/// by the gateway), and a `tlsPassthrough` server hands the client's TLS
/// to a service that terminates it itself. Both go inside the mesh's
/// mutual TLS, and the services' rules on callers hold for them too.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_and_tls_passthrough_servers_relay_to_services() {
    let mut mesh = GatewayMesh::start().await;
    let (tcp_port, tls_port) = (free_port(), free_port());
    mesh.apply(&format!(
        "apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {{name: relay, tenant: retail, workspace: edge, gatewayGroup: front}}
spec:
  workloadSelector: {{namespace: edge, labels: {{app: ingress}}}}
  tcp:
    - {{name: db, port: {tcp_port}, service: shop/db}}
  tlsPassthrough:
    - {{name: vault, port: {tls_port}, hostname: vault.example.com, service: shop/vault}}
"
    ));
    mesh.workload("db", "db-1", "v1");
    // vault terminates TLS itself, with its own certificate.
    let (cert, key, vault_der) = mesh.ca.leaf(&["vault.example.com"], false);
    let cert_file = write(mesh.dir.path(), "vault.crt", &cert);
    let key_file = write(mesh.dir.path(), "vault.key", &key);
    let vault_app = free_port();
    let accept = format!("127.0.0.1:{vault_app}");
    mesh.workload_running(
        "vault",
        "vault-1",
        vault_app,
        &[
            "openssl", "s_server", "-quiet", "-www", "-accept", &accept, "-cert", &cert_file,
            "-key", &key_file,
        ],
    );
    mesh.gateway("ingress", "edge", None);
    mesh.until_in_sync(3).await;

    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let db = async || {
        plain
            .get(format!("http://127.0.0.1:{tcp_port}/rows"))
            .header("host", "db")
            .send()
            .await
    };
    // Every proxy runs its configuration: the services' sidecars refuse
    // the gateway's connections until a SecuritySetting allows it.
    for _ in 0..5 {
        let refused = db().await;
        assert!(
            refused.as_ref().map_or(true, |r| r.status() != 200),
            "{refused:?}"
        );
    }
    mesh.apply(GATEWAY_ALLOWED);
    until(
        "the gateway relays TCP to db",
        Duration::from_secs(30),
        async || db().await.is_ok_and(|r| r.status() == 200),
    )
    .await;
    let body: Value = db().await.unwrap().json().await.unwrap();
    assert_eq!(body["instance"], "db-1", "{body}");
    assert_eq!(body["path"], "/rows");
    assert!(
        body["headers"].get("x-forwarded-client-cert").is_none(),
        "bytes are relayed, not rewritten: {body}"
    );

    // The client's TLS reaches vault unopened: vault's own certificate.
    let outside = client(&mesh.ca.pem, None, false);
    let vault = format!("https://vault.example.com:{tls_port}/");
    let mut served = None;
    until(
        "vault answers through the passthrough server",
        Duration::from_secs(30),
        async || match outside.get(&vault).send().await {
            Ok(response) if response.status() == 200 => {
                served = served_certificate(&response);
                true
            }
            _ => false,
        },
    )
    .await;
    assert_eq!(served.as_deref(), Some(vault_der.as_slice()));
}

/// Local rate limits: a gateway server's bucket refuses what is over it
/// with 429 and `x-ratelimit-*` headers; in shadow mode nothing is
/// refused; a TrafficSetting's limit holds at each instance of a service.
#[tokio::test(flavor = "multi_thread")]
async fn local_rate_limits_refuse_what_is_over_them() {
    let mut mesh = GatewayMesh::start().await;
    let port = free_port();
    mesh.apply(&format!(
        "{GATEWAY_ALLOWED}---
apiVersion: weft.dev/v1alpha1
kind: TrafficSetting
metadata: {{name: reviews-limit, tenant: retail, workspace: shop}}
spec:
  service: {{name: reviews, namespace: shop}}
  rateLimiting: {{local: {{requests: 3, unit: minute}}}}
---
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {{name: ingress, tenant: retail, workspace: edge, gatewayGroup: front}}
spec:
  workloadSelector: {{namespace: edge, labels: {{app: ingress}}}}
  http:
    - name: limited
      port: {port}
      hostname: limited.example.com
      rateLimiting: {{local: {{requests: 5, unit: minute}}}}
      routes: [{{to: [{{service: shop/ratings}}]}}]
    - name: counted
      port: {port}
      hostname: counted.example.com
      rateLimiting: {{local: {{requests: 2, unit: minute}}, shadowMode: true}}
      routes: [{{to: [{{service: shop/ratings}}]}}]
"
    ));
    mesh.workload("ratings", "ratings-1", "v1");
    mesh.workload("reviews", "reviews-1", "v1");
    let client = mesh.client("client");
    mesh.gateway("ingress", "edge", None);
    mesh.until_in_sync(4).await;
    let call = async |port: u16, host: &str| -> Option<(u16, reqwest::header::HeaderMap)> {
        let response = mesh
            .http
            .get(format!("http://127.0.0.1:{port}/"))
            .header("host", host)
            .send()
            .await
            .ok()?;
        Some((response.status().as_u16(), response.headers().clone()))
    };
    // The configuration is in place once ratings answers through it; that
    // first answer spends a token.
    until(
        "ratings answers through the gateway",
        Duration::from_secs(30),
        async || {
            call(port, "counted.example.com")
                .await
                .is_some_and(|(s, _)| s == 200)
        },
    )
    .await;
    let mut statuses = Vec::new();
    let mut limit_header = None;
    for _ in 0..8 {
        let (status, headers) = call(port, "limited.example.com").await.unwrap();
        statuses.push(status);
        if status == 429 {
            limit_header = headers
                .get("x-ratelimit-limit")
                .map(|v| v.to_str().unwrap().to_string());
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(limit_header.as_deref(), Some("5"), "x-ratelimit-limit");
    for _ in 0..4 {
        assert_eq!(
            call(port, "counted.example.com").await.unwrap().0,
            200,
            "shadow mode refuses nothing"
        );
    }

    // Each instance of reviews takes 3 a minute, whoever calls.
    until(
        "the client reaches reviews",
        Duration::from_secs(30),
        async || call(client, "reviews").await.is_some_and(|(s, _)| s == 200),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(call(client, "reviews").await.unwrap().0);
    }
    assert_eq!(statuses, [200, 200, 429]);
}

/// A Gateway naming a certificate the gateway has no files for: Envoy
/// waits for it without a word, so the gateway says which files are
/// missing and where.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_certificate_file_is_reported() {
    let mut mesh = GatewayMesh::start().await;
    let port = free_port();
    mesh.apply(&format!(
        "apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {{name: ingress, tenant: retail, workspace: edge, gatewayGroup: front}}
spec:
  workloadSelector: {{namespace: edge, labels: {{app: ingress}}}}
  http:
    - name: shop
      port: {port}
      hostname: shop.example.com
      tls: {{certificate: shop.example.com}}
      routes: [{{directResponse: {{status: 200}}}}]
"
    ));
    mesh.gateway("ingress", "edge", None);
    mesh.until_in_sync(1).await;
    let log = mesh.dir.path().join("ingress-1.log");
    until(
        "the gateway names the missing files",
        Duration::from_secs(20),
        async || {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("shop.example.com.crt and shop.example.com.key in"))
        },
    )
    .await;
}
