//! `GET /v1/analyze`: what `weft analyze` reports about the stored
//! configuration ([`weft_api::analysis`]), for the resources the caller
//! may read. The whole configuration is analyzed (a conflict's other
//! side may sit where the caller cannot look); a side they may not read
//! is not named. What depends on running instances (a route's subset
//! none carries) comes from the edges' last reports, here and after
//! each apply.

use axum::Json;
use axum::extract::State;
use weft_api::Verb;
use weft_api::analysis::{Finding, Report, Running, analyze, idle_subsets, unreachable_services};
use weft_api::conflicts::{INVOLVED, Placed};
use weft_api::edge::{EdgeStatus, ProxyReport};
use weft_api::kinds::kind_of_path;

use crate::AppState;
use crate::error::ApiError;
use crate::iam::Caller;

pub async fn report(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Report>, ApiError> {
    let mut stored = Vec::new();
    for kind in INVOLVED.iter().chain(&["Cluster"]) {
        stored.extend(state.store.list(kind).await?);
    }
    let placed: Vec<Placed> = stored
        .iter()
        .map(|s| Placed {
            path: &s.path,
            parent: &s.parent,
            resource: &s.resource,
        })
        .collect();
    let readable =
        |path: &str| kind_of_path(path).is_some_and(|k| caller.can(Verb::Read, k.name, path));
    let mut findings = analyze(&placed);
    findings.extend(running_warnings(&state, &placed).await?);
    findings.extend(unreachable_services(
        &placed,
        &running_instances(&running(&state).await?),
    ));
    let findings = findings
        .into_iter()
        .filter(|f| readable(&f.path))
        .map(|mut f| {
            if !f.other_path.is_empty() && !readable(&f.other_path) {
                f.other_path.clear();
                f.other_field.clear();
                f.message
                    .push_str(" (the other side is a resource you may not read)");
            }
            f
        })
        .collect();
    Ok(Json(Report { findings }))
}

/// Each cluster's connected instances, from its edge's last report.
async fn running(state: &AppState) -> Result<Vec<(String, ProxyReport)>, ApiError> {
    let mut out = Vec::new();
    for report in state.store.edge_reports().await? {
        let status: EdgeStatus = serde_json::from_str(&report.status).unwrap_or_default();
        out.extend(
            status
                .proxies
                .into_iter()
                .filter(|p| p.connected && p.role.is_empty())
                .map(|p| (report.cluster.clone(), p)),
        );
    }
    Ok(out)
}

/// What `placed` (ServiceRoutes among them) means given what runs now.
pub async fn running_warnings(
    state: &AppState,
    placed: &[Placed<'_>],
) -> Result<Vec<Finding>, ApiError> {
    if !placed.iter().any(|p| p.resource.kind == "ServiceRoute") {
        return Ok(Vec::new());
    }
    let running = running(state).await?;
    Ok(idle_subsets(placed, &running_instances(&running)))
}

fn running_instances(running: &[(String, ProxyReport)]) -> Vec<Running<'_>> {
    running
        .iter()
        .map(|(cluster, p)| Running {
            cluster,
            namespace: &p.namespace,
            service: &p.service,
            labels: &p.labels,
        })
        .collect()
}
