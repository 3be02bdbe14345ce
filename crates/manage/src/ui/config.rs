//! Configuration: the org → tenant → workspace → group tree of what the
//! user may read; each resource as YAML, its versions from the audit
//! log with a diff between any two, and what it affects.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use maud::{Markup, html};
use serde::Deserialize;
use weft_api::Verb;
use weft_api::kinds::{KINDS, kind_of_path};
use weft_api::specs::selector_covers;
use weft_store::{AuditEntry, AuditFilter};

use super::diff;
use super::estate::Estate;
use super::layout::{self, Section};
use super::services::Settings;
use super::{Page, UiCaller, UiError, UiQuery};
use crate::AppState;
use crate::error::ApiError;

/// Audit entries read for one resource's history.
const HISTORY_LIMIT: i64 = 200;

struct Item {
    path: String,
    kind: &'static str,
    name: String,
}

pub async fn tree(State(state): State<AppState>, UiCaller(caller): UiCaller) -> Page {
    let fail = |e: ApiError| UiError::of(&caller, e);
    let mut children: BTreeMap<String, Vec<Item>> = BTreeMap::new();
    let mut count = 0;
    for kind in KINDS {
        for stored in state
            .store
            .list(kind.name)
            .await
            .map_err(|e| fail(e.into()))?
        {
            if !caller.can(Verb::Read, kind.name, &stored.path) {
                continue;
            }
            count += 1;
            children.entry(stored.parent).or_default().push(Item {
                path: stored.path,
                kind: kind.name,
                name: stored.resource.metadata.name,
            });
        }
    }
    // A readable resource whose parent is not readable hangs at the top.
    let readable: std::collections::HashSet<String> = children
        .values()
        .flatten()
        .map(|i| i.path.clone())
        .collect();
    let orphans: Vec<String> = children
        .keys()
        .filter(|p| !p.is_empty() && !readable.contains(*p))
        .cloned()
        .collect();
    for parent in orphans {
        let items = children.remove(&parent).unwrap_or_default();
        children.entry(String::new()).or_default().extend(items);
    }
    let body = html! {
        h1 { "Configuration" }
        p.help { (count) " resources you may read. Each links to its YAML, history and what it affects." }
        nav.tree aria-label="Configuration tree" {
            (branch(&children, ""))
        }
    };
    Ok(layout::page(
        &caller,
        Some(Section::Configuration),
        "Configuration",
        None,
        body,
    ))
}

