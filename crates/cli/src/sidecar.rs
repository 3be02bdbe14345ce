//! `weft sidecar` and `weft eastwest`: write the Envoy bootstrap that
//! announces a workload (or the cluster's east-west gateway) to its edge,
//! get its certificate, then run Envoy (and optionally the app) and
//! supervise them: when either exits, or on Ctrl-C/SIGTERM, both stop.
//! Both are tied to the agent's life (`children`): if the agent is killed
//! they go too, and the same command started again takes over at once.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use rand::RngCore;
use weft_control::workload::{Role, Workload};

use weft_control::proxy::sds;

use crate::children::{self, RuntimeDir};
use crate::edge::read_credential;
use crate::server::shutdown_signal;
use std::sync::Arc;
use weft_identity::SpiffeId;
use weft_identity::tls::TrustStore;

#[derive(Debug, clap::Args)]
pub struct SidecarArgs {
    /// The service this workload is an instance of
    #[arg(long)]
    pub service: String,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The workload's service account [default: the service name]
    #[arg(long)]
    pub service_account: Option<String>,
    /// A label other services' routes can select on, e.g. version=v2 (repeatable)
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// The app's port on 127.0.0.1; without it the workload only calls out
    #[arg(long)]
    pub app_port: Option<u16>,
    /// Where other workloads reach this one (the inbound listener)
    #[arg(long, default_value = "127.0.0.1:15006")]
    pub inbound: std::net::SocketAddr,
    /// Port on 127.0.0.1 where the app calls other services
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// The services the app calls, comma-separated (`name` in its own
    /// namespace, or `name.namespace`): its proxy holds only these, and
    /// answers any other name with 404 [default: every service of its workspace]
    #[arg(long, value_delimiter = ',')]
    pub calls: Vec<String>,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// The app to run beside Envoy, after `--`
    #[arg(last = true)]
    pub app: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct EastwestArgs {
    /// Where other clusters' proxies connect (TLS, routed by SNI)
    #[arg(long, default_value = "127.0.0.1:15443")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

/// What every Envoy that weft runs needs: its edge, its credential, Envoy.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The edge's xDS address
    #[arg(long, env = "WEFT_EDGE", default_value = "127.0.0.1:15010")]
    pub edge: std::net::SocketAddr,
    /// A file holding the workload credential
    /// (`weft token create --cluster C --namespace N --service-account S`)
    #[arg(long, env = "WEFT_WORKLOAD_CREDENTIAL_FILE")]
    pub credential_file: PathBuf,
    /// The proxy's node id [default: SERVICE-<random>]
    #[arg(long)]
    pub node_id: Option<String>,
    /// The Envoy binary [default: from `weft envoy install`, a checkout's
    /// .tools/venv, or PATH]
    #[arg(long, env = "WEFT_ENVOY")]
    pub envoy: Option<PathBuf>,
    /// Envoy's admin port on 127.0.0.1 (0 picks a free one)
    #[arg(long, default_value_t = 0)]
    pub admin_port: u16,
    /// Envoy's log level
    #[arg(long, default_value = "warning")]
    pub envoy_log_level: String,
    /// Use state-of-the-world xDS instead of delta
    #[arg(long)]
    pub sotw: bool,
    /// Where the proxy keeps its bootstrap, SDS socket and the record of
    /// what it started, so that a restart after a crash finds them
    /// [default: $XDG_RUNTIME_DIR/weft, else /tmp/weft-UID]
    #[arg(long, env = "WEFT_RUNTIME_DIR")]
    pub runtime_dir: Option<PathBuf>,
}

fn parse_label(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{value:?} is not key=value")),
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes,
/// with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A static cluster of one gRPC server (HTTP/2) at `address`.
fn grpc_cluster(name: &str, address: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    })
}

/// Mutual TLS to the edge: the workload certificate and the trust bundle
/// from the sidecar's SDS server, and the edge's identity checked.
fn edge_tls(edge_id: &str) -> serde_json::Value {
    let sds = serde_json::json!({
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": sds::CLUSTER}}],
        },
    });
    serde_json::json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": [{"name": sds::CERTIFICATE, "sds_config": sds}],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": edge_id}}],
                    },
                    "validation_context_sds_secret_config": {"name": sds::TRUST_BUNDLE, "sds_config": sds},
                },
            },
        },
    })
}

