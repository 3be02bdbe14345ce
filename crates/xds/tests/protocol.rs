//! The ADS protocol rules, checked with a hand-driven client where real
//! Envoy would hide the details: each update step waits for the ACK it
//! depends on, stale requests are ignored, a NACKed config is not resent,
//! and delta removals follow subscriptions.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use weft_xds::{AdsServer, Layer, LayerBuilder, ResourceType, Snapshot, SnapshotCache};

const QUIET: Duration = Duration::from_millis(300);

async fn serve(
    cache: Arc<SnapshotCache>,
) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsServer::new(cache).into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    AggregatedDiscoveryServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap()
}

fn eds_cluster(name: &str, connect_timeout_s: i64) -> Cluster {
    Cluster {
        name: name.into(),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: connect_timeout_s,
            nanos: 0,
        }),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig::default()),
        ..Default::default()
    }
}

fn endpoints(name: &str) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        ..Default::default()
    }
}

fn node() -> Option<Node> {
    Some(Node {
        id: "fake-proxy".into(),
        cluster: "test".into(),
        ..Default::default()
    })
}

struct SotwClient {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl SotwClient {
    async fn open(
        client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> SotwClient {
        let (tx, requests) = mpsc::channel(16);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        SotwClient { tx, rx }
    }

    async fn ask(
        &self,
        t: ResourceType,
        names: &[&str],
        nonce: &str,
        version: &str,
        error: Option<&str>,
    ) {
        let request = DiscoveryRequest {
            node: node(),
            type_url: t.type_url(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            version_info: version.into(),
            error_detail: error.map(|m| RpcStatus {
                code: 13,
                message: m.into(),
                details: vec![],
            }),
            ..Default::default()
        };
        self.tx.send(request).await.unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response")
            .unwrap()
            .unwrap()
    }

    async fn nothing(&mut self) {
        if let Ok(message) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected no response, got {message:?}");
        }
    }

    async fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        let t = ResourceType::from_type_url(&r.type_url).unwrap();
        self.ask(t, names, &r.nonce, &r.version_info, None).await;
    }
}

fn kind(r: &DiscoveryResponse) -> ResourceType {
    ResourceType::from_type_url(&r.type_url).unwrap()
}

#[tokio::test]
async fn sotw_orders_updates_ignores_stale_requests_and_never_resends_a_nack() {
    let cache = Arc::new(SnapshotCache::new());
    let mut client = serve(cache.clone()).await;
    let mut proxy = SotwClient::open(&mut client).await;

    // Before there is a snapshot nothing is answered: an empty SotW
    // answer would remove what a reconnecting proxy has.
    proxy.ask(ResourceType::Cluster, &[], "", "", None).await;
    proxy
        .ask(ResourceType::Endpoint, &["a"], "", "", None)
        .await;
    proxy.nothing().await;

    cache.set(
        "fake-proxy",
        Snapshot::new(&[eds_cluster("a", 1)], &[endpoints("a")], &[], &[]).unwrap(),
    );
    let clusters = proxy.next().await;
    assert_eq!(
        (kind(&clusters), clusters.resources.len()),
        (ResourceType::Cluster, 1)
    );
    // Endpoints follow at once: Envoy confirms a changed cluster only once
    // it is warm, and it warms only with its endpoints.
    let eds = proxy.next().await;
    assert_eq!(
        (kind(&eds), eds.resources.len()),
        (ResourceType::Endpoint, 1)
    );
    proxy.ack(&clusters, &[]).await;
    proxy.ack(&eds, &["a"]).await;
    proxy.nothing().await;
    assert!(
        cache
            .status("fake-proxy")
            .unwrap()
            .acked
            .contains_key(&ResourceType::Endpoint)
    );

    // A request answering another response than the latest of its type is
    // stale and ignored, even if it names other resources.
    proxy
        .ask(
            ResourceType::Endpoint,
            &["a", "b"],
            &clusters.nonce,
            "",
            None,
        )
        .await;
    proxy.nothing().await;

    // A refused config is recorded and not sent again...
    cache.set(
        "fake-proxy",
        Snapshot::new(&[eds_cluster("a", 2)], &[endpoints("a")], &[], &[]).unwrap(),
    );
    let refused = proxy.next().await;
    // The changed cluster gets its endpoints again, though they did not
    // change: Envoy rebuilds the cluster and waits for them.
    let eds_again = proxy.next().await;
    assert_eq!(kind(&eds_again), ResourceType::Endpoint);
    assert_eq!(eds_again.resources, eds.resources);
    proxy.ack(&eds_again, &["a"]).await;
    proxy
        .ask(
            ResourceType::Cluster,
            &[],
            &refused.nonce,
            &clusters.version_info,
            Some("no thanks"),
        )
        .await;
    proxy.nothing().await;
    let nack = cache.status("fake-proxy").unwrap().last_nack.unwrap();
    assert_eq!(
        (nack.resource_type, nack.message.as_str()),
        (ResourceType::Cluster, "no thanks")
    );
    assert_eq!(nack.version, refused.version_info);
    // ...but a new snapshot is.
    cache.set(
        "fake-proxy",
        Snapshot::new(&[eds_cluster("a", 3)], &[endpoints("a")], &[], &[]).unwrap(),
    );
    let fixed = proxy.next().await;
    assert_eq!(kind(&fixed), ResourceType::Cluster);
    assert_ne!(fixed.version_info, refused.version_info);
}

#[tokio::test]
async fn sotw_holds_removed_clusters_until_the_rest_is_confirmed() {
    let cache = Arc::new(SnapshotCache::new());
    let mut client = serve(cache.clone()).await;
    let mut proxy = SotwClient::open(&mut client).await;
    cache.set(
        "fake-proxy",
        Snapshot::new(&[eds_cluster("a", 1)], &[endpoints("a")], &[], &[]).unwrap(),
    );
    proxy.ask(ResourceType::Cluster, &[], "", "", None).await;
    let first = proxy.next().await;
    proxy.ack(&first, &[]).await;

    cache.set(
        "fake-proxy",
        Snapshot::new(&[eds_cluster("b", 1)], &[endpoints("b")], &[], &[]).unwrap(),
    );
    let both = proxy.next().await;
    assert_eq!(both.resources.len(), 2, "b is added while a is kept");
    proxy.ack(&both, &[]).await;
    let only_b = proxy.next().await;
    assert_eq!(
        only_b.resources.len(),
        1,
        "a goes once the additions are confirmed"
    );
    assert!(!only_b.version_info.ends_with("-before-removals"));
}

struct DeltaClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl DeltaClient {
    async fn open(
        client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> DeltaClient {
        let (tx, requests) = mpsc::channel(16);
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        DeltaClient { tx, rx }
    }

    async fn ask(&self, t: ResourceType, subscribe: &[&str], unsubscribe: &[&str], nonce: &str) {
        let request = DeltaDiscoveryRequest {
            node: node(),
            type_url: t.type_url(),
            resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        self.tx.send(request).await.unwrap();
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response")
            .unwrap()
            .unwrap()
    }
}

#[tokio::test]
async fn delta_sends_changes_and_removals_by_subscription() {
    let cache = Arc::new(SnapshotCache::new());
    let mut client = serve(cache.clone()).await;
    let mut proxy = DeltaClient::open(&mut client).await;
    cache.set(
        "fake-proxy",
        Snapshot::new(
            &[eds_cluster("a", 1), eds_cluster("b", 1)],
            &[endpoints("a"), endpoints("b")],
            &[],
            &[],
        )
        .unwrap(),
    );

    proxy.ask(ResourceType::Endpoint, &["a"], &[], "").await;
    let first = proxy.next().await;
    let names: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["a"], "only what is subscribed");
    proxy
        .ask(ResourceType::Endpoint, &["b"], &[], &first.nonce)
        .await;
    let second = proxy.next().await;
    let names: Vec<&str> = second.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["b"], "a subscription adds only the new name");

