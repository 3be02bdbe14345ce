//! What browser sign-in costs a request with an established session.
//!
//! A real `weft server`, `weft edge`, one `ratings` instance, a `weft
//! gateway` with two HTTPS servers on one port (one with sign-in, one
//! without), `weft authservice` keeping sessions in a real Redis, a real
//! OpenID provider and Chromium to sign in once. Then the same fixed load
//! on both servers in interleaved rounds (p50/p99), and a closed loop of
//! 32 clients with the session: requests/s through the gateway and the
//! checks the sign-in service answered per second.
//!
//! `cargo bench -p weft --bench signin` (WEFT_BENCH_RATE,
//! WEFT_BENCH_SECONDS change the fixed load).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::browser::{Browser, Provider};
use support::gateway::{GatewayMesh, ingress_gateway};
use support::load::{Path, closed_loop, compare, fixed_load, metric_sum};
use support::redis::Redis;
use support::{Proc, free_port, tls, until};

const HOST: &str = "shop.example.test";
const OPEN: &str = "open.example.test";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (rate, seconds) = fixed_load();
    weft_identity::tls::install_provider();
    let mut mesh = GatewayMesh::start().await;
    let redis = Redis::start(mesh.dir.path());
    let port = free_port();
    let base = format!("https://{HOST}:{port}");
    let provider = Provider::start(
        mesh.dir.path().join("provider.log"),
        "bench-secret",
        &format!("{base}/oauth2/callback"),
        &format!("{base}/"),
        3600,
    )
    .await;
    let secrets = mesh.dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("shop-oidc"), "bench-secret").unwrap();
    mesh.ca.install(&mesh.certificates, HOST, &[HOST, OPEN]);
    mesh.apply(&ingress_gateway(&format!(
        "    - name: shop
      port: {port}
      hostname: {HOST}
      tls: {{certificate: {HOST}}}
      authentication:
        oidc:
          issuer: {}
          clientId: shop
          clientSecret: shop-oidc
          forward: {{idToken: x-id-token}}
          session: {{store: redis}}
      routes: [{{to: [{{service: shop/ratings}}]}}]
    - name: open
      port: {port}
      hostname: {OPEN}
      tls: {{certificate: {HOST}}}
      routes: [{{to: [{{service: shop/ratings}}]}}]
",
        provider.issuer()
    )));
    mesh.workload("ratings", "ratings-1", "v1");
    mesh.gateway("ingress", "edge", None);
    let admin = free_port();
    let authservice = Proc(
        mesh.authservice(&secrets, &redis.url(), free_port(), admin)
            .spawn()
            .unwrap(),
    );
    mesh.until_in_sync(3).await;

    // One sign-in, in a real browser.
    let mut browser = Browser::start(
        &[HOST],
        "/oauth2/callback",
        mesh.dir.path().join("browser.log"),
    );
    until("the gateway serves", Duration::from_secs(60), async || {
        let (at, _) = browser.goto(&format!("{base}/")).await;
        at.starts_with(&provider.issuer())
    })
    .await;
    browser.sign_in("bench").await;
    let session = browser
        .cookies()
        .await
        .iter()
        .find(|c| c["name"] == "__Host-weft-session")
        .and_then(|c| c["value"].as_str().map(str::to_string))
        .expect("signed in");
    drop(browser);

    let client = || tls::client(&mesh.ca.pem, None, &[HOST, OPEN], false);
    let paths = [
        Path {
            name: "gateway (HTTPS) -> ratings",
            client: client(),
            url: format!("https://{OPEN}:{port}/"),
            host: OPEN,
            cookie: None,
        },
        Path {
            name: "gateway (HTTPS, signed in) -> ratings",
            client: client(),
            url: format!("{base}/"),
            host: HOST,
            cookie: Some(format!("__Host-weft-session={session}")),
        },
    ];
    for path in &paths {
        until(path.name, Duration::from_secs(60), async || {
            path.answers().await
        })
        .await;
    }
    compare(&paths, rate, seconds).await;

    let metrics = format!("http://127.0.0.1:{admin}/metrics");
    let http = reqwest::Client::new();
    let checked = async || metric_sum(&http, &metrics, &["weft_authservice_checks_total"]).await;
    let inside =
        async || metric_sum(&http, &metrics, &["weft_authservice_check_seconds_sum"]).await;
    let (before, before_inside) = (checked().await, inside().await);
    let (ok, elapsed) = closed_loop(&paths[1], 32, 5).await;
    let elapsed = elapsed.as_secs_f64();
    let checks = checked().await - before;
    println!(
        "closed loop, 32 clients, 5 s, one session: {:.0} requests/s through the signed-in server; weft authservice checked {:.0}/s (sessions in Redis on loopback), {:.2} ms each inside the service on average",
        ok as f64 / elapsed,
        checks / elapsed,
        (inside().await - before_inside) / checks.max(1.0) * 1000.0,
    );
    drop(authservice);
}
