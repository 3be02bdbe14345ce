//! Delta: responses carry only what changed, in parts, and what was
//! removed; a stream looks only at what changed since the layers its
//! proxy last matched.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use tokio::sync::mpsc;
use tonic::Status;

use crate::cache::SnapshotCache;
use crate::snapshot::{Entry, Layer, ResourceType, Snapshot};

use super::{Closed, Progress, Protocol, Sent, served_type};

/// About how many bytes of resources one delta response carries (64 KiB);
/// a larger update goes in several, so no stream holds a whole
/// configuration in flight at once. Each part is framed at its own size
/// and freed once written (see [`super::grpc`]).
pub(super) const RESPONSE_BYTES: usize = 64 * 1024;

pub(super) fn resource(entry: &Entry) -> Resource {
    Resource {
        name: entry.name.to_string(),
        version: entry.version.to_string(),
        resource: Some(entry.any.clone()),
        ..Default::default()
    }
}

/// Delta: responses carry only what changed, and what was removed.
pub(super) struct Delta {
    tx: mpsc::Sender<Result<Box<DeltaDiscoveryResponse>, Status>>,
    types: BTreeMap<ResourceType, DeltaType>,
}

impl Delta {
    pub(super) fn new(tx: mpsc::Sender<Result<Box<DeltaDiscoveryResponse>, Status>>) -> Delta {
        Delta {
            tx,
            types: BTreeMap::new(),
        }
    }
}

#[derive(Default)]
pub(super) struct DeltaType {
    progress: Progress,
    /// What the proxy has.
    known: Known,
    answered: bool,
    /// The layers `known` last matched (as filtered by the subscription),
    /// so the next push looks only at what changed since; none: compare
    /// everything.
    synced: Option<Synced>,
    /// Names whose `known` entry changed since `synced` (forgotten to be
    /// sent again).
    touched: BTreeSet<String>,
    /// Nonces of the earlier responses of the latest push, when it was
    /// sent in parts.
    parts: Vec<String>,
}

/// What a proxy has of one type: name → version, sorted by name.
///
/// A flat list rather than a tree: every stream keeps one per type for as
/// long as it lives, and resources mostly arrive in name order (a first
/// sync appends), so it stays about half the size of a `BTreeMap`.
#[derive(Default)]
struct Known(Vec<(Arc<str>, Arc<str>)>);

impl Known {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(held, _)| (**held).cmp(name))
    }

    fn get(&self, name: &str) -> Option<&Arc<str>> {
        self.position(name).ok().map(|i| &self.0[i].1)
    }

    fn insert(&mut self, name: Arc<str>, version: Arc<str>) {
        match self.position(&name) {
            Ok(i) => self.0[i].1 = version,
            Err(i) => self.0.insert(i, (name, version)),
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(i) = self.position(name) {
            self.0.remove(i);
        }
    }

    fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter().map(|(name, _)| name)
    }

    /// Gives back what a burst of changes left unused.
    fn settle(&mut self) {
        if self.0.capacity() > self.0.len() + self.0.len() / 4 + 8 {
            self.0.shrink_to_fit();
        }
    }
}

impl FromIterator<(Arc<str>, Arc<str>)> for Known {
    fn from_iter<I: IntoIterator<Item = (Arc<str>, Arc<str>)>>(held: I) -> Known {
        let mut known: Vec<_> = held.into_iter().collect();
        known.sort_by(|a, b| a.0.cmp(&b.0));
        known.dedup_by(|a, b| a.0 == b.0);
        Known(known)
    }
}

/// The layers a proxy's resources of one type last matched.
pub(super) struct Synced {
    own: Arc<Layer>,
    shared: u64,
}

impl DeltaType {
    /// The names a push must look at: those that changed since the layers
    /// it last matched, or None when it must compare everything.
    fn candidates(&self, t: ResourceType, snapshot: &Snapshot) -> Option<BTreeSet<String>> {
        let synced = self.synced.as_ref()?;
        let shared = snapshot.shared();
        let mut names = self.touched.clone();
        if synced.shared != shared.id() {
            let changes = shared.changes().filter(|c| c.from == synced.shared)?;
            names.extend(changes.names(t).cloned());
        }
        if !Arc::ptr_eq(&synced.own, snapshot.own()) {
            names.extend(synced.own.resources(t).names().map(|n| n.to_string()));
            names.extend(snapshot.own().resources(t).names().map(|n| n.to_string()));
        }
        Some(names)
    }

