//! Multi-cluster end to end: one `weft server`, three clusters in two
//! regions, each with its own `weft edge`, `weft eastwest` gateway and
//! Envoy sidecars on its own loopback range (east-a 127.0.1.x, east-b
//! 127.0.2.x, west 127.0.3.x). Every assertion is about real requests.

#[path = "../support/mod.rs"]
mod support;

mod chaos;
mod failover;
mod gateways;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::browser::Browser;
use support::load::metric_sum;
use support::mesh::{
    DataPlane, Edge, answers, call, credential, envoy_stat, on_both_data_planes, sidecar,
    with_echo_app,
};
use support::{
    Proc, Server, WEFT, envoy, free_port, metric, show_log_tails, until, weft_up, write,
};

/// Each test here starts three clusters' worth of Envoys: one at a time on
/// two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MESH: &str = "\
apiVersion: weft.dev/v1alpha1
kind: Cluster
metadata: {name: east-a}
spec: {region: east, zone: a}
---
apiVersion: weft.dev/v1alpha1
kind: Cluster
metadata: {name: east-b}
spec: {region: east, zone: b}
---
apiVersion: weft.dev/v1alpha1
kind: Cluster
metadata: {name: west}
spec: {region: west, zone: a}
---
apiVersion: weft.dev/v1alpha1
kind: Tenant
metadata: {name: retail}
spec: {}
---
apiVersion: weft.dev/v1alpha1
kind: Workspace
metadata: {name: shop, tenant: retail}
spec: {namespaceSelector: ['*/shop']}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficSetting
metadata: {name: resilient, tenant: retail, workspace: shop}
spec:
  retries: {attempts: 3, perTryTimeout: 2s, retryOn: [connect-failure, reset, 5xx]}
  outlierDetection: {consecutive5xx: 2, interval: 1s, baseEjectionTime: 5s, maxEjectionPercent: 100}
---
apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {name: only-the-client, tenant: retail, workspace: shop}
spec:
  authorization:
    allow: [{from: [{serviceAccount: {name: client, namespace: shop}}]}]
";

/// One cluster: its edge, gateway and proxies on 127.0.NET.x.
struct Cluster {
    name: &'static str,
    net: u8,
    next_host: u8,
    edge: Edge,
    gateway_port: u16,
    gateway: Option<Proc>,
    proxies: BTreeMap<String, Proc>,
    /// Each proxy's inbound address, by node, so a restart keeps it.
    addresses: BTreeMap<String, String>,
    /// Each proxy's Envoy admin port, by node.
    envoy_admin: BTreeMap<String, u16>,
}

struct World {
    dir: tempfile::TempDir,
    server: Option<Server>,
    edge_listen: String,
    admin: String,
    clusters: Vec<Cluster>,
    http: reqwest::Client,
    /// The proxy sidecars run.
    data_plane: DataPlane,
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            show_log_tails(self.dir.path());
        }
    }
}

impl World {
    async fn start(data_plane: DataPlane) -> World {
        let dir = tempfile::tempdir().unwrap();
        let edge_listen = format!("127.0.0.1:{}", free_port());
        let server = Server::start_with(
            &dir.path().join("server"),
            None,
            &["--edge-listen", &edge_listen],
        );
        let admin = server.admin_token();
        let mesh = write(dir.path(), "mesh.yaml", MESH);
        let applied = server.weft(&admin, &["apply", "-f", &mesh]);
        assert_eq!(applied.code, 0, "{applied:?}");
        let clusters = [("east-a", 1), ("east-b", 2), ("west", 3)]
            .into_iter()
            .map(|(name, net)| Cluster {
                name,
                net,
                next_host: 10,
                edge: Edge::new(name, dir.path(), &[]),
                gateway_port: free_port(),
                gateway: None,
                proxies: BTreeMap::new(),
                addresses: BTreeMap::new(),
                envoy_admin: BTreeMap::new(),
            })
            .collect();
        let mut world = World {
            dir,
            server: Some(server),
            edge_listen,
            admin,
            clusters,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            data_plane,
        };
        for c in 0..3 {
            world.start_edge(c).await;
            world.start_gateway(c);
        }
        world
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("the server runs")
    }

