//! What crosses between `weft server` and an edge: the configuration for
//! one cluster going down, the edge's status coming up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::resource::Resource;

/// The header an edge names the version of this protocol in, on every
/// request to the server's edge port.
pub const PROTOCOL_HEADER: &str = "weft-edge-protocol";

/// The version of the edge protocol this release speaks. A request
/// without the header is version 1 (releases before the header spoke it).
/// A server answers the versions up to its own; an edge of a newer
/// version than its server's is refused with both named, so the upgrade
/// order (servers, then edges) is what works.
pub const PROTOCOL: u32 = 1;

/// The version an edge's request speaks, from its header; an error names
/// what the server speaks.
pub fn protocol_of(header: Option<&str>) -> Result<u32, String> {
    let version = match header {
        None => 1,
        Some(value) => value
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("{PROTOCOL_HEADER}: {value:?} is not a protocol version"))?,
    };
    if (1..=PROTOCOL).contains(&version) {
        Ok(version)
    } else {
        Err(format!(
            "this server speaks edge protocol 1 to {PROTOCOL}, the edge speaks {version}: upgrade the servers before the edges"
        ))
    }
}

/// The part of the configuration that applies to one cluster: the
/// workspaces whose selectors name it, everything under them that shapes
/// traffic, and the workload credentials issued for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeConfig {
    /// A hash of everything below; the edge sends it back to wait for the
    /// next change.
    pub version: String,
    pub cluster: String,
    pub resources: Vec<Resource>,
    pub workload_credentials: Vec<WorkloadCredential>,
    /// The roots workloads of this cluster trust; absent from configs kept
    /// by edges older than the CA.
    #[serde(default)]
    pub trust: Option<Trust>,
    /// Where this cluster is (from its Cluster resource): the edge
    /// publishes it with its directory entry and ranks other clusters by it.
    #[serde(default)]
    pub locality: Locality,
}

/// Where a cluster is. Other clusters are ranked against it for failover.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Locality {
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// The Cluster resource's labels, for `failoverPriority: [label:KEY]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One item of the global directory, as an edge publishes it about its own
/// cluster (edges → server) and the server hands it to every other edge
/// (server → edges). Never endpoints: what crosses clusters grows with
/// clusters × services, not with instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum DirectoryItem {
    /// Where the cluster is and its east-west gateways.
    Site(Site),
    /// A service the cluster runs.
    Service(DirectoryService),
    /// A hostname the cluster's ingress gateways serve.
    Ingress(DirectoryIngress),
}

impl DirectoryItem {
    /// The item's key within its cluster: one site, one item per service.
    pub fn key(&self) -> String {
        match self {
            DirectoryItem::Site(_) => "site".to_string(),
            DirectoryItem::Service(s) => format!("service/{}/{}", s.namespace, s.name),
            DirectoryItem::Ingress(i) => format!("ingress/{}", i.hostname),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Site {
    pub locality: Locality,
    /// Where other clusters reach this one's services (`IP:PORT` of its
    /// east-west gateways); none: its services cannot be called from
    /// elsewhere.
    #[serde(default)]
    pub gateways: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryService {
    pub namespace: String,
    pub name: String,
    /// Instances whose proxies are connected to the edge.
    pub healthy: u32,
    /// The service accounts its instances run as: callers elsewhere accept
    /// only these identities.
    pub service_accounts: Vec<String>,
}

/// A hostname that a cluster's ingress gateways serve (a Gateway's http
/// server), for tier-1 gateways elsewhere: they reach those gateways over
/// mutual TLS through the cluster's east-west gateways, sending the
/// request's host as the server name (which a wildcard here covers).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryIngress {
    /// Exact, or `*.domain`.
    pub hostname: String,
    /// Gateways serving it whose proxies are connected to the edge.
    pub healthy: u32,
    /// Their identities, as `namespace/serviceAccount`.
    pub identities: Vec<String>,
}

impl DirectoryIngress {
    /// Whether this entry serves requests for `host` (exact), as Envoy
    /// matches names: the same name, or a wildcard over one or more
    /// labels in front of its domain.
    pub fn serves(&self, host: &str) -> bool {
        match self.hostname.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|labels| !labels.is_empty()),
            None => self.hostname.eq_ignore_ascii_case(host),
        }
    }
}

/// `PUT /v1/edge/directory`: everything an edge publishes about its own
/// cluster. The server keeps what changed and drops what is gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectoryEntry {
    pub site: Site,
    pub services: Vec<DirectoryService>,
    /// Left out when empty, so that a server from before ingress entries
    /// takes the entry of a cluster without any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<DirectoryIngress>,
}

