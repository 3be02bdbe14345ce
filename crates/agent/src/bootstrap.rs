//! Envoy's bootstrap for an agent's proxy, built as the typed proto: who
//! it is (node id, cluster, the workload in the node metadata), how it
//! reaches its edge (ADS over mutual TLS with the workload certificate,
//! the edge's SPIFFE ID checked, the credential as gRPC initial metadata),
//! and the static cluster of its SDS socket. Written as binary protobuf
//! (`envoy.pb`, which Envoy reads by its extension): the agent carries no
//! descriptors for a text form. Envoy's admin `/config_dump` shows it.

use std::net::SocketAddr;
use std::path::Path;

use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::{DynamicResources, StaticResources};
use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as TransportSocketConfig;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiConfigSource, ApiVersion, BackoffStrategy, ConfigSource,
    GrpcService, HeaderValue, Http2ProtocolOptions, Node, Pipe, RetryPolicy, SocketAddress,
    TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use envoy_types::util::pack_any;

use crate::sds;
use crate::workload::Workload;

/// The bootstrap's static cluster for the edge.
const EDGE_CLUSTER: &str = "weft-edge";

/// What a proxy's bootstrap says.
pub struct Params<'a> {
    pub workload: &'a Workload,
    /// The edge's xDS address.
    pub edge: SocketAddr,
    /// The edge's SPIFFE ID, checked on its certificate.
    pub edge_id: &'a str,
    /// The workload credential, sent with the ADS stream.
    pub credential: &'a str,
    pub sds_socket: &'a Path,
    /// Envoy's admin port on 127.0.0.1.
    pub admin_port: u16,
    /// Delta xDS (else state of the world).
    pub delta: bool,
}

fn seconds(seconds: i64, nanos: i32) -> ProtoDuration {
    ProtoDuration { seconds, nanos }
}

