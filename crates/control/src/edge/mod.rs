//! `weft edge`: the local control plane of one cluster at run time.
//!
//! Data flow: the sync task long-polls the server for this cluster's
//! [`EdgeConfig`] and writes each new one to disk before using it; on start
//! the edge serves the copy on disk until the server answers (static
//! stability). Config changes and registry changes (proxies coming and
//! going) wake the build task, which translates and publishes a snapshot
//! per proxy in the [`SnapshotCache`]; the ADS server streams them out. The
//! status task reports proxies, versions, NACKs and translation errors back
//! to the server every few seconds.
//!
//! The global directory travels the same way in both directions: the
//! publish task sends this cluster's entry (its site, gateways and services
//! with healthy counts) when it changes, and the follow task long-polls
//! the other clusters' changes, keeps them in `DATA/directory.json`, and
//! wakes the build. An edge that restarts without the server routes to
//! other clusters from that file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use weft_api::edge::{
    ConfigError, DirectoryIngress, DirectoryReport, EdgeConfig, EdgeStatus, NackReport,
    ProxyReport, Trust,
};
use weft_identity::Bundle;
use weft_xds::{AdsServer, SnapshotCache};

mod build;
mod explain;
mod kept;
mod proxy_config;

use crate::ca::EdgeCa;
use crate::directory::{Directory, own_entry};
use crate::mesh_metrics::MeshMetrics;
use crate::registry::Registry;
use crate::server_link::{LinkError, ServerLink};
use build::build_loop;
use weft_api::traffic_stats::{ROLLUP_INTERVAL_SECONDS, TrafficRollup};

/// How long one long poll of the server may wait for a change.
const POLL_WAIT: Duration = Duration::from_secs(25);
/// How often the edge reports its status.
const STATUS_EVERY: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serving {what}: {source}")]
    Serve {
        what: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How to run an edge.
pub struct EdgeOptions {
    pub cluster: String,
    /// The server's API base URL.
    pub server: String,
    /// The edge credential's secret.
    pub credential: String,
    /// Where the last good configuration is kept.
    pub data_dir: PathBuf,
    /// Where proxies connect (ADS).
    pub xds: TcpListener,
    /// Where `/metrics`, `/healthz` and `/status` are served.
    pub admin: TcpListener,
    /// How long a workload stays registered after its proxy disconnects.
    pub grace: Duration,
    /// How long workload certificates live (renewed at half-life).
    pub svid_lifetime: Duration,
    /// The roots from the edge's credential file: whom to trust before
    /// the server has sent any.
    pub trust: Bundle,
}

#[derive(Clone)]
struct EdgeMetrics {
    server_connected: Gauge,
    config_updates: Counter,
    builds: Counter,
    build_seconds: Histogram,
    services_encoded: Counter,
    proxies_updated: Counter,
    workloads: Gauge,
    proxy_config_bytes: Gauge,
    directory_updates: Counter,
    directory_full_syncs: Counter,
    directory_clusters: Gauge,
    directory_services: Gauge,
    directory_publications: Counter,
}

impl EdgeMetrics {
    fn new() -> EdgeMetrics {
        EdgeMetrics {
            server_connected: Gauge::default(),
            config_updates: Counter::default(),
            builds: Counter::default(),
            build_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            services_encoded: Counter::default(),
            proxies_updated: Counter::default(),
            workloads: Gauge::default(),
            proxy_config_bytes: Gauge::default(),
            directory_updates: Counter::default(),
            directory_full_syncs: Counter::default(),
            directory_clusters: Gauge::default(),
            directory_services: Gauge::default(),
            directory_publications: Counter::default(),
        }
    }

    fn register(&self, registry: &mut MetricsRegistry) {
        registry.register(
            "edge_server_connected",
            "1 while the last request to the server succeeded",
            self.server_connected.clone(),
        );
        registry.register(
            "edge_config_updates",
            "New configurations received from the server",
            self.config_updates.clone(),
        );
        registry.register(
            "edge_snapshot_builds",
            "Builds of the cluster's proxy snapshots (each encodes only what changed)",
            self.builds.clone(),
        );
        registry.register(
            "edge_snapshot_build_seconds",
            "Time to translate and publish every proxy's snapshot",
            self.build_seconds.clone(),
        );
        registry.register(
            "edge_services_encoded",
            "Services whose xDS resources a build encoded (new or changed); unchanged ones are reused",
            self.services_encoded.clone(),
        );
        registry.register(
            "edge_proxies_updated",
            "Proxy snapshots a build replaced; proxies whose resources did not change keep theirs",
            self.proxies_updated.clone(),
        );
        registry.register(
            "edge_registered_workloads",
            "Workloads registered by their proxies",
            self.workloads.clone(),
        );
        registry.register(
            "edge_largest_proxy_config_bytes",
            "Encoded size of the largest proxy snapshot",
            self.proxy_config_bytes.clone(),
        );
        registry.register(
            "edge_directory_updates",
            "Directory updates from the server that changed what this edge knows",
            self.directory_updates.clone(),
        );
        registry.register(
            "edge_directory_full_syncs",
            "Whole directories received (first sync, or a revision the server did not know)",
            self.directory_full_syncs.clone(),
        );
        registry.register(
            "edge_directory_clusters",
            "Other clusters in the directory",
            self.directory_clusters.clone(),
        );
        registry.register(
            "edge_directory_services",
            "Services other clusters run, per the directory",
            self.directory_services.clone(),
        );
        registry.register(
            "edge_directory_publications",
            "This cluster's directory entry sent to the server",
            self.directory_publications.clone(),
        );
    }
}

/// Readiness: the edge serves a configuration, from the server or the copy
/// it kept on disk. (`/healthz` is liveness.)
async fn ready(State(edge): State<Arc<Edge>>) -> (axum::http::StatusCode, &'static str) {
    if edge.lock().published.is_empty() {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no configuration yet (none from the server, none kept on disk)\n",
        )
    } else {
        (axum::http::StatusCode::OK, "ready\n")
    }
}