impl DirectoryEntry {
    /// The entry as directory items.
    pub fn items(&self) -> Vec<DirectoryItem> {
        std::iter::once(DirectoryItem::Site(self.site.clone()))
            .chain(self.services.iter().cloned().map(DirectoryItem::Service))
            .chain(self.ingress.iter().cloned().map(DirectoryItem::Ingress))
            .collect()
    }
}

/// `GET /v1/edge/directory?since=R`: the other clusters' items changed
/// after revision `R` (all of them when `full`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryUpdate {
    /// Ask with this next time.
    pub revision: i64,
    /// The edge's revision was too old or unknown: this is the whole
    /// directory, and whatever is not in it is gone.
    #[serde(default)]
    pub full: bool,
    pub changes: Vec<DirectoryChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryChange {
    pub cluster: String,
    pub key: String,
    /// None: the item is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<DirectoryItem>,
}

/// A trust domain and the roots it accepts (PEM, one or more: several
/// during a root rotation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trust {
    pub trust_domain: String,
    pub bundle: String,
    /// The fingerprint of the root that signs cluster CAs now; an edge
    /// whose CA another root signed asks for a new one.
    #[serde(default)]
    pub signer: String,
}

/// One of the organization's root CAs, as `weft ca list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootCa {
    /// SHA-256 fingerprint of the certificate, hex.
    pub id: String,
    pub trust_domain: String,
    pub state: RootState,
    /// RFC 3339.
    pub created_at: String,
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootState {
    /// Signs cluster CAs, and is trusted.
    Signing,
    /// Trusted only (new and not yet activated, or replaced).
    Trusted,
    /// Trusted no more.
    Retired,
}

/// `POST /v1/ca/roots`: a new root, made by the server unless given.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewRootCa {
    /// PEM certificate and key of a root to import.
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
}

/// What an edge sends for its cluster's intermediate CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntermediateRequest {
    /// A PEM certificate signing request; the key stays with the edge.
    pub csr: String,
}

/// The signed intermediate, and the roots above it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntermediateCertificate {
    /// PEM.
    pub certificate: String,
    pub trust: Trust,
}

/// A credential a workload presents to its edge, by the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadCredential {
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    pub namespace: String,
    /// For a gateway credential, the gateway's name.
    pub service_account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "CredentialRole::is_workload")]
    pub role: CredentialRole,
}

/// What a workload credential lets its holder run: a workload's sidecar,
/// or a gateway (`weft gateway`), never the other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialRole {
    #[default]
    Workload,
    Gateway,
}

impl CredentialRole {
    fn is_workload(&self) -> bool {
        *self == CredentialRole::Workload
    }
}

/// What is kept of a credential's secret: its SHA-256, hex. The server
/// stores only this; edges compare workload credentials by it.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The principal of an edge credential for `cluster`.
pub fn edge_principal(cluster: &str) -> String {
    format!("cluster:{cluster}")
}

/// The principal of a workload credential.
pub fn workload_principal(cluster: &str, namespace: &str, service_account: &str) -> String {
    format!("workload:{cluster}/{namespace}/{service_account}")
}

/// The principal of a gateway credential: the gateway `name` runs in
/// `namespace` of `cluster`, with the identity of service account `name`.
pub fn gateway_principal(cluster: &str, namespace: &str, name: &str) -> String {
    format!("gateway:{cluster}/{namespace}/{name}")
}

/// The parts of a workload or gateway principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadPrincipal<'a> {
    pub cluster: &'a str,
    pub namespace: &'a str,
    /// The service account; a gateway's name.
    pub service_account: &'a str,
    pub role: CredentialRole,
}

/// Splits a workload or gateway principal into its parts.
pub fn parse_workload_principal(principal: &str) -> Option<WorkloadPrincipal<'_>> {
    let (role, rest) = match principal.split_once(':')? {
        ("workload", rest) => (CredentialRole::Workload, rest),
        ("gateway", rest) => (CredentialRole::Gateway, rest),
        _ => return None,
    };
    let (cluster, rest) = rest.split_once('/')?;
    let (namespace, service_account) = rest.split_once('/')?;
    Some(WorkloadPrincipal {
        cluster,
        namespace,
        service_account,
        role,
    })
}

/// The prefixes of a cluster's workload and gateway principals.
pub fn workload_principal_prefixes(cluster: &str) -> [String; 2] {
    [
        format!("workload:{cluster}/"),
        format!("gateway:{cluster}/"),
    ]
}

