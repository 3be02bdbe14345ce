//! The topology: services as nodes in bands by workspace and cluster,
//! calls as arrows coloured by success rate and labelled with requests
//! per second and p99, over a chosen window. Nodes are laid out in
//! columns by how deep in a call chain they sit (callers left), on the
//! server, so the page is an ordinary SVG that renders at once and
//! links like any page: a node's link focuses it and lists its
//! neighbours.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::Duration;

use axum::extract::State;
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use weft_api::traffic_stats::{ServiceAt, Totals, TrafficRow};

use super::estate::{Estate, service_url};
use super::layout::{self, Section, health, latency, percent, rate};
use super::{Page, UiCaller, UiError, UiQuery};
use crate::AppState;
use crate::error::ApiError;

/// The windows one may pick.
const WINDOWS: [&str; 4] = ["1m", "5m", "15m", "1h"];
const COLUMN: f64 = 340.0;
const ROW: f64 = 52.0;
const NODE_WIDTH: f64 = 170.0;
const NODE_HEIGHT: f64 = 36.0;
const BAND_LABEL: f64 = 22.0;
const LEFT: f64 = 16.0;
/// Above this many arrows, labels show only around the focused node.
const LABELLED_EDGES: usize = 80;
/// The calls table lists at most this many, the busiest, unless a
/// service is selected.
const LISTED_CALLS: usize = 100;
/// Above this many services, the page redraws itself less often: it
/// weighs about a kilobyte per service and call.
const LARGE: usize = 300;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyQuery {
    since: Option<String>,
    /// A node: `cluster/namespace/service`.
    focus: Option<String>,
    /// Only calls touching this workspace (its path).
    workspace: Option<String>,
}

/// A service in one cluster.
struct Node {
    at: ServiceAt,
    key: String,
    band: usize,
    rank: usize,
    row: usize,
    /// What it answered (as callee).
    served: Totals,
}

struct Edge {
    from: usize,
    to: usize,
    totals: Totals,
}

/// A band: the services of one workspace in one cluster.
struct Band {
    label: String,
    top: f64,
    height: f64,
}

/// A laid-out call graph.
struct Graph {
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    bands: Vec<Band>,
    width: f64,
    height: f64,
}

fn key_of(at: &ServiceAt) -> String {
    format!("{}/{}/{}", at.cluster, at.namespace, at.service)
}

impl Graph {
    fn build(estate: &Estate, pairs: Vec<weft_api::traffic_stats::PairTraffic>) -> Graph {
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut nodes: Vec<Node> = Vec::new();
        let mut node = |at: ServiceAt, nodes: &mut Vec<Node>| -> usize {
            let key = key_of(&at);
            *index.entry(key.clone()).or_insert_with(|| {
                nodes.push(Node {
                    at,
                    key,
                    band: 0,
                    rank: 0,
                    row: 0,
                    served: Totals::default(),
                });
                nodes.len() - 1
            })
        };
        let mut edges = Vec::new();
        for pair in pairs {
            let mut destination = pair.destination.clone();
            destination.cluster = crate::traffic::callee_cluster(&pair).to_string();
            let from = node(pair.source, &mut nodes);
            let to = node(destination, &mut nodes);
            nodes[to].served.add(&pair.totals);
            edges.push(Edge {
                from,
                to,
                totals: pair.totals,
            });
        }
        // Services with instances but no traffic in the window show too.
        for service in estate.services.values() {
            for cluster in &service.clusters {
                node(
                    ServiceAt {
                        cluster: cluster.clone(),
                        namespace: service.namespace.clone(),
                        service: service.name.clone(),
                    },
                    &mut nodes,
                );
            }
        }
        let ranks = ranks(nodes.len(), &edges);
        let mut bands: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, n) in nodes.iter_mut().enumerate() {
            n.rank = ranks[i];
            let workspace = estate
                .workspace_of(&n.at.cluster, &n.at.namespace)
                .map_or_else(
                    || "other workspaces".to_string(),
                    |w| format!("{}/{}", w.tenant, w.name),
                );
            bands
                .entry(format!("{workspace} · {}", n.at.cluster))
                .or_default()
                .push(i);
        }
        let mut laid = Vec::new();
        let mut top = 0.0;
        let max_rank = nodes.iter().map(|n| n.rank).max().unwrap_or(0);
        for (b, (label, mut members)) in bands.into_iter().enumerate() {
            members.sort_by(|x, y| nodes[*x].key.cmp(&nodes[*y].key));
            let mut rows_per_rank = vec![0usize; max_rank + 1];
            for i in members {
                let n = &mut nodes[i];
                n.band = b;
                n.row = rows_per_rank[n.rank];
                rows_per_rank[n.rank] += 1;
            }
            let rows = rows_per_rank.into_iter().max().unwrap_or(1).max(1);
            let height = BAND_LABEL + rows as f64 * ROW + 8.0;
            laid.push(Band { label, top, height });
            top += height + 10.0;
        }
        Graph {
            nodes,
            edges,
            bands: laid,
            width: LEFT * 2.0 + (max_rank + 1) as f64 * COLUMN,
            height: top.max(40.0),
        }
    }

    fn position(&self, i: usize) -> (f64, f64) {
        let n = &self.nodes[i];
        let band = &self.bands[n.band];
        (
            LEFT + n.rank as f64 * COLUMN,
            band.top + BAND_LABEL + n.row as f64 * ROW,
        )
    }
}