    // b leaves the snapshot: it is removed, in the second phase.
    proxy
        .ask(ResourceType::Endpoint, &[], &[], &second.nonce)
        .await;
    cache.set(
        "fake-proxy",
        Snapshot::new(&[eds_cluster("a", 1)], &[endpoints("a")], &[], &[]).unwrap(),
    );
    let removal = proxy.next().await;
    assert!(removal.resources.is_empty(), "{removal:?}");
    assert_eq!(removal.removed_resources, vec!["b".to_string()]);
}

/// A proxy that reconnects to a server with no snapshot for it yet (an
/// edge restarted and still learning who is connected) keeps what it has:
/// delta answers its first request with nothing removed, SotW waits; once
/// the snapshot comes, only what differs goes out.
#[tokio::test]
async fn a_proxy_reconnecting_before_its_snapshot_keeps_what_it_has() {
    let cache = Arc::new(SnapshotCache::new());
    let mut client = serve(cache.clone()).await;
    let kept = Snapshot::new(&[eds_cluster("a", 1)], &[endpoints("a")], &[], &[]).unwrap();
    let held = kept
        .get(ResourceType::Cluster, "a")
        .unwrap()
        .version
        .to_string();

    let mut delta = DeltaClient::open(&mut client).await;
    let reconnect = DeltaDiscoveryRequest {
        node: node(),
        type_url: ResourceType::Cluster.type_url(),
        initial_resource_versions: [("a".to_string(), held.clone())].into(),
        ..Default::default()
    };
    delta.tx.send(reconnect).await.unwrap();
    let first = delta.next().await;
    assert!(first.resources.is_empty(), "{first:?}");
    assert!(
        first.removed_resources.is_empty(),
        "told to drop what it has: {first:?}"
    );

    let mut sotw = SotwClient::open(&mut client).await;
    sotw.ask(ResourceType::Cluster, &[], "", "", None).await;
    sotw.nothing().await;

    // The snapshot arrives with one more cluster: delta gets only the new
    // one, SotW the whole set.
    cache.set(
        "fake-proxy",
        Snapshot::new(
            &[eds_cluster("a", 1), eds_cluster("b", 1)],
            &[endpoints("a"), endpoints("b")],
            &[],
            &[],
        )
        .unwrap(),
    );
    let update = delta.next().await;
    let names: Vec<&str> = update.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["b"]);
    assert!(update.removed_resources.is_empty());
    let whole = sotw.next().await;
    assert_eq!(kind(&whole), ResourceType::Cluster);
    assert_eq!(whole.resources.len(), 2);
}

