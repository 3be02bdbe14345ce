//! The server's side of the edge sync: `GET /v1/edge/config` (long poll)
//! hands an edge its cluster's configuration; `PUT /v1/edge/status` takes
//! its report. Both need an edge credential (`weft token create --cluster
//! NAME`); user tokens are refused and edge credentials work nowhere else.

use axum::Extension;
use weft_identity::transport::Peer;

use crate::edge_port::require_edge_certificate;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use weft_api::edge::{
    EdgeConfig, EdgeStatus, WorkloadCredential, parse_workload_principal,
    workload_principal_prefixes,
};
use weft_api::kinds::{KINDS, Sync, top_level_path};
use weft_store::EdgeReport;

use crate::AppState;
use crate::error::ApiError;
use crate::iam::valid_token;
use crate::request::JsonBody;

/// Longest long poll a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a long poll looks again for changes the revision does not
/// count: credentials issued or revoked (or expired) through another server
/// replica. This replica's own token writes wake it at once.
const RECHECK: Duration = Duration::from_secs(2);

/// Authenticates an edge credential; returns its cluster.
pub(crate) async fn edge_cluster(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = valid_token(state, header).await?;
    let Some(cluster) = token.user.strip_prefix("cluster:") else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only an edge credential may sync a cluster (weft token create --cluster NAME)",
        ));
    };
    if state
        .store
        .get(&top_level_path("Cluster", cluster))
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "cluster {cluster:?} of this edge credential no longer exists"
        )));
    }
    Ok(cluster.to_string())
}

/// Whether a workspace selector names `cluster` (or every cluster).
fn selects_cluster(selector: &[String], cluster: &str) -> bool {
    selector.iter().any(|entry| {
        entry
            .split_once('/')
            .is_some_and(|(c, _)| c == "*" || c == cluster)
    })
}

