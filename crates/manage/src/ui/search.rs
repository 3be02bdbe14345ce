//! Search across what the user may read: services, resources by name or
//! path, clusters.

use axum::extract::State;
use maud::html;
use serde::Deserialize;
use weft_api::Verb;
use weft_api::kinds::KINDS;

use super::estate::Estate;
use super::layout;
use super::{Page, UiCaller, UiError, UiQuery};
use crate::AppState;
use crate::error::ApiError;

/// Hits shown per kind of result.
const LIMIT: usize = 50;

#[derive(Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
}

pub async fn page(
    State(state): State<AppState>,
    UiCaller(caller): UiCaller,
    UiQuery(query): UiQuery<SearchQuery>,
) -> Page {
    let fail = |e: ApiError| UiError::of(&caller, e);
    let needle = query.q.as_deref().unwrap_or("").trim().to_lowercase();
    let estate = Estate::load(&state, &caller).await.map_err(fail)?;
    let mut services = Vec::new();
    let mut resources = Vec::new();
    if !needle.is_empty() {
        services = estate
            .services
            .values()
            .filter(|s| format!("{}/{}", s.namespace, s.name).contains(&needle))
            .take(LIMIT)
            .collect();
        'kinds: for kind in KINDS {
            for stored in state
                .store
                .list(kind.name)
                .await
                .map_err(|e| fail(e.into()))?
            {
                if stored.path.to_lowercase().contains(&needle)
                    && caller.can(Verb::Read, kind.name, &stored.path)
                {
                    resources.push((kind.name, stored.path));
                    if resources.len() >= LIMIT {
                        break 'kinds;
                    }
                }
            }
        }
    }
    let body = html! {
        h1 { "Search" }
        form.controls method="get" action="/ui/search" role="search" {
            label for="search-q" { "Find" }
            input #search-q type="search" name="q" value=(query.q.as_deref().unwrap_or(""));
            button type="submit" { "Search" }
        }
        @if !needle.is_empty() {
            section aria-labelledby="found-services" {
                h2 #found-services { "Services (" (services.len()) ")" }
                ul #service-hits { @for s in &services { li { a href=(s.url()) { (s.namespace) "/" (s.name) } } } }
            }
            section aria-labelledby="found-resources" {
                h2 #found-resources { "Resources (" (resources.len()) ")" }
                ul #resource-hits { @for (kind, path) in &resources { li { span.kind { (kind) } " " a href=(format!("/ui/config/{path}")) { (path) } } } }
            }
            @if services.is_empty() && resources.is_empty() { p.calm { "Nothing you may read matches " q { (needle) } "." } }
        }
    };
    Ok(layout::page(&caller, None, "Search", None, body))
}
