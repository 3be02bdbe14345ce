//! weft's configuration store on SQLite (embedded, the default) or
//! PostgreSQL (for several server replicas).
//!
//! One implementation serves both: the SQL is written once in the dialect
//! both accept (`$N` parameters, `RETURNING`, `ON CONFLICT`) and runs
//! through sqlx's `Any` driver.
//!
//! What it holds:
//! - `resources`: one row per resource, keyed by its hierarchical path, with
//!   the JSON document and the revision of its last change.
//! - `refs`: which resource names which (parents and spec references), so
//!   "the parent must exist" and "cannot delete what is still referenced"
//!   are one check, done inside the write transaction.
//! - `audit`: a hash-chained log of every change and refusal ([`audit`]).
//! - `tokens`: API tokens, stored only as hashes ([`tokens`]).
//! - `directory`: what each cluster's edge published about itself, with a
//!   revision counter of its own ([`directory`]).
//! - `meta`: the global revision and the audit chain's head. Every write
//!   transaction bumps the revision first, which takes the row lock: writers
//!   are serialized on both backends, so checks and the audit chain see a
//!   consistent order.

pub mod audit;
pub mod authorities;
pub mod backup;
pub mod directory;
pub mod edges;
pub mod schema;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tokens;
pub mod watch;

use std::collections::HashSet;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row, Transaction};
use weft_api::kinds::Kind;
use weft_api::{Reference, Resource, Validated};

pub use audit::{AuditEntry, AuditFilter, AuditRecord, ChainReport};
pub use authorities::RootAuthority;
pub use directory::DirectoryRow;
pub use edges::EdgeReport;
pub use schema::SchemaVersion;
pub use tokens::TokenRecord;
pub use watch::{ChangeEvent, Op};

/// Failures of the store, at the boundary to the management plane.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The change set was refused as a whole; nothing was written.
    #[error("{}", refusals.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; "))]
    Refused { refusals: Vec<Refusal> },
    /// The cause is the `source`, printed by whoever prints the chain.
    #[error("cannot open store {url}")]
    Open { url: String, source: sqlx::Error },
    #[error("store error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "the store's schema is version {found}, newer than this weft knows (up to {supported}): a newer release wrote it. \
         Run that release or a newer one, or restore a backup made by this one; the store was left as it was"
    )]
    NewerSchema { found: i64, supported: i64 },
    #[error("{0}")]
    Backup(String),
    #[error("cannot bring the store's schema up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A watcher asked for changes older than the store keeps.
    #[error(
        "changes after revision {since} are no longer kept (the oldest kept is {oldest}); list again and watch from the list's revision"
    )]
    Compacted { since: i64, oldest: i64 },
    #[error("corrupt stored document at {path}: {source}")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
}

/// Why one change of a change set was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Reason {
    /// The write was based on an older resource version.
    Stale,
    /// It was meant to create, and the resource exists.
    Exists,
    /// It was meant to change or delete, and the resource does not exist.
    Missing,
    /// It names a resource that does not exist.
    Dangling,
    /// It deletes a resource that others still name.
    Referenced,
    /// Two changes in one set are about the same resource, or a singleton
    /// kind would get a second resource.
    Duplicate,
}

/// One refused change: which (index in the change set), where, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub change: usize,
    pub path: String,
    pub field: String,
    pub reason: Reason,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.path, self.message)
        } else {
            write!(f, "{} {}: {}", self.path, self.field, self.message)
        }
    }
}

/// What a change expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Create or update.
    Any,
    /// Create only.
    Absent,
    /// Update or delete only.
    Present,
    /// Update or delete exactly this version.
    Version(i64),
}

/// One change of a change set.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "change sets are small and short-lived; boxing buys nothing"
)]
pub enum Change {
    Put {
        path: String,
        parent: String,
        resource: Resource,
        references: Vec<Reference>,
        expect: Expect,
    },
    Delete {
        path: String,
        expect: Expect,
    },
}

impl Change {
    /// Writes a validated document.
    pub fn put(validated: Validated, expect: Expect) -> Change {
        Change::Put {
            path: validated.path,
            parent: validated.parent,
            resource: validated.resource,
            references: validated.references,
            expect,
        }
    }

