//! What telemetry costs on the request path, and what counting costs the
//! edge.
//!
//! A real `weft server`, `weft edge`, a client sidecar and three services
//! (each a `weft x echo` app behind its sidecar), all on loopback. Every
//! proxy counts every request (the stats access logger; always on). The
//! callees differ only in their TelemetrySetting: `reviews` has the
//! defaults (a JSON request log line on stderr), `ratings` turns request
//! logs off, `details` also traces every request to an OTLP collector
//! in this process. Each path gets the same fixed load in interleaved
//! rounds; the rate and p50/p99 of each are printed. Then the edge's CPU
//! time per thousand requests counted, from `/proc`, and the exports and
//! series it took.
//!
//! `cargo bench -p weft --bench telemetry` (WEFT_BENCH_RATE,
//! WEFT_BENCH_SECONDS change the load).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::load::{Path, compare, fixed_load, metric_sum};
use support::mesh::{DataPlane, Edge, SHOP, credential, sidecar, with_echo_app};
use support::otlp::Collector;
use support::{Proc, Server, free_port, until, write};

fn settings(collector: u16) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1
kind: TelemetrySetting
metadata: {{name: ratings-quiet, tenant: retail, workspace: shop}}
spec:
  service: {{name: ratings, namespace: shop}}
  accessLog: {{to: off}}
---
apiVersion: weft.dev/v1alpha1
kind: TelemetrySetting
metadata: {{name: details-traced, tenant: retail, workspace: shop}}
spec:
  service: {{name: details, namespace: shop}}
  tracing: {{collector: '127.0.0.1:{collector}', samplingPercent: 100}}
"
    )
}

/// CPU seconds `pid` has used (user and system), from `/proc`.
fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = text.rfind(')').and_then(|i| text.get(i + 2..)) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime(14) and stime(15), counted from 1; `rest` starts at field 3.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (rate, seconds) = fixed_load();
    weft_identity::tls::install_provider();
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start().await;
    let server = Server::start(&dir.path().join("server"), None);
    let admin = server.admin_token();
    let manifest = write(
        dir.path(),
        "mesh.yaml",
        &format!("{SHOP}---\n{}", settings(collector.port)),
    );
    assert_eq!(server.weft(&admin, &["apply", "-f", &manifest]).code, 0);
    let http = reqwest::Client::new();
    let edge_credential = credential(Some(&server), &admin, dir.path(), "edge", "east", &[]);
    let mut edge = Edge::new("east", dir.path(), &[]);
    edge.start(&server.edge_url, &edge_credential, &http).await;
    let edge_pid = edge.process.as_ref().unwrap().0.id();

    let mut processes = Vec::new();
    let mut start = |service: &str, app: bool, outbound: u16| {
        let account = credential(
            Some(&server),
            &admin,
            dir.path(),
            service,
            "east",
            &["--namespace", "shop", "--service-account", service],
        );
        let node = format!("{service}-1");
        let mut command = sidecar(
            DataPlane::Envoy,
            &node,
            service,
            service,
            edge.xds_port,
            &account,
            &dir.path().join(format!("{node}.log")),
        );
        command
            .args(["--inbound", &format!("127.0.0.1:{}", free_port())])
            .args(["--outbound-port", &outbound.to_string()]);
        if app {
            with_echo_app(&mut command, service, &node, Some("v1"));
        }
        processes.push(Proc(command.spawn().unwrap()));
    };
    for service in ["reviews", "ratings", "details"] {
        start(service, true, free_port());
    }
    let outbound = free_port();
    start("client", false, outbound);

    let path = |name, host| Path {
        name,
        client: reqwest::Client::new(),
        url: format!("http://127.0.0.1:{outbound}/"),
        host,
        cookie: None,
    };
    let paths = [
        path("-> reviews (JSON log line)", "reviews"),
        path("-> ratings (no log line)", "ratings"),
        path("-> details (log line, traced)", "details"),
    ];
    for path in &paths {
        until(path.name, Duration::from_secs(60), async || {
            path.answers().await
        })
        .await;
    }
    let metrics = format!("http://127.0.0.1:{}/metrics", edge.admin_port);
    let counted = async || metric_sum(&http, &metrics, &["weft_requests_total{"]).await;
    let exports = async || metric_sum(&http, &metrics, &["weft_mesh_exports_total"]).await;
    let (counted_before, exports_before) = (counted().await, exports().await);
    let cpu_before = cpu_seconds(edge_pid);
    compare(&paths, rate, seconds).await;
    // The last counts arrive with the proxies' next flush.
    tokio::time::sleep(weft_agent::stats::FLUSH_INTERVAL + Duration::from_secs(1)).await;
    let cpu = cpu_seconds(edge_pid) - cpu_before;
    let counted = counted().await - counted_before;
    let exports = exports().await - exports_before;
    let series = metric_sum(&http, &metrics, &["weft_mesh_series "]).await;
    println!(
        "edge: {counted:.0} requests counted (each by its caller and its callee) from {exports:.0} exports; {:.1} ms of CPU per 1,000 counted, {series:.0} series held",
        cpu * 1e6 / counted.max(1.0)
    );
    println!(
        "collector: {} spans received from details' proxy",
        collector.spans().len()
    );
    drop(processes);
    drop(edge);
    server.stop();
}
