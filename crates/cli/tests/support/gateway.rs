//! A mesh with gateways for end-to-end tests: `weft server`, one `weft
//! edge` (cluster east), the shop's workloads behind sidecars, `weft
//! gateway` replicas, and the tools to drive them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::mesh::{Edge, SHOP, credential, with_echo_app};
use super::tls::TestCa;
use super::{Proc, Server, WEFT, envoy, free_port, show_log_tails, until, write};

/// Besides [`SHOP`]: workspace edge (namespace edge) with a gateway group.
pub const EDGE: &str = "\
apiVersion: weft.dev/v1alpha1
kind: Workspace
metadata: {name: edge, tenant: retail}
spec: {namespaceSelector: [east/edge]}
---
apiVersion: weft.dev/v1alpha1
kind: GatewayGroup
metadata: {name: front, tenant: retail, workspace: edge}
spec: {namespaceSelector: [east/edge]}
";

/// What lets the gateway call the shop's services: the workspace's
/// authorization (`SHOP`'s) with the gateway's identity added. (A second
/// workspace-level setting of authorization would conflict with it.)
pub const GATEWAY_ALLOWED: &str = "\
apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {name: workspace-calls, tenant: retail, workspace: shop}
spec:
  authorization:
    allow:
    - {from: [{sameWorkspace: true}]}
    - {from: [{serviceAccount: {namespace: edge, name: ingress}}]}
";

/// What lets the gateway call the shop's services, and Gateway `ingress`
/// of workspace edge on the gateways labelled app=ingress with `servers`
/// (the items of its `http` list, indented four spaces).
pub fn ingress_gateway(servers: &str) -> String {
    format!(
        "{GATEWAY_ALLOWED}---
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {{name: ingress, tenant: retail, workspace: edge, gatewayGroup: front}}
spec:
  workloadSelector: {{namespace: edge, labels: {{app: ingress}}}}
  http:
{servers}"
    )
}

pub struct GatewayMesh {
    pub dir: tempfile::TempDir,
    pub server: Server,
    pub admin: String,
    pub edge: Edge,
    pub http: reqwest::Client,
    /// Where the gateway's certificate files are.
    pub certificates: PathBuf,
    pub ca: TestCa,
    pub processes: Vec<Proc>,
}

impl Drop for GatewayMesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            show_log_tails(self.dir.path());
        }
    }
}