fn socket_address(address: String, port: u16) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address,
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// A static cluster of one gRPC server (HTTP/2) at `address`.
fn grpc_cluster(name: &str, address: Address) -> Cluster {
    let http2 = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(seconds(1, 0)),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            pack_any(http2),
        )]
        .into(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(address),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Mutual TLS to the edge: the workload certificate and the trust bundle
/// from the agent's SDS server, and the edge's identity checked.
fn edge_tls(edge_id: &str) -> TransportSocket {
    let tls = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec!["h2".into()],
            tls_certificate_sds_secret_configs: vec![sds::secret_config(sds::CERTIFICATE)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                            san_type: SanType::Uri as i32,
                            matcher: Some(StringMatcher {
                                match_pattern: Some(MatchPattern::Exact(edge_id.to_string())),
                                ignore_case: false,
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds::secret_config(
                        sds::TRUST_BUNDLE,
                    )),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(TransportSocketConfig::TypedConfig(pack_any(tls))),
    }
}

/// The bootstrap of a proxy.
pub fn bootstrap(params: &Params) -> Bootstrap {
    let mut edge = grpc_cluster(
        EDGE_CLUSTER,
        socket_address(params.edge.ip().to_string(), params.edge.port()),
    );
    edge.transport_socket = Some(edge_tls(params.edge_id));
    let sds_cluster = grpc_cluster(
        sds::CLUSTER,
        Address {
            address: Some(AddressKind::Pipe(Pipe {
                path: params.sds_socket.display().to_string(),
                mode: 0,
            })),
        },
    );
    let edge_service = GrpcService {
        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
            cluster_name: EDGE_CLUSTER.into(),
            // The edge is on this host: after a refusal or an edge
            // restart, try again within a second or two, not the default
            // 30 s.
            retry_policy: Some(RetryPolicy {
                retry_back_off: Some(BackoffStrategy {
                    base_interval: Some(seconds(0, 250_000_000)),
                    max_interval: Some(seconds(2, 0)),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })),
        initial_metadata: vec![HeaderValue {
            key: "authorization".into(),
            value: format!("Bearer {}", params.credential),
            ..Default::default()
        }],
        ..Default::default()
    };
    let workload = params.workload;
    let stats_sink = crate::stats::sink(edge_service.clone(), &workload.node);
    Bootstrap {
        node: Some(Node {
            id: workload.node.clone(),
            cluster: workload.service.clone(),
            metadata: Some(workload.to_metadata()),
            ..Default::default()
        }),
        dynamic_resources: Some(DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: if params.delta {
                    ApiType::DeltaGrpc
                } else {
                    ApiType::Grpc
                } as i32,
                transport_api_version: ApiVersion::V3 as i32,
                set_node_on_first_message_only: true,
                grpc_services: vec![edge_service],
                ..Default::default()
            }),
            cds_config: Some(ads()),
            lds_config: Some(ads()),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            clusters: vec![sds_cluster, edge],
            ..Default::default()
        }),
        admin: Some(Admin {
            address: Some(socket_address("127.0.0.1".into(), params.admin_port)),
            ..Default::default()
        }),
        stats_sinks: vec![stats_sink],
        stats_config: Some(crate::stats::config()),
        stats_flush_interval: Some(seconds(crate::stats::FLUSH_INTERVAL.as_secs() as i64, 0)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Role;
    use prost::Message;

    #[test]
    fn the_bootstrap_names_the_workload_its_edge_and_its_sds_socket() {
        let workload = Workload {
            node: "reviews-1".into(),
            service: "reviews".into(),
            namespace: "shop".into(),
            service_account: "reviews".into(),
            labels: [("version".to_string(), "v1".to_string())].into(),
            address: "127.0.0.1".into(),
            port: 15006,
            app_port: Some(9080),
            outbound_port: Some(15001),
            role: Role::Sidecar,
            calls: Vec::new(),
        };
        let bootstrap = bootstrap(&Params {
            workload: &workload,
            edge: "127.0.0.1:15010".parse().unwrap(),
            edge_id: "spiffe://weft/ns/weft-system/sa/weft-edge",
            credential: "wft_secret",
            sds_socket: Path::new("/run/weft/sidecar/sds.sock"),
            admin_port: 15000,
            delta: true,
        });
        let node = bootstrap.node.as_ref().unwrap();
        assert_eq!(node.id, "reviews-1");
        // The edge reads the workload back from the metadata.
        assert_eq!(Workload::from_node(node).unwrap(), workload);
        let ads = bootstrap
            .dynamic_resources
            .as_ref()
            .unwrap()
            .ads_config
            .as_ref()
            .unwrap();
        assert_eq!(ads.api_type, ApiType::DeltaGrpc as i32);
        assert_eq!(
            ads.grpc_services[0].initial_metadata[0].value,
            "Bearer wft_secret"
        );
        let clusters = &bootstrap.static_resources.as_ref().unwrap().clusters;
        let endpoint = |cluster: &Cluster| {
            let assignment = cluster.load_assignment.as_ref().unwrap();
            match &assignment.endpoints[0].lb_endpoints[0].host_identifier {
                Some(HostIdentifier::Endpoint(e)) => e.address.clone().unwrap().address,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            endpoint(&clusters[0]),
            Some(AddressKind::Pipe(Pipe {
                path: "/run/weft/sidecar/sds.sock".into(),
                mode: 0
            }))
        );
        let Some(TransportSocketConfig::TypedConfig(tls)) =
            &clusters[1].transport_socket.as_ref().unwrap().config_type
        else {
            panic!("the edge cluster has TLS")
        };
        let tls = UpstreamTlsContext::decode(tls.value.as_slice()).unwrap();
        let Some(ValidationContextType::CombinedValidationContext(validation)) =
            tls.common_tls_context.unwrap().validation_context_type
        else {
            panic!("a combined validation context")
        };
        let san = &validation
            .default_validation_context
            .unwrap()
            .match_typed_subject_alt_names[0];
        assert_eq!(
            san.matcher.as_ref().unwrap().match_pattern,
            Some(MatchPattern::Exact(
                "spiffe://weft/ns/weft-system/sa/weft-edge".into()
            ))
        );
    }
}
