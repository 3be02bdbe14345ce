//! `GET /v1/prometheus/targets`: where Prometheus finds every edge's
//! `/metrics` (its HTTP service discovery format), from the address each
//! edge reports with its status; only clusters the caller may read.
//! `weft x prometheus-config` writes a scrape job that uses it.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use std::collections::BTreeMap;
use weft_api::edge::EdgeStatus;
use weft_api::iam::Verb;
use weft_api::kinds::top_level_path;

use crate::AppState;
use crate::error::ApiError;
use crate::iam::Caller;

/// One target group of Prometheus' HTTP service discovery.
#[derive(Debug, Serialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

pub async fn targets(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TargetGroup>>, ApiError> {
    let mut groups = Vec::new();
    for report in state.store.edge_reports().await? {
        if !caller.can(
            Verb::Read,
            "Cluster",
            &top_level_path("Cluster", &report.cluster),
        ) {
            continue;
        }
        let status: EdgeStatus = serde_json::from_str(&report.status).unwrap_or_default();
        let Some(address) = status.metrics_address else {
            continue;
        };
        groups.push(TargetGroup {
            targets: vec![address],
            labels: [("weft_cluster".to_string(), report.cluster.clone())].into(),
        });
    }
    Ok(Json(groups))
}
