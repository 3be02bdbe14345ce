//! The Aggregated Discovery Service, in both variants Envoy speaks.
//!
//! Each stream is a session task. It learns the node from the first request,
//! watches that node's snapshot, and keeps per type what the proxy asked
//! for and what it was sent. On a new snapshot it sends, per type, only
//! what changed, in two phases: first additions and updates (clusters,
//! endpoints, listeners, routes, keeping anything about to be removed), then
//! removals in the reverse order.
//!
//! Rules from real Envoy (see shared/notes/envoy-over-xds.md): a SotW
//! request whose nonce is not the latest sent is stale and ignored; a NACK
//! is recorded and the refused config is not sent again; every first delta
//! request of a type gets an answer, even an empty one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Extensions;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::cache::SnapshotCache;
use crate::snapshot::{Entry, Layer, ResourceType, Snapshot};

/// Decides which proxies may connect and hears when they leave: the
/// edge's workload registry. Without one, every proxy is admitted.
pub trait Admission: Send + Sync + 'static {
    /// Called once per stream with the node of its first request, the
    /// stream's gRPC metadata and its request extensions (what the server
    /// knows of the connection, such as the peer's TLS identity); an error
    /// closes the stream with that status, which the proxy logs.
    fn admit(
        &self,
        node: &Node,
        metadata: &MetadataMap,
        extensions: &Extensions,
    ) -> Result<(), Status>;
    /// An admitted stream of `node_id` ended.
    fn left(&self, node_id: &str);
}

/// Serves every proxy's ADS streams from one [`SnapshotCache`].
#[derive(Clone)]
pub struct AdsServer {
    cache: Arc<SnapshotCache>,
    admission: Option<Arc<dyn Admission>>,
    stopping: Option<watch::Receiver<bool>>,
}

impl AdsServer {
    pub fn new(cache: Arc<SnapshotCache>) -> AdsServer {
        AdsServer {
            cache,
            admission: None,
            stopping: None,
        }
    }

    /// Ends every stream with UNAVAILABLE once `stopping` turns true (or
    /// its sender goes away), so a graceful shutdown of the gRPC server
    /// does not wait for proxies that never hang up. They reconnect.
    pub fn with_stopping(mut self, stopping: watch::Receiver<bool>) -> AdsServer {
        self.stopping = Some(stopping);
        self
    }

    /// Asks `admission` before serving a proxy.
    pub fn with_admission(mut self, admission: Arc<dyn Admission>) -> AdsServer {
        self.admission = Some(admission);
        self
    }

    fn session<P: Protocol>(
        &self,
        protocol: P,
        metadata: MetadataMap,
        extensions: Extensions,
    ) -> Session<P> {
        Session::new(
            self.cache.clone(),
            protocol,
            self.admission.clone().map(|a| (a, metadata, extensions)),
            self.stopping.clone(),
        )
    }

    /// The gRPC service to add to a tonic server.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

impl AdsServer {
    fn open_sotw(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Response<ReceiverStream<Result<DiscoveryResponse, Status>>> {
        let (tx, rx) = mpsc::channel(QUEUED_RESPONSES);
        let (metadata, extensions, inbound) = request.into_parts();
        let protocol = Sotw {
            tx,
            types: BTreeMap::new(),
        };
        tokio::spawn(self.session(protocol, metadata, extensions).run(inbound));
        Response::new(ReceiverStream::new(rx))
    }

    fn open_delta(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Response<ReceiverStream<Result<DeltaDiscoveryResponse, Status>>> {
        let (tx, rx) = mpsc::channel(QUEUED_RESPONSES);
        let (metadata, extensions, inbound) = request.into_parts();
        let protocol = Delta {
            tx,
            types: BTreeMap::new(),
        };
        tokio::spawn(self.session(protocol, metadata, extensions).run(inbound));
        Response::new(ReceiverStream::new(rx))
    }

    /// The same server as Envoy's SDS service: a sidecar serves its
    /// proxy's certificates with it (snapshots of [`Snapshot::secrets`]).
    pub fn into_sds_service(self) -> SecretDiscoveryServiceServer<AdsServer> {
        SecretDiscoveryServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(self.open_sotw(request))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(self.open_delta(request))
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for AdsServer {
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        Ok(self.open_sotw(request))
    }

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Ok(self.open_delta(request))
    }

    async fn fetch_secrets(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented(
            "weft serves secrets over streams only (StreamSecrets, DeltaSecrets)",
        ))
    }
}

/// The stream went away; the session ends.
struct Closed;

/// How long a push waits for the proxy to confirm what it depends on
/// before it goes out anyway (with a warning).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// About how many bytes of resources one delta response carries (64 KiB); a larger
/// update goes in several.
const RESPONSE_BYTES: usize = 64 * 1024;

/// Responses a stream queues before its session waits for the proxy to
/// take them: little, so memory follows what proxies consume.
const QUEUED_RESPONSES: usize = 1;

/// What differs between the two protocol variants.
trait Protocol: Send + 'static {
    type Request: Send + 'static;
    /// Whether a request is answered before the proxy has a snapshot:
    /// delta must answer every first request (or Envoy waits out its
    /// initial fetch timeout), with nothing, which removes nothing; in SotW
    /// an empty answer would remove everything a reconnecting proxy has.
    const ANSWERS_WITHOUT_SNAPSHOT: bool;

