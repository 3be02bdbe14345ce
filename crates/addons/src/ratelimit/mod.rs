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

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use prometheus_client::registry::Registry;
use prost::Name;
use weft_agent::addon::Addon;
use weft_agent::workload::{Role, Workload};
use weft_xds::ratelimit::RateLimitRules;

pub use counter::{CountError, Counter};
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

#[derive(Debug, thiserror::Error)]
pub enum RatelimitError {
    #[error("cannot listen on {address} ({what}): {source}")]
    Listen {
        what: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the Redis address {url:?}: {source}; hint: give --redis redis://HOST:PORT")]
    Redis {
        url: String,
        #[source]
        source: CountError,
    },
    #[error(transparent)]
    Agent(#[from] weft_agent::AgentError),
    #[error(transparent)]
    Identity(#[from] weft_identity::IdentityError),
    #[error("serving {what}: {reason}")]
    Serve { what: &'static str, reason: String },
}

/// Where the running service listens, once it does.
pub struct Listening {
    pub node: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// Runs the service until `shutdown` completes; `announce` is told where
/// it listens once it has its certificate.
pub async fn run(
    options: Options,
    announce: impl FnOnce(&Listening),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RatelimitError> {
    let listen = |what, address| async move {
        tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| RatelimitError::Listen {
                what,
                address,
                source,
            })
    };
    let grpc_listener = listen("rate limit service", options.listen).await?;
    let admin_listener = listen("admin", options.admin).await?;
    let bound = |l: &tokio::net::TcpListener, fallback| l.local_addr().unwrap_or(fallback);
    let (grpc_address, admin_address) = (
        bound(&grpc_listener, options.listen),
        bound(&admin_listener, options.admin),
    );
    let counter = Counter::new(&options.redis, options.redis_timeout).map_err(|source| {
        RatelimitError::Redis {
            url: options.redis.clone(),
            source,
        }
    })?;

    let workload = Workload {
        node: options.node_id.clone().unwrap_or_default(),
        service: weft_identity::RATELIMIT_ACCOUNT.into(),
        namespace: weft_identity::RESERVED_NAMESPACE.into(),
        service_account: weft_identity::RATELIMIT_ACCOUNT.into(),
        labels: Default::default(),
        address: grpc_address.ip().to_string(),
        port: grpc_address.port(),
        app_port: None,
        outbound_port: None,
        role: Role::Ratelimit,
        calls: Vec::new(),
    };
    let addon = Arc::new(Addon::start(workload, options.edge, &options.credential_file).await?);

    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let rules = Arc::new(RwLock::new(Arc::new(RuleTable::default())));
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    {
        let (rules, metrics) = (rules.clone(), metrics.clone());
        let apply = move |resources: &[envoy_types::pb::google::protobuf::Any]| {
            let table = RuleTable::from_resources(resources)?;
            tracing::info!(rules = table.len(), "rate limit rules from the edge");
            metrics.rules.set(table.len() as i64);
            metrics.rule_updates.inc();
            *rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
            let _ = ready_tx.send(true);
            Ok(())
        };
        tokio::spawn(addon.clone().follow(RateLimitRules::type_url(), apply));
    }

    let limiter = Limiter {
        rules,
        counter,
        metrics,
    };
    let tls = weft_identity::tls::server_config(addon.certificate.clone(), addon.trust.clone())?;
    let refused = prometheus_client::metrics::counter::Counter::<u64>::default();
    registry.register(
        "weft_ratelimit_tls_handshake_failures",
        "Connections refused for want of a certificate of the trust domain",
        refused.clone(),
    );
    let incoming = weft_identity::transport::incoming(
        grpc_listener,
        "rate limit service",
        tls,
        addon.trust.clone(),
        move || {
            refused.inc();
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut grpc_stop = stop_rx.clone();
    let grpc = tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(limiter))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = grpc_stop.changed().await;
        });

    let registry = Arc::new(registry);
    let admin = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = *ready_rx.borrow();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no rules from the edge yet\n",
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut text = String::new();
                    if let Err(error) =
                        prometheus_client::encoding::text::encode(&mut text, &registry)
                    {
                        tracing::error!(%error, "cannot encode metrics");
                    }
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        );
    let mut admin_stop = stop_rx.clone();
    let admin = axum::serve(admin_listener, admin).with_graceful_shutdown(async move {
        let _ = admin_stop.changed().await;
    });

    announce(&Listening {
        node: addon.workload.node.clone(),
        listen: grpc_address,
        admin: admin_address,
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (grpc, admin) = tokio::join!(grpc, admin.into_future());
    grpc.map_err(|e| RatelimitError::Serve {
        what: "the rate limit service",
        reason: e.to_string(),
    })?;
    admin.map_err(|e| RatelimitError::Serve {
        what: "the admin port",
        reason: e.to_string(),
    })?;
    Ok(())
}
