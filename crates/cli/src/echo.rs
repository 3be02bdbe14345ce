//! `weft x echo`: a small test workload. It answers every request with its
//! service, version and instance, and the request it saw; query parameters
//! let tests inject behavior:
//! `?status=503` answers with that status, `?delay=300ms` waits first,
//! `?trickle=2s` sends the headers at once and the body over that time,
//! `?fail=NAME` answers 503 only on the instance called NAME, and
//! `?call=HOST` (with `--outbound`) first calls HOST through the sidecar,
//! passing on the W3C trace context as an app in a traced mesh must, and
//! answers with that call's status.
//!
//! It also serves gRPC on the same port (h2c): the standard health service
//! (`grpc.health.v1.Health`), SERVING for "" and for its service name, so
//! tests can check gRPC through the mesh. Every response, gRPC included,
//! names the instance in the `x-echo-instance` header.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use serde::Serialize;

use crate::server::shutdown_signal;

#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[arg(long)]
    pub service: String,
    #[arg(long, default_value = "v1")]
    pub version: String,
    /// This instance's name [default: SERVICE-VERSION]
    #[arg(long)]
    pub instance: Option<String>,
    /// The sidecar's outbound address, for `?call=HOST`
    #[arg(long)]
    pub outbound: Option<String>,
}

struct Identity {
    service: String,
    version: String,
    instance: String,
    outbound: Option<String>,
    http: reqwest::Client,
}

/// The headers of the W3C trace context.
const TRACE_CONTEXT: [&str; 2] = ["traceparent", "tracestate"];

/// Calls `host` through the sidecar with the incoming trace context;
/// its status, or 502 if it could not be asked.
async fn call_on(me: &Identity, host: &str, headers: &HeaderMap) -> StatusCode {
    let Some(outbound) = &me.outbound else {
        return StatusCode::BAD_REQUEST;
    };
    let mut request = me
        .http
        .get(format!("http://{outbound}/"))
        .header("host", host);
    for name in TRACE_CONTEXT {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value.as_bytes());
        }
    }
    match request.send().await {
        Ok(response) => {
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY)
        }
        Err(_) => StatusCode::BAD_GATEWAY,
    }
}

#[derive(Serialize)]
struct Echo<'a> {
    service: &'a str,
    version: &'a str,
    instance: &'a str,
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
}

async fn answer(
    State(me): State<Arc<Identity>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> impl IntoResponse {
    if let Some(delay) = query
        .get("delay")
        .and_then(|d| humantime::parse_duration(d).ok())
    {
        tokio::time::sleep(delay.min(Duration::from_secs(60))).await;
    }
    let mut status = query
        .get("status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if query.get("fail") == Some(&me.instance) {
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    if let Some(host) = query.get("call") {
        status = call_on(&me, host, &headers).await;
    }
    let body = Echo {
        service: &me.service,
        version: &me.version,
        instance: &me.instance,
        method: method.to_string(),
        path: uri.path().to_string(),
        query: query.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let trickle = query
        .get("trickle")
        .and_then(|d| humantime::parse_duration(d).ok())
        .map(|d| d.min(Duration::from_secs(60)));
    match trickle {
        None => (status, [(CONTENT_TYPE, "application/json")], body).into_response(),
        Some(over) => (
            status,
            [(CONTENT_TYPE, "application/json")],
            axum::body::Body::from_stream(trickled(body, over)),
        )
            .into_response(),
    }
}

/// `body` in ten pieces, the first at once and the others spread over
/// `over`.
fn trickled(
    body: Vec<u8>,
    over: Duration,
) -> impl tokio_stream::Stream<Item = Result<Vec<u8>, std::convert::Infallible>> {
    const PIECES: usize = 10;
    let size = body.len().div_ceil(PIECES).max(1);
    let pieces: Vec<Vec<u8>> = body.chunks(size).map(<[u8]>::to_vec).collect();
    let pause = over / PIECES as u32;
    tokio_stream::StreamExt::then(
        tokio_stream::iter(pieces.into_iter().enumerate()),
        move |(i, piece)| async move {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            Ok(piece)
        },
    )
}

pub async fn run(args: EchoArgs) -> Result<()> {
    let me = Arc::new(Identity {
        instance: args
            .instance
            .unwrap_or_else(|| format!("{}-{}", args.service, args.version)),
        service: args.service,
        version: args.version,
        outbound: args.outbound,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("an HTTP client")?,
    });
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!(
        "weft echo: {} ({}) on http://{}",
        me.instance,
        me.version,
        listener.local_addr()?
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(&me.service, tonic_health::ServingStatus::Serving)
        .await;
    let instance = HeaderValue::from_str(&me.instance)
        .with_context(|| format!("--instance {:?} is not a valid header value", me.instance))?;
    let http = axum::Router::new().fallback(answer).with_state(me);
    let app = tonic::service::Routes::new(health_service)
        .into_axum_router()
        .fallback_service(http)
        .layer(axum::middleware::map_response(
            move |mut response: axum::response::Response| {
                let instance = instance.clone();
                async move {
                    response.headers_mut().insert("x-echo-instance", instance);
                    response
                }
            },
        ));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}
