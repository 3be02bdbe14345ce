//! The pieces every mesh test puts together: a cluster's edge (start,
//! status, metrics, waiting until its proxies are in sync), credentials
//! from the server, `weft sidecar` command lines, and calls through a
//! sidecar's outbound port.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Proc, Server, WEFT, envoy, free_port, metric, show_log_tails, until, write};

/// Cluster east, tenant retail, and workspace shop (namespace shop in
/// east) whose workloads may call each other: where the mesh tests start.
pub const SHOP: &str = "\
apiVersion: weft.dev/v1alpha1
kind: Cluster
metadata: {name: east}
spec: {region: us-east-1}
---
apiVersion: weft.dev/v1alpha1
kind: Tenant
metadata: {name: retail}
spec: {}
---
apiVersion: weft.dev/v1alpha1
kind: Workspace
metadata: {name: shop, tenant: retail}
spec: {namespaceSelector: [east/shop]}
---
apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {name: workspace-calls, tenant: retail, workspace: shop}
spec:
  authorization:
    allow: [{from: [{sameWorkspace: true}]}]
";

/// A credential file for cluster `cluster` (`weft token create --cluster
/// CLUSTER ARGS`), written once into `dir` as `FILE.token`; once written,
/// it needs no server.
pub fn credential(
    server: Option<&Server>,
    admin: &str,
    dir: &Path,
    file: &str,
    cluster: &str,
    args: &[&str],
) -> PathBuf {
    let path = dir.join(format!("{file}.token"));
    if path.exists() {
        return path;
    }
    let mut all = vec!["token", "create", "--cluster", cluster];
    all.extend_from_slice(args);
    let server = server.expect("a server to issue the credential");
    let run = server.weft(admin, &all);
    assert_eq!(run.code, 0, "{run:?}");
    std::fs::write(&path, &run.stdout).unwrap();
    path
}

/// One cluster's `weft edge`: its ports, data directory and log stay the
/// same across restarts.
pub struct Edge {
    pub cluster: String,
    pub xds_port: u16,
    pub admin_port: u16,
    pub data: PathBuf,
    pub log: PathBuf,
    /// Extra `weft edge` flags.
    pub flags: Vec<String>,
    pub process: Option<Proc>,
}

impl Edge {
    /// An edge of `cluster` keeping its files in `dir` (not started).
    pub fn new(cluster: &str, dir: &Path, flags: &[&str]) -> Edge {
        Edge {
            cluster: cluster.to_string(),
            xds_port: super::free_port(),
            admin_port: super::free_port(),
            data: dir.join(format!("{cluster}-edge-data")),
            log: dir.join(format!("{cluster}-edge.log")),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            process: None,
        }
    }

    /// Starts it against the server's edge port (`server_url`) and waits
    /// until it answers; a restart appends to the same log.
    pub async fn start(&mut self, server_url: &str, credential: &Path, http: &reqwest::Client) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(WEFT)
            .args(["edge", "--cluster", &self.cluster, "--grace", "1s"])
            .arg("--credential-file")
            .arg(credential)
            .args(["--xds-listen", &format!("127.0.0.1:{}", self.xds_port)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", self.admin_port)])
            .args(&self.flags)
            .arg("--data")
            .arg(&self.data)
            .args(["--server", server_url])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.process = Some(Proc(child));
        let url = format!("http://127.0.0.1:{}/healthz", self.admin_port);
        until("the edge answers", Duration::from_secs(20), async || {
            http.get(&url).send().await.is_ok()
        })
        .await;
    }

    /// Its `/status` (null while it does not answer).
    pub async fn status(&self, http: &reqwest::Client) -> Value {
        let url = format!("http://127.0.0.1:{}/status", self.admin_port);
        match http.get(&url).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// Whether exactly `proxies` proxies are connected and run what the
    /// edge has for them.
    pub async fn in_sync(&self, http: &reqwest::Client, proxies: usize) -> bool {
        let status = self.status(http).await;
        let list = status["proxies"].as_array().cloned().unwrap_or_default();
        list.len() == proxies
            && list
                .iter()
                .all(|p| p["inSync"] == true && p["connected"] == true)
    }

    /// One of its metrics.
    pub async fn metric(&self, http: &reqwest::Client, name: &str) -> Option<i64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port);
        metric(http, &url, name).await
    }
}

