//! Prometheus metrics of the management plane, served at `/metrics`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::iam::CallerSlot;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    /// Failed authentications by reason (missing, unknown, revoked, …).
    pub auth_failures: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Resource changes written, by outcome (created, updated, deleted).
    pub changes: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Seconds until the signing root CA expires; set when scraped.
    pub root_ca_expiry: Gauge,
    /// TLS handshakes refused on the edge port.
    pub edge_handshake_failures: Counter,
    /// Directory items written (changed, added or withdrawn) by edges'
    /// publications; publications that changed nothing write none.
    pub directory_items_written: Counter,
    /// Publications by outcome (changed, unchanged).
    pub directory_publications: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weft_server");
        let requests = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let auth_failures = Family::default();
        let changes = Family::default();
        registry.register(
            "http_requests",
            "API requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "API request latency by method and route",
            latency.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused for want of a valid token, by reason",
            auth_failures.clone(),
        );
        registry.register(
            "resource_changes",
            "Resources created, updated or deleted",
            changes.clone(),
        );
        let root_ca_expiry = Gauge::default();
        registry.register(
            "root_ca_expiry_seconds",
            "Seconds until the signing root CA expires (rotate it with weft ca well before)",
            root_ca_expiry.clone(),
        );
        let edge_handshake_failures = Counter::default();
        registry.register(
            "edge_tls_handshake_failures",
            "TLS handshakes refused on the edge port (plaintext, untrusted certificates)",
            edge_handshake_failures.clone(),
        );
        let directory_items_written = Counter::default();
        registry.register(
            "directory_items_written",
            "Directory items (sites, services) written from edges' publications",
            directory_items_written.clone(),
        );
        let directory_publications = Family::default();
        registry.register(
            "directory_publications",
            "Directory entries published by edges, by outcome (changed, unchanged)",
            directory_publications.clone(),
        );
        Metrics {
            directory_items_written,
            directory_publications,
            registry,
            requests,
            latency,
            auth_failures,
            changes,
            root_ca_expiry,
            edge_handshake_failures,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts and times every request and writes one structured log line.
pub async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let slot = CallerSlot::default();
    request.extensions_mut().insert(slot.clone());
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let uri_path = request.uri().path().to_string();
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    let user = slot.0.get().map_or("-", String::as_str);
    state
        .metrics
        .requests
        .get_or_create(&vec![
            ("method", method.clone()),
            ("route", route.clone()),
            ("status", status.to_string()),
        ])
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&vec![("method", method.clone()), ("route", route)])
        .observe(seconds);
    tracing::info!(target: "weft::access", %method, path = %uri_path, status, user, ms = seconds * 1000.0, "request");
    response
}