/// What the edge serves now.
#[derive(Default)]
struct Current {
    from_disk: bool,
    /// The configuration version whose translation is published.
    published: String,
    errors: Vec<ConfigError>,
}

struct Edge {
    cluster: String,
    data_dir: PathBuf,
    cache: Arc<SnapshotCache>,
    registry: Registry,
    ca: Arc<EdgeCa>,
    current: Mutex<Current>,
    config_tx: watch::Sender<Option<Arc<EdgeConfig>>>,
    /// Other clusters, and whether it is still the copy read from disk.
    directory_tx: watch::Sender<(Arc<Directory>, bool)>,
    /// The hostnames this cluster's ingress gateways serve, as the last
    /// build found them: published in the directory.
    ingress_tx: watch::Sender<Vec<DirectoryIngress>>,
    metrics: EdgeMetrics,
    prometheus: MetricsRegistry,
    /// Requests between services, from the proxies' counts.
    mesh: Arc<MeshMetrics>,
    /// Where `/metrics` is served, as reported to the server.
    metrics_address: Option<String>,
}

impl Edge {
    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config_file(&self) -> PathBuf {
        self.data_dir.join("config.json")
    }

    fn directory_file(&self) -> PathBuf {
        self.data_dir.join("directory.json")
    }

    /// Starts routing with `directory`.
    fn use_directory(&self, directory: Directory, from_disk: bool) {
        self.metrics
            .directory_clusters
            .set(directory.clusters.len() as i64);
        self.metrics
            .directory_services
            .set(directory.services() as i64);
        self.directory_tx
            .send_replace((Arc::new(directory), from_disk));
    }

    /// Starts serving `config`, remembered as coming from disk or not.
    fn use_config(&self, config: EdgeConfig, from_disk: bool) {
        let config = Arc::new(config);
        self.registry
            .set_credentials(config.workload_credentials.clone());
        self.ca.set_trust(config.trust.clone());
        self.lock().from_disk = from_disk;
        self.config_tx.send_replace(Some(config));
    }

