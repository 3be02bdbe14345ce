//! Requests per second and latency through the ingress gateway, against
//! the same call through a client's sidecar, and what a shared rate limit
//! decision adds.
//!
//! A real `weft server`, `weft edge`, one `reviews` instance (its sidecar
//! and a `weft x echo` app), a client sidecar, a `weft gateway` with a
//! plain-HTTP and an HTTPS server to reviews, and beside them on the
//! plain-HTTP port a server whose every request is counted by `weft
//! ratelimit` in a real Redis (a limit never reached), all on loopback.
//! Each path gets the same fixed load (open loop: requests start on
//! schedule whether or not earlier ones finished), in interleaved rounds
//! so that the machine's noise falls on all of them alike; the achieved
//! rate and p50/p99 latency of each are printed. Then decisions per
//! second: as many requests as 32 clients get through the counted server
//! in 5 s, with the rate limit service's own count of its decisions.
//!
//! `cargo bench -p weft --bench gateway` (WEFT_BENCH_RATE, WEFT_BENCH_SECONDS
//! change the load).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::load::{Path, closed_loop, compare, fixed_load, metric_sum};
use support::mesh::{DataPlane, Edge, SHOP, credential, sidecar, with_echo_app};
use support::redis::Redis;
use support::tls::{self, TestCa};
use support::{Proc, Server, WEFT, envoy, free_port, until, write};

/// Besides [`SHOP`]: a gateway group for namespace shop.
const GATEWAY_GROUP: &str = "\
apiVersion: weft.dev/v1alpha1
kind: GatewayGroup
metadata: {name: front, tenant: retail, workspace: shop}
spec: {namespaceSelector: [east/shop]}
";

fn gateway(http: u16, https: u16) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {{name: ingress, tenant: retail, workspace: shop, gatewayGroup: front}}
spec:
  workloadSelector: {{namespace: shop, labels: {{app: ingress}}}}
  http:
    - name: plain
      port: {http}
      hostname: shop.example.com
      routes: [{{to: [{{service: shop/reviews}}]}}]
    - name: counted
      port: {http}
      hostname: counted.example.com
      rateLimiting:
        timeout: 1s
        rules: [{{name: per-client, dimensions: [{{of: clientAddress}}], limit: {{requests: 1000000000, unit: second}}}}]
      routes: [{{to: [{{service: shop/reviews}}]}}]
    - name: secure
      port: {https}
      hostname: shop.example.com
      tls: {{certificate: shop.example.com}}
      routes: [{{to: [{{service: shop/reviews}}]}}]
