//! The HTTP connection manager: what happens to each request a listener
//! takes, in Envoy's order — the caller's certificate forwarded or not
//! (`x-forwarded-client-cert` is always dropped first), hop-by-hop
//! headers removed, the scheme (`x-forwarded-proto`) and a request id
//! given when the caller gave none, then the chain's filters in order
//! (header stamps, header to metadata, authorization), then the router;
//! every response named by the `server` header; the access logs once the
//! response has been sent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::authorize::{Caller, Verdict, authorize};
use crate::body::{Boxed, Counted, full};
use crate::config::{HttpFilter, VirtualHost};
use crate::record::Record;
use crate::router::{self, Outcome};
use crate::runtime::{ChainRuntime, HttpStats, Runtime};
use crate::stats::Stats;
use crate::tokens::{self, Checked, KeyStore, TokenFailure};

/// What a connection proved and where it came in.
pub struct Downstream {
    pub chain: Arc<ChainRuntime>,
    /// The caller's SPIFFE ID, from its verified certificate.
    pub peer: Option<Arc<str>>,
    /// SHA-256 of the caller's certificate, hex (`Hash=` of the XFCC).
    pub peer_hash: Option<String>,
    pub remote: SocketAddr,
    pub runtime: watch::Receiver<Arc<Runtime>>,
    pub stats: Arc<Stats>,
    pub keys: Arc<KeyStore>,
}

/// A local reply: its status, body, flags and details.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub flags: &'static str,
    pub details: String,
    pub headers: Vec<(HeaderName, String)>,
}

impl Reply {
    pub fn new(status: u16, body: &str, flags: &'static str, details: &str) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            flags,
            details: details.to_string(),
            headers: Vec::new(),
        }
    }
}

/// A refused token's 401, as Envoy's `jwt_authn` answers it.
fn token_refused(failure: TokenFailure, authority: &str, path: &str) -> Reply {
    let path = path.split('?').next().unwrap_or_default();
    let mut challenge = format!("Bearer realm=\"http://{authority}{path}\"");
    if failure != TokenFailure::Missing {
        challenge.push_str(", error=\"invalid_token\"");
    }
    let mut reply = Reply::new(401, failure.message(), "", &failure.details());
    reply
        .headers
        .push((http::header::WWW_AUTHENTICATE, challenge));
    reply
}

/// Headers that belong to one connection, never passed on (names made
/// once: looking one up by text parses it every time).
const HOP_BY_HOP: [HeaderName; 6] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

pub fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    // `te` only as gRPC uses it.
    if headers
        .get(http::header::TE)
        .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        headers.remove(http::header::TE);
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

fn new_request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// What Envoy refuses before any filter runs when, as in all weft
/// translates, the connection manager has no `upgrade_configs` and no
/// route matches CONNECT: an HTTP/1.1 upgrade (but to h2c, which is only
/// dropped) is answered 403 and its connection closed; a CONNECT finds
/// no route.
fn protocol_switch_refused(parts: &http::request::Parts, stats: &HttpStats) -> Option<Reply> {
    if parts.method == http::Method::CONNECT {
        stats.no_route.fetch_add(1, Ordering::Relaxed);
        return Some(Reply::new(404, "", "NR", "route_not_found"));
    }
    if parts.version == Version::HTTP_2 {
        return None;
    }
    let asks_upgrade = parts
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = parts
        .headers
        .get(http::header::UPGRADE)
        .map(|v| v.as_bytes().to_ascii_lowercase());
    match upgrade {
        Some(to) if asks_upgrade && to != b"h2c" => Some(Reply::new(403, "", "", "upgrade_failed")),
        _ => None,
    }
}

