//! What weft-proxy counts, under Envoy's names (`cluster.NAME.upstream_rq_total`,
//! `http.PREFIX.rbac.denied`…) so dashboards and tests read either proxy
//! the same way; and the counted stats a listener's stats access log asks
//! for (`weft.inbound_requests` with its tags). Shown on the admin port as
//! Envoy's text form (`/stats`) and in Prometheus' (`/stats/prometheus`).
//!
//! A counter is an atomic the request path holds directly: looking one up
//! by name happens when the configuration changes, not per request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub type Counter = Arc<AtomicU64>;

/// Upper bounds of the duration histograms, in microseconds, unless the
/// bootstrap gives others (Envoy's defaults, in milliseconds there).
const DEFAULT_BOUNDS_US: [f64; 14] = [
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    25_000.0,
    50_000.0,
    100_000.0,
    250_000.0,
    500_000.0,
    1_000_000.0,
    2_500_000.0,
    5_000_000.0,
    10_000_000.0,
];

/// A histogram: counts per bucket (one more for values above every
/// bound), their sum and count.
pub struct Histogram {
    bounds: Arc<[f64]>,
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: Arc<[f64]>) -> Histogram {
        Histogram {
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            bounds,
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    pub fn record(&self, value: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| value as f64 <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Counts per bucket (not cumulative), count and sum, now.
    pub fn read(&self) -> (Vec<u64>, u64, u64) {
        (
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.count.load(Ordering::Relaxed),
            self.sum.load(Ordering::Relaxed),
        )
    }

    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }
}

/// A stat's name and tags (sorted), as one key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub name: String,
    pub tags: Vec<(String, String)>,
}

/// Counters (their values) and histograms under a prefix.
pub type Under = (Vec<(Key, u64)>, Vec<(Key, Arc<Histogram>)>);

/// Every stat of the proxy.
pub struct Stats {
    counters: Mutex<BTreeMap<Key, Counter>>,
    histograms: Mutex<BTreeMap<Key, Arc<Histogram>>>,
    bounds: Arc<[f64]>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new(None)
    }
}

fn plain(name: &str) -> Key {
    Key {
        name: name.to_string(),
        tags: Vec::new(),
    }
}

impl Stats {
    /// Stats whose histograms have `bounds` (microseconds) or the default.
    pub fn new(bounds: Option<Vec<f64>>) -> Stats {
        Stats {
            counters: Mutex::default(),
            histograms: Mutex::default(),
            bounds: bounds.unwrap_or_else(|| DEFAULT_BOUNDS_US.to_vec()).into(),
        }
    }

    /// The counters and histograms whose names start with `prefix`.
    pub fn under(&self, prefix: &str) -> Under {
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(k, _)| k.name.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect();
        let histograms = self
            .histograms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(k, _)| k.name.starts_with(prefix))
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        (counters, histograms)
    }

    /// The counter `name` (created at zero).
    pub fn counter(&self, name: &str) -> Counter {
        self.tagged_counter(plain(name))
    }

    pub fn tagged_counter(&self, key: Key) -> Counter {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }

    /// The counter `key`, unless it would be a new series of a name that
    /// already has `limit` (a stats scope's limit, as Envoy's: a full
    /// scope counts no new series).
    pub fn tagged_counter_within(&self, key: Key, limit: usize) -> Option<Counter> {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counter) = counters.get(&key) {
            return Some(counter.clone());
        }
        // Counting happens only for a series not seen yet.
        let series = counters.keys().filter(|k| k.name == key.name).count();
        (series < limit).then(|| counters.entry(key).or_default().clone())
    }

    pub fn histogram(&self, key: Key) -> Arc<Histogram> {
        self.histograms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert_with(|| Arc::new(Histogram::new(self.bounds.clone())))
            .clone()
    }

    /// Envoy's text form: `name: value` per line, tags (Envoy's stats
    /// access logger puts them in the name) as `name.tag.value`.
    pub fn text(&self, filter: Option<&regex::Regex>) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        for (key, value) in counters.iter() {
            let name = flat_name(key);
            if filter.is_none_or(|f| f.is_match(&name)) {
                let _ = writeln!(out, "{name}: {}", value.load(Ordering::Relaxed));
            }
        }
        out
    }

    /// The Prometheus text form: counters as `envoy_…_total`-style names
    /// with Envoy's tags for clusters and connection managers.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut typed = std::collections::BTreeSet::new();
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        for (key, value) in counters.iter() {
            let (name, labels) = prometheus_name(key);
            if typed.insert(name.clone()) {
                let _ = writeln!(out, "# TYPE {name} counter");
            }
            let _ = writeln!(
                out,
                "{name}{} {}",
                label_text(&labels, None),
                value.load(Ordering::Relaxed)
            );
        }
        drop(counters);
        let histograms = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        for (key, h) in histograms.iter() {
            let (name, labels) = prometheus_name(key);
            if typed.insert(name.clone()) {
                let _ = writeln!(out, "# TYPE {name} histogram");
            }
            let mut cumulative = 0;
            for (bound, count) in h.bounds.iter().zip(&h.buckets) {
                cumulative += count.load(Ordering::Relaxed);
                let le = ("le".to_string(), bound.to_string());
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {cumulative}",
                    label_text(&labels, Some(&le))
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let inf = ("le".to_string(), "+Inf".to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{} {count}",
                label_text(&labels, Some(&inf))
            );
            let _ = writeln!(
                out,
                "{name}_sum{} {}",
                label_text(&labels, None),
                h.sum.load(Ordering::Relaxed)
            );
            let _ = writeln!(out, "{name}_count{} {count}", label_text(&labels, None));
        }
        out
    }
}

