//! API tokens: `GET|POST /v1/tokens`, `DELETE /v1/tokens/{id}`.
//!
//! Anyone may manage their own tokens; managing another user's needs
//! `update` on that User (admins). The secret is shown once, at creation.

use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use weft_api::Verb;
use weft_api::edge::{
    CredentialRole, edge_principal, gateway_principal, parse_workload_principal, workload_principal,
};
use weft_api::kinds::top_level_path;
use weft_api::problems::check_dns_label;
use weft_store::TokenRecord;

use crate::AppState;
use crate::error::ApiError;
use crate::iam::{Caller, hash_secret, new_secret, new_token_id};
use crate::request::JsonBody;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateToken {
    /// Whose token; the caller by default.
    pub user: Option<String>,
    /// An edge credential for this cluster instead of a user token; with
    /// `namespace` and `serviceAccount`, a workload credential there; with
    /// `namespace` and `gateway`, a gateway's.
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    /// The gateway's name (`weft gateway --name`); its identity is the
    /// service account of that name.
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub description: String,
    /// Lifetime; none means until revoked.
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    pub token: TokenRecord,
    /// The bearer secret. It is not stored and cannot be shown again.
    pub secret: String,
    /// For edge and workload credentials: the roots the mesh trusts (PEM),
    /// so that `weft edge` and `weft sidecar` can check whom they talk to
    /// before they have a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle: Option<String>,
}

impl CreatedToken {
    /// What a credential file holds: the secret on the first line, then
    /// the trust bundle, if any.
    pub fn credential_file(&self) -> String {
        match &self.trust_bundle {
            Some(bundle) => format!("{}\n{bundle}", self.secret),
            None => format!("{}\n", self.secret),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub user: Option<String>,
    /// The edge and workload credentials of this cluster.
    pub cluster: Option<String>,
}

/// The cluster an edge or workload principal belongs to.
fn cluster_of(principal: &str) -> Option<&str> {
    principal
        .strip_prefix("cluster:")
        .or_else(|| parse_workload_principal(principal).map(|p| p.cluster))
}

/// Credentials of a cluster are managed by those who may update it.
async fn may_manage_cluster(
    state: &AppState,
    caller: &Caller,
    cluster: &str,
    verb: Verb,
) -> Result<(), ApiError> {
    let path = top_level_path("Cluster", cluster);
    caller.require(&state.store, verb, "Cluster", &path).await?;
    if state.store.get(&path).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "cluster {cluster:?} does not exist; apply a Cluster resource first"
        )));
    }
    Ok(())
}

/// Whose credential a request asks for: a user, an edge, or a workload.
async fn principal(
    state: &AppState,
    caller: &Caller,
    request: &CreateToken,
) -> Result<String, ApiError> {
    let Some(cluster) = &request.cluster else {
        if request.namespace.is_some()
            || request.service_account.is_some()
            || request.gateway.is_some()
        {
            return Err(ApiError::bad_request(
                "namespace with serviceAccount or gateway make a workload credential: give cluster too",
            ));
        }
        let user = request.user.clone().unwrap_or_else(|| caller.user.clone());
        may_manage(state, caller, &user, Verb::Update).await?;
        return Ok(user);
    };
    if request.user.is_some() {
        return Err(ApiError::bad_request(
            "give either user (a user token) or cluster (an edge or workload credential), not both",
        ));
    }
    may_manage_cluster(state, caller, cluster, Verb::Update).await?;
    let (account, role) = match (&request.service_account, &request.gateway) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give serviceAccount (a workload credential) or gateway (a gateway's), not both",
            ));
        }
        (Some(account), None) => (Some(account), CredentialRole::Workload),
        (None, Some(gateway)) => (Some(gateway), CredentialRole::Gateway),
        (None, None) => (None, CredentialRole::Workload),
    };
    match (&request.namespace, account) {
        (None, None) => Ok(edge_principal(cluster)),
        (Some(namespace), Some(account)) => {
            // The reserved namespace holds weft's own identities; the
            // credentials made there are its services'.
            if namespace == weft_identity::RESERVED_NAMESPACE
                && (![
                    weft_identity::EASTWEST_ACCOUNT,
                    weft_identity::RATELIMIT_ACCOUNT,
                    weft_identity::AUTHSERVICE_ACCOUNT,
                ]
                .contains(&account.as_str())
                    || role == CredentialRole::Gateway)
            {
                return Err(ApiError::bad_request(format!(
                    "namespace: {namespace:?} is reserved for weft's own components (the edge's identity is in it); its only workload credentials are the east-west gateway's (weft token create --cluster C --eastwest) the rate limit service's (--ratelimit) and the sign-in service's (--authservice)"
                )));
            }
            let account_field = match role {
                CredentialRole::Workload => "serviceAccount",
                CredentialRole::Gateway => "gateway",
            };
            for (field, value) in [("namespace", namespace), (account_field, account)] {
                check_dns_label(value)
                    .map_err(|e| ApiError::bad_request(format!("{field}: {e}")))?;
            }
            Ok(match role {
                CredentialRole::Workload => workload_principal(cluster, namespace, account),
                CredentialRole::Gateway => gateway_principal(cluster, namespace, account),
            })
        }
        _ => Err(ApiError::bad_request(
            "a workload credential needs namespace and serviceAccount (a gateway's, namespace and gateway)",
        )),
    }
}