    fn node(request: &Self::Request) -> Option<&Node>;
    /// Handles a request; returns the type it concerns if a response for it
    /// should go out now (first request, or the subscription changed).
    fn on_request(
        &mut self,
        request: Self::Request,
        node: &str,
        cache: &SnapshotCache,
    ) -> Option<ResourceType>;
    /// Sends what changed for `t` (in the first phase nothing is removed);
    /// returns what the response carried, or None if nothing needed
    /// sending.
    async fn push(
        &mut self,
        t: ResourceType,
        snapshot: &Snapshot,
        removals: bool,
        nonce: String,
    ) -> Result<Option<Sent>, Closed>;
    /// Forgets that the proxy holds `names` of type `t`, so the next push
    /// sends them again.
    fn forget(&mut self, t: ResourceType, names: &[&str]);
    /// Ends the stream with `status`.
    async fn refuse(&mut self, status: Status);
    /// Where type `t` stands, if the proxy ever asked for it.
    fn progress(&self, t: ResourceType) -> Option<&Progress>;
    /// The version of resource `name` of type `t` the proxy was given.
    fn held_version(&self, t: ResourceType, name: &str) -> Option<&str>;

    /// Whether the proxy accepted the latest response of type `t` (or was
    /// never sent one).
    fn acked(&self, t: ResourceType) -> bool {
        self.progress(t).is_none_or(Progress::acked)
    }

    /// Whether the proxy holds, and accepted, these resources of `t` at the
    /// snapshot's versions.
    fn holds(&self, t: ResourceType, names: &BTreeSet<&str>, snapshot: &Snapshot) -> bool {
        let Some(progress) = self.progress(t) else {
            return names.is_empty();
        };
        progress.acked()
            && names.iter().all(|n| {
                self.held_version(t, n)
                    .is_some_and(|held| snapshot.get(t, n).is_some_and(|e| &*e.version == held))
            })
    }

    /// Whether a push of `t` could send anything; a step with nothing to
    /// send waits for no confirmation.
    fn has_work(&self, _t: ResourceType, _snapshot: &Snapshot, _removals: bool) -> bool {
        true
    }
}

/// What one response carried.
struct Sent {
    /// Resources in the response.
    count: usize,
    /// Those the proxy did not hold at these versions before.
    changed: Vec<String>,
}

/// One step of bringing a proxy to a new snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    t: ResourceType,
    removals: bool,
}

struct Session<P> {
    cache: Arc<SnapshotCache>,
    protocol: P,
    /// Asked once the node is known; the stream's metadata and extensions
    /// go with it.
    admission: Option<(Arc<dyn Admission>, MetadataMap, Extensions)>,
    admitted: bool,
    stopping: Option<watch::Receiver<bool>>,
    node: Option<String>,
    snapshot_rx: Option<watch::Receiver<Option<Arc<Snapshot>>>>,
    nonces: u64,
    /// Steps still to take for the latest snapshot, in order.
    pending: VecDeque<Step>,
    /// When the first pending step started waiting for a confirmation.
    waiting_since: Option<Instant>,
}

impl<P: Protocol> Session<P> {
    fn new(
        cache: Arc<SnapshotCache>,
        protocol: P,
        admission: Option<(Arc<dyn Admission>, MetadataMap, Extensions)>,
        stopping: Option<watch::Receiver<bool>>,
    ) -> Session<P> {
        Session {
            cache,
            protocol,
            admission,
            admitted: false,
            stopping,
            node: None,
            snapshot_rx: None,
            nonces: 0,
            pending: VecDeque::new(),
            waiting_since: None,
        }
    }