/// A shared layer of services `names`; `generation` changes the endpoints
/// of the last one.
fn shared_layer(names: &[&str], generation: u32, previous: Option<&Layer>) -> Arc<Layer> {
    let mut layer = LayerBuilder::new();
    for (i, name) in names.iter().enumerate() {
        layer.cluster(&eds_cluster(name, 1)).unwrap();
        let mut assignment = endpoints(name);
        if i + 1 == names.len() {
            assignment.policy = Some(Default::default());
            assignment.endpoints = vec![Default::default(); generation as usize];
        }
        layer.endpoints(&assignment).unwrap();
    }
    Arc::new(layer.build_after(previous))
}

#[tokio::test]
async fn delta_sends_only_what_changed_in_a_shared_layer() {
    let cache = Arc::new(SnapshotCache::new());
    let mut client = serve(cache.clone()).await;
    let mut proxy = DeltaClient::open(&mut client).await;
    let names = ["a", "b", "c"];
    let own = Arc::new(LayerBuilder::new().build());
    let first = shared_layer(&names, 1, None);
    cache.set(
        "fake-proxy",
        Snapshot::compose(own.clone(), first.clone()).unwrap(),
    );
    proxy.ask(ResourceType::Cluster, &[], &[], "").await;
    let clusters = proxy.next().await;
    assert_eq!(clusters.resources.len(), 3);
    proxy.ask(ResourceType::Endpoint, &names, &[], "").await;
    proxy
        .ask(ResourceType::Cluster, &[], &[], &clusters.nonce)
        .await;
    let eds = proxy.next().await;
    assert_eq!(eds.resources.len(), 3);
    proxy
        .ask(ResourceType::Endpoint, &[], &[], &eds.nonce)
        .await;

    // One service's endpoints change: the new layer knows it, and only
    // that resource goes out.
    let second = shared_layer(&names, 2, Some(&first));
    let changes = second.changes().unwrap();
    assert_eq!(changes.from, first.id());
    assert_eq!(
        changes.updated.get(&ResourceType::Endpoint),
        Some(&vec!["c".to_string()])
    );
    assert!(!changes.updated.contains_key(&ResourceType::Cluster));
    cache.set("fake-proxy", Snapshot::compose(own, second).unwrap());
    let update = proxy.next().await;
    assert_eq!(update.type_url, ResourceType::Endpoint.type_url());
    let sent: Vec<&str> = update.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(sent, ["c"]);
    assert!(update.removed_resources.is_empty());
    proxy
        .ask(ResourceType::Endpoint, &[], &[], &update.nonce)
        .await;
    // Nothing else follows: clusters did not change.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), proxy.rx.message())
            .await
            .is_err(),
        "a response other than the changed endpoints was sent"
    );
}

