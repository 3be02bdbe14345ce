//! Who is calling, and what they may do.
//!
//! Authentication: a bearer token whose SHA-256 is looked up in the store
//! (secrets are never stored). Authorization: the caller's grants are the
//! AccessBindings naming the user or one of their teams; a binding holds on
//! the node it is attached to and everything below it.

use std::collections::BTreeMap;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rand::RngCore;
use serde::Serialize;
use weft_api::iam::builtin_rules;
use weft_api::kinds::{kind_of_path, top_level_path};
use weft_api::specs::{AccessBindingSpec, RoleSpec, TeamSpec};
use weft_api::{Rule, Verb};
use weft_store::{AuditRecord, Change, Store, TokenRecord};

use crate::AppState;
use crate::error::ApiError;

/// A new token secret: `weft_` and 256 random bits.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("weft_{}", hex::encode(bytes))
}

/// A short random id to name a token in lists and revocations.
pub fn new_token_id() -> String {
    let mut bytes = [0u8; 6];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub use weft_api::edge::hash_secret;

/// One binding's worth of permissions.
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    /// The node the binding is attached to ("" for the whole installation).
    pub scope: String,
    pub role: String,
    pub binding: String,
    #[serde(skip)]
    rules: Vec<Rule>,
}

/// An authenticated caller and their grants.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub user: String,
    pub teams: Vec<String>,
    pub grants: Vec<Grant>,
}

/// Whether a binding attached at `scope` holds for `path`.
fn covers(scope: &str, path: &str) -> bool {
    scope.is_empty()
        || path == scope
        || path
            .strip_prefix(scope)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl Caller {
    /// Whether the caller may do `verb` to a `kind` at `path`. `kind` "*"
    /// asks for a rule on every kind.
    pub fn can(&self, verb: Verb, kind: &str, path: &str) -> bool {
        self.grants
            .iter()
            .filter(|g| covers(&g.scope, path))
            .any(|g| g.rules.iter().any(|r| r.allows(verb, kind)))
    }

    /// A 403 naming the missing permission.
    pub fn forbidden(&self, verb: Verb, kind: &str, path: &str) -> ApiError {
        let place = if path.is_empty() {
            "the top level".to_string()
        } else {
            path.to_string()
        };
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "user {:?} lacks permission \"{}\" on {} at {place}",
                self.user,
                verb.as_str(),
                if kind == "*" { "every kind" } else { kind }
            ),
        )
        .with_hint("ask an admin of that node, or of a node above it, for an AccessBinding whose role grants it")
    }

    /// Checks a permission; a refusal is recorded in the audit log.
    pub async fn require(
        &self,
        store: &Store,
        verb: Verb,
        kind: &str,
        path: &str,
    ) -> Result<(), ApiError> {
        if self.can(verb, kind, path) {
            return Ok(());
        }
        let error = self.forbidden(verb, kind, path);
        record_denial(store, &self.user, verb, kind, path, &error.body.message).await;
        Err(error)
    }
}

/// Records a refused attempt; a failure to record is logged, and the
/// refusal stands either way.
pub async fn record_denial(
    store: &Store,
    user: &str,
    verb: Verb,
    kind: &str,
    path: &str,
    message: &str,
) {
    let record = AuditRecord {
        actor: user.to_string(),
        action: verb.as_str().to_string(),
        kind: kind.to_string(),
        path: path.to_string(),
        outcome: "denied".into(),
        message: message.to_string(),
        before: None,
        after: None,
    };
    if let Err(error) = store.record(&record).await {
        tracing::error!(%error, user, path, "could not record a refused attempt in the audit log");
    }
}

/// Resolves a bearer token to a caller with their grants.
pub async fn authenticate(state: &AppState, header: Option<&str>) -> Result<Caller, ApiError> {
    let token = valid_token(state, header).await?;
    let store = &state.store;
    if store
        .get(&top_level_path("User", &token.user))
        .await?
        .is_none()
    {
        return Err(auth_failure(
            state,
            "no_user",
            &format!(
                "user {:?} of token {} no longer exists (edge and workload credentials only work with `weft edge` and `weft sidecar`)",
                token.user, token.id
            ),
        ));
    }
    grants_of(store, &token.user).await
}

fn auth_failure(state: &AppState, reason: &'static str, message: &str) -> ApiError {
    state
        .metrics
        .auth_failures
        .get_or_create(&vec![("reason", reason)])
        .inc();
    ApiError::unauthenticated(message.to_string())
}

/// The live (known, unrevoked, unexpired) token a bearer header carries.
pub async fn valid_token(state: &AppState, header: Option<&str>) -> Result<TokenRecord, ApiError> {
    let fail = |reason: &'static str, message: &str| auth_failure(state, reason, message);
    let Some(header) = header else {
        return Err(fail("missing", "this request carries no token"));
    };
    let Some(secret) = header.strip_prefix("Bearer ").map(str::trim) else {
        return Err(fail(
            "malformed",
            "the Authorization header is not 'Bearer <token>'",
        ));
    };
    let store = &state.store;
    let Some(token) = store.token_by_hash(&hash_secret(secret)).await? else {
        return Err(fail("unknown", "the token is not recognized"));
    };
    if token.revoked_at.is_some() {
        return Err(fail("revoked", &format!("token {} was revoked", token.id)));
    }
    if token
        .expires_at
        .as_deref()
        .is_some_and(|at| at <= weft_store::now_rfc3339().as_str())
    {
        return Err(fail("expired", &format!("token {} has expired", token.id)));
    }
    Ok(token)
}