    fn nonce(&mut self) -> String {
        self.nonces += 1;
        self.nonces.to_string()
    }

    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot_rx.as_ref().and_then(|rx| rx.borrow().clone())
    }

    async fn run<S>(mut self, mut inbound: S)
    where
        S: tokio_stream::Stream<Item = Result<P::Request, Status>> + Unpin,
    {
        use tokio_stream::StreamExt;
        loop {
            let changed = async {
                match self.snapshot_rx.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let give_up_waiting = async {
                match self.waiting_since {
                    Some(since) => tokio::time::sleep_until((since + CONFIRM_TIMEOUT).into()).await,
                    None => std::future::pending().await,
                }
            };
            let stopping = async {
                match self.stopping.as_mut() {
                    Some(rx) => {
                        let _ = rx.wait_for(|stopping| *stopping).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let outcome = tokio::select! {
                () = stopping => {
                    self.protocol.refuse(Status::unavailable("the xDS server is stopping; connect again")).await;
                    Err(Closed)
                },
                message = inbound.next() => match message {
                    Some(Ok(request)) => self.on_request(request).await,
                    Some(Err(status)) => {
                        tracing::debug!(node = ?self.node, %status, "xDS stream failed");
                        Err(Closed)
                    }
                    None => Err(Closed),
                },
                alive = changed => if alive { self.on_snapshot().await } else { Err(Closed) },
                () = give_up_waiting => self.advance(true).await,
            };
            if outcome.is_err() {
                break;
            }
        }
        if let Some(node) = &self.node {
            self.cache.stream_closed(node);
            tracing::info!(node, "proxy disconnected");
            if let (Some((admission, _, _)), true) = (&self.admission, self.admitted) {
                admission.left(node);
            }
        }
    }

    async fn on_request(&mut self, request: P::Request) -> Result<(), Closed> {
        if self.node.is_none() {
            let Some(node) = P::node(&request).filter(|n| !n.id.is_empty()) else {
                tracing::warn!("xDS stream without a node id in its first request; closing it");
                return Err(Closed);
            };
            let id = node.id.clone();
            if let Some((admission, metadata, extensions)) = &self.admission {
                if let Err(status) = admission.admit(node, metadata, extensions) {
                    tracing::warn!(node = %id, reason = status.message(), "proxy refused");
                    self.protocol.refuse(status).await;
                    return Err(Closed);
                }
                self.admitted = true;
            }
            self.snapshot_rx = Some(self.cache.subscribe(&id));
            self.cache.stream_opened(&id);
            tracing::info!(node = %id, "proxy connected");
            self.node = Some(id);
        }
        let node = self.node.clone().unwrap_or_default();
        if let Some(t) = self.protocol.on_request(request, &node, &self.cache) {
            // No snapshot yet: a restarted edge is still learning which
            // proxies are there. The proxy keeps what it has until one comes.
            match self.snapshot() {
                Some(snapshot) => self.push(t, &snapshot, true).await?,
                None if P::ANSWERS_WITHOUT_SNAPSHOT => {
                    self.push(t, &Snapshot::default(), false).await?
                }
                None => {}
            }
        }
        self.advance(false).await
    }

    async fn on_snapshot(&mut self) -> Result<(), Closed> {
        let adds = ResourceType::ALL
            .into_iter()
            .map(|t| Step { t, removals: false });
        let removals = ResourceType::ALL
            .into_iter()
            .rev()
            .map(|t| Step { t, removals: true });
        self.pending = adds.chain(removals).collect();
        self.waiting_since = None;
        self.advance(false).await
    }

    /// Whether a step's dependencies are confirmed by the proxy: warm
    /// clusters (endpoints delivered) before listeners and routes that use
    /// them; removals of clusters and endpoints only once listeners and
    /// routes no longer need them. Endpoints follow their clusters on the
    /// same stream without waiting: Envoy confirms changed clusters only
    /// once they are warm, which takes their endpoints.
    fn ready(&self, step: Step, snapshot: &Snapshot) -> bool {
        use ResourceType::*;
        let p = &self.protocol;
        match (step.t, step.removals) {
            (Secret, _)
            | (Cluster, false)
            | (Endpoint, false)
            | (Route, true)
            | (Listener, true) => true,
            (Listener, false) | (Route, false) => {
                p.acked(Cluster)
                    && p.acked(Endpoint)
                    && p.holds(Endpoint, &snapshot.eds_services(), snapshot)
            }
            (Endpoint, true) | (Cluster, true) => p.acked(Listener) && p.acked(Route),
        }
    }

    /// Takes every pending step whose dependencies are confirmed, or the
    /// next one regardless when `force` (the wait timed out).
    async fn advance(&mut self, force: bool) -> Result<(), Closed> {
        let Some(snapshot) = self.snapshot() else {
            return Ok(());
        };
        let mut force = force;
        while let Some(&step) = self.pending.front() {
            // A type the proxy never asked for has nothing to send or wait for.
            let asked = self.protocol.progress(step.t).is_some();
            let waits = asked
                && !force
                && self.protocol.has_work(step.t, &snapshot, step.removals)
                && !self.ready(step, &snapshot);
            if waits {
                self.waiting_since.get_or_insert_with(Instant::now);
                return Ok(());
            }
            if force && asked {
                tracing::warn!(node = ?self.node, resource_type = step.t.short(), "proxy did not confirm what this update depends on in time; sending it anyway");
                force = false;
            }
            self.pending.pop_front();
            self.waiting_since = None;
            self.push(step.t, &snapshot, step.removals).await?;
        }
        Ok(())
    }

    /// Pushes one type and counts what went out in the proxy's status.
    async fn push(
        &mut self,
        t: ResourceType,
        snapshot: &Snapshot,
        removals: bool,
    ) -> Result<(), Closed> {
        let nonce = self.nonce();
        let Some(sent) = self.protocol.push(t, snapshot, removals, nonce).await? else {
            return Ok(());
        };
        if let Some(node) = &self.node {
            self.cache.record_response(node, t, sent.count);
        }
        if t == ResourceType::Cluster {
            // Envoy rebuilds a changed cluster and keeps it warming until it
            // receives the cluster's endpoints, even unchanged ones; it does
            // not ask for them again. Without a resend it waits out its
            // initial fetch timeout (15 s).
            let services: Vec<&str> = sent
                .changed
                .iter()
                .filter_map(|c| snapshot.eds_service_of(c))
                .collect();
            self.protocol.forget(ResourceType::Endpoint, &services);
        }
        Ok(())
    }
}

/// What one type's subscription asks for.
#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// State of the world: every response carries the whole set of a type.
struct Sotw {
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    types: BTreeMap<ResourceType, SotwType>,
}

/// Where one type stands with the proxy, in either protocol.
#[derive(Debug, Default)]
struct Progress {
    subscription: Subscription,
    /// Nonce of the latest response, and of the latest one the proxy ACKed.
    nonce: String,
    acked_nonce: String,
    /// Version the latest response brought the proxy to.
    sent_version: String,
}

impl Progress {
    fn acked(&self) -> bool {
        self.nonce == self.acked_nonce
    }
}

/// The type a request is about, if weft serves it.
fn served_type(type_url: &str, node: &str) -> Option<ResourceType> {
    let t = ResourceType::from_type_url(type_url);
    if t.is_none() {
        tracing::debug!(node, type_url, "request for a type weft does not serve");
    }
    t
}

#[derive(Default)]
struct SotwType {
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
            .filter(|(name, _)| state.progress.subscription.wants(name))
            .map(|(name, entry)| (name.clone(), entry.clone()))
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
        self.tx.send(Ok(response)).await.map_err(|_| Closed)?;
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

fn resource(entry: &Entry) -> Resource {
    Resource {
        name: entry.name.to_string(),
        version: entry.version.to_string(),
        resource: Some(entry.any.clone()),
        ..Default::default()
    }
}

/// Delta: responses carry only what changed, and what was removed.
struct Delta {
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    types: BTreeMap<ResourceType, DeltaType>,
}

#[derive(Default)]
struct DeltaType {
    progress: Progress,
    /// What the proxy has: name → version.
    known: BTreeMap<Arc<str>, Arc<str>>,
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

/// The layers a proxy's resources of one type last matched.
struct Synced {
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
            names.extend(synced.own.resources(t).keys().cloned());
            names.extend(snapshot.own().resources(t).keys().cloned());
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
                    .filter(|(name, entry)| {
                        wanted(name) && state.known.get(name.as_str()) != Some(&entry.version)
                    })
                    .map(|(_, entry)| entry.clone())
                    .collect();
                let removed = if removals {
                    state
                        .known
                        .keys()
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
            self.tx.send(Ok(response)).await.map_err(|_| Closed)?;
        }
        state.progress.nonce = nonce;
        state.answered = true;
        state.progress.sent_version = version;
        Ok(Some(Sent { count, changed }))
    }

    fn forget(&mut self, t: ResourceType, names: &[&str]) {
        if let Some(state) = self.types.get_mut(&t) {
            for name in names {
                state.known.remove(*name);
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