    pub fn path(&self) -> &str {
        match self {
            Change::Put { path, .. } | Change::Delete { path, .. } => path,
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    Deleted,
}

impl Outcome {
    /// The audit action for a change with this outcome.
    fn action(self) -> &'static str {
        match self {
            Outcome::Created => "create",
            Outcome::Updated | Outcome::Unchanged => "update",
            Outcome::Deleted => "delete",
        }
    }
}

/// The result of one change, with the resource before and after.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub path: String,
    pub kind: String,
    pub outcome: Outcome,
    pub before: Option<Resource>,
    pub after: Option<Resource>,
}

/// A resource as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub path: String,
    pub parent: String,
    pub version: i64,
    pub resource: Resource,
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// The latest revision this process committed; wakes its watchers.
    committed: std::sync::Arc<tokio::sync::watch::Sender<i64>>,
    /// Bumped when this process creates or revokes a token: tokens are not
    /// resources and do not move the revision.
    credentials_changed: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// The latest directory revision this process committed.
    directory_committed: std::sync::Arc<tokio::sync::watch::Sender<i64>>,
    /// Revisions of changes kept for watchers.
    change_retention: i64,
    schema: SchemaVersion,
}

/// The current time as RFC 3339 UTC with milliseconds; sorts as text.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Store {
    /// Opens (and creates, for SQLite) the store at `url`:
    /// `sqlite:///path/weft.db` or `postgres://user@host/db`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let open_error = |source| StoreError::Open {
            url: redact(url),
            source,
        };
        let sqlite = url.starts_with("sqlite:");
        let connect_url = if sqlite && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        } else {
            url.to_string()
        };
        // One direct connection first: a pool would retry until its timeout
        // and then report only that it timed out, hiding the cause.
        AnyConnection::connect(&connect_url)
            .await
            .map_err(open_error)?
            .close()
            .await
            .map_err(open_error)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL lets readers run beside the one writer; the busy
                        // timeout makes a second writer wait instead of fail.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 15000").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect(&connect_url)
            .await
            .map_err(open_error)?;
        let schema = schema::migrate(&pool).await?;
        if schema.migrated() {
            tracing::info!(
                store = %redact(url),
                from = schema.found,
                to = schema.now,
                "migrated the store's schema"
            );
        }
        Ok(Store {
            pool,
            committed: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
            credentials_changed: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
            directory_committed: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
            change_retention: watch::DEFAULT_RETENTION,
            schema,
        })
    }

    /// The schema version the store had when it opened, and has now.
    pub fn schema(&self) -> SchemaVersion {
        self.schema
    }

    /// Keeps changes of the last `revisions` revisions for watchers.
    pub fn with_change_retention(mut self, revisions: i64) -> Store {
        self.change_retention = revisions.max(1);
        self
    }

    /// Closes every connection (waiting for those in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The resource at `path`, if any.
    pub async fn get(&self, path: &str) -> Result<Option<Stored>, StoreError> {
        let row = sqlx::query("SELECT path, parent, version, body FROM resources WHERE path = $1")
            .bind(path)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| stored_from_row(&r)).transpose()
    }

    /// Every resource of `kind`, ordered by path.
    pub async fn list(&self, kind: &str) -> Result<Vec<Stored>, StoreError> {
        let rows = sqlx::query(
            "SELECT path, parent, version, body FROM resources WHERE kind = $1 ORDER BY path",
        )
        .bind(kind)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_from_row).collect()
    }

    /// The latest revision: it changes with every committed write.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT revision FROM meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Applies a change set atomically: every change is checked (expected
    /// versions, references, singletons), and either all are written with
    /// their audit entries or none is and every refusal is returned. With
    /// `dry_run` the same checks run and the transaction is rolled back.
    pub async fn apply(
        &self,
        changes: &[Change],
        actor: &str,
        dry_run: bool,
    ) -> Result<Vec<Applied>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let revision: i64 =
            sqlx::query("UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        let now = now_rfc3339();
        let mut refusals = Vec::new();
        let mut applied = Vec::with_capacity(changes.len());
        let mut seen = HashSet::new();
        for (i, change) in changes.iter().enumerate() {
            let path = change.path();
            let refuse = |reason, field: &str, message: String| Refusal {
                change: i,
                path: path.to_string(),
                field: field.to_string(),
                reason,
                message,
            };
            if !seen.insert(path.to_string()) {
                refusals.push(refuse(
                    Reason::Duplicate,
                    "",
                    "appears twice in one change set".into(),
                ));
                continue;
            }
            let current = fetch(&mut tx, path).await?;
            if let Some(refusal) = check_expectation(change, current.as_ref(), refuse) {
                refusals.push(refusal);
                continue;
            }
            match change {
                Change::Put {
                    parent,
                    resource,
                    references,
                    ..
                } => {
                    if let Some(refusal) = check_singleton(&mut tx, resource, path, refuse).await? {
                        refusals.push(refusal);
                        continue;
                    }
                    applied.push(
                        put(
                            &mut tx, path, parent, resource, references, current, revision, &now,
                        )
                        .await?,
                    );
                }
                Change::Delete { .. } => {
                    let kind = current.as_ref().and_then(|c| Kind::named(&c.resource.kind));
                    if let Some(kind) = kind.filter(|k| k.singleton) {
                        let message = format!(
                            "the {} is the root of the installation and cannot be deleted",
                            kind.name
                        );
                        refusals.push(refuse(Reason::Referenced, "", message));
                        continue;
                    }
                    sqlx::query("DELETE FROM resources WHERE path = $1")
                        .bind(path)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM refs WHERE source = $1")
                        .bind(path)
                        .execute(&mut *tx)
                        .await?;
                    let before = current.map(|c| c.resource);
                    applied.push(Applied {
                        path: path.to_string(),
                        kind: before.as_ref().map(|r| r.kind.clone()).unwrap_or_default(),
                        outcome: Outcome::Deleted,
                        before,
                        after: None,
                    });
                }
            }
        }
        // References are checked once every change is in place, so a change
        // set may create a parent and its children, or delete them, in any
        // order.
        if refusals.is_empty() {
            refusals = check_references(&mut tx, changes).await?;
        }
        if !refusals.is_empty() {
            tx.rollback().await?;
            return Err(StoreError::Refused { refusals });
        }
        for a in applied.iter().filter(|a| a.outcome != Outcome::Unchanged) {
            let record = AuditRecord {
                actor: actor.to_string(),
                action: a.outcome.action().to_string(),
                kind: a.kind.clone(),
                path: a.path.clone(),
                outcome: "ok".into(),
                message: String::new(),
                before: a.before.as_ref().map(to_json),
                after: a.after.as_ref().map(to_json),
            };
            audit::append(&mut tx, &record).await?;
        }
        watch::record(&mut tx, revision, self.change_retention, &applied).await?;
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
            self.committed.send_replace(revision);
        }
        Ok(applied)
    }
}