/// Which proxy a sidecar runs: sidecar tests run once with each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPlane {
    Envoy,
    Weft,
}

impl DataPlane {
    /// `weft sidecar --proxy`'s value.
    pub fn flag(self) -> &'static str {
        match self {
            DataPlane::Envoy => "envoy",
            DataPlane::Weft => "weft",
        }
    }
}

/// Runs each `async fn NAME(data_plane: DataPlane)` as two tests,
/// `NAME::envoy` and `NAME::weft_proxy`: one test body, both data planes.
#[allow(unused_macros)]
macro_rules! on_both_data_planes {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            use $crate::support::mesh::DataPlane;

            #[tokio::test(flavor = "multi_thread")]
            async fn envoy() {
                super::$test(DataPlane::Envoy).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn weft_proxy() {
                super::$test(DataPlane::Weft).await
            }
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use on_both_data_planes;

/// A `weft sidecar` command line in namespace `shop` running
/// `data_plane`, logs included; the caller adds the rest (ports, app,
/// flags).
pub fn sidecar(
    data_plane: DataPlane,
    node: &str,
    service: &str,
    account: &str,
    edge_xds_port: u16,
    credential: &Path,
    log: &Path,
) -> Command {
    let mut command = Command::new(WEFT);
    command
        .args(["sidecar", "--namespace", "shop", "--node-id", node])
        .args(["--service", service, "--service-account", account])
        .args(["--edge", &format!("127.0.0.1:{edge_xds_port}")])
        .arg("--credential-file")
        .arg(credential)
        .arg("--envoy")
        .arg(envoy())
        .args(["--proxy", data_plane.flag()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    command
}

/// Puts a `weft x echo` app of `service` (answering as `instance`,
/// `version` if given) behind the sidecar `command` on a free port.
pub fn with_echo_app(command: &mut Command, service: &str, instance: &str, version: Option<&str>) {
    let app = super::free_port();
    command.args(["--app-port", &app.to_string()]);
    if let Some(version) = version {
        command.args(["--label", &format!("version={version}")]);
    }
    command
        .arg("--")
        .args([
            WEFT,
            "x",
            "echo",
            "--service",
            service,
            "--instance",
            instance,
        ])
        .args(["--listen", &format!("127.0.0.1:{app}")]);
    if let Some(version) = version {
        command.args(["--version", version]);
    }
}

/// One request through the sidecar outbound port `port` to `host`: the
/// status, and the echo app's answer (its instance, the headers it saw).
pub async fn call(
    http: &reqwest::Client,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<Value>) {
    let mut request = http
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.ok())
        }
        Err(_) => (0, None),
    }
}

/// Who answers `n` requests to `host` at `path`: instance (or `status N`)
/// → count.
pub async fn answers(
    http: &reqwest::Client,
    port: u16,
    host: &str,
    path: &str,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let who = match call(http, port, host, path, &[]).await {
            (200, Some(body)) => body["instance"].as_str().unwrap_or("?").to_string(),
            (status, _) => format!("status {status}"),
        };
        *seen.entry(who).or_default() += 1;
    }
    seen
}

