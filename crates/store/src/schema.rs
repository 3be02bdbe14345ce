//! The store's schema versions: ordered, forward-only migrations run by
//! sqlx's migrator when a store opens.
//!
//! A migration, once released, is never edited: the migrator keeps each
//! one's checksum and refuses a store whose record disagrees. A store
//! written by a newer release (a version this one does not know) is
//! refused before anything is written, so an accidental downgrade cannot
//! misread it. On PostgreSQL the migrator holds an advisory lock while it
//! checks and migrates, so replicas starting together migrate once.

use std::borrow::Cow;

use sqlx::migrate::{Migrate, Migration, MigrationType, Migrator};
use sqlx::{AnyPool, SqlSafeStr};

use crate::StoreError;

/// Every schema version, oldest first: (version, description, SQL). The
/// SQL is written once for both backends, as the rest of the store.
const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "initial", include_str!("../migrations/0001_initial.sql"))];

/// The table where the migrator records what it applied.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// What opening a store did to its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaVersion {
    /// The version the store had; None for a new store or one written
    /// before the store had versions.
    pub found: Option<i64>,
    /// The version it has now: this release's.
    pub now: i64,
}

impl SchemaVersion {
    pub fn migrated(&self) -> bool {
        self.found != Some(self.now)
    }
}

/// The newest schema version this release writes.
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |(version, _, _)| *version)
}

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Brings the schema of the store behind `pool` to [`latest`], or refuses
/// a newer one without writing to it.
pub(crate) async fn migrate(pool: &AnyPool) -> Result<SchemaVersion, StoreError> {
    let migrator = migrator();
    let mut conn = pool.acquire().await?;
    conn.lock().await?;
    let result = async {
        conn.ensure_migrations_table(MIGRATIONS_TABLE).await?;
        let applied = conn.list_applied_migrations(MIGRATIONS_TABLE).await?;
        let found = applied.iter().map(|m| m.version).max();
        if let Some(newer) = applied
            .iter()
            .map(|m| m.version)
            .filter(|v| !migrator.version_exists(*v))
            .max()
        {
            return Err(StoreError::NewerSchema {
                found: newer,
                supported: latest(),
            });
        }
        migrator.run_direct(None, &mut *conn, false).await?;
        Ok(SchemaVersion {
            found,
            now: latest(),
        })
    }
    .await;
    // The lock is the session's on PostgreSQL: give it back even when the
    // migration failed, or the next replica would wait for this one.
    let unlocked = conn.unlock().await;
    let version = result?;
    unlocked?;
    Ok(version)
}