"
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (rate, seconds) = fixed_load();
    weft_identity::tls::install_provider();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), None);
    let admin = server.admin_token();
    let (http_port, https_port) = (free_port(), free_port());
    let manifest = write(
        dir.path(),
        "mesh.yaml",
        &format!(
            "{SHOP}---\n{GATEWAY_GROUP}---\n{}",
            gateway(http_port, https_port)
        ),
    );
    assert_eq!(server.weft(&admin, &["apply", "-f", &manifest]).code, 0);
    let http = reqwest::Client::new();
    let edge_credential = credential(Some(&server), &admin, dir.path(), "edge", "east", &[]);
    let mut edge = Edge::new("east", dir.path(), &[]);
    edge.start(&server.edge_url, &edge_credential, &http).await;

    // A certificate for the HTTPS server, from a throwaway CA.
    let ca = TestCa::new("bench");
    let certificates = dir.path().join("certificates");
    std::fs::create_dir(&certificates).unwrap();
    ca.install(&certificates, "shop.example.com", &["shop.example.com"]);

    let mut processes = Vec::new();
    let account = |name: &str| {
        credential(
            Some(&server),
            &admin,
            dir.path(),
            name,
            "east",
            &["--namespace", "shop", "--service-account", name],
        )
    };
    let reviews = account("reviews");
    let mut command = sidecar(
        DataPlane::Envoy,
        "reviews-1",
        "reviews",
        "reviews",
        edge.xds_port,
        &reviews,
        &dir.path().join("reviews.log"),
    );
    command
        .args(["--inbound", &format!("127.0.0.1:{}", free_port())])
        .args(["--outbound-port", &free_port().to_string()]);
    with_echo_app(&mut command, "reviews", "reviews-1", Some("v1"));
    processes.push(Proc(command.spawn().unwrap()));
    let client = account("client");
    let outbound = free_port();
    let mut command = sidecar(
        DataPlane::Envoy,
        "client-1",
        "client",
        "client",
        edge.xds_port,
        &client,
        &dir.path().join("client.log"),
    );
    command
        .args(["--inbound", &format!("127.0.0.1:{}", free_port())])
        .args(["--outbound-port", &outbound.to_string()]);
    processes.push(Proc(command.spawn().unwrap()));
    let ingress = credential(
        Some(&server),
        &admin,
        dir.path(),
        "ingress",
        "east",
        &["--namespace", "shop", "--gateway", "ingress"],
    );
    let gateway = std::process::Command::new(WEFT)
        .args(["gateway", "--name", "ingress", "--namespace", "shop"])
        .args(["--label", "app=ingress", "--node-id", "ingress-1"])
        .arg("--certificates")
        .arg(&certificates)
        .args(["--edge", &format!("127.0.0.1:{}", edge.xds_port)])
        .arg("--credential-file")
        .arg(&ingress)
        .arg("--envoy")
        .arg(envoy())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("ingress.log")).unwrap())
        .spawn()
        .unwrap();
    processes.push(Proc(gateway));
    let redis = Redis::start(dir.path());
    let ratelimit_credential = credential(
        Some(&server),
        &admin,
        dir.path(),
        "ratelimit",
        "east",
        &["--ratelimit"],
    );
    let ratelimit_admin = free_port();
    let ratelimit = std::process::Command::new(WEFT)
        .args(["ratelimit", "--redis", &redis.url()])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin", &format!("127.0.0.1:{ratelimit_admin}")])
        .args(["--edge", &format!("127.0.0.1:{}", edge.xds_port)])
        .arg("--credential-file")
        .arg(&ratelimit_credential)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("ratelimit.log")).unwrap())
        .spawn()
        .unwrap();
    processes.push(Proc(ratelimit));

    let paths = [
        Path {
            name: "client sidecar -> reviews sidecar",
            client: reqwest::Client::new(),
            url: format!("http://127.0.0.1:{outbound}/"),
            host: "reviews",
            cookie: None,
        },
        Path {
            name: "gateway (HTTP) -> reviews sidecar",
            client: reqwest::Client::new(),
            url: format!("http://127.0.0.1:{http_port}/"),
            host: "shop.example.com",
            cookie: None,
        },
        Path {
            name: "gateway (HTTP, counted) -> reviews",
            client: reqwest::Client::new(),
            url: format!("http://127.0.0.1:{http_port}/"),
            host: "counted.example.com",
            cookie: None,
        },
        Path {
            name: "gateway (HTTPS) -> reviews sidecar",
            client: tls::client(&ca.pem, None, &["shop.example.com"], false),
            url: format!("https://shop.example.com:{https_port}/"),
            host: "shop.example.com",
            cookie: None,
        },
    ];
    for path in &paths {
        until(path.name, Duration::from_secs(60), async || {
            path.answers().await
        })
        .await;
    }
    compare(&paths, rate, seconds).await;
    decisions(&http, &paths[2], ratelimit_admin).await;
    drop(processes);
    drop(edge);
    server.stop();
}

/// Closed loop: 32 clients as fast as the counted server answers them,
/// for 5 s; the gateway's rate, and the rate limit service's decisions
/// (from its metrics) in the same time.
async fn decisions(http: &reqwest::Client, counted: &Path, admin: u16) {
    let metrics = format!("http://127.0.0.1:{admin}/metrics");
    let decided = async || metric_sum(http, &metrics, &["weft_ratelimit_decisions_total"]).await;
    let before = decided().await;
    let (ok, elapsed) = closed_loop(counted, 32, 5).await;
    let elapsed = elapsed.as_secs_f64();
    let decisions = decided().await - before;
    println!(
        "closed loop, 32 clients, 5 s: {:.0} requests/s through the counted server; weft ratelimit decided {:.0}/s (Redis on loopback)",
        ok as f64 / elapsed,
        decisions / elapsed
    );
}