    fn status(&self) -> EdgeStatus {
        let current = self.lock();
        let proxies = self
            .registry
            .connections()
            .into_iter()
            .map(|(w, connected)| {
                let status = self.cache.status(&w.node).unwrap_or_default();
                let snapshot = self.cache.subscribe(&w.node).borrow().clone();
                // A refusal matters while the refused version is still the
                // one the edge wants the proxy to run.
                let nack = status.last_nack.filter(|n| {
                    snapshot
                        .as_ref()
                        .is_some_and(|s| s.version(n.resource_type) == n.version)
                });
                let in_sync = snapshot.as_ref().is_some_and(|s| s.accepted(&status.acked));
                ProxyReport {
                    in_sync,
                    node: w.node.clone(),
                    service: w.service.clone(),
                    namespace: w.namespace.clone(),
                    labels: w.labels.clone(),
                    role: match w.role {
                        weft_agent::workload::Role::Sidecar => String::new(),
                        role => role.as_str().to_string(),
                    },
                    address: format!("{}:{}", w.address, w.port),
                    connected,
                    acked: status
                        .acked
                        .iter()
                        .map(|(t, v)| (t.short().to_string(), v.clone()))
                        .collect(),
                    certificate: self.ca.certificate_of(&w.node),
                    nack: nack.map(|n| NackReport {
                        resource_type: n.resource_type.short().to_string(),
                        version: n.version,
                        message: n.message,
                    }),
                }
            })
            .collect();
        EdgeStatus {
            config_version: current.published.clone(),
            from_disk: current.from_disk,
            proxies,
            errors: current.errors.clone(),
            ca: self.ca.report(),
            directory: {
                let (directory, from_disk) = &*self.directory_tx.borrow();
                Some(DirectoryReport {
                    revision: directory.revision,
                    clusters: directory.clusters.len(),
                    services: directory.services(),
                    reachable: directory.reachable(),
                    from_disk: *from_disk,
                })
            },
            metrics_address: self.metrics_address.clone(),
        }
    }
}

