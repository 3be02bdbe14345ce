//! Delta: responses carry only what changed, in parts, and what was
//! removed; a stream looks only at what changed since the layers its
//! proxy last matched.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use prost::Message;
use prost::encoding::{self, WireType};
use tokio::sync::mpsc;
use tonic::Status;

use crate::cache::SnapshotCache;
use crate::snapshot::{Entry, Layer, ResourceType, Snapshot};

use super::grpc::Framed;
use super::{Closed, Progress, Protocol, Sent, served_type};

/// About how many bytes of resources one delta response carries (64 KiB);
/// a larger update goes in several, so no stream holds a whole
/// configuration in flight at once. Each part is framed at its own size
/// and freed once written (see [`super::grpc`]).
pub(super) const RESPONSE_BYTES: usize = 64 * 1024;

/// A delta response whose resources are written into its frame straight
/// from the snapshot's encoded entries. Building a `Resource` per entry
/// would copy every resource once more per proxy, which is most of the
/// cost of a route table sent to thousands of proxies.
pub(super) struct DeltaResponse {
    /// Everything but the resources.
    head: DeltaDiscoveryResponse,
    resources: Vec<Arc<Entry>>,
}

/// Field numbers of `DeltaDiscoveryResponse.resources`, and of `Resource`
/// and `google.protobuf.Any`, from their `.proto` files.
const RESPONSE_RESOURCES: u32 = 2;
const RESOURCE_VERSION: u32 = 1;
const RESOURCE_BODY: u32 = 2;
const RESOURCE_NAME: u32 = 3;
const ANY_TYPE_URL: u32 = 1;
const ANY_VALUE: u32 = 2;

/// Length of a length-delimited field of `len` bytes; proto3 leaves out
/// an empty one.
fn field_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
    }
}

fn put_field(tag: u32, bytes: &[u8], buf: &mut BytesMut) {
    if !bytes.is_empty() {
        encoding::encode_key(tag, WireType::LengthDelimited, buf);
        encoding::encode_varint(bytes.len() as u64, buf);
        buf.put_slice(bytes);
    }
}

fn any_len(entry: &Entry) -> usize {
    field_len(ANY_TYPE_URL, entry.any.type_url.len()) + field_len(ANY_VALUE, entry.any.value.len())
}

fn resource_len(entry: &Entry) -> usize {
    let any = any_len(entry);
    field_len(RESOURCE_VERSION, entry.version.len())
        + field_len(RESOURCE_NAME, entry.name.len())
        + encoding::key_len(RESOURCE_BODY)
        + encoding::encoded_len_varint(any as u64)
        + any
}

impl Framed for DeltaResponse {
    fn encoded_len(&self) -> usize {
        self.head.encoded_len()
            + self
                .resources
                .iter()
                .map(|e| {
                    let len = resource_len(e);
                    encoding::key_len(RESPONSE_RESOURCES)
                        + encoding::encoded_len_varint(len as u64)
                        + len
                })
                .sum::<usize>()
    }

    fn encode(&self, buf: &mut BytesMut) {
        self.head.encode_raw(buf);
        for entry in &self.resources {
            encoding::encode_key(RESPONSE_RESOURCES, WireType::LengthDelimited, buf);
            encoding::encode_varint(resource_len(entry) as u64, buf);
            put_field(RESOURCE_VERSION, entry.version.as_bytes(), buf);
            put_field(RESOURCE_NAME, entry.name.as_bytes(), buf);
            encoding::encode_key(RESOURCE_BODY, WireType::LengthDelimited, buf);
            encoding::encode_varint(any_len(entry) as u64, buf);
            put_field(ANY_TYPE_URL, entry.any.type_url.as_bytes(), buf);
            put_field(ANY_VALUE, &entry.any.value, buf);
        }
    }
}

/// Delta: responses carry only what changed, and what was removed.
pub(super) struct Delta {
    tx: mpsc::Sender<Result<Box<DeltaResponse>, Status>>,
    types: BTreeMap<ResourceType, DeltaType>,
}

