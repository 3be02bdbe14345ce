//! Mutual TLS with SDS secrets from the sidecar → Envoy's TLS transport
//! sockets, with SPIFFE ID checks.

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as TransportSocketConfig;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SubjectAltNameMatcher,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

use super::Mtls;
use weft_agent::sds;

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
            tls_certificate_sds_secret_configs: vec![sds::secret_config(sds::CERTIFICATE)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: peers,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds::secret_config(
                        sds::TRUST_BUNDLE,
                    )),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
    }

    /// To a sidecar; with `raw_tcp`, offering [`super::TCP_ALPN`] so that
    /// it relays the bytes to its app.
    pub(super) fn upstream(&self, raw_tcp: bool) -> TransportSocket {
        let mut common = self.common();
        if raw_tcp {
            common.alpn_protocols = vec![super::TCP_ALPN.into()];
        }
        TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(TransportSocketConfig::TypedConfig(pack_any(
                UpstreamTlsContext {
                    common_tls_context: Some(common),
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
