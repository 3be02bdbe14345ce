//! The router: a routed request forwarded to one of its route's clusters
//! (by weight, or by the sticky hash), to an endpoint the balancer picks,
//! within the route's timeout; retried as the route's policy says while
//! the cluster's retry limits allow, each retry away from the hosts (and,
//! when asked, the priorities) already tried; refused locally, with
//! Envoy's status, body, flags and details, when no answer comes.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Response, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::balance::{self, Draw};
use crate::body::{Boxed, Counted, boxed, full};
use crate::config::{Action, Forward, HashOn, Retry, RetryOn, Route, Target, UpstreamProtocol};
use crate::manager::Reply;
use crate::record::Record;
use crate::runtime::{ClusterRuntime, Runtime, retry_backoff};
use crate::timeouts::{Clock, Deadline, Expired};
use crate::upstream::{Dial, Failure};

/// What the router gives back.
pub enum Outcome {
    Upstream(Response<Boxed>),
    Local(Reply),
}

/// The time the upstream is expected to answer in, in milliseconds.
const EXPECTED_TIMEOUT: http::HeaderName =
    http::HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
/// The time the upstream took to begin its answer, in milliseconds.
const UPSTREAM_SERVICE_TIME: http::HeaderName =
    http::HeaderName::from_static("x-envoy-upstream-service-time");

/// Envoy's route timeout when a route sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest request body kept in memory so it can be sent again.
const RETRY_BUFFER: u64 = 1024 * 1024;

