//! How long a new configuration takes to reach, and be acknowledged by,
//! many proxies: N lightweight delta clients (they ACK every response, as
//! Envoy does) each hold a snapshot of S services; the snapshot of every
//! proxy is replaced and the clock stops when all of them have ACKed every
//! type. Prints figures; asserts nothing.
//!
//! cargo bench -p weft-xds --bench fanout

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_xds::{AdsServer, ResourceType, Snapshot, SnapshotCache};

/// S services: a cluster, its endpoints and a virtual host each; `generation`
/// changes every cluster so an update touches everything.
fn mesh(services: usize, generation: i64) -> Snapshot {
    let names: Vec<String> = (0..services).map(|i| format!("svc-{i}")).collect();
    let clusters: Vec<Cluster> = names
        .iter()
        .map(|n| Cluster {
            name: n.clone(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: generation,
                nanos: 0,
            }),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig::default()),
            ..Default::default()
        })
        .collect();
    let endpoints: Vec<ClusterLoadAssignment> = names
        .iter()
        .map(|n| ClusterLoadAssignment {
            cluster_name: n.clone(),
            ..Default::default()
        })
        .collect();
    let routes = RouteConfiguration {
        name: "outbound".into(),
        virtual_hosts: names
            .iter()
            .map(|n| VirtualHost {
                name: n.clone(),
                domains: vec![n.clone()],
                routes: vec![Route {
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster(n.clone())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    Snapshot::new(&clusters, &endpoints, &[], &[routes]).expect("a consistent mesh")
}

/// A delta client that subscribes like Envoy and ACKs everything.
async fn proxy(
    client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    id: String,
    services: usize,
) {
    let mut client = client;
    let (tx, requests) = mpsc::channel(64);
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    let node = Some(Node {
        id,
        cluster: "bench".into(),
        ..Default::default()
    });
    let subscribe = |t: ResourceType, names: Vec<String>| DeltaDiscoveryRequest {
        node: node.clone(),
        type_url: t.type_url(),
        resource_names_subscribe: names,
        ..Default::default()
    };
    let eds_names = (0..services).map(|i| format!("svc-{i}")).collect();
    for request in [
        subscribe(ResourceType::Cluster, vec![]),
        subscribe(ResourceType::Endpoint, eds_names),
        subscribe(ResourceType::Listener, vec![]),
        subscribe(ResourceType::Route, vec!["outbound".into()]),
    ] {
        tx.send(request).await.unwrap();
    }
    while let Ok(Some(response)) = responses.message().await {
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url,
            response_nonce: response.nonce,
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return;
        }
    }
}

async fn all_acked(cache: &SnapshotCache, nodes: &[String], snapshot: &Snapshot) -> bool {
    nodes
        .iter()
        .all(|n| cache.status(n).is_some_and(|s| snapshot.accepted(&s.acked)))
}

async fn run(proxies: usize, services: usize) {
    let cache = Arc::new(SnapshotCache::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsServer::new(cache.clone()).into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = AggregatedDiscoveryServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let nodes: Vec<String> = (0..proxies).map(|i| format!("proxy-{i}")).collect();
    let first = mesh(services, 1);
    for n in &nodes {
        cache.set(n, first.clone());
        tokio::spawn(proxy(client.clone(), n.clone(), services));
    }
    while !all_acked(&cache, &nodes, &first).await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let built = Instant::now();
    let second = mesh(services, 2);
    let build = built.elapsed();
    let started = Instant::now();
    for n in &nodes {
        cache.set(n, second.clone());
    }
    while !all_acked(&cache, &nodes, &second).await {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "{proxies:>4} proxies x {services:>5} services: snapshot built in {:>8.2?} ({:>9} bytes encoded); pushed to every proxy and all ACKed in {:>8.2?}",
        build,
        second.encoded_len(),
        elapsed
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (proxies, services) in [(100, 10), (100, 100), (100, 1000), (10, 10_000)] {
            run(proxies, services).await;
        }
    });
}