fn check_expectation(
    change: &Change,
    current: Option<&Stored>,
    refuse: impl Fn(Reason, &str, String) -> Refusal,
) -> Option<Refusal> {
    let expect = match change {
        Change::Put { expect, .. } | Change::Delete { expect, .. } => *expect,
    };
    let is_delete = matches!(change, Change::Delete { .. });
    match (expect, current) {
        (Expect::Absent, Some(c)) => Some(refuse(
            Reason::Exists,
            "",
            format!("already exists (version {})", c.version),
        )),
        (Expect::Present | Expect::Version(_), None) => {
            Some(refuse(Reason::Missing, "", "does not exist".into()))
        }
        (Expect::Any, None) if is_delete => {
            Some(refuse(Reason::Missing, "", "does not exist".into()))
        }
        (Expect::Version(v), Some(c)) if v != c.version => Some(refuse(
            Reason::Stale,
            "metadata.resourceVersion",
            format!(
                "the change is based on version {v}, but the resource is at version {}: it changed since; get it again and reapply",
                c.version
            ),
        )),
        _ => None,
    }
}

async fn check_singleton(
    tx: &mut Transaction<'_, Any>,
    resource: &Resource,
    path: &str,
    refuse: impl Fn(Reason, &str, String) -> Refusal,
) -> Result<Option<Refusal>, StoreError> {
    if !Kind::named(&resource.kind).is_some_and(|k| k.singleton) {
        return Ok(None);
    }
    let other = sqlx::query("SELECT path FROM resources WHERE kind = $1 AND path <> $2")
        .bind(&resource.kind)
        .bind(path)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(other.map(|row| {
        let existing: String = row.get(0);
        refuse(
            Reason::Duplicate,
            "metadata.name",
            format!(
                "there is one {} per installation and it is {existing}",
                resource.kind
            ),
        )
    }))
}