impl GatewayMesh {
    pub async fn start() -> GatewayMesh {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&dir.path().join("server"), None);
        let admin = server.admin_token();
        let base = write(dir.path(), "base.yaml", &format!("{SHOP}---\n{EDGE}"));
        let applied = server.weft(&admin, &["apply", "-f", &base]);
        assert_eq!(applied.code, 0, "{applied:?}");
        let edge_credential = credential(Some(&server), &admin, dir.path(), "edge", "east", &[]);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut edge = Edge::new("east", dir.path(), &[]);
        edge.start(&server.edge_url, &edge_credential, &http).await;
        let certificates = dir.path().join("certificates");
        std::fs::create_dir(&certificates).unwrap();
        GatewayMesh {
            dir,
            server,
            admin,
            edge,
            http,
            certificates,
            ca: TestCa::new("test servers"),
            processes: Vec::new(),
        }
    }

    pub fn apply(&self, yaml: &str) {
        let file = write(self.dir.path(), "apply.yaml", yaml);
        let run = self.server.weft(&self.admin, &["apply", "-f", &file]);
        assert_eq!(run.code, 0, "{run:?}");
    }

    /// A `weft sidecar` of `service` in `shop` as `node`, with its own
    /// credential, inbound address and log; returns it and its outbound
    /// port.
    pub fn sidecar(&mut self, service: &str, node: &str) -> (Command, u16) {
        let credential = credential(
            Some(&self.server),
            &self.admin,
            self.dir.path(),
            service,
            "east",
            &["--namespace", "shop", "--service-account", service],
        );
        let log = self.dir.path().join(format!("{node}.log"));
        let mut command = super::mesh::sidecar(
            super::mesh::DataPlane::Envoy,
            node,
            service,
            service,
            self.edge.xds_port,
            &credential,
            &log,
        );
        let outbound = free_port();
        command
            .args(["--inbound", &format!("127.0.0.1:{}", free_port())])
            .args(["--outbound-port", &outbound.to_string()]);
        (command, outbound)
    }

    /// An instance of `service` whose app is `app` (listening on
    /// `app_port`).
    pub fn workload_running(&mut self, service: &str, node: &str, app_port: u16, app: &[&str]) {
        let (mut command, _) = self.sidecar(service, node);
        command
            .args(["--app-port", &app_port.to_string(), "--"])
            .args(app);
        self.processes.push(Proc(command.spawn().unwrap()));
    }

    /// An instance of `service` with an echo app.
    pub fn workload(&mut self, service: &str, node: &str, version: &str) {
        let (mut command, _) = self.sidecar(service, node);
        with_echo_app(&mut command, service, node, Some(version));
        self.processes.push(Proc(command.spawn().unwrap()));
    }

    /// A sidecar of `service` without an app; returns its outbound port.
    pub fn client(&mut self, service: &str) -> u16 {
        let (mut command, outbound) = self.sidecar(service, &format!("{service}-1"));
        self.processes.push(Proc(command.spawn().unwrap()));
        outbound
    }

    /// `weft gateway` NAME in `namespace`, labelled app=NAME (node
    /// NAME-1); with `mesh_port`, reachable by the mesh's sidecars.
    pub fn gateway(&mut self, name: &str, namespace: &str, mesh_port: Option<u16>) {
        self.gateway_replica(name, namespace, 1, mesh_port);
    }

    /// Replica `n` of `weft gateway` NAME (node NAME-n), listening on
    /// 127.0.0.n.
    pub fn gateway_replica(&mut self, name: &str, namespace: &str, n: u8, mesh_port: Option<u16>) {
        let credential = credential(
            Some(&self.server),
            &self.admin,
            self.dir.path(),
            name,
            "east",
            &["--namespace", namespace, "--gateway", name],
        );
        let node = format!("{name}-{n}");
        let mut command = Command::new(WEFT);
        command
            .args(["gateway", "--name", name, "--namespace", namespace])
            .args(["--label", &format!("app={name}"), "--node-id", &node])
            .args(["--listen-address", &format!("127.0.0.{n}")])
            // Other tests run gateways of the same name on this address.
            .arg("--runtime-dir")
            .arg(self.dir.path().join("run"))
            .arg("--certificates")
            .arg(&self.certificates)
            .args(["--edge", &format!("127.0.0.1:{}", self.edge.xds_port)])
            .arg("--credential-file")
            .arg(credential)
            .arg("--envoy")
            .arg(envoy())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join(format!("{node}.log"))).unwrap());
        if let Some(port) = mesh_port {
            command.args(["--mesh-port", &port.to_string()]);
        }
        self.processes.push(Proc(command.spawn().unwrap()));
    }

    /// `weft ratelimit` replica `n` counting in the Redis at `redis`;
    /// returns its admin port (metrics).
    pub fn ratelimit(&mut self, n: u8, redis: &str, extra: &[&str]) -> u16 {
        let credential = credential(
            Some(&self.server),
            &self.admin,
            self.dir.path(),
            "ratelimit",
            "east",
            &["--ratelimit"],
        );
        let admin = free_port();
        let node = format!("ratelimit-{n}");
        let mut command = Command::new(WEFT);
        command
            .args(["ratelimit", "--node-id", &node, "--redis", redis])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--edge", &format!("127.0.0.1:{}", self.edge.xds_port)])
            .arg("--credential-file")
            .arg(credential)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join(format!("{node}.log"))).unwrap());
        self.processes.push(Proc(command.spawn().unwrap()));
        admin
    }

    /// The command of `weft authservice` (node authservice-1) with client
    /// secrets in `secrets` and sessions (where servers say so) in
    /// `redis`, on `listen` with its admin on `admin`; each start appends
    /// to its log.
    pub fn authservice(
        &mut self,
        secrets: &std::path::Path,
        redis: &str,
        listen: u16,
        admin: u16,
    ) -> Command {
        let credential = credential(
            Some(&self.server),
            &self.admin,
            self.dir.path(),
            "authservice",
            "east",
            &["--authservice"],
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("authservice-1.log"))
            .unwrap();
        let mut command = Command::new(WEFT);
        command
            .args([
                "authservice",
                "--node-id",
                "authservice-1",
                "--redis",
                redis,
            ])
            .arg("--secrets")
            .arg(secrets)
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--edge", &format!("127.0.0.1:{}", self.edge.xds_port)])
            .arg("--credential-file")
            .arg(credential)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        command
    }

    pub async fn until_in_sync(&self, proxies: usize) {
        until(
            "every proxy has accepted its configuration",
            Duration::from_secs(40),
            async || self.edge.in_sync(&self.http, proxies).await,
        )
        .await;
    }
}
