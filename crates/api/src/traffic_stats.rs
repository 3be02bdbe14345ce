//! Requests between services, as an edge rolls them up for the server
//! (per service pair, per interval) and as the server answers `weft stat`
//! and `weft top` from the recent window it keeps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Upper bounds of the request duration buckets, in seconds; the last
/// bucket (no bound) takes the rest. The same everywhere: proxies record
/// into them, edges and the server add them up.
pub const DURATION_BOUNDS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A service where it runs (or called from): `cluster` is where the
/// instance that counted is; empty when not known.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAt {
    pub cluster: String,
    pub namespace: String,
    pub service: String,
}

/// Requests, errors (5xx, or no response) and durations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    /// Requests over mutual TLS (the caller's identity verified).
    #[serde(default)]
    pub mtls: u64,
    /// Per bucket of [`DURATION_BOUNDS_SECONDS`], one more for the rest.
    #[serde(default)]
    pub durations: Vec<u64>,
    #[serde(default)]
    pub duration_sum_seconds: f64,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.mtls += other.mtls;
        self.duration_sum_seconds += other.duration_sum_seconds;
        if self.durations.len() < other.durations.len() {
            self.durations.resize(other.durations.len(), 0);
        }
        for (mine, theirs) in self.durations.iter_mut().zip(&other.durations) {
            *mine += theirs;
        }
    }

    /// The duration below which `q` (0..1) of the timed requests took,
    /// interpolated within its bucket as Prometheus'
    /// `histogram_quantile` does; none without timed requests.
    pub fn quantile_seconds(&self, q: f64) -> Option<f64> {
        let total: u64 = self.durations.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &count) in self.durations.iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                let lower = if i == 0 {
                    0.0
                } else {
                    DURATION_BOUNDS_SECONDS[i - 1]
                };
                let Some(&upper) = DURATION_BOUNDS_SECONDS.get(i) else {
                    // The open bucket: its lower bound is all we know.
                    return Some(lower);
                };
                let within = (rank - below as f64) / count as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            below += count;
        }
        DURATION_BOUNDS_SECONDS.last().copied()
    }
}

/// One service pair's traffic in an interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairTraffic {
    pub source: ServiceAt,
    pub destination: ServiceAt,
    #[serde(flatten)]
    pub totals: Totals,
}

/// Traffic summed per service pair.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairSums(BTreeMap<(ServiceAt, ServiceAt), Totals>);

impl PairSums {
    /// The totals of `source` → `destination`, to add to.
    pub fn of(&mut self, source: ServiceAt, destination: ServiceAt) -> &mut Totals {
        self.0.entry((source, destination)).or_default()
    }

    pub fn add(&mut self, pair: PairTraffic) {
        self.of(pair.source, pair.destination).add(&pair.totals);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs, in order.
    pub fn into_pairs(self) -> Vec<PairTraffic> {
        self.0
            .into_iter()
            .map(|((source, destination), totals)| PairTraffic {
                source,
                destination,
                totals,
            })
            .collect()
    }
}

/// What an edge sends the server every [`ROLLUP_INTERVAL_SECONDS`]:
/// each pair's traffic its proxies counted since the last rollup (calls
/// its callees received, and calls its callers made that never reached
/// a callee).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRollup {
    /// The seconds it covers.
    pub seconds: u32,
    pub pairs: Vec<PairTraffic>,
}

pub const ROLLUP_INTERVAL_SECONDS: u32 = 10;

/// One row of `weft stat`: a service (or pair) over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRow {
    /// For a pair: who calls; none for a service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ServiceAt>,
    pub destination: ServiceAt,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_second: f64,
    /// Share of requests that did not fail (1 without requests).
    pub success_rate: f64,
    pub mtls_share: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_seconds: Option<f64>,
}

impl TrafficRow {
    pub fn new(
        source: Option<ServiceAt>,
        destination: ServiceAt,
        totals: &Totals,
        seconds: f64,
    ) -> TrafficRow {
        let share = |n: u64| {
            if totals.requests == 0 {
                1.0
            } else {
                n as f64 / totals.requests as f64
            }
        };
        TrafficRow {
            source,
            destination,
            requests: totals.requests,
            errors: totals.errors,
            requests_per_second: if seconds > 0.0 {
                totals.requests as f64 / seconds
            } else {
                0.0
            },
            success_rate: share(totals.requests - totals.errors.min(totals.requests)),
            mtls_share: if totals.requests == 0 {
                0.0
            } else {
                share(totals.mtls)
            },
            p50_seconds: totals.quantile_seconds(0.50),
            p95_seconds: totals.quantile_seconds(0.95),
            p99_seconds: totals.quantile_seconds(0.99),
        }
    }
}

/// The answer to `GET /v1/traffic/{services,pairs}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficReport {
    /// The seconds the rows cover (at most what was asked, as far back as
    /// the server's window goes).
    pub seconds: f64,
    pub rows: Vec<TrafficRow>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_prometheus() {
        let mut durations = vec![0; DURATION_BOUNDS_SECONDS.len() + 1];
        // 100 requests between 5 and 10 ms.
        durations[4] = 100;
        let totals = Totals {
            requests: 100,
            durations,
            ..Default::default()
        };
        let p50 = totals.quantile_seconds(0.5).unwrap();
        assert!((p50 - 0.0075).abs() < 1e-9, "{p50}");
        let p99 = totals.quantile_seconds(0.99).unwrap();
        assert!((p99 - 0.00995).abs() < 1e-9, "{p99}");
        assert_eq!(Totals::default().quantile_seconds(0.5), None);
    }

    #[test]
    fn totals_add_up_bucket_by_bucket() {
        let mut a = Totals {
            requests: 3,
            errors: 1,
            mtls: 3,
            durations: vec![1, 2],
            duration_sum_seconds: 0.5,
        };
        a.add(&Totals {
            requests: 2,
            errors: 0,
            mtls: 1,
            durations: vec![0, 1, 1],
            duration_sum_seconds: 0.25,
        });
        assert_eq!(a.requests, 5);
        assert_eq!(a.errors, 1);
        assert_eq!(a.mtls, 4);
        assert_eq!(a.durations, vec![1, 3, 1]);
        assert_eq!(a.duration_sum_seconds, 0.75);
    }
}
