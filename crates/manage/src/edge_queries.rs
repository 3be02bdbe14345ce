//! Questions only a cluster's edge can answer, asked of it at the admin
//! address it reports (the server must reach it: see `weft edge
//! --admin-listen`): `GET /v1/proxy-config/{cluster}/{node}`, what a
//! live proxy holds, and `POST /v1/explain/{cluster}`, what the mesh
//! does with one request. Both need read on the Cluster, as its status
//! does: they show what its proxies are sent, whichever workspace it
//! comes from.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use weft_api::Verb;
use weft_api::edge::{EdgeStatus, ProxyConfig};
use weft_api::explain::{ExplainRequest, Explanation};
use weft_api::kinds::top_level_path;

use crate::AppState;
use crate::error::{ApiError, Detail};
use crate::iam::Caller;
use crate::request::JsonBody;

/// How long the edge has to answer.
const EDGE_TIMEOUT: Duration = Duration::from_secs(5);

fn unavailable(message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).with_hint(
        "the server asks the edge at the admin address it reports (weft edge --admin-listen): it must be reachable from the server",
    )
}

/// Where cluster `cluster`'s edge answers, once the caller may read it.
async fn edge_address(
    state: &AppState,
    caller: &Caller,
    cluster: &str,
) -> Result<String, ApiError> {
    caller
        .require(
            &state.store,
            Verb::Read,
            "Cluster",
            &top_level_path("Cluster", cluster),
        )
        .await?;
    let reports = state.store.edge_reports().await?;
    let Some(report) = reports.iter().find(|r| r.cluster == cluster) else {
        return Err(ApiError::not_found(format!(
            "no edge of cluster {cluster:?} has reported"
        )));
    };
    let status: EdgeStatus = serde_json::from_str(&report.status).unwrap_or_default();
    status.metrics_address.ok_or_else(|| {
        unavailable(format!(
            "the edge of cluster {cluster} reports no admin address"
        ))
    })
}

/// The edge's answer to `request`; its 404 and 422 pass on with its
/// message.
async fn ask<T: DeserializeOwned>(
    cluster: &str,
    address: &str,
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<T, ApiError> {
    let response = request.timeout(EDGE_TIMEOUT).send().await.map_err(|e| {
        unavailable(format!(
            "the edge of cluster {cluster} does not answer at {address}: {e}"
        ))
    })?;
    let status = response.status();
    if status == StatusCode::OK {
        return response.json().await.map_err(|e| {
            unavailable(format!(
                "the edge of cluster {cluster} answered what is not {what}: {e}"
            ))
        });
    }
    let message = response
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|body| body["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("the edge of cluster {cluster} answered {status}"));
    Err(match status {
        StatusCode::NOT_FOUND => ApiError::not_found(message),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::invalid(message, Vec::new()),
        _ => unavailable(message),
    })
}

fn client() -> Result<reqwest::Client, ApiError> {
    reqwest::Client::builder()
        .build()
        .map_err(ApiError::internal)
}

pub async fn proxy_config(
    State(state): State<AppState>,
    caller: Caller,
    Path((cluster, node)): Path<(String, String)>,
) -> Result<Json<ProxyConfig>, ApiError> {
    let address = edge_address(&state, &caller, &cluster).await?;
    let url = format!(
        "http://{address}/proxies/{}/config",
        percent_encoding::utf8_percent_encode(&node, percent_encoding::NON_ALPHANUMERIC)
    );
    let request = client()?.get(url);
    ask(&cluster, &address, request, "a proxy's configuration")
        .await
        .map(Json)
}

pub async fn explain(
    State(state): State<AppState>,
    caller: Caller,
    Path(cluster): Path<String>,
    JsonBody(question): JsonBody<ExplainRequest>,
) -> Result<Json<Explanation>, ApiError> {
    if let Err(problems) = question.check() {
        let details = problems
            .into_iter()
            .map(|p| Detail {
                field: p.field,
                message: p.message,
                ..Detail::default()
            })
            .collect();
        return Err(ApiError::invalid(
            "the request to explain is not valid",
            details,
        ));
    }
    let address = edge_address(&state, &caller, &cluster).await?;
    let request = client()?
        .post(format!("http://{address}/explain"))
        .json(&question);
    ask(&cluster, &address, request, "an explanation")
        .await
        .map(Json)
}