/// The first counter on an Envoy admin page (`admin_port`) whose line
/// matches `filter` (a regex Envoy applies) and contains `part`; 0 when
/// there is none yet.
pub async fn envoy_stat(http: &reqwest::Client, admin_port: u16, filter: &str, part: &str) -> u64 {
    let url = format!("http://127.0.0.1:{admin_port}/stats?filter={filter}");
    let text = match http.get(&url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .filter(|l| l.contains(part))
        .find_map(|l| l.split(": ").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// [`SHOP`] and a traffic group for the whole workspace.
pub const TRAFFIC_GROUP: &str = "\
apiVersion: weft.dev/v1alpha1
kind: TrafficGroup
metadata: {name: traffic, tenant: retail, workspace: shop}
spec: {}
";

pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub server: Option<Server>,
    pub admin: String,
    /// Cluster `east`'s edge.
    pub edge: Edge,
    pub credentials: BTreeMap<String, PathBuf>,
    /// Each sidecar's proxy admin port, by node.
    pub envoy_admin: BTreeMap<String, u16>,
    pub http: reqwest::Client,
    /// The proxy the next sidecars run.
    pub data_plane: DataPlane,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            show_log_tails(self.dir.path());
        }
    }
}

impl Mesh {
    pub async fn start() -> Mesh {
        Mesh::start_with(&[]).await
    }

    pub async fn start_with(edge_flags: &[&str]) -> Mesh {
        Mesh::on_with(DataPlane::Envoy, edge_flags).await
    }

    /// A mesh whose sidecars run `data_plane`.
    pub async fn on(data_plane: DataPlane) -> Mesh {
        Mesh::on_with(data_plane, &[]).await
    }

