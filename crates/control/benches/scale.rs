//! How the edge scales: translation, snapshot builds and xDS pushes for
//! large workspaces, with the shared form ([`Publisher`]: each resource
//! encoded once, changes cost what they change) against the per-proxy
//! form the edge used before (every proxy's whole config encoded for
//! itself), measured in the same run.
//!
//! Each service has two instances (labels version v1 and v2); every tenth
//! service has a ServiceRoute (a 90/10 split and a header match), and each
//! workspace has a TrafficSetting with retries and outlier detection.
//! Each section runs in its own process, so its memory figures are its
//! own. Prints figures; asserts nothing.
//!
//! cargo bench -p weft-control --bench scale [-- SECTION]
//!
//! `WEFT_BENCH_CONNECTED=N` connects N lightweight proxies in the live
//! sections; `WEFT_BENCH_FIRST_SYNC_ONLY=1` ends the process once every
//! proxy has its first configuration, without freeing anything, so a heap
//! profiler (`heaptrack`) reports what the edge holds then as "leaked".

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use prost::Message;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use weft_agent::workload::Workload;
use weft_api::Resource;
use weft_api::edge::{DirectoryService, Locality, Site};
use weft_control::directory::Directory;
use weft_control::publish::{Published, Publisher, coalesce};
use weft_control::translate::{Config, Translation, translate};
use weft_xds::{AdsServer, ResourceType, Snapshot, SnapshotCache};

const CLUSTER: &str = "east";

fn resource(document: serde_json::Value) -> Resource {
    serde_json::from_value(document).expect("the benchmark's resources are well formed")
}

/// The configuration of `services` services in workspaces of
/// `per_workspace`; routed services send `v1_weight` percent to v1.
fn config(services: usize, per_workspace: usize, v1_weight: u32) -> Config {
    Config::parse(CLUSTER, &resources(services, per_workspace, v1_weight))
}

/// The resources [`config`] parses.
fn resources(services: usize, per_workspace: usize, v1_weight: u32) -> Vec<Resource> {
    let mut resources = vec![resource(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "bench"}, "spec": {}
    }))];
    for w in 0..services.div_ceil(per_workspace) {
        let ws = format!("ws-{w}");
        resources.push(resource(json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "Workspace",
            "metadata": {"name": ws, "tenant": "bench"},
            "spec": {"namespaceSelector": [format!("*/ns-{w}")]}
        })));
        resources.push(resource(json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "TrafficGroup",
            "metadata": {"name": "traffic", "tenant": "bench", "workspace": ws}, "spec": {}
        })));
        resources.push(resource(json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "TrafficSetting",
            "metadata": {"name": "defaults", "tenant": "bench", "workspace": ws},
            "spec": {
                "timeout": "10s",
                "retries": {"attempts": 2, "perTryTimeout": "3s"},
                "outlierDetection": {"consecutive5xx": 5, "interval": "10s", "baseEjectionTime": "30s"}
            }
        })));
    }
    for s in (0..services).step_by(10) {
        let (w, name) = (s / per_workspace, format!("svc-{s}"));
        resources.push(resource(json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "ServiceRoute",
            "metadata": {"name": name, "tenant": "bench", "workspace": format!("ws-{w}"), "trafficGroup": "traffic"},
            "spec": {
                "service": {"name": name, "namespace": format!("ns-{w}")},
                "subsets": [
                    {"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}}
                ],
                "rules": [
                    {"matches": [{"headers": [{"name": "x-canary", "exact": "yes"}]}],
                     "destinations": [{"subset": "v2"}]},
                    {"destinations": [{"subset": "v1", "weight": v1_weight}, {"subset": "v2", "weight": 100 - v1_weight}]}
                ]
            }
        })));
    }
    resources
}

