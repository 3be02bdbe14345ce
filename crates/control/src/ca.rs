//! The edge's CA: the cluster's intermediate, signed by the organization's
//! root from a CSR (the key is made here and never leaves `DATA/ca/`), and
//! the workload certificates it issues from sidecars' CSRs.
//!
//! The intermediate is kept on disk and renewed at half-life while the
//! server is reachable, so the edge goes on issuing workload certificates
//! through a long server outage, restarts included.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricsRegistry;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use weft_api::edge::{CaReport, CertificateReport, IntermediateRequest, Svid, SvidRequest, Trust};
use weft_identity::tls::{ServingCertificate, TrustStore};
use weft_identity::{
    Authority, Bundle, CertRequest, SpiffeId, certificates_from_pem, certificates_to_pem,
    csr_from_pem, csr_to_pem, fingerprint,
};

use crate::registry::Registry;
use crate::server_link::ServerLink;

#[derive(Clone, Default)]
pub struct CaMetrics {
    issued: Counter,
    refused: Counter,
    expires_in: Gauge,
    overdue: Gauge,
    /// TLS handshakes on the xDS port that failed (plaintext, no trusted
    /// certificate, ...).
    pub handshake_failures: Counter,
}

impl CaMetrics {
    pub fn register(&self, registry: &mut MetricsRegistry) {
        registry.register(
            "edge_svids_issued",
            "Workload certificates issued",
            self.issued.clone(),
        );
        registry.register(
            "edge_svid_refusals",
            "Workload certificate requests refused",
            self.refused.clone(),
        );
        registry.register(
            "edge_tls_handshake_failures",
            "TLS handshakes refused on the xDS port (plaintext clients, untrusted certificates)",
            self.handshake_failures.clone(),
        );
        registry.register(
            "edge_svids_overdue",
            "Proxies whose sidecar missed its certificate renewal (past three quarters of the certificate's life)",
            self.overdue.clone(),
        );
        registry.register(
            "edge_ca_expiry_seconds",
            "Seconds until the cluster's intermediate CA expires (0: none)",
            self.expires_in.clone(),
        );
    }
}

/// The cluster's intermediate and what it needs to issue.
pub struct EdgeCa {
    cluster: String,
    dir: PathBuf,
    authority: Mutex<Option<Arc<Authority>>>,
    /// The root that signed `authority` (its fingerprint).
    signed_by: Mutex<Option<String>>,
    /// The bundle, for checking the certificates of the xDS port's peers.
    pub trust_store: Arc<TrustStore>,
    /// The edge's own certificate on the xDS port, and when to renew it.
    pub serving: Arc<ServingCertificate>,
    serving_renew_at: Mutex<Option<OffsetDateTime>>,
    /// The trust bundle from the latest configuration.
    trust: Mutex<Option<Trust>>,
    /// Wakes the renewal loop when the trust changes.
    trust_changed: tokio::sync::Notify,
    svid_lifetime: Duration,
    registry: Registry,
    /// The latest certificate issued to each proxy: identity, expiry.
    /// By node: the last certificate issued to it.
    issued: Mutex<std::collections::BTreeMap<String, Issued>>,
    pub metrics: CaMetrics,
}

