//! `weft sidecar`, `weft eastwest` and `weft gateway`: the command lines
//! of the agent (`weft-agent`) that runs a workload's proxy, the
//! cluster's east-west gateway, or a gateway for clients outside the mesh. Envoy and the app are tied to the agent's life: if it is
//! killed they go too, and the same command started again takes over.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use weft_agent::proxy::{DataPlane, ProxyOptions};
use weft_agent::workload::{Role, Workload};

use crate::server::shutdown_signal;

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
    /// The data plane: Envoy, or weft-proxy (weft's own, from the same
    /// xDS; `weft x proxy`)
    #[arg(long = "proxy", value_enum, default_value_t = DataPlaneKind::Envoy)]
    pub data_plane: DataPlaneKind,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// The app to run beside the proxy, after `--`
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

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// The gateway's name: its credential's (`weft token create --gateway
    /// NAME`) and its SPIFFE identity's service account
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// A label Gateways' workloadSelector can select on, e.g. app=ingress (repeatable)
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// The address its servers' ports listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_address: std::net::IpAddr,
    /// A port on the listen address where other clusters' tier-1 gateways
    /// reach this gateway (mutual TLS with its workload identity, through
    /// this cluster's east-west gateway); without it, only clients that
    /// connect to its servers' ports do
    #[arg(long)]
    pub mesh_port: Option<std::num::NonZeroU16>,
    /// The directory of server certificates: NAME.crt and NAME.key per
    /// certificate name its Gateways give, NAME.crt alone for a client CA
    #[arg(long, env = "WEFT_GATEWAY_CERTIFICATES")]
    pub certificates: Option<PathBuf>,
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
    /// The proxy's node id [default: the one kept from a crashed run of
    /// this instance, else SERVICE-<random>]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataPlaneKind {
    Envoy,
    Weft,
}

fn parse_label(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{value:?} is not key=value")),
    }
}

impl ProxyArgs {
    fn options(&self, kind: DataPlaneKind) -> Result<ProxyOptions> {
        let data_plane = match kind {
            DataPlaneKind::Envoy => DataPlane::Envoy(crate::envoy::find(self.envoy.as_deref())?),
            DataPlaneKind::Weft => {
                anyhow::ensure!(
                    !self.sotw,
                    "--sotw: weft-proxy speaks delta xDS only; drop --sotw or use --proxy envoy"
                );
                DataPlane::Weft {
                    program: std::env::current_exe()?,
                    args: ["x", "proxy", "--log-level", &self.envoy_log_level]
                        .map(Into::into)
                        .to_vec(),
                }
            }
        };
        Ok(ProxyOptions {
            edge: self.edge,
            credential_file: self.credential_file.clone(),
            node_id: self.node_id.clone(),
            data_plane,
            admin_port: self.admin_port,
            envoy_log_level: self.envoy_log_level.clone(),
            delta: !self.sotw,
            runtime_base: self
                .runtime_dir
                .clone()
                .unwrap_or_else(weft_agent::children::default_base),
            certificates: None,
        })
    }
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
    let options = args.proxy.options(args.data_plane)?;
    let proxy_name = match args.data_plane {
        DataPlaneKind::Envoy => "Envoy",
        DataPlaneKind::Weft => "weft-proxy",
    };
    let announce = |w: &Workload, admin: u16| {
        println!(
            "weft sidecar: {}.{} node {}: inbound {} -> app {}; outbound 127.0.0.1:{}; edge {}; {proxy_name} admin http://127.0.0.1:{admin}",
            w.service,
            w.namespace,
            w.node,
            args.inbound,
            args.app_port
                .map_or("(none)".to_string(), |p| format!("127.0.0.1:{p}")),
            args.outbound_port,
            options.edge,
        );
    };
    let code =
        weft_agent::proxy::run(workload, &options, &args.app, announce, shutdown_signal()).await?;
    Ok(code)
}

/// `weft gateway`: an entry point for clients outside the mesh. Its
/// credential is a gateway credential (`weft token create --gateway`);
/// it calls services under its own identity, so their SecuritySettings
/// must allow it.
pub async fn run_gateway(args: GatewayArgs) -> Result<i32> {
    let workload = Workload {
        node: String::new(),
        service: args.name.clone(),
        namespace: args.namespace.clone(),
        service_account: args.name.clone(),
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        address: args.listen_address.to_string(),
        port: args.mesh_port.map_or(0, std::num::NonZeroU16::get),
        app_port: None,
        outbound_port: None,
        role: Role::Gateway,
        calls: Vec::new(),
    };
    let mut options = args.proxy.options(DataPlaneKind::Envoy)?;
    if let Some(dir) = &args.certificates {
        anyhow::ensure!(
            dir.is_dir(),
            "--certificates {}: not a directory; it holds NAME.crt and NAME.key for each certificate its Gateways name",
            dir.display()
        );
        options.certificates = Some(dir.clone());
    }
    let announce = |w: &Workload, admin: u16| {
        println!(
            "weft gateway: {} in {} node {}: listening on {} at the ports its Gateways give{}; certificates {}; edge {}; Envoy admin http://127.0.0.1:{admin}",
            w.service,
            w.namespace,
            w.node,
            args.listen_address,
            args.mesh_port
                .map(|p| format!(", for other clusters' tier-1 gateways at port {p}"))
                .unwrap_or_default(),
            args.certificates
                .as_ref()
                .map_or("(none)".to_string(), |d| d.display().to_string()),
            options.edge,
        );
    };
    let code = weft_agent::proxy::run(workload, &options, &[], announce, shutdown_signal()).await?;
    Ok(code)
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
    let options = args.proxy.options(DataPlaneKind::Envoy)?;
    let announce = |w: &Workload, admin: u16| {
        println!(
            "weft eastwest: node {}: other clusters reach this one at {} (TLS passed through by SNI); edge {}; Envoy admin http://127.0.0.1:{admin}",
            w.node, args.listen, options.edge,
        );
    };
    let code = weft_agent::proxy::run(workload, &options, &[], announce, shutdown_signal()).await?;
    Ok(code)
}
