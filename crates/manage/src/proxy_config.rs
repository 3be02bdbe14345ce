//! `GET /v1/proxy-config/{cluster}/{node}`: what a live proxy holds, asked
//! of its cluster's edge at the admin address the edge reports (the
//! server must reach it: see `weft edge --admin-listen`). Reading it
//! needs read on the Cluster, as the cluster's status does.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use weft_api::Verb;
use weft_api::edge::{EdgeStatus, ProxyConfig};
use weft_api::kinds::top_level_path;

use crate::AppState;
use crate::error::ApiError;
use crate::iam::Caller;

/// How long the edge has to answer.
const EDGE_TIMEOUT: Duration = Duration::from_secs(5);

fn unavailable(message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).with_hint(
        "the server asks the edge at the admin address it reports (weft edge --admin-listen): it must be reachable from the server",
    )
}

pub async fn proxy_config(
    State(state): State<AppState>,
    caller: Caller,
    Path((cluster, node)): Path<(String, String)>,
) -> Result<Json<ProxyConfig>, ApiError> {
    caller
        .require(
            &state.store,
            Verb::Read,
            "Cluster",
            &top_level_path("Cluster", &cluster),
        )
        .await?;
    let reports = state.store.edge_reports().await?;
    let Some(report) = reports.iter().find(|r| r.cluster == cluster) else {
        return Err(ApiError::not_found(format!(
            "no edge of cluster {cluster:?} has reported"
        )));
    };
    let status: EdgeStatus = serde_json::from_str(&report.status).unwrap_or_default();
    let Some(address) = status.metrics_address else {
        return Err(unavailable(format!(
            "the edge of cluster {cluster} reports no admin address"
        )));
    };
    let url = format!(
        "http://{address}/proxies/{}/config",
        percent_encoding::utf8_percent_encode(&node, percent_encoding::NON_ALPHANUMERIC)
    );
    let client = reqwest::Client::builder()
        .timeout(EDGE_TIMEOUT)
        .build()
        .map_err(ApiError::internal)?;
    let response = client.get(&url).send().await.map_err(|e| {
        unavailable(format!(
            "the edge of cluster {cluster} does not answer at {address}: {e}"
        ))
    })?;
    match response.status() {
        StatusCode::OK => response.json().await.map(Json).map_err(|e| {
            unavailable(format!(
                "the edge of cluster {cluster} answered what is not a proxy's configuration: {e}"
            ))
        }),
        StatusCode::NOT_FOUND => Err(ApiError::not_found(format!(
            "no proxy {node:?} is connected to the edge of cluster {cluster}"
        ))),
        other => Err(unavailable(format!(
            "the edge of cluster {cluster} answered {other}"
        ))),
    }
}
