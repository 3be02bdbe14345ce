//! The admin port, on loopback as Envoy's: `/ready` (200 once the first
//! configuration is in and its secrets are held), `/config_dump` (what
//! the proxy holds, in the shapes of Envoy's), `/stats` (Envoy's text
//! form, `?filter=REGEX`) and `/stats/prometheus`.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{Boxed, full};
use crate::runtime::Runtime;
use crate::stats::Stats;
use crate::xds::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

/// Serves the admin port on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    runtime: watch::Receiver<Arc<Runtime>>,
    stats: Arc<Stats>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let runtime = runtime.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let runtime = runtime.borrow().clone();
                let stats = stats.clone();
                async move { answer(&request, &runtime, &stats) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Boxed> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

fn query(request: &Request<Incoming>, name: &str) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn answer(
    request: &Request<Incoming>,
    runtime: &Runtime,
    stats: &Stats,
) -> Result<Response<Boxed>, Infallible> {
    Ok(match request.uri().path() {
        "/ready" => {
            if runtime.ready() {
                reply(StatusCode::OK, "text/plain", "LIVE\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "PRE_INITIALIZING\n".into(),
                )
            }
        }
        "/stats" => {
            let filter = match query(request, "filter").filter(|f| !f.is_empty()) {
                Some(f) => match regex::Regex::new(&f) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        return Ok(reply(
                            StatusCode::BAD_REQUEST,
                            "text/plain",
                            format!("filter: not a regular expression: {e}\n"),
                        ));
                    }
                },
                None => None,
            };
            reply(StatusCode::OK, "text/plain", stats.text(filter.as_ref()))
        }
        "/stats/prometheus" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            stats.prometheus(),
        ),
        "/clusters" => reply(StatusCode::OK, "text/plain", clusters(runtime)),
        "/config_dump" => match config_dump(runtime) {
            Ok(dump) => reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&dump).unwrap_or_default(),
            ),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "weft-proxy admin: /ready, /clusters, /config_dump, /stats, /stats/prometheus\n".into(),
        ),
    })
}

/// Each cluster and its endpoints, in the lines of Envoy's `/clusters`:
/// `CLUSTER::ADDRESS::FIELD::VALUE`.
fn clusters(runtime: &Runtime) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut names: Vec<&String> = runtime.clusters.keys().collect();
    names.sort();
    for name in names {
        let cluster = &runtime.clusters[name];
        let _ = writeln!(out, "{name}::observability_name::{name}");
        for group in &cluster.assignment.groups {
            for endpoint in &group.endpoints {
                let address = match &endpoint.address {
                    crate::config::Target::Ip(a) => a.to_string(),
                    crate::config::Target::Host(h, p) => format!("{h}:{p}"),
                };
                let ejected = address.parse().is_ok_and(|a| cluster.shared.ejected(&a));
                let health = if ejected {
                    "/failed_outlier_check"
                } else {
                    "healthy"
                };
                let in_flight = address.parse().map_or(0, |a| cluster.shared.in_flight(&a));
                for (field, value) in [
                    ("hostname", endpoint.hostname.clone()),
                    ("health_flags", health.to_string()),
                    ("weight", endpoint.weight.to_string()),
                    ("region", group.locality.region.clone()),
                    ("zone", group.locality.zone.clone()),
                    ("priority", group.priority.to_string()),
                    ("rq_active", in_flight.to_string()),
                ] {
                    let _ = writeln!(out, "{name}::{address}::{field}::{value}");
                }
            }
        }
    }
    out
}

/// What the proxy holds, as Envoy's `/config_dump` shows it: one
/// `*ConfigDump` per type with each resource as it arrived and its
/// version. Secrets are named, never shown.
fn config_dump(runtime: &Runtime) -> Result<Value, weft_xds::json::JsonError> {
    let resources = &runtime.resources;
    let of = |type_url: &str| -> Result<Vec<(String, String, Value)>, weft_xds::json::JsonError> {
        resources
            .raw
            .iter()
            .filter(|((t, _), _)| t == type_url)
            .map(|((t, name), any)| {
                let version = resources
                    .versions
                    .get(&(t.clone(), name.clone()))
                    .cloned()
                    .unwrap_or_default();
                Ok((name.clone(), version, weft_xds::json::to_json(any)?))
            })
            .collect()
    };
    let admin = |name: &str| format!("type.googleapis.com/envoy.admin.v3.{name}");
    let clusters: Vec<Value> = of(CLUSTER_TYPE)?
        .into_iter()
        .map(|(_, v, r)| json!({"version_info": v, "cluster": r}))
        .collect();
    let listeners: Vec<Value> = of(LISTENER_TYPE)?
        .into_iter()
        .map(|(n, v, r)| json!({"name": n, "active_state": {"version_info": v, "listener": r}}))
        .collect();
    let routes: Vec<Value> = of(ROUTE_TYPE)?
        .into_iter()
        .map(|(_, v, r)| json!({"version_info": v, "route_config": r}))
        .collect();
    let endpoints: Vec<Value> = of(ENDPOINT_TYPE)?
        .into_iter()
        .map(|(_, v, r)| json!({"version_info": v, "endpoint_config": r}))
        .collect();
    let secrets: Vec<Value> = runtime
        .secrets
        .certificates
        .keys()
        .chain(runtime.secrets.roots.keys())
        .map(|name| json!({"name": name}))
        .collect();
    Ok(json!({"configs": [
        {"@type": admin("ClustersConfigDump"), "dynamic_active_clusters": clusters},
        {"@type": admin("ListenersConfigDump"), "dynamic_listeners": listeners},
        {"@type": admin("RoutesConfigDump"), "dynamic_route_configs": routes},
        {"@type": admin("EndpointsConfigDump"), "dynamic_endpoint_configs": endpoints},
        {"@type": admin("SecretsConfigDump"), "dynamic_active_secrets": secrets},
    ]}))
}