fn flat_name(key: &Key) -> String {
    let mut name = key.name.clone();
    for (tag, value) in &key.tags {
        let _ = write!(name, ".{tag}.{value}");
    }
    name
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Envoy's Prometheus name and labels: `cluster.NAME.rest` →
/// `envoy_cluster_rest{envoy_cluster_name="NAME"}`, `http.PREFIX.rest` →
/// `envoy_http_rest{envoy_http_conn_manager_prefix="PREFIX"}`.
fn prometheus_name(key: &Key) -> (String, Vec<(String, String)>) {
    let mut labels = key.tags.clone();
    let name = if let Some(rest) = key.name.strip_prefix("cluster.") {
        // Cluster names hold dots (`out|reviews.shop`): the stat is the
        // known suffix after the name.
        match rest
            .rsplit_once(".upstream_")
            .or_else(|| rest.rsplit_once(".outlier_detection."))
        {
            Some((cluster, _)) => {
                labels.push(("envoy_cluster_name".into(), cluster.to_string()));
                format!("envoy_cluster_{}", sanitize(&rest[cluster.len() + 1..]))
            }
            None => format!("envoy_cluster_{}", sanitize(rest)),
        }
    } else if let Some(rest) = key.name.strip_prefix("http.")
        && let Some((prefix, stat)) = rest.split_once('.')
    {
        labels.push(("envoy_http_conn_manager_prefix".into(), prefix.to_string()));
        format!("envoy_http_{}", sanitize(stat))
    } else {
        format!("envoy_{}", sanitize(&key.name))
    };
    (name, labels)
}

fn label_text(labels: &[(String, String)], extra: Option<&(String, String)>) -> String {
    let all: Vec<String> = labels
        .iter()
        .chain(extra)
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{}=\"{v}\"", sanitize(k))
        })
        .collect();
    if all.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", all.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_names_become_envoys_prometheus_names() {
        let stats = Stats::default();
        stats
            .counter("cluster.out|reviews.shop.upstream_rq_total")
            .fetch_add(3, Ordering::Relaxed);
        stats
            .counter("http.inbound.rbac.denied")
            .fetch_add(1, Ordering::Relaxed);
        let text = stats.prometheus();
        assert!(
            text.contains(
                "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"out|reviews.shop\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("envoy_http_rbac_denied{envoy_http_conn_manager_prefix=\"inbound\"} 1"),
            "{text}"
        );
        assert_eq!(
            stats.text(Some(
                &regex::Regex::new("^http.inbound.rbac.denied$").unwrap()
            )),
            "http.inbound.rbac.denied: 1\n"
        );
    }

    #[test]
    fn a_full_scope_counts_no_new_series() {
        let stats = Stats::default();
        let key = |code: &str| Key {
            name: "weft.inbound_requests".into(),
            tags: vec![("code".into(), code.into())],
        };
        assert!(stats.tagged_counter_within(key("200"), 2).is_some());
        assert!(stats.tagged_counter_within(key("404"), 2).is_some());
        assert!(stats.tagged_counter_within(key("503"), 2).is_none());
        // A series it has keeps counting.
        assert!(stats.tagged_counter_within(key("200"), 2).is_some());
    }
}
