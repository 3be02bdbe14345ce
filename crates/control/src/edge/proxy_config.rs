//! `GET /proxies/{node}/config` on the edge's admin port: what one proxy
//! holds (what `weft proxy-config` shows, through the server): the
//! resources the edge sent it, in the shape of Envoy's config dump, which
//! versions it accepted, and the certificate the edge issued it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use weft_api::edge::{ProxyConfig, TypeVersions};
use weft_xds::ResourceType;

use super::{Edge, problem};

pub(super) async fn config(State(edge): State<Arc<Edge>>, Path(node): Path<String>) -> Response {
    let Some(snapshot) = edge.cache.snapshot(&node) else {
        return problem(
            StatusCode::NOT_FOUND,
            format!(
                "no proxy {node:?} has a configuration at the edge of {}",
                edge.cluster
            ),
        );
    };
    let status = edge.cache.status(&node).unwrap_or_default();
    let config_dump = match weft_xds::json::config_dump(&snapshot) {
        Ok(dump) => dump,
        Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let versions = ResourceType::ALL
        .into_iter()
        .filter(|t| snapshot.len(*t) > 0 || status.acked.contains_key(t))
        .map(|t| {
            (
                t.short().to_string(),
                TypeVersions {
                    sent: snapshot.version(t).to_string(),
                    acked: status.acked.get(&t).cloned(),
                },
            )
        })
        .collect();
    Json(ProxyConfig {
        in_sync: snapshot.accepted(&status.acked),
        certificate: edge.ca.certificate_of(&node),
        node,
        versions,
        config_dump,
    })
    .into_response()
}
