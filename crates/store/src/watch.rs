//! The change feed: what changed at which revision, for watchers.
//!
//! Every committed change set writes one row per changed resource to
//! `changes`, in the same transaction, at the set's revision. Revisions
//! commit in order (the `meta` row lock), so reading `(since, upto]` never
//! misses a change. Only the last [`Store::change_retention`] revisions are
//! kept; a watcher further behind is told to list again.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};

use crate::{Applied, Outcome, Store, StoreError};

/// How often a waiting watcher looks for commits made by other server
/// replicas (its own replica's commits wake it at once).
const POLL: Duration = Duration::from_secs(1);

/// Revisions of changes kept for watchers by default.
pub const DEFAULT_RETENTION: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Delete,
}

/// One changed resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub revision: i64,
    pub op: Op,
    pub kind: String,
    pub path: String,
}

/// Records the changes of a change set inside its transaction and drops
/// what is past retention.
pub(crate) async fn record(
    tx: &mut Transaction<'_, Any>,
    revision: i64,
    retention: i64,
    applied: &[Applied],
) -> Result<(), StoreError> {
    for a in applied.iter().filter(|a| a.outcome != Outcome::Unchanged) {
        let op = if a.outcome == Outcome::Deleted {
            "delete"
        } else {
            "put"
        };
        sqlx::query("INSERT INTO changes (revision, path, kind, op) VALUES ($1, $2, $3, $4)")
            .bind(revision)
            .bind(&a.path)
            .bind(&a.kind)
            .bind(op)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("DELETE FROM changes WHERE revision <= $1")
        .bind(revision - retention)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    /// Changes with `since < revision <= upto`, oldest first. Fails with
    /// [`StoreError::Compacted`] if changes after `since` were dropped.
    pub async fn changes_since(
        &self,
        since: i64,
        upto: i64,
    ) -> Result<Vec<ChangeEvent>, StoreError> {
        let oldest_kept = upto - self.change_retention + 1;
        if since + 1 < oldest_kept {
            return Err(StoreError::Compacted {
                since,
                oldest: oldest_kept,
            });
        }
        let rows = sqlx::query(
            "SELECT revision, op, kind, path FROM changes WHERE revision > $1 AND revision <= $2 ORDER BY revision, path",
        )
        .bind(since)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let op: String = row.try_get(1)?;
                Ok(ChangeEvent {
                    revision: row.try_get(0)?,
                    op: if op == "delete" { Op::Delete } else { Op::Put },
                    kind: row.try_get(2)?,
                    path: row.try_get(3)?,
                })
            })
            .collect()
    }

    /// Waits until the revision is past `after`, and returns it.
    pub async fn wait_for_change(&self, after: i64) -> Result<i64, StoreError> {
        let mut committed = self.committed.subscribe();
        loop {
            let revision = self.revision().await?;
            if revision > after {
                return Ok(revision);
            }
            tokio::select! {
                _ = committed.changed() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
}
