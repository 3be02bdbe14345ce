//! Mutual TLS between sidecars: the proxy's own certificate and the roots
//! it trusts, both by SDS secret name (the agent beside it serves them),
//! and which peer identities it accepts: SPIFFE IDs in the URI SAN,
//! checked by weft-proxy itself (rustls checks DNS names only).

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use super::{Refusals, at};

/// Which peer URI SANs are accepted: any of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCheck {
    pub exact: Vec<String>,
    pub prefixes: Vec<String>,
}

impl PeerCheck {
    /// Whether a peer with these URI SANs is accepted.
    pub fn accepts<'a>(&self, uris: impl IntoIterator<Item = &'a str>) -> bool {
        uris.into_iter().any(|uri| {
            self.exact.iter().any(|e| e == uri) || self.prefixes.iter().any(|p| uri.starts_with(p))
        })
    }
}

/// What a `CommonTlsContext` gives, in weft-proxy's terms.
pub(crate) struct CommonTls {
    pub(crate) certificate: String,
    pub(crate) trust: String,
    pub(crate) peers: PeerCheck,
    pub(crate) alpn: Vec<String>,
}

fn secret_name(config: &SdsSecretConfig) -> String {
    config.name.clone()
}

/// The mesh's mutual TLS: one SDS certificate, SDS roots combined with
/// URI SAN matchers (exact or prefix).
pub(crate) fn common_tls(
    context: Option<&CommonTlsContext>,
    here: &str,
    r: &mut Refusals,
) -> Option<CommonTls> {
    let Some(context) = context else {
        r.refuse(here, "missing");
        return None;
    };
    let supported = CommonTlsContext {
        tls_certificate_sds_secret_configs: context.tls_certificate_sds_secret_configs.clone(),
        validation_context_type: context.validation_context_type.clone(),
        alpn_protocols: context.alpn_protocols.clone(),
        ..Default::default()
    };
    if *context != supported {
        r.refuse(
            here,
            "only an SDS certificate, SDS roots with SAN matchers, and ALPN",
        );
    }
    let Some(ValidationContextType::CombinedValidationContext(combined)) =
        &context.validation_context_type
    else {
        r.refuse(
            at(here, "validation_context_type"),
            "only the mesh's mutual TLS (SDS roots combined with SAN matchers): TLS to hosts outside the mesh is not supported yet",
        );
        return None;
    };
    let [certificate] = context.tls_certificate_sds_secret_configs.as_slice() else {
        r.refuse(
            at(here, "tls_certificate_sds_secret_configs"),
            "exactly one SDS certificate",
        );
        return None;
    };
    let CombinedCertificateValidationContext {
        default_validation_context,
        validation_context_sds_secret_config,
        ..
    } = combined;
    let Some(trust) = validation_context_sds_secret_config else {
        r.refuse(
            at(
                here,
                "combined_validation_context.validation_context_sds_secret_config",
            ),
            "missing",
        );
        return None;
    };
    let validation = default_validation_context.clone().unwrap_or_default();
    let only_sans = CertificateValidationContext {
        match_typed_subject_alt_names: validation.match_typed_subject_alt_names.clone(),
        ..Default::default()
    };
    let validation_at = at(
        here,
        "combined_validation_context.default_validation_context",
    );
    if validation != only_sans {
        r.refuse(&validation_at, "only match_typed_subject_alt_names");
    }
    let mut peers = PeerCheck {
        exact: Vec::new(),
        prefixes: Vec::new(),
    };
    for (i, san) in validation.match_typed_subject_alt_names.iter().enumerate() {
        let field = format!("{validation_at}.match_typed_subject_alt_names[{i}]");
        let matcher = san.matcher.clone().unwrap_or_default();
        if san.san_type != SanType::Uri as i32 || matcher.ignore_case || !san.oid.is_empty() {
            r.refuse(&field, "only case-sensitive URI SANs");
            continue;
        }
        match matcher.match_pattern {
            Some(MatchPattern::Exact(uri)) => peers.exact.push(uri),
            Some(MatchPattern::Prefix(prefix)) => peers.prefixes.push(prefix),
            _ => r.refuse(&field, "only exact and prefix matches"),
        }
    }
    if peers.exact.is_empty() && peers.prefixes.is_empty() {
        r.refuse(
            &validation_at,
            "name the peer identities accepted (URI SAN matchers)",
        );
    }
    Some(CommonTls {
        certificate: secret_name(certificate),
        trust: secret_name(trust),
        peers,
        alpn: context.alpn_protocols.clone(),
    })
}