/// Instance `n` (a unique number) of service `s`.
fn instance(s: usize, per_workspace: usize, version: &str, n: usize) -> Workload {
    Workload {
        node: format!("svc-{s}-{version}-{n}"),
        service: format!("svc-{s}"),
        namespace: format!("ns-{}", s / per_workspace),
        service_account: format!("svc-{s}"),
        labels: [("version".to_string(), version.to_string())].into(),
        address: format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255),
        port: 15006,
        app_port: Some(8080),
        outbound_port: Some(15001),
        role: Default::default(),
        calls: Vec::new(),
    }
}

/// Two instances (v1, v2) of every service.
fn registry(services: usize, per_workspace: usize) -> Vec<Workload> {
    (0..services)
        .flat_map(|s| {
            [
                instance(s, per_workspace, "v1", s * 2),
                instance(s, per_workspace, "v2", s * 2 + 1),
            ]
        })
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// This process's resident memory.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU time this process (the edge's side) has used, all threads; Linux
/// counts it in ticks of 10 ms.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Bytes of the distinct encoded layers behind `snapshots`.
fn distinct_bytes<'a>(snapshots: impl Iterator<Item = &'a Snapshot>) -> usize {
    let mut seen = HashSet::new();
    let mut bytes = 0;
    for s in snapshots {
        for layer in [s.own(), s.shared()] {
            if seen.insert(Arc::as_ptr(layer)) {
                bytes += layer.encoded_len();
            }
        }
    }
    bytes
}

/// The per-proxy form: every proxy's whole config encoded for itself.
fn per_proxy_snapshots(translation: &Translation) -> Vec<(String, Snapshot)> {
    translation
        .per_proxy()
        .proxies
        .into_iter()
        .map(|(node, proxy)| {
            let snapshot = proxy.to_snapshot().expect("consistent");
            (node, snapshot)
        })
        .collect()
}

/// A full build (an edge starting): shared form against per-proxy form.
fn full_build(services: usize, per_workspace: usize) {
    let started = Instant::now();
    let config = config(services, per_workspace, 90);
    let parse = started.elapsed();
    let workloads = registry(services, per_workspace);
    let started = Instant::now();
    let translation = translate(&config, &workloads, &Directory::default());
    let translate_time = started.elapsed();
    assert!(translation.errors.is_empty(), "{:?}", translation.errors);
    let proxies = translation.proxies.len();

    let before = rss();
    let started = Instant::now();
    let published = Publisher::new().publish(&translation);
    let shared_time = started.elapsed();
    let shared_bytes = distinct_bytes(published.snapshots.iter().map(|(_, s)| s));
    let shared_rss = rss().saturating_sub(before);
    let largest = published
        .snapshots
        .iter()
        .map(|(_, s)| s.encoded_len())
        .max()
        .unwrap_or(0);
    drop(published);

    let started = Instant::now();
    let per_proxy = per_proxy_snapshots(&translation);
    let per_proxy_time = started.elapsed();
    let per_proxy_bytes: usize = per_proxy.iter().map(|(_, s)| s.encoded_len()).sum();
    println!(
        "{services:>6} services ({per_workspace} per workspace), {proxies} proxies: parse {}, translate {}; \
         snapshots shared {} ({} encoded, +{} RSS) vs per proxy {} ({} encoded): {:.0}× faster; \
         one proxy's config {:.1} KiB",
        ms(parse),
        ms(translate_time),
        ms(shared_time),
        mib(shared_bytes),
        mib(shared_rss),
        ms(per_proxy_time),
        mib(per_proxy_bytes),
        per_proxy_time.as_secs_f64() / shared_time.as_secs_f64(),
        largest as f64 / 1024.0,
    );
}