/// Writes `bytes` to `path` readable by the owner only, replacing it
/// atomically so a crash never leaves half a file.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Runs the edge until `shutdown` completes.
pub async fn run(
    options: EdgeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), EdgeError> {
    let data_dir = options.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .and_then(|()| std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|source| EdgeError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
    let cache = Arc::new(SnapshotCache::new());
    let registry = Registry::new(&options.cluster, options.grace);
    let metrics = EdgeMetrics::new();
    let ca = Arc::new(EdgeCa::load(
        &options.cluster,
        data_dir.join("ca"),
        options.svid_lifetime,
        registry.clone(),
    ));
    let mesh = Arc::new(MeshMetrics::new());
    let mut prometheus = MetricsRegistry::with_prefix("weft");
    metrics.register(&mut prometheus);
    mesh.register(&mut prometheus);
    ca.metrics.register(&mut prometheus);
    cache.metrics().register(&mut prometheus);
    let edge = Arc::new(Edge {
        cluster: options.cluster.clone(),
        data_dir,
        cache: cache.clone(),
        registry: registry.clone(),
        ca: ca.clone(),
        current: Mutex::new(Current::default()),
        config_tx: watch::Sender::new(None),
        directory_tx: watch::Sender::new((Arc::new(Directory::default()), false)),
        ingress_tx: watch::Sender::new(Vec::new()),
        metrics,
        prometheus,
        mesh: mesh.clone(),
        metrics_address: options.admin.local_addr().ok().map(|a| a.to_string()),
    });

    // The last good configuration, until the server answers.
    match kept::read::<EdgeConfig>(&edge.config_file()) {
        Ok(Some(config)) if config.cluster == options.cluster => {
            tracing::info!(version = %config.version, file = %edge.config_file().display(), "serving the last configuration kept on disk until the server answers");
            edge.use_config(config, true);
        }
        Ok(Some(config)) => {
            tracing::warn!(file = %edge.config_file().display(), cluster = %config.cluster, "ignoring a kept configuration for another cluster")
        }
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(file = %edge.config_file().display(), %error, "ignoring the kept configuration")
        }
    }

    // The last directory too: routes to other clusters survive a restart
    // without the server.
    match kept::read::<Directory>(&edge.directory_file()) {
        Ok(Some(directory)) => {
            tracing::info!(
                revision = directory.revision,
                clusters = directory.clusters.len(),
                "routing to other clusters with the directory kept on disk until the server answers"
            );
            edge.use_directory(directory, true);
        }
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(file = %edge.directory_file().display(), %error, "ignoring the kept directory")
        }
    }

    if ca.trust().is_none() {
        ca.set_trust(Some(Trust {
            trust_domain: options.trust.trust_domain().to_string(),
            bundle: options.trust.to_pem(),
            signer: String::new(),
        }));
    }
    let link = ServerLink::new(&ca, &options.server, &options.credential, &options.cluster)
        .map_err(|e| EdgeError::Serve {
            what: "the link to the server",
            source: Box::new(e),
        })?;

    let (stop_tx, stop_rx) = watch::channel(false);
    // A restarted edge (it kept a configuration) first lets the proxies
    // that were connected come back: a proxy that reconnects early would
    // otherwise get a config without the instances of the others.
    let hold = if edge.lock().from_disk {
        options.grace
    } else {
        Duration::ZERO
    };
    tokio::spawn(build_loop(edge.clone(), hold, stop_rx.clone()));
    tokio::spawn(follow_loop(edge.clone(), link.clone(), stop_rx.clone()));
    tokio::spawn(publish_loop(edge.clone(), link.clone(), stop_rx.clone()));
    tokio::spawn(report_loop(edge.clone(), link.clone(), stop_rx.clone()));
    tokio::spawn(rollup_loop(edge.clone(), link.clone(), stop_rx.clone()));
    tokio::spawn(sync_loop(edge.clone(), link.clone(), stop_rx.clone()));
    {
        let registry = registry.clone();
        let every = (options.grace / 4).max(Duration::from_millis(100));
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => registry.sweep(),
                    _ = stop.changed() => return,
                }
            }
        });
    }

    let admin = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .route(
            "/status",
            get(|State(edge): State<Arc<Edge>>| async move { axum::Json(edge.status()) }),
        )
        .route("/proxies/{node}/config", get(proxy_config::config))
        .route("/explain", axum::routing::post(explain::answer))
        .with_state(edge.clone());
    let mut admin_stop = stop_rx.clone();
    let admin_server = axum::serve(options.admin, admin).with_graceful_shutdown(async move {
        let _ = admin_stop.changed().await;
    });
    let admin_task = tokio::spawn(async move { admin_server.await });

    tokio::spawn(crate::ca::renewal_loop(ca.clone(), link, stop_rx.clone()));

    // Proxies and sidecars talk to one port: ADS for Envoy, and
    // `POST /v1/svid` for workload certificates.
    let ads = AdsServer::new(cache)
        .with_admission(Arc::new(registry.clone()))
        .with_stopping(stop_rx.clone());
    let certificates = Router::new()
        .route("/v1/svid", axum::routing::post(crate::ca::issue_svid))
        .with_state(ca.clone());
    let routes = tonic::service::Routes::from(certificates)
        .add_service(ads.into_service())
        .add_service(crate::mesh_metrics::receiver::service(
            mesh,
            registry.clone(),
            &options.cluster,
        ));
    let mut xds_stop = stop_rx.clone();
    let tls = weft_identity::tls::server_config(ca.serving.clone(), ca.trust_store.clone())
        .map_err(|e| EdgeError::Serve {
            what: "xDS",
            source: Box::new(e),
        })?;
    let failures = ca.metrics.handshake_failures.clone();
    let incoming = weft_identity::transport::incoming(
        options.xds,
        "xDS",
        tls,
        ca.trust_store.clone(),
        move || {
            failures.inc();
        },
    );
    let xds = tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = xds_stop.changed().await;
        });
    let xds_task = tokio::spawn(xds);

    shutdown.await;
    tracing::info!(cluster = %edge.cluster, "edge stopping");
    let _ = stop_tx.send(true);
    xds_task
        .await
        .map_err(|e| EdgeError::Serve {
            what: "xDS",
            source: Box::new(e),
        })?
        .map_err(|e| EdgeError::Serve {
            what: "xDS",
            source: Box::new(e),
        })?;
    admin_task
        .await
        .map_err(|e| EdgeError::Serve {
            what: "admin",
            source: Box::new(e),
        })?
        .map_err(|e| EdgeError::Serve {
            what: "admin",
            source: Box::new(e),
        })?;
    Ok(())
}

