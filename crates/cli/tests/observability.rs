//! Observability end to end: real Envoy sidecars count real requests, the
//! edge serves them as labelled series, the server's rollup answers
//! `weft stat` for those who may read them.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::load::metric_sum;
use support::mesh::{DataPlane, Mesh, logged, sidecar, with_echo_app};
use support::otlp::{Collector, ReceivedSpan, attribute};
use support::prometheus::Prometheus;
use support::{Proc, WEFT, free_port, until, write};
use weft_agent::stats::FLUSH_INTERVAL;

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
    let reviews = |code: &'static str, reporter: &'static str| {
        [
            "weft_requests_total{",
            reporter,
            "source_service=\"client\"",
            "destination_service=\"reviews\"",
            code,
        ]
    };
    // reviews' successes and failures as it counted them, the calls to
    // reviews as the client counted them, and ratings v2's.
    let counts = async || {
        let reviews_got = |code| reviews(code, "reporter=\"destination\"");
        (
            edge_sum(&mesh, &reviews_got("response_code=\"200\"")).await,
            edge_sum(&mesh, &reviews_got("response_code=\"503\"")).await,
            edge_sum(&mesh, &reviews("response_class=", "reporter=\"source\"")).await,
            edge_sum(
                &mesh,
                &[
                    "weft_requests_total{",
                    "reporter=\"destination\"",
                    "destination_service=\"ratings\"",
                    "destination_version=\"v2\"",
                ],
            )
            .await,
        )
    };
    // What the warm-up sent is counted too: wait until it arrived (no
    // change over more than one flush of the proxies) and count from
    // there.
    let mut base = (-1.0, -1.0, -1.0, -1.0);
    until(
        "the warm-up's counts arrived and stopped moving",
        Duration::from_secs(40),
        async || {
            let now = counts().await;
            let settled = now.0 > 0.0 && now.2 > 0.0 && now.3 > 0.0 && now == base;
            base = now;
            if !settled {
                tokio::time::sleep(FLUSH_INTERVAL + Duration::from_secs(1)).await;
            }
            settled
        },
    )
    .await;
    let since_base = async || {
        let now = counts().await;
        (
            now.0 - base.0,
            now.1 - base.1,
            now.2 - base.2,
            now.3 - base.3,
        )
    };

    send(&mesh, port, "reviews", 300, 30).await;
    send(&mesh, port, "ratings", 100, 0).await;

    let expected = (270.0, 30.0, 300.0, 100.0);
    // The proxies send their counts every 5 s.
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while since_base().await != expected {
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
    let (ok, failed, sent, ratings) = since_base().await;
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
    // The caller's series say which cluster answered (the instances'
    // EDS hostname).
    let sent_here = edge_sum(
        &mesh,
        &[
            "weft_requests_total{",
            "reporter=\"source\"",
            "destination_service=\"reviews\"",
            "destination_cluster=\"east\"",
        ],
    )
    .await;
    assert!(sent_here >= 300.0, "{text}");
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

    // A real Prometheus finds the edge through the server and scrapes
    // it; every query of the shipped dashboards has data.
    let server = mesh.server();
    let token_file = server.data.join("admin.token");
    let config = server.weft(
        &mesh.admin,
        &[
            "x",
            "prometheus-config",
            "--token-file",
            token_file.to_str().unwrap(),
            "--scrape-interval",
            "1s",
        ],
    );
    assert_eq!(config.code, 0, "{config:?}");
    let config = write(mesh.dir.path(), "prometheus.yml", &config.stdout);
    let prometheus = Prometheus::start(Path::new(&config), mesh.dir.path(), &mesh.http).await;
    until(
        "Prometheus has scraped the edge's request series twice",
        Duration::from_secs(60),
        async || {
            !prometheus
                .query(
                    &mesh.http,
                    "count_over_time(weft_requests_total{weft_cluster=\"east\",reporter=\"destination\",destination_service=\"reviews\"}[1m]) > 1",
                )
                .await
                .is_empty()
        },
    )
    .await;
    let failed_series = prometheus
        .query(
            &mesh.http,
            "sum(weft_requests_total{reporter=\"destination\",destination_service=\"reviews\",response_class=\"5xx\"})",
        )
        .await;
    assert_eq!(
        failed_series[0]["value"][1]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap(),
        edge_sum(
            &mesh,
            &reviews("response_code=\"503\"", "reporter=\"destination\"")
        )
        .await,
        "Prometheus holds what the edge serves"
    );
    let dashboards = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana");
    let mut queries = 0;
    for file in std::fs::read_dir(&dashboards).unwrap() {
        let file = file.unwrap().path();
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let templating = dashboard["templating"]["list"].as_array().unwrap().clone();
        let exprs = dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["targets"].as_array().unwrap().clone())
            .map(|t| t["expr"].as_str().unwrap().to_string())
            .chain(
                templating
                    .iter()
                    .filter_map(|v| v["definition"].as_str().map(String::from)),
            );
        for expr in exprs {
            // As Grafana sends it with every variable at "All".
            let mut query = expr.replace("$__rate_interval", "1m");
            for variable in &templating {
                let name = variable["name"].as_str().unwrap();
                query = query.replace(&format!("${name}"), ".*");
            }
            let query = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(", "))
                .map_or(query.clone(), |(metric, label)| {
                    format!("count by ({}) ({metric})", label.trim_end_matches(')'))
                });
            let result = prometheus.query(&mesh.http, &query).await;
            assert!(
                !result.is_empty(),
                "{}: no data for {query}",
                file.display()
            );
            queries += 1;
        }
    }
    println!("{queries} dashboard queries have data");
    assert!(queries >= 30, "{queries}");

    // The global view: the server's rollup of the pair.
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
    // weft top redraws that view until stopped.
    let top = std::process::Command::new(WEFT)
        .args(["top", "--every", "1s", "--since", "10m"])
        .env("WEFT_SERVER", &server.url)
        .env("WEFT_TOKEN", &mesh.admin)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _ = std::process::Command::new("kill")
        .args(["-INT", &top.id().to_string()])
        .status();
    let top = top.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&top.stdout);
    assert!(top.status.success(), "{shown}");
    assert!(shown.matches("weft top: services").count() >= 2, "{shown}");
    assert!(shown.contains("reviews.shop"), "{shown}");

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

