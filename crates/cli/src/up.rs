//! `weft up`: a whole mesh on this machine. Starts `weft server`, a `weft
//! edge` for cluster `local`, and the demo app (reviews v1 and v2, a
//! client sidecar to send traffic through, and an ingress gateway with a
//! certificate from a demo CA), each as its own process with
//! its log in the data directory; prints how to use it; stops them all on
//! Ctrl-C, or when one of them stops. With `--multi-cluster`: three
//! clusters in two regions, each with its edge, east-west gateway and a
//! reviews instance, and the client in the first.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reqwest::Method;
use weft_manage::tokens::{CreateToken, CreatedToken};

use crate::client::Client;
use crate::server::{data_home, shutdown_signal};
use crate::supervise::Mesh;
use weft_agent::children::RuntimeDir;

/// The demo's configuration; copied into the data directory on first start.
const MESH: &str = include_str!("../../../examples/up/mesh.yaml");
/// The multi-cluster demo's configuration.
const MULTI_CLUSTER_MESH: &str = include_str!("../../../examples/up/multicluster.yaml");
/// The multi-cluster demo's clusters, each on loopback range 127.0.N.x.
const CLUSTERS: [(&str, u8); 3] = [("east-1", 1), ("east-2", 2), ("west-1", 3)];
const CLUSTER: &str = "local";
/// The hostname the demo's ingress gateway serves.
const DEMO_HOSTNAME: &str = "shop.weft.local";
const NAMESPACE: &str = "shop";

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the components keep their data and logs
    /// [default: $XDG_DATA_HOME/weft/up, else ~/.local/share/weft/up]
    #[arg(long, env = "WEFT_UP_DATA")]
    pub data: Option<PathBuf>,
    /// Address of the server's API (port 0 picks a free one)
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Port on 127.0.0.1 where you send requests into the mesh
    #[arg(long, default_value_t = 15001)]
    pub port: u16,
    /// Port on 127.0.0.1 where the ingress gateway takes HTTPS from outside
    /// the mesh (set in the demo's Gateway when its manifest is first written)
    #[arg(long, default_value_t = 8443)]
    pub https_port: u16,
    /// The Envoy binary [default: from `weft envoy install`, a checkout's .tools/venv, or PATH]
    #[arg(long, env = "WEFT_ENVOY")]
    pub envoy: Option<PathBuf>,
    /// Three clusters in two regions instead of one, to see locality-aware
    /// routing and failover (keeps its data in DATA/multi-cluster)
    #[arg(long)]
    pub multi_cluster: bool,
}

/// `N` distinct free ports on 127.0.0.1, none of them `taken`: each
/// listener stays open until all are chosen, so none is handed out twice.
/// They come from 10,000–19,999, below the kernel's ephemeral range: a
/// port from there can be taken as the source port of any outgoing
/// connection on the machine before the proxy meant to listen on it
/// binds. (weft's tests take theirs above, from 20,000.)
fn free_ports<const N: usize>(taken: u16) -> Result<[u16; N]> {
    const LOWEST: u32 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_start.min(20_000).saturating_sub(LOWEST).max(1);
    // Each run starts elsewhere in the range, and each call goes on where
    // the last one stopped (its ports are free again once it returns).
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);
    use std::sync::atomic::Ordering;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut held = Vec::with_capacity(N);
    let mut ports = [0; N];
    let mut i = 0;
    for _ in 0..span {
        if i == N {
            break;
        }
        let next = NEXT.fetch_add(1, Ordering::SeqCst);
        let Ok(port) = u16::try_from(LOWEST + next % span) else {
            continue;
        };
        if port == taken {
            continue;
        }
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
            ports[i] = port;
            i += 1;
        }
    }
    // Below the range all taken: any free port will do.
    while i < N {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        held.push(listener);
        if port != taken && !ports[..i].contains(&port) {
            ports[i] = port;
            i += 1;
        }
    }
    Ok(ports)
}

/// Writes a secret readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{secret}")?;
    Ok(())
}

/// A `weft sidecar` that `weft up` runs in namespace shop.
struct SidecarPlan<'a> {
    service: &'a str,
    node: &'a str,
    credential: &'a Path,
    /// Where other workloads reach it.
    inbound: String,
    /// Where its app calls out.
    outbound: u16,
    /// The `weft x echo` app behind it: its port, and its version (also
    /// the sidecar's `version` label).
    app: Option<(u16, Option<&'a str>)>,
}

