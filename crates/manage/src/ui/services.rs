//! Services across clusters: where they run (instances per cluster and
//! version), how they answer (RED), who may call them and which routes
//! and settings apply, and where each comes from.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, State};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;
use weft_api::Verb;
use weft_api::specs::selector_covers;
use weft_api::traffic_stats::{ServiceAt, Totals, TrafficRow};

use super::estate::{Estate, Service};
use super::layout::{self, Section, badge, health, latency, percent, rate};
use super::{Page, UiCaller, UiError, UiQuery};
use crate::AppState;
use crate::error::ApiError;
use crate::iam::Caller;

/// The window the RED figures cover.
const RED_WINDOW: Duration = Duration::from_secs(300);
/// Kinds whose resources apply to services, and the groups they sit in.
pub(super) const APPLYING: [&str; 4] = [
    "ServiceRoute",
    "TrafficSetting",
    "SecuritySetting",
    "TelemetrySetting",
];
const GROUPS: [&str; 3] = ["TrafficGroup", "SecurityGroup", "GatewayGroup"];

/// A resource that applies to a service, and at which level.
pub struct Applying {
    pub path: String,
    pub kind: String,
    /// `workspace`, `group` or `service`: the more specific wins.
    pub level: &'static str,
    pub spec: Value,
}

impl Applying {
    fn rank(&self) -> u8 {
        match self.level {
            "service" => 2,
            "group" => 1,
            _ => 0,
        }
    }
}

/// Every readable route and setting, with what it needs to decide where
/// it applies.
pub struct Settings {
    resources: Vec<(String, String, String, Value)>,
    groups: BTreeMap<String, Vec<String>>,
}

impl Settings {
    pub async fn load(state: &AppState, caller: &Caller) -> Result<Settings, ApiError> {
        let mut groups = BTreeMap::new();
        for kind in GROUPS {
            for stored in state.store.list(kind).await? {
                let selector = stored
                    .resource
                    .spec
                    .get("namespaceSelector")
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default();
                groups.insert(stored.path, selector);
            }
        }
        let mut resources = Vec::new();
        for kind in APPLYING {
            for stored in state.store.list(kind).await? {
                if caller.can(Verb::Read, kind, &stored.path) {
                    resources.push((
                        stored.path,
                        kind.to_string(),
                        stored.parent,
                        stored.resource.spec,
                    ));
                }
            }
        }
        Ok(Settings { resources, groups })
    }

    /// What applies to `service`, most specific first.
    pub fn applying(&self, estate: &Estate, service: &Service) -> Vec<Applying> {
        let entries: Vec<String> = service
            .clusters
            .iter()
            .map(|c| format!("{c}/{}", service.namespace))
            .collect();
        let workspaces = estate.workspaces_of(service);
        let mut out = Vec::new();
        for (path, kind, parent, spec) in &self.resources {
            if !workspaces
                .iter()
                .any(|w| path.starts_with(&format!("{}/", w.path)))
            {
                continue;
            }
            let named = spec.get("service");
            if let Some(named) = named {
                let same = named.get("namespace").and_then(Value::as_str)
                    == Some(&service.namespace)
                    && named.get("name").and_then(Value::as_str) == Some(&service.name);
                if !same {
                    continue;
                }
            }
            let in_group = self.groups.get(parent);
            if let Some(selector) = in_group
                && !entries.is_empty()
                && !entries.iter().any(|e| selector_covers(selector, e))
            {
                continue;
            }
            let level = if named.is_some() {
                "service"
            } else if in_group.is_some() {
                "group"
            } else {
                "workspace"
            };
            out.push(Applying {
                path: path.clone(),
                kind: kind.clone(),
                level,
                spec: spec.clone(),
            });
        }
        out.sort_by(|a, b| b.rank().cmp(&a.rank()).then(a.path.cmp(&b.path)));
        out
    }
}

/// The most specific SecuritySetting that sets `part`.
fn deciding<'a>(applying: &'a [Applying], part: &str) -> Option<&'a Applying> {
    applying
        .iter()
        .find(|a| a.kind == "SecuritySetting" && a.spec.get(part).is_some_and(|v| !v.is_null()))
}

/// "deny-all", or how many rules open it.
fn authorization_summary(applying: &[Applying]) -> (String, &'static str) {
    match deciding(applying, "authorization") {
        None => ("deny-all".into(), "idle"),
        Some(a) => {
            let count = |list: &str| {
                a.spec["authorization"]
                    .get(list)
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            };
            (
                format!("{} allow, {} deny", count("allow"), count("deny")),
                "ok",
            )
        }
    }
}