struct Issued {
    identity: String,
    expires: OffsetDateTime,
    root: String,
    trusts: Vec<String>,
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EdgeCa {
    /// Loads the intermediate kept in `dir`, if there is a usable one.
    pub fn load(
        cluster: &str,
        dir: PathBuf,
        svid_lifetime: Duration,
        registry: Registry,
    ) -> EdgeCa {
        let ca = EdgeCa {
            cluster: cluster.to_string(),
            authority: Mutex::new(None),
            signed_by: Mutex::new(None),
            trust_store: Arc::default(),
            serving: Arc::default(),
            serving_renew_at: Mutex::new(None),
            trust: Mutex::new(None),
            trust_changed: tokio::sync::Notify::new(),
            svid_lifetime,
            registry,
            issued: Mutex::new(Default::default()),
            metrics: CaMetrics::default(),
            dir,
        };
        let read = |name: &str| std::fs::read_to_string(ca.dir.join(name));
        if let (Ok(cert), Ok(key)) = (read("cert.pem"), read("key.pem")) {
            match Authority::from_pem(&cert, &key, "") {
                Ok(authority) if authority.not_after() > OffsetDateTime::now_utc() => {
                    tracing::info!(expires = %authority.not_after(), "using the cluster CA kept on disk");
                    ca.set_authority(authority, read("signer").ok().map(|s| s.trim().to_string()));
                }
                Ok(_) => tracing::warn!(
                    "the cluster CA kept on disk has expired; asking the server for a new one"
                ),
                Err(error) => tracing::warn!(%error, "ignoring an unreadable cluster CA on disk"),
            }
        }
        ca
    }

    fn set_authority(&self, authority: Authority, signed_by: Option<String>) {
        let left = authority.not_after() - OffsetDateTime::now_utc();
        self.metrics.expires_in.set(left.whole_seconds().max(0));
        *lock(&self.authority) = Some(Arc::new(authority));
        *lock(&self.signed_by) = signed_by;
        // A new CA: serve a certificate from it at once.
        *lock(&self.serving_renew_at) = None;
        self.renew_serving();
    }

    /// Issues the edge's own certificate (`SpiffeId::edge`) from the
    /// cluster CA when it is due: at half-life, or for a new CA.
    fn renew_serving(&self) {
        let Some(authority) = lock(&self.authority).clone() else {
            return;
        };
        let now = OffsetDateTime::now_utc();
        if lock(&self.serving_renew_at).is_some_and(|at| now < at) {
            return;
        }
        let issued = SpiffeId::edge(authority.trust_domain()).and_then(|id| {
            let request = CertRequest::workload_key()?;
            let leaf = authority.issue_svid(&request.csr, &id, self.svid_lifetime)?;
            let chain = std::iter::once(leaf).chain(authority.chain()).collect();
            self.serving.set(chain, request.key.serialize_der())?;
            Ok(id)
        });
        match issued {
            Ok(id) => {
                tracing::info!(%id, "the xDS port serves a new certificate");
                *lock(&self.serving_renew_at) = Some(now + self.svid_lifetime / 2);
            }
            Err(error) => {
                tracing::error!(%error, "cannot issue the edge's own certificate; the xDS port cannot take connections")
            }
        }
    }

    /// Takes the trust bundle of a new configuration.
    pub fn set_trust(&self, trust: Option<Trust>) {
        if let Some(t) = &trust {
            match Bundle::from_pem(&t.trust_domain, &t.bundle) {
                Ok(bundle) => self.trust_store.set(bundle),
                Err(error) => tracing::error!(%error, "the server sent an unreadable trust bundle"),
            }
        }
        let changed = *lock(&self.trust) != trust;
        *lock(&self.trust) = trust;
        if changed {
            self.trust_changed.notify_one();
        }
    }

    pub fn trust(&self) -> Option<Trust> {
        lock(&self.trust).clone()
    }

    /// Whether the intermediate is missing, past half-life, or of another
    /// trust domain than the configuration's.
    /// At half-life, and when the server signs with another root or for
    /// another trust domain than this CA's.
    pub fn needs_renewal(&self) -> bool {
        let trust = self.trust();
        let signed_by = lock(&self.signed_by).clone();
        match lock(&self.authority).as_ref() {
            None => true,
            Some(a) => {
                a.past_half_life(OffsetDateTime::now_utc())
                    || trust.is_some_and(|t| {
                        t.trust_domain != a.trust_domain()
                            || (!t.signer.is_empty() && signed_by.as_ref() != Some(&t.signer))
                    })
            }
        }
    }

    /// Asks the server to sign a new intermediate, and keeps it.
    pub async fn renew(&self, link: &ServerLink) -> Result<(), String> {
        let trust = self
            .trust()
            .ok_or("the server has not sent this cluster's trust domain yet")?;
        let request = CertRequest::intermediate(&trust.trust_domain, &self.cluster)
            .map_err(|e| e.to_string())?;
        let signed = link
            .sign_intermediate(&IntermediateRequest {
                csr: csr_to_pem(&request.csr),
            })
            .await
            .map_err(|e| e.to_string())?;
        let cert = certificates_from_pem("the cluster CA", &signed.certificate)
            .map_err(|e| e.to_string())?
            .remove(0);
        let authority =
            Authority::from_parts(cert, request.key, Vec::new()).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| {
                crate::edge::write_private(
                    &self.dir.join("key.pem"),
                    authority.key_pem().as_bytes(),
                )
            })
            .and_then(|()| {
                crate::edge::write_private(
                    &self.dir.join("cert.pem"),
                    authority.cert_pem().as_bytes(),
                )
            })
            .and_then(|()| {
                crate::edge::write_private(&self.dir.join("signer"), signed.trust.signer.as_bytes())
            })
            .map_err(|e| format!("cannot keep the cluster CA in {}: {e}", self.dir.display()))?;
        tracing::info!(expires = %authority.not_after(), root = %signed.trust.signer, "the server signed this cluster's CA");
        self.set_authority(authority, Some(signed.trust.signer.clone()));
        self.set_trust(Some(signed.trust));
        Ok(())
    }