/// The Envoy bootstrap: who this proxy is, and how to reach the edge
/// (`edge_id` is its SPIFFE ID).
pub fn bootstrap(
    workload: &Workload,
    edge: std::net::SocketAddr,
    edge_id: &str,
    credential: &str,
    sds_socket: &std::path::Path,
    admin_port: u16,
    delta: bool,
) -> serde_json::Value {
    let ads = serde_json::json!({"ads": {}, "resource_api_version": "V3"});
    let mut edge_cluster = grpc_cluster(
        "weft-edge",
        serde_json::json!({"socket_address": {
            "address": edge.ip().to_string(), "port_value": edge.port(),
        }}),
    );
    edge_cluster["transport_socket"] = edge_tls(edge_id);
    serde_json::json!({
        "node": {
            "id": workload.node,
            "cluster": workload.service,
            "metadata": workload.to_metadata(),
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": if delta { "DELTA_GRPC" } else { "GRPC" },
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{
                    // The edge is on this host: after a refusal or an edge
                    // restart, try again within a second or two, not the
                    // default 30 s.
                    "envoy_grpc": {
                        "cluster_name": "weft-edge",
                        "retry_policy": {"retry_back_off": {"base_interval": "0.25s", "max_interval": "2s"}},
                    },
                    "initial_metadata": [{"key": "authorization", "value": format!("Bearer {credential}")}],
                }],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [
                grpc_cluster(sds::CLUSTER, serde_json::json!({"pipe": {
                    "path": sds_socket.display().to_string(),
                }})),
                edge_cluster,
            ],
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
    })
}

/// A new node id for a proxy of `service`: SERVICE-<random>.
fn new_node_id(service: &str) -> String {
    let mut bytes = [0u8; 4];
    rand::rng().fill_bytes(&mut bytes);
    format!("{service}-{}", hex::encode(bytes))
}

pub async fn run(args: SidecarArgs) -> Result<i32> {
    let workload = Workload {
        node: String::new(),
        service: args.service.clone(),
        namespace: args.namespace.clone(),
        service_account: args
            .service_account
            .clone()
            .unwrap_or_else(|| args.service.clone()),
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        address: args.inbound.ip().to_string(),
        port: args.inbound.port(),
        app_port: args.app_port,
        outbound_port: Some(args.outbound_port),
        role: Role::Sidecar,
        calls: Workload::parse_calls(&args.calls.join(","), &args.namespace)
            .map_err(|e| anyhow::anyhow!("--calls{e}"))?,
    };
    let summary = |w: &Workload| {
        format!(
            "weft sidecar: {}.{} node {}: inbound {} -> app {}; outbound 127.0.0.1:{}",
            w.service,
            w.namespace,
            w.node,
            args.inbound,
            args.app_port
                .map_or("(none)".to_string(), |p| format!("127.0.0.1:{p}")),
            args.outbound_port,
        )
    };
    run_proxy(workload, &args.proxy, &args.app, summary).await
}

/// `weft eastwest`: the cluster's east-west gateway. Its credential is the
/// cluster's gateway credential (`weft token create --cluster C
/// --eastwest`); its edge publishes `--listen` as the cluster's entry point.
pub async fn run_eastwest(args: EastwestArgs) -> Result<i32> {
    let workload = Workload {
        node: String::new(),
        service: "eastwest".into(),
        namespace: weft_identity::RESERVED_NAMESPACE.into(),
        service_account: weft_identity::EASTWEST_ACCOUNT.into(),
        labels: BTreeMap::new(),
        address: args.listen.ip().to_string(),
        port: args.listen.port(),
        app_port: None,
        outbound_port: None,
        role: Role::Eastwest,
        calls: Vec::new(),
    };
    let summary = |w: &Workload| {
        format!(
            "weft eastwest: node {}: other clusters reach this one at {} (TLS passed through by SNI)",
            w.node, args.listen
        )
    };
    run_proxy(workload, &args.proxy, &[], summary).await
}

/// The runtime directory's name for a proxy: its role and the address it
/// listens on, which no other proxy on this host can share.
fn instance_name(workload: &Workload) -> String {
    let role = match workload.role {
        Role::Eastwest => "eastwest",
        _ => "sidecar",
    };
    format!("{role}-{}-{}", workload.address, workload.port)
}

