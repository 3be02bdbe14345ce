//! weft-proxy's xDS client against weft's own ADS server (the one the
//! edge runs): it takes clusters and listeners, the endpoints of the EDS
//! clusters and the route tables its listeners name, ACKs them; a change with a field it would not honour is
//! NACKed with that field's path, and the proxy keeps what it had; the
//! next good change applies.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, HealthCheck, Node, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::util::pack_any;
use tokio::sync::watch;
use weft_proxy::xds::{Resources, XdsError, follow};
use weft_xds::{AdsServer, ResourceType, Snapshot, SnapshotCache};

const NODE: &str = "client-1";

fn eds_cluster(name: &str) -> XdsCluster {
    XdsCluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource::default(),
                )),
                ..Default::default()
            }),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

fn endpoints(cluster: &str, port: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(AddressKind::SocketAddress(SocketAddress {
                            address: "127.0.0.1".into(),
                            port_specifier: Some(PortSpecifier::PortValue(port)),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn outbound(cluster: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: "outbound".into(),
        virtual_hosts: vec![VirtualHost {
            name: "reviews.shop".into(),
            domains: vec!["reviews".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The app's way out: plain HTTP on loopback, routed by `outbound`.
fn outbound_listener() -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: "outbound".into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource::default(),
                )),
                ..Default::default()
            }),
            route_config_name: "outbound".into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(HttpFilterConfig::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: "outbound".into(),
        address: Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(PortSpecifier::PortValue(15001)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(FilterConfig::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn takes_what_converts_and_nacks_what_it_would_not_honour_by_field() {
    let cache = Arc::new(SnapshotCache::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsServer::new(cache.clone()).into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let snapshot = |clusters: &[XdsCluster], eds: &[ClusterLoadAssignment], route: &str| {
        Snapshot::new(clusters, eds, &[outbound_listener()], &[outbound(route)]).unwrap()
    };
    cache.set(
        NODE,
        snapshot(
            &[eds_cluster("out|reviews.shop")],
            &[endpoints("out|reviews.shop", 9001)],
            "out|reviews.shop",
        ),
    );
    let (held_tx, held) = watch::channel(Arc::new(Resources::default()));
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    let node = Node {
        id: NODE.into(),
        ..Default::default()
    };
    let connect = async move || {
        endpoint
            .connect()
            .await
            .map_err(|e| XdsError::Connect(e.to_string()))
    };
    let client = tokio::spawn(follow(
        connect,
        node,
        Vec::new(),
        Box::new(|_| Ok(())),
        held_tx,
    ));

    until("the first configuration is held", || {
        let r = held.borrow();
        r.clusters.contains_key("out|reviews.shop")
            && r.endpoints.contains_key("out|reviews.shop")
            && r.routes.contains_key("outbound")
            && r.listeners.contains_key("outbound")
    })
    .await;
    until("it is ACKed", || {
        cache.status(NODE).is_some_and(|s| {
            [
                ResourceType::Cluster,
                ResourceType::Endpoint,
                ResourceType::Route,
            ]
            .iter()
            .all(|t| s.acked.contains_key(t))
        })
    })
    .await;

    // A cluster with health checks: refused by field, nothing of the
    // change applied.
    let mut checked = eds_cluster("out|ratings.shop");
    checked.health_checks = vec![HealthCheck::default()];
    cache.set(
        NODE,
        snapshot(
            &[eds_cluster("out|reviews.shop"), checked],
            &[
                endpoints("out|reviews.shop", 9001),
                endpoints("out|ratings.shop", 9002),
            ],
            "out|reviews.shop",
        ),
    );
    until("the change is NACKed", || {
        cache
            .status(NODE)
            .and_then(|s| s.last_nack)
            .is_some_and(|n| {
                n.message
                    .contains("Cluster out|ratings.shop: health_checks: not supported")
            })
    })
    .await;
    let nack = cache.status(NODE).unwrap().last_nack.unwrap();
    eprintln!("NACK: {nack:?}");
    assert!(!held.borrow().clusters.contains_key("out|ratings.shop"));
    assert!(held.borrow().clusters.contains_key("out|reviews.shop"));

    // The next good change applies: ratings without health checks, with
    // its endpoints subscribed.
    cache.set(
        NODE,
        snapshot(
            &[
                eds_cluster("out|reviews.shop"),
                eds_cluster("out|ratings.shop"),
            ],
            &[
                endpoints("out|reviews.shop", 9001),
                endpoints("out|ratings.shop", 9002),
            ],
            "out|ratings.shop",
        ),
    );
    until("the good change is held", || {
        let r = held.borrow();
        r.endpoints.contains_key("out|ratings.shop")
            && r.routes["outbound"].virtual_hosts[0].routes.len() == 1
            && matches!(
                &r.routes["outbound"].virtual_hosts[0].routes[0].action,
                weft_proxy::config::Action::Forward(f) if f.clusters[0].0 == "out|ratings.shop"
            )
    })
    .await;

    // The edge goes away: what is held stays.
    server.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(held.borrow().clusters.contains_key("out|ratings.shop"));
    client.abort();
}