    /// The certificate last issued to `node`, and whether its renewal is
    /// overdue.
    /// The cluster CA, for the edge's status.
    pub fn report(&self) -> Option<CaReport> {
        let authority = lock(&self.authority).clone()?;
        Some(CaReport {
            expires_at: rfc3339(authority.not_after()),
            root: lock(&self.signed_by).clone().unwrap_or_default(),
            expiring: self.expiring(&authority),
        })
    }

    /// Less than a quarter of the CA's life is left: renewal (due at
    /// half-life) has been failing for a long while.
    fn expiring(&self, authority: &Authority) -> bool {
        authority.life_used(OffsetDateTime::now_utc()) > 0.75
    }

    /// Counts proxies whose renewal is overdue, and warns once about each
    /// that just became so.
    fn check_overdue(&self, warned: &mut std::collections::BTreeSet<String>) {
        let now = OffsetDateTime::now_utc();
        // Only proxies still connected: one that left renews nothing.
        let connected: std::collections::BTreeSet<String> = self
            .registry
            .connections()
            .into_iter()
            .filter(|(_, connected)| *connected)
            .map(|(w, _)| w.node)
            .collect();
        let issued = lock(&self.issued);
        let overdue: std::collections::BTreeSet<String> = issued
            .iter()
            .filter(|(node, i)| {
                connected.contains(*node) && now > i.expires - self.svid_lifetime / 4
            })
            .map(|(node, _)| node.clone())
            .collect();
        for node in overdue.difference(warned) {
            let i = &issued[node];
            tracing::warn!(
                %node,
                identity = %i.identity,
                expires = %rfc3339(i.expires),
                "a sidecar has not renewed its certificate (it should at half-life); check its log"
            );
        }
        self.metrics.overdue.set(overdue.len() as i64);
        *warned = overdue;
    }

    pub fn certificate_of(&self, node: &str) -> Option<CertificateReport> {
        let issued = lock(&self.issued);
        let issued = issued.get(node)?;
        let overdue = OffsetDateTime::now_utc() > issued.expires - self.svid_lifetime / 4;
        Some(CertificateReport {
            identity: issued.identity.clone(),
            expires_at: rfc3339(issued.expires),
            root: issued.root.clone(),
            trusts: issued.trusts.clone(),
            overdue,
        })
    }

    /// Forgets the certificates of proxies that left. A certificate issued
    /// within the last half of a lifetime is kept: its proxy may not have
    /// connected yet (the sidecar gets the certificate before Envoy starts).
    pub fn retain_nodes(&self, live: impl Fn(&str) -> bool) {
        let recent = OffsetDateTime::now_utc() + self.svid_lifetime / 2;
        lock(&self.issued).retain(|node, i| live(node) || i.expires > recent);
    }