/// TelemetrySettings for workspace shop: every request traced to
/// `collector`; ratings' request logs as OTLP log records there too.
fn telemetry_settings(collector: u16) -> String {
    format!(
        "\
apiVersion: weft.dev/v1alpha1
kind: TelemetrySetting
metadata: {{name: traces, tenant: retail, workspace: shop}}
spec:
  tracing: {{collector: '127.0.0.1:{collector}', samplingPercent: 100, tags: {{env: test}}}}
---
apiVersion: weft.dev/v1alpha1
kind: TelemetrySetting
metadata: {{name: ratings-logs, tenant: retail, workspace: shop}}
spec:
  service: {{name: ratings, namespace: shop}}
  accessLog: {{to: otlp, collector: '127.0.0.1:{collector}'}}
"
    )
}

#[tokio::test]
async fn one_trace_follows_a_call_across_services_and_the_logs_name_it() {
    let collector = Collector::start().await;
    let mut mesh = Mesh::start().await;
    mesh.apply(&telemetry_settings(collector.port), 0).await;
    let _ratings = mesh.workload("ratings", "ratings-v1", "v1");
    // reviews calls ratings through its own sidecar, passing on the
    // trace context.
    let reviews_out = free_port();
    let credential = mesh.credential("reviews");
    let mut reviews = sidecar(
        DataPlane::Envoy,
        "reviews-v1",
        "reviews",
        "reviews",
        mesh.edge.xds_port,
        &credential,
        &mesh.dir.path().join("reviews-v1.log"),
    );
    reviews
        .args(["--inbound", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-port", &free_port().to_string()])
        .args(["--outbound-port", &reviews_out.to_string()]);
    with_echo_app(&mut reviews, "reviews", "reviews-v1", Some("v1"));
    reviews.args(["--outbound", &format!("127.0.0.1:{reviews_out}")]);
    let _reviews = Proc(reviews.spawn().unwrap());
    let (_client, port) = mesh.client();
    mesh.until_in_sync(3).await;
    until(
        "client → reviews → ratings answers",
        Duration::from_secs(30),
        async || mesh.call(port, "reviews", "/?call=ratings", &[]).await.0 == 200,
    )
    .await;

    // One trace with the spans of all three proxies, each linked to the
    // span that caused it.
    let mut whole = None;
    until(
        "the collector has a trace across client, reviews and ratings",
        Duration::from_secs(30),
        async || {
            let spans = collector.spans();
            let mut by_trace: BTreeMap<Vec<u8>, Vec<ReceivedSpan>> = BTreeMap::new();
            for span in spans {
                by_trace
                    .entry(span.span.trace_id.clone())
                    .or_default()
                    .push(span);
            }
            whole = by_trace.into_values().find(|spans| {
                let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
                services == BTreeSet::from(["client", "reviews", "ratings"]) && spans.len() >= 4
            });
            whole.is_some()
        },
    )
    .await;
    let trace = whole.unwrap();
    for span in &trace {
        println!(
            "{:8} {:?} span {} parent {}",
            span.service,
            span.span.kind(),
            hex(&span.span.span_id),
            hex(&span.span.parent_span_id)
        );
    }
    let ids: BTreeSet<&[u8]> = trace.iter().map(|s| s.span.span_id.as_slice()).collect();
    let roots: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|s| s.span.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {trace:#?}");
    assert_eq!(
        roots[0].service, "client",
        "the client's proxy starts the trace"
    );
    for span in &trace {
        assert!(
            span.span.parent_span_id.is_empty()
                || ids.contains(span.span.parent_span_id.as_slice()),
            "every other span's parent is in the trace: {span:#?}"
        );
        assert_eq!(
            attribute(&span.span.attributes, "env").as_deref(),
            Some("test"),
            "{span:#?}"
        );
    }
    // ratings' span descends from reviews' (through reviews' app).
    let parent_of = |span: &ReceivedSpan| {
        trace
            .iter()
            .find(|s| s.span.span_id == span.span.parent_span_id)
    };
    let ratings_span = trace.iter().find(|s| s.service == "ratings").unwrap();
    let mut ancestors = Vec::new();
    let mut at = ratings_span;
    while let Some(parent) = parent_of(at) {
        ancestors.push(parent.service.clone());
        at = parent;
    }
    assert!(
        ancestors.contains(&"reviews".to_string())
            && ancestors.last().map(String::as_str) == Some("client"),
        "ratings ← reviews ← client: {ancestors:?}"
    );

    // Request logs: JSON lines with the verified caller and the trace id.
    let trace_id = hex(&trace[0].span.trace_id);
    let log = std::fs::read_to_string(mesh.dir.path().join("reviews-v1.log")).unwrap();
    assert!(
        logged(
            &log,
            &[
                ("side", "inbound"),
                ("caller", "spiffe://weft/ns/shop/sa/client"),
                ("trace_id", &trace_id),
                ("response_code", "200"),
            ]
        ),
        "{log}"
    );
    // ratings' logs went to the collector instead.
    until(
        "ratings' request logs reach the collector",
        Duration::from_secs(20),
        async || {
            collector.logs().iter().any(|record| {
                attribute(&record.attributes, "trace_id").as_deref() == Some(trace_id.as_str())
                    && attribute(&record.attributes, "caller").as_deref()
                        == Some("spiffe://weft/ns/shop/sa/reviews")
            })
        },
    )
    .await;
    let ratings_log = std::fs::read_to_string(mesh.dir.path().join("ratings-v1.log")).unwrap();
    assert!(
        !logged(&ratings_log, &[("side", "inbound")]),
        "ratings logs to the collector only"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
