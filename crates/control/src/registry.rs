//! The workload registry: which proxies are connected and what workload
//! each announced. It is the xDS server's [`Admission`]: a proxy is served
//! only if it presents a workload credential issued for this cluster and
//! for the namespace and service account it announces.
//!
//! A proxy that goes away stays registered for a grace period, so a quick
//! reconnect (an Envoy hot restart, a network blip) does not churn every
//! other proxy's endpoints.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::watch;
use tonic::Extensions;
use tonic::Status;
use tonic::metadata::MetadataMap;
use weft_api::edge::{CredentialRole, WorkloadCredential, hash_secret};
use weft_xds::Admission;

use weft_agent::workload::{Role, Workload};
use weft_identity::transport::Peer;

struct Entry {
    workload: Workload,
    streams: usize,
    /// When the last stream closed, while none is open.
    gone_since: Option<Instant>,
}

struct Inner {
    entries: BTreeMap<String, Entry>,
    credentials: Vec<WorkloadCredential>,
}

/// Registered workloads by node id. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    cluster: String,
    grace: Duration,
    inner: Arc<Mutex<Inner>>,
    /// Bumped on every change of the registered set.
    changed: Arc<watch::Sender<u64>>,
}

impl Registry {
    pub fn new(cluster: &str, grace: Duration) -> Registry {
        Registry {
            cluster: cluster.to_string(),
            grace,
            inner: Arc::new(Mutex::new(Inner {
                entries: BTreeMap::new(),
                credentials: Vec::new(),
            })),
            changed: Arc::new(watch::Sender::new(0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Fires on every change of the registered workloads.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Replaces the credentials workloads may present (from the server).
    pub fn set_credentials(&self, credentials: Vec<WorkloadCredential>) {
        self.lock().credentials = credentials;
    }

    /// Every registered workload, connected or within its grace period.
    pub fn workloads(&self) -> Vec<Workload> {
        self.lock()
            .entries
            .values()
            .map(|e| e.workload.clone())
            .collect()
    }

    /// The registered workload of proxy `node`.
    pub fn workload(&self, node: &str) -> Option<Workload> {
        self.lock().entries.get(node).map(|e| e.workload.clone())
    }

    /// Registered workloads and whether each has a stream open now.
    pub fn connections(&self) -> Vec<(Workload, bool)> {
        self.lock()
            .entries
            .values()
            .map(|e| (e.workload.clone(), e.streams > 0))
            .collect()
    }

    /// Drops workloads gone for longer than the grace period.
    pub fn sweep(&self) {
        let removed: Vec<String> = {
            let mut inner = self.lock();
            let expired: Vec<String> = inner
                .entries
                .iter()
                .filter(|(_, e)| e.gone_since.is_some_and(|t| t.elapsed() >= self.grace))
                .map(|(node, _)| node.clone())
                .collect();
            for node in &expired {
                inner.entries.remove(node);
            }
            expired
        };
        for node in &removed {
            tracing::info!(node, "workload removed after its grace period");
        }
        if !removed.is_empty() {
            self.bump();
        }
    }

    /// The live workload credential whose secret this is, or why there is
    /// none.
    pub fn credential(&self, secret: &str) -> Result<WorkloadCredential, String> {
        let hash = hash_secret(secret.trim());
        let inner = self.lock();
        let credential = inner
            .credentials
            .iter()
            .find(|c| c.hash == hash)
            .ok_or("the workload credential is unknown or revoked")?;
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        if credential
            .expires_at
            .as_deref()
            .is_some_and(|at| at <= now.as_str())
        {
            return Err(format!("workload credential {} has expired", credential.id));
        }
        Ok(credential.clone())
    }

    /// Checks the bearer credential, and the certificate the connection
    /// was made with, against the workload the proxy announces.
    fn check_credential(
        &self,
        workload: &Workload,
        metadata: &MetadataMap,
        peer: Option<&Peer>,
    ) -> Result<(), Status> {
        let hint = match workload.role {
            Role::Gateway => format!(
                "issue one with `weft token create --cluster {} --namespace {} --gateway {}` and pass it to `weft gateway --credential-file`",
                self.cluster, workload.namespace, workload.service_account
            ),
            Role::Ratelimit => format!(
                "issue one with `weft token create --cluster {} --ratelimit` and pass it to `weft ratelimit --credential-file`",
                self.cluster
            ),
            Role::Authservice => format!(
                "issue one with `weft token create --cluster {} --authservice` and pass it to `weft authservice --credential-file`",
                self.cluster
            ),
            _ => format!(
                "issue one with `weft token create --cluster {} --namespace {} --service-account {}` and pass it to `weft sidecar --credential-file`",
                self.cluster, workload.namespace, workload.service_account
            ),
        };
        let secret = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "weft edge {}: the proxy presented no workload credential; {hint}",
                    self.cluster
                ))
            })?;
        let credential = self.credential(secret).map_err(|reason| {
            Status::unauthenticated(format!("weft edge {}: {reason}; {hint}", self.cluster))
        })?;
        if credential.namespace != workload.namespace
            || credential.service_account != workload.service_account
        {
            return Err(Status::permission_denied(format!(
                "weft edge {}: credential {} is for {}/{}, but the proxy announces {}/{}",
                self.cluster,
                credential.id,
                credential.namespace,
                credential.service_account,
                workload.namespace,
                workload.service_account
            )));
        }
        // A gateway credential runs a gateway and nothing else, and only
        // it does: a workload cannot make itself an entry point.
        let gateway = workload.role == Role::Gateway;
        if gateway != (credential.role == CredentialRole::Gateway) {
            return Err(Status::permission_denied(format!(
                "weft edge {}: credential {} is {}, but the proxy announces the role {}; {hint}",
                self.cluster,
                credential.id,
                if credential.role == CredentialRole::Gateway {
                    "a gateway's"
                } else {
                    "a workload's"
                },
                workload.role.as_str(),
            )));
        }
        let Some(id) = peer.and_then(|p| p.id.as_ref()) else {
            return Err(Status::unauthenticated(format!(
                "weft edge {}: the proxy connected without a workload certificate; its xDS connection must be mutual TLS with the certificate `weft sidecar` serves it",
                self.cluster
            )));
        };
        if id.namespace() != credential.namespace
            || id.service_account() != credential.service_account
        {
            return Err(Status::permission_denied(format!(
                "weft edge {}: the proxy's certificate is {id}, but its credential {} is for {}/{}",
                self.cluster, credential.id, credential.namespace, credential.service_account
            )));
        }
        Ok(())
    }
}