fn mtls_mode(applying: &[Applying]) -> String {
    deciding(applying, "mtls")
        .and_then(|a| a.spec["mtls"].as_str().map(str::to_string))
        .unwrap_or_else(|| "strict (default)".into())
}

/// What a caller entry of an authorization rule names.
fn caller_text(from: &Value) -> String {
    if let Some(sa) = from.get("serviceAccount") {
        return format!(
            "service account {}/{}",
            sa["namespace"].as_str().unwrap_or_default(),
            sa["name"].as_str().unwrap_or_default()
        );
    }
    for (field, what) in [("namespace", "namespace"), ("workspace", "workspace")] {
        if let Some(v) = from.get(field).and_then(Value::as_str) {
            return format!("any workload in {what} {v}");
        }
    }
    if from.get("sameWorkspace").and_then(Value::as_bool) == Some(true) {
        return "any workload in the same workspace".into();
    }
    from.to_string()
}

fn rule_text(rule: &Value) -> Markup {
    let from: Vec<String> = rule
        .get("from")
        .and_then(Value::as_array)
        .map(|l| l.iter().map(caller_text).collect())
        .unwrap_or_default();
    let to = rule
        .get("to")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty());
    let claims = rule
        .get("claims")
        .and_then(Value::as_object)
        .filter(|c| !c.is_empty());
    html! {
        @if from.is_empty() { "any workload of the trust domain" } @else { (from.join("; ")) }
        @if let Some(to) = to { " · requests " code { (serde_json::to_string(to).unwrap_or_default()) } }
        @if let Some(claims) = claims { " · claims " code { (serde_json::to_string(claims).unwrap_or_default()) } }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only services whose namespace/name contains this.
    q: Option<String>,
}

async fn red(
    state: &AppState,
    caller: &Caller,
) -> Result<(BTreeMap<(String, String), Totals>, f64), ApiError> {
    let (pairs, seconds) =
        crate::traffic::visible_pairs_over(state, caller, RED_WINDOW, None, false).await?;
    let mut by: BTreeMap<(String, String), Totals> = BTreeMap::new();
    for p in pairs {
        by.entry((p.destination.namespace, p.destination.service))
            .or_default()
            .add(&p.totals);
    }
    Ok((by, seconds))
}

fn row(totals: Option<&Totals>, seconds: f64) -> TrafficRow {
    TrafficRow::new(
        None,
        ServiceAt::default(),
        totals.unwrap_or(&Totals::default()),
        seconds,
    )
}

pub async fn list(
    State(state): State<AppState>,
    UiCaller(caller): UiCaller,
    UiQuery(query): UiQuery<ListQuery>,
) -> Page {
    let fail = |e: ApiError| UiError::of(&caller, e);
    let mut estate = Estate::load(&state, &caller).await.map_err(fail)?;
    let (pairs, _) = crate::traffic::visible_pairs_over(&state, &caller, RED_WINDOW, None, true)
        .await
        .map_err(fail)?;
    estate.add_called(&pairs);
    let (red, seconds) = red(&state, &caller).await.map_err(fail)?;
    let settings = Settings::load(&state, &caller).await.map_err(fail)?;
    let needle = query.q.as_deref().unwrap_or("").to_lowercase();
    let shown: Vec<&Service> = estate
        .services
        .values()
        .filter(|s| needle.is_empty() || format!("{}/{}", s.namespace, s.name).contains(&needle))
        .collect();
    let body = html! {
        h1 { "Services" }
        form.controls method="get" action="/ui/services" role="search" {
            label for="filter" { "Filter" }
            input #filter type="search" name="q" value=(query.q.as_deref().unwrap_or("")) placeholder="namespace/name";
            button type="submit" { "Filter" }
            span.help { (shown.len()) " of " (estate.services.len()) " services; traffic over the last 5 minutes" }
        }
        table #services {
            thead {
                tr {
                    th scope="col" { "Service" }
                    th scope="col" { "Workspace" }
                    th scope="col" { "Instances by cluster (version)" }
                    th scope="col" { "Requests/s" }
                    th scope="col" { "Success" }
                    th scope="col" { "p99" }
                    th scope="col" { "mTLS" }
                    th scope="col" { "Authorization" }
                }
            }
            tbody {
                @for s in &shown {
                    @let r = row(red.get(&(s.namespace.clone(), s.name.clone())), seconds);
                    @let applying = settings.applying(&estate, s);
                    @let (authz, authz_class) = authorization_summary(&applying);
                    tr data-service=(format!("{}/{}", s.namespace, s.name)) {
                        th scope="row" { a href=(s.url()) { (s.namespace) "/" (s.name) } }
                        td { @for w in estate.workspaces_of(s) { a href=(format!("/ui/config/{}", w.path)) { (w.tenant) "/" (w.name) } " " } }
                        td { (instances_summary(s)) }
                        td.num { (rate(r.requests_per_second)) }
                        td.num class=(health(r.success_rate, r.requests)) { (percent(r.success_rate)) }
                        td.num { (latency(r.p99_seconds)) }
                        td { (mtls_mode(&applying)) }
                        td { (badge(authz_class, &authz)) }
                    }
                }
                @if shown.is_empty() { (layout::empty(8, "No service you may read.")) }
            }
        }
    };
    Ok(layout::page(
        &caller,
        Some(Section::Services),
        "Services",
        layout::LIVE,
        body,
    ))
}

