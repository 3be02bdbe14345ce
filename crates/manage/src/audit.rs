//! `GET /v1/audit` and `GET /v1/audit/verify`.
//!
//! A caller sees only entries about resources they may read. Checking the
//! chain needs read on every kind at the top level.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use weft_api::Verb;
use weft_store::{AuditEntry, AuditFilter, ChainReport};

use crate::AppState;
use crate::error::ApiError;
use crate::iam::Caller;

/// Entries read from the store per request before filtering by permission.
const SCAN_LIMIT: i64 = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    /// A resource path; entries about it and everything below it.
    pub path: Option<String>,
    pub user: Option<String>,
    /// The newest this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

fn normalize_time(field: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    value
        .map(|v| {
            humantime::parse_rfc3339_weak(&v)
                .map(|t| humantime::format_rfc3339_millis(t).to_string())
                .map_err(|e| {
                    ApiError::bad_request(format!("{field}: {v:?} is not an RFC 3339 time: {e}"))
                })
        })
        .transpose()
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let filter = AuditFilter {
        since: normalize_time("since", query.since)?,
        until: normalize_time("until", query.until)?,
        path: query.path.map(|p| p.trim_matches('/').to_string()),
        actor: query.user,
        limit: SCAN_LIMIT,
    };
    let mut visible: Vec<AuditEntry> = state
        .store
        .audit(&filter)
        .await?
        .into_iter()
        .filter(|e| caller.can(Verb::Read, &e.kind, &e.path))
        .collect();
    let skip = visible.len().saturating_sub(limit);
    Ok(Json(visible.split_off(skip)))
}

pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ChainReport>, ApiError> {
    caller.require(&state.store, Verb::Read, "*", "").await?;
    let report = state.store.verify_audit().await?;
    if !report.intact {
        tracing::error!(problem = ?report.problem, "the audit log's hash chain is broken");
    }
    Ok(Json(report))
}