#[allow(clippy::too_many_arguments)]
async fn put(
    tx: &mut Transaction<'_, Any>,
    path: &str,
    parent: &str,
    resource: &Resource,
    references: &[Reference],
    current: Option<Stored>,
    revision: i64,
    now: &str,
) -> Result<Applied, StoreError> {
    let desired = resource.desired();
    let before = current.as_ref().map(|c| c.resource.clone());
    if let Some(current) = &current
        && current.resource.desired() == desired
    {
        return Ok(Applied {
            path: path.to_string(),
            kind: desired.kind.clone(),
            outcome: Outcome::Unchanged,
            before: before.clone(),
            after: before,
        });
    }
    let mut stored = desired;
    stored.metadata.resource_version = Some(revision.to_string());
    stored.metadata.created_at = Some(
        before
            .as_ref()
            .and_then(|b| b.metadata.created_at.clone())
            .unwrap_or_else(|| now.to_string()),
    );
    stored.metadata.updated_at = Some(now.to_string());
    stored.status = before.as_ref().and_then(|b| b.status.clone());
    let body = serde_json::to_string(&stored).expect("a resource serializes");
    sqlx::query(
        "INSERT INTO resources (path, kind, parent, version, body) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (path) DO UPDATE SET version = excluded.version, body = excluded.body",
    )
    .bind(path)
    .bind(&stored.kind)
    .bind(parent)
    .bind(revision)
    .bind(body)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM refs WHERE source = $1")
        .bind(path)
        .execute(&mut **tx)
        .await?;
    for reference in references {
        sqlx::query("INSERT INTO refs (source, field, target) VALUES ($1, $2, $3)")
            .bind(path)
            .bind(&reference.field)
            .bind(&reference.target)
            .execute(&mut **tx)
            .await?;
    }
    Ok(Applied {
        path: path.to_string(),
        kind: stored.kind.clone(),
        outcome: if before.is_some() {
            Outcome::Updated
        } else {
            Outcome::Created
        },
        before,
        after: Some(stored),
    })
}

async fn check_references(
    tx: &mut Transaction<'_, Any>,
    changes: &[Change],
) -> Result<Vec<Refusal>, StoreError> {
    let mut refusals = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        match change {
            Change::Put {
                path, references, ..
            } => {
                for reference in references {
                    if fetch(tx, &reference.target).await?.is_none() {
                        refusals.push(Refusal {
                            change: i,
                            path: path.clone(),
                            field: reference.field.clone(),
                            reason: Reason::Dangling,
                            message: format!("{} does not exist", reference.target),
                        });
                    }
                }
            }
            Change::Delete { path, .. } => {
                let rows =
                    sqlx::query("SELECT source, field FROM refs WHERE target = $1 ORDER BY source")
                        .bind(path)
                        .fetch_all(&mut **tx)
                        .await?;
                if !rows.is_empty() {
                    let by: Vec<String> = rows
                        .iter()
                        .map(|r| format!("{} ({})", r.get::<String, _>(0), r.get::<String, _>(1)))
                        .collect();
                    refusals.push(Refusal {
                        change: i,
                        path: path.clone(),
                        field: String::new(),
                        reason: Reason::Referenced,
                        message: format!(
                            "cannot be deleted while other resources name it; delete or change them first: {}",
                            by.join(", ")
                        ),
                    });
                }
            }
        }
    }
    Ok(refusals)
}

async fn fetch(tx: &mut Transaction<'_, Any>, path: &str) -> Result<Option<Stored>, StoreError> {
    let row = sqlx::query("SELECT path, parent, version, body FROM resources WHERE path = $1")
        .bind(path)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(|r| stored_from_row(&r)).transpose()
}

fn stored_from_row(row: &sqlx::any::AnyRow) -> Result<Stored, StoreError> {
    let path: String = row.try_get(0)?;
    let body: String = row.try_get(3)?;
    let resource = serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
        path: path.clone(),
        source,
    })?;
    Ok(Stored {
        parent: row.try_get(1)?,
        version: row.try_get(2)?,
        path,
        resource,
    })
}

fn to_json(resource: &Resource) -> serde_json::Value {
    serde_json::to_value(resource).expect("a resource serializes")
}

/// The URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
