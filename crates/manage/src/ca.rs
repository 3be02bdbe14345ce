//! The organization's root CA: created on first start (or imported), kept
//! in the store, and used for one thing: signing each cluster's
//! intermediate CA from its edge's CSR (`POST /v1/edge/ca`).

use std::time::Duration;

use axum::Json;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use time::format_description::well_known::Rfc3339;
use weft_api::edge::{
    IntermediateCertificate, IntermediateRequest, NewRootCa, RootCa, RootState, Trust,
};
use weft_api::iam::Verb;
use weft_identity::{Authority, Bundle, CertificateDer, csr_from_pem, fingerprint};
use weft_store::{AuditRecord, RootAuthority, Store, StoreError};

use crate::AppState;
use crate::edges::edge_cluster;
use crate::error::ApiError;
use crate::iam::Caller;
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
    #[error("no Organization in the store (the server creates it on first start)")]
    NoOrganization,
    #[error(
        "the root CA is for trust domain {root:?}, the organization's is {organization:?} \
         (on a new store, start with --trust-domain {root})"
    )]
    OtherTrustDomain { root: String, organization: String },
}

impl From<CaError> for ApiError {
    fn from(e: CaError) -> ApiError {
        match e {
            CaError::Store(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

/// `root` as the store keeps it; `signing` makes it the signer now.
fn stored(root: &Authority, signing: bool) -> RootAuthority {
    let now = weft_store::now_rfc3339();
    RootAuthority {
        id: fingerprint(root.certificate()),
        trust_domain: root.trust_domain().to_string(),
        cert_pem: root.cert_pem(),
        key_pem: root.key_pem(),
        activated_at: signing.then(|| now.clone()),
        created_at: now,
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
        if root.trust_domain() != trust_domain {
            return Err(CaError::OtherTrustDomain {
                root: root.trust_domain().to_string(),
                organization: trust_domain.to_string(),
            });
        }
        // Imported at start: the operator means it to sign.
        store.add_root_authority(&stored(&root, true)).await?;
        store
            .activate_root_authority(&fingerprint(root.certificate()))
            .await?;
    } else if store.root_authorities().await?.is_empty() {
        let root = Authority::root(trust_domain, ROOT_LIFETIME)?;
        // Two replicas starting at once may both create one; both are
        // kept, and every replica signs with the oldest.
        store.add_root_authority(&stored(&root, true)).await?;
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
    let root = signing_root(store).await?;
    let left = root.not_after() - time::OffsetDateTime::now_utc();
    if left < time::Duration::days(365) {
        tracing::warn!(expires = %root.not_after(), "the signing root CA expires within a year: add a new root and rotate to it (weft ca)");
    }
    Ok(root.trust_domain().to_string())
}

/// The trust domain new roots are made for: the Organization's
/// `trustDomain`, or its name.
pub async fn organization_trust_domain(store: &Store) -> Result<String, CaError> {
    let organization = store
        .list("Organization")
        .await?
        .into_iter()
        .next()
        .ok_or(CaError::NoOrganization)?;
    Ok(organization
        .resource
        .spec
        .get("trustDomain")
        .and_then(|v| v.as_str())
        .unwrap_or(&organization.resource.metadata.name)
        .to_string())
}

/// The signing root: the one activated last, else the oldest.
fn signing(roots: &[RootAuthority]) -> Option<&RootAuthority> {
    roots
        .iter()
        .filter(|r| r.activated_at.is_some())
        .max_by(|a, b| a.activated_at.cmp(&b.activated_at))
        .or(roots.first())
}

/// The signing root, with its key.
pub async fn signing_root(store: &Store) -> Result<Authority, CaError> {
    let roots = store.root_authorities().await?;
    let root = signing(&roots).ok_or(CaError::NoRoot)?;
    Ok(Authority::from_pem(&root.cert_pem, &root.key_pem, "")?)
}

/// Seconds until the signing root expires.
pub async fn signing_root_seconds_left(store: &Store) -> Result<i64, CaError> {
    let root = signing_root(store).await?;
    Ok((root.not_after() - time::OffsetDateTime::now_utc()).whole_seconds())
}

/// The trust every root not retired makes up, in the signing root's trust
/// domain. Reads no key: edges' long polls ask for it.
pub async fn trust(store: &Store) -> Result<Trust, CaError> {
    trust_of(&store.root_authorities().await?)
}

fn trust_of(roots: &[RootAuthority]) -> Result<Trust, CaError> {
    let signer = signing(roots).ok_or(CaError::NoRoot)?;
    let certs: Vec<CertificateDer<'static>> = roots
        .iter()
        .filter(|r| r.trust_domain == signer.trust_domain)
        .map(|r| weft_identity::certificates_from_pem("a root CA", &r.cert_pem))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let bundle = Bundle::new(&signer.trust_domain, certs);
    Ok(Trust {
        trust_domain: bundle.trust_domain().to_string(),
        bundle: bundle.to_pem(),
        signer: signer.id.clone(),
    })
}

/// Root CAs are the organization's: reading them takes read on it,
/// changing them update.
async fn organization_path(state: &AppState) -> Result<String, ApiError> {
    Ok(state
        .store
        .list("Organization")
        .await?
        .into_iter()
        .next()
        .map(|o| o.path)
        .unwrap_or_default())
}

async fn may_manage_roots(state: &AppState, caller: &Caller, verb: Verb) -> Result<(), ApiError> {
    let organization = organization_path(state).await?;
    caller
        .require(&state.store, verb, "Organization", &organization)
        .await
}

/// Every root CA, as `GET /v1/ca/roots` shows them.
async fn roots(state: &AppState) -> Result<Vec<RootCa>, ApiError> {
    let live = state.store.root_authorities().await?;
    let signer = signing(&live).map(|r| r.id.as_str());
    let all = state.store.all_root_authorities().await?;
    Ok(all.iter().map(|r| describe(r, signer)).collect())
}

/// The root CAs if the caller may read them (the web UI asks without
/// recording a refusal).
pub(crate) async fn roots_if_readable(
    state: &AppState,
    caller: &Caller,
) -> Result<Option<Vec<RootCa>>, ApiError> {
    let organization = organization_path(state).await?;
    if !caller.can(Verb::Read, "Organization", &organization) {
        return Ok(None);
    }
    roots(state).await.map(Some)
}

fn describe(root: &RootAuthority, signer: Option<&str>) -> RootCa {
    let expires_at = Authority::from_pem(&root.cert_pem, &root.key_pem, "")
        .ok()
        .and_then(|a| a.not_after().format(&Rfc3339).ok())
        .unwrap_or_default();
    RootCa {
        id: root.id.clone(),
        trust_domain: root.trust_domain.clone(),
        state: if root.retired_at.is_some() {
            RootState::Retired
        } else if signer == Some(root.id.as_str()) {
            RootState::Signing
        } else {
            RootState::Trusted
        },
        created_at: root.created_at.clone(),
        expires_at,
        retired_at: root.retired_at.clone(),
    }
}

/// `GET /v1/ca/roots`: every root, retired ones too.
pub async fn list_roots(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<RootCa>>, ApiError> {
    may_manage_roots(&state, &caller, Verb::Read).await?;
    Ok(Json(roots(&state).await?))
}

/// `POST /v1/ca/roots`: adds a root, trusted but not signing, for the
/// Organization's trust domain.
pub async fn add_root(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<NewRootCa>,
) -> Result<(StatusCode, Json<RootCa>), ApiError> {
    may_manage_roots(&state, &caller, Verb::Update).await?;
    let trust_domain = organization_trust_domain(&state.store).await?;
    let root = match (&request.certificate, &request.key) {
        (Some(cert), Some(key)) => Authority::from_pem(cert, key, "")
            .map_err(|e| ApiError::bad_request(format!("certificate and key: {e}")))?,
        (None, None) => Authority::root(&trust_domain, ROOT_LIFETIME).map_err(CaError::from)?,
        _ => {
            return Err(ApiError::bad_request(
                "give both certificate and key, or neither (the server makes a root)",
            ));
        }
    };
    if root.trust_domain() != trust_domain {
        return Err(ApiError::bad_request(format!(
            "the root is for trust domain {:?}, the organization's is {trust_domain:?}",
            root.trust_domain()
        )));
    }
    let stored = stored(&root, false);
    state.store.add_root_authority(&stored).await?;
    audit_root(&state, &caller, "ca.root.add", &stored.id).await?;
    tracing::info!(root = %stored.id, "added a root CA (trusted, not signing)");
    let live = state.store.root_authorities().await?;
    let signer = signing(&live).map(|r| r.id.as_str());
    Ok((StatusCode::CREATED, Json(describe(&stored, signer))))
}

/// `POST /v1/ca/roots/{id}/activate`: the root signs from now on; edges
/// get new cluster CAs from it, and workloads new certificates as they
/// renew.
pub async fn activate_root(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RootCa>, ApiError> {
    may_manage_roots(&state, &caller, Verb::Update).await?;
    if !state.store.activate_root_authority(&id).await? {
        return Err(ApiError::not_found(format!(
            "no root {id:?} that is not retired (see weft ca list)"
        )));
    }
    audit_root(&state, &caller, "ca.root.activate", &id).await?;
    tracing::info!(root = %id, "a root CA now signs");
    root_described(&state, &id).await
}

/// `POST /v1/ca/roots/{id}/retire`: the root is trusted no more. The
/// signing root cannot be retired.
pub async fn retire_root(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RootCa>, ApiError> {
    may_manage_roots(&state, &caller, Verb::Update).await?;
    let live = state.store.root_authorities().await?;
    if signing(&live).is_some_and(|r| r.id == id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "signing_root",
            "this root signs: activate another one first, and retire this one once every workload's certificate chains to that one",
        ));
    }
    if !state.store.retire_root_authority(&id).await? {
        return Err(ApiError::not_found(format!(
            "no root {id:?} that is not retired (see weft ca list)"
        )));
    }
    audit_root(&state, &caller, "ca.root.retire", &id).await?;
    tracing::info!(root = %id, "retired a root CA");
    root_described(&state, &id).await
}

async fn root_described(state: &AppState, id: &str) -> Result<Json<RootCa>, ApiError> {
    let live = state.store.root_authorities().await?;
    let signer = signing(&live).map(|r| r.id.as_str());
    let all = state.store.all_root_authorities().await?;
    let root = all
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no root {id:?}")))?;
    Ok(Json(describe(root, signer)))
}

async fn audit_root(
    state: &AppState,
    caller: &Caller,
    action: &str,
    id: &str,
) -> Result<(), ApiError> {
    state
        .store
        .record(&AuditRecord {
            actor: caller.user.clone(),
            action: action.into(),
            kind: "Organization".into(),
            path: String::new(),
            outcome: "ok".into(),
            message: format!("root CA {id}"),
            before: None,
            after: None,
        })
        .await?;
    Ok(())
}

/// `POST /v1/edge/ca`: signs the caller's cluster intermediate.
pub async fn sign_intermediate(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<IntermediateRequest>,
) -> Result<Json<IntermediateCertificate>, ApiError> {
    let cluster = edge_cluster(&state, &headers).await?;
    let csr = csr_from_pem(&request.csr).map_err(|e| ApiError::bad_request(format!("csr: {e}")))?;
    // One read: the trust sent back names the root that signed.
    let roots = state.store.root_authorities().await?;
    let trust = trust_of(&roots)?;
    let root = signing(&roots).ok_or(CaError::NoRoot)?;
    let signer = Authority::from_pem(&root.cert_pem, &root.key_pem, "").map_err(CaError::from)?;
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
