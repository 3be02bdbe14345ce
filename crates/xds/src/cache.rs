//! The current snapshot of every proxy, and what each proxy did with it.
//!
//! Translation publishes a snapshot per proxy (node id) with [`SnapshotCache::set`];
//! every ADS stream of that proxy watches it and pushes the difference.
//! Streams report what they send and what the proxy ACKs or NACKs back
//! here; the per-proxy status and the Prometheus metrics come from those
//! reports.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::snapshot::{ResourceType, Snapshot};

/// A configuration the proxy refused, with its own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub resource_type: ResourceType,
    /// The version that was refused.
    pub version: String,
    pub message: String,
}

/// What a proxy has: open streams, accepted versions, the last refusal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyStatus {
    pub streams: usize,
    /// Responses sent, and the resources they carried, over all streams.
    pub responses: u64,
    pub resources_sent: u64,
    pub acked: BTreeMap<ResourceType, String>,
    pub last_nack: Option<Nack>,
}

type TypeLabel = Vec<(&'static str, &'static str)>;

/// The xDS server's Prometheus metrics; register them where the process
/// serves `/metrics`.
#[derive(Clone)]
pub struct XdsMetrics {
    connected: Gauge,
    responses: Family<TypeLabel, Counter>,
    resources: Family<TypeLabel, Counter>,
    nacks: Family<TypeLabel, Counter>,
    ack_latency: Family<TypeLabel, Histogram>,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        XdsMetrics {
            connected: Gauge::default(),
            responses: Family::default(),
            resources: Family::default(),
            nacks: Family::default(),
            ack_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
        }
    }
}

impl XdsMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "xds_connected_proxies",
            "Proxies with an open ADS stream",
            self.connected.clone(),
        );
        registry.register(
            "xds_responses",
            "xDS responses sent, by type",
            self.responses.clone(),
        );
        registry.register(
            "xds_resources_sent",
            "Resources carried by xDS responses, by type",
            self.resources.clone(),
        );
        registry.register(
            "xds_nacks",
            "Configurations proxies refused, by type",
            self.nacks.clone(),
        );
        registry.register(
            "xds_ack_latency_seconds",
            "From publishing a snapshot to the proxy acknowledging it, by type",
            self.ack_latency.clone(),
        );
    }
}

fn label(t: ResourceType) -> TypeLabel {
    vec![("type", t.short())]
}

struct NodeEntry {
    slot: watch::Sender<Option<Arc<Snapshot>>>,
    published_at: Option<Instant>,
    status: ProxyStatus,
}

/// Snapshots and status by node id. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct SnapshotCache {
    nodes: Mutex<HashMap<String, NodeEntry>>,
    metrics: XdsMetrics,
}

impl SnapshotCache {
    pub fn new() -> SnapshotCache {
        SnapshotCache::default()
    }

    pub fn metrics(&self) -> &XdsMetrics {
        &self.metrics
    }

    fn with_node<R>(&self, node: &str, f: impl FnOnce(&mut NodeEntry) -> R) -> R {
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = nodes.entry(node.to_string()).or_insert_with(|| NodeEntry {
            slot: watch::Sender::new(None),
            published_at: None,
            status: ProxyStatus::default(),
        });
        f(entry)
    }

    /// Publishes `snapshot` as the node's configuration; its streams push it.
    pub fn set(&self, node: &str, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        self.with_node(node, |entry| {
            entry.published_at = Some(Instant::now());
            entry.slot.send_replace(Some(snapshot));
        });
    }

    /// Forgets a node's snapshot and status, so proxies that come and go
    /// do not accumulate. Keeps them, and returns false, while the node
    /// has a stream open.
    pub fn remove(&self, node: &str) -> bool {
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if nodes
            .get(node)
            .is_some_and(|entry| entry.status.streams > 0)
        {
            return false;
        }
        nodes.remove(node);
        true
    }

    /// The node's snapshot now and whenever it changes.
    pub fn subscribe(&self, node: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.with_node(node, |entry| entry.slot.subscribe())
    }

    /// The node's snapshot now, if it has one (without registering the
    /// node, as [`SnapshotCache::subscribe`] does).
    pub fn snapshot(&self, node: &str) -> Option<Arc<Snapshot>> {
        let nodes = self
            .nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        nodes
            .get(node)
            .and_then(|entry| entry.slot.borrow().clone())
    }

    pub fn status(&self, node: &str) -> Option<ProxyStatus> {
        let nodes = self
            .nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        nodes.get(node).map(|entry| entry.status.clone())
    }

    pub(crate) fn stream_opened(&self, node: &str) {
        self.with_node(node, |entry| {
            entry.status.streams += 1;
            if entry.status.streams == 1 {
                self.metrics.connected.inc();
            }
        });
    }

    pub(crate) fn stream_closed(&self, node: &str) {
        self.with_node(node, |entry| {
            entry.status.streams = entry.status.streams.saturating_sub(1);
            if entry.status.streams == 0 {
                self.metrics.connected.dec();
            }
        });
    }

    pub(crate) fn record_response(&self, node: &str, t: ResourceType, resources: usize) {
        self.metrics.responses.get_or_create(&label(t)).inc();
        self.metrics
            .resources
            .get_or_create(&label(t))
            .inc_by(resources as u64);
        self.with_node(node, |entry| {
            entry.status.responses += 1;
            entry.status.resources_sent += resources as u64;
        });
    }

    /// Records an ACK; the first ACK of the published snapshot's version
    /// of a type is timed from when the snapshot was published.
    pub(crate) fn record_ack(&self, node: &str, t: ResourceType, version: String) {
        self.with_node(node, |entry| {
            let current = entry.slot.borrow().as_ref().map(|s| s.version(t));
            let first_ack = entry.status.acked.get(&t) != Some(&version);
            if first_ack
                && current.as_ref() == Some(&version)
                && let Some(published) = entry.published_at
            {
                let seconds = published.elapsed().as_secs_f64();
                self.metrics
                    .ack_latency
                    .get_or_create(&label(t))
                    .observe(seconds);
            }
            entry.status.acked.insert(t, version);
        });
    }

    pub(crate) fn record_nack(
        &self,
        node: &str,
        t: ResourceType,
        version: String,
        message: String,
    ) {
        tracing::warn!(node, resource_type = t.short(), version, error = %message, "proxy rejected a configuration");
        self.metrics.nacks.get_or_create(&label(t)).inc();
        self.with_node(node, |entry| {
            entry.status.last_nack = Some(Nack {
                resource_type: t,
                version,
                message,
            });
        });
    }
}