/// The configuration that applies to `cluster` now.
async fn config_for(state: &AppState, cluster: &str) -> Result<EdgeConfig, ApiError> {
    let store = &state.store;
    let mut resources = Vec::new();
    let mut workspaces = Vec::new();
    for ws in store.list("Workspace").await? {
        let selector: Vec<String> = ws
            .resource
            .spec
            .get("namespaceSelector")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        if selects_cluster(&selector, cluster) {
            workspaces.push(format!("{}/", ws.path));
            resources.push(ws.resource);
        }
    }
    // Kinds that sync to edges, under the workspaces that select the
    // cluster.
    let below_workspaces = KINDS
        .iter()
        .filter(|k| k.sync == Sync::ToEdges && k.name != "Workspace");
    for kind in below_workspaces {
        for stored in store.list(kind.name).await? {
            if workspaces
                .iter()
                .any(|w| stored.path.starts_with(w.as_str()))
            {
                resources.push(stored.resource);
            }
        }
    }
    let now = weft_store::now_rfc3339();
    let mut workload_credentials = Vec::new();
    let mut tokens = Vec::new();
    for prefix in workload_principal_prefixes(cluster) {
        tokens.extend(store.tokens_with_hashes(&prefix).await?);
    }
    for (token, hash) in tokens {
        let Some(principal) = parse_workload_principal(&token.user) else {
            continue;
        };
        let live = token.revoked_at.is_none()
            && token
                .expires_at
                .as_deref()
                .is_none_or(|at| at > now.as_str());
        if live {
            workload_credentials.push(WorkloadCredential {
                id: token.id,
                hash,
                namespace: principal.namespace.to_string(),
                service_account: principal.service_account.to_string(),
                expires_at: token.expires_at,
                role: principal.role,
            });
        }
    }
    // The version is a hash of what the edge gets (without server-set
    // timestamps), so an unrelated write does not wake every edge.
    let trust = crate::ca::trust(store).await?;
    let mut config = EdgeConfig {
        version: String::new(),
        cluster: cluster.to_string(),
        resources,
        workload_credentials,
        trust: Some(trust),
        locality: crate::directory::locality_of(state, cluster).await?,
    };
    let desired: Vec<_> = config.resources.iter().map(|r| r.desired()).collect();
    let digest = Sha256::new()
        .chain_update(serde_json::to_vec(&desired).unwrap_or_default())
        .chain_update(serde_json::to_vec(&config.workload_credentials).unwrap_or_default())
        .chain_update(serde_json::to_vec(&config.trust).unwrap_or_default())
        .chain_update(serde_json::to_vec(&config.locality).unwrap_or_default())
        .finalize();
    config.version = hex::encode(&digest[..8]);
    Ok(config)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigQuery {
    /// The version the edge has; the answer waits until there is another.
    #[serde(default)]
    pub version: String,
    /// Seconds to wait for a change before answering 304.
    #[serde(default)]
    pub wait: u64,
}

pub async fn config(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(peer): Extension<Peer>,
    Query(query): Query<ConfigQuery>,
) -> Result<Response, ApiError> {
    let cluster = edge_cluster(&state, &headers).await?;
    require_edge_certificate(&peer, &cluster)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(query.wait).min(MAX_WAIT);
    let mut tokens = state.store.credential_changes();
    loop {
        tokens.mark_unchanged();
        let revision = state.store.revision().await?;
        let config = config_for(&state, &cluster).await?;
        if config.version != query.version {
            return Ok(Json(config).into_response());
        }
        let wake = tokio::time::Instant::now() + RECHECK;
        if wake >= deadline {
            tokio::time::sleep_until(deadline).await;
            if config_for(&state, &cluster).await?.version == query.version {
                return Ok(StatusCode::NOT_MODIFIED.into_response());
            }
            continue;
        }
        tokio::select! {
            changed = state.store.wait_for_change(revision) => { changed?; }
            _ = tokens.changed() => {}
            () = state.stopping() => {
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "the server is stopping")
                    .with_hint("the edge keeps serving its configuration and asks again"));
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(peer): Extension<Peer>,
    JsonBody(status): JsonBody<EdgeStatus>,
) -> Result<StatusCode, ApiError> {
    let cluster = edge_cluster(&state, &headers).await?;
    require_edge_certificate(&peer, &cluster)?;
    let report = EdgeReport {
        cluster,
        status: serde_json::to_string(&status).unwrap_or_default(),
        reported_at: weft_store::now_rfc3339(),
    };
    state.store.put_edge_report(&report).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How long after its last report an edge still counts as connected.
pub const CONNECTED_WITHIN: Duration = Duration::from_secs(15);

/// The `status` shown on a Cluster: its edge's last report, whether it is
/// connected, and when it was last seen.
pub fn cluster_status(report: Option<&EdgeReport>) -> serde_json::Value {
    let Some(report) = report else {
        return serde_json::json!({"edge": "never connected", "connected": false});
    };
    let status: EdgeStatus = serde_json::from_str(&report.status).unwrap_or_default();
    let seen = humantime::parse_rfc3339_weak(&report.reported_at).ok();
    let age = seen.and_then(|t| std::time::SystemTime::now().duration_since(t).ok());
    let connected = age.is_some_and(|a| a <= CONNECTED_WITHIN);
    let nacks = status.proxies.iter().filter(|p| p.nack.is_some()).count();
    serde_json::json!({
        "edge": if connected { "connected" } else { "disconnected" },
        "connected": connected,
        "lastSeen": report.reported_at,
        "configVersion": status.config_version,
        "fromDisk": status.from_disk,
        "proxies": status.proxies.iter().filter(|p| p.connected).count(),
        "nacks": nacks,
        "errors": status.errors,
        "proxyDetails": status.proxies,
        "ca": status.ca,
        "directory": status.directory,
    })
}

/// The `status` shown on a Gateway: its servers, the gateway proxies
/// each cluster's edge reports running it (connected, in sync, or what
/// they refused), and the problems edges found translating it, with
/// their field paths.
pub fn gateway_status(
    reports: &[EdgeReport],
    path: &str,
    gateway: &weft_api::Resource,
) -> serde_json::Value {
    let spec: Option<weft_api::gateway::GatewaySpec> =
        serde_json::from_value(gateway.spec.clone()).ok();
    let Some(spec) = spec else {
        return serde_json::json!({});
    };
    let selector = &spec.workload_selector;
    let mut servers = Vec::new();
    for server in &spec.http {
        let tls = match &server.tls {
            None => "none",
            Some(tls) if tls.client_ca.is_some() => "mutual",
            Some(_) => "simple",
        };
        servers.push(serde_json::json!({
            "name": server.name, "port": server.port, "hostname": server.hostname, "tls": tls,
        }));
    }
    for egress in &spec.egress {
        servers.push(serde_json::json!({"egress": egress.host, "port": egress.port()}));
    }
    let mut instances = serde_json::Map::new();
    let mut errors = Vec::new();
    let (mut running, mut nacks) = (0, 0);
    for report in reports {
        let status: EdgeStatus = serde_json::from_str(&report.status).unwrap_or_default();
        let here: Vec<serde_json::Value> = status
            .proxies
            .iter()
            .filter(|p| {
                p.role == "gateway"
                    && p.namespace == selector.namespace
                    && selector
                        .labels
                        .iter()
                        .all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .map(|p| {
                running += usize::from(p.connected);
                nacks += usize::from(p.nack.is_some());
                serde_json::json!({
                    "node": p.node, "address": p.address, "connected": p.connected,
                    "inSync": p.in_sync, "nack": p.nack,
                })
            })
            .collect();
        if !here.is_empty() {
            instances.insert(report.cluster.clone(), here.into());
        }
        for e in status.errors.iter().filter(|e| e.path == path) {
            errors.push(serde_json::json!({
                "cluster": report.cluster, "field": e.field, "message": e.message,
            }));
        }
    }
    let hostnames: std::collections::BTreeSet<&str> = spec
        .http
        .iter()
        .map(|s| s.hostname.as_str())
        .chain(spec.tls_passthrough.iter().map(|s| s.hostname.as_str()))
        .collect();
    serde_json::json!({
        "hostnames": hostnames,
        "running": running,
        "nacks": nacks,
        "errorCount": errors.len(),
        "servers": servers,
        "instances": instances,
        "errors": errors,
    })
}
