//! The audit log: every change and every refused attempt, hash-chained.
//!
//! Each entry's hash covers its own stored columns and the previous entry's
//! hash, so editing or deleting an entry breaks the chain from there on.
//! The newest hash and count are kept in `meta` too, so cutting entries off
//! the end is caught as well. Copy the head hash somewhere else now and then
//! (`weft audit verify` prints it) to catch a rewrite of the whole chain.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Any, Row, Transaction};

use crate::{Store, StoreError, now_rfc3339};

/// The hash before the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What to record.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub actor: String,
    /// `create`, `update`, `delete`, `token.create`, `token.revoke`, or the
    /// verb of a refused attempt.
    pub action: String,
    pub kind: String,
    pub path: String,
    /// `ok` or `denied`.
    pub outcome: String,
    pub message: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// A recorded entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub kind: String,
    pub path: String,
    pub outcome: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
    pub hash: String,
}

/// Which entries to read; all fields narrow.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    /// The path or anything below it.
    pub path: Option<String>,
    pub actor: Option<String>,
    /// At most this many, the newest.
    pub limit: i64,
}

/// The result of checking the whole chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainReport {
    pub entries: i64,
    pub head: String,
    pub intact: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

struct Columns<'a> {
    seq: i64,
    at: &'a str,
    actor: &'a str,
    action: &'a str,
    kind: &'a str,
    path: &'a str,
    outcome: &'a str,
    message: &'a str,
    before: Option<&'a str>,
    after: Option<&'a str>,
    prev: &'a str,
}

/// Length-prefixed, so no two different entries hash the same input.
fn entry_hash(c: &Columns) -> String {
    let mut hasher = Sha256::new();
    let seq = c.seq.to_string();
    let fields = [
        Some(seq.as_str()),
        Some(c.at),
        Some(c.actor),
        Some(c.action),
        Some(c.kind),
        Some(c.path),
        Some(c.outcome),
        Some(c.message),
        c.before,
        c.after,
        Some(c.prev),
    ];
    for field in fields {
        match field {
            Some(text) => {
                hasher.update((text.len() as u64).to_be_bytes());
                hasher.update(text.as_bytes());
            }
            None => hasher.update(u64::MAX.to_be_bytes()),
        }
    }
    hex::encode(hasher.finalize())
}

