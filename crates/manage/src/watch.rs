//! `GET /v1/watch?since=N`: a stream of changes, one JSON object a line.
//!
//! Lines are `{"type":"put"|"delete","revision","kind","path","resource"}`
//! for changes the caller may read, `{"type":"heartbeat","revision"}` every
//! 15 s of quiet, and `{"type":"error","message"}` before the stream ends if
//! the watcher fell behind what the store keeps or the server is stopping. List first (lists carry
//! their `revision`), then watch from that revision to miss nothing.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_api::Verb;
use weft_store::Op;

use crate::AppState;
use crate::error::ApiError;
use crate::iam::Caller;

const HEARTBEAT: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    /// Changes after this revision (default: from now on).
    pub since: Option<i64>,
}

pub async fn watch(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<WatchQuery>,
) -> Result<Response, ApiError> {
    let now = state.store.revision().await?;
    let since = query.since.unwrap_or(now);
    if since > now || since < 0 {
        return Err(ApiError::bad_request(format!(
            "since: revision {since} is not one this store has had (the latest is {now})"
        )));
    }
    // Fail now, as a plain 410, if the watcher is already too far behind.
    state.store.changes_since(since, now).await?;
    let (tx, rx) = mpsc::channel::<Result<String, Infallible>>(64);
    tokio::spawn(feed(state, caller, since, tx));
    Ok((
        [(CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

async fn feed(
    state: AppState,
    caller: Caller,
    mut since: i64,
    tx: mpsc::Sender<Result<String, Infallible>>,
) {
    let send = |line: serde_json::Value| {
        let tx = tx.clone();
        async move { tx.send(Ok(format!("{line}\n"))).await.is_ok() }
    };
    let store = &state.store;
    loop {
        let step = async {
            let upto = store.revision().await?;
            let events = store.changes_since(since, upto).await?;
            Ok::<_, weft_store::StoreError>((upto, events))
        };
        let (upto, events) = match step.await {
            Ok(found) => found,
            Err(error) => {
                send(json!({"type": "error", "message": error.to_string()})).await;
                return;
            }
        };
        for event in events
            .into_iter()
            .filter(|e| caller.can(Verb::Read, &e.kind, &e.path))
        {
            let line = match event.op {
                Op::Put => {
                    // The current resource: it may be newer than the event,
                    // never older.
                    let resource = store
                        .get(&event.path)
                        .await
                        .ok()
                        .flatten()
                        .map(|s| s.resource);
                    json!({"type": "put", "revision": event.revision, "kind": event.kind, "path": event.path, "resource": resource})
                }
                Op::Delete => {
                    json!({"type": "delete", "revision": event.revision, "kind": event.kind, "path": event.path})
                }
            };
            if !send(line).await {
                return;
            }
        }
        since = upto;
        tokio::select! {
            () = tx.closed() => return,
            () = state.stopping() => {
                send(json!({"type": "error", "message": "the server is stopping; watch again from the last revision seen"})).await;
                return;
            }
            changed = tokio::time::timeout(HEARTBEAT, store.wait_for_change(since)) => match changed {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    send(json!({"type": "error", "message": error.to_string()})).await;
                    return;
                }
                Err(_) => {
                    if !send(json!({"type": "heartbeat", "revision": since})).await {
                        return;
                    }
                }
            },
        }
    }
}
