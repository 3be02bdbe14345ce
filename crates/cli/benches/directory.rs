//! How fast a directory change reaches every edge, and what crosses.
//!
//! A real `weft server` (SQLite) and N simulated edges in this process, for
//! N = 10 and 50 clusters with 1,000 services each. Each simulated edge is
//! what `weft edge` runs for the directory: its own cluster CA from the
//! server (mutual TLS on the edge port, a new connection per request), a
//! publication of its entry, and a follower long-polling the others'
//! changes. Then one cluster changes one service's count, five times, and
//! the time until every other edge holds the change is printed, with the
//! bytes of a full directory and of one incremental update.
//!
//! `cargo bench -p weft --bench directory`

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weft_api::edge::{DirectoryEntry, DirectoryService, Locality, Site, Trust};
use weft_control::ca::EdgeCa;
use weft_control::directory::Directory;
use weft_control::registry::Registry;
use weft_control::server_link::ServerLink;

const SERVICES: usize = 1_000;

fn entry(cluster: usize, bump: u32) -> DirectoryEntry {
    DirectoryEntry {
        site: Site {
            locality: Locality::default(),
            gateways: vec![format!("10.{}.{}.1:15443", cluster / 250, cluster % 250)],
        },
        services: (0..SERVICES)
            .map(|s| DirectoryService {
                namespace: format!("team{}", s % 20),
                name: format!("service-{s:04}"),
                healthy: 3 + if s == 0 { bump } else { 0 },
                service_accounts: vec![format!("service-{s:04}")],
            })
            .collect(),
        ingress: Vec::new(),
    }
}

/// One simulated edge: its link to the server and what it holds.
struct Edge {
    client: ServerLink,
    held: watch::Sender<Directory>,
}

async fn run(clusters: usize) {
    let dir = tempfile::tempdir().unwrap();
    let server = support::Server::start(&dir.path().join("server"), None);
    let admin = server.admin_token();
    let manifest: String = (0..clusters)
        .map(|c| {
            format!(
                "apiVersion: weft.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: c{c}}}\nspec: {{region: r{}}}\n---\n",
                c % 3
            )
        })
        .collect();
    let file = support::write(dir.path(), "clusters.yaml", &manifest);
    assert_eq!(server.weft(&admin, &["apply", "-f", &file]).code, 0);

    let started = Instant::now();
    let mut edges = Vec::new();
    for c in 0..clusters {
        let name = format!("c{c}");
        let run = server.weft(&admin, &["token", "create", "--cluster", &name]);
        assert_eq!(run.code, 0, "{run:?}");
        let path = support::write(dir.path(), &format!("{name}.token"), &run.stdout);
        let credential = run.stdout.lines().next().unwrap().trim().to_string();
        let bundle = std::fs::read_to_string(&path).unwrap();
        let bundle = bundle.split_once('\n').unwrap().1.to_string();
        let ca = Arc::new(EdgeCa::load(
            &name,
            dir.path().join(&name),
            Duration::from_secs(3600),
            Registry::new(&name, Duration::from_secs(5)),
        ));
        ca.set_trust(Some(Trust {
            trust_domain: "weft".into(),
            bundle,
            signer: String::new(),
        }));
        let client = ServerLink::new(&ca, &server.edge_url, &credential, &name).unwrap();
        ca.renew(&client).await.unwrap();
        edges.push(Edge {
            client,
            held: watch::Sender::new(Directory::default()),
        });
    }
    println!(
        "{clusters} clusters: edge credentials and cluster CAs in {:.1?}",
        started.elapsed()
    );

    let started = Instant::now();
    for (c, edge) in edges.iter().enumerate() {
        edge.client.publish(&entry(c, 0)).await.unwrap();
    }
    let entry_bytes = serde_json::to_vec(&entry(0, 0)).unwrap().len();
    println!(
        "  first publication of {clusters} × {SERVICES} services: {:.1?} ({:.1} KiB per entry)",
        started.elapsed(),
        entry_bytes as f64 / 1024.0
    );

    // Every edge follows the others, as `weft edge` does.
    let started = Instant::now();
    let mut full_bytes = 0;
    for edge in &edges {
        let update = edge.client.follow(0, Duration::ZERO).await.unwrap();
        full_bytes = serde_json::to_vec(&update).unwrap().len();
        edge.held.send_modify(|d| {
            d.apply(update);
        });
    }
    println!(
        "  full directory at each edge: {} services elsewhere, {:.0} KiB; all {clusters} edges fetched it in {:.1?}",
        edges[0].held.borrow().services(),
        full_bytes as f64 / 1024.0,
        started.elapsed()
    );
    let edges = Arc::new(edges);
    let update_bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut followers = Vec::new();
    for i in 0..clusters {
        let (edges, update_bytes) = (edges.clone(), update_bytes.clone());
        followers.push(tokio::spawn(async move {
            let edge = &edges[i];
            loop {
                let since = edge.held.borrow().revision;
                let Ok(update) = edge.client.follow(since, Duration::from_secs(25)).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if !update.changes.is_empty() {
                    let bytes = serde_json::to_vec(&update).unwrap().len();
                    update_bytes.store(bytes, std::sync::atomic::Ordering::Relaxed);
                }
                edge.held.send_modify(|d| {
                    d.apply(update);
                });
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut times = Vec::new();
    for round in 1..=5u32 {
        let mut watchers: Vec<_> = edges[1..].iter().map(|e| e.held.subscribe()).collect();
        let sent = Instant::now();
        edges[0].client.publish(&entry(0, round)).await.unwrap();
        for watcher in &mut watchers {
            watcher
                .wait_for(|d| {
                    d.clusters
                        .get("c0")
                        .and_then(|c| c.services.get("team0/service-0000"))
                        .is_some_and(|s| s.healthy == 3 + round)
                })
                .await
                .unwrap();
        }
        times.push(sent.elapsed());
    }
    times.sort();
    println!(
        "  one service's count changed in c0 → held by all {} other edges: median {:.1?}, slowest of 5 {:.1?}; each edge received {} bytes",
        clusters - 1,
        times[2],
        times[4],
        update_bytes.load(std::sync::atomic::Ordering::Relaxed)
    );
    for follower in followers {
        follower.abort();
    }
    server.stop();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Only under `cargo bench`: `cargo test` runs bench targets as tests.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for clusters in [10, 50] {
        run(clusters).await;
    }
}