/// What an edge reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeStatus {
    /// The configuration version the edge serves ("" before the first).
    pub config_version: String,
    /// Whether the edge serves configuration read back from its disk
    /// because it has not reached the server since it started.
    #[serde(default)]
    pub from_disk: bool,
    pub proxies: Vec<ProxyReport>,
    /// Resources the edge could not translate; the rest still applies.
    #[serde(default)]
    pub errors: Vec<ConfigError>,
    /// The cluster's CA; none before the server signed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaReport>,
    /// The other clusters this edge knows of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectoryReport>,
    /// Where the edge serves `/metrics` (its admin address,
    /// `host:port`): what Prometheus scrapes for the cluster's series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
}

/// What an edge holds of the global directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryReport {
    /// The server's directory revision it reflects.
    pub revision: i64,
    /// Other clusters, and the services they run in all.
    pub clusters: usize,
    pub services: usize,
    /// Other clusters with an east-west gateway to send through: fewer
    /// than `clusters` while a cluster's gateway has not registered yet
    /// (its services are known, not reachable).
    #[serde(default)]
    pub reachable: usize,
    /// Read back from disk, not yet refreshed from the server.
    #[serde(default)]
    pub from_disk: bool,
}

/// The cluster CA an edge issues workload certificates with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaReport {
    /// RFC 3339.
    pub expires_at: String,
    /// The root that signed it (fingerprint).
    pub root: String,
    /// Renewal is failing and less than a quarter of its life is left:
    /// when it expires, workloads get no more certificates.
    #[serde(default)]
    pub expiring: bool,
}

/// One proxy known to the edge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyReport {
    pub node: String,
    pub service: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `sidecar`, `eastwest` or `gateway`; left out for a sidecar.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    pub address: String,
    pub connected: bool,
    /// Accepted version per resource type (cds, eds, lds, rds).
    #[serde(default)]
    pub acked: BTreeMap<String, String>,
    /// Whether the proxy accepted the configuration the edge has for it.
    #[serde(default)]
    pub in_sync: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack: Option<NackReport>,
    /// The workload's certificate, as its edge last issued it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateReport>,
}

/// A workload certificate the edge issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateReport {
    /// The SPIFFE ID.
    pub identity: String,
    /// RFC 3339.
    pub expires_at: String,
    /// The root the certificate chains to (its fingerprint).
    #[serde(default)]
    pub root: String,
    /// The roots the proxy trusts (fingerprints).
    #[serde(default)]
    pub trusts: Vec<String>,
    /// The sidecar should have renewed it by now (it renews at half-life;
    /// this is three quarters): check its log.
    #[serde(default)]
    pub overdue: bool,
}

/// What a proxy holds, as its edge knows it (`weft proxy-config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    pub node: String,
    /// Whether it accepted every resource type the edge sent.
    pub in_sync: bool,
    /// Per type (cds, eds, lds, rds, sds): the version sent, the version
    /// accepted.
    pub versions: BTreeMap<String, TypeVersions>,
    /// The workload certificate its edge issued (the key never leaves
    /// the workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateReport>,
    /// The resources sent, in the shape of Envoy's `/config_dump`.
    pub config_dump: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeVersions {
    pub sent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<String>,
}

/// A configuration the proxy refused, in its own words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NackReport {
    pub resource_type: String,
    pub version: String,
    pub message: String,
}

/// A resource that could not be translated, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigError {
    /// The resource's path (`tenants/t/workspaces/w/...`).
    pub path: String,
    /// A field inside it, if one is to blame.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
    pub message: String,
}

/// What a sidecar sends its edge for its workload certificate, with the
/// workload credential as the bearer token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SvidRequest {
    /// A PEM certificate signing request; the key stays with the sidecar.
    pub csr: String,
    /// The proxy's node id, so the edge can show which certificate each
    /// proxy has.
    #[serde(default)]
    pub node: Option<String>,
}

/// A workload certificate (X.509-SVID).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Svid {
    /// `spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT`.
    pub id: String,
    /// PEM: the certificate, then the cluster's intermediate CA.
    pub certificate_chain: String,
    /// RFC 3339.
    pub expires_at: String,
    pub trust: Trust,
}

#[cfg(test)]
mod protocol_tests {
    use super::*;

    #[test]
    fn an_edge_is_answered_in_the_versions_the_server_speaks() {
        assert_eq!(protocol_of(None), Ok(1), "before the header, version 1");
        assert_eq!(protocol_of(Some(&PROTOCOL.to_string())), Ok(PROTOCOL));
        let newer = protocol_of(Some(&(PROTOCOL + 1).to_string())).unwrap_err();
        assert!(
            newer.contains("upgrade the servers before the edges"),
            "{newer}"
        );
        assert!(protocol_of(Some("0")).is_err());
        assert!(protocol_of(Some("one")).unwrap_err().contains("\"one\""));
    }
}