    /// Whether the proxy holds exactly what `snapshot` has for it.
    fn in_step_with(&self, snapshot: &Snapshot) -> bool {
        self.touched.is_empty()
            && self.synced.as_ref().is_some_and(|s| {
                s.shared == snapshot.shared().id() && Arc::ptr_eq(&s.own, snapshot.own())
            })
    }
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    const ANSWERS_WITHOUT_SNAPSHOT: bool = true;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        node: &str,
        cache: &SnapshotCache,
    ) -> Option<ResourceType> {
        let t = served_type(&request.type_url, node)?;
        let state = self.types.entry(t).or_default();
        let first = !state.answered;
        if first {
            // A reconnecting proxy says what it has; with content-hash
            // versions, nothing it has needs sending again.
            state.known = request
                .initial_resource_versions
                .into_iter()
                .map(|(name, version)| (name.into(), version.into()))
                .collect();
            state.progress.subscription.wildcard =
                t.wildcard_by_default() && request.resource_names_subscribe.is_empty();
        }
        let answers_latest =
            !request.response_nonce.is_empty() && request.response_nonce == state.progress.nonce;
        // A refusal of an earlier part of the latest push counts too.
        let refuses_a_part =
            request.error_detail.is_some() && state.parts.contains(&request.response_nonce);
        if answers_latest || refuses_a_part {
            match request.error_detail {
                Some(error) => {
                    cache.record_nack(node, t, state.progress.sent_version.clone(), error.message)
                }
                None => {
                    state.progress.acked_nonce = request.response_nonce.clone();
                    cache.record_ack(node, t, state.progress.sent_version.clone());
                }
            }
        }
        let mut changed = false;
        if !request.resource_names_subscribe.is_empty()
            || !request.resource_names_unsubscribe.is_empty()
        {
            // What the proxy wants moved: compare everything next time.
            state.synced = None;
        }
        for name in request.resource_names_subscribe {
            if name == "*" {
                changed |= !state.progress.subscription.wildcard;
                state.progress.subscription.wildcard = true;
            } else {
                changed |= state.progress.subscription.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                state.progress.subscription.wildcard = false;
            } else {
                state.progress.subscription.names.remove(&name);
                state.known.remove(name.as_str());
            }
        }
        (first || changed).then_some(t)
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
        let wanted = |name: &str| state.progress.subscription.wants(name);
        let (updated, removed): (Vec<Arc<Entry>>, Vec<String>) = match state.candidates(t, snapshot)
        {
            // Only what changed since the layers the proxy last matched.
            Some(names) => {
                let mut updated = Vec::new();
                let mut removed = Vec::new();
                for name in names {
                    let held = state.known.get(name.as_str());
                    match snapshot.get(t, &name).filter(|_| wanted(&name)) {
                        Some(entry) if held != Some(&entry.version) => updated.push(entry.clone()),
                        Some(_) => {}
                        None if removals && held.is_some() => removed.push(name),
                        None => {}
                    }
                }
                (updated, removed)
            }
            None => {
                let updated = snapshot
                    .entries(t)
                    .filter(|entry| {
                        wanted(&entry.name) && state.known.get(&entry.name) != Some(&entry.version)
                    })
                    .cloned()
                    .collect();
                let removed = if removals {
                    state
                        .known
                        .names()
                        .filter(|name| snapshot.get(t, name).is_none() || !wanted(name))
                        .map(|name| name.to_string())
                        .collect()
                } else {
                    Vec::new()
                };
                (updated, removed)
            }
        };
        if removals {
            state.synced = Some(Synced {
                own: snapshot.own().clone(),
                shared: snapshot.shared().id(),
            });
            state.touched.clear();
        }
        // The last step of an update also answers when only the version
        // moved (a proxy that reconnected before its snapshot already held
        // all of it), so its ACK records the version it runs.
        let must_answer =
            !state.answered || (removals && state.progress.sent_version != snapshot.version(t));
        if updated.is_empty() && removed.is_empty() && !must_answer {
            return Ok(None);
        }
        for entry in &updated {
            state
                .known
                .insert(entry.name.clone(), entry.version.clone());
        }
        for name in &removed {
            state.known.remove(name.as_str());
        }
        state.known.settle();
        let version = snapshot.version(t);
        let count = updated.len();
        let changed: Vec<String> = updated.iter().map(|e| e.name.to_string()).collect();
        // A large update goes in parts of about RESPONSE_BYTES, so no
        // stream holds a whole configuration in its buffers at once; the
        // removals ride with the last part.
        let mut parts: Vec<Vec<Resource>> = vec![Vec::new()];
        let mut bytes = 0;
        for resource in updated.iter().map(|e| resource(e)) {
            let size = resource.resource.as_ref().map_or(0, |a| a.value.len());
            if bytes + size > RESPONSE_BYTES && !parts.last().is_some_and(Vec::is_empty) {
                parts.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            if let Some(part) = parts.last_mut() {
                part.push(resource);
            }
        }
        let last = parts.len() - 1;
        state.parts.clear();
        let mut removed = Some(removed);
        for (i, resources) in parts.into_iter().enumerate() {
            let nonce = if i == last {
                nonce.clone()
            } else {
                format!("{nonce}.{i}")
            };
            if i != last {
                state.parts.push(nonce.clone());
            }
            let response = DeltaDiscoveryResponse {
                system_version_info: version.clone(),
                resources,
                type_url: t.type_url(),
                removed_resources: if i == last {
                    removed.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
                nonce,
                ..Default::default()
            };
            self.tx
                .send(Ok(Box::new(response)))
                .await
                .map_err(|_| Closed)?;
        }
        state.progress.nonce = nonce;
        state.answered = true;
        state.progress.sent_version = version;
        Ok(Some(Sent { count, changed }))
    }

    fn forget(&mut self, t: ResourceType, names: &[&str]) {
        if let Some(state) = self.types.get_mut(&t) {
            for name in names {
                state.known.remove(name);
                state.touched.insert(name.to_string());
            }
        }
    }

    fn has_work(&self, t: ResourceType, snapshot: &Snapshot, removals: bool) -> bool {
        let Some(state) = self.types.get(&t) else {
            return false;
        };
        if !state.answered || (removals && state.progress.sent_version != snapshot.version(t)) {
            return true;
        }
        if state.in_step_with(snapshot) {
            return false;
        }
        // What changed since the layers the proxy matched; unknown: all.
        state
            .candidates(t, snapshot)
            .is_none_or(|names| !names.is_empty())
    }

    async fn refuse(&mut self, status: Status) {
        let _ = self.tx.send(Err(status)).await;
    }

    fn progress(&self, t: ResourceType) -> Option<&Progress> {
        self.types.get(&t).map(|s| &s.progress)
    }

    fn held_version(&self, t: ResourceType, name: &str) -> Option<&str> {
        self.types.get(&t)?.known.get(name).map(|v| &**v)
    }
}
