//! The organization's root CAs. Every root not retired is in the trust
//! bundle; the signer is the one activated last (the oldest if none was).
//! So a new root is added (trusted everywhere, signing nothing), then
//! activated (signs), and the old one retired (trusted no more): a
//! rotation without a moment where a valid certificate is not trusted.
//!
//! The root's private key is kept here so that every server replica can
//! sign: whoever can read the store can mint identities. Keep the store
//! (the SQLite file, or the PostgreSQL database) as private as the key.

use sqlx::Row;

use crate::{Store, StoreError};

/// One root CA, PEM.
#[derive(Clone)]
pub struct RootAuthority {
    /// The certificate's SHA-256 fingerprint, hex.
    pub id: String,
    pub trust_domain: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub created_at: String,
    /// When it was made the signer.
    pub activated_at: Option<String>,
    pub retired_at: Option<String>,
}

/// Never shows the key.
impl std::fmt::Debug for RootAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootAuthority")
            .field("id", &self.id)
            .field("trust_domain", &self.trust_domain)
            .field("created_at", &self.created_at)
            .field("activated_at", &self.activated_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Adds a root; a root with the same id is left as it is.
    pub async fn add_root_authority(&self, root: &RootAuthority) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO root_authorities (id, trust_domain, cert_pem, key_pem, created_at, activated_at, retired_at)
             VALUES ($1, $2, $3, $4, $5, $6, NULL) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&root.id)
        .bind(&root.trust_domain)
        .bind(&root.cert_pem)
        .bind(&root.key_pem)
        .bind(&root.created_at)
        .bind(&root.activated_at)
        .execute(&self.pool)
        .await?;
        self.credentials_changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Roots not retired, oldest first.
    pub async fn root_authorities(&self) -> Result<Vec<RootAuthority>, StoreError> {
        self.select_roots(
            "SELECT id, trust_domain, cert_pem, key_pem, created_at, activated_at, retired_at
             FROM root_authorities WHERE retired_at IS NULL ORDER BY created_at, id",
        )
        .await
    }

    /// Every root, retired ones too, oldest first.
    pub async fn all_root_authorities(&self) -> Result<Vec<RootAuthority>, StoreError> {
        self.select_roots(
            "SELECT id, trust_domain, cert_pem, key_pem, created_at, activated_at, retired_at
             FROM root_authorities ORDER BY created_at, id",
        )
        .await
    }

    async fn select_roots(&self, query: &'static str) -> Result<Vec<RootAuthority>, StoreError> {
        let rows = sqlx::query(query).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(RootAuthority {
                    id: r.try_get(0)?,
                    trust_domain: r.try_get(1)?,
                    cert_pem: r.try_get(2)?,
                    key_pem: r.try_get(3)?,
                    created_at: r.try_get(4)?,
                    activated_at: r.try_get(5)?,
                    retired_at: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// Makes a root not retired the signer; false if there is no such root.
    pub async fn activate_root_authority(&self, id: &str) -> Result<bool, StoreError> {
        self.stamp_root(
            "UPDATE root_authorities SET activated_at = $1 WHERE id = $2 AND retired_at IS NULL",
            id,
        )
        .await
    }

    /// Retires a root: it is trusted no more. False if there is no such
    /// root not retired.
    pub async fn retire_root_authority(&self, id: &str) -> Result<bool, StoreError> {
        self.stamp_root(
            "UPDATE root_authorities SET retired_at = $1 WHERE id = $2 AND retired_at IS NULL",
            id,
        )
        .await
    }

    /// Sets a timestamp of root `id` with `query` (now, then the id), and
    /// wakes edges; whether a root was changed.
    async fn stamp_root(&self, query: &'static str, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(query)
            .bind(crate::now_rfc3339())
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.credentials_changed.send_modify(|n| *n += 1);
        Ok(done.rows_affected() == 1)
    }
}
