//! The global view of requests between services: each edge sends its
//! cluster's per-pair rollup (`PUT /v1/edge/traffic`, edge port); the
//! server keeps the last [`WINDOW`] of them in memory (a replica knows
//! the rollups sent to it) and answers `GET /v1/traffic/services` and
//! `GET /v1/traffic/pairs` (`weft stat`, `weft top`, the web UI) with
//! what the caller may read: a row belongs to the workspace that
//! selects its callee's cluster and namespace.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::Deserialize;
use weft_api::iam::Verb;
use weft_api::specs::selector_covers;
use weft_api::traffic_stats::{
    DURATION_BOUNDS_SECONDS, PairSums, PairTraffic, ServiceAt, Totals, TrafficReport,
    TrafficRollup, TrafficRow,
};
use weft_identity::transport::Peer;

use crate::AppState;
use crate::edge_port::require_edge_certificate;
use crate::edges::edge_cluster;
use crate::error::ApiError;
use crate::iam::Caller;
use crate::request::JsonBody;

/// How far back the server remembers.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// The most pair rows it holds over all rollups; the oldest go first.
const MAX_ROWS: usize = 500_000;
/// The most pairs one rollup may carry.
const MAX_PAIRS: usize = 20_000;
/// The window asked for when none is.
const DEFAULT_SINCE: Duration = Duration::from_secs(300);

struct Received {
    at: Instant,
    /// The seconds the rollup covers, ending at `at`.
    seconds: u32,
    pairs: Vec<PairTraffic>,
}

/// The rollups of the last [`WINDOW`].
#[derive(Default)]
pub struct TrafficWindow {
    rollups: Mutex<VecDeque<Received>>,
}

