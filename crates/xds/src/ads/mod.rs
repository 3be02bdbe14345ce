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

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tonic::Extensions;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status, Streaming};

use crate::cache::SnapshotCache;
mod delta;
mod grpc;
mod sotw;

use crate::snapshot::{ResourceType, Snapshot};
use delta::Delta;
use grpc::Responses;
pub use grpc::{AdsService, Aggregated, SdsService, Secrets, XdsApi, XdsService};
use sotw::Sotw;

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
    pub fn into_service(self) -> AdsService {
        AdsService::new(self)
    }
}

impl AdsServer {
    /// Starts a state-of-the-world session; its responses come out of
    /// the receiver.
    fn open_sotw(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Responses<DiscoveryResponse> {
        let (tx, rx) = mpsc::channel(QUEUED_RESPONSES);
        let (metadata, extensions, inbound) = request.into_parts();
        let protocol = Sotw::new(tx);
        tokio::spawn(self.session(protocol, metadata, extensions).run(inbound));
        rx
    }

    /// Starts a delta session; its responses come out of the receiver.
    fn open_delta(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Responses<delta::DeltaResponse> {
        let (tx, rx) = mpsc::channel(QUEUED_RESPONSES);
        let (metadata, extensions, inbound) = request.into_parts();
        let protocol = Delta::new(tx);
        tokio::spawn(self.session(protocol, metadata, extensions).run(inbound));
        rx
    }

    /// The same server as Envoy's SDS service: a sidecar serves its
    /// proxy's certificates with it (snapshots of [`Snapshot::secrets`]).
    pub fn into_sds_service(self) -> SdsService {
        SdsService::new(self)
    }
}

/// The stream went away; the session ends.
struct Closed;

/// How long a push waits for the proxy to confirm what it depends on
/// before it goes out anyway (with a warning).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

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
            | (RateLimit, _)
            | (Login, _)
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