fn hash_of(value: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

fn cookie(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
}

fn failure_reply(failure: Failure) -> Reply {
    let (reason, flags) = match failure {
        Failure::Connect => ("connection_failure", "UF"),
        Failure::Reset => ("remote_reset", "UR"),
        Failure::Overflow => ("overflow", "UO"),
    };
    Reply::new(
        503,
        &format!(
            "upstream connect error or disconnect/reset before headers. reset reason: {}",
            reason.replace('_', " ")
        ),
        flags,
        &format!("upstream_reset_before_response_started{{{reason}}}"),
    )
}

fn retriable_status(retry: &Retry, status: u16) -> bool {
    retry.on.iter().any(|on| match on {
        RetryOn::FiveXx => status >= 500,
        RetryOn::GatewayError => matches!(status, 502..=504),
        RetryOn::Retriable4xx => status == 409,
        _ => false,
    })
}

fn retriable_failure(retry: &Retry, failure: Option<Failure>) -> bool {
    retry.on.iter().any(|on| {
        matches!(
            (on, failure),
            (
                RetryOn::FiveXx,
                Some(Failure::Connect | Failure::Reset) | None
            ) | (RetryOn::GatewayError, Some(Failure::Connect) | None)
                | (RetryOn::Reset, Some(Failure::Reset) | None)
                | (RetryOn::ConnectFailure, Some(Failure::Connect))
                | (RetryOn::RefusedStream, Some(Failure::Reset))
        )
    })
}

/// The request's hash for sticky sessions, and a cookie to set when the
/// route gives one a lifetime and the client has none yet.
fn sticky(forward: &Forward, parts: &Parts) -> (Option<u64>, Option<HeaderValue>) {
    match &forward.hash_on {
        None => (None, None),
        Some(HashOn::Header(name)) => (
            crate::routing::header_value(parts, name).map(|v| hash_of(&v)),
            None,
        ),
        Some(HashOn::Cookie { name, ttl }) => match (cookie(parts, name), ttl) {
            (Some(value), _) => (Some(hash_of(&value)), None),
            (None, Some(ttl)) => {
                let value = hex::encode(rand::random::<[u8; 8]>());
                let set = format!(
                    "{name}=\"{value}\"; Max-Age={}; Path=/; HttpOnly",
                    ttl.as_secs()
                );
                (Some(hash_of(&value)), HeaderValue::from_str(&set).ok())
            }
            (None, None) => (None, None),
        },
    }
}

/// The request body: kept whole when it may be sent more than once.
enum Sendable {
    Kept(Bytes),
    Once(Option<Counted<Incoming>>),
}

impl Sendable {
    fn take(&mut self) -> Option<Boxed> {
        match self {
            Sendable::Kept(bytes) => Some(full(bytes.clone())),
            Sendable::Once(body) => body.take().map(boxed),
        }
    }
}

async fn address_of(target: &Target) -> Option<SocketAddr> {
    match target {
        Target::Ip(a) => Some(*a),
        Target::Host(host, port) => {
            let mut found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .ok()?
                .collect();
            found.sort_by_key(|a| !a.is_ipv4());
            found.into_iter().next()
        }
    }
}

/// Forwards `parts` and `body` by `route`, filling in `record`;
/// `envoy_headers`: tells the upstream the time it is expected to take
/// and the caller the time the upstream took, as Envoy's router does.
pub async fn route(
    runtime: &Runtime,
    route: &Route,
    mut parts: Parts,
    body: Counted<Incoming>,
    record: &mut Record,
    envoy_headers: bool,
) -> Outcome {
    let forward = match &route.action {
        Action::Respond { status, body } => {
            return Outcome::Local(Reply::new(*status, body, "", "direct_response"));
        }
        Action::Forward(forward) => forward,
    };
    let (hash, set_cookie) = sticky(forward, &parts);
    let point = hash.unwrap_or_else(rand::random);
    let Some(name) = forward.cluster_at(point) else {
        return Outcome::Local(Reply::new(503, "", "NC", "cluster_not_found"));
    };
    record.cluster = Some(std::sync::Arc::from(name));
    let Some(cluster) = runtime.clusters.get(name) else {
        return Outcome::Local(Reply::new(503, "", "NC", "cluster_not_found"));
    };
    let shared = &cluster.shared;
    let limits = &cluster.config.limits;
    if shared.active.fetch_add(1, Ordering::Relaxed) >= limits.max_requests as usize {
        shared.active.fetch_sub(1, Ordering::Relaxed);
        shared
            .stats
            .rq_pending_overflow
            .fetch_add(1, Ordering::Relaxed);
        return Outcome::Local(failure_reply(Failure::Overflow));
    }
    let _active = Active(&shared.active);
    let timeout = match forward.timeout {
        Some(t) if t.is_zero() => None,
        Some(t) => Some(t),
        None => Some(DEFAULT_TIMEOUT),
    };
    let (clock, body) = if body.is_end_stream() {
        (Clock::started(timeout), body)
    } else {
        let (clock, received) = Clock::new(timeout);
        (clock, body.on_end(move |_| received.now()))
    };
    let retry = forward.retry.as_ref();
    let began = std::time::Instant::now();
    if envoy_headers && let Some(expected) = retry.and_then(|r| r.per_try_timeout).or(timeout) {
        parts.headers.insert(
            EXPECTED_TIMEOUT,
            HeaderValue::from(expected.as_millis() as u64),
        );
    }
    let keep = retry.is_some() && body.size_hint().upper().is_some_and(|n| n <= RETRY_BUFFER);
    let mut sendable = if keep {
        match body.collect().await {
            Ok(collected) => Sendable::Kept(collected.to_bytes()),
            Err(_) => {
                return Outcome::Local(Reply::new(400, "", "DPE", "downstream_remote_disconnect"));
            }
        }
    } else {
        Sendable::Once(Some(body))
    };
    let retries = if keep {
        retry.map_or(0, |r| r.attempts)
    } else {
        0
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut tried_priorities: Vec<u32> = Vec::new();
    let mut attempt = 0;
    loop {
        let result = attempt_once(
            cluster,
            &parts,
            &mut sendable,
            hash,
            &tried,
            &tried_priorities,
            retry,
            &clock,
            record,
        )
        .await;
        let retriable = match &result {
            Attempt::Answered(response, _) => {
                retry.is_some_and(|r| retriable_status(r, response.status().as_u16()))
            }
            Attempt::Failed(failure, _) => {
                retry.is_some_and(|r| retriable_failure(r, Some(*failure)))
            }
            Attempt::TriedTooLong(_) => retry.is_some_and(|r| retriable_failure(r, None)),
            Attempt::NoHost | Attempt::TimedOut => false,
        };
        let allowed = retriable && attempt < retries && {
            let budget = match limits.retry_budget {
                Some((percent, floor)) => (shared.active.load(Ordering::Relaxed) as f64 * percent
                    / 100.0)
                    .max(f64::from(floor)) as usize,
                None => limits.max_retries as usize,
            };
            let ok = shared.retries_active.load(Ordering::Relaxed) < budget;
            if !ok {
                shared
                    .stats
                    .rq_retry_overflow
                    .fetch_add(1, Ordering::Relaxed);
            }
            ok
        };
        if allowed {
            if let Attempt::Answered(_, address)
            | Attempt::Failed(_, address)
            | Attempt::TriedTooLong(address) = &result
            {
                tried.push(*address);
                if let Some(p) = priority_of(&cluster.assignment, address) {
                    tried_priorities.push(p);
                }
            }
            attempt += 1;
            shared.stats.rq_retry.fetch_add(1, Ordering::Relaxed);
            shared.retries_active.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(retry_backoff(attempt)).await;
            shared.retries_active.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let exhausted = retriable && attempt >= retries && retries > 0;
        if exhausted {
            record.flags = "URX".into();
        }
        return match result {
            Attempt::Answered(mut response, _) => {
                if envoy_headers {
                    response.headers_mut().insert(
                        UPSTREAM_SERVICE_TIME,
                        HeaderValue::from(began.elapsed().as_millis() as u64),
                    );
                }
                if let Some(cookie) = set_cookie {
                    response
                        .headers_mut()
                        .append(http::header::SET_COOKIE, cookie);
                }
                Outcome::Upstream(response)
            }
            Attempt::Failed(failure, _) => Outcome::Local(failure_reply(failure)),
            Attempt::NoHost => Outcome::Local(Reply::new(
                503,
                "no healthy upstream",
                "UH",
                "no_healthy_upstream",
            )),
            Attempt::TimedOut | Attempt::TriedTooLong(_) => Outcome::Local(Reply::new(
                504,
                "upstream request timeout",
                "UT",
                "upstream_response_timeout",
            )),
        };
    }
}

struct Active<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn priority_of(assignment: &crate::config::Assignment, address: &SocketAddr) -> Option<u32> {
    assignment
        .groups
        .iter()
        .find(|g| {
            g.endpoints
                .iter()
                .any(|e| e.address == Target::Ip(*address))
        })
        .map(|g| g.priority)
}

/// How one try ended.
enum Attempt {
    Answered(Response<Boxed>, SocketAddr),
    Failed(Failure, SocketAddr),
    /// The try's own timeout passed (another try may follow).
    TriedTooLong(SocketAddr),
    /// The route's timeout passed.
    TimedOut,
    NoHost,
}

#[allow(clippy::too_many_arguments)]
async fn attempt_once(
    cluster: &ClusterRuntime,
    parts: &Parts,
    sendable: &mut Sendable,
    hash: Option<u64>,
    tried: &[SocketAddr],
    tried_priorities: &[u32],
    retry: Option<&Retry>,
    clock: &Clock,
    record: &mut Record,
) -> Attempt {
    let shared = &cluster.shared;
    let next_priority = retry.is_some_and(|r| r.next_priority);
    let address_in = |e: &crate::config::Endpoint| match e.address {
        Target::Ip(a) => Some(a),
        Target::Host(..) => None,
    };
    // Chosen in a block: what the choice borrows is not held across an
    // await.
    let endpoint = {
        let healthy = |e: &crate::config::Endpoint| {
            let Some(a) = address_in(e) else {
                return true;
            };
            if tried.contains(&a) || shared.ejected(&a) {
                return false;
            }
            !(next_priority
                && priority_of(&cluster.assignment, &a)
                    .is_some_and(|p| tried_priorities.contains(&p)))
        };
        let mut random = rand::random::<u64>;
        let active =
            |e: &crate::config::Endpoint| address_in(e).map_or(0, |a| shared.in_flight(&a));
        let mut draw = Draw {
            random: &mut random,
            turn: shared.turn.fetch_add(1, Ordering::Relaxed),
            hash,
            active: &active,
            ring: cluster.ring.as_deref(),
        };
        balance::choose(
            &cluster.assignment,
            &healthy,
            cluster.config.balancer,
            &mut draw,
        )
    };
    let Some(endpoint) = endpoint else {
        return Attempt::NoHost;
    };
    let Some(address) = address_of(&endpoint.address).await else {
        return Attempt::NoHost;
    };
    record.upstream_host = Some(address);
    record.upstream_host_name = Some(std::sync::Arc::from(endpoint.hostname.as_str()))
        .filter(|h: &std::sync::Arc<str>| !h.is_empty());
    if cluster.tls_missing {
        return Attempt::Failed(Failure::Connect, address);
    }
    let http2 = match cluster.config.protocol {
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::SameAsDownstream => parts.version == Version::HTTP_2,
        UpstreamProtocol::Unspecified => false,
    };
    let Some(body) = sendable.take() else {
        return Attempt::Failed(Failure::Reset, address);
    };
    let request = match upstream_request(parts, body, http2, address) {
        Some(r) => r,
        None => return Attempt::Failed(Failure::Reset, address),
    };
    let dial = Dial {
        address,
        connect_timeout: cluster.config.connect_timeout,
        tls: cluster
            .tls
            .clone()
            .map(|c| (c, cluster.server_name().to_string())),
        http2,
    };
    let per_try = retry.and_then(|r| r.per_try_timeout);
    let mut expiry = clock.expiry(per_try);
    let _in_flight = shared.begin(address);
    shared.stats.rq_total.fetch_add(1, Ordering::Relaxed);
    let max_connections = cluster.config.limits.max_connections as usize;
    let sent = shared.pools.send(&dial, max_connections, request);
    let result = tokio::select! {
        answer = sent => Ok(answer),
        expired = &mut expiry => Err(expired),
    };
    let total = cluster
        .assignment
        .groups
        .iter()
        .map(|g| g.endpoints.len())
        .sum();
    match result {
        Ok(Ok(answer)) => {
            let status = answer.response.status().as_u16();
            shared.stats.response(status);
            shared.observe(&cluster.config, total, address, status >= 500);
            record.upstream_peer = answer.peer;
            // The rest of the response within the same times.
            let stats = shared.clone();
            let cut_short = record.cut_short.clone();
            let response = answer.response.map(|body| {
                boxed(Deadline::new(boxed(body), expiry, move || {
                    stats.stats.rq_timeout.fetch_add(1, Ordering::Relaxed);
                    cut_short.store(true, Ordering::Relaxed);
                }))
            });
            Attempt::Answered(response, address)
        }
        Ok(Err(failure)) => {
            if failure == Failure::Connect {
                shared.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            }
            if failure != Failure::Overflow {
                shared.observe(&cluster.config, total, address, true);
            }
            Attempt::Failed(failure, address)
        }
        Err(expired) => {
            shared.stats.rq_timeout.fetch_add(1, Ordering::Relaxed);
            match expired {
                Expired::Route => Attempt::TimedOut,
                Expired::Try => Attempt::TriedTooLong(address),
            }
        }
    }
}

/// The request as it goes upstream: HTTP/2 carries the authority in the
/// URI (no `host` header); HTTP/1.1 in `host`.
fn upstream_request(
    parts: &Parts,
    body: Boxed,
    http2: bool,
    address: SocketAddr,
) -> Option<http::Request<Boxed>> {
    let authority = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| address.to_string());
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = http::Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.headers_mut() = parts.headers.clone();
    if http2 {
        *request.uri_mut() = format!("http://{authority}{path}").parse().ok()?;
        *request.version_mut() = Version::HTTP_2;
        request.headers_mut().remove(http::header::HOST);
    } else {
        *request.uri_mut() = path.parse().ok()?;
        *request.version_mut() = Version::HTTP_11;
        request
            .headers_mut()
            .insert(http::header::HOST, HeaderValue::from_str(&authority).ok()?);
    }
    Some(request)
}