/// Each node's column: the longest chain of calls leading to it, with
/// calls that close a cycle left out (found by a depth-first walk).
fn ranks(count: usize, edges: &[Edge]) -> Vec<usize> {
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (e, edge) in edges.iter().enumerate() {
        out[edge.from].push(e);
    }
    // 0 unvisited, 1 on the walk's stack, 2 done.
    let mut mark = vec![0u8; count];
    let mut order = Vec::with_capacity(count);
    let mut back = vec![false; edges.len()];
    for start in 0..count {
        if mark[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        mark[start] = 1;
        while let Some((v, next)) = stack.pop() {
            if let Some(&e) = out[v].get(next) {
                stack.push((v, next + 1));
                let w = edges[e].to;
                match mark[w] {
                    0 => {
                        mark[w] = 1;
                        stack.push((w, 0));
                    }
                    1 => back[e] = true,
                    _ => {}
                }
            } else {
                mark[v] = 2;
                order.push(v);
            }
        }
    }
    let mut rank = vec![0usize; count];
    for &v in order.iter().rev() {
        for &e in &out[v] {
            if !back[e] {
                let w = edges[e].to;
                rank[w] = rank[w].max(rank[v] + 1);
            }
        }
    }
    rank
}

fn window(since: Option<&str>) -> Result<(&'static str, Duration), ApiError> {
    let since = since.unwrap_or("5m");
    let Some(pick) = WINDOWS.iter().find(|w| **w == since) else {
        return Err(ApiError::bad_request(format!(
            "since: {since:?} is not one of {}",
            WINDOWS.join(", ")
        )));
    };
    Ok((
        pick,
        humantime::parse_duration(pick).expect("a valid window"),
    ))
}

pub async fn page(
    State(state): State<AppState>,
    UiCaller(caller): UiCaller,
    UiQuery(query): UiQuery<TopologyQuery>,
) -> Page {
    let fail = |e: ApiError| UiError::of(&caller, e);
    let (since_name, since) = window(query.since.as_deref()).map_err(fail)?;
    let estate = Estate::load(&state, &caller).await.map_err(fail)?;
    let (mut pairs, seconds) =
        crate::traffic::visible_pairs_over(&state, &caller, since, None, true)
            .await
            .map_err(fail)?;
    if let Some(ws) = &query.workspace {
        let within = |at: &ServiceAt| {
            estate
                .workspace_of(&at.cluster, &at.namespace)
                .is_some_and(|w| &w.path == ws)
        };
        pairs.retain(|p| within(&p.source) || within(&p.destination));
    }
    let graph = Graph::build(&estate, pairs);
    let focus = query
        .focus
        .as_ref()
        .and_then(|f| graph.nodes.iter().position(|n| &n.key == f));
    let base = |focus: Option<&str>| {
        let mut url = url::form_urlencoded::Serializer::new(String::from("/ui/topology?"));
        url.append_pair("since", since_name);
        if let Some(ws) = &query.workspace {
            url.append_pair("workspace", ws);
        }
        if let Some(f) = focus {
            url.append_pair("focus", f);
        }
        url.finish()
    };
    let body = html! {
        h1 { "Topology" }
        form.controls method="get" action="/ui/topology" {
            label for="since" { "Window" }
            select #since name="since" data-autosubmit {
                @for w in WINDOWS { option value=(w) selected[w == since_name] { "last " (w) } }
            }
            label for="workspace" { "Workspace" }
            select #workspace name="workspace" data-autosubmit {
                option value="" selected[query.workspace.is_none()] { "all" }
                @for w in &estate.workspaces {
                    option value=(w.path) selected[query.workspace.as_deref() == Some(w.path.as_str())] { (w.tenant) "/" (w.name) }
                }
            }
            @if let Some(f) = focus { input type="hidden" name="focus" value=(graph.nodes[f].key); }
            button type="submit" { "Show" }
            span.legend aria-hidden="true" {
                span.swatch.ok {} "≥ 99%" span.swatch.warn {} "≥ 95%" span.swatch.bad {} "< 95%" span.swatch.idle {} "no calls" span.swatch.cross {} "cross-cluster"
            }
        }
        p.help { (graph.nodes.len()) " services, " (graph.edges.len()) " calls over the last " (format!("{seconds:.0}")) " s. Select a service to see its neighbours." }
        div.topology {
            div.graph tabindex="0" role="region" aria-label="Call graph; the table below lists the same calls" {
                (svg(&graph, focus, seconds, &base))
            }
            @if let Some(f) = focus {
                aside.neighbours aria-labelledby="focus-h" {
                    (neighbours(&graph, f, seconds, &base))
                }
            }
        }
        details #calls open[graph.edges.len() <= LABELLED_EDGES] {
            summary {
                "Calls (" (graph.edges.len()) ")"
                @if graph.edges.len() > LISTED_CALLS { ": the " (LISTED_CALLS) " busiest; select a service or a workspace for the rest" }
            }
            (calls_table(&graph, seconds, LISTED_CALLS, |_| true))
        }
    };
    let refresh = if graph.nodes.len() > LARGE {
        Some(6 * layout::REFRESH_SECONDS)
    } else {
        Some(layout::REFRESH_SECONDS)
    };
    Ok(layout::page(
        &caller,
        Some(Section::Topology),
        "Topology",
        refresh,
        body,
    ))
}

