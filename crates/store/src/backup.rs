//! Backups of the embedded (SQLite) store: a consistent copy taken while
//! a server writes, and a restore into a new data directory. A backup
//! holds everything the store does, secrets included (the root CAs'
//! keys), so it is written readable by its owner only. PostgreSQL stores
//! are backed up with PostgreSQL's own tools (`pg_dump`).

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sqlx::any::install_default_drivers;
use sqlx::{AnyConnection, Connection, Executor, Row};

use crate::{Store, StoreError};

/// What a backup or a restore copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// The store's revision in the copy.
    pub revision: i64,
    pub resources: i64,
    pub audit_entries: i64,
    pub bytes: u64,
}

fn failed(what: impl Into<String>) -> StoreError {
    StoreError::Backup(what.into())
}

/// Creates `path` empty and readable by its owner only; refuses to
/// replace anything.
fn create_private(path: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| failed(format!("cannot create {}: {e}", path.display())))
}

/// Counts in the SQLite store at `path`, read without changing it.
async fn count(path: &Path) -> Result<Copied, StoreError> {
    install_default_drivers();
    let url = format!("sqlite://{}?mode=ro&immutable=1", path.display());
    let mut conn = AnyConnection::connect(&url).await?;
    let number = async |conn: &mut AnyConnection, sql: &'static str| -> Result<i64, StoreError> {
        Ok(sqlx::query(sql).fetch_one(conn).await?.try_get(0)?)
    };
    let copied = Copied {
        revision: number(&mut conn, "SELECT revision FROM meta WHERE id = 1").await?,
        resources: number(&mut conn, "SELECT COUNT(*) FROM resources").await?,
        audit_entries: number(&mut conn, "SELECT COUNT(*) FROM audit").await?,
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    };
    conn.close().await?;
    Ok(copied)
}

/// Writes a consistent copy of the SQLite store file `source` to `target`
/// (0600; it must not exist). Safe while a server writes: the copy is one
/// read transaction.
pub async fn backup(source: &Path, target: &Path) -> Result<Copied, StoreError> {
    if !source.is_file() {
        return Err(failed(format!(
            "no embedded store at {} (a PostgreSQL store is backed up with pg_dump: \
             README, Installing and upgrading)",
            source.display()
        )));
    }
    create_private(target)?;
    let result = async {
        install_default_drivers();
        let mut conn = AnyConnection::connect(&format!("sqlite://{}", source.display())).await?;
        conn.execute("PRAGMA busy_timeout = 15000").await?;
        // SQLite writes into an existing file only when it is empty: the
        // one just made, with its owner-only mode.
        sqlx::query("VACUUM INTO $1")
            .bind(target.display().to_string())
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        count(target).await
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(target);
    }
    result
}

/// Restores the backup at `backup` as the store of the data directory
/// `data` (`data/weft.db`, which must not exist), migrated to this
/// release's schema, after checking that its audit chain is intact.
/// Nothing is left behind on failure.
pub async fn restore(backup: &Path, data: &Path) -> Result<Copied, StoreError> {
    let target = data.join("weft.db");
    if target.exists() {
        return Err(failed(format!(
            "{} exists: restore into a new data directory",
            target.display()
        )));
    }
    let found = count(backup).await.map_err(|e| {
        failed(format!(
            "{} is not a weft store backup: {e}",
            backup.display()
        ))
    })?;
    std::fs::create_dir_all(data)
        .map_err(|e| failed(format!("cannot create {}: {e}", data.display())))?;
    let partial = data.join("weft.db.restoring");
    let result = async {
        let mut file = create_private(&partial)?;
        std::fs::File::open(backup)
            .and_then(|mut source| std::io::copy(&mut source, &mut file))
            .and_then(|_| file.sync_all())
            .map_err(|e| failed(format!("cannot copy {}: {e}", backup.display())))?;
        let store = Store::open(&format!("sqlite://{}", partial.display())).await?;
        let chain = store.verify_audit().await?;
        store.close().await;
        // The last connection folds the write-ahead log into the file and
        // removes it; a log left over would not follow the rename.
        if Path::new(&format!("{}-wal", partial.display())).exists() {
            return Err(failed(
                "the restored store kept a write-ahead log; not restored",
            ));
        }
        if !chain.intact {
            return Err(failed(format!(
                "the backup's audit chain is broken ({}); not restored",
                chain.problem.unwrap_or_default()
            )));
        }
        std::fs::rename(&partial, &target)
            .map_err(|e| failed(format!("cannot move the restored store into place: {e}")))?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        for leftover in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{leftover}", partial.display()));
        }
        return Err(e);
    }
    Ok(found)
}