impl SidecarPlan<'_> {
    /// The `weft sidecar` arguments; its runtime directory is under `runtime`.
    fn args(&self, exe: &Path, envoy: &Path, edge: &str, runtime: &Path) -> Vec<OsString> {
        let mut args = words(&[
            "sidecar",
            "--service",
            self.service,
            "--namespace",
            NAMESPACE,
        ]);
        args.extend(words(&["--node-id", self.node, "--inbound", &self.inbound]));
        args.extend(words(&[
            "--outbound-port",
            &self.outbound.to_string(),
            "--edge",
            edge,
        ]));
        args.extend(["--credential-file".into(), self.credential.into()]);
        args.extend(["--envoy".into(), envoy.into()]);
        args.extend(["--runtime-dir".into(), runtime.into()]);
        if let Some((app, version)) = self.app {
            if let Some(version) = version {
                args.extend(words(&["--label", &format!("version={version}")]));
            }
            args.extend(words(&["--app-port", &app.to_string(), "--"]));
            args.push(exe.into());
            args.extend(words(&[
                "x",
                "echo",
                "--service",
                self.service,
                "--instance",
                self.node,
            ]));
            args.extend(words(&["--listen", &format!("127.0.0.1:{app}")]));
            if let Some(version) = version {
                args.extend(words(&["--version", version]));
            }
        }
        args
    }
}

/// The `weft edge` arguments for `cluster`.
fn edge_args(
    cluster: &str,
    server: &str,
    credential: &Path,
    xds: &str,
    admin: u16,
    data: &Path,
) -> Vec<OsString> {
    let mut args = words(&["edge", "--cluster", cluster, "--server", server]);
    args.extend(["--credential-file".into(), credential.into()]);
    args.extend(words(&["--xds-listen", xds]));
    args.extend(words(&["--admin-listen", &format!("127.0.0.1:{admin}")]));
    let dir = if cluster == CLUSTER {
        "edge".to_string()
    } else {
        format!("{cluster}-edge")
    };
    args.extend(["--data".into(), data.join(dir).into()]);
    args
}

/// Command-line words.
fn words(words: &[&str]) -> Vec<OsString> {
    words.iter().map(OsString::from).collect()
}

/// The credential kept in `dir`, or a new one from the server: for
/// `cluster`'s edge, or for a workload of it (namespace, service account).
/// Who a credential is for.
#[derive(Clone, Copy)]
enum Holder<'a> {
    Edge,
    /// A workload: namespace and service account.
    Workload(&'a str, &'a str),
    /// A gateway (`weft gateway`): namespace and name.
    Gateway(&'a str, &'a str),
}

async fn credential(
    client: &Client,
    dir: &Path,
    cluster: &str,
    name: &str,
    holder: Holder<'_>,
) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.token"));
    // Kept from an earlier start, unless it predates trust bundles in
    // credential files.
    let kept = std::fs::read_to_string(&path).unwrap_or_default();
    if kept.contains("BEGIN CERTIFICATE") {
        return Ok(path);
    }
    let (namespace, service_account, gateway) = match holder {
        Holder::Edge => (None, None, None),
        Holder::Workload(namespace, account) => (Some(namespace), Some(account), None),
        Holder::Gateway(namespace, gateway) => (Some(namespace), None, Some(gateway)),
    };
    let request = CreateToken {
        user: None,
        cluster: Some(cluster.into()),
        namespace: namespace.map(str::to_string),
        service_account: service_account.map(str::to_string),
        gateway: gateway.map(str::to_string),
        description: format!("weft up: {name}"),
        ttl_seconds: None,
    };
    let created: CreatedToken = client
        .send(Method::POST, "tokens", Some(&request))
        .await
        .map_err(|e| anyhow::anyhow!("cannot issue the {name} credential: {}", e.message))?;
    write_secret(&path, &created.credential_file())?;
    Ok(path)
}

/// The `weft server` arguments for its data, API and edge addresses.
fn server_args(data: &Path, listen: &str, edge_listen: &str) -> Vec<OsString> {
    let mut args = words(&["server", "--data"]);
    args.push(data.into());
    args.extend(words(&["--listen", listen, "--edge-listen", edge_listen]));
    args
}