fn node_label(n: &Node) -> String {
    let name = format!("{}/{}", n.at.namespace, n.at.service);
    if name.chars().count() > 24 {
        format!("{}…", name.chars().take(23).collect::<String>())
    } else {
        name
    }
}

/// The graph as SVG, written directly: at a thousand services the
/// template macro's nesting would cost more than it clarifies.
fn svg(
    graph: &Graph,
    focus: Option<usize>,
    seconds: f64,
    base: &dyn Fn(Option<&str>) -> String,
) -> Markup {
    let esc = |s: &str| html! { (s) }.into_string();
    let mut out = String::with_capacity(graph.nodes.len() * 600 + graph.edges.len() * 400);
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" role="group" aria-label="Services and the calls between them" width="{w}" height="{h}" viewBox="0 0 {w} {h}"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" class="arrowhead"/></marker></defs>"#,
        w = graph.width,
        h = graph.height
    );
    for band in &graph.bands {
        let _ = write!(
            out,
            r#"<g class="band"><rect x="2" y="{}" width="{}" height="{}" rx="6"/><text x="10" y="{}">{}</text></g>"#,
            band.top,
            graph.width - 4.0,
            band.height,
            band.top + 15.0,
            esc(&band.label)
        );
    }
    let near = |i: usize| {
        focus.is_none_or(|f| {
            f == i
                || graph
                    .edges
                    .iter()
                    .any(|e| (e.from == f && e.to == i) || (e.to == f && e.from == i))
        })
    };
    let labelled = graph.edges.len() <= LABELLED_EDGES;
    for edge in &graph.edges {
        let (x1, y1) = graph.position(edge.from);
        let (x2, y2) = graph.position(edge.to);
        let (sx, sy) = (x1 + NODE_WIDTH, y1 + NODE_HEIGHT / 2.0);
        let (tx, ty) = (x2, y2 + NODE_HEIGHT / 2.0);
        let d = if tx > sx {
            let dx = (tx - sx) / 2.0;
            format!("M{sx},{sy} C{},{sy} {},{ty} {tx},{ty}", sx + dx, tx - dx)
        } else {
            // A call back to an earlier column (or within one): loop below.
            let low = sy.max(ty) + ROW * 0.6;
            format!(
                "M{sx},{sy} C{},{low} {},{low} {tx},{ty}",
                sx + 60.0,
                tx - 60.0
            )
        };
        let from = &graph.nodes[edge.from];
        let to = &graph.nodes[edge.to];
        let row = TrafficRow::new(None, ServiceAt::default(), &edge.totals, seconds);
        let touches_focus = focus.is_some_and(|f| edge.from == f || edge.to == f);
        let cross = from.at.cluster != to.at.cluster;
        let class = format!(
            "edge {}{}{}",
            health(row.success_rate, row.requests),
            if cross { " cross" } else { "" },
            if focus.is_some() && !touches_focus {
                " dim"
            } else {
                ""
            }
        );
        let width = 1.2 + (edge.totals.requests as f64).log10().max(0.0);
        let _ = write!(
            out,
            r#"<g class="{class}" data-source="{}" data-destination="{}" data-requests="{}" data-errors="{}"><title>{} → {}{}: {}, {} success, p99 {}</title><path d="{d}" stroke-width="{width:.1}" marker-end="url(#arrow)"/>"#,
            esc(&from.key),
            esc(&to.key),
            edge.totals.requests,
            edge.totals.errors,
            esc(&from.key),
            esc(&to.key),
            if cross { " (cross-cluster)" } else { "" },
            rate(row.requests_per_second),
            percent(row.success_rate),
            latency(row.p99_seconds),
        );
        if labelled || touches_focus {
            let (mx, my) = if tx > sx {
                ((sx + tx) / 2.0, (sy + ty) / 2.0 - 4.0)
            } else {
                ((sx + tx) / 2.0, sy.max(ty) + ROW * 0.45)
            };
            let _ = write!(
                out,
                r#"<text class="edge-label" x="{mx:.0}" y="{my:.0}" text-anchor="middle">{} · p99 {}</text>"#,
                rate(row.requests_per_second),
                latency(row.p99_seconds)
            );
        }
        out.push_str("</g>");
    }
    for (i, n) in graph.nodes.iter().enumerate() {
        let (x, y) = graph.position(i);
        let served = TrafficRow::new(None, n.at.clone(), &n.served, seconds);
        let class = format!(
            "node {}{}{}",
            health(served.success_rate, served.requests),
            if focus == Some(i) { " focus" } else { "" },
            if near(i) { "" } else { " dim" }
        );
        let _ = write!(
            out,
            r#"<a href="{}" class="{class}" data-service="{}"><title>{}</title><rect x="{x}" y="{y}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="5"/><text x="{}" y="{}">{}</text><text class="sub" x="{}" y="{}">{}</text></a>"#,
            esc(&base(Some(&n.key))),
            esc(&n.key),
            esc(&n.key),
            x + 8.0,
            y + 15.0,
            esc(&node_label(n)),
            x + 8.0,
            y + 29.0,
            if n.served.requests > 0 {
                format!(
                    "{} · {}",
                    rate(served.requests_per_second),
                    percent(served.success_rate)
                )
            } else {
                String::new()
            },
        );
    }
    out.push_str("</svg>");
    PreEscaped(out)
}

