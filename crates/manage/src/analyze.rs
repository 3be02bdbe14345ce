//! `GET /v1/analyze`: what `weft analyze` reports about the stored
//! configuration ([`weft_api::analysis`]), for the resources the caller
//! may read. The whole configuration is analyzed (a conflict's other
//! side may sit where the caller cannot look); a side they may not read
//! is not named.

use axum::Json;
use axum::extract::State;
use weft_api::Verb;
use weft_api::analysis::{Report, analyze};
use weft_api::conflicts::{INVOLVED, Placed};
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
    let findings = analyze(&placed)
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