    pub async fn on_with(data_plane: DataPlane, edge_flags: &[&str]) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&dir.path().join("server"), None);
        let admin = server.admin_token();
        let base = write(
            dir.path(),
            "base.yaml",
            &format!("{SHOP}---\n{TRAFFIC_GROUP}"),
        );
        let applied = server.weft(&admin, &["apply", "-f", &base]);
        assert_eq!(applied.code, 0, "{applied:?}");
        credential(Some(&server), &admin, dir.path(), "edge", "east", &[]);
        let edge = Edge::new("east", dir.path(), edge_flags);
        let mut mesh = Mesh {
            dir,
            server: Some(server),
            admin,
            edge,
            credentials: BTreeMap::new(),
            envoy_admin: BTreeMap::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            data_plane,
        };
        mesh.start_edge().await;
        mesh
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("the server is running")
    }

    /// Starts (or restarts) the edge; without a server, against an
    /// address where nothing answers.
    pub async fn start_edge(&mut self) {
        let server_url = self
            .server
            .as_ref()
            .map_or("https://127.0.0.1:9".to_string(), |s| s.edge_url.clone());
        let credential = self.dir.path().join("edge.token");
        self.edge.start(&server_url, &credential, &self.http).await;
    }

    pub fn edge_log(&self) -> String {
        std::fs::read_to_string(&self.edge.log).unwrap_or_default()
    }

    pub async fn edge_status(&self) -> Value {
        self.edge.status(&self.http).await
    }

    /// Applies `yaml` and waits until the edge has the new configuration
    /// and all `proxies` accepted it; returns the time that took.
    pub async fn apply(&self, yaml: &str, proxies: usize) -> Duration {
        let before = self.edge_status().await["configVersion"].clone();
        let file = write(self.dir.path(), "apply.yaml", yaml);
        let started = Instant::now();
        let run = self.server().weft(&self.admin, &["apply", "-f", &file]);
        assert_eq!(run.code, 0, "{run:?}");
        until(
            "the edge has the new configuration",
            Duration::from_secs(30),
            async || self.edge_status().await["configVersion"] != before,
        )
        .await;
        self.until_in_sync(proxies).await;
        started.elapsed()
    }

    pub fn credential(&mut self, service_account: &str) -> PathBuf {
        if let Some(path) = self.credentials.get(service_account) {
            return path.clone();
        }
        let path = credential(
            self.server.as_ref(),
            &self.admin,
            self.dir.path(),
            service_account,
            "east",
            &["--namespace", "shop", "--service-account", service_account],
        );
        self.credentials
            .insert(service_account.to_string(), path.clone());
        path
    }

    /// Starts a sidecar; with `version`, an echo app behind it.
    pub fn sidecar(
        &mut self,
        service: &str,
        node: &str,
        version: Option<&str>,
        credential: &Path,
        outbound: u16,
    ) -> Proc {
        self.sidecar_with(service, node, version, credential, outbound, &[])
    }

    /// [`Mesh::sidecar`] with more `weft sidecar` flags.
    pub fn sidecar_with(
        &mut self,
        service: &str,
        node: &str,
        version: Option<&str>,
        credential: &Path,
        outbound: u16,
        flags: &[&str],
    ) -> Proc {
        let admin = free_port();
        self.envoy_admin.insert(node.to_string(), admin);
        let log = self.dir.path().join(format!("{node}.log"));
        let mut command = sidecar(
            self.data_plane,
            node,
            service,
            service,
            self.edge.xds_port,
            credential,
            &log,
        );
        command
            .args(["--inbound", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin-port", &admin.to_string()])
            .args(["--outbound-port", &outbound.to_string()])
            .args(flags);
        if let Some(version) = version {
            with_echo_app(&mut command, service, node, Some(version));
        }
        Proc(command.spawn().unwrap())
    }

    pub fn workload(&mut self, service: &str, node: &str, version: &str) -> Proc {
        let credential = self.credential(service);
        self.sidecar(service, node, Some(version), &credential, free_port())
    }

    /// A sidecar without an app; returns it and its outbound port.
    pub fn client(&mut self) -> (Proc, u16) {
        let credential = self.credential("client");
        let port = free_port();
        (
            self.sidecar("client", "client-1", None, &credential, port),
            port,
        )
    }

    /// reviews v1 and a client, both in sync and reviews answering the
    /// client over mTLS; returns them and the client's outbound port.
    pub async fn reviews_and_client(&mut self) -> (Proc, Proc, u16) {
        let v1 = self.workload("reviews", "reviews-v1", "v1");
        let (client, port) = self.client();
        self.until_in_sync(2).await;
        until(
            "traffic flows over mTLS",
            Duration::from_secs(20),
            async || {
                self.instances(port, 1, "/")
                    .await
                    .contains_key("reviews-v1")
            },
        )
        .await;
        (v1, client, port)
    }

    /// A metric of the edge.
    pub async fn edge_metric(&self, name: &str) -> Option<i64> {
        self.edge.metric(&self.http, name).await
    }

    /// A counter of a sidecar's Envoy (0 when it has none yet).
    pub async fn envoy_stat(&self, node: &str, name: &str) -> u64 {
        envoy_stat(
            &self.http,
            self.envoy_admin[node],
            &format!("^{name}$"),
            name,
        )
        .await
    }

    pub fn sidecar_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{node}.log"))).unwrap_or_default()
    }

    /// Sends one request through the client's sidecar.
    pub async fn call(
        &self,
        port: u16,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Option<Value>) {
        call(&self.http, port, host, path, headers).await
    }

    /// Instances answering `n` plain requests to reviews.
    pub async fn instances(&self, port: u16, n: usize, path: &str) -> BTreeMap<String, usize> {
        answers(&self.http, port, "reviews", path, n).await
    }

    /// Waits until every proxy accepted what the edge has for it; returns
    /// how long that took.
    pub async fn until_in_sync(&self, proxies: usize) -> Duration {
        let started = Instant::now();
        until(
            "every proxy has accepted its configuration",
            Duration::from_secs(30),
            async || self.edge.in_sync(&self.http, proxies).await,
        )
        .await;
        started.elapsed()
    }
}

/// Whether a proxy's `log` has a request line (one JSON object) whose
/// fields have the values `fields` give (numbers compared as text).
pub fn logged(log: &str, fields: &[(&str, &str)]) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    log.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|line| {
            fields
                .iter()
                .all(|(name, value)| line.get(*name).map(text).as_deref() == Some(*value))
        })
}