impl Admission for Registry {
    fn admit(
        &self,
        node: &Node,
        metadata: &MetadataMap,
        extensions: &Extensions,
    ) -> Result<(), Status> {
        let workload = Workload::from_node(node).map_err(|problems| {
            Status::invalid_argument(format!(
                "weft edge {}: node {:?} does not describe its workload: {problems}",
                self.cluster, node.id
            ))
        })?;
        self.check_credential(&workload, metadata, extensions.get::<Peer>())?;
        let changed = {
            let mut inner = self.lock();
            match inner.entries.get_mut(&node.id) {
                Some(entry) => {
                    entry.streams += 1;
                    entry.gone_since = None;
                    let changed = entry.workload != workload;
                    entry.workload = workload.clone();
                    changed
                }
                None => {
                    inner.entries.insert(
                        node.id.clone(),
                        Entry {
                            workload: workload.clone(),
                            streams: 1,
                            gone_since: None,
                        },
                    );
                    true
                }
            }
        };
        tracing::info!(node = %node.id, service = %workload.service, namespace = %workload.namespace, address = %workload.address, port = workload.port, "workload registered");
        if changed {
            self.bump();
        }
        Ok(())
    }

    fn left(&self, node_id: &str) {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.get_mut(node_id) {
            entry.streams = entry.streams.saturating_sub(1);
            if entry.streams == 0 {
                entry.gone_since = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;
    use weft_identity::SpiffeId;

    #[test]
    fn a_proxy_needs_its_credential_and_a_certificate_of_the_same_identity() {
        let registry = Registry::new("east", Duration::from_secs(5));
        registry.set_credentials(vec![WorkloadCredential {
            id: "t1".into(),
            hash: hash_secret("s3cret"),
            namespace: "shop".into(),
            service_account: "reviews".into(),
            expires_at: None,
            role: CredentialRole::Workload,
        }]);
        let workload = Workload {
            node: "reviews-1".into(),
            service: "reviews".into(),
            namespace: "shop".into(),
            service_account: "reviews".into(),
            labels: BTreeMap::new(),
            address: "127.0.0.1".into(),
            port: 15006,
            app_port: Some(9080),
            outbound_port: Some(15001),
            role: Default::default(),
            calls: Vec::new(),
        };
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", "Bearer s3cret".parse().unwrap());
        let peer = |id: Option<(&str, &str)>| Peer {
            address: "127.0.0.1:40000".parse().unwrap(),
            id: id.map(|(ns, sa)| SpiffeId::workload("weft", ns, sa).unwrap()),
            chain: Vec::new(),
        };
        let check = |peer: Option<&Peer>| registry.check_credential(&workload, &metadata, peer);

        assert_eq!(check(None).unwrap_err().code(), Code::Unauthenticated);
        let no_certificate = check(Some(&peer(None))).unwrap_err();
        assert_eq!(no_certificate.code(), Code::Unauthenticated);
        assert!(
            no_certificate
                .message()
                .contains("without a workload certificate")
        );
        let other = check(Some(&peer(Some(("shop", "ratings"))))).unwrap_err();
        assert_eq!(other.code(), Code::PermissionDenied);
        assert!(other.message().contains("spiffe://weft/ns/shop/sa/ratings"));
        assert!(check(Some(&peer(Some(("shop", "reviews"))))).is_ok());
        // The certificate does not stand in for the credential.
        let bare = MetadataMap::new();
        let refused =
            registry.check_credential(&workload, &bare, Some(&peer(Some(("shop", "reviews")))));
        assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);

        // A workload's credential does not run a gateway, nor a gateway's
        // a workload.
        let as_gateway = Workload {
            role: Role::Gateway,
            ..workload.clone()
        };
        let refused = registry.check_credential(
            &as_gateway,
            &metadata,
            Some(&peer(Some(("shop", "reviews")))),
        );
        let refused = refused.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(
            refused.message().contains("--gateway reviews"),
            "{refused:?}"
        );
        registry.set_credentials(vec![WorkloadCredential {
            id: "t2".into(),
            hash: hash_secret("s3cret"),
            namespace: "shop".into(),
            service_account: "reviews".into(),
            expires_at: None,
            role: CredentialRole::Gateway,
        }]);
        let check = |w: &Workload| {
            registry.check_credential(w, &metadata, Some(&peer(Some(("shop", "reviews")))))
        };
        assert!(check(&as_gateway).is_ok());
        assert_eq!(check(&workload).unwrap_err().code(), Code::PermissionDenied);
    }
}
