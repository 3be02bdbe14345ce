//! Requests between services in this cluster, from its proxies' counts:
//! each proxy sends the `weft.` stats its listeners keep (see
//! `proxy::telemetry` and `weft_agent::stats`) over OTLP ([`receiver`]);
//! here they get the labels only the edge knows (the proxy's service,
//! version and cluster; the callee named by the cluster a call went to),
//! add up per series for `/metrics`, and per service pair for the rollup
//! the server keeps for the global view.

pub mod receiver;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricsRegistry;
use weft_api::traffic_stats::{DURATION_BOUNDS_SECONDS, PairSums, PairTraffic, ServiceAt};

/// The most series an edge keeps; more are counted in
/// `weft_mesh_series_dropped_total`, not kept (a proxy stamping odd
/// values cannot grow the edge without bound).
const MAX_SERIES: usize = 50_000;

/// What a value was not known as.
pub const UNKNOWN: &str = "unknown";

/// Which side counted a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reporter {
    /// The callee's proxy: the caller verified by mutual TLS.
    Destination,
    /// The caller's proxy.
    Source,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Reporter::Destination => "destination",
            Reporter::Source => "source",
        }
    }
}

/// One side of a call as labelled.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Party {
    pub cluster: String,
    pub namespace: String,
    pub service: String,
    /// The instance's `version` label (a caller), or the subset called
    /// (a callee counted by its caller).
    pub version: String,
    /// Its SPIFFE ID, where the counting side saw it.
    pub principal: String,
}

impl Party {
    fn unknown() -> Party {
        Party {
            cluster: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            service: UNKNOWN.into(),
            version: UNKNOWN.into(),
            principal: UNKNOWN.into(),
        }
    }

    fn at(&self) -> ServiceAt {
        ServiceAt {
            cluster: self.cluster.clone(),
            namespace: self.namespace.clone(),
            service: self.service.clone(),
        }
    }
}

/// A series' labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    pub reporter: Reporter,
    pub source: Party,
    pub destination: Party,
    /// The HTTP status (`0`: no response).
    pub code: String,
    /// Envoy's response flags (`-`: none); empty on duration series.
    pub flags: String,
    /// Whether the callee verified the caller's certificate.
    pub mtls: bool,
}

impl Series {
    fn is_error(&self) -> bool {
        self.code == "0" || self.code.starts_with('5')
    }

    /// Whether a caller's count is of a call no callee saw (so the
    /// callee's side cannot have counted it): the connection failed, the
    /// circuit breaker or no healthy host refused it, or no cluster.
    fn never_arrived(&self) -> bool {
        self.reporter == Reporter::Source
            && self
                .flags
                .split(',')
                .any(|flag| matches!(flag, "UF" | "UO" | "UH" | "NC"))
    }

    fn pair(&self) -> (ServiceAt, ServiceAt) {
        (self.source.at(), self.destination.at())
    }
}

/// A duration histogram in [`DURATION_BOUNDS_SECONDS`]'s buckets.
#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum_seconds: f64,
}

/// What the edge holds.
#[derive(Default)]
struct State {
    requests: HashMap<Series, u64>,
    durations: HashMap<Series, Histogram>,
    /// Per service pair since the last rollup.
    pending: PairSums,
}

/// The cluster's request series and the pending rollup.
pub struct MeshMetrics {
    state: Mutex<State>,
    pub exports: Counter,
    pub refused_exports: Counter,
    pub dropped_series: Counter,
    series: Gauge,
}

impl Default for MeshMetrics {
    fn default() -> Self {
        MeshMetrics::new()
    }
}