#[tokio::test]
async fn delta_sends_a_large_update_in_parts_and_hears_a_refused_part() {
    let cache = Arc::new(SnapshotCache::new());
    let mut client = serve(cache.clone()).await;
    let mut proxy = DeltaClient::open(&mut client).await;
    // 40 clusters of about 20 KB each: more than one response holds.
    let big = |name: String| Cluster {
        alt_stat_name: "x".repeat(20_000),
        ..eds_cluster(&name, 1)
    };
    let names: Vec<String> = (0..40).map(|i| format!("c{i:02}")).collect();
    let clusters: Vec<Cluster> = names.iter().cloned().map(big).collect();
    let assignments: Vec<_> = names.iter().map(|n| endpoints(n)).collect();
    cache.set(
        "fake-proxy",
        Snapshot::new(&clusters, &assignments, &[], &[]).unwrap(),
    );
    proxy.ask(ResourceType::Cluster, &[], &[], "").await;
    let mut received = Vec::new();
    let mut nonces = Vec::new();
    while received.len() < names.len() {
        let part = proxy.next().await;
        assert_eq!(part.type_url, ResourceType::Cluster.type_url());
        let bytes: usize = part
            .resources
            .iter()
            .map(|r| r.resource.as_ref().unwrap().value.len())
            .sum();
        assert!(bytes <= 100_000, "a part of {bytes} bytes");
        received.extend(part.resources.iter().map(|r| r.name.clone()));
        nonces.push(part.nonce);
    }
    assert!(nonces.len() >= 3, "{} parts", nonces.len());
    received.sort();
    assert_eq!(received, names);
    // A refusal of an early part is recorded like one of the last.
    let refusal = DeltaDiscoveryRequest {
        type_url: ResourceType::Cluster.type_url(),
        response_nonce: nonces[0].clone(),
        error_detail: Some(RpcStatus {
            code: 13,
            message: "part refused".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    proxy.tx.send(refusal).await.unwrap();
    for nonce in &nonces[1..] {
        proxy.ask(ResourceType::Cluster, &[], &[], nonce).await;
    }
    let snapshot = cache.subscribe("fake-proxy").borrow().clone().unwrap();
    for _ in 0..100 {
        let status = cache.status("fake-proxy").unwrap();
        let acked = status.acked.get(&ResourceType::Cluster)
            == Some(&snapshot.version(ResourceType::Cluster));
        if let (Some(nack), true) = (&status.last_nack, acked) {
            assert_eq!(nack.message, "part refused");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the refusal and the ACK of the last part were not both recorded");
}