fn neighbours(
    graph: &Graph,
    f: usize,
    seconds: f64,
    base: &dyn Fn(Option<&str>) -> String,
) -> Markup {
    let n = &graph.nodes[f];
    html! {
        h2 #focus-h { (n.at.namespace) "/" (n.at.service) }
        p { "in " (n.at.cluster) " · " a href=(service_url(&n.at.namespace, &n.at.service)) { "service page" } " · " a href=(base(None)) { "clear selection" } }
        (calls_table(graph, seconds, usize::MAX, |e| e.from == f || e.to == f))
    }
}

/// The calls `keep` keeps, busiest first, at most `limit`.
fn calls_table(graph: &Graph, seconds: f64, limit: usize, keep: impl Fn(&Edge) -> bool) -> Markup {
    let mut edges: Vec<&Edge> = graph.edges.iter().filter(|e| keep(e)).collect();
    edges.sort_by_key(|e| std::cmp::Reverse(e.totals.requests));
    edges.truncate(limit);
    html! {
        table.calls {
            thead { tr { th scope="col" { "Caller" } th scope="col" { "Callee" } th scope="col" { "Requests/s" } th scope="col" { "Success" } th scope="col" { "p99" } } }
            tbody {
                @for e in edges {
                    @let row = TrafficRow::new(None, ServiceAt::default(), &e.totals, seconds);
                    @let (from, to) = (&graph.nodes[e.from], &graph.nodes[e.to]);
                    tr data-source=(from.key) data-destination=(to.key) {
                        td { a href=(service_url(&from.at.namespace, &from.at.service)) { (from.key) } }
                        td {
                            a href=(service_url(&to.at.namespace, &to.at.service)) { (to.key) }
                            @if from.at.cluster != to.at.cluster { " " (layout::badge("cross", "cross-cluster")) }
                        }
                        td.num.rps { (rate(row.requests_per_second)) }
                        td.num class=(health(row.success_rate, row.requests)) { (percent(row.success_rate)) }
                        td.num { (latency(row.p99_seconds)) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(from: usize, to: usize) -> Edge {
        Edge {
            from,
            to,
            totals: Totals::default(),
        }
    }

    #[test]
    fn callers_sit_left_of_what_they_call_and_cycles_do_not_loop() {
        // 0 → 1 → 2, 0 → 2, and 2 → 1 closing a cycle; 3 alone.
        let edges = [edge(0, 1), edge(1, 2), edge(0, 2), edge(2, 1)];
        let ranks = ranks(4, &edges);
        assert_eq!(ranks, [0, 1, 2, 0]);
        // A cycle with no way in still gets finite columns.
        let ranks = super::ranks(2, &[edge(0, 1), edge(1, 0)]);
        assert_eq!(ranks, [0, 1]);
    }

    #[test]
    fn only_the_listed_windows_are_taken() {
        assert_eq!(window(None).unwrap().1, Duration::from_secs(300));
        assert_eq!(window(Some("1h")).unwrap().0, "1h");
        let refused = window(Some("2d")).unwrap_err();
        assert!(
            refused.body.message.starts_with("since: \"2d\""),
            "{}",
            refused.body.message
        );
    }
}