const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The `x-envoy-*` request headers that would steer the router (its
/// timeouts, retries, tracing): Envoy drops them from a request it does
/// not take as internal, and with no `internal_address_config` Envoy
/// 1.40 takes none as internal (checked with a private address in
/// `x-forwarded-for`): a caller never steers either proxy this way.
const ENVOY_CONTROL_HEADERS: [HeaderName; 14] = [
    HeaderName::from_static("x-envoy-retriable-status-codes"),
    HeaderName::from_static("x-envoy-retriable-header-names"),
    HeaderName::from_static("x-envoy-retry-on"),
    HeaderName::from_static("x-envoy-retry-grpc-on"),
    HeaderName::from_static("x-envoy-max-retries"),
    HeaderName::from_static("x-envoy-upstream-alt-stat-name"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response"),
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-force-trace"),
    HeaderName::from_static("x-envoy-ip-tags"),
    HeaderName::from_static("x-envoy-original-url"),
    HeaderName::from_static("x-envoy-hedge-on-per-try-timeout"),
];

/// Serves one request of `downstream`'s connection.
pub async fn handle(
    downstream: Arc<Downstream>,
    request: Request<Incoming>,
) -> Result<Response<Boxed>, Infallible> {
    let started = Instant::now();
    let start = SystemTime::now();
    let runtime = downstream.runtime.borrow().clone();
    let chain = &downstream.chain;
    let manager = &chain.config.http;
    chain.stats.rq_total.fetch_add(1, Ordering::Relaxed);
    let (mut parts, body) = request.into_parts();
    let received = Arc::new(AtomicU64::new(0));
    let body = Counted::new(body, received.clone());
    let mut record = Record {
        start,
        duration: Default::default(),
        method: parts.method.clone(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/".into(), |p| p.as_str().to_string()),
        authority: parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default(),
        headers: http::HeaderMap::new(),
        protocol: protocol(parts.version),
        code: 0,
        flags: String::new(),
        details: String::new(),
        bytes_received: 0,
        bytes_sent: 0,
        route: None,
        cluster: None,
        upstream_host: None,
        upstream_host_name: None,
        upstream_peer: None,
        downstream_peer: downstream.peer.clone(),
        remote: downstream.remote,
        metadata: Vec::new(),
        cut_short: Arc::default(),
    };

    let mut outcome = protocol_switch_refused(&parts, &chain.stats).map(Outcome::Local);
    // Envoy closes the connection of a refused upgrade.
    let close = outcome.is_some() && parts.version != Version::HTTP_2;
    strip_hop_by_hop(&mut parts.headers);
    // Most requests carry none: one look at the names first.
    if parts
        .headers
        .keys()
        .any(|name| name.as_str().starts_with("x-envoy-"))
    {
        for name in &ENVOY_CONTROL_HEADERS {
            parts.headers.remove(name);
        }
    }
    let xfcc = HeaderName::from_static("x-forwarded-client-cert");
    parts.headers.remove(&xfcc);
    if manager.forward_caller
        && let Some(peer) = &downstream.peer
    {
        let mut value = String::new();
        if let Some(local) = &chain.local_uri {
            value.push_str(&format!("By={local};"));
        }
        if let Some(hash) = &downstream.peer_hash {
            value.push_str(&format!("Hash={hash};"));
        }
        value.push_str(&format!("URI={peer}"));
        if let Ok(v) = HeaderValue::from_str(&value) {
            parts.headers.insert(xfcc, v);
        }
    }
    // As a proxy inside the network (no `use_remote_address`), Envoy
    // keeps the scheme the caller names and names it when none does.
    if !parts.headers.contains_key(FORWARDED_PROTO) {
        let scheme = if chain.tls.is_some() { "https" } else { "http" };
        parts
            .headers
            .insert(FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    let request_id = HeaderName::from_static("x-request-id");
    if !parts.headers.contains_key(&request_id)
        && let Ok(id) = HeaderValue::from_str(&new_request_id())
    {
        parts.headers.insert(request_id, id);
    }
    // Kept for the request logs only when there are any.
    if !manager.access_logs.is_empty() {
        record.headers = parts.headers.clone();
    }

    // The virtual host, once: authorization and the router both need it.
    let table = manager
        .inline_routes
        .clone()
        .or_else(|| runtime.resources.routes.get(&manager.route_table).cloned());
    let host = crate::routing::host_without_port(&parts);
    let virtual_host: Option<&VirtualHost> = table.as_deref().and_then(|t| t.virtual_host(&host));

    // The valid token's claims (authorization reads them), and the token
    // check's failure code (1: no token, where none was required).
    let mut claims: Option<serde_json::Value> = None;
    let mut token_failure: Option<u32> = None;
    let filters = if outcome.is_some() {
        &[][..]
    } else {
        &manager.filters[..]
    };
    for filter in filters {
        match filter {
            HttpFilter::RequestHeaders { set, remove } => {
                for (name, value) in set {
                    if let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_str(value),
                    ) {
                        parts.headers.insert(n, v);
                    }
                }
                for name in remove {
                    parts.headers.remove(name.as_str());
                }
            }
            HttpFilter::HeaderToMetadata {
                header,
                namespace,
                key,
                remove,
            } => {
                if let Some(value) = parts
                    .headers
                    .get(header.as_str())
                    .and_then(|v| v.to_str().ok())
                {
                    record
                        .metadata
                        .push((namespace.clone(), key.clone(), value.to_string()));
                }
                if *remove {
                    parts.headers.remove(header.as_str());
                }
            }
            HttpFilter::Rbac { .. } => {
                let Some(vh) = virtual_host else {
                    continue;
                };
                let caller = Caller {
                    principal: downstream.peer.as_deref(),
                    address: downstream.remote.ip(),
                    claims: claims.as_ref(),
                };
                match authorize(std::slice::from_ref(filter), vh, &parts, &caller) {
                    Verdict::Allowed => {
                        chain.stats.rbac_allowed.fetch_add(1, Ordering::Relaxed);
                    }
                    denied @ Verdict::Denied(_) => {
                        chain.stats.rbac_denied.fetch_add(1, Ordering::Relaxed);
                        outcome = Some(Outcome::Local(Reply::new(
                            403,
                            "RBAC: access denied",
                            "",
                            &denied.details().unwrap_or_default(),
                        )));
                        break;
                    }
                }
            }
            HttpFilter::TokenCheck(check) => {
                let Some(rule) = check.rules.iter().find(|r| r.matcher.matches(&parts)) else {
                    continue;
                };
                match tokens::check(
                    rule,
                    &check.providers,
                    &parts,
                    &downstream.keys,
                    &downstream.runtime,
                )
                .await
                {
                    Checked::Passed { missing } => {
                        if missing {
                            token_failure = Some(TokenFailure::Missing.code());
                        }
                    }
                    Checked::Valid {
                        provider,
                        claims: valid,
                    } => {
                        chain.stats.jwt_allowed.fetch_add(1, Ordering::Relaxed);
                        if let Some(p) = check.providers.get(&provider) {
                            for (claim, header) in &p.claim_to_headers {
                                let value = match valid.get(claim) {
                                    Some(serde_json::Value::String(s)) => s.clone(),
                                    Some(other) => other.to_string(),
                                    None => continue,
                                };
                                if let (Ok(n), Ok(v)) = (
                                    HeaderName::from_bytes(header.as_bytes()),
                                    HeaderValue::from_str(&value),
                                ) {
                                    parts.headers.insert(n, v);
                                }
                            }
                            if !p.forward {
                                parts.headers.remove(http::header::AUTHORIZATION);
                            }
                        }
                        claims = Some(valid);
                    }
                    Checked::Refused(failure) => {
                        chain.stats.jwt_denied.fetch_add(1, Ordering::Relaxed);
                        token_failure = Some(failure.code());
                        outcome = Some(Outcome::Local(token_refused(
                            failure,
                            &record.authority,
                            &record.path,
                        )));
                        break;
                    }
                }
            }
            HttpFilter::Router { envoy_headers } => {
                outcome = Some(match virtual_host.and_then(|vh| vh.route(&parts)) {
                    None => {
                        chain.stats.no_route.fetch_add(1, Ordering::Relaxed);
                        Outcome::Local(Reply::new(404, "", "NR", "route_not_found"))
                    }
                    Some((_, route)) => {
                        record.route = Some(Arc::from(route.name.as_str()));
                        router::route(&runtime, route, parts, body, &mut record, *envoy_headers)
                            .await
                    }
                });
                break;
            }
        }
    }
    let outcome =
        outcome.unwrap_or_else(|| Outcome::Local(Reply::new(404, "", "NR", "route_not_found")));
    let response = match outcome {
        Outcome::Upstream(response) => {
            record.details = "via_upstream".into();
            response
        }
        Outcome::Local(mut reply) => {
            // A token check's failure turns later refusals into 401s (the
            // connection manager's local reply mapper).
            if manager.token_failures_are_401 && token_failure.is_some_and(|code| code >= 2) {
                reply.status = 401;
            }
            if !reply.flags.is_empty() {
                if !record.flags.is_empty() {
                    record.flags.push(',');
                }
                record.flags.push_str(reply.flags);
            }
            record.details = reply.details;
            let mut response = Response::new(full(reply.body.clone()));
            *response.status_mut() =
                StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
            if !reply.body.is_empty() {
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain"),
                );
            }
            for (name, value) in reply.headers {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    response.headers_mut().insert(name, v);
                }
            }
            response
        }
    };
    record.code = response.status().as_u16();
    let (mut head, body) = response.into_parts();
    strip_hop_by_hop(&mut head.headers);
    head.headers
        .insert(http::header::SERVER, manager.server_name.clone());
    if close {
        head.headers
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    let sent = Arc::new(AtomicU64::new(0));
    let logged = downstream.clone();
    let body = Counted::new(body, sent).on_end(move |bytes| {
        if record.cut_short.load(Ordering::Relaxed) {
            if !record.flags.is_empty() {
                record.flags.push(',');
            }
            record.flags.push_str("UT");
            record.details = "response_timeout".into();
        }
        record.bytes_sent = bytes;
        record.bytes_received = received.load(Ordering::Relaxed);
        record.duration = started.elapsed();
        record.log(&logged.chain.config.http.access_logs, &logged.stats);
    });
    Ok(Response::from_parts(head, crate::body::boxed(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(method: &str, version: Version, headers: &[(&str, &str)]) -> Option<u16> {
        let mut request = Request::builder().method(method).uri("/").version(version);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (parts, ()) = request.body(()).unwrap().into_parts();
        let stats = HttpStats::new(&Stats::new(None), "test");
        protocol_switch_refused(&parts, &stats).map(|r| r.status)
    }

    #[test]
    fn upgrades_and_connect_are_refused_as_envoy_refuses_them() {
        let h1 = Version::HTTP_11;
        let websocket = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert_eq!(refused("GET", h1, &websocket), Some(403));
        // h2c is dropped, not refused; an Upgrade header alone asks nothing.
        let h2c = [
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ];
        assert_eq!(refused("GET", h1, &h2c), None);
        assert_eq!(refused("GET", h1, &[("upgrade", "websocket")]), None);
        assert_eq!(refused("GET", h1, &[("connection", "upgrade")]), None);
        assert_eq!(refused("CONNECT", h1, &[]), Some(404));
        assert_eq!(refused("GET", Version::HTTP_2, &websocket), None);
    }
}
