//! The overview: what needs attention first, the mesh's traffic right
//! now, every cluster with its edge, proxies, CA and directory.

use std::time::Duration;

use axum::extract::State;
use maud::{Markup, html};
use weft_api::edge::RootState;
use weft_api::traffic_stats::{ServiceAt, Totals, TrafficRow};

use super::estate::{Estate, service_url};
use super::layout::{self, Section, badge, health, latency, percent, rate};
use super::{Page, UiCaller, UiError};
use crate::AppState;
use crate::error::ApiError;

/// The traffic the overview sums: the last minute.
const NOW: Duration = Duration::from_secs(60);
/// A certificate authority this close to expiry needs attention.
const EXPIRY_WARNING: i64 = 7 * 86_400;
/// A root this close to expiry needs attention (roots take longer to rotate).
const ROOT_EXPIRY_WARNING: i64 = 60 * 86_400;

/// One thing that needs attention, most urgent first.
struct Attention {
    severity: &'static str,
    text: String,
    href: String,
}

pub async fn page(State(state): State<AppState>, UiCaller(caller): UiCaller) -> Page {
    let fail = |e: ApiError| UiError::of(&caller, e);
    let estate = Estate::load(&state, &caller).await.map_err(fail)?;
    let (pairs, seconds) = crate::traffic::visible_pairs_over(&state, &caller, NOW, None, false)
        .await
        .map_err(fail)?;
    let roots = crate::ca::roots_if_readable(&state, &caller)
        .await
        .map_err(fail)?;
    let directory_revision = state
        .store
        .directory_revision()
        .await
        .map_err(|e| fail(e.into()))?;

    let mut total = Totals::default();
    let mut by_service: std::collections::BTreeMap<ServiceAt, Totals> = Default::default();
    for pair in &pairs {
        total.add(&pair.totals);
        by_service
            .entry(pair.destination.clone())
            .or_default()
            .add(&pair.totals);
    }
    let mesh = TrafficRow::new(None, ServiceAt::default(), &total, seconds);

    let mut attention = Vec::new();
    for cluster in &estate.clusters {
        let href = format!("/ui/clusters/{}", layout::encode(&cluster.name));
        let Some(status) = &cluster.status else {
            attention.push(Attention {
                severity: "bad",
                text: format!("cluster {}: its edge has never connected", cluster.name),
                href,
            });
            continue;
        };
        if !cluster.connected {
            attention.push(Attention {
                severity: "bad",
                text: format!(
                    "cluster {}: edge disconnected, last seen {}",
                    cluster.name,
                    cluster
                        .reported_at
                        .as_deref()
                        .map(layout::ago)
                        .unwrap_or_default()
                ),
                href: href.clone(),
            });
        }
        for proxy in &status.proxies {
            if let Some(nack) = &proxy.nack {
                attention.push(Attention {
                    severity: "bad",
                    text: format!(
                        "{} in {}: refused its {} ({})",
                        proxy.node, cluster.name, nack.resource_type, nack.message
                    ),
                    href: format!("{href}#proxy-{}", layout::encode(&proxy.node)),
                });
            }
            if proxy.certificate.as_ref().is_some_and(|c| c.overdue) {
                attention.push(Attention {
                    severity: "bad",
                    text: format!(
                        "{} in {}: its certificate is overdue for renewal",
                        proxy.node, cluster.name
                    ),
                    href: format!("{href}#proxy-{}", layout::encode(&proxy.node)),
                });
            }
        }
        if !status.errors.is_empty() {
            attention.push(Attention {
                severity: "warn",
                text: format!(
                    "cluster {}: {} configuration error(s) its edge could not translate",
                    cluster.name,
                    status.errors.len()
                ),
                href: format!("{href}#errors"),
            });
        }
        if let Some(ca) = &status.ca {
            let left = layout::seconds_until(&ca.expires_at).unwrap_or(0);
            if ca.expiring || left < EXPIRY_WARNING {
                attention.push(Attention {
                    severity: "bad",
                    text: format!(
                        "cluster {}: its CA expires {}",
                        cluster.name,
                        layout::until(&ca.expires_at)
                    ),
                    href: href.clone(),
                });
            }
        }
        if status.from_disk {
            attention.push(Attention {
                severity: "warn",
                text: format!(
                    "cluster {}: the edge serves configuration from its disk (it has not reached the server since it started)",
                    cluster.name
                ),
                href,
            });
        }
    }
    for root in roots.iter().flatten() {
        let left = layout::seconds_until(&root.expires_at).unwrap_or(0);
        if root.state == RootState::Signing && left < ROOT_EXPIRY_WARNING {
            attention.push(Attention {
                severity: "bad",
                text: format!(
                    "the signing root CA {} expires {}",
                    root.id,
                    layout::until(&root.expires_at)
                ),
                href: "#roots".into(),
            });
        }
    }
    for (service, totals) in &by_service {
        let row = TrafficRow::new(None, service.clone(), totals, seconds);
        if health(row.success_rate, row.requests) == "bad" {
            attention.push(Attention {
                severity: "bad",
                text: format!(
                    "{}/{}: {} of requests succeed over the last minute",
                    service.namespace,
                    service.service,
                    percent(row.success_rate)
                ),
                href: service_url(&service.namespace, &service.service),
            });
        }
    }
    attention.sort_by_key(|a| a.severity != "bad");

    let proxies: usize = estate.services.values().map(|s| s.instances.len()).sum();
    let body = html! {
        h1 { "Overview" }
        section aria-labelledby="attention-h" {
            h2 #attention-h { "Needs attention" }
            @if attention.is_empty() {
                p.calm { "Nothing needs attention." }
            } @else {
                ul.attention {
                    @for a in &attention {
                        li { (badge(a.severity, if a.severity == "bad" { "problem" } else { "warning" })) " " a href=(a.href) { (a.text) } }
                    }
                }
            }
        }
        section aria-labelledby="now-h" {
            h2 #now-h { "Traffic in the last minute" }
            dl.figures {
                div { dt { "Requests" } dd #mesh-rps { (rate(mesh.requests_per_second)) } }
                div { dt { "Success" } dd class=(health(mesh.success_rate, mesh.requests)) { (percent(mesh.success_rate)) } }
                div { dt { "p50" } dd { (latency(mesh.p50_seconds)) } }
                div { dt { "p99" } dd { (latency(mesh.p99_seconds)) } }
                div { dt { "mTLS" } dd { (percent(mesh.mtls_share)) } }
                div { dt { "Services" } dd { a href="/ui/services" { (estate.services.len()) } } }
                div { dt { "Sidecars" } dd { (proxies) } }
            }
        }
        section aria-labelledby="clusters-h" {
            h2 #clusters-h { "Clusters" }
            (clusters_table(&estate, directory_revision))
        }
        @if let Some(roots) = &roots {
            section aria-labelledby="roots" {
                h2 #roots { "Root certificate authorities" }
                table {
                    thead { tr { th scope="col" { "Root" } th scope="col" { "Trust domain" } th scope="col" { "State" } th scope="col" { "Expires" } } }
                    tbody {
                        @for root in roots {
                            tr {
                                td { code { (root.id) } }
                                td { (root.trust_domain) }
                                td { (format!("{:?}", root.state).to_lowercase()) }
                                td { (layout::expiry(&root.expires_at)) }
                            }
                        }
                        @if roots.is_empty() { (layout::empty(4, "No root yet.")) }
                    }
                }
            }
        }
    };
    Ok(layout::page(
        &caller,
        Some(Section::Overview),
        "Overview",
        layout::LIVE,
        body,
    ))
}

/// `directory_revision`: the server's, to tell an edge that lags.
fn clusters_table(estate: &Estate, directory_revision: i64) -> Markup {
    html! {
        table #clusters {
            thead {
                tr {
                    th scope="col" { "Cluster" }
                    th scope="col" { "Region / zone" }
                    th scope="col" { "Edge" }
                    th scope="col" { "Proxies" }
                    th scope="col" { "NACKs" }
                    th scope="col" { "Config errors" }
                    th scope="col" { "CA expires" }
                    th scope="col" { "Directory" }
                }
            }
            tbody {
                @for c in &estate.clusters {
                    @let status = c.status.as_ref();
                    @let proxies = status.map(|s| s.proxies.len()).unwrap_or(0);
                    @let connected = status.map(|s| s.proxies.iter().filter(|p| p.connected).count()).unwrap_or(0);
                    @let nacks = status.map(|s| s.proxies.iter().filter(|p| p.nack.is_some()).count()).unwrap_or(0);
                    @let errors = status.map(|s| s.errors.len()).unwrap_or(0);
                    tr data-cluster=(c.name) {
                        th scope="row" { a href=(format!("/ui/clusters/{}", layout::encode(&c.name))) { (c.name) } }
                        td { (c.region) @if !c.zone.is_empty() { " / " (c.zone) } }
                        td.edge {
                            @match (&c.reported_at, c.connected) {
                                (None, _) => { (badge("bad", "never connected")) }
                                (Some(at), true) => { (badge("ok", "connected")) " " (layout::time(at)) }
                                (Some(at), false) => { (badge("bad", "disconnected")) " last seen " (layout::time(at)) }
                            }
                        }
                        td.num { (connected) " / " (proxies) }
                        td.num class=[(nacks > 0).then_some("bad")] { (nacks) }
                        td.num class=[(errors > 0).then_some("warn")] { (errors) }
                        td {
                            @match status.and_then(|s| s.ca.as_ref()) {
                                Some(ca) => { (layout::expiry(&ca.expires_at)) }
                                None => { "–" }
                            }
                        }
                        td {
                            @match status.and_then(|s| s.directory.as_ref()) {
                                Some(d) => {
                                    @if d.revision >= directory_revision { (badge("ok", "current")) } @else { (badge("warn", &format!("behind: {} of {directory_revision}", d.revision))) }
                                    " " (d.clusters) " other cluster(s), " (d.services) " service(s)"
                                    @if d.from_disk { " " (badge("warn", "from disk")) }
                                }
                                None => { "–" }
                            }
                        }
                    }
                }
                @if estate.clusters.is_empty() {
                    (layout::empty(8, "No cluster you may read."))
                }
            }
        }
    }
}