/// Changes in a 1,000-service workspace: what one build costs.
fn incremental() {
    let (services, per_workspace) = (1000, 1000);
    let config = config(services, per_workspace, 90);
    let mut workloads = registry(services, per_workspace);
    let mut publisher = Publisher::new();
    publisher.publish(&translate(&config, &workloads, &Directory::default()));

    let report = |what: &str, took: Duration, published: &Published| {
        println!(
            "{what}: translate + build {}: {} services encoded, {} groups rebuilt, {} proxies updated",
            ms(took),
            published.stats.services_encoded,
            published.stats.groups_rebuilt,
            published.stats.proxies_updated,
        );
    };
    workloads.push(instance(7, per_workspace, "v1", 50_000));
    let started = Instant::now();
    let published = publisher.publish(&translate(&config, &workloads, &Directory::default()));
    report("a new instance", started.elapsed(), &published);

    let started = Instant::now();
    let changed = self::config(services, per_workspace, 80);
    let published = publisher.publish(&translate(&changed, &workloads, &Directory::default()));
    report(
        "a route change (parse included)",
        started.elapsed(),
        &published,
    );
}

/// Proxies that declare the ten services they call, in a 1,000-service
/// workspace.
fn declared() {
    let (services, per_workspace) = (1000, 1000);
    let config = config(services, per_workspace, 90);
    for calls in [0, 10] {
        let workloads: Vec<Workload> = registry(services, per_workspace)
            .into_iter()
            .enumerate()
            .map(|(i, mut w)| {
                w.calls = (1..=calls)
                    .map(|k| format!("svc-{}.ns-0", (i / 2 + k) % services))
                    .collect();
                w.calls.sort();
                w
            })
            .collect();
        let started = Instant::now();
        let translation = translate(&config, &workloads, &Directory::default());
        let published = Publisher::new().publish(&translation);
        let took = started.elapsed();
        let sizes: Vec<usize> = published
            .snapshots
            .iter()
            .map(|(_, s)| s.encoded_len())
            .collect();
        let resources: usize = published
            .snapshots
            .first()
            .map(|(_, s)| ResourceType::ALL.into_iter().map(|t| s.len(t)).sum())
            .unwrap_or(0);
        println!(
            "{}: translate + build {} for {} proxies; one proxy: {resources} resources, {:.1} KiB",
            if calls == 0 {
                "the whole workspace".to_string()
            } else {
                format!("{calls} declared services each")
            },
            ms(took),
            sizes.len(),
            sizes.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
        );
    }
}

/// A mesh of ten clusters where this one runs every tenth service (one
/// instance each) and nine others run the rest, each behind its east-west
/// gateway: what this cluster's edge knows of them is the directory.
fn ten_clusters(services: usize, per_workspace: usize) -> (Vec<Workload>, Directory) {
    let local = (0..services)
        .step_by(10)
        .map(|s| instance(s, per_workspace, "v1", s))
        .collect();
    let mut directory = Directory::default();
    for k in 1..10 {
        let remote = directory.clusters.entry(format!("remote-{k}")).or_default();
        remote.site = Some(Site {
            locality: Locality {
                region: format!("region-{}", k % 3),
                ..Locality::default()
            },
            gateways: vec![format!("10.200.0.{k}:15443")],
        });
        for s in (k..services).step_by(10) {
            let name = format!("svc-{s}");
            let namespace = format!("ns-{}", s / per_workspace);
            remote.services.insert(
                format!("{namespace}/{name}"),
                DirectoryService {
                    namespace,
                    service_accounts: vec![name.clone()],
                    name,
                    healthy: 2,
                },
            );
        }
    }
    (local, directory)
}

