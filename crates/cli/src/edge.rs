//! `weft edge`: runs the local control plane of one cluster.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use weft_control::edge::{EdgeOptions, run};

use crate::server::{data_home, shutdown_signal};

#[derive(Debug, clap::Args)]
pub struct EdgeArgs {
    /// The Cluster resource this edge serves
    #[arg(long, env = "WEFT_CLUSTER")]
    pub cluster: String,
    /// A file holding the edge credential (`weft token create --cluster NAME`)
    #[arg(long, env = "WEFT_EDGE_CREDENTIAL_FILE")]
    pub credential_file: PathBuf,
    /// Where proxies connect over xDS (port 0 picks a free one; it is printed)
    #[arg(long, env = "WEFT_XDS_LISTEN", default_value = "127.0.0.1:15010")]
    pub xds_listen: String,
    /// Where /metrics, /healthz and /status are served
    #[arg(
        long,
        env = "WEFT_EDGE_ADMIN_LISTEN",
        default_value = "127.0.0.1:15011"
    )]
    pub admin_listen: String,
    /// Where the last good configuration is kept
    /// [default: $XDG_DATA_HOME/weft/edge-CLUSTER, else ~/.local/share/weft/edge-CLUSTER]
    #[arg(long, env = "WEFT_EDGE_DATA")]
    pub data: Option<PathBuf>,
    /// How long a workload stays registered after its proxy disconnects
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// How long workload certificates live; sidecars renew them at half-life
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub svid_ttl: Duration,
}

/// Where `weft edge` finds the server without `--server`.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7071";

pub async fn run_edge(args: EdgeArgs, server: String) -> Result<()> {
    let credential = weft_agent::credential::read_secret(&args.credential_file)?;
    let trust = weft_agent::credential::read_trust_bundle(&args.credential_file)?;
    let data_dir = match args.data {
        Some(dir) => dir,
        None => data_home()?.join(format!("edge-{}", args.cluster)),
    };
    let xds = TcpListener::bind(&args.xds_listen)
        .await
        .with_context(|| format!("cannot listen for xDS on {}", args.xds_listen))?;
    let admin = TcpListener::bind(&args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
    println!(
        "weft edge: cluster {}: xDS on {}, metrics on http://{}/metrics, server {server}",
        args.cluster,
        xds.local_addr()?,
        admin.local_addr()?
    );
    run(
        EdgeOptions {
            cluster: args.cluster,
            server,
            credential,
            data_dir,
            xds,
            admin,
            grace: args.grace,
            svid_lifetime: args.svid_ttl,
            trust,
        },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}
