//! State of the world: every response carries the whole set of a type;
//! stale nonces are ignored and a refused config is never sent again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::mpsc;
use tonic::Status;

use crate::cache::SnapshotCache;
use crate::snapshot::{Entry, ResourceType, Snapshot};

use super::{Closed, Progress, Protocol, Sent, Subscription, served_type};

/// State of the world: every response carries the whole set of a type.
pub(super) struct Sotw {
    tx: mpsc::Sender<Result<Box<DiscoveryResponse>, Status>>,
    types: BTreeMap<ResourceType, SotwType>,
}

impl Sotw {
    pub(super) fn new(tx: mpsc::Sender<Result<Box<DiscoveryResponse>, Status>>) -> Sotw {
        Sotw {
            tx,
            types: BTreeMap::new(),
        }
    }
}

#[derive(Default)]
pub(super) struct SotwType {
    progress: Progress,
    /// What the last response carried (None before the first).
    sent: Option<BTreeMap<String, Arc<Entry>>>,
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    const ANSWERS_WITHOUT_SNAPSHOT: bool = false;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        request: DiscoveryRequest,
        node: &str,
        cache: &SnapshotCache,
    ) -> Option<ResourceType> {
        let t = served_type(&request.type_url, node)?;
        let state = self.types.entry(t).or_default();
        if !request.response_nonce.is_empty() && request.response_nonce != state.progress.nonce {
            return None; // stale: answers a response that has been superseded
        }
        if let Some(error) = request.error_detail {
            cache.record_nack(node, t, state.progress.sent_version.clone(), error.message);
            return None;
        }
        if !request.response_nonce.is_empty() {
            state.progress.acked_nonce = request.response_nonce.clone();
            cache.record_ack(node, t, request.version_info.clone());
        }
        let names: BTreeSet<String> = request
            .resource_names
            .into_iter()
            .filter(|n| n != "*")
            .collect();
        let subscription = Subscription {
            wildcard: names.is_empty() && t.wildcard_by_default(),
            names,
        };
        let changed =
            state.sent.is_none() || subscription.names != state.progress.subscription.names;
        state.progress.subscription = subscription;
        // Resend only when the proxy asks for something new; the snapshot
        // watch sends updates.
        changed.then_some(t)
    }

    async fn push(
        &mut self,
        t: ResourceType,
        snapshot: &Snapshot,
        removals: bool,
        nonce: String,
    ) -> Result<Option<Sent>, Closed> {
        let Some(state) = self.types.get_mut(&t) else {
            return Ok(None);
        };
        let mut payload: BTreeMap<String, Arc<Entry>> = snapshot
            .entries(t)
            .filter(|entry| state.progress.subscription.wants(&entry.name))
            .map(|entry| (entry.name.to_string(), entry.clone()))
            .collect();
        let mut version = snapshot.version(t);
        if !removals {
            // A SotW response is the whole set: leaving a resource out removes
            // it. Keep what is going away until the second phase.
            let previous = state.sent.iter().flatten();
            let held: Vec<(String, Arc<Entry>)> = previous
                .filter(|(name, _)| {
                    !payload.contains_key(*name) && state.progress.subscription.wants(name)
                })
                .map(|(name, entry)| (name.clone(), entry.clone()))
                .collect();
            if !held.is_empty() {
                version.push_str("-before-removals");
                payload.extend(held);
            }
        }
        let versions = |m: &BTreeMap<String, Arc<Entry>>| -> Vec<(String, String)> {
            m.iter()
                .map(|(n, e)| (n.clone(), e.version.to_string()))
                .collect()
        };
        if state.sent.as_ref().map(versions) == Some(versions(&payload)) {
            return Ok(None);
        }
        let changed = payload
            .iter()
            .filter(|(name, entry)| {
                state
                    .sent
                    .as_ref()
                    .and_then(|sent| sent.get(*name))
                    .is_none_or(|held| held.version != entry.version)
            })
            .map(|(name, _)| name.clone())
            .collect();
        let response = DiscoveryResponse {
            version_info: version,
            resources: payload.values().map(|e| e.any.clone()).collect(),
            type_url: t.type_url(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        state.progress.nonce = nonce;
        state.sent = Some(payload);
        state.progress.sent_version = response.version_info.clone();
        let count = response.resources.len();
        self.tx
            .send(Ok(Box::new(response)))
            .await
            .map_err(|_| Closed)?;
        Ok(Some(Sent { count, changed }))
    }

    fn forget(&mut self, t: ResourceType, names: &[&str]) {
        if let Some(sent) = self.types.get_mut(&t).and_then(|s| s.sent.as_mut()) {
            for name in names {
                sent.remove(*name);
            }
        }
    }

    async fn refuse(&mut self, status: Status) {
        let _ = self.tx.send(Err(status)).await;
    }

    fn progress(&self, t: ResourceType) -> Option<&Progress> {
        self.types.get(&t).map(|s| &s.progress)
    }

    fn held_version(&self, t: ResourceType, name: &str) -> Option<&str> {
        let sent = self.types.get(&t)?.sent.as_ref()?;
        sent.get(name).map(|e| &*e.version)
    }
}
