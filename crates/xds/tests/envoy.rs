//! The ADS server against real Envoy, over state of the world and delta:
//! traffic follows snapshots, an update that removes a cluster loses no
//! request, and a configuration Envoy refuses is recorded as a NACK while
//! the last good one keeps serving.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{HttpConnectionManager, HttpFilter, Rds};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use envoy_types::util::pack_any;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_xds::{AdsServer, ResourceType, Snapshot, SnapshotCache};

fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WEFT_ENVOY") {
        return path.into();
    }
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.tools/venv/bin/envoy"
    ));
    assert!(
        path.exists(),
        "no Envoy at {}: run scripts/setup (or set WEFT_ENVOY)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP/1.1 server that answers every request with `body`.
async fn backend(body: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = socket.read(&mut buffer).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buffer[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

fn socket(port: u32, ip: &str) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn ads_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_source()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

fn endpoints(cluster: &str, port: u16) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket(port.into(), "127.0.0.1")),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn listener(port: u16, ip: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: "ingress".into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_source()),
            route_config_name: "routes".into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(HttpFilterConfig::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: "ingress".into(),
        address: Some(socket(port.into(), ip)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn routes_to(cluster: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: "routes".into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Envoy with a bootstrap pointing at the ADS server; killed on drop.
struct Envoy {
    child: Child,
    admin: u16,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// A counter or gauge from Envoy's admin port.
    async fn stat(&self, name: &str) -> Option<u64> {
        let url = format!("http://127.0.0.1:{}/stats?filter=^{name}$", self.admin);
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .and_then(|value| value.trim().parse().ok())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_envoy(node: &str, ads_port: u16, delta: bool) -> Envoy {
    let dir = tempfile::tempdir().unwrap();
    let api_type = if delta { "DELTA_GRPC" } else { "GRPC" };
    let admin = free_port();
    let bootstrap = format!(
        r#"
node: {{id: {node}, cluster: test}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ads_port}}}}}}}}}]}}]
"#
    );
    let path = dir.path().join("bootstrap.yaml");
    std::fs::write(&path, bootstrap).unwrap();
    let child = Command::new(envoy_binary())
        .arg("-c")
        .arg(&path)
        .args(["--use-dynamic-base-id", "--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("envoy starts");
    Envoy {
        child,
        admin,
        _dir: dir,
    }
}

async fn get(port: u16) -> Option<String> {
    // reqwest is built without a TLS provider of its own (weft picks ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let response = client
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// What a proxy asks its edge for over ADS (secrets come from its agent;
/// the add-on services' types are theirs).
const ENVOY_TYPES: [ResourceType; 4] = [
    ResourceType::Cluster,
    ResourceType::Endpoint,
    ResourceType::Listener,
    ResourceType::Route,
];

async fn until(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An ADS server in a runtime of its own, so stopping it drops every
/// stream and socket at once, as when an edge process dies.
struct AdsProcess {
    port: u16,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdsProcess {
    fn start(cache: Arc<SnapshotCache>, port: u16) -> AdsProcess {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("the ADS port is free");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tonic::transport::Server::builder()
                    .add_service(AdsServer::new(cache).into_service())
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await
            });
            let _ = stopped.recv();
            runtime.shutdown_background();
        });
        AdsProcess {
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for AdsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Counts requests that fail while it runs.
struct Load {
    running: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(port: u16) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let task = {
            let (running, ok, failed) = (running.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    match get(port).await {
                        Some(_) => ok.fetch_add(1, Ordering::Relaxed),
                        None => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        };
        Load {
            running,
            ok,
            failed,
            task,
        }
    }

    /// Stops and returns (succeeded, failed).
    async fn stop(self) -> (usize, usize) {
        self.running.store(false, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

async fn traffic_follows_snapshots(delta: bool) {
    let cache = Arc::new(SnapshotCache::new());
    let ads = AdsProcess::start(cache.clone(), 0);
    let ads_port = ads.port;
    let (a, b) = (backend("a").await, backend("b").await);
    let port = free_port();
    let node = "proxy-1";
    cache.set(
        node,
        Snapshot::new(
            &[eds_cluster("a")],
            &[endpoints("a", a)],
            &[listener(port, "127.0.0.1")],
            &[routes_to("a")],
        )
        .unwrap(),
    );
    let envoy = start_envoy(node, ads_port, delta);
    until(
        "traffic reaches backend a",
        Duration::from_secs(30),
        async || get(port).await.as_deref() == Some("a"),
    )
    .await;
    let status = cache.status(node).unwrap();
    assert_eq!(status.streams, 1);
    assert!(status.last_nack.is_none(), "{status:?}");

    // Switch to b and remove a, under continuous traffic: the route must
    // never name a cluster that is gone.
    let load = Load::start(port);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    cache.set(
        node,
        Snapshot::new(
            &[eds_cluster("b")],
            &[endpoints("b", b)],
            &[listener(port, "127.0.0.1")],
            &[routes_to("b")],
        )
        .unwrap(),
    );
    until(
        "traffic reaches backend b",
        Duration::from_secs(30),
        async || get(port).await.as_deref() == Some("b"),
    )
    .await;
    let switched = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed) = load.stop().await;
    println!(
        "{}: switch applied in {switched:?}; {ok} requests succeeded, {failed} failed during the switch",
        if delta { "delta" } else { "sotw" }
    );
    assert_eq!(failed, 0, "requests failed while a cluster was replaced");
    assert!(ok > 10, "too little traffic to judge: {ok}");
    until(
        "every type is acknowledged",
        Duration::from_secs(10),
        async || {
            let status = cache.status(node).unwrap();
            ENVOY_TYPES.iter().all(|t| status.acked.contains_key(t))
        },
    )
    .await;

    // A changed cluster is rebuilt and warms until its endpoints arrive
    // again, though they did not change: the server must resend them.
    let mut slower = eds_cluster("b");
    slower.connect_timeout = Some(PbDuration {
        seconds: 2,
        nanos: 0,
    });
    cache.set(
        node,
        Snapshot::new(
            &[slower],
            &[endpoints("b", b)],
            &[listener(port, "127.0.0.1")],
            &[routes_to("b")],
        )
        .unwrap(),
    );
    // Envoy's own fallback ends the warming after 15 s, and the server's
    // after 5 s (it sends what waits for a confirmation anyway); well
    // before either means the endpoints went out in time.
    let started = Instant::now();
    until(
        "the changed cluster is warm",
        Duration::from_secs(3),
        async || {
            envoy.stat("cluster_manager.cluster_modified").await == Some(1)
                && envoy.stat("cluster_manager.warming_clusters").await == Some(0)
        },
    )
    .await;
    println!(
        "{}: a changed cluster was warm again after {:?}",
        if delta { "delta" } else { "sotw" },
        started.elapsed()
    );
    assert_eq!(get(port).await.as_deref(), Some("b"));

    // A listener Envoy refuses: recorded as a NACK; the last good config serves.
    cache.set(
        node,
        Snapshot::new(
            &[eds_cluster("b")],
            &[endpoints("b", b)],
            &[listener(port, "not-an-ip")],
            &[routes_to("b")],
        )
        .unwrap(),
    );
    until(
        "the refusal is recorded",
        Duration::from_secs(30),
        async || cache.status(node).unwrap().last_nack.is_some(),
    )
    .await;
    let nack = cache.status(node).unwrap().last_nack.unwrap();
    assert_eq!(nack.resource_type, ResourceType::Listener);
    assert!(nack.message.contains("not-an-ip"), "{nack:?}");
    assert_eq!(
        get(port).await.as_deref(),
        Some("b"),
        "the last good listener keeps serving"
    );

    let mut registry = prometheus_client::registry::Registry::with_prefix("weft");
    cache.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for expected in [
        "weft_xds_connected_proxies 1",
        "weft_xds_nacks_total{type=\"lds\"} 1",
        "weft_xds_ack_latency_seconds_count{type=\"rds\"}",
        "weft_xds_resources_sent_total{type=\"cds\"}",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }

    // What is kept for a proxy goes once it is gone, never while connected.
    assert!(!cache.remove(node), "removed while the proxy is connected");
    drop(envoy);
    until("the stream closes", Duration::from_secs(10), async || {
        cache.status(node).unwrap().streams == 0
    })
    .await;
    assert!(cache.remove(node));
    assert!(cache.status(node).is_none());
}

/// The edge dies and comes back from its saved snapshot: the proxy keeps
/// serving meanwhile, reconnects by itself, and (delta) is sent nothing it
/// already has.
async fn proxies_outlive_their_edge(delta: bool) {
    let snapshot = |backend: u16, port: u16| {
        Snapshot::new(
            &[eds_cluster("a")],
            &[endpoints("a", backend)],
            &[listener(port, "127.0.0.1")],
            &[routes_to("a")],
        )
        .unwrap()
    };
    let a = backend("a").await;
    let port = free_port();
    let node = "proxy-2";
    let first = Arc::new(SnapshotCache::new());
    first.set(node, snapshot(a, port));
    let mut ads = AdsProcess::start(first.clone(), 0);
    let ads_port = ads.port;
    let _envoy = start_envoy(node, ads_port, delta);
    until("traffic flows", Duration::from_secs(30), async || {
        get(port).await.as_deref() == Some("a")
    })
    .await;

    let load = Load::start(port);
    ads.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = Arc::new(SnapshotCache::new());
    restarted.set(node, snapshot(a, port));
    let _ads = AdsProcess::start(restarted.clone(), ads_port);
    until(
        "the proxy reconnects and confirms every type",
        Duration::from_secs(30),
        async || {
            let status = restarted.status(node).unwrap_or_default();
            status.streams == 1 && ENVOY_TYPES.iter().all(|t| status.acked.contains_key(t))
        },
    )
    .await;
    let (ok, failed) = load.stop().await;
    let status = restarted.status(node).unwrap();
    println!(
        "{}: edge down ~1 s; {ok} requests succeeded, {failed} failed; after reconnecting: {} responses carrying {} resources",
        if delta { "delta" } else { "sotw" },
        status.responses,
        status.resources_sent
    );
    assert_eq!(
        failed, 0,
        "the proxy must keep serving while its edge is down"
    );
    if delta {
        assert_eq!(
            status.resources_sent, 0,
            "a reconnecting delta proxy already has everything"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_proxy_outlives_its_edge() {
    proxies_outlive_their_edge(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_proxy_outlives_its_edge() {
    proxies_outlive_their_edge(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_of_the_world_with_real_envoy() {
    traffic_follows_snapshots(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_with_real_envoy() {
    traffic_follows_snapshots(true).await;
}

#[test]
fn inconsistent_snapshots_are_refused() {
    let error = Snapshot::new(&[], &[], &[listener(1, "127.0.0.1")], &[]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "listener ingress names route configuration routes, which is not in the snapshot"
    );
    let error = Snapshot::new(&[], &[], &[], &[routes_to("a")]).unwrap_err();
    assert!(error.to_string().contains("names cluster a"), "{error}");
    let error = Snapshot::new(&[eds_cluster("a")], &[], &[], &[]).unwrap_err();
    assert!(
        error.to_string().contains("EDS cluster a has no endpoints"),
        "{error}"
    );
    let one = Snapshot::new(&[eds_cluster("a")], &[endpoints("a", 1)], &[], &[]).unwrap();
    let same = Snapshot::new(&[eds_cluster("a")], &[endpoints("a", 1)], &[], &[]).unwrap();
    let other = Snapshot::new(&[eds_cluster("a")], &[endpoints("a", 2)], &[], &[]).unwrap();
    assert_eq!(
        one.version(ResourceType::Endpoint),
        same.version(ResourceType::Endpoint)
    );
    assert_ne!(
        one.version(ResourceType::Endpoint),
        other.version(ResourceType::Endpoint)
    );
    assert_eq!(
        one.version(ResourceType::Cluster),
        other.version(ResourceType::Cluster)
    );
}
