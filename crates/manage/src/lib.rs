//! weft's management plane: the REST API inside `weft server`.
//!
//! Requests flow: [`metrics::observe`] (metrics and the access log) →
//! [`iam::Caller`] (bearer token → user → grants) → a handler. Resource
//! handlers ([`resources`]) are generic over the kind descriptors of
//! `weft-api`; every write is validated, authorized per document and handed
//! to the store as one atomic change set, which also appends the audit
//! entries. Refused attempts are audited too.

pub mod analyze;
pub mod audit;
pub mod bootstrap;
pub mod ca;
pub mod conflicts;
pub mod directory;
pub mod edge_port;
pub mod edge_queries;
pub mod edges;
pub mod error;
pub mod iam;
pub mod metrics;
pub mod openapi;
pub mod request;
pub mod resources;
pub mod scrape_targets;
pub mod tokens;
pub mod traffic;
pub mod ui;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use tokio::net::TcpListener;
use weft_store::Store;

use crate::error::ApiError;
use crate::iam::Caller;
use crate::metrics::Metrics;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// The recent requests between services the edges sent.
    pub traffic: Arc<traffic::TrafficWindow>,
    /// Turns true when the server begins to stop. Long polls and watches
    /// end then: a graceful shutdown waits for open requests, and those
    /// would otherwise keep it waiting for as long as their clients stay.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl AppState {
    pub fn new(store: Store) -> AppState {
        AppState {
            store,
            metrics: Arc::new(Metrics::new()),
            traffic: Arc::new(traffic::TrafficWindow::default()),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Completes once the server begins to stop.
    pub async fn stopping(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|s| *s).await;
    }
}

/// Readiness for a load balancer: the store answers and the server is not
/// stopping. (`/healthz` is liveness: the process serves HTTP.)
async fn ready(State(state): State<AppState>) -> (StatusCode, String) {
    if *state.stopping.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: stopping\n".into(),
        );
    }
    match state.store.revision().await {
        Ok(_) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store does not answer ({e})\n"),
        ),
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .route(
            "/v1/openapi.json",
            get(|| async { Json(openapi::document()) }),
        )
        .route("/v1/whoami", get(whoami))
        .route("/v1/apply", post(resources::apply))
        .route("/v1/delete", post(resources::delete_documents))
        .route("/v1/analyze", get(analyze::report))
        .route(
            "/v1/proxy-config/{cluster}/{node}",
            get(edge_queries::proxy_config),
        )
        .route("/v1/explain/{cluster}", post(edge_queries::explain))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{id}", delete(tokens::revoke))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/prometheus/targets", get(scrape_targets::targets))
        .route("/v1/traffic/services", get(traffic::services))
        .route("/v1/traffic/pairs", get(traffic::pairs))
        .route("/v1/ca/roots", get(ca::list_roots).post(ca::add_root))
        .route("/v1/ca/roots/{id}/activate", post(ca::activate_root))
        .route("/v1/ca/roots/{id}/retire", post(ca::retire_root))
        .route(
            "/v1/{*rest}",
            get(resources::read)
                .put(resources::replace)
                .post(resources::create)
                .delete(resources::remove)
                .fallback(resources::other_method),
        )
        .layer(axum::middleware::from_fn(error::errors_as_json))
        .merge(ui::router())
        .fallback(|| async {
            ApiError::not_found("no such endpoint; the API is under /v1 (see /v1/openapi.json)")
        })
        .layer(DefaultBodyLimit::max(request::MAX_BODY_BYTES))
        .layer(from_fn_with_state(state.clone(), metrics::observe))
        .with_state(state)
}

async fn whoami(caller: Caller) -> Json<Caller> {
    Json(caller)
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok(left) = ca::signing_root_seconds_left(&state.store).await {
        state.metrics.root_ca_expiry.set(left);
    }
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = state.stopping.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            stopping.send_replace(true);
        })
        .await
}