/// Checks the caller may manage `user`'s tokens, and that the user exists.
async fn may_manage(
    state: &AppState,
    caller: &Caller,
    user: &str,
    verb: Verb,
) -> Result<(), ApiError> {
    let path = top_level_path("User", user);
    if user != caller.user {
        caller.require(&state.store, verb, "User", &path).await?;
    }
    if state.store.get(&path).await?.is_none() {
        return Err(ApiError::not_found(format!("user {user:?} does not exist")));
    }
    Ok(())
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let user = principal(&state, &caller, &request).await?;
    if request.description.len() > 256 {
        return Err(ApiError::bad_request("description: at most 256 characters"));
    }
    let now = SystemTime::now();
    let expires_at = match request.ttl_seconds {
        Some(0) => return Err(ApiError::bad_request("ttlSeconds: must be positive")),
        Some(seconds) => {
            let at = now
                .checked_add(Duration::from_secs(seconds))
                .filter(|at| *at < SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799))
                .ok_or_else(|| ApiError::bad_request("ttlSeconds: too large"))?;
            Some(humantime::format_rfc3339_millis(at).to_string())
        }
        None => None,
    };
    let secret = new_secret();
    let token = TokenRecord {
        id: new_token_id(),
        user,
        description: request.description,
        created_at: humantime::format_rfc3339_millis(now).to_string(),
        expires_at,
        revoked_at: None,
    };
    state
        .store
        .create_token(&token, &hash_secret(&secret), &caller.user)
        .await?;
    tracing::info!(token = %token.id, user = %token.user, by = %caller.user, "token created");
    let trust_bundle = if cluster_of(&token.user).is_some() {
        Some(crate::ca::trust(&state.store).await?.bundle)
    } else {
        None
    };
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            secret,
            trust_bundle,
        }),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<TokenRecord>>, ApiError> {
    if let Some(cluster) = &query.cluster {
        may_manage_cluster(&state, &caller, cluster, Verb::Read).await?;
        let mut tokens = state.store.list_tokens(None).await?;
        tokens.retain(|t| cluster_of(&t.user) == Some(cluster.as_str()));
        return Ok(Json(tokens));
    }
    let user = query.user.unwrap_or_else(|| caller.user.clone());
    may_manage(&state, &caller, &user, Verb::Read).await?;
    Ok(Json(state.store.list_tokens(Some(&user)).await?))
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenRecord>, ApiError> {
    let Some(token) = state.store.token(&id).await? else {
        return Err(ApiError::not_found(format!("no token {id:?}")));
    };
    if let Some(cluster) = cluster_of(&token.user) {
        may_manage_cluster(&state, &caller, cluster, Verb::Update).await?;
    } else if token.user != caller.user {
        caller
            .require(
                &state.store,
                Verb::Update,
                "User",
                &top_level_path("User", &token.user),
            )
            .await?;
    }
    let at = weft_store::now_rfc3339();
    if !state.store.revoke_token(&token, &at, &caller.user).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("token {id} was already revoked"),
        ));
    }
    tracing::info!(token = %token.id, user = %token.user, by = %caller.user, "token revoked");
    Ok(Json(TokenRecord {
        revoked_at: Some(at),
        ..token
    }))
}
