//! `weft ratelimit`: the command line of the rate limit service
//! (`weft_addons::ratelimit`).

use std::path::PathBuf;

use anyhow::Result;
use weft_addons::ratelimit::Options;

use crate::server::shutdown_signal;

#[derive(Debug, clap::Args)]
pub struct RatelimitArgs {
    /// Where gateways and sidecars call it (gRPC over mutual TLS); port 0
    /// picks a free one, which the edge tells them
    #[arg(long, default_value = "127.0.0.1:18081")]
    pub listen: std::net::SocketAddr,
    /// Plain HTTP on loopback: /metrics, /healthz, /readyz
    #[arg(long, default_value = "127.0.0.1:18082")]
    pub admin: std::net::SocketAddr,
    /// The Redis that holds the counters (shared by every replica)
    #[arg(long, env = "WEFT_REDIS", default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// How long a decision waits for Redis; then the proxy's failClosed
    /// decides. Under the rules' timeout (20ms by default), so the service
    /// answers before the proxies stop waiting
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15ms")]
    pub redis_timeout: std::time::Duration,
    /// The edge's xDS address
    #[arg(long, env = "WEFT_EDGE", default_value = "127.0.0.1:15010")]
    pub edge: std::net::SocketAddr,
    /// A file holding the credential (`weft token create --cluster C --ratelimit`)
    #[arg(long, env = "WEFT_WORKLOAD_CREDENTIAL_FILE")]
    pub credential_file: PathBuf,
    /// Its node id [default: weft-ratelimit-<random>]
    #[arg(long)]
    pub node_id: Option<String>,
}

pub async fn run(args: RatelimitArgs) -> Result<()> {
    let options = Options {
        listen: args.listen,
        admin: args.admin,
        redis: args.redis.clone(),
        redis_timeout: args.redis_timeout,
        edge: args.edge,
        credential_file: args.credential_file,
        node_id: args.node_id,
    };
    let redis = args.redis;
    weft_addons::ratelimit::run(
        options,
        |at| {
            println!(
                "weft ratelimit: node {}: rate limit service {} (mutual TLS); admin http://{}; counters in {redis}; edge {}",
                at.node, at.listen, at.admin, args.edge
            );
        },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}
