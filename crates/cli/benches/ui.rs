//! How fast the web UI draws a large estate, and what it weighs.
//!
//! A management plane in this process (the real router on a loopback
//! port, SQLite) seeded with 1,000 services: three clusters whose edges
//! report one sidecar per service, ten workspaces, and 2,000 service
//! pairs of traffic in the window. Then, in interleaved rounds, each page
//! is fetched over HTTP (server time, size, and size gzipped as browsers
//! get it) and opened in a real
//! Chromium (first contentful paint, from the browser's own timing).
//! Last, the bytes of the assets embedded in the binary.
//!
//! `cargo bench -p weft --bench ui` (WEFT_BENCH_SERVICES, WEFT_BENCH_ROUNDS).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Instant;

use support::browser::Browser;
use weft_api::edge::{CertificateReport, EdgeStatus, ProxyReport};
use weft_api::traffic_stats::{PairTraffic, ServiceAt, Totals, TrafficRollup};
use weft_manage::AppState;
use weft_store::{EdgeReport, Store};

const CLUSTERS: [&str; 3] = ["east-a", "east-b", "west"];
const WORKSPACES: usize = 10;
const PAGES: [&str; 3] = ["/ui/", "/ui/topology", "/ui/services"];

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn at(services: usize, j: usize) -> ServiceAt {
    ServiceAt {
        cluster: CLUSTERS[j % CLUSTERS.len()].to_string(),
        namespace: format!("ns{}", j % WORKSPACES),
        service: format!("svc{}", j % services),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn seed(state: &AppState, base: &str, admin: &str, services: usize) {
    let mut documents = Vec::new();
    for cluster in CLUSTERS {
        documents.push(
            serde_json::json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": cluster}, "spec": {"region": "east"}}),
        );
    }
    documents.push(
        serde_json::json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "retail"}, "spec": {}}),
    );
    for w in 0..WORKSPACES {
        documents.push(
            serde_json::json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Workspace",
            "metadata": {"name": format!("ws{w}"), "tenant": "retail"},
            "spec": {"namespaceSelector": [format!("*/ns{w}")]}}),
        );
        documents.push(
            serde_json::json!({"apiVersion": "weft.dev/v1alpha1", "kind": "SecuritySetting",
            "metadata": {"name": "calls", "tenant": "retail", "workspace": format!("ws{w}")},
            "spec": {"authorization": {"allow": [{"from": [{"sameWorkspace": true}]}]}}}),
        );
    }
    let applied = reqwest::Client::new()
        .post(format!("{base}/v1/apply"))
        .bearer_auth(admin)
        .json(&serde_json::json!({"resources": documents}))
        .send()
        .await
        .unwrap();
    assert!(applied.status().is_success(), "{:?}", applied.text().await);
    let expires = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    )
    .to_string();
    let mut proxies: BTreeMap<String, Vec<ProxyReport>> = BTreeMap::new();
    for j in 0..services {
        let s = at(services, j);
        proxies
            .entry(s.cluster.clone())
            .or_default()
            .push(ProxyReport {
                node: format!("{}-1", s.service),
                labels: BTreeMap::from([("version".to_string(), "v1".to_string())]),
                address: format!("10.0.{}.{}:8080", j / 250, j % 250),
                connected: true,
                in_sync: true,
                acked: BTreeMap::from([("cds".to_string(), "abc".to_string())]),
                certificate: Some(CertificateReport {
                    identity: format!("spiffe://weft/ns/{}/sa/{}", s.namespace, s.service),
                    expires_at: expires.clone(),
                    root: String::new(),
                    trusts: Vec::new(),
                    overdue: false,
                }),
                service: s.service,
                namespace: s.namespace,
                ..ProxyReport::default()
            });
    }
    for (cluster, proxies) in proxies {
        let status = EdgeStatus {
            config_version: "v1".into(),
            proxies,
            ..EdgeStatus::default()
        };
        state
            .store
            .put_edge_report(&EdgeReport {
                cluster,
                status: serde_json::to_string(&status).unwrap(),
                reported_at: weft_store::now_rfc3339(),
            })
            .await
            .unwrap();
    }
    let mut pairs = Vec::new();
    for j in 0..services {
        for callee in [j + 1, j * 7 + 3] {
            pairs.push(PairTraffic {
                source: at(services, j),
                destination: at(services, callee),
                totals: Totals {
                    requests: 100,
                    errors: u64::from(j % 50 == 0) * 10,
                    mtls: 100,
                    durations: vec![0, 0, 10, 60, 20, 10],
                    duration_sum_seconds: 0.4,
                },
            });
        }
    }
    state.traffic.add(TrafficRollup { seconds: 10, pairs });
}

#[tokio::main]
async fn main() {
    weft_identity::tls::install_provider();
    let services = env_number("WEFT_BENCH_SERVICES", 1000);
    let rounds = env_number("WEFT_BENCH_ROUNDS", 5);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("weft.db").display()
    ))
    .await
    .unwrap();
    let token_file = weft_manage::bootstrap::bootstrap(&store, dir.path(), "weft", None)
        .await
        .unwrap()
        .expect("a fresh store");
    let admin = std::fs::read_to_string(token_file).unwrap();
    let admin = admin.lines().next().unwrap().to_string();
    let state = AppState::new(store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(weft_manage::serve(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    seed(&state, &base, &admin, services).await;

    // A session for the HTTP fetches.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = http
        .post(format!("{base}/ui/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={admin}"))
        .send()
        .await
        .unwrap();
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();

    let mut browser = Browser::start(&[], "/none", dir.path().join("browser.log"));
    browser.goto(&format!("{base}/")).await;
    browser.fill("#token", &admin).await;
    browser.submit("button[type=submit]").await;

    let mut server_ms: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut paint_ms: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut bytes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut gzip_bytes: BTreeMap<&str, usize> = BTreeMap::new();
    for round in 0..rounds {
        for page in PAGES {
            let started = Instant::now();
            let body = http
                .get(format!("{base}{page}"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            server_ms
                .entry(page)
                .or_default()
                .push(started.elapsed().as_secs_f64() * 1000.0);
            bytes.insert(page, body.len());
            let gzipped = http
                .get(format!("{base}{page}"))
                .header("cookie", &cookie)
                .header("accept-encoding", "gzip")
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            gzip_bytes.insert(page, gzipped.len());
            browser.goto(&format!("{base}{page}")).await;
            if let Some(ms) = browser.first_paint_ms().await {
                paint_ms.entry(page).or_default().push(ms);
            }
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    println!(
        "web UI at {services} services, 2 calls each, 3 clusters, {WORKSPACES} workspaces; medians of {rounds} rounds"
    );
    println!(
        "{:<16} {:>14} {:>18} {:>12} {:>12}",
        "page", "server (ms)", "first paint (ms)", "HTML (KiB)", "gzip (KiB)"
    );
    for page in PAGES {
        println!(
            "{:<16} {:>14.1} {:>18.1} {:>12.1} {:>12.1}",
            page,
            median(server_ms[page].clone()),
            median(paint_ms.get(page).cloned().unwrap_or_default()),
            bytes[page] as f64 / 1024.0,
            gzip_bytes[page] as f64 / 1024.0
        );
    }
    println!(
        "embedded assets: {} bytes ({:.1} KiB: stylesheet, script, icon)",
        weft_manage::ui::embedded_asset_bytes(),
        weft_manage::ui::embedded_asset_bytes() as f64 / 1024.0
    );
}