    /// Issues the certificate of the workload whose credential is `secret`.
    fn issue(&self, secret: &str, csr_pem: &str) -> Result<Svid, (StatusCode, String)> {
        let credential = self
            .registry
            .credential(secret)
            .map_err(|reason| (StatusCode::UNAUTHORIZED, reason))?;
        let authority = lock(&self.authority).clone().ok_or((
            StatusCode::SERVICE_UNAVAILABLE,
            "this edge has no cluster CA yet (it gets one from the server)".to_string(),
        ))?;
        let trust = self.trust().ok_or((
            StatusCode::SERVICE_UNAVAILABLE,
            "this edge has no trust bundle yet (it gets one from the server)".to_string(),
        ))?;
        let id = SpiffeId::workload(
            authority.trust_domain(),
            &credential.namespace,
            &credential.service_account,
        )
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
        let csr =
            csr_from_pem(csr_pem).map_err(|e| (StatusCode::BAD_REQUEST, format!("csr: {e}")))?;
        let leaf = authority
            .issue_svid(&csr, &id, self.svid_lifetime)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("csr: {e}")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let expires_at = parsed.validity().not_after.to_datetime();
        let chain: Vec<_> = std::iter::once(leaf).chain(authority.chain()).collect();
        Ok(Svid {
            id: id.to_string(),
            certificate_chain: certificates_to_pem(&chain),
            expires_at: rfc3339(expires_at),
            trust,
        })
    }
}

/// `POST /v1/svid` on the edge's xDS port: a workload's certificate, for
/// its credential (the bearer token) and its CSR.
pub async fn issue_svid(
    State(ca): State<Arc<EdgeCa>>,
    headers: HeaderMap,
    Json(request): Json<SvidRequest>,
) -> Result<Json<Svid>, (StatusCode, String)> {
    let secret = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or((
            StatusCode::UNAUTHORIZED,
            "present the workload credential as a bearer token".to_string(),
        ))?;
    match ca.issue(secret, &request.csr) {
        Ok(svid) => {
            ca.metrics.issued.inc();
            if let (Some(node), Ok(expires)) = (
                &request.node,
                OffsetDateTime::parse(&svid.expires_at, &Rfc3339),
            ) {
                let trusts = certificates_from_pem("the trust bundle", &svid.trust.bundle)
                    .map(|roots| roots.iter().map(fingerprint).collect())
                    .unwrap_or_default();
                let issued = Issued {
                    identity: svid.id.clone(),
                    expires,
                    root: lock(&ca.signed_by).clone().unwrap_or_default(),
                    trusts,
                };
                lock(&ca.issued).insert(node.clone(), issued);
            }
            tracing::info!(id = %svid.id, expires = %svid.expires_at, "issued a workload certificate");
            Ok(Json(svid))
        }
        Err((status, reason)) => {
            ca.metrics.refused.inc();
            tracing::warn!(%status, %reason, "refused a workload certificate");
            Err((status, reason))
        }
    }
}

/// Keeps the intermediate current: renews it when it is missing, past
/// half-life, or of another trust domain, retrying while the server is
/// unreachable.
pub async fn renewal_loop(
    ca: Arc<EdgeCa>,
    link: ServerLink,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut failing = false;
    let mut overdue = std::collections::BTreeSet::new();
    let mut last_alarm: Option<std::time::Instant> = None;
    loop {
        if ca.needs_renewal() && ca.trust().is_some() {
            match ca.renew(&link).await {
                Ok(()) => failing = false,
                Err(error) if !failing => {
                    tracing::warn!(%error, "cannot renew the cluster CA; retrying");
                    failing = true;
                }
                Err(error) => {
                    // Near the end of the CA's life, say so loudly (every
                    // ten minutes), not only once.
                    let expiring = lock(&ca.authority).as_ref().is_some_and(|a| ca.expiring(a));
                    if expiring
                        && last_alarm.is_none_or(|at| at.elapsed() > Duration::from_secs(600))
                    {
                        tracing::error!(%error, "the cluster CA expires soon and cannot be renewed: workloads will get no certificates once it has expired; make the server reachable");
                        last_alarm = Some(std::time::Instant::now());
                    } else {
                        tracing::debug!(%error, "cannot renew the cluster CA");
                    }
                }
            }
        }
        ca.check_overdue(&mut overdue);
        ca.renew_serving();
        if let Some(authority) = lock(&ca.authority).as_ref() {
            let left = authority.not_after() - OffsetDateTime::now_utc();
            ca.metrics.expires_in.set(left.whole_seconds().max(0));
        }
        // Often enough to see a missed renewal within an eighth of a
        // certificate's life.
        let every = if failing {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(30).min(ca.svid_lifetime / 8)
        };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = ca.trust_changed.notified() => {}
            _ = stop.changed() => return,
        }
    }
}
