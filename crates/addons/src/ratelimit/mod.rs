//! `weft ratelimit`: Envoy's rate limit service for a cluster's gateways
//! and sidecars, counting in Redis.
//!
//! Data flows: the service gets a workload identity from its edge and
//! announces itself on an ADS stream ([`weft_agent::addon`]); the edge
//! sends it every rule of the cluster ([`rules`]) and tells the proxies
//! where it listens. Proxies call it over mutual TLS with one descriptor
//! per rule a request falls under ([`service`]); it counts them in Redis
//! in fixed windows ([`counter`]) and answers within the proxies' wait.
//! Its metrics and health are on a separate plain-HTTP admin port.

mod counter;
mod metrics;
mod rules;
mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use envoy_types::pb::google::protobuf::Any;
use prometheus_client::registry::Registry;
use prost::Name;
use weft_agent::addon::Addon;
use weft_agent::workload::{Role, Workload};
use weft_xds::ratelimit::RateLimitRules;

use crate::serve::{AddonError, Listening, serve};

pub use counter::Counter;
pub use rules::RuleTable;

use metrics::Metrics;
use service::Limiter;

#[derive(Debug, Clone)]
pub struct Options {
    /// Where proxies call it (mutual TLS, gRPC).
    pub listen: SocketAddr,
    /// Plain HTTP: `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    pub redis: String,
    /// How long a decision waits for Redis.
    pub redis_timeout: Duration,
    pub edge: SocketAddr,
    pub credential_file: PathBuf,
    pub node_id: Option<String>,
}

/// Runs the service until `shutdown` completes; `announce` is told where
/// it listens once it has its certificate.
pub async fn run(
    options: Options,
    announce: impl FnOnce(&Listening),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AddonError> {
    let counter = Counter::new(&options.redis, options.redis_timeout).map_err(|e| {
        AddonError::Config(format!(
            "the Redis address {:?}: {e}; hint: give --redis redis://HOST:PORT",
            options.redis
        ))
    })?;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let rules = Arc::new(RwLock::new(Arc::new(RuleTable::default())));
    let apply = {
        let (rules, metrics) = (rules.clone(), metrics.clone());
        move |resources: &[Any]| {
            let table = RuleTable::from_resources(resources)?;
            tracing::info!(rules = table.len(), "rate limit rules from the edge");
            metrics.rules.set(table.len() as i64);
            metrics.rule_updates.inc();
            *rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
            Ok(())
        }
    };
    let limiter = Limiter {
        rules,
        counter,
        metrics,
    };
    let workload = |address: SocketAddr| Workload {
        node: options.node_id.clone().unwrap_or_default(),
        service: weft_identity::RATELIMIT_ACCOUNT.into(),
        namespace: weft_identity::RESERVED_NAMESPACE.into(),
        service_account: weft_identity::RATELIMIT_ACCOUNT.into(),
        labels: Default::default(),
        address: address.ip().to_string(),
        port: address.port(),
        app_port: None,
        outbound_port: None,
        role: Role::Ratelimit,
        calls: Vec::new(),
    };
    serve(
        crate::serve::Options {
            what: "rate limit service",
            listen: options.listen,
            admin: options.admin,
            edge: options.edge,
            credential_file: options.credential_file,
            type_url: RateLimitRules::type_url(),
        },
        workload,
        apply,
        |_: &Addon| tonic::service::Routes::new(RateLimitServiceServer::new(limiter)),
        registry,
        announce,
        shutdown,
    )
    .await
}
