//! The port edges talk to (`weft server --edge-listen`): TLS only. The
//! server shows its own SVID, `spiffe://TD/ns/weft-system/sa/weft-server`,
//! issued by the signing root and renewed long before it expires or as
//! soon as another root signs. An edge shows its own (the one its xDS port
//! serves, under its cluster CA) on every request but its first request
//! for that CA, and it must be of the cluster its credential names.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post, put};
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use weft_identity::tls::{ServingCertificate, TrustStore};
use weft_identity::transport::Peer;
use weft_identity::{Bundle, CertRequest, SpiffeId, cluster_of_ca};

use crate::AppState;
use crate::ca::{self, CaError};
use crate::error::ApiError;
use crate::{directory, edges};

/// How long the server's certificate lives; it is renewed at half-life.
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How often the bundle and the signing root are read again.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The server's side of the edge port's TLS.
#[derive(Default)]
struct ServerIdentity {
    trust: Arc<TrustStore>,
    serving: Arc<ServingCertificate>,
    /// The root the current certificate is from, and when to renew it.
    issued: Mutex<Option<(String, OffsetDateTime)>>,
}

impl ServerIdentity {
    /// Reads the bundle, and issues a new certificate if the signing root
    /// changed or the current one is past half its life.
    async fn refresh(&self, state: &AppState) -> Result<(), CaError> {
        let trust = ca::trust(&state.store).await?;
        self.trust
            .set(Bundle::from_pem(&trust.trust_domain, &trust.bundle)?);
        let now = OffsetDateTime::now_utc();
        let due = match &*self.issued.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((root, renew_at)) => *root != trust.signer || now >= *renew_at,
            None => true,
        };
        if !due {
            return Ok(());
        }
        let root = ca::signing_root(&state.store).await?;
        let id = SpiffeId::server(root.trust_domain())?;
        let request = CertRequest::workload_key()?;
        let leaf = root.issue_svid(&request.csr, &id, SERVER_CERT_LIFETIME)?;
        self.serving.set(vec![leaf], request.key.serialize_der())?;
        *self.issued.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((trust.signer, now + SERVER_CERT_LIFETIME / 2));
        tracing::info!(%id, "the edge port serves a new certificate");
        Ok(())
    }
}

/// Checks that the connection's certificate is an edge's, under the CA of
/// `cluster` (the cluster of the request's credential).
pub(crate) fn require_edge_certificate(peer: &Peer, cluster: &str) -> Result<(), ApiError> {
    let hint = "the edge shows the certificate of its xDS port (from its cluster CA) to the server's edge port";
    let Some(id) = &peer.id else {
        return Err(ApiError::unauthenticated(
            "this request needs the edge's certificate (mutual TLS)",
        )
        .with_hint(hint));
    };
    let edge = SpiffeId::edge(id.trust_domain()).map_err(ApiError::internal)?;
    let issued_for = peer.chain.get(1).and_then(cluster_of_ca);
    if *id != edge || issued_for.as_deref() != Some(cluster) {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "wrong_certificate",
            format!(
                "the certificate is {id} under the CA of cluster {}, but the credential is for cluster {cluster}",
                issued_for.as_deref().unwrap_or("(none)")
            ),
        )
        .with_hint(hint));
    }
    Ok(())
}

/// Serves the edge endpoints on `listener` (TLS) until `state` stops.
pub async fn serve(listener: TcpListener, state: AppState) -> Result<(), CaError> {
    let identity = Arc::new(ServerIdentity::default());
    identity.refresh(&state).await?;
    let refresher = {
        let (identity, state) = (identity.clone(), state.clone());
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(REFRESH_EVERY).await;
                match identity.refresh(&state).await {
                    Ok(()) => failing = false,
                    Err(error) if !failing => {
                        tracing::error!(%error, "cannot renew the edge port's certificate; retrying");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
        })
    };
    let config =
        weft_identity::tls::server_config(identity.serving.clone(), identity.trust.clone())?;
    let failures = state.metrics.edge_handshake_failures.clone();
    let mut incoming = weft_identity::transport::incoming(
        listener,
        "edge",
        config,
        identity.trust.clone(),
        move || {
            failures.inc();
        },
    );
    let router = Router::new()
        .route("/v1/edge/config", get(edges::config))
        .route("/v1/edge/status", put(edges::status))
        .route("/v1/edge/traffic", put(crate::traffic::receive))
        .route(
            "/v1/edge/directory",
            get(directory::follow).put(directory::publish),
        )
        .route("/v1/edge/ca", post(ca::sign_intermediate))
        .layer(axum::middleware::from_fn(crate::error::errors_as_json))
        .layer(axum::middleware::from_fn(speaks_the_edge_protocol))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::observe,
        ))
        .with_state(state.clone());
    let mut stopping = state.stopping.subscribe();
    loop {
        let connection = tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(connection)) => connection,
                Some(Err(_)) => continue,
                None => break,
            },
            _ = stopping.wait_for(|stop| *stop) => break,
        };
        let service =
            TowerToHyperService::new(router.clone().layer(Extension(connection.peer().clone())));
        tokio::spawn(async move {
            let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(connection), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "an edge connection ended");
            }
        });
    }
    refresher.abort();
    Ok(())
}

/// Refuses an edge of a protocol version this server does not speak, with
/// both versions named (see [`weft_api::edge::protocol_of`]).
async fn speaks_the_edge_protocol(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let header = request
        .headers()
        .get(weft_api::edge::PROTOCOL_HEADER)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    match weft_api::edge::protocol_of(header) {
        Ok(_) => next.run(request).await,
        Err(message) => {
            tracing::warn!(%message, "refused an edge request");
            (axum::http::StatusCode::BAD_REQUEST, format!("{message}\n")).into_response()
        }
    }
}
