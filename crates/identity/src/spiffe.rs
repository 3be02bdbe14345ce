//! SPIFFE IDs: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`
//! for workloads.

use std::fmt;

use crate::IdentityError;

/// A workload's SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

fn invalid(value: &str, reason: impl Into<String>) -> IdentityError {
    IdentityError::InvalidId {
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The namespace of weft's own components' identities.
pub const RESERVED_NAMESPACE: &str = "weft-system";
/// The service account of east-west gateways, in [`RESERVED_NAMESPACE`].
pub const EASTWEST_ACCOUNT: &str = "weft-eastwest";
/// The service account of the cluster's rate limit service (`weft ratelimit`).
pub const RATELIMIT_ACCOUNT: &str = "weft-ratelimit";
/// The service account of the cluster's sign-in service (`weft authservice`).
pub const AUTHSERVICE_ACCOUNT: &str = "weft-authservice";

/// Checks a trust domain: lowercase letters, digits, `.`, `-` and `_`, as
/// the SPIFFE ID specification allows.
pub fn check_trust_domain(trust_domain: &str) -> Result<(), IdentityError> {
    if trust_domain.is_empty() {
        return Err(invalid(trust_domain, "the trust domain is empty"));
    }
    if trust_domain.len() > 255 {
        return Err(invalid(trust_domain, "the trust domain is over 255 bytes"));
    }
    if let Some(c) = trust_domain
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(invalid(
            trust_domain,
            format!(
                "the trust domain may hold lowercase letters, digits, '.', '-' and '_', not {c:?}"
            ),
        ));
    }
    Ok(())
}

/// Checks one path segment: letters, digits, `.`, `-` and `_`, and not `.`
/// or `..`.
fn check_segment(id: &str, what: &str, segment: &str) -> Result<(), IdentityError> {
    if segment.is_empty() || segment == "." || segment == ".." {
        return Err(invalid(id, format!("the {what} is empty, '.' or '..'")));
    }
    if let Some(c) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(invalid(
            id,
            format!("the {what} may hold letters, digits, '.', '-' and '_', not {c:?}"),
        ));
    }
    Ok(())
}

impl SpiffeId {
    /// The identity of the workloads of `service_account` in `namespace`.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, IdentityError> {
        check_trust_domain(trust_domain)?;
        let id = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
        check_segment(&id, "namespace", namespace)?;
        check_segment(&id, "service account", service_account)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// Parses a workload SPIFFE ID.
    /// The identity of every `weft edge` of the trust domain: a service
    /// account in a namespace reserved for weft (no workload credential
    /// can be made for it).
    pub fn edge(trust_domain: &str) -> Result<SpiffeId, IdentityError> {
        SpiffeId::workload(trust_domain, RESERVED_NAMESPACE, "weft-edge")
    }

    /// The identity of a cluster's east-west gateway (`weft eastwest`),
    /// the one workload credential allowed in the reserved namespace.
    pub fn eastwest(trust_domain: &str) -> Result<SpiffeId, IdentityError> {
        SpiffeId::workload(trust_domain, RESERVED_NAMESPACE, EASTWEST_ACCOUNT)
    }

    /// The identity of `weft server` on its edge port.
    pub fn server(trust_domain: &str) -> Result<SpiffeId, IdentityError> {
        SpiffeId::workload(trust_domain, RESERVED_NAMESPACE, "weft-server")
    }

    pub fn parse(uri: &str) -> Result<SpiffeId, IdentityError> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| invalid(uri, "a SPIFFE ID starts with spiffe://"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid(uri, "a workload SPIFFE ID has a path"))?;
        let segments: Vec<&str> = path.split('/').collect();
        match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => {
                SpiffeId::workload(trust_domain, namespace, service_account)
            }
            _ => Err(invalid(
                uri,
                "the path of a workload SPIFFE ID is /ns/NAMESPACE/sa/SERVICE-ACCOUNT",
            )),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}
