//! `weft ratelimit` and `weft authservice`: the command lines of the
//! add-on services (`weft_addons`).

use std::path::PathBuf;

use anyhow::Result;

use crate::server::shutdown_signal;

/// How an add-on service reaches its edge, and who it is there.
#[derive(Debug, clap::Args)]
pub struct EdgeArgs {
    /// The edge's xDS address
    #[arg(long, env = "WEFT_EDGE", default_value = "127.0.0.1:15010")]
    pub edge: std::net::SocketAddr,
    /// A file holding the service's credential (`weft token create
    /// --cluster C --ratelimit`, or `--authservice`)
    #[arg(long, env = "WEFT_WORKLOAD_CREDENTIAL_FILE")]
    pub credential_file: PathBuf,
    /// Its node id [default: the service's name and a random suffix]
    #[arg(long)]
    pub node_id: Option<String>,
}

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
    #[command(flatten)]
    pub edge: EdgeArgs,
}

pub async fn run_ratelimit(args: RatelimitArgs) -> Result<()> {
    let options = weft_addons::ratelimit::Options {
        listen: args.listen,
        admin: args.admin,
        redis: args.redis.clone(),
        redis_timeout: args.redis_timeout,
        edge: args.edge.edge,
        credential_file: args.edge.credential_file,
        node_id: args.edge.node_id,
    };
    let (redis, edge) = (args.redis, args.edge.edge);
    weft_addons::ratelimit::run(
        options,
        |at| {
            println!(
                "weft ratelimit: node {}: rate limit service {} (mutual TLS); admin http://{}; counters in {redis}; edge {}",
                at.node, at.listen, at.admin, edge
            );
        },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct AuthserviceArgs {
    /// Where gateways call it (gRPC over mutual TLS); port 0 picks a free
    /// one, which the edge tells them
    #[arg(long, default_value = "127.0.0.1:18083")]
    pub listen: std::net::SocketAddr,
    /// Plain HTTP on loopback: /metrics, /healthz, /readyz
    #[arg(long, default_value = "127.0.0.1:18084")]
    pub admin: std::net::SocketAddr,
    /// The directory of client secrets: one file per `clientSecret` name
    /// the Gateways give (0600; never sent to the server)
    #[arg(long, env = "WEFT_AUTHSERVICE_SECRETS")]
    pub secrets: PathBuf,
    /// The Redis for servers whose sessions live there (`session.store:
    /// redis`): sessions outlive a restart and replicas share them
    #[arg(long, env = "WEFT_REDIS")]
    pub redis: Option<String>,
    #[command(flatten)]
    pub edge: EdgeArgs,
}

pub async fn run_authservice(args: AuthserviceArgs) -> Result<()> {
    let options = weft_addons::authservice::Options {
        listen: args.listen,
        admin: args.admin,
        redis: args.redis.clone(),
        secrets: args.secrets.clone(),
        edge: args.edge.edge,
        credential_file: args.edge.credential_file,
        node_id: args.edge.node_id,
    };
    let edge = args.edge.edge;
    let sessions = args
        .redis
        .map_or("memory; Redis not given".to_string(), |r| {
            format!("memory or {r}")
        });
    weft_addons::authservice::run(
        options,
        |at| {
            println!(
                "weft authservice: node {}: sign-in service {} (mutual TLS); admin http://{}; client secrets in {}; sessions in {sessions}; edge {}",
                at.node,
                at.listen,
                at.admin,
                args.secrets.display(),
                edge
            );
        },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}
