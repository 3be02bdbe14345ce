//! The organization's root CA: created on first start (or imported), kept
//! in the store, and used for one thing: signing each cluster's
//! intermediate CA from its edge's CSR (`POST /v1/edge/ca`).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use weft_api::edge::{IntermediateCertificate, IntermediateRequest, Trust};
use weft_identity::{Authority, Bundle, CertificateDer, csr_from_pem, fingerprint};
use weft_store::{AuditRecord, RootAuthority, Store, StoreError};

use crate::AppState;
use crate::edges::edge_cluster;
use crate::error::ApiError;
use crate::request::JsonBody;

/// How long a new root lives.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a cluster's intermediate lives; its edge renews it at half-life
/// and can go on issuing for weeks without the server.
pub const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Identity(#[from] weft_identity::IdentityError),
    #[error("no root CA in the store (the server creates one on start)")]
    NoRoot,
}

impl From<CaError> for ApiError {
    fn from(e: CaError) -> ApiError {
        match e {
            CaError::Store(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

fn stored(root: &Authority) -> RootAuthority {
    RootAuthority {
        id: fingerprint(root.certificate()),
        trust_domain: root.trust_domain().to_string(),
        cert_pem: root.cert_pem(),
        key_pem: root.key_pem(),
        created_at: weft_store::now_rfc3339(),
        retired_at: None,
    }
}

/// Makes sure the store has a root: imports `import` (certificate and key
/// PEM) if given and new, else creates one for `trust_domain` if there is
/// none. Returns the signing root's trust domain.
pub async fn ensure_root(
    store: &Store,
    trust_domain: &str,
    import: Option<(&str, &str)>,
) -> Result<String, CaError> {
    if let Some((cert, key)) = import {
        let root = Authority::from_pem(cert, key, "")?;
        store.add_root_authority(&stored(&root)).await?;
    } else if store.root_authorities().await?.is_empty() {
        let root = Authority::root(trust_domain, ROOT_LIFETIME)?;
        // Two replicas starting at once may both create one; both are
        // kept, and every replica signs with the oldest.
        store.add_root_authority(&stored(&root)).await?;
        store
            .record(&AuditRecord {
                actor: "weft-server".into(),
                action: "ca.root.create".into(),
                kind: "Organization".into(),
                path: String::new(),
                outcome: "ok".into(),
                message: format!(
                    "root CA {} for trust domain {trust_domain}",
                    fingerprint(root.certificate())
                ),
                before: None,
                after: None,
            })
            .await?;
    }
    // Reads the signing root's key once now, so a bad one stops the start.
    Ok(signer(store).await?.trust_domain().to_string())
}

/// The signing root: the oldest not retired.
async fn signer(store: &Store) -> Result<Authority, CaError> {
    let roots = store.root_authorities().await?;
    let first = roots.first().ok_or(CaError::NoRoot)?;
    Ok(Authority::from_pem(&first.cert_pem, &first.key_pem, "")?)
}

/// The trust every root not retired makes up, in the signing root's trust
/// domain. Reads no key: edges' long polls ask for it.
pub async fn trust(store: &Store) -> Result<Trust, CaError> {
    let roots = store.root_authorities().await?;
    let first = roots.first().ok_or(CaError::NoRoot)?;
    let certs: Vec<CertificateDer<'static>> = roots
        .iter()
        .filter(|r| r.trust_domain == first.trust_domain)
        .map(|r| weft_identity::certificates_from_pem("a root CA", &r.cert_pem))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let bundle = Bundle::new(&first.trust_domain, certs);
    Ok(Trust {
        trust_domain: bundle.trust_domain().to_string(),
        bundle: bundle.to_pem(),
    })
}

/// `POST /v1/edge/ca`: signs the caller's cluster intermediate.
pub async fn sign_intermediate(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<IntermediateRequest>,
) -> Result<Json<IntermediateCertificate>, ApiError> {
    let cluster = edge_cluster(&state, &headers).await?;
    let csr = csr_from_pem(&request.csr).map_err(|e| ApiError::bad_request(format!("csr: {e}")))?;
    let (signer, trust) = (signer(&state.store).await?, trust(&state.store).await?);
    let cert = signer
        .sign_intermediate(&csr, &cluster, INTERMEDIATE_LIFETIME)
        .map_err(|e| ApiError::bad_request(format!("csr: {e}")))?;
    state
        .store
        .record(&AuditRecord {
            actor: format!("cluster:{cluster}"),
            action: "ca.intermediate.sign".into(),
            kind: "Cluster".into(),
            path: weft_api::kinds::top_level_path("Cluster", &cluster),
            outcome: "ok".into(),
            message: format!("intermediate CA {}", fingerprint(&cert)),
            before: None,
            after: None,
        })
        .await?;
    tracing::info!(%cluster, fingerprint = %fingerprint(&cert), "signed a cluster intermediate CA");
    Ok(Json(IntermediateCertificate {
        certificate: weft_identity::certificates_to_pem(&[cert]),
        trust,
    }))
}
