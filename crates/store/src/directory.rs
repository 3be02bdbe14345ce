//! The global directory as the server keeps it: one row per item an edge
//! published about its own cluster (its site, each of its services), as
//! JSON the store does not interpret.
//!
//! The directory has a revision counter of its own (`directory_meta`), so
//! edges publishing do not move the configuration revision and wake every
//! configuration long poll. Each publication takes the counter's row lock
//! first: revisions commit in order, and `rows_since` never misses one.
//! An item that is gone keeps its row with no body (a tombstone) at the
//! revision it went, so followers learn of removals; the rows are bounded
//! by the items that ever existed, and an item that comes back reuses its
//! row.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::Row;

use crate::{Store, StoreError};

/// How often a waiting follower looks for publications through other
/// server replicas (this replica's wake it at once).
const POLL: Duration = Duration::from_secs(1);

/// One directory item, or its tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryRow {
    pub cluster: String,
    pub item: String,
    /// JSON; none: the item is gone.
    pub body: Option<String>,
    pub revision: i64,
}

impl Store {
    /// Makes `items` (key → JSON) the whole of `cluster`'s entry: changed
    /// and new items are written, missing ones become tombstones, all at
    /// one new revision. Returns that revision and the number of rows
    /// written, or None when nothing differs (nothing is written then, so
    /// an edge that publishes again after reconnecting costs one read).
    pub async fn publish_directory(
        &self,
        cluster: &str,
        items: &BTreeMap<String, String>,
    ) -> Result<Option<(i64, usize)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The lock first: two publications of one cluster (two server
        // replicas) cannot interleave their reads and writes.
        let revision: i64 = sqlx::query(
            "UPDATE directory_meta SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let rows = sqlx::query("SELECT item, body FROM directory WHERE cluster = $1")
            .bind(cluster)
            .fetch_all(&mut *tx)
            .await?;
        let mut current = BTreeMap::new();
        for row in &rows {
            let item: String = row.try_get(0)?;
            let body: Option<String> = row.try_get(1)?;
            current.insert(item, body);
        }
        let mut writes: Vec<(&str, Option<&str>)> = Vec::new();
        for (item, body) in items {
            if current.get(item).map(Option::as_deref) != Some(Some(body.as_str())) {
                writes.push((item, Some(body)));
            }
        }
        for (item, body) in &current {
            if body.is_some() && !items.contains_key(item) {
                writes.push((item, None));
            }
        }
        if writes.is_empty() {
            tx.rollback().await?;
            return Ok(None);
        }
        for (item, body) in &writes {
            sqlx::query(
                "INSERT INTO directory (cluster, item, body, revision) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (cluster, item) DO UPDATE SET body = excluded.body, revision = excluded.revision",
            )
            .bind(cluster)
            .bind(*item)
            .bind(*body)
            .bind(revision)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.directory_committed.send_replace(revision);
        Ok(Some((revision, writes.len())))
    }

    /// Withdraws everything `cluster` published (its Cluster is gone).
    pub async fn withdraw_directory(&self, cluster: &str) -> Result<Option<i64>, StoreError> {
        self.publish_directory(cluster, &BTreeMap::new())
            .await
            .map(|published| published.map(|(revision, _)| revision))
    }

    /// The latest directory revision.
    pub async fn directory_revision(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT revision FROM directory_meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Rows written after `since`, tombstones included; with `since` 0,
    /// every live item. Ordered by revision.
    pub async fn directory_since(&self, since: i64) -> Result<Vec<DirectoryRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT cluster, item, body, revision FROM directory
             WHERE revision > $1 AND (body IS NOT NULL OR $1 > 0)
             ORDER BY revision, cluster, item",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DirectoryRow {
                    cluster: r.try_get(0)?,
                    item: r.try_get(1)?,
                    body: r.try_get(2)?,
                    revision: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Waits until the directory revision is past `after`; returns it.
    pub async fn wait_for_directory(&self, after: i64) -> Result<i64, StoreError> {
        let mut committed = self.directory_committed.subscribe();
        loop {
            let revision = self.directory_revision().await?;
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