impl Delta {
    pub(super) fn new(tx: mpsc::Sender<Result<Box<DeltaResponse>, Status>>) -> Delta {
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
struct Known {
    held: Vec<(Arc<str>, Arc<str>)>,
}

impl Known {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.held.binary_search_by(|(held, _)| (**held).cmp(name))
    }

    fn get(&self, name: &str) -> Option<&Arc<str>> {
        self.position(name).ok().map(|i| &self.held[i].1)
    }

    fn insert(&mut self, name: Arc<str>, version: Arc<str>) {
        match self.position(&name) {
            Ok(i) => self.held[i].1 = version,
            Err(i) => self.held.insert(i, (name, version)),
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(i) = self.position(name) {
            self.held.remove(i);
        }
    }

    fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.held.iter().map(|(name, _)| name)
    }

    /// Gives back what a burst of changes left unused.
    fn settle(&mut self) {
        if self.held.capacity() > self.held.len() + self.held.len() / 4 + 8 {
            self.held.shrink_to_fit();
        }
    }
}

impl FromIterator<(Arc<str>, Arc<str>)> for Known {
    fn from_iter<I: IntoIterator<Item = (Arc<str>, Arc<str>)>>(held: I) -> Known {
        let mut held: Vec<_> = held.into_iter().collect();
        held.sort_by(|a, b| a.0.cmp(&b.0));
        held.dedup_by(|a, b| a.0 == b.0);
        Known { held }
    }
}

/// Moves along a list sorted by `key` to `name`: the item with that name,
/// or None (and stops before the first one after it).
fn seek<'a, T: 'a>(
    items: &mut std::iter::Peekable<impl Iterator<Item = &'a T>>,
    name: &str,
    key: impl Fn(&T) -> &Arc<str>,
) -> Option<&'a T> {
    while let Some(item) = items.peek() {
        match (**key(item)).cmp(name) {
            std::cmp::Ordering::Less => {
                items.next();
            }
            std::cmp::Ordering::Equal => return items.next(),
            std::cmp::Ordering::Greater => return None,
        }
    }
    None
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
        let mut parts: Vec<Vec<Arc<Entry>>> = vec![Vec::new()];
        let mut bytes = 0;
        for entry in updated {
            let size = entry.any.value.len();
            if bytes + size > RESPONSE_BYTES && !parts.last().is_some_and(Vec::is_empty) {
                parts.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            if let Some(part) = parts.last_mut() {
                part.push(entry);
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
            let response = DeltaResponse {
                head: DeltaDiscoveryResponse {
                    system_version_info: version.clone(),
                    type_url: t.type_url(),
                    removed_resources: if i == last {
                        removed.take().unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                    nonce,
                    ..Default::default()
                },
                resources,
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

    /// As the default, in one pass: the names, what the proxy holds and
    /// the snapshot's layers are all sorted, so each name costs a step
    /// along each list rather than a search in it (a route table of a
    /// thousand services is checked against a thousand endpoint sets).
    fn holds(&self, t: ResourceType, names: &BTreeSet<&str>, snapshot: &Snapshot) -> bool {
        let Some(state) = self.types.get(&t) else {
            return names.is_empty();
        };
        let mut held = state.known.held.iter().peekable();
        let mut own = snapshot.own().resources(t).iter().peekable();
        let mut shared = snapshot.shared().resources(t).iter().peekable();
        state.progress.acked()
            && names.iter().all(|name| {
                let version = seek(&mut held, name, |(n, _)| n).map(|(_, v)| v);
                let entry = seek(&mut own, name, |e| &e.name)
                    .or_else(|| seek(&mut shared, name, |e| &e.name));
                version.is_some_and(|v| entry.is_some_and(|e| e.version == *v))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;

    #[test]
    fn a_response_framed_from_entries_decodes_as_the_protobuf_one() {
        let entry = |name: &str, version: &str, value: Vec<u8>| {
            Arc::new(Entry {
                name: name.into(),
                any: Any {
                    type_url: ResourceType::Cluster.type_url(),
                    value,
                },
                version: version.into(),
            })
        };
        let entries = vec![
            entry("out|a", "v1", vec![7; 300]),
            entry("out|b", "", Vec::new()),
        ];
        let head = DeltaDiscoveryResponse {
            system_version_info: "s1".into(),
            type_url: ResourceType::Cluster.type_url(),
            removed_resources: vec!["out|gone".into()],
            nonce: "n1".into(),
            ..Default::default()
        };
        let response = DeltaResponse {
            head: head.clone(),
            resources: entries.clone(),
        };
        let mut bytes = BytesMut::new();
        response.encode(&mut bytes);
        assert_eq!(bytes.len(), Framed::encoded_len(&response));
        let expected = DeltaDiscoveryResponse {
            resources: entries
                .iter()
                .map(|e| Resource {
                    name: e.name.to_string(),
                    version: e.version.to_string(),
                    resource: Some(e.any.clone()),
                    ..Default::default()
                })
                .collect(),
            ..head
        };
        assert_eq!(
            DeltaDiscoveryResponse::decode(bytes.freeze()).unwrap(),
            expected
        );
    }
}
