//! The organization's root CAs. The signing root is the oldest one not
//! retired; every root not retired is in the trust bundle, so a new root
//! can be added, trusted everywhere, and only then made the signer.
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
    pub retired_at: Option<String>,
}

/// Never shows the key.
impl std::fmt::Debug for RootAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootAuthority")
            .field("id", &self.id)
            .field("trust_domain", &self.trust_domain)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Adds a root; a root with the same id is left as it is.
    pub async fn add_root_authority(&self, root: &RootAuthority) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO root_authorities (id, trust_domain, cert_pem, key_pem, created_at, retired_at)
             VALUES ($1, $2, $3, $4, $5, NULL) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&root.id)
        .bind(&root.trust_domain)
        .bind(&root.cert_pem)
        .bind(&root.key_pem)
        .bind(&root.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Roots not retired, oldest first.
    pub async fn root_authorities(&self) -> Result<Vec<RootAuthority>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, trust_domain, cert_pem, key_pem, created_at, retired_at
             FROM root_authorities WHERE retired_at IS NULL ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RootAuthority {
                    id: r.try_get(0)?,
                    trust_domain: r.try_get(1)?,
                    cert_pem: r.try_get(2)?,
                    key_pem: r.try_get(3)?,
                    created_at: r.try_get(4)?,
                    retired_at: r.try_get(5)?,
                })
            })
            .collect()
    }
}