impl TrafficWindow {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Received>> {
        self.rollups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a rollup (what `PUT /v1/edge/traffic` does once it has
    /// checked it; benchmarks seed the window with it).
    pub fn add(&self, rollup: TrafficRollup) {
        let now = Instant::now();
        let mut rollups = self.lock();
        rollups.push_back(Received {
            at: now,
            seconds: rollup.seconds,
            pairs: rollup.pairs,
        });
        let mut rows: usize = rollups.iter().map(|r| r.pairs.len()).sum();
        while let Some(oldest) = rollups.front() {
            let expired = now.duration_since(oldest.at) > WINDOW;
            if !expired && rows <= MAX_ROWS {
                break;
            }
            rows -= oldest.pairs.len();
            rollups.pop_front();
        }
    }

    /// Each pair's totals over the last `since`, and the seconds they
    /// cover (at most `since`; less if the window is younger).
    fn totals(&self, since: Duration) -> (Vec<PairTraffic>, f64) {
        let now = Instant::now();
        let rollups = self.lock();
        let mut sums = PairSums::default();
        let mut oldest = now;
        for rollup in rollups.iter().filter(|r| now.duration_since(r.at) <= since) {
            oldest = oldest.min(
                rollup
                    .at
                    .checked_sub(Duration::from_secs(u64::from(rollup.seconds)))
                    .unwrap_or(rollup.at),
            );
            for pair in &rollup.pairs {
                sums.add(pair.clone());
            }
        }
        let seconds = now.duration_since(oldest).min(since).as_secs_f64();
        (sums.into_pairs(), seconds)
    }
}

fn check(rollup: &TrafficRollup) -> Result<(), ApiError> {
    if rollup.seconds == 0 || u64::from(rollup.seconds) > WINDOW.as_secs() {
        return Err(ApiError::bad_request(format!(
            "seconds: {} is not between 1 and {}",
            rollup.seconds,
            WINDOW.as_secs()
        )));
    }
    if rollup.pairs.len() > MAX_PAIRS {
        return Err(ApiError::bad_request(format!(
            "pairs: {} pairs, at most {MAX_PAIRS} are taken",
            rollup.pairs.len()
        )));
    }
    for (i, pair) in rollup.pairs.iter().enumerate() {
        if pair.totals.durations.len() > DURATION_BOUNDS_SECONDS.len() + 1 {
            return Err(ApiError::bad_request(format!(
                "pairs[{i}].durations: {} buckets, at most {}",
                pair.totals.durations.len(),
                DURATION_BOUNDS_SECONDS.len() + 1
            )));
        }
        let names = [&pair.source, &pair.destination]
            .into_iter()
            .flat_map(|s| [&s.cluster, &s.namespace, &s.service]);
        if names.into_iter().any(|n| n.len() > 253) {
            return Err(ApiError::bad_request(format!(
                "pairs[{i}]: a name is longer than 253 characters"
            )));
        }
    }
    Ok(())
}

/// `PUT /v1/edge/traffic`: an edge's rollup. Every pair's callee (or,
/// for calls that reached none, its caller) is in the edge's cluster.
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(peer): Extension<Peer>,
    JsonBody(mut rollup): JsonBody<TrafficRollup>,
) -> Result<StatusCode, ApiError> {
    let cluster = edge_cluster(&state, &headers).await?;
    require_edge_certificate(&peer, &cluster)?;
    check(&rollup)?;
    // An edge speaks for its own cluster only: its callees' counts, and
    // its callers' calls that reached no callee.
    rollup
        .pairs
        .retain(|p| p.destination.cluster == cluster || p.source.cluster == cluster);
    state.traffic.add(rollup);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficQuery {
    /// Only callees in this cluster.
    cluster: Option<String>,
    /// How far back: `30s`, `5m`, `1h` (at most [`WINDOW`]).
    since: Option<String>,
    /// Keep clusters apart instead of summing a service's clusters.
    #[serde(default, rename = "byCluster")]
    by_cluster: bool,
}

impl TrafficQuery {
    fn since(&self) -> Result<Duration, ApiError> {
        let Some(since) = &self.since else {
            return Ok(DEFAULT_SINCE);
        };
        let since = humantime::parse_duration(since).map_err(|e| {
            ApiError::bad_request(format!("since: {since:?} is not a duration ({e})"))
                .with_hint("write it like 30s, 5m or 1h")
        })?;
        if since.is_zero() || since > WINDOW {
            return Err(ApiError::bad_request(format!(
                "since: {} is not between 1s and {}",
                humantime::format_duration(since),
                humantime::format_duration(WINDOW)
            )));
        }
        Ok(since)
    }
}

/// The pairs over the window whose callee the caller may read, filtered
/// by the query; clusters set to "" unless kept apart.
async fn visible_pairs(
    state: &AppState,
    caller: &Caller,
    query: &TrafficQuery,
) -> Result<(Vec<PairTraffic>, f64), ApiError> {
    visible_pairs_over(
        state,
        caller,
        query.since()?,
        query.cluster.as_deref(),
        query.by_cluster,
    )
    .await
}

/// The pairs over the last `since` whose callee the caller may read (in
/// `cluster`, if given): a row belongs to the workspace that selects its
/// callee's cluster and namespace. Clusters are set to "" unless kept
/// apart. Also the seconds the pairs cover.
pub(crate) async fn visible_pairs_over(
    state: &AppState,
    caller: &Caller,
    since: Duration,
    cluster: Option<&str>,
    by_cluster: bool,
) -> Result<(Vec<PairTraffic>, f64), ApiError> {
    let mut readable: Vec<Vec<String>> = Vec::new();
    for ws in state.store.list("Workspace").await? {
        if caller.can(Verb::Read, "Workspace", &ws.path) {
            readable.push(
                ws.resource
                    .spec
                    .get("namespaceSelector")
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default(),
            );
        }
    }
    let (pairs, seconds) = state.traffic.totals(since);
    let visible = pairs.into_iter().filter(|p| {
        let callee_cluster = callee_cluster(p);
        let entry = format!("{callee_cluster}/{}", p.destination.namespace);
        cluster.is_none_or(|c| c == callee_cluster)
            && readable
                .iter()
                .any(|selector| selector_covers(selector, &entry))
    });
    let mut merged = PairSums::default();
    for mut pair in visible {
        if !by_cluster {
            pair.source.cluster.clear();
            pair.destination.cluster.clear();
        }
        merged.add(pair);
    }
    let pairs = merged.into_pairs();
    Ok((pairs, seconds))
}

/// The cluster a pair's callee is in: a call that reached no host
/// (`unknown`) counts in its caller's.
pub(crate) fn callee_cluster(pair: &PairTraffic) -> &str {
    if pair.destination.cluster == "unknown" {
        &pair.source.cluster
    } else {
        &pair.destination.cluster
    }
}

/// `GET /v1/traffic/pairs`: requests per caller and callee.
pub async fn pairs(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<TrafficQuery>,
) -> Result<Json<TrafficReport>, ApiError> {
    let (pairs, seconds) = visible_pairs(&state, &caller, &query).await?;
    let rows = pairs
        .into_iter()
        .map(|p| TrafficRow::new(Some(p.source), p.destination, &p.totals, seconds))
        .collect();
    Ok(Json(TrafficReport { seconds, rows }))
}

/// `GET /v1/traffic/services`: requests per callee, from every caller.
pub async fn services(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<TrafficQuery>,
) -> Result<Json<TrafficReport>, ApiError> {
    let (pairs, seconds) = visible_pairs(&state, &caller, &query).await?;
    let mut by_service: BTreeMap<ServiceAt, Totals> = BTreeMap::new();
    for pair in pairs {
        by_service
            .entry(pair.destination)
            .or_default()
            .add(&pair.totals);
    }
    let rows = by_service
        .into_iter()
        .map(|(destination, totals)| TrafficRow::new(None, destination, &totals, seconds))
        .collect();
    Ok(Json(TrafficReport { seconds, rows }))
}
