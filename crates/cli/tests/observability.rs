//! Observability end to end: real Envoy sidecars count real requests, the
//! edge serves them as labelled series, the server's rollup answers
//! `weft stat` for those who may read them.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::load::metric_sum;
use support::mesh::Mesh;
use support::{until, write};

/// A known mix through the client's sidecar: `n` calls to `host`, the
/// first `failing` of them answered 503 by the app.
async fn send(mesh: &Mesh, port: u16, host: &str, n: usize, failing: usize) {
    for i in 0..n {
        let path = if i < failing { "/?status=503" } else { "/" };
        let (status, _) = mesh.call(port, host, path, &[]).await;
        let expected = if i < failing { 503 } else { 200 };
        assert_eq!(status, expected, "call {i} to {host}{path}");
    }
}

/// The edge's series whose line has every one of `parts`, summed.
async fn edge_sum(mesh: &Mesh, parts: &[&str]) -> f64 {
    let url = format!("http://127.0.0.1:{}/metrics", mesh.edge.admin_port);
    metric_sum(&mesh.http, &url, parts).await
}

#[tokio::test]
async fn red_metrics_per_service_pair_match_the_traffic() {
    let mut mesh = Mesh::start().await;
    let _reviews = mesh.workload("reviews", "reviews-v1", "v1");
    let _ratings = mesh.workload("ratings", "ratings-v2", "v2");
    let (_client, port) = mesh.client();
    mesh.until_in_sync(3).await;
    until(
        "reviews and ratings answer the client",
        Duration::from_secs(20),
        async || {
            mesh.call(port, "reviews", "/", &[]).await.0 == 200
                && mesh.call(port, "ratings", "/", &[]).await.0 == 200
        },
    )
    .await;
    // What the warm-up sent is counted too: wait until it arrived and
    // count from there.
    let received = [
        "weft_requests_total{",
        "reporter=\"destination\"",
        "source_service=\"client\"",
    ];
    let mut before = -1.0;
    until(
        "the warm-up's counts arrived and stopped moving",
        Duration::from_secs(30),
        async || {
            let now = edge_sum(&mesh, &received).await;
            let settled = now > 0.0 && now == before;
            before = now;
            if !settled {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            settled
        },
    )
    .await;
    let reviews = |code: &'static str, reporter: &'static str| {
        [
            "weft_requests_total{",
            reporter,
            "source_service=\"client\"",
            "destination_service=\"reviews\"",
            code,
        ]
    };
    let base_ok = edge_sum(
        &mesh,
        &reviews("response_code=\"200\"", "reporter=\"destination\""),
    )
    .await;
    let base_failed = edge_sum(
        &mesh,
        &reviews("response_code=\"503\"", "reporter=\"destination\""),
    )
    .await;
    let base_sent = edge_sum(&mesh, &reviews("response_class=", "reporter=\"source\"")).await;
    let base_ratings = edge_sum(
        &mesh,
        &[
            "weft_requests_total{",
            "reporter=\"destination\"",
            "destination_service=\"ratings\"",
            "destination_version=\"v2\"",
        ],
    )
    .await;

    send(&mesh, port, "reviews", 300, 30).await;
    send(&mesh, port, "ratings", 100, 0).await;

    let counts = async || {
        let ok = edge_sum(
            &mesh,
            &reviews("response_code=\"200\"", "reporter=\"destination\""),
        )
        .await;
        let failed = edge_sum(
            &mesh,
            &reviews("response_code=\"503\"", "reporter=\"destination\""),
        )
        .await;
        let sent = edge_sum(&mesh, &reviews("response_class=", "reporter=\"source\"")).await;
        let ratings = edge_sum(
            &mesh,
            &[
                "weft_requests_total{",
                "reporter=\"destination\"",
                "destination_service=\"ratings\"",
                "destination_version=\"v2\"",
            ],
        )
        .await;
        (
            ok - base_ok,
            failed - base_failed,
            sent - base_sent,
            ratings - base_ratings,
        )
    };
    let expected = (270.0, 30.0, 300.0, 100.0);
    // The proxies send their counts every 5 s.
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while counts().await != expected {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    let url = format!("http://127.0.0.1:{}/metrics", mesh.edge.admin_port);
    let text = mesh
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (ok, failed, sent, ratings) = counts().await;
    println!("reviews: {ok} ok, {failed} failed, {sent} sent by the client; ratings: {ratings}");
    assert_eq!((ok, failed, sent, ratings), expected, "{text}");

    // The callee's series carry who called, verified, and what it is.
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("weft_requests_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("destination_service=\"reviews\"")
                && l.contains("response_code=\"503\"")
        })
        .expect("a series of reviews' 503s");
    for label in [
        "source_cluster=\"east\"",
        "source_namespace=\"shop\"",
        "source_principal=\"spiffe://",
        "/ns/shop/sa/client\"",
        "destination_cluster=\"east\"",
        "destination_version=\"v1\"",
        "response_class=\"5xx\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(line.contains(label), "{label} in {line}");
    }
    // Durations: every counted request is timed, in seconds.
    let timed = edge_sum(
        &mesh,
        &[
            "weft_request_duration_seconds_count{",
            "reporter=\"destination\"",
            "destination_service=\"reviews\"",
        ],
    )
    .await;
    let counted = edge_sum(
        &mesh,
        &[
            "weft_requests_total{",
            "reporter=\"destination\"",
            "destination_service=\"reviews\"",
        ],
    )
    .await;
    assert_eq!(timed, counted, "{text}");
    assert!(text.contains("le=\"0.0005\""), "{text}");

    // The global view: the server's rollup of the pair.
    let server = mesh.server();
    let pairs = |token: &str| -> Value {
        let run = server.weft(token, &["stat", "pairs", "--since", "10m", "-o", "json"]);
        assert_eq!(run.code, 0, "{run:?}");
        serde_json::from_str(&run.stdout).unwrap()
    };
    let row = |report: &Value, service: &str| -> Option<Value> {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["source"]["service"] == "client" && r["destination"]["service"] == service)
            .cloned()
    };
    until(
        "the server's rollup has the calls",
        Duration::from_secs(40),
        async || {
            row(&pairs(&mesh.admin), "reviews")
                .is_some_and(|r| r["requests"].as_u64().unwrap_or(0) >= 300)
        },
    )
    .await;
    let report = pairs(&mesh.admin);
    let reviews_row = row(&report, "reviews").unwrap();
    println!("weft stat pairs: {reviews_row}");
    assert!(
        reviews_row["errors"].as_u64().unwrap() >= 30,
        "{reviews_row}"
    );
    let success = reviews_row["successRate"].as_f64().unwrap();
    assert!(success < 0.95 && success > 0.85, "{reviews_row}");
    assert!(
        reviews_row["p99Seconds"].as_f64().is_some(),
        "{reviews_row}"
    );
    assert_eq!(reviews_row["mtlsShare"], 1.0, "{reviews_row}");
    let table = server.weft(&mesh.admin, &["stat", "services"]);
    assert_eq!(table.code, 0, "{table:?}");
    println!("{}", table.stdout);
    assert!(table.stdout.contains("reviews.shop"), "{}", table.stdout);

    // A viewer of another workspace sees none of shop's traffic.
    let other = write(
        mesh.dir.path(),
        "other.yaml",
        "\
apiVersion: weft.dev/v1alpha1
kind: Workspace
metadata: {name: other, tenant: retail}
spec: {namespaceSelector: [east/other]}
---
apiVersion: weft.dev/v1alpha1
kind: User
metadata: {name: olga}
spec: {}
---
apiVersion: weft.dev/v1alpha1
kind: AccessBinding
metadata: {name: olga-views, tenant: retail, workspace: other}
spec:
  role: viewer
  subjects: [{user: olga}]
",
    );
    let applied = server.weft(&mesh.admin, &["apply", "-f", &other]);
    assert_eq!(applied.code, 0, "{applied:?}");
    let created = server.weft(&mesh.admin, &["token", "create", "--user", "olga"]);
    assert_eq!(created.code, 0, "{created:?}");
    let olga = created.stdout.trim().to_string();
    let seen = pairs(&olga);
    assert_eq!(seen["rows"], serde_json::json!([]), "{seen}");
    let services = server.weft(&olga, &["stat", "services", "-o", "json"]);
    assert!(!services.stdout.contains("reviews"), "{services:?}");
}