    /// A credential file for cluster `c`: `args` after `--cluster NAME`.
    fn credential(&self, c: usize, file: &str, args: &[&str]) -> PathBuf {
        let name = self.clusters[c].name;
        let file = format!("{name}-{file}");
        credential(
            self.server.as_ref(),
            &self.admin,
            self.dir.path(),
            &file,
            name,
            args,
        )
    }

    async fn start_edge(&mut self, c: usize) {
        let credential = self.credential(c, "edge", &[]);
        let server_url = format!("https://{}", self.edge_listen);
        self.clusters[c]
            .edge
            .start(&server_url, &credential, &self.http)
            .await;
    }

    fn start_gateway(&mut self, c: usize) {
        let credential = self.credential(c, "eastwest", &["--eastwest"]);
        let cluster = &self.clusters[c];
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("{}-eastwest.log", cluster.name)),
        )
        .unwrap();
        let child = Command::new(WEFT)
            .args([
                "eastwest",
                "--node-id",
                &format!("{}-eastwest", cluster.name),
            ])
            .args([
                "--listen",
                &format!("127.0.{}.1:{}", cluster.net, cluster.gateway_port),
            ])
            .args(["--edge", &format!("127.0.0.1:{}", cluster.edge.xds_port)])
            .arg("--credential-file")
            .arg(&credential)
            .arg("--envoy")
            .arg(envoy())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.clusters[c].gateway = Some(Proc(child));
    }

    /// Starts a sidecar in cluster `c` as service account `account`; with
    /// `service`, an echo app of that service behind it (its instance
    /// named `node`). Returns its outbound port.
    fn proxy(&mut self, c: usize, node: &str, account: &str, service: Option<&str>) -> u16 {
        let credential = self.credential(
            c,
            account,
            &["--namespace", "shop", "--service-account", account],
        );
        let cluster = &mut self.clusters[c];
        let address = cluster
            .addresses
            .entry(node.to_string())
            .or_insert_with(|| {
                cluster.next_host += 1;
                format!("127.0.{}.{}:15006", cluster.net, cluster.next_host)
            })
            .clone();
        let outbound = free_port();
        let admin = free_port();
        cluster.envoy_admin.insert(node.to_string(), admin);
        let log = self.dir.path().join(format!("{node}.log"));
        let service_name = service.unwrap_or(account);
        let mut command = sidecar(
            self.data_plane,
            node,
            service_name,
            account,
            cluster.edge.xds_port,
            &credential,
            &log,
        );
        command
            .args(["--inbound", &address])
            .args(["--outbound-port", &outbound.to_string()])
            .args(["--admin-port", &admin.to_string()]);
        if let Some(service) = service {
            with_echo_app(&mut command, service, node, None);
        }
        cluster
            .proxies
            .insert(node.to_string(), Proc(command.spawn().unwrap()));
        outbound
    }

    /// Starts `weft gateway` NAME in namespace shop of cluster `c` with
    /// `label`, listening on `address` (and with `mesh_port`, reachable by
    /// other clusters' tier-1 gateways); kept with the cluster's proxies
    /// as node `c-NAME`.
    fn gateway(
        &mut self,
        c: usize,
        name: &str,
        label: &str,
        address: &str,
        mesh_port: Option<u16>,
    ) -> String {
        let credential = self.credential(c, name, &["--namespace", "shop", "--gateway", name]);
        let cluster = &mut self.clusters[c];
        let node = format!("{}-{name}", cluster.name);
        let mut command = Command::new(WEFT);
        command
            .args(["gateway", "--name", name, "--namespace", "shop"])
            .args(["--label", label, "--node-id", &node])
            .args(["--listen-address", address])
            .arg("--runtime-dir")
            .arg(self.dir.path().join("run"))
            .args(["--edge", &format!("127.0.0.1:{}", cluster.edge.xds_port)])
            .arg("--credential-file")
            .arg(&credential)
            .arg("--envoy")
            .arg(envoy())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join(format!("{node}.log")))
                    .unwrap(),
            );
        if let Some(port) = mesh_port {
            command.args(["--mesh-port", &port.to_string()]);
        }
        cluster
            .proxies
            .insert(node.clone(), Proc(command.spawn().unwrap()));
        node
    }

    fn stop_proxy(&mut self, c: usize, node: &str) {
        let mut proxy = self.clusters[c].proxies.remove(node).unwrap();
        assert!(proxy.stop(), "{node} stops on SIGTERM");
    }

    async fn edge_status(&self, c: usize) -> Value {
        self.clusters[c].edge.status(&self.http).await
    }

    /// The directory cluster `c`'s edge keeps on disk, if readable.
    fn kept_directory(&self, c: usize) -> Option<Value> {
        let file = format!("{}-edge-data/directory.json", self.clusters[c].name);
        let bytes = std::fs::read(self.dir.path().join(file)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits until five calls in a row to `host` are all answered by
    /// `instance`.
    async fn until_answered_by(&self, port: u16, host: &str, instance: &str, what: &str) {
        let all = BTreeMap::from([(instance.to_string(), 5)]);
        until(what, Duration::from_secs(30), async || {
            self.answers(port, host, 5).await == all
        })
        .await;
    }

    /// A counter of a proxy's Envoy whose name contains `part` and ends
    /// with `name` (0 when it has none yet).
    async fn envoy_stat(&self, c: usize, node: &str, part: &str, name: &str) -> u64 {
        let admin = self.clusters[c].envoy_admin[node];
        envoy_stat(&self.http, admin, name, part).await
    }

    async fn edge_metric(&self, c: usize, name: &str) -> Option<i64> {
        self.clusters[c].edge.metric(&self.http, name).await
    }

    /// Waits until every proxy of every cluster accepted its config.
    async fn until_in_sync(&self) {
        until(
            "every proxy in every cluster is in sync",
            Duration::from_secs(60),
            async || {
                for cluster in &self.clusters {
                    let expected = cluster.proxies.len() + usize::from(cluster.gateway.is_some());
                    if !cluster.edge.in_sync(&self.http, expected).await {
                        return false;
                    }
                }
                true
            },
        )
        .await;
    }

    /// Waits until cluster `c`'s edge knows `services` services elsewhere
    /// and a gateway into every other cluster; returns how long that took.
    async fn until_directory(&self, c: usize, services: u64) -> Duration {
        let started = Instant::now();
        until(
            &format!(
                "{} knows {services} services elsewhere and every other cluster's gateway",
                self.clusters[c].name
            ),
            Duration::from_secs(30),
            async || {
                let directory = &self.edge_status(c).await["directory"];
                directory["services"] == services
                    && directory["clusters"] == (self.clusters.len() - 1) as u64
                    && directory["reachable"] == directory["clusters"]
            },
        )
        .await;
        started.elapsed()
    }

    /// One request from the proxy at `port` to `host`: the status, and the
    /// answer (the instance and the headers it saw).
    async fn call(&self, port: u16, host: &str) -> (u16, Option<Value>) {
        call(&self.http, port, host, "/", &[]).await
    }

    /// Who answers `n` requests to `host`: instance → count.
    async fn answers(&self, port: u16, host: &str, n: usize) -> BTreeMap<String, usize> {
        answers(&self.http, port, host, "/", n).await
    }
}

/// Requests at a steady pace from one proxy, each answer recorded with
/// when it came.
struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<(Instant, Result<String, String>)>>,
}