fn branch(children: &BTreeMap<String, Vec<Item>>, parent: &str) -> Markup {
    let Some(items) = children.get(parent) else {
        return html! {};
    };
    html! {
        ul {
            @for item in items {
                li {
                    span.kind { (item.kind) } " "
                    a href=(format!("/ui/config/{}", item.path)) { (item.name) }
                    (branch(children, &item.path))
                }
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceQuery {
    /// Show the version an audit entry wrote.
    at: Option<i64>,
    /// Diff between the versions two audit entries wrote.
    from: Option<i64>,
    to: Option<i64>,
}

/// The resource's changes, oldest first.
async fn history(state: &AppState, path: &str) -> Result<Vec<AuditEntry>, ApiError> {
    let filter = AuditFilter {
        path: Some(path.to_string()),
        limit: HISTORY_LIMIT,
        ..AuditFilter::default()
    };
    Ok(state
        .store
        .audit(&filter)
        .await?
        .into_iter()
        .filter(|e| e.path == path && e.outcome == "ok")
        .filter(|e| matches!(e.action.as_str(), "create" | "update" | "delete"))
        .collect())
}

pub async fn resource(
    State(state): State<AppState>,
    UiCaller(caller): UiCaller,
    Path(path): Path<String>,
    UiQuery(query): UiQuery<ResourceQuery>,
) -> Page {
    let fail = |e: ApiError| UiError::of(&caller, e);
    let path = path.trim_matches('/').to_string();
    let Some(kind) = kind_of_path(&path) else {
        return Err(fail(ApiError::not_found(format!(
            "{path:?} is not a resource path"
        ))));
    };
    caller
        .require(&state.store, Verb::Read, kind.name, &path)
        .await
        .map_err(fail)?;
    let current = state.store.get(&path).await.map_err(|e| fail(e.into()))?;
    let history = history(&state, &path).await.map_err(fail)?;
    if current.is_none() && history.is_empty() {
        return Err(fail(ApiError::not_found(format!("{path} does not exist"))));
    }
    let version = |seq: i64| history.iter().find(|e| e.seq == seq);
    let shown = match query.at {
        Some(seq) => Some(version(seq).ok_or_else(|| {
            fail(ApiError::not_found(format!(
                "at: entry {seq} is not in {path}'s history"
            )))
        })?),
        None => None,
    };
    let yaml = match (shown, &current) {
        (Some(entry), _) => diff::yaml(entry.after.as_ref()),
        (None, Some(stored)) => diff::yaml(Some(
            &serde_json::to_value(&stored.resource).unwrap_or_default(),
        )),
        (None, None) => String::new(),
    };
    // The diff: from one entry's version to another's when both are
    // asked for, else the change one entry (the newest) made.
    let to = query.to.and_then(version).or(history.last());
    let from = query.from.and_then(version);
    let before_text = match (from, to) {
        (Some(from), _) => diff::yaml(from.after.as_ref()),
        (None, Some(to)) => diff::yaml(to.before.as_ref()),
        (None, None) => String::new(),
    };
    let after_text = to.map(|e| diff::yaml(e.after.as_ref())).unwrap_or_default();
    // What the compare form starts from: the entry before the one shown.
    let compare_from =
        from.or_else(|| to.and_then(|t| history.iter().rev().find(|e| e.seq < t.seq)));
    let affects = affects(&state, &caller, &path, kind.name)
        .await
        .map_err(fail)?;
    let title = path.clone();
    let body = html! {
        nav aria-label="Breadcrumb" {
            ol.crumbs {
                li { a href="/ui/config" { "Configuration" } }
                @for (i, pair) in path.split('/').collect::<Vec<_>>().chunks(2).enumerate() {
                    @let upto = path.split('/').take((i + 1) * 2).collect::<Vec<_>>().join("/");
                    li { a href=(format!("/ui/config/{upto}")) aria-current=[(upto == path).then_some("page")] { (pair.get(1).unwrap_or(&"")) } }
                }
            }
        }
        h1 { span.kind { (kind.name) } " " (path.rsplit('/').next().unwrap_or_default()) }
        @if current.is_none() { p { (layout::badge("warn", "deleted")) " This resource no longer exists; its history remains." } }
        @if kind.name == "Cluster" {
            p { a href=(format!("/ui/clusters/{}", layout::encode(path.rsplit('/').next().unwrap_or_default()))) { "Its edge and proxies" } }
        }
        div.columns {
            section aria-labelledby="yaml-h" {
                h2 #yaml-h {
                    @match shown { Some(e) => { "As written by entry " (e.seq) " (" a href=(format!("/ui/config/{path}")) { "show current" } ")" }, None => { "Current" } }
                }
                pre.yaml tabindex="0" role="region" aria-label="YAML" { code { (yaml) } }
            }
            section aria-labelledby="affects-h" {
                h2 #affects-h { "Affects" }
                (affects)
            }
        }
        section aria-labelledby="history-h" {
            h2 #history-h { "History" }
            table #history {
                thead { tr { th scope="col" { "Entry" } th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Change" } th scope="col" { "Version" } } }
                tbody {
                    @for e in history.iter().rev() {
                        tr data-seq=(e.seq) {
                            td { a href=(format!("/ui/audit/{}", e.seq)) { (e.seq) } }
                            td { (layout::time(&e.at)) }
                            td { (e.actor) }
                            td { (e.action) }
                            td {
                                @if e.after.is_some() { a href=(format!("/ui/config/{path}?at={}", e.seq)) { "view" } " · " }
                                a href=(format!("/ui/config/{path}?to={}", e.seq)) { "diff" }
                            }
                        }
                    }
                    @if history.is_empty() { (layout::empty(5, "No recorded change.")) }
                }
            }
        }
        @if history.len() > 1 {
            form.controls method="get" action=(format!("/ui/config/{path}")) {
                label for="from" { "Compare the version of entry" }
                select #from name="from" {
                    @for e in history.iter().rev() { option value=(e.seq) selected[compare_from.is_some_and(|f| f.seq == e.seq)] { (e.seq) " (" (e.action) ")" } }
                }
                label for="to" { "with entry" }
                select #to name="to" {
                    @for e in history.iter().rev() { option value=(e.seq) selected[to.is_some_and(|t| t.seq == e.seq)] { (e.seq) " (" (e.action) ")" } }
                }
                button type="submit" { "Compare" }
            }
        }
        @if let Some(to) = to {
            section aria-labelledby="diff-h" {
                h2 #diff-h {
                    "Changes of entry " (to.seq)
                    @if let Some(from) = from { " since entry " (from.seq) }
                    " (" (to.action) " by " (to.actor) ")"
                }
                (diff::render(&before_text, &after_text))
            }
        }
    };
    Ok(layout::page(
        &caller,
        Some(Section::Configuration),
        &title,
        None,
        body,
    ))
}

/// What a resource reaches: the namespaces and services a workspace or
/// group selects, the services a route or setting applies to.
async fn affects(
    state: &AppState,
    caller: &crate::iam::Caller,
    path: &str,
    kind: &str,
) -> Result<Markup, ApiError> {
    let estate = Estate::load(state, caller).await?;
    let stored = state.store.get(path).await?;
    let selector: Vec<String> = stored
        .as_ref()
        .and_then(|s| s.resource.spec.get("namespaceSelector"))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let services: Vec<&super::estate::Service> = if !selector.is_empty() {
        estate
            .services
            .values()
            .filter(|s| {
                s.clusters
                    .iter()
                    .any(|c| selector_covers(&selector, &format!("{c}/{}", s.namespace)))
            })
            .collect()
    } else if super::services::APPLYING.contains(&kind) {
        let settings = Settings::load(state, caller).await?;
        estate
            .services
            .values()
            .filter(|s| settings.applying(&estate, s).iter().any(|a| a.path == path))
            .collect()
    } else {
        Vec::new()
    };
    Ok(html! {
        @if !selector.is_empty() {
            p { "Namespaces: " @for entry in &selector { code { (entry) } " " } }
        }
        @if services.is_empty() {
            p.help { "No running service you may read." }
        } @else {
            ul { @for s in &services { li { a href=(s.url()) { (s.namespace) "/" (s.name) } } } }
        }
    })
}
