//! Clusters → Envoy `Cluster` (CDS): discovery, load balancing, limits,
//! outlier detection, upstream TLS, external hosts.

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget as XdsRetryBudget;
use envoy_types::pb::envoy::config::core::v3::UpstreamHttpProtocolOptions;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    DnsLookupFamily,
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy as XdsLbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster as XdsCluster, OutlierDetection as XdsOutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions,
    Http2ProtocolOptions, HttpProtocolOptions as CommonHttpOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::util::pack_any;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as TransportSocketConfig;
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext,
    SubjectAltNameMatcher, UpstreamTlsContext,
};
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as DataSourceSpecifier;

use super::convert::{ads, duration, load_assignment, string_matcher, uint};
use super::{Cluster, ExternalHost, FixedHost, LbPolicy, SocketAddr};

impl Cluster {
    pub(super) fn to_xds(&self) -> XdsCluster {
        let Cluster {
            name,
            fixed,
            connect_timeout_ms,
            lb_policy,
            limits,
            outlier_detection,
            idle_timeout_ms,
            max_requests_per_connection,
            mtls,
            passthrough,
            sni_from_host,
            grpc,
        } = self;
        let external = match fixed {
            Some(FixedHost::External(external)) => Some(external),
            _ => None,
        };
        // Upstream calls speak what the caller spoke: HTTP/1.1 stays HTTP/1.1,
        // h2c and gRPC stay HTTP/2.
        let protocol = HttpProtocolOptions {
            common_http_protocol_options: Some(CommonHttpOptions {
                idle_timeout: idle_timeout_ms.map(duration),
                max_requests_per_connection: max_requests_per_connection.map(uint),
                ..Default::default()
            }),
            upstream_protocol_options: Some(if *grpc {
                UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                })
            } else {
                UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
                    http_protocol_options: Some(Http1ProtocolOptions::default()),
                    http2_protocol_options: Some(Http2ProtocolOptions::default()),
                    ..Default::default()
                })
            }),
            // The peer's identity is checked by its SPIFFE ID, not by the
            // name sent.
            upstream_http_protocol_options: sni_from_host.then(|| UpstreamHttpProtocolOptions {
                auto_sni: true,
                auto_san_validation: false,
                ..Default::default()
            }),
            ..Default::default()
        };
        let (discovery, eds_cluster_config, load_assignment) = match fixed {
            Some(FixedHost::Local(addr)) => (
                DiscoveryType::Static,
                None,
                Some(load_assignment(name, std::slice::from_ref(addr))),
            ),
            Some(FixedHost::External(external)) => (
                DiscoveryType::LogicalDns,
                None,
                Some(load_assignment(
                    name,
                    &[SocketAddr {
                        address: external.host.clone(),
                        port: external.port,
                    }],
                )),
            ),
            None => (
                DiscoveryType::Eds,
                Some(EdsClusterConfig {
                    eds_config: Some(ads()),
                    service_name: String::new(),
                }),
                None,
            ),
        };
        let circuit_breakers = limits.as_ref().map(|l| CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: l.max_connections.map(uint),
                max_pending_requests: l.max_pending_requests.map(uint),
                max_requests: l.max_requests.map(uint),
                max_retries: l.max_retries.map(uint),
                retry_budget: l.retry_budget_percent.map(|percent| XdsRetryBudget {
                    budget_percent: Some(Percent { value: percent }),
                    min_retry_concurrency: l.retry_budget_min_concurrency.map(uint),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        let outlier_detection = outlier_detection.as_ref().map(|o| XdsOutlierDetection {
            consecutive_5xx: Some(uint(o.consecutive_5xx)),
            interval: Some(duration(o.interval_ms)),
            base_ejection_time: Some(duration(o.base_ejection_time_ms)),
            max_ejection_percent: Some(uint(o.max_ejection_percent)),
            ..Default::default()
        });
        let lb_policy = match lb_policy {
            LbPolicy::RoundRobin => XdsLbPolicy::RoundRobin,
            LbPolicy::LeastRequest => XdsLbPolicy::LeastRequest,
            LbPolicy::RingHash => XdsLbPolicy::RingHash,
            LbPolicy::Random => XdsLbPolicy::Random,
        };
        XdsCluster {
            name: name.clone(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(discovery as i32)),
            eds_cluster_config,
            load_assignment,
            connect_timeout: Some(duration(*connect_timeout_ms)),
            lb_policy: lb_policy as i32,
            circuit_breakers,
            outlier_detection,
            // Outside hosts speak plain HTTP/1.1 to Envoy's own fetches
            // (but a collector speaks gRPC); a passthrough cluster relays
            // bytes.
            typed_extension_protocol_options: if (external.is_some() && !*grpc) || *passthrough {
                Default::default()
            } else {
                [(
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
                    pack_any(protocol),
                )]
                .into()
            },
            transport_socket: match external {
                Some(external) => external.tls.then(|| external.upstream_tls()),
                // Bytes relayed with the mesh's mutual TLS: a gateway's
                // TCP to a sidecar.
                None => mtls.as_ref().map(|m| m.upstream(*passthrough)),
            },
            // A name with both kinds of address (`localhost`) reaches
            // what listens on IPv4 first.
            dns_lookup_family: if external.is_some() {
                DnsLookupFamily::V4Preferred as i32
            } else {
                DnsLookupFamily::Auto as i32
            },
            ..Default::default()
        }
    }
}

/// The host's public CAs, where Debian, Ubuntu and Alpine keep them (the
/// `ca-certificates` package), for TLS to hosts outside the mesh. Not
/// `system_root_certs`: Envoy 1.40 on Linux does not count it as a trusted
/// CA and refuses a cluster that checks the peer's name against it ("SAN-
/// based verification of peer certificates without trusted CA"), so the
/// proxy would NACK every JWKS or egress cluster over TLS.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl ExternalHost {
    pub(super) fn upstream_tls(&self) -> TransportSocket {
        TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(TransportSocketConfig::TypedConfig(pack_any(
                UpstreamTlsContext {
                    sni: self.host.clone(),
                    common_tls_context: Some(CommonTlsContext {
                        validation_context_type: Some(ValidationContextType::ValidationContext(
                            CertificateValidationContext {
                                trusted_ca: Some(DataSource {
                                    specifier: Some(DataSourceSpecifier::Filename(
                                        SYSTEM_CA_BUNDLE.into(),
                                    )),
                                    ..Default::default()
                                }),
                                match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                                    san_type: SanType::Dns as i32,
                                    matcher: Some(string_matcher(MatchPattern::Exact(
                                        self.host.clone(),
                                    ))),
                                    ..Default::default()
                                }],
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))),
        }
    }
}
