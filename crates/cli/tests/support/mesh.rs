//! The pieces every mesh test puts together: a cluster's edge (start,
//! status, metrics, waiting until its proxies are in sync), credentials
//! from the server, `weft sidecar` command lines, and calls through a
//! sidecar's outbound port.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{Proc, Server, WEFT, envoy, metric, until};

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

/// A `weft sidecar` command line in namespace `shop`, Envoy and logs
/// included; the caller adds the rest (ports, app, flags).
pub fn sidecar(
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