/// Appends an entry inside `tx`; the `meta` row lock orders the chain.
pub(crate) async fn append(
    tx: &mut Transaction<'_, Any>,
    record: &AuditRecord,
) -> Result<(), StoreError> {
    let row = sqlx::query(
        "UPDATE meta SET audit_seq = audit_seq + 1 WHERE id = 1 RETURNING audit_seq, audit_head",
    )
    .fetch_one(&mut **tx)
    .await?;
    let seq: i64 = row.try_get(0)?;
    let head: String = row.try_get(1)?;
    let prev = if head.is_empty() {
        GENESIS.to_string()
    } else {
        head
    };
    let at = now_rfc3339();
    let before = record.before.as_ref().map(|v| v.to_string());
    let after = record.after.as_ref().map(|v| v.to_string());
    let hash = entry_hash(&Columns {
        seq,
        at: &at,
        actor: &record.actor,
        action: &record.action,
        kind: &record.kind,
        path: &record.path,
        outcome: &record.outcome,
        message: &record.message,
        before: before.as_deref(),
        after: after.as_deref(),
        prev: &prev,
    });
    sqlx::query(
        "INSERT INTO audit (seq, at, actor, action, kind, path, outcome, message, before, after, prev, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(seq)
    .bind(&at)
    .bind(&record.actor)
    .bind(&record.action)
    .bind(&record.kind)
    .bind(&record.path)
    .bind(&record.outcome)
    .bind(&record.message)
    .bind(before)
    .bind(after)
    .bind(&prev)
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE meta SET audit_head = $1 WHERE id = 1")
        .bind(&hash)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

macro_rules! entry_columns {
    () => {
        "seq, at, actor, action, kind, path, outcome, message, before, after, prev, hash"
    };
}

impl Store {
    /// Records something on its own, such as a refused attempt.
    pub async fn record(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        append(&mut tx, record).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Entries matching `filter`, oldest first.
    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let path_below = filter.path.as_ref().map(|p| format!("{p}/%"));
        let rows = sqlx::query(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM audit
             WHERE ($1 IS NULL OR at >= $1) AND ($2 IS NULL OR at < $2)
               AND ($3 IS NULL OR path = $3 OR path LIKE $4) AND ($5 IS NULL OR actor = $5)
             ORDER BY seq DESC LIMIT $6"
        ))
        .bind(&filter.since)
        .bind(&filter.until)
        .bind(&filter.path)
        .bind(path_below)
        .bind(&filter.actor)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        let mut entries = rows
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        entries.reverse();
        Ok(entries)
    }

    /// One entry by its number.
    pub async fn audit_entry(&self, seq: i64) -> Result<Option<AuditEntry>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM audit WHERE seq = $1"
        ))
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(entry_from_row).transpose()
    }

    /// Recomputes the whole chain and compares it with the recorded head.
    pub async fn verify_audit(&self) -> Result<ChainReport, StoreError> {
        const PAGE: i64 = 1000;
        let meta = sqlx::query("SELECT audit_seq, audit_head FROM meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        let recorded_count: i64 = meta.try_get(0)?;
        let recorded_head: String = meta.try_get(1)?;
        let mut prev = GENESIS.to_string();
        let mut expected_seq = 1;
        let broken = |problem: String, entries| ChainReport {
            entries,
            head: recorded_head.clone(),
            intact: false,
            problem: Some(problem),
        };
        loop {
            let rows = sqlx::query(concat!(
                "SELECT ",
                entry_columns!(),
                " FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2"
            ))
            .bind(expected_seq)
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            for row in &rows {
                let seq: i64 = row.try_get(0)?;
                if seq != expected_seq {
                    return Ok(broken(
                        format!("entry {expected_seq} is missing"),
                        expected_seq - 1,
                    ));
                }
                let texts: Vec<Option<String>> =
                    (1..12).map(|i| row.try_get(i)).collect::<Result<_, _>>()?;
                let text = |i: usize| texts[i - 1].as_deref().unwrap_or_default();
                let stored_prev = text(10);
                let computed = entry_hash(&Columns {
                    seq,
                    at: text(1),
                    actor: text(2),
                    action: text(3),
                    kind: text(4),
                    path: text(5),
                    outcome: text(6),
                    message: text(7),
                    before: texts[7].as_deref(),
                    after: texts[8].as_deref(),
                    prev: stored_prev,
                });
                if stored_prev != prev || computed != text(11) {
                    return Ok(broken(
                        format!("entry {seq} was altered or an entry before it was removed"),
                        seq,
                    ));
                }
                prev = computed;
                expected_seq += 1;
            }
            if (rows.len() as i64) < PAGE {
                break;
            }
        }
        let count = expected_seq - 1;
        if count != recorded_count || (count > 0 && prev != recorded_head) {
            return Ok(broken(
                format!(
                    "the log ends at entry {count}, but {recorded_count} entries were recorded"
                ),
                count,
            ));
        }
        Ok(ChainReport {
            entries: count,
            head: if count == 0 {
                GENESIS.to_string()
            } else {
                prev
            },
            intact: true,
            problem: None,
        })
    }
}

fn entry_from_row(row: &sqlx::any::AnyRow) -> Result<AuditEntry, StoreError> {
    let json = |i: usize| -> Result<Option<serde_json::Value>, StoreError> {
        let text: Option<String> = row.try_get(i)?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    };
    Ok(AuditEntry {
        seq: row.try_get(0)?,
        at: row.try_get(1)?,
        actor: row.try_get(2)?,
        action: row.try_get(3)?,
        kind: row.try_get(4)?,
        path: row.try_get(5)?,
        outcome: row.try_get(6)?,
        message: row.try_get(7)?,
        before: json(8)?,
        after: json(9)?,
        hash: row.try_get(11)?,
    })
}