async fn render_metrics(State(edge): State<Arc<Edge>>) -> impl IntoResponse {
    let mut text = String::new();
    if let Err(error) = encode(&mut text, &edge.prometheus) {
        tracing::error!(%error, "cannot encode metrics");
    }
    // The request series are rendered by hand (they arrive bucketed);
    // they go before the exposition's end marker.
    let end = text.rfind("# EOF").unwrap_or(text.len());
    let mut mesh = String::new();
    edge.mesh.render(&mut mesh);
    text.insert_str(end, &mesh);
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// Long-polls the server for this cluster's configuration and reports
/// status; keeps going (with the last configuration) while the server is
/// unreachable.
async fn sync_loop(edge: Arc<Edge>, link: ServerLink, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(500);
    let mut reachable = None;
    loop {
        // The server takes the edge's requests only with its certificate,
        // which its first CA brings.
        if !edge.ca.serving.is_set() {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                _ = stop.changed() => return,
            }
        }
        let version = edge
            .config_tx
            .borrow()
            .as_ref()
            .map(|c| c.version.clone())
            .unwrap_or_default();
        // What came from disk is confirmed at once, not at the end of a
        // long poll.
        let wait = if edge.lock().from_disk {
            Duration::ZERO
        } else {
            POLL_WAIT
        };
        let outcome = tokio::select! {
            r = link.config(&version, wait) => r,
            _ = stop.changed() => return,
        };
        let failure = match outcome {
            Ok(None) => {
                // The server confirmed the configuration read from disk.
                edge.lock().from_disk = false;
                None
            }
            Ok(Some(config)) => {
                match kept::write(&edge.config_file(), &config) {
                    Ok(()) => {}
                    Err(error) => {
                        tracing::error!(file = %edge.config_file().display(), %error, "cannot keep the configuration on disk; a restart without the server would lose it")
                    }
                }
                tracing::info!(version = %config.version, resources = config.resources.len(), "configuration received");
                edge.metrics.config_updates.inc();
                edge.use_config(config, false);
                None
            }
            Err(error @ LinkError::Unreachable(_)) => {
                Some(format!("{error}; serving the last configuration"))
            }
            Err(error) => Some(error.to_string()),
        };
        edge.metrics
            .server_connected
            .set(i64::from(failure.is_none()));
        match failure {
            None => {
                if reachable != Some(true) {
                    tracing::info!(server = link.server(), "connected to the server");
                }
                reachable = Some(true);
                backoff = Duration::from_millis(500);
            }
            Some(message) => {
                if reachable != Some(false) {
                    tracing::warn!(server = link.server(), "{message}");
                } else {
                    tracing::debug!(server = link.server(), "{message}");
                }
                reachable = Some(false);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {},
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Follows the other clusters' directory entries: long polls from the
/// revision the edge has (kept on disk, so a restart asks only for what it
/// missed), writes each change to disk before using it, and keeps the
/// last directory while the server is unreachable.
async fn follow_loop(edge: Arc<Edge>, link: ServerLink, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        if !edge.ca.serving.is_set() {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                _ = stop.changed() => return,
            }
        }
        let (current, from_disk) = edge.directory_tx.borrow().clone();
        let update = tokio::select! {
            r = link.follow(current.revision, if from_disk { Duration::ZERO } else { POLL_WAIT }) => r,
            _ = stop.changed() => return,
        };
        let update = match update {
            Ok(update) => update,
            Err(error) => {
                tracing::debug!(%error, "directory: routing with the last one");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {},
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(500);
        if update.full {
            edge.metrics.directory_full_syncs.inc();
        }
        let changes = update.changes.len();
        let mut directory = (*current).clone();
        let changed = directory.apply(update);
        if directory.revision == current.revision && !changed {
            if from_disk {
                // The server confirmed the directory read from disk.
                edge.use_directory(directory, false);
            }
            continue;
        }
        if let Err(error) = kept::write(&edge.directory_file(), &directory) {
            tracing::error!(file = %edge.directory_file().display(), %error, "cannot keep the directory on disk; a restart without the server would lose routes to other clusters");
        }
        if changed {
            edge.metrics.directory_updates.inc();
            tracing::info!(
                revision = directory.revision,
                changes,
                clusters = directory.clusters.len(),
                "directory updated"
            );
        }
        edge.use_directory(directory, false);
    }
}

/// How often the entry is published even when unchanged: the server
/// writes nothing then, and a server that lost it gets it back.
const REPUBLISH_EVERY: Duration = Duration::from_secs(30);

/// Publishes this cluster's directory entry when it changes (proxies
/// coming and going, a new locality) and now and then regardless.
async fn publish_loop(edge: Arc<Edge>, link: ServerLink, mut stop: watch::Receiver<bool>) {
    let mut registry_rx = edge.registry.subscribe();
    let mut config_rx = edge.config_tx.subscribe();
    let mut ingress_rx = edge.ingress_tx.subscribe();
    let mut published = None;
    let mut last_sent = Instant::now();
    let mut failing = false;
    loop {
        let locality = config_rx
            .borrow_and_update()
            .as_ref()
            .map(|c| c.locality.clone());
        registry_rx.borrow_and_update();
        let ingress = ingress_rx.borrow_and_update().clone();
        // Until a configuration names the locality, there is nothing true
        // to publish.
        if let Some(locality) = locality.filter(|_| edge.ca.serving.is_set()) {
            let entry = own_entry(&locality, &edge.registry.workloads(), ingress);
            if published.as_ref() != Some(&entry) || last_sent.elapsed() >= REPUBLISH_EVERY {
                match link.publish(&entry).await {
                    Ok(()) => {
                        edge.metrics.directory_publications.inc();
                        tracing::debug!(
                            services = entry.services.len(),
                            "directory entry published"
                        );
                        published = Some(entry);
                        last_sent = Instant::now();
                        failing = false;
                    }
                    Err(error) => {
                        // Once per outage: the server may simply be down.
                        if !failing {
                            tracing::warn!(
                                %error,
                                "directory entry not published; other clusters keep the last one; retrying"
                            );
                        }
                        failing = true;
                        published = None;
                    }
                }
            }
        }
        tokio::select! {
            r = registry_rx.changed() => if r.is_err() { return },
            r = config_rx.changed() => if r.is_err() { return },
            r = ingress_rx.changed() => if r.is_err() { return },
            () = tokio::time::sleep(if published.is_some() { REPUBLISH_EVERY } else { Duration::from_secs(1) }) => {},
            _ = stop.changed() => return,
        }
        // Let a burst of registrations settle into one publication.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends the server each service pair's traffic every
/// [`ROLLUP_INTERVAL_SECONDS`]; what it does not take goes with the next.
async fn rollup_loop(edge: Arc<Edge>, link: ServerLink, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(u64::from(ROLLUP_INTERVAL_SECONDS));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            _ = stop.changed() => return,
        }
        let pairs = edge.mesh.take_rollup();
        if pairs.is_empty() || !edge.ca.serving.is_set() {
            edge.mesh.restore(pairs);
            continue;
        }
        let rollup = TrafficRollup {
            seconds: ROLLUP_INTERVAL_SECONDS,
            pairs,
        };
        if let Err(error) = link.send_traffic(&rollup).await {
            tracing::debug!(%error, "traffic rollup not taken; it goes with the next");
            edge.mesh.restore(rollup.pairs);
        }
    }
}

async fn report_loop(edge: Arc<Edge>, link: ServerLink, mut stop: watch::Receiver<bool>) {
    let mut last: Option<EdgeStatus> = None;
    let mut last_sent = Instant::now();
    loop {
        let status = edge.status();
        // Send on change at once, and at least every STATUS_EVERY as a
        // heartbeat.
        let due = last.as_ref() != Some(&status) || last_sent.elapsed() >= STATUS_EVERY;
        if due && edge.ca.serving.is_set() {
            match link.report(&status).await {
                Ok(()) => {
                    last = Some(status);
                    last_sent = Instant::now();
                }
                Err(error) => tracing::debug!(%error, "status report failed"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {},
            _ = stop.changed() => return,
        }
    }
}

/// An admin-port error: the status and a JSON message (the server passes
/// the message on).
fn problem(status: axum::http::StatusCode, message: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    (status, axum::Json(serde_json::json!({"message": message}))).into_response()
}
