//! Mutual TLS with SDS secrets from the sidecar → Envoy's TLS transport
//! sockets, with SPIFFE ID checks.

use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as TransportSocketConfig;
use envoy_types::pb::envoy::config::core::v3::{ApiConfigSource, GrpcService, TransportSocket};
use envoy_types::pb::envoy::config::core::v3::{ApiVersion, ConfigSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

use super::{Mtls, sds};

/// A secret from the sidecar's SDS server.
pub(super) fn sds_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: ApiType::Grpc as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                            cluster_name: sds::CLUSTER.into(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
    }
}

impl Mtls {
    pub(super) fn common(&self) -> CommonTlsContext {
        let uri = |pattern: MatchPattern| SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(pattern),
                ignore_case: false,
            }),
            ..Default::default()
        };
        let peers = if self.peers.is_empty() {
            vec![uri(MatchPattern::Prefix(format!(
                "spiffe://{}/",
                self.trust_domain
            )))]
        } else {
            self.peers
                .iter()
                .map(|p| uri(MatchPattern::Exact(p.clone())))
                .collect()
        };
        CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds_secret(sds::CERTIFICATE)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: peers,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds_secret(sds::TRUST_BUNDLE)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
    }

    pub(super) fn upstream(&self) -> TransportSocket {
        TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(TransportSocketConfig::TypedConfig(pack_any(
                UpstreamTlsContext {
                    common_tls_context: Some(self.common()),
                    sni: self.sni.clone().unwrap_or_default(),
                    ..Default::default()
                },
            ))),
        }
    }

    pub(super) fn downstream(&self) -> TransportSocket {
        TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(TransportSocketConfig::TypedConfig(pack_any(
                DownstreamTlsContext {
                    common_tls_context: Some(self.common()),
                    require_client_certificate: Some(BoolValue { value: true }),
                    ..Default::default()
                },
            ))),
        }
    }
}