/// Gets the proxy's certificate, writes its bootstrap, and runs Envoy (and
/// `app`, if any) until one exits or a signal comes.
async fn run_proxy(
    mut workload: Workload,
    args: &ProxyArgs,
    app: &[String],
    summary: impl FnOnce(&Workload) -> String,
) -> Result<i32> {
    let credential = read_credential(&args.credential_file)?;
    let trust = Arc::new(TrustStore::default());
    trust.set(crate::svid::trust_bundle(&args.credential_file)?);
    let base = args
        .runtime_dir
        .clone()
        .unwrap_or_else(children::default_base);
    let runtime = RuntimeDir::claim(&base, &instance_name(&workload))?;
    workload.node = match &args.node_id {
        Some(node) => node.clone(),
        None => runtime.node_id(|| new_node_id(&workload.service))?,
    };
    let node = workload.node.clone();
    let admin_port = if args.admin_port == 0 {
        free_port()?
    } else {
        args.admin_port
    };
    // The runtime directory is private (0700); the bootstrap carries the
    // credential, so it is 0600 too.
    let path = runtime.path().join("envoy.json");
    let sds_socket = runtime.path().join("sds.sock");
    if sds_socket.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "the SDS socket path {} is longer than {MAX_SOCKET_PATH} bytes, the most a Unix socket takes; \
             hint: pass a shorter --runtime-dir",
            sds_socket.display()
        );
    }
    // The workload's identity first: Envoy starts with its certificate.
    let link = crate::svid::EdgeLink::new(args.edge, credential.clone(), node.clone(), trust)?;
    let issued = crate::svid::first(&link).await?;
    let edge_id = SpiffeId::edge(&issued.svid.trust.trust_domain)?.to_string();
    tracing::info!(id = %issued.svid.id, expires = %issued.svid.expires_at, "got the workload certificate");
    crate::svid::serve(&sds_socket, issued, link)?;
    let bootstrap = bootstrap(
        &workload,
        args.edge,
        &edge_id,
        &credential,
        &sds_socket,
        admin_port,
        !args.sotw,
    );
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(serde_json::to_string_pretty(&bootstrap)?.as_bytes())?;
    }
    let binary = crate::envoy::find(args.envoy.as_deref())?;
    let mut envoy = runtime
        .spawn(
            "envoy",
            children::tied(&binary)
                .args([
                    "--use-dynamic-base-id",
                    // Access log lines (authorization verdicts) within a
                    // second, not Envoy's default ten.
                    "--file-flush-interval-msec",
                    "1000",
                    // A changed listener (say, mTLS strict again) takes
                    // over at once: connections on the old one are asked
                    // to close now.
                    "--drain-strategy",
                    "immediate",
                    "--drain-time-s",
                    "5",
                    "--log-level",
                    &args.envoy_log_level,
                    "-c",
                ])
                .arg(&path)
                .stdin(Stdio::null()),
        )
        .with_context(|| {
            format!(
                "cannot start Envoy ({}); install it with `weft envoy install` or pass --envoy PATH",
                binary.display()
            )
        })?;
    println!(
        "{}; edge {}; Envoy admin http://127.0.0.1:{admin_port}",
        summary(&workload),
        args.edge
    );
    let runs_app = !app.is_empty();
    let mut app = match app.split_first() {
        Some((program, rest)) => Some(
            runtime
                .spawn(
                    "app",
                    children::tied(program).args(rest).stdin(Stdio::null()),
                )
                .with_context(|| format!("cannot start the app {program:?}"))?,
        ),
        None => None,
    };
    let app_exit = async {
        match app.as_mut() {
            Some(app) => app.wait().await,
            None => std::future::pending().await,
        }
    };
    let code = tokio::select! {
        status = envoy.wait() => {
            let status = status?;
            tracing::error!(%status, "Envoy exited");
            if let Some(app) = app.as_mut() { children::stop(app).await; }
            status.code().unwrap_or(1).max(1)
        }
        status = app_exit => {
            let status = status?;
            tracing::info!(%status, "the app exited; stopping Envoy");
            children::stop(&mut envoy).await;
            status.code().unwrap_or(1)
        }
        () = shutdown_signal() => {
            if let Some(app) = app.as_mut() { children::stop(app).await; }
            children::stop(&mut envoy).await;
            0
        }
    };
    runtime.remove();
    if code != 0 && !runs_app {
        bail!("Envoy exited with status {code}; see its log above");
    }
    Ok(code)
}