fn instances_summary(s: &Service) -> Markup {
    let mut by: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for i in &s.instances {
        *by.entry(&i.cluster)
            .or_default()
            .entry(i.version())
            .or_default() += 1;
    }
    html! {
        @for (cluster, versions) in &by {
            span.instances {
                (cluster) ": "
                @for (v, n) in versions { (n) @if !v.is_empty() { " " (v) } " " }
            }
        }
        @if by.is_empty() { span.help { "none reported" } }
    }
}

pub async fn one(
    State(state): State<AppState>,
    UiCaller(caller): UiCaller,
    Path((namespace, name)): Path<(String, String)>,
) -> Page {
    let fail = |e: ApiError| UiError::of(&caller, e);
    let mut estate = Estate::load(&state, &caller).await.map_err(fail)?;
    let (pairs, seconds) =
        crate::traffic::visible_pairs_over(&state, &caller, RED_WINDOW, None, true)
            .await
            .map_err(fail)?;
    estate.add_called(&pairs);
    let key = (namespace.clone(), name.clone());
    let Some(service) = estate.services.get(&key) else {
        return Err(fail(ApiError::not_found(format!(
            "no service {namespace}/{name} you may read runs or was called in the last 5 minutes"
        ))));
    };
    let settings = Settings::load(&state, &caller).await.map_err(fail)?;
    let applying = settings.applying(&estate, service);
    let mut by_cluster: BTreeMap<String, Totals> = BTreeMap::new();
    let (mut callers, mut callees) = (Vec::new(), Vec::new());
    for p in &pairs {
        if p.destination.namespace == namespace && p.destination.service == name {
            by_cluster
                .entry(crate::traffic::callee_cluster(p).to_string())
                .or_default()
                .add(&p.totals);
            callers.push(p);
        }
        if p.source.namespace == namespace && p.source.service == name {
            callees.push(p);
        }
    }
    let authz = deciding(&applying, "authorization");
    let body = html! {
        h1 { (namespace) "/" (name) }
        p.help {
            "Workspace: " @for w in estate.workspaces_of(service) { a href=(format!("/ui/config/{}", w.path)) { (w.tenant) "/" (w.name) } " " }
            " · " a href=(format!("/ui/topology?focus={}", layout::encode(&format!("{}/{namespace}/{name}", service.clusters.iter().next().cloned().unwrap_or_default())))) { "in the topology" }
        }
        section aria-labelledby="red-h" {
            h2 #red-h { "Requests over the last 5 minutes, by cluster" }
            table {
                thead { tr { th scope="col" { "Cluster" } th scope="col" { "Requests/s" } th scope="col" { "Errors" } th scope="col" { "Success" } th scope="col" { "p50" } th scope="col" { "p99" } th scope="col" { "mTLS" } } }
                tbody {
                    @for (cluster, totals) in &by_cluster {
                        @let r = row(Some(totals), seconds);
                        tr { th scope="row" { (cluster) } td.num { (rate(r.requests_per_second)) } td.num { (r.errors) } td.num class=(health(r.success_rate, r.requests)) { (percent(r.success_rate)) } td.num { (latency(r.p50_seconds)) } td.num { (latency(r.p99_seconds)) } td.num { (percent(r.mtls_share)) } }
                    }
                    @if by_cluster.is_empty() { (layout::empty(7, "No requests in the window.")) }
                }
            }
        }
        section aria-labelledby="instances-h" {
            h2 #instances-h { "Instances" }
            table {
                thead { tr { th scope="col" { "Cluster" } th scope="col" { "Version" } th scope="col" { "Proxy" } th scope="col" { "Address" } th scope="col" { "State" } th scope="col" { "Certificate expires" } } }
                tbody {
                    @for i in &service.instances {
                        tr {
                            td { a href=(format!("/ui/clusters/{}", layout::encode(&i.cluster))) { (i.cluster) } }
                            td { (i.version()) }
                            td { a href=(format!("/ui/clusters/{}#proxy-{}", layout::encode(&i.cluster), layout::encode(&i.proxy.node))) { (i.proxy.node) } }
                            td { code { (i.proxy.address) } }
                            td {
                                @if !i.edge_connected { (badge("warn", "edge disconnected")) }
                                @else if !i.proxy.connected { (badge("bad", "disconnected")) }
                                @else if i.proxy.nack.is_some() { (badge("bad", "NACK")) }
                                @else if i.proxy.in_sync { (badge("ok", "in sync")) }
                                @else { (badge("warn", "syncing")) }
                            }
                            td { @if let Some(c) = &i.proxy.certificate { (layout::expiry(&c.expires_at)) } @else { "–" } }
                        }
                    }
                    @if service.instances.is_empty() { (layout::empty(6, "No instance reported.")) }
                }
            }
        }
        section aria-labelledby="security-h" {
            h2 #security-h { "Security" }
            dl.facts {
                dt { "mTLS" } dd { (mtls_mode(&applying)) @if let Some(a) = deciding(&applying, "mtls") { " from " (link(a)) } }
                dt { "Authentication" } dd { @match deciding(&applying, "authentication") { Some(a) => { "JWT, from " (link(a)) }, None => { "none (workload identity only)" } } }
                dt { "Authorization" } dd {
                    @match authz {
                        None => { (badge("idle", "deny-all")) " no SecuritySetting opens a path: every call is refused" }
                        Some(a) => { "from " (link(a)) }
                    }
                }
            }
            @if let Some(a) = authz {
                @for (list, word) in [("allow", "Allowed"), ("deny", "Denied")] {
                    @if let Some(rules) = a.spec["authorization"].get(list).and_then(Value::as_array).filter(|r| !r.is_empty()) {
                        h3 { (word) }
                        ul.rules { @for rule in rules { li { (rule_text(rule)) } } }
                    }
                }
            }
        }
        section aria-labelledby="applies-h" {
            h2 #applies-h { "Routes and settings that apply" }
            table {
                thead { tr { th scope="col" { "Resource" } th scope="col" { "Kind" } th scope="col" { "Level" } } }
                tbody {
                    @for a in &applying { tr { td { (link(a)) } td { (a.kind) } td { (a.level) } } }
                    @if applying.is_empty() { (layout::empty(3, "Nothing applies: the defaults hold.")) }
                }
            }
        }
        section aria-labelledby="calls-h" {
            h2 #calls-h { "Callers and callees" }
            table {
                thead { tr { th scope="col" { "Caller" } th scope="col" { "Callee" } th scope="col" { "Requests/s" } th scope="col" { "Success" } th scope="col" { "p99" } } }
                tbody {
                    @for p in callers.iter().chain(callees.iter()) {
                        @let r = row(Some(&p.totals), seconds);
                        tr {
                            td { a href=(super::estate::service_url(&p.source.namespace, &p.source.service)) { (p.source.cluster) "/" (p.source.namespace) "/" (p.source.service) } }
                            td { a href=(super::estate::service_url(&p.destination.namespace, &p.destination.service)) { (crate::traffic::callee_cluster(p)) "/" (p.destination.namespace) "/" (p.destination.service) } }
                            td.num { (rate(r.requests_per_second)) }
                            td.num class=(health(r.success_rate, r.requests)) { (percent(r.success_rate)) }
                            td.num { (latency(r.p99_seconds)) }
                        }
                    }
                    @if callers.is_empty() && callees.is_empty() { (layout::empty(5, "No calls in the window.")) }
                }
            }
        }
    };
    Ok(layout::page(
        &caller,
        Some(Section::Services),
        &format!("{namespace}/{name}"),
        layout::LIVE,
        body,
    ))
}

fn link(a: &Applying) -> Markup {
    html! { a href=(format!("/ui/config/{}", a.path)) { (a.path) } }
}
