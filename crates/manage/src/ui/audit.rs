//! The audit log: filters by time, user, resource path, kind, operation
//! and outcome; each entry with its before/after diff; the state of the
//! hash chain for those who may check it.

use std::time::SystemTime;

use axum::extract::{Path, State};
use maud::html;
use serde::Deserialize;
use weft_api::Verb;
use weft_store::AuditFilter;

use super::diff;
use super::layout::{self, Section, badge};
use super::{Page, UiCaller, UiError, UiQuery};
use crate::AppState;
use crate::error::ApiError;
use crate::iam::Caller;

/// Entries read before filtering by permission and the form's filters.
const SCAN_LIMIT: i64 = 10_000;
/// Entries a page shows.
const PAGE: usize = 200;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// `1h`, `7d`… back from now, or an RFC 3339 time.
    since: Option<String>,
    user: Option<String>,
    path: Option<String>,
    kind: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
}

fn since(value: &str) -> Result<String, ApiError> {
    let at = match humantime::parse_duration(value) {
        Ok(back) => SystemTime::now()
            .checked_sub(back)
            .unwrap_or(SystemTime::UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(value).map_err(|_| {
            ApiError::bad_request(format!(
                "since: {value:?} is neither a duration (1h, 7d) nor an RFC 3339 time"
            ))
        })?,
    };
    Ok(humantime::format_rfc3339_millis(at).to_string())
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Whether the caller may see the audit chain's state (like
/// `GET /v1/audit/verify`).
fn may_verify(caller: &Caller) -> bool {
    caller.can(Verb::Read, "*", "")
}

pub async fn list(
    State(state): State<AppState>,
    UiCaller(caller): UiCaller,
    UiQuery(query): UiQuery<AuditQuery>,
) -> Page {
    let fail = |e: ApiError| UiError::of(&caller, e);
    let filter = AuditFilter {
        since: given(&query.since).map(since).transpose().map_err(fail)?,
        until: None,
        path: given(&query.path).map(|p| p.trim_matches('/').to_string()),
        actor: given(&query.user).map(str::to_string),
        limit: SCAN_LIMIT,
    };
    let entries = state
        .store
        .audit(&filter)
        .await
        .map_err(|e| fail(e.into()))?;
    let matches = |field: &str, want: Option<&str>| want.is_none_or(|w| field == w);
    let mut shown: Vec<_> = entries
        .iter()
        .rev()
        .filter(|e| caller.can(Verb::Read, &e.kind, &e.path))
        .filter(|e| matches(&e.kind, given(&query.kind)))
        .filter(|e| matches(&e.action, given(&query.action)))
        .filter(|e| matches(&e.outcome, given(&query.outcome)))
        .collect();
    let more = shown.len() > PAGE;
    shown.truncate(PAGE);
    let chain = if may_verify(&caller) {
        Some(
            state
                .store
                .verify_audit()
                .await
                .map_err(|e| fail(e.into()))?,
        )
    } else {
        None
    };
    let text = |id: &str, label: &str, value: &Option<String>, hint: &str| {
        html! {
            div.field {
                label for=(id) { (label) }
                input id=(id) name=(id) type="text" value=(value.as_deref().unwrap_or("")) placeholder=(hint);
            }
        }
    };
    let body = html! {
        h1 { "Audit log" }
        @if let Some(chain) = &chain {
            p #chain {
                @if chain.intact { (badge("ok", "chain intact")) } @else { (badge("bad", "chain broken")) }
                " " (chain.entries) " entries, head " code { (chain.head.get(..16).unwrap_or(&chain.head)) "…" }
                @if let Some(problem) = &chain.problem { " — " (problem) }
            }
        }
        form.controls.filters method="get" action="/ui/audit" {
            (text("since", "Since", &query.since, "1h, 7d or a time"))
            (text("user", "User", &query.user, "alice"))
            (text("path", "Resource path", &query.path, "tenants/retail"))
            (text("kind", "Kind", &query.kind, "ServiceRoute"))
            div.field {
                label for="action" { "Operation" }
                select #action name="action" {
                    @for a in ["", "create", "update", "delete", "token.create", "token.revoke", "read"] {
                        option value=(a) selected[given(&query.action) == Some(a) || (a.is_empty() && given(&query.action).is_none())] { @if a.is_empty() { "any" } @else { (a) } }
                    }
                }
            }
            div.field {
                label for="outcome" { "Outcome" }
                select #outcome name="outcome" {
                    @for o in ["", "ok", "denied"] {
                        option value=(o) selected[given(&query.outcome) == Some(o) || (o.is_empty() && given(&query.outcome).is_none())] { @if o.is_empty() { "any" } @else { (o) } }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        table #audit {
            thead { tr { th scope="col" { "Entry" } th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Operation" } th scope="col" { "Kind" } th scope="col" { "Resource" } th scope="col" { "Outcome" } } }
            tbody {
                @for e in &shown {
                    tr data-seq=(e.seq) {
                        td { a href=(format!("/ui/audit/{}", e.seq)) { (e.seq) } }
                        td { (layout::time(&e.at)) }
                        td { (e.actor) }
                        td { (e.action) }
                        td { (e.kind) }
                        td { @if e.path.is_empty() { "–" } @else { a href=(format!("/ui/config/{}", e.path)) { (e.path) } } }
                        td { @if e.outcome == "ok" { (badge("ok", "ok")) } @else { (badge("bad", &e.outcome)) } }
                    }
                }
                @if shown.is_empty() { (layout::empty(7, "No entry matches.")) }
            }
        }
        @if more { p.help { "Showing the newest " (PAGE) "; narrow the filters to see older entries." } }
    };
    Ok(layout::page(
        &caller,
        Some(Section::Audit),
        "Audit log",
        None,
        body,
    ))
}

pub async fn entry(
    State(state): State<AppState>,
    UiCaller(caller): UiCaller,
    Path(seq): Path<String>,
) -> Page {
    let fail = |e: ApiError| UiError::of(&caller, e);
    let seq: i64 = seq.parse().map_err(|_| {
        fail(ApiError::bad_request(format!(
            "{seq:?} is not an entry number"
        )))
    })?;
    let entry = state
        .store
        .audit_entry(seq)
        .await
        .map_err(|e| fail(e.into()))?
        .filter(|e| caller.can(Verb::Read, &e.kind, &e.path))
        .ok_or_else(|| {
            fail(ApiError::not_found(format!(
                "no audit entry {seq} you may read"
            )))
        })?;
    let body = html! {
        p { a href="/ui/audit" { "← Audit log" } }
        h1 { "Audit entry " (entry.seq) }
        dl.facts {
            dt { "When" } dd { time datetime=(entry.at) { (entry.at) } }
            dt { "Who" } dd { (entry.actor) }
            dt { "Operation" } dd { (entry.action) }
            dt { "Resource" } dd { @if entry.path.is_empty() { "–" } @else { span.kind { (entry.kind) } " " a href=(format!("/ui/config/{}", entry.path)) { (entry.path) } } }
            dt { "Outcome" } dd { @if entry.outcome == "ok" { (badge("ok", "ok")) } @else { (badge("bad", &entry.outcome)) } }
            @if !entry.message.is_empty() { dt { "Message" } dd { (entry.message) } }
            dt { "Hash" } dd { code { (entry.hash) } }
        }
        @if entry.before.is_some() || entry.after.is_some() {
            h2 { "Before and after" }
            (diff::render(&diff::yaml(entry.before.as_ref()), &diff::yaml(entry.after.as_ref())))
        }
    };
    Ok(layout::page(
        &caller,
        Some(Section::Audit),
        &format!("Audit entry {seq}"),
        None,
        body,
    ))
}