/// `host:port` of a URL the server printed.
fn address_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// The URLs the server printed in its log: the API's and the edge port's.
async fn server_url(mesh: &mut Mesh, log: &Path) -> Result<(String, String)> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let url = |marker: &str, scheme: &str| {
            text.lines()
                .find(|l| l.contains(marker))
                .and_then(|l| l.split_whitespace().find(|w| w.starts_with(scheme)))
                .map(str::to_string)
        };
        if let (Some(api), Some(edges)) = (
            url("API listening on", "http://"),
            url("edges connect to", "https://"),
        ) {
            return Ok((api, edges));
        }
        mesh.check()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "the server did not start within 30 s; see {}",
        log.display()
    )
}

/// Waits until the edge reports `proxies` proxies, all in sync.
async fn until_in_sync(mesh: &mut Mesh, edge_admin: u16, proxies: usize) -> Result<()> {
    let url = format!("http://127.0.0.1:{edge_admin}/status");
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut last = usize::MAX;
    loop {
        mesh.check()?;
        let status: Option<serde_json::Value> = match http.get(&url).send().await {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        let list = status
            .as_ref()
            .and_then(|s| s["proxies"].as_array().cloned())
            .unwrap_or_default();
        let ready = list
            .iter()
            .filter(|p| p["connected"] == true && p["inSync"] == true)
            .count();
        if ready == proxies {
            return Ok(());
        }
        if ready != last {
            eprintln!("weft up: {ready} of {proxies} proxies connected and configured");
            last = ready;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "only {ready} of {proxies} proxies are configured after 60 s; see the sidecar logs"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(args: UpArgs) -> Result<i32> {
    let mut data = match &args.data {
        Some(dir) => dir.clone(),
        None => data_home()?.join("weft").join("up"),
    };
    if args.multi_cluster {
        data = data.join("multi-cluster");
    }
    for dir in ["", "logs", "credentials"] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data.join(dir))
            .with_context(|| format!("cannot create {}", data.join(dir).display()))?;
    }
    let data = data.canonicalize()?;
    let (logs, credentials) = (data.join("logs"), data.join("credentials"));
    let exe = std::env::current_exe().context("cannot find the weft binary")?;
    let envoy = crate::envoy::find(args.envoy.as_deref())?;
    let version = std::process::Command::new(&envoy)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success());
    if version.is_none() {
        bail!(
            "cannot run Envoy ({}): install it with `weft envoy install`, or pass --envoy PATH",
            envoy.display()
        );
    }

    // Found out now rather than as a refused listener in an Envoy.
    let ports: &[(u16, &str)] = if args.multi_cluster {
        &[(args.port, "--port")]
    } else {
        &[(args.port, "--port"), (args.https_port, "--https-port")]
    };
    for (port, flag) in ports {
        std::net::TcpListener::bind(("127.0.0.1", *port))
            .with_context(|| format!("port {port} is taken: stop what uses it, or pass {flag}"))?;
    }

    let runtime = RuntimeDir::claim(&data, "run")?;
    let mut mesh = Mesh::new(&exe, runtime, &logs);
    let result = if args.multi_cluster {
        start_multi_cluster(&mut mesh, &exe, &envoy, &data, &credentials, &args).await
    } else {
        start(&mut mesh, &exe, &envoy, &data, &credentials, &args).await
    };
    let code = match result {
        Ok(()) => {
            tokio::select! {
                () = shutdown_signal() => {
                    eprintln!("weft up: stopping");
                    0
                }
                () = mesh.supervise() => unreachable!("supervising never ends"),
            }
        }
        Err(error) => {
            eprintln!("weft up: {error:#}");
            1
        }
    };
    mesh.stop().await;
    Ok(code)
}

/// The running server: where to reach it, and the demo's manifest.
struct ControlPlane {
    url: String,
    edge_url: String,
    client: Client,
    admin_token_file: PathBuf,
    manifest: PathBuf,
}

/// Starts the server and applies the demo's manifest (`default` the
/// first time; the copy in `data` after that).
async fn start_control_plane(
    mesh: &mut Mesh,
    data: &Path,
    args: &UpArgs,
    default: &str,
) -> Result<ControlPlane> {
    let server_data = data.join("server");
    let server_log = mesh
        .start(
            "server",
            "server",
            server_args(&server_data, &args.listen, "127.0.0.1:0"),
        )?
        .log()
        .to_path_buf();
    let (url, edge_url) = server_url(mesh, &server_log).await?;
    // Started again after a crash, it takes the same ports: the edges
    // and the printed URL stay right.
    mesh.set_args(
        "server",
        server_args(&server_data, address_of(&url), address_of(&edge_url)),
    );
    let admin_token_file = server_data.join("admin.token");
    let admin_token = std::fs::read_to_string(&admin_token_file)
        .with_context(|| format!("cannot read {}", admin_token_file.display()))?;
    let client = Client::to(&url, Some(admin_token.trim().to_string()));

    let manifest = data.join("mesh.yaml");
    if !manifest.exists() {
        std::fs::write(&manifest, default)?;
    }
    if let Err(e) = crate::resources::apply(&client, std::slice::from_ref(&manifest), false).await {
        e.report();
        bail!(
            "cannot apply {} (exit {})",
            manifest.display(),
            e.exit as u8
        );
    }
    Ok(ControlPlane {
        url,
        edge_url,
        client,
        admin_token_file,
        manifest,
    })
}

async fn start(
    mesh: &mut Mesh,
    exe: &Path,
    envoy: &Path,
    data: &Path,
    credentials: &Path,
    args: &UpArgs,
) -> Result<()> {
    let ControlPlane {
        url,
        edge_url,
        client,
        admin_token_file,
        manifest,
    } = start_control_plane(
        mesh,
        data,
        args,
        &MESH.replace("${HTTPS_PORT}", &args.https_port.to_string()),
    )
    .await?;

    let edge_token = credential(&client, credentials, CLUSTER, "edge", Holder::Edge).await?;
    let reviews_token = credential(
        &client,
        credentials,
        CLUSTER,
        "reviews",
        Holder::Workload(NAMESPACE, "reviews"),
    )
    .await?;
    let client_token = credential(
        &client,
        credentials,
        CLUSTER,
        "client",
        Holder::Workload(NAMESPACE, "client"),
    )
    .await?;
    let ingress_token = credential(
        &client,
        credentials,
        CLUSTER,
        "ingress",
        Holder::Gateway(NAMESPACE, "ingress"),
    )
    .await?;
    let tls = crate::demo_tls::DemoTls::ensure(&data.join("gateway"), DEMO_HOSTNAME)?;

    let [
        xds,
        edge_admin,
        client_inbound,
        v1_app,
        v1_in,
        v1_out,
        v2_app,
        v2_in,
        v2_out,
    ] = free_ports(args.port)?;
    let edge = format!("127.0.0.1:{xds}");
    let edge_args = edge_args(CLUSTER, &edge_url, &edge_token, &edge, edge_admin, data);
    mesh.start("edge", "edge", edge_args)?;
    mesh.set_admin("edge", &format!("127.0.0.1:{edge_admin}"));

    for (name, version, [app, inbound, outbound]) in [
        ("reviews-v1", "v1", [v1_app, v1_in, v1_out]),
        ("reviews-v2", "v2", [v2_app, v2_in, v2_out]),
    ] {
        let reviews = SidecarPlan {
            service: "reviews",
            node: name,
            credential: &reviews_token,
            inbound: format!("127.0.0.1:{inbound}"),
            outbound,
            app: Some((app, Some(version))),
        };
        let command = reviews.args(exe, envoy, &edge, mesh.runtime());
        mesh.start(name, "sidecar", command)?;
    }
    let caller = SidecarPlan {
        service: "client",
        node: "client",
        credential: &client_token,
        inbound: format!("127.0.0.1:{client_inbound}"),
        outbound: args.port,
        app: None,
    };
    let command = caller.args(exe, envoy, &edge, mesh.runtime());
    mesh.start("client", "sidecar", command)?;
    let mut ingress = words(&["gateway", "--name", "ingress", "--namespace", NAMESPACE]);
    ingress.extend(words(&["--label", "app=ingress", "--node-id", "ingress"]));
    ingress.extend(words(&["--listen-address", "127.0.0.1", "--edge", &edge]));
    ingress.extend(["--certificates".into(), tls.certificates.clone().into()]);
    ingress.extend(["--credential-file".into(), ingress_token.into()]);
    ingress.extend(["--envoy".into(), envoy.into()]);
    ingress.extend(["--runtime-dir".into(), mesh.runtime().into()]);
    mesh.start("ingress", "gateway", ingress)?;
    until_in_sync(mesh, edge_admin, 4).await?;

    let port = args.port;
    let logs = data.join("logs");
    println!(
        "\
weft up: the mesh is ready.
  server   {url}   (admin token: {token})
  web UI   {url}/ui/   (sign in with the admin token)
  edge     cluster {CLUSTER}; status http://127.0.0.1:{edge_admin}/status
  services reviews v1 and v2 in namespace {NAMESPACE}, and a client sidecar
  gateway  ingress: https://{DEMO_HOSTNAME}:{https} to reviews
  logs     {logs}

Reach reviews from outside the mesh, through the ingress gateway:
  curl --cacert {ca} --resolve {DEMO_HOSTNAME}:{https}:127.0.0.1 https://{DEMO_HOSTNAME}:{https}/
Send requests into the mesh through the client's sidecar:
  curl -H 'Host: reviews' http://127.0.0.1:{port}/          # 90% v1, 10% v2
  curl -H 'Host: reviews' -H 'x-canary: yes' http://127.0.0.1:{port}/   # v2
  curl -x http://127.0.0.1:{port} http://reviews.shop/       # as an HTTP proxy
Change the routing: edit {manifest}, then
  export WEFT_SERVER={url} WEFT_TOKEN=$(cat {token})
  {weft} apply -f {manifest}
  {weft} get cluster {CLUSTER} -o yaml     # proxies, what they accepted, NACKs
See the traffic (rate, success, latency; every 10 s from the edge):
  {weft} stat pairs                        # or: {weft} top
  curl -s http://127.0.0.1:{edge_admin}/metrics | grep weft_requests_total
Stop with Ctrl-C.",
        weft = exe.display(),
        token = admin_token_file.display(),
        logs = logs.display(),
        manifest = manifest.display(),
        https = args.https_port,
        ca = tls.ca.display(),
    );
    Ok(())
}

/// Three clusters in two regions: each gets its edge, its east-west
/// gateway on 127.0.N.1:15443 and a reviews instance on 127.0.N.11; the
/// client runs in the first.
async fn start_multi_cluster(
    mesh: &mut Mesh,
    exe: &Path,
    envoy: &Path,
    data: &Path,
    credentials: &Path,
    args: &UpArgs,
) -> Result<()> {
    let ControlPlane {
        url,
        edge_url,
        client,
        admin_token_file,
        manifest,
    } = start_control_plane(mesh, data, args, MULTI_CLUSTER_MESH).await?;
    let mut edges = Vec::new();
    let mut reviews_pids = Vec::new();
    let mut ingress_pid = 0;
    for (i, (cluster, net)) in CLUSTERS.into_iter().enumerate() {
        let name = |what: &str| format!("{cluster}-{what}");
        let edge_token =
            credential(&client, credentials, cluster, &name("edge"), Holder::Edge).await?;
        let gateway = Holder::Workload(
            weft_identity::RESERVED_NAMESPACE,
            weft_identity::EASTWEST_ACCOUNT,
        );
        let gateway_token =
            credential(&client, credentials, cluster, &name("eastwest"), gateway).await?;
        let reviews = Holder::Workload(NAMESPACE, "reviews");
        let reviews_token =
            credential(&client, credentials, cluster, &name("reviews"), reviews).await?;
        let [xds, edge_admin, app, outbound] = free_ports(args.port)?;
        let edge = format!("127.0.0.1:{xds}");
        let edge_args = edge_args(cluster, &edge_url, &edge_token, &edge, edge_admin, data);
        mesh.start(&name("edge"), "edge", edge_args)?;
        mesh.set_admin(&name("edge"), &format!("127.0.0.1:{edge_admin}"));
        let mut eastwest = words(&["eastwest", "--node-id", &name("eastwest")]);
        eastwest.extend(words(&["--listen", &format!("127.0.{net}.1:15443")]));
        eastwest.extend(words(&["--edge", &edge, "--credential-file"]));
        eastwest.push(gateway_token.into());
        eastwest.extend(["--envoy".into(), envoy.into()]);
        eastwest.extend(["--runtime-dir".into(), mesh.runtime().into()]);
        mesh.start(&name("eastwest"), "eastwest", eastwest)?;
        let instance = format!("reviews-{cluster}");
        let plan = SidecarPlan {
            service: "reviews",
            node: &instance,
            credential: &reviews_token,
            inbound: format!("127.0.{net}.11:15006"),
            outbound,
            app: Some((app, None)),
        };
        let command = plan.args(exe, envoy, &edge, mesh.runtime());
        let pid = mesh.start(&instance, "sidecar", command)?.pid();
        reviews_pids.push((instance, pid.unwrap_or_default()));
        let mut proxies = 2;
        // The front door: the tier-1 gateway in the first cluster, an
        // ingress gateway in the others.
        let (gateway, tier) = if i == 0 {
            ("tier1", "tier1")
        } else {
            ("ingress", "ingress")
        };
        let gateway_token = credential(
            &client,
            credentials,
            cluster,
            &name(gateway),
            Holder::Gateway(NAMESPACE, gateway),
        )
        .await?;
        let mut command = words(&["gateway", "--name", gateway, "--namespace", NAMESPACE]);
        command.extend(words(&["--label", &format!("tier={tier}")]));
        command.extend(words(&["--node-id", &name(gateway), "--edge", &edge]));
        command.extend(words(&["--listen-address", &format!("127.0.{net}.20")]));
        if i > 0 {
            command.extend(words(&["--mesh-port", "15008"]));
        }
        command.extend(["--credential-file".into(), gateway_token.into()]);
        command.extend(["--envoy".into(), envoy.into()]);
        command.extend(["--runtime-dir".into(), mesh.runtime().into()]);
        let pid = mesh.start(&name(gateway), "gateway", command)?.pid();
        if i == 1 {
            ingress_pid = pid.unwrap_or_default();
        }
        proxies += 1;
        if i == 0 {
            let client_token = credential(
                &client,
                credentials,
                cluster,
                &name("client"),
                Holder::Workload(NAMESPACE, "client"),
            )
            .await?;
            let caller = SidecarPlan {
                service: "client",
                node: "client",
                credential: &client_token,
                inbound: format!("127.0.{net}.12:15006"),
                outbound: args.port,
                app: None,
            };
            let command = caller.args(exe, envoy, &edge, mesh.runtime());
            mesh.start("client", "sidecar", command)?;
            proxies += 1;
        }
        edges.push((cluster, edge_admin, proxies));
    }
    for (_, edge_admin, proxies) in &edges {
        until_in_sync(mesh, *edge_admin, *proxies).await?;
    }
    let port = args.port;
    let logs = data.join("logs");
    let statuses: Vec<String> = edges
        .iter()
        .map(|(cluster, admin, _)| format!("{cluster} http://127.0.0.1:{admin}/status"))
        .collect();
    let (local, local_pid) = &reviews_pids[0];
    let (same_region, same_region_pid) = &reviews_pids[1];
    let (other_region, _) = &reviews_pids[2];
    println!(
        "\
weft up: three clusters are ready: east-1 and east-2 in region east, west-1 in region west.
  server   {url}   (admin token: {token})
  web UI   {url}/ui/   (sign in with the admin token)
  edges    {statuses}
  gateways 127.0.1.1:15443, 127.0.2.1:15443, 127.0.3.1:15443 (east-west, TLS passed through);
           tier-1 127.0.1.20:8080; ingress 127.0.2.20:8080, 127.0.3.20:8080
  services reviews in every cluster; a client in east-1
  logs     {logs}

Calls from east-1 stay in east-1:
  curl -H 'Host: reviews' http://127.0.0.1:{port}/      # \"instance\": \"{local}\"
Stop east-1's reviews, and calls go to {same_region} in east-2 (same region), with no failed request:
  kill {local_pid}
  (kill -9 instead is a crash: weft up starts it again, and calls come back to east-1)
Stop east-2's too, and they go to {other_region} in west-1:
  kill {same_region_pid}
A tier-1 gateway in east-1 splits shop.weft.local 80/20 between the ingress gateways of east-2 and west-1:
  curl -H 'Host: shop.weft.local' http://127.0.1.20:8080/
Stop east-2's ingress gateway, and all of it goes to west-1, with no failed request:
  kill {ingress_pid}
See what each edge knows of the others: curl the status URLs above (\"directory\").
Configuration: {manifest}; export WEFT_SERVER={url} WEFT_TOKEN=$(cat {token})
Stop with Ctrl-C.",
        statuses = statuses.join(", "),
        token = admin_token_file.display(),
        logs = logs.display(),
        manifest = manifest.display(),
    );
    Ok(())
}