/// A delta client that subscribes like Envoy (clusters and listeners,
/// then the endpoints of the EDS clusters it gets, and its route tables)
/// and ACKs everything.
async fn proxy(channel: tonic::transport::Channel, id: String) {
    // Like Envoy, connect again when the stream fails (a connection
    // refused while thousands connect at once, for one).
    loop {
        one_stream(channel.clone(), id.clone()).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One ADS stream of [`proxy`], until it ends.
async fn one_stream(channel: tonic::transport::Channel, id: String) {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    // Requests are buffered without bound, as Envoy's are: a client that
    // stopped reading while its requests queue would stall the stream.
    let (tx, requests) = mpsc::unbounded_channel();
    let Ok(responses) = client
        .delta_aggregated_resources(UnboundedReceiverStream::new(requests))
        .await
    else {
        return;
    };
    let mut responses = responses.into_inner();
    let node = Some(Node {
        id,
        cluster: "bench".into(),
        ..Default::default()
    });
    let subscribe = |t: ResourceType, names: Vec<String>| DeltaDiscoveryRequest {
        node: node.clone(),
        type_url: t.type_url(),
        resource_names_subscribe: names,
        ..Default::default()
    };
    for request in [
        subscribe(ResourceType::Cluster, vec![]),
        subscribe(ResourceType::Listener, vec![]),
        subscribe(
            ResourceType::Route,
            vec!["outbound".into(), "inbound".into()],
        ),
    ] {
        if tx.send(request).is_err() {
            return;
        }
    }
    while let Ok(Some(response)) = responses.message().await {
        let eds: Vec<String> = response
            .resources
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .filter(|any| any.type_url == ResourceType::Cluster.type_url())
            .filter_map(|any| XdsCluster::decode(any.value.as_slice()).ok())
            .filter(|c| c.eds_cluster_config.is_some())
            .map(|c| c.name)
            .collect();
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url,
            response_nonce: response.nonce,
            ..Default::default()
        };
        if tx.send(ack).is_err() {
            return;
        }
        if !eds.is_empty() && tx.send(subscribe(ResourceType::Endpoint, eds)).is_err() {
            return;
        }
    }
}

/// The `clients` section: lightweight proxies for the nodes listed in a
/// file, each on a connection of its own, against the ADS server at
/// `port`; runs until killed. A process of its own, so the edge's memory
/// is measured without them.
async fn clients(port: u16, nodes: &str) {
    let nodes = std::fs::read_to_string(nodes).expect("the node list");
    for node in nodes.lines() {
        // Windows as large as Envoy's, so flow control is not what limits.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("the server's address")
            .initial_stream_window_size(Some(16 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .connect_lazy();
        tokio::spawn(proxy(channel, node.to_string()));
    }
    std::future::pending::<()>().await;
}

/// xDS responses the server sent, by type, from its metrics.
fn responses(registry: &prometheus_client::registry::Registry) -> [u64; ResourceType::ALL.len()] {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("metrics encode");
    ResourceType::ALL.map(|t| {
        let prefix = format!("xds_responses_total{{type=\"{}\"}} ", t.short());
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Envoy on the same ADS server, for node `id` (a client workload
/// with its outbound listener on a free port), and the directory that
/// holds its bootstrap while it runs.
struct Envoy(std::process::Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn envoy_binary() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("WEFT_ENVOY") {
        return Some(path.into());
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/envoy");
    path.exists().then_some(path)
}

fn start_envoy(binary: &std::path::Path, id: &str, ads_port: u16) -> Envoy {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bootstrap = json!({
        "node": {"id": id, "cluster": "bench"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC", "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "ads"}}]
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {"clusters": [{
            "name": "ads", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            },
            "load_assignment": {"cluster_name": "ads", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": ads_port}}
            }}]}]}
        }]}
    });
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, bootstrap.to_string()).expect("bootstrap written");
    let child = std::process::Command::new(binary)
        .arg("-c")
        .arg(&path)
        .args(["--use-dynamic-base-id", "-l", "error"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("Envoy starts");
    Envoy(child, dir)
}

fn client(n: usize, port: u16) -> Workload {
    Workload {
        node: format!("envoy-{n}"),
        service: "client".into(),
        namespace: "ns-0".into(),
        service_account: "client".into(),
        labels: BTreeMap::new(),
        address: "127.0.0.1".into(),
        port: 1,
        app_port: None,
        outbound_port: Some(port),
        role: Default::default(),
        calls: Vec::new(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until every proxy in `nodes` runs its published snapshot.
async fn all_acked(cache: &SnapshotCache, nodes: &[String]) -> Duration {
    let started = Instant::now();
    loop {
        let done = nodes.iter().all(|n| {
            let snapshot = cache.subscribe(n).borrow().clone();
            match (snapshot, cache.status(n)) {
                (Some(s), Some(status)) => s.accepted(&status.acked),
                _ => false,
            }
        });
        if done {
            return started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(120) {
            let behind: Vec<String> = nodes
                .iter()
                .filter_map(|n| {
                    let snapshot = cache.subscribe(n).borrow().clone()?;
                    let status = cache.status(n)?;
                    let types: Vec<&str> = ResourceType::ALL
                        .into_iter()
                        .filter(|t| match status.acked.get(t) {
                            Some(version) => *version != snapshot.version(*t),
                            None => snapshot.len(*t) > 0,
                        })
                        .map(|t| t.short())
                        .collect();
                    (!types.is_empty()).then(|| format!("{n} ({})", types.join(" ")))
                })
                .collect();
            panic!(
                "{} proxies did not ACK within two minutes, e.g. {:?}",
                behind.len(),
                &behind[..behind.len().min(5)]
            );
        }
        // Not too often: the check takes the cache's lock once per proxy,
        // which the streams need to record ACKs.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn publish_into(cache: &SnapshotCache, published: Published) -> Vec<String> {
    published
        .snapshots
        .into_iter()
        .map(|(node, snapshot)| {
            cache.set(&node, snapshot);
            node
        })
        .collect()
}

/// `proxies` connected delta clients (in a process of their own) and
/// three real Envoys on an ADS server, in workspaces of `per_workspace` of
/// `services`: pushes of a new instance, a route change and a rollout.
/// The RSS figures are this process's: the edge's side only.
async fn live(
    services: usize,
    per_workspace: usize,
    mut workloads: Vec<Workload>,
    directory: Directory,
    proxies: usize,
) {
    let rss_start = rss();
    let config = config(services, per_workspace, 90);
    let envoy = envoy_binary();
    let envoy_ports: Vec<u16> = if envoy.is_some() {
        (0..3).map(|_| free_port()).collect()
    } else {
        Vec::new()
    };
    workloads.extend(envoy_ports.iter().enumerate().map(|(n, p)| client(n, *p)));

    let cache = Arc::new(SnapshotCache::new());
    let mut publisher = Publisher::new();
    let started = Instant::now();
    let translation = translate(&config, &workloads, &directory);
    let nodes = publish_into(&cache, publisher.publish(&translation));
    let build = started.elapsed();
    // The edge drops each translation once published.
    drop(translation);
    let rss_built = rss();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsServer::new(cache.clone()).into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut metrics = prometheus_client::registry::Registry::default();
    cache.metrics().register(&mut metrics);
    // Spread the connected proxies over the workspaces.
    let step = (nodes.len() / proxies.max(1)).max(1);
    let mut connected: Vec<String> = nodes
        .iter()
        .filter(|n| n.starts_with("svc-"))
        .step_by(step)
        .take(proxies)
        .cloned()
        .collect();
    let list = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(list.path(), connected.join("\n")).expect("the node list");
    let mut clients = Child(
        std::process::Command::new(std::env::current_exe().expect("the benchmark's own path"))
            .args(["clients", &port.to_string()])
            .arg(list.path())
            .spawn()
            .expect("the clients' process starts"),
    );
    let mut envoys: Vec<Envoy> = match &envoy {
        Some(binary) => (0..envoy_ports.len())
            .map(|n| start_envoy(binary, &format!("envoy-{n}"), port))
            .collect(),
        None => {
            println!(
                "  (no Envoy found: set WEFT_ENVOY or run scripts/setup for the real-Envoy check)"
            );
            Vec::new()
        }
    };
    connected.extend((0..envoy_ports.len()).map(|n| format!("envoy-{n}")));
    let first = all_acked(&cache, &connected).await;
    println!(
        "{services} services ({per_workspace} per workspace, {} run here), {} proxies connected ({} real Envoys): \
         first build {}, all ACKed {} later; RSS {} at start, {} after the build, {} with every proxy connected",
        workloads
            .iter()
            .filter(|w| w.is_instance())
            .map(|w| &w.service)
            .collect::<HashSet<_>>()
            .len(),
        connected.len(),
        envoy_ports.len(),
        ms(build),
        ms(first),
        mib(rss_start),
        mib(rss_built),
        mib(rss()),
    );

    if std::env::var_os("WEFT_BENCH_FIRST_SYNC_ONLY").is_some() {
        // For a heap profile of the edge with every proxy connected: the
        // proxies go first, the edge ends before it frees anything.
        let _ = clients.0.kill();
        for envoy in &mut envoys {
            let _ = envoy.0.kill();
        }
        std::process::exit(0);
    }
    let push = |what: &str,
                took: Duration,
                acked: Duration,
                edge_cpu: Duration,
                updated: usize,
                sent: [u64; ResourceType::ALL.len()]| {
        let by_type: Vec<String> = ResourceType::ALL
            .into_iter()
            .zip(sent)
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| format!("{} {n}", t.short()))
            .collect();
        println!(
            "  {what}: build {}, every affected proxy ACKed {} after the build ({} in all, \
             the edge's CPU {}); {updated} snapshots replaced; responses: {}",
            ms(took),
            ms(acked),
            ms(took + acked),
            ms(edge_cpu),
            if by_type.is_empty() {
                "none".to_string()
            } else {
                by_type.join(", ")
            },
        );
    };
    let diff = |before: [u64; ResourceType::ALL.len()]| {
        let now = responses(&metrics);
        std::array::from_fn(|i| now[i] - before[i])
    };

    // A new instance of a service every connected proxy calls.
    let before = responses(&metrics);
    workloads.push(instance(1, per_workspace, "v1", 70_000));
    let cpu_before = cpu();
    let started = Instant::now();
    let published = publisher.publish(&translate(&config, &workloads, &directory));
    let updated = published.stats.proxies_updated;
    publish_into(&cache, published);
    let took = started.elapsed();
    let acked = all_acked(&cache, &connected).await;
    push(
        "a new instance",
        took,
        acked,
        cpu() - cpu_before,
        updated,
        diff(before),
    );

    // A route change.
    let before = responses(&metrics);
    let cpu_before = cpu();
    let started = Instant::now();
    let changed = self::config(services, per_workspace, 80);
    let published = publisher.publish(&translate(&changed, &workloads, &directory));
    let updated = published.stats.proxies_updated;
    publish_into(&cache, published);
    let took = started.elapsed();
    let acked = all_acked(&cache, &connected).await;
    push(
        "a route change (parse included)",
        took,
        acked,
        cpu() - cpu_before,
        updated,
        diff(before),
    );

    // A rollout: 100 new instances, one every 10 ms, built as the edge
    // builds (bursts coalesced).
    let before = responses(&metrics);
    let (changes_tx, mut changes) = watch::channel(workloads.clone());
    let rollout = tokio::spawn(async move {
        for n in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            changes_tx.send_modify(|w| w.push(instance(n % 50, per_workspace, "v2", 80_000 + n)));
        }
    });
    let started = Instant::now();
    let mut builds = 0;
    while changes.changed().await.is_ok() {
        coalesce(&mut changes).await;
        let now = changes.borrow_and_update().clone();
        publish_into(
            &cache,
            publisher.publish(&translate(&changed, &now, &directory)),
        );
        builds += 1;
        if now.len() == workloads.len() + 100 {
            break;
        }
    }
    rollout.await.unwrap();
    workloads = changes.borrow().clone();
    all_acked(&cache, &connected).await;
    let sent = diff(before);
    println!(
        "  a rollout of 100 instances over 1 s: {builds} builds, all ACKed {} after the first change; \
         EDS responses per connected proxy {:.1}; RSS at the end {}",
        ms(started.elapsed()),
        sent[ResourceType::Endpoint as usize] as f64 / connected.len() as f64,
        mib(rss()),
    );

    // The same, the way the edge did it before: every proxy's config
    // encoded for itself.
    let before = responses(&metrics);
    workloads.push(instance(2, per_workspace, "v1", 70_001));
    let cpu_before = cpu();
    let started = Instant::now();
    let translation = translate(&changed, &workloads, &directory);
    let snapshots = per_proxy_snapshots(&translation);
    let updated = snapshots.len();
    for (node, snapshot) in snapshots {
        cache.set(&node, snapshot);
    }
    let took = started.elapsed();
    let acked = all_acked(&cache, &connected).await;
    push(
        "a new instance, per-proxy form (before)",
        took,
        acked,
        cpu() - cpu_before,
        updated,
        diff(before),
    );
}

/// What one `weft explain` costs the edge: a whole translation (with a
/// caller imagined, or the caller's own), then the walk through it.
fn explain_cost() {
    use weft_api::explain::ExplainRequest;
    use weft_control::translate::explain;
    for (services, per_workspace) in [(1000, 1000), (10_000, 100)] {
        let resources = resources(services, per_workspace, 90);
        let config = Config::parse(CLUSTER, &resources).with_trust_domain(Some("bench".into()));
        let workloads = registry(services, per_workspace);
        let question = |from: &str| ExplainRequest {
            from: from.into(),
            host: "svc-0.ns-0".into(),
            method: "GET".into(),
            path: "/".into(),
            headers: [("x-canary".to_string(), "yes".to_string())].into(),
            claims: None,
        };
        let timings = |from: &str| {
            let mut runs: Vec<Duration> = (0..5)
                .map(|_| {
                    let started = Instant::now();
                    let answer = explain(
                        &config,
                        &resources,
                        &workloads,
                        &Directory::default(),
                        &question(from),
                    )
                    .expect("the benchmark's caller exists");
                    assert!(answer.route.is_some());
                    started.elapsed()
                })
                .collect();
            runs.sort();
            runs[runs.len() / 2]
        };
        let own = timings("svc-1-v1-2");
        let imagined = timings("ns-0/newcomer");
        let started = Instant::now();
        let _ = translate(&config, &workloads, &Directory::default());
        println!(
            "explain, {services} services: {} (a running caller), {} (an imagined one); translation alone {}",
            ms(own),
            ms(imagined),
            ms(started.elapsed())
        );
    }
}

fn main() {
    let section = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    };
    // WEFT_BENCH_CONNECTED: how many lightweight proxies the live
    // sections connect (to look at a smaller case).
    let connected = std::env::var("WEFT_BENCH_CONNECTED")
        .ok()
        .and_then(|v| v.parse().ok());
    match section.as_deref() {
        Some("full-1000") => full_build(1000, 1000),
        Some("full-10000") => full_build(10_000, 100),
        Some("incremental") => incremental(),
        Some("explain") => explain_cost(),
        Some("declared") => declared(),
        Some("live-1000") => runtime().block_on(live(
            1000,
            1000,
            registry(1000, 1000),
            Directory::default(),
            connected.unwrap_or(2000),
        )),
        Some("live-10000") => {
            let (workloads, directory) = ten_clusters(10_000, 100);
            runtime().block_on(live(
                10_000,
                100,
                workloads,
                directory,
                connected.unwrap_or(1000),
            ))
        }
        Some("clients") => {
            let mut args = std::env::args().skip(2);
            let port = args.next().and_then(|p| p.parse().ok()).expect("a port");
            let nodes = args.next().expect("a node list");
            runtime().block_on(clients(port, &nodes));
        }
        Some(other) => eprintln!("unknown section {other}"),
        None => {
            // Each section in a process of its own.
            let exe = std::env::current_exe().expect("the benchmark's own path");
            for section in [
                "full-1000",
                "full-10000",
                "incremental",
                "declared",
                "explain",
                "live-1000",
                "live-10000",
            ] {
                println!("== {section}");
                let status = std::process::Command::new(&exe).arg(section).status();
                if !status.is_ok_and(|s| s.success()) {
                    println!("   ({section} failed)");
                }
            }
        }
    }
}