/// The user's teams and every grant that names them or their teams.
pub async fn grants_of(store: &Store, user: &str) -> Result<Caller, ApiError> {
    let teams: Vec<String> = store
        .list("Team")
        .await?
        .into_iter()
        .filter(|t| {
            serde_json::from_value::<TeamSpec>(t.resource.spec.clone())
                .is_ok_and(|s| s.members.iter().any(|m| m == user))
        })
        .map(|t| t.resource.metadata.name)
        .collect();
    let roles = store.list("Role").await?;
    let custom_rules = |name: &str| {
        roles
            .iter()
            .find(|r| r.resource.metadata.name == name)
            .and_then(|r| serde_json::from_value::<RoleSpec>(r.resource.spec.clone()).ok())
            .map(|spec| spec.rules)
    };
    let mut grants = Vec::new();
    for binding in store.list("AccessBinding").await? {
        let Ok(spec) = serde_json::from_value::<AccessBindingSpec>(binding.resource.spec.clone())
        else {
            continue;
        };
        let names_caller = spec.subjects.iter().any(|s| {
            s.user.as_deref() == Some(user) || s.team.as_ref().is_some_and(|t| teams.contains(t))
        });
        if !names_caller {
            continue;
        }
        let Some(rules) = builtin_rules(&spec.role).or_else(|| custom_rules(&spec.role)) else {
            continue;
        };
        grants.push(Grant {
            scope: binding.parent,
            role: spec.role,
            binding: binding.path,
            rules,
        });
    }
    Ok(Caller {
        user: user.to_string(),
        teams,
        grants,
    })
}

/// Refuses a change set that would leave no existing user with the admin
/// role at the top level (directly or through a team), so nobody can lock
/// the installation out of its own IAM. Checked on the state the change set
/// would leave; two concurrent changes could still each remove one of two
/// admins.
pub async fn check_someone_stays_admin(store: &Store, changes: &[Change]) -> Result<(), ApiError> {
    let iam_kinds = ["User", "Team", "AccessBinding"];
    let touches_iam = changes
        .iter()
        .any(|c| kind_of_path(c.path()).is_some_and(|k| iam_kinds.contains(&k.name)));
    if !touches_iam {
        return Ok(());
    }
    // path → (parent, spec) of every User, Team and AccessBinding after the change.
    let mut after: BTreeMap<String, (String, serde_json::Value)> = BTreeMap::new();
    for kind in iam_kinds {
        for stored in store.list(kind).await? {
            after.insert(stored.path, (stored.parent, stored.resource.spec));
        }
    }
    for change in changes {
        match change {
            Change::Put {
                path,
                parent,
                resource,
                ..
            } if iam_kinds.contains(&resource.kind.as_str()) => {
                after.insert(path.clone(), (parent.clone(), resource.spec.clone()));
            }
            Change::Delete { path, .. } => {
                after.remove(path);
            }
            Change::Put { .. } => {}
        }
    }
    let user_exists = |name: &str| after.contains_key(&top_level_path("User", name));
    let team_has_user = |name: &str| {
        after
            .get(&top_level_path("Team", name))
            .and_then(|(_, spec)| serde_json::from_value::<TeamSpec>(spec.clone()).ok())
            .is_some_and(|team| team.members.iter().any(|m| user_exists(m)))
    };
    let admin_remains = after.iter().any(|(path, (parent, spec))| {
        kind_of_path(path).is_some_and(|k| k.name == "AccessBinding")
            && parent.is_empty()
            && serde_json::from_value::<AccessBindingSpec>(spec.clone()).is_ok_and(|b| {
                b.role == "admin"
                    && b.subjects.iter().any(|s| {
                        s.user.as_deref().is_some_and(user_exists)
                            || s.team.as_deref().is_some_and(team_has_user)
                    })
            })
    });
    if admin_remains {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "this change would leave no user with the admin role at the top level, locking everyone out of IAM",
        )
        .with_hint("bind another user (or a team with members) to the admin role at the top level first"))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let caller = authenticate(state, header).await?;
        if let Some(slot) = parts.extensions.get::<CallerSlot>() {
            let _ = slot.0.set(caller.user.clone());
        }
        Ok(caller)
    }
}

/// Where the access log finds who made a request once it is answered.
#[derive(Clone, Default)]
pub struct CallerSlot(pub std::sync::Arc<std::sync::OnceLock<String>>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_cover_themselves_and_below_only() {
        assert!(covers("", "tenants/a"));
        assert!(covers("tenants/a", "tenants/a"));
        assert!(covers("tenants/a", "tenants/a/workspaces/w"));
        assert!(!covers("tenants/a", "tenants/ab"));
        assert!(!covers("tenants/a", ""));
    }

    #[test]
    fn secrets_are_random_and_hashes_fixed_length() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("weft_") && a.len() == 69);
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), a);
    }
}
