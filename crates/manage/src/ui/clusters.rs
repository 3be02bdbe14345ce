//! One cluster: its edge, CA and directory, the configuration errors its
//! edge reports, and every proxy with its identity, certificate, the
//! versions it accepted and the last configuration it refused.

use axum::extract::{Path, State};
use maud::html;
use weft_api::Verb;

use super::estate::{Estate, cluster_path};
use super::layout::{self, Section, badge};
use super::{Page, UiCaller, UiError};
use crate::AppState;
use crate::error::ApiError;

pub async fn one(
    State(state): State<AppState>,
    UiCaller(caller): UiCaller,
    Path(name): Path<String>,
) -> Page {
    let fail = |e: ApiError| UiError::of(&caller, e);
    caller
        .require(&state.store, Verb::Read, "Cluster", &cluster_path(&name))
        .await
        .map_err(fail)?;
    let estate = Estate::load(&state, &caller).await.map_err(fail)?;
    let Some(cluster) = estate.cluster(&name) else {
        return Err(fail(ApiError::not_found(format!(
            "cluster {name:?} does not exist"
        ))));
    };
    let status = cluster.status.clone().unwrap_or_default();
    let locality = [
        ("region", &cluster.region),
        ("zone", &cluster.zone),
        ("network", &cluster.network),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k} {v}"))
    .collect::<Vec<_>>()
    .join(", ");
    let body = html! {
        p { a href="/ui/" { "← Overview" } }
        h1 { "Cluster " (cluster.name) }
        dl.facts {
            dt { "Locality" } dd { (locality) }
            dt { "Edge" } dd #edge-state {
                @match (&cluster.reported_at, cluster.connected) {
                    (None, _) => { (badge("bad", "never connected")) }
                    (Some(at), true) => { (badge("ok", "connected")) " last report " (layout::time(at)) }
                    (Some(at), false) => { (badge("bad", "disconnected")) " last seen " (layout::time(at)) }
                }
            }
            dt { "Configuration version" } dd { code { (status.config_version) } @if status.from_disk { " " (badge("warn", "from disk")) } }
            dt { "CA" } dd {
                @match &status.ca {
                    Some(ca) => { "expires " (layout::expiry(&ca.expires_at)) ", root " code { (ca.root.get(..16).unwrap_or(&ca.root)) } @if ca.expiring { " " (badge("bad", "renewal failing")) } }
                    None => { "none yet" }
                }
            }
            dt { "Directory" } dd {
                @match &status.directory {
                    Some(d) => { "revision " (d.revision) ", " (d.clusters) " other cluster(s), " (d.services) " service(s)" @if d.from_disk { " " (badge("warn", "from disk")) } }
                    None => { "–" }
                }
            }
            dt { "Metrics" } dd { @match &status.metrics_address { Some(a) => { code { "http://" (a) "/metrics" } }, None => { "–" } } }
            dt { "Resource" } dd { a href=(format!("/ui/config/{}", cluster.path)) { (cluster.path) } }
        }
        section aria-labelledby="errors" {
            h2 #errors { "Configuration errors (" (status.errors.len()) ")" }
            @if status.errors.is_empty() { p.calm { "The edge translated everything." } } @else {
                table {
                    thead { tr { th scope="col" { "Resource" } th scope="col" { "Field" } th scope="col" { "Problem" } } }
                    tbody { @for e in &status.errors { tr { td { a href=(format!("/ui/config/{}", e.path)) { (e.path) } } td { code { (e.field) } } td { (e.message) } } } }
                }
            }
        }
        section aria-labelledby="proxies-h" {
            h2 #proxies-h { "Proxies (" (status.proxies.len()) ")" }
            table #proxies {
                thead {
                    tr {
                        th scope="col" { "Proxy" } th scope="col" { "Role" } th scope="col" { "Service" } th scope="col" { "State" }
                        th scope="col" { "Identity" } th scope="col" { "Certificate expires" } th scope="col" { "Accepted versions" } th scope="col" { "Last refusal" }
                    }
                }
                tbody {
                    @for p in &status.proxies {
                        tr #(format!("proxy-{}", layout::encode(&p.node))) data-node=(p.node) {
                            th scope="row" { (p.node) br; code.sub { (p.address) } }
                            td { @if p.role.is_empty() { "sidecar" } @else { (p.role) } }
                            td { a href=(super::estate::service_url(&p.namespace, &p.service)) { (p.namespace) "/" (p.service) } @if let Some(v) = p.labels.get("version") { " " span.help { (v) } } }
                            td {
                                @if !p.connected { (badge("bad", "disconnected")) }
                                @else if p.in_sync { (badge("ok", "in sync")) }
                                @else { (badge("warn", "not in sync")) }
                            }
                            td { @if let Some(c) = &p.certificate { code { (c.identity) } } @else { "–" } }
                            td {
                                @if let Some(c) = &p.certificate {
                                    (layout::expiry(&c.expires_at))
                                    @if c.overdue { " " (badge("bad", "overdue")) }
                                } @else { "–" }
                            }
                            td.versions { @for (t, v) in &p.acked { span { (t) " " code { (v.get(..12).unwrap_or(v)) } } " " } }
                            td { @if let Some(n) = &p.nack { (badge("bad", "NACK")) " " (n.resource_type) " " code { (n.version.get(..12).unwrap_or(&n.version)) } ": " span.nack { (n.message) } } @else { "–" } }
                        }
                    }
                    @if status.proxies.is_empty() { (layout::empty(8, "No proxy reported.")) }
                }
            }
        }
    };
    Ok(layout::page(
        &caller,
        Some(Section::Overview),
        &format!("Cluster {name}"),
        layout::LIVE,
        body,
    ))
}