impl Load {
    fn start(port: u16, host: &'static str, path: &'static str) -> Load {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut seen = Vec::new();
            while !*stopped.borrow() {
                let outcome = match client
                    .get(format!("http://127.0.0.1:{port}{path}"))
                    .header("host", host)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                        Ok(body) => Ok(body["instance"].as_str().unwrap_or("?").to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                    Ok(r) => Err(r.status().to_string()),
                    Err(e) => Err(e.to_string()),
                };
                seen.push((Instant::now(), outcome));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        });
        Load { stop, task }
    }

    async fn stop(self) -> Vec<(Instant, Result<String, String>)> {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// Failures in `seen`, and when the first answer from `instance` came
/// after `since`.
fn failures_and_first(
    seen: &[(Instant, Result<String, String>)],
    since: Instant,
    instance: &str,
) -> (Vec<String>, Option<Duration>) {
    let failures = seen
        .iter()
        .filter_map(|(_, o)| o.as_ref().err().cloned())
        .collect();
    let first = seen
        .iter()
        .find(|(at, o)| *at >= since && o.as_deref() == Ok(instance))
        .map(|(at, _)| at.duration_since(since));
    (failures, first)
}

/// A metric of every edge, in cluster order.
async fn edge_metrics(world: &World, name: &str) -> Vec<Option<i64>> {
    let mut values = Vec::new();
    for c in 0..world.clusters.len() {
        values.push(world.edge_metric(c, name).await);
    }
    values
}
