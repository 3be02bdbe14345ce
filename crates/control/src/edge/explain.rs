//! `POST /explain` on the edge's admin port: what the mesh does with one
//! request (`weft explain`, through the server), worked out from the
//! configuration, registry and directory the edge translates now.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use weft_api::explain::ExplainRequest;

use super::build::parse;
use super::{Edge, problem};
use crate::translate::{ExplainError, explain};

pub(super) async fn answer(
    State(edge): State<Arc<Edge>>,
    Json(question): Json<ExplainRequest>,
) -> Response {
    if let Err(problems) = question.check() {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return problem(StatusCode::UNPROCESSABLE_ENTITY, lines.join("; "));
    }
    let Some(config) = edge.config_tx.borrow().clone() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the edge of {} has no configuration yet", edge.cluster),
        );
    };
    let directory = edge.directory_tx.borrow().0.clone();
    let workloads = edge.registry.workloads();
    // Translation is CPU work: off the runtime's threads.
    let answered = tokio::task::spawn_blocking(move || {
        explain(
            &parse(&config),
            &config.resources,
            &workloads,
            &directory,
            &question,
        )
    })
    .await;
    match answered {
        Ok(Ok(explanation)) => Json(explanation).into_response(),
        Ok(Err(e @ ExplainError::UnknownCaller(_))) => {
            problem(StatusCode::NOT_FOUND, e.to_string())
        }
        Ok(Err(e @ ExplainError::NotACaller(_))) => {
            problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
