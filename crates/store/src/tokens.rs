//! API tokens. Only a hash of each secret is stored; creating and revoking
//! are audited in the same transaction.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::audit::{AuditRecord, append};
use crate::{Store, StoreError};

/// A token without its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    pub user: String,
    pub description: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

macro_rules! token_columns {
    () => {
        "id, user_name, description, created_at, expires_at, revoked_at"
    };
}

fn token_audit(actor: &str, action: &str, token: &TokenRecord) -> AuditRecord {
    AuditRecord {
        actor: actor.to_string(),
        action: action.to_string(),
        kind: "User".into(),
        path: format!("users/{}", token.user),
        outcome: "ok".into(),
        message: format!("token {}", token.id),
        before: None,
        after: None,
    }
}

impl Store {
    /// Stores a new token by the hash of its secret.
    pub async fn create_token(
        &self,
        token: &TokenRecord,
        secret_hash: &str,
        actor: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO tokens (id, hash, user_name, description, created_at, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(&token.id)
        .bind(secret_hash)
        .bind(&token.user)
        .bind(&token.description)
        .bind(&token.created_at)
        .bind(&token.expires_at)
        .execute(&mut *tx)
        .await?;
        append(&mut tx, &token_audit(actor, "token.create", token)).await?;
        tx.commit().await?;
        self.credentials_changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Changes when this process creates or revokes a token, or changes
    /// the root CAs (what edges get besides resources). Other server
    /// replicas' writes do not show here; poll for those.
    pub fn credential_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.credentials_changed.subscribe()
    }

    /// The token whose secret hashes to `secret_hash`, revoked or not.
    pub async fn token_by_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM tokens WHERE hash = $1"
        ))
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| token_from_row(&r)).transpose()
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| token_from_row(&r)).transpose()
    }

    /// Tokens of one user, or of everyone, oldest first.
    pub async fn list_tokens(&self, user: Option<&str>) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM tokens WHERE ($1 IS NULL OR user_name = $1) ORDER BY created_at, id"
        ))
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Tokens whose principal starts with `prefix`, with their secret
    /// hashes: what an edge needs to check workload credentials offline.
    pub async fn tokens_with_hashes(
        &self,
        prefix: &str,
    ) -> Result<Vec<(TokenRecord, String)>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            ", hash FROM tokens WHERE substr(user_name, 1, $1) = $2 ORDER BY id"
        ))
        .bind(prefix.chars().count() as i64)
        .bind(prefix)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((token_from_row(r)?, r.try_get(6)?)))
            .collect()
    }

    /// Marks a token revoked; returns false if it was already revoked.
    pub async fn revoke_token(
        &self,
        token: &TokenRecord,
        at: &str,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let changed =
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(at)
                .bind(&token.id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if changed > 0 {
            append(&mut tx, &token_audit(actor, "token.revoke", token)).await?;
        }
        tx.commit().await?;
        if changed > 0 {
            self.credentials_changed.send_modify(|n| *n += 1);
        }
        Ok(changed > 0)
    }
}

fn token_from_row(row: &sqlx::any::AnyRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: row.try_get(0)?,
        user: row.try_get(1)?,
        description: row.try_get(2)?,
        created_at: row.try_get(3)?,
        expires_at: row.try_get(4)?,
        revoked_at: row.try_get(5)?,
    })
}
