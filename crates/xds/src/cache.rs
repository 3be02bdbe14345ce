//! The current snapshot of every proxy, and what each proxy did with it.
//!
//! Translation publishes a snapshot per proxy (node id) with [`SnapshotCache::set`];
//! every ADS stream of that proxy watches it and pushes the difference.
//! Streams report ACKs and NACKs back here, so the edge can show them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

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

type SnapshotSlot = watch::Sender<Option<Arc<Snapshot>>>;

/// Snapshots and status by node id. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct SnapshotCache {
    nodes: Mutex<HashMap<String, (SnapshotSlot, ProxyStatus)>>,
}

impl SnapshotCache {
    pub fn new() -> SnapshotCache {
        SnapshotCache::default()
    }

    fn with_node<R>(&self, node: &str, f: impl FnOnce(&mut (SnapshotSlot, ProxyStatus)) -> R) -> R {
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = nodes
            .entry(node.to_string())
            .or_insert_with(|| (watch::Sender::new(None), ProxyStatus::default()));
        f(entry)
    }

    /// Publishes `snapshot` as the node's configuration; its streams push it.
    pub fn set(&self, node: &str, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        self.with_node(node, |(slot, _)| {
            slot.send_replace(Some(snapshot));
        });
    }

    /// The node's snapshot now and whenever it changes.
    pub fn subscribe(&self, node: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.with_node(node, |(slot, _)| slot.subscribe())
    }

    pub fn status(&self, node: &str) -> Option<ProxyStatus> {
        let nodes = self
            .nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        nodes.get(node).map(|(_, status)| status.clone())
    }

    pub(crate) fn update_status(&self, node: &str, f: impl FnOnce(&mut ProxyStatus)) {
        self.with_node(node, |(_, status)| f(status));
    }
}