impl MeshMetrics {
    pub fn new() -> MeshMetrics {
        MeshMetrics {
            state: Mutex::new(State::default()),
            exports: Counter::default(),
            refused_exports: Counter::default(),
            dropped_series: Counter::default(),
            series: Gauge::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, registry: &mut MetricsRegistry) {
        registry.register(
            "mesh_exports",
            "Request counts proxies sent this edge (OTLP exports accepted)",
            self.exports.clone(),
        );
        registry.register(
            "mesh_exports_refused",
            "OTLP exports refused: an unknown proxy, or a certificate not its own",
            self.refused_exports.clone(),
        );
        registry.register(
            "mesh_series_dropped",
            "Request series not kept because the edge holds its most already",
            self.dropped_series.clone(),
        );
        registry.register(
            "mesh_series",
            "Request series this edge serves",
            self.series.clone(),
        );
    }

    /// Adds `count` requests of `series`.
    pub fn count(&self, series: Series, count: u64) {
        if count == 0 {
            return;
        }
        let mut state = self.lock();
        let counts_in_pair = series.reporter == Reporter::Destination || series.never_arrived();
        if counts_in_pair {
            let (source, destination) = series.pair();
            let totals = state.pending.of(source, destination);
            totals.requests += count;
            if series.is_error() {
                totals.errors += count;
            }
            if series.mtls {
                totals.mtls += count;
            }
        }
        let held = state.requests.len() + state.durations.len();
        match state.requests.get_mut(&series) {
            Some(n) => *n += count,
            None if held < MAX_SERIES => {
                state.requests.insert(series, count);
                self.series.inc();
            }
            None => {
                self.dropped_series.inc();
            }
        }
    }

    /// Adds timed requests of `series` (flags empty): `buckets` per
    /// bucket of [`DURATION_BOUNDS_SECONDS`] and one more for the rest.
    pub fn time(&self, series: Series, buckets: &[u64], sum_seconds: f64, never_arrived: bool) {
        if buckets.iter().all(|&n| n == 0) {
            return;
        }
        let mut state = self.lock();
        if series.reporter == Reporter::Destination || never_arrived {
            let (source, destination) = series.pair();
            let totals = state.pending.of(source, destination);
            add_buckets(&mut totals.durations, buckets);
            totals.duration_sum_seconds += sum_seconds;
        }
        let held = state.requests.len() + state.durations.len();
        let histogram = match state.durations.get_mut(&series) {
            Some(histogram) => histogram,
            None if held < MAX_SERIES => {
                self.series.inc();
                state.durations.entry(series).or_default()
            }
            None => {
                self.dropped_series.inc();
                return;
            }
        };
        add_buckets(&mut histogram.buckets, buckets);
        histogram.sum_seconds += sum_seconds;
    }

    /// Each pair's traffic since the last call.
    pub fn take_rollup(&self) -> Vec<PairTraffic> {
        std::mem::take(&mut self.lock().pending).into_pairs()
    }

    /// Puts back a rollup the server did not take, for the next one.
    pub fn restore(&self, pairs: Vec<PairTraffic>) {
        let mut state = self.lock();
        for pair in pairs {
            state.pending.add(pair);
        }
    }

    /// The series in OpenMetrics text, without the final `# EOF`.
    pub fn render(&self, out: &mut String) {
        let state = self.lock();
        let mut requests: Vec<_> = state.requests.iter().collect();
        requests.sort();
        let _ = writeln!(out, "# TYPE weft_requests counter");
        let _ = writeln!(
            out,
            "# HELP weft_requests Requests between services, as the callee (reporter=\"destination\") or the caller (reporter=\"source\") counted them."
        );
        for (series, count) in requests {
            let _ = writeln!(out, "weft_requests_total{{{}}} {count}", labels(series));
        }
        let mut durations: Vec<_> = state.durations.iter().collect();
        durations.sort_by(|a, b| a.0.cmp(b.0));
        let _ = writeln!(out, "# TYPE weft_request_duration_seconds histogram");
        let _ = writeln!(out, "# UNIT weft_request_duration_seconds seconds");
        let _ = writeln!(
            out,
            "# HELP weft_request_duration_seconds How long requests between services took, from the first byte received to the last byte sent."
        );
        for (series, histogram) in durations {
            let labels = labels(series);
            let mut cumulative = 0u64;
            for (i, bound) in DURATION_BOUNDS_SECONDS.iter().enumerate() {
                cumulative += histogram.buckets.get(i).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "weft_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += histogram
                .buckets
                .get(DURATION_BOUNDS_SECONDS.len())
                .copied()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "weft_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(
                out,
                "weft_request_duration_seconds_sum{{{labels}}} {}",
                histogram.sum_seconds
            );
            let _ = writeln!(
                out,
                "weft_request_duration_seconds_count{{{labels}}} {cumulative}"
            );
        }
    }
}

fn add_buckets(into: &mut Vec<u64>, buckets: &[u64]) {
    if into.len() < buckets.len() {
        into.resize(buckets.len(), 0);
    }
    for (mine, theirs) in into.iter_mut().zip(buckets) {
        *mine += theirs;
    }
}

/// `2xx` for `200`; `0` stays `0` (no response).
fn response_class(code: &str) -> String {
    match code.chars().next() {
        Some(c @ '1'..='5') if code.len() == 3 => format!("{c}xx"),
        _ => code.to_string(),
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(series: &Series) -> String {
    let Series {
        reporter,
        source,
        destination,
        code,
        flags,
        mtls,
    } = series;
    let mut pairs: Vec<(String, &str)> = vec![("reporter".into(), reporter.as_str())];
    for (side, party) in [("source", source), ("destination", destination)] {
        let Party {
            cluster,
            namespace,
            service,
            version,
            principal,
        } = party;
        for (name, value) in [
            ("cluster", cluster),
            ("namespace", namespace),
            ("service", service),
            ("version", version),
            ("principal", principal),
        ] {
            pairs.push((format!("{side}_{name}"), value));
        }
    }
    let class = response_class(code);
    pairs.push(("response_code".into(), code));
    pairs.push(("response_class".into(), &class));
    if !flags.is_empty() {
        pairs.push(("response_flags".into(), flags));
    }
    let policy = if *mtls { "mutual_tls" } else { "none" };
    pairs.push(("connection_security_policy".into(), policy));
    pairs
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(service: &str) -> Party {
        Party {
            cluster: "east-1".into(),
            namespace: "shop".into(),
            service: service.into(),
            version: "v1".into(),
            principal: String::new(),
        }
    }

    fn series(reporter: Reporter, code: &str, flags: &str) -> Series {
        Series {
            reporter,
            source: party("web"),
            destination: party("reviews"),
            code: code.into(),
            flags: flags.into(),
            mtls: reporter == Reporter::Destination,
        }
    }

    #[test]
    fn a_pair_counts_what_the_callee_saw_and_what_never_reached_it() {
        let metrics = MeshMetrics::new();
        metrics.count(series(Reporter::Destination, "200", "-"), 90);
        metrics.count(series(Reporter::Destination, "503", "-"), 10);
        // The caller's count of the same calls is not added again...
        metrics.count(series(Reporter::Source, "200", "-"), 90);
        // ...but calls that failed to connect are.
        metrics.count(series(Reporter::Source, "503", "UF,URX"), 5);
        let rollup = metrics.take_rollup();
        assert_eq!(rollup.len(), 1);
        let totals = &rollup[0].totals;
        assert_eq!(
            (totals.requests, totals.errors, totals.mtls),
            (105, 15, 100)
        );
        assert!(metrics.take_rollup().is_empty(), "a rollup is taken once");
    }

    #[test]
    fn series_render_with_their_labels_and_cumulative_buckets() {
        let metrics = MeshMetrics::new();
        metrics.count(series(Reporter::Destination, "503", "-"), 3);
        let mut buckets = vec![0; DURATION_BOUNDS_SECONDS.len() + 1];
        buckets[0] = 2;
        buckets[3] = 1;
        metrics.time(
            series(Reporter::Destination, "503", ""),
            &buckets,
            0.006,
            false,
        );
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(text.contains("weft_requests_total{reporter=\"destination\",source_cluster=\"east-1\",source_namespace=\"shop\",source_service=\"web\",source_version=\"v1\",source_principal=\"\",destination_cluster=\"east-1\",destination_namespace=\"shop\",destination_service=\"reviews\",destination_version=\"v1\",destination_principal=\"\",response_code=\"503\",response_class=\"5xx\",response_flags=\"-\",connection_security_policy=\"mutual_tls\"} 3"), "{text}");
        assert!(text.contains("le=\"0.001\"} 2\n"), "{text}");
        assert!(text.contains("le=\"0.005\"} 3\n"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("_count{"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(response_class("200"), "2xx");
        assert_eq!(response_class("0"), "0");
    }
}
