//! What every add-on service does around its own API: listen (gRPC over
//! mutual TLS with the service's workload identity, accepting callers of
//! the trust domain; plain HTTP admin with `/healthz`, `/readyz` and
//! `/metrics`), register with its edge and follow its resources, and
//! stop when told.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use envoy_types::pb::google::protobuf::Any;
use prometheus_client::registry::Registry;
use weft_agent::addon::Addon;
use weft_agent::workload::Workload;

#[derive(Debug, thiserror::Error)]
pub enum AddonError {
    #[error("cannot listen on {address} ({what}): {source}")]
    Listen {
        what: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Agent(#[from] weft_agent::AgentError),
    #[error(transparent)]
    Identity(#[from] weft_identity::IdentityError),
    #[error("serving {what}: {reason}")]
    Serve { what: &'static str, reason: String },
}

pub struct Options {
    /// What the service is, for messages and metrics.
    pub what: &'static str,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub edge: SocketAddr,
    pub credential_file: PathBuf,
    /// The resources it follows.
    pub type_url: String,
}

/// The edge's resources as `M`, the one type the service follows; any
/// other is refused (and NACKed with this text).
pub fn decode<M: prost::Message + prost::Name + Default>(
    resources: &[Any],
) -> Result<Vec<M>, String> {
    resources
        .iter()
        .map(|any| {
            if any.type_url != M::type_url() {
                return Err(format!("expected {}, got {}", M::type_url(), any.type_url));
            }
            M::decode(any.value.as_slice()).map_err(|e| format!("unreadable {}: {e}", M::NAME))
        })
        .collect()
}

/// Where the running service listens, once it does.
pub struct Listening {
    pub node: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

async fn bind(
    what: &'static str,
    address: SocketAddr,
) -> Result<tokio::net::TcpListener, AddonError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| AddonError::Listen {
            what,
            address,
            source,
        })
}

/// Runs an add-on service: `workload` is what it announces (given where
/// it listens), `apply` takes each update of its resources (an error is
/// refused back to the edge, the last good update kept), `routes` is its
/// gRPC API. Returns when `shutdown` completes.
pub async fn serve(
    options: Options,
    workload: impl FnOnce(SocketAddr) -> Workload,
    mut apply: impl FnMut(&[Any]) -> Result<(), String> + Send + 'static,
    routes: impl FnOnce(&Addon) -> tonic::service::Routes,
    mut registry: Registry,
    announce: impl FnOnce(&Listening),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AddonError> {
    let grpc_listener = bind(options.what, options.listen).await?;
    let admin_listener = bind("admin", options.admin).await?;
    let listen = grpc_listener.local_addr().unwrap_or(options.listen);
    let admin_address = admin_listener.local_addr().unwrap_or(options.admin);

    let addon =
        Arc::new(Addon::start(workload(listen), options.edge, &options.credential_file).await?);
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let follow = move |resources: &[Any]| {
        apply(resources)?;
        let _ = ready_tx.send(true);
        Ok(())
    };
    tokio::spawn(addon.clone().follow(options.type_url.clone(), follow));

    let tls = weft_identity::tls::server_config(addon.certificate.clone(), addon.trust.clone())?;
    let refused = prometheus_client::metrics::counter::Counter::<u64>::default();
    registry.register(
        "weft_addon_tls_handshake_failures",
        "Connections refused for want of a certificate of the trust domain",
        refused.clone(),
    );
    let incoming = weft_identity::transport::incoming(
        grpc_listener,
        options.what,
        tls,
        addon.trust.clone(),
        move || {
            refused.inc();
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut grpc_stop = stop_rx.clone();
    let grpc = tonic::transport::Server::builder()
        .add_routes(routes(&addon))
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
                            "nothing from the edge yet\n",
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
        listen,
        admin: admin_address,
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (grpc, admin) = tokio::join!(grpc, admin.into_future());
    grpc.map_err(|e| AddonError::Serve {
        what: options.what,
        reason: e.to_string(),
    })?;
    admin.map_err(|e| AddonError::Serve {
        what: "the admin port",
        reason: e.to_string(),
    })?;
    Ok(())
}
