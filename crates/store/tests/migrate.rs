//! Schema versions on both backends: a store written before the store had
//! versions (a fixture a release wrote, see `fixtures/make-store`) opens,
//! migrated, with every row intact; a store of a newer release is refused
//! and left as it was; replicas starting together migrate once.

use std::path::{Path, PathBuf};

use sqlx::any::install_default_drivers;
use sqlx::{AnyConnection, Column, Connection, Executor, Row};
use weft_store::{Store, StoreError, schema};

/// Every table of the store, as the first schema version has them.
const TABLES: &[&str] = &[
    "meta",
    "directory_meta",
    "resources",
    "refs",
    "changes",
    "audit",
    "tokens",
    "edge_status",
    "root_authorities",
    "directory",
];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-before-versions.sqlite")
}

async fn connect(url: &str) -> AnyConnection {
    install_default_drivers();
    AnyConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// A value of any column weft's tables have, as text.
fn cell(row: &sqlx::any::AnyRow, i: usize) -> String {
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return format!("{v:?}");
    }
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return format!("{v:?}");
    }
    let v: Option<Vec<u8>> = row.try_get(i).expect("an integer, text or bytes");
    format!("{v:?}")
}

/// Every row of every table, sorted: what "intact" compares.
async fn rows(url: &str) -> Vec<(String, Vec<String>)> {
    let mut conn = connect(url).await;
    let mut all = Vec::new();
    for table in TABLES {
        let fetched = conn
            .fetch_all(sqlx::AssertSqlSafe(format!("SELECT * FROM {table}")))
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        let mut table_rows: Vec<Vec<String>> = fetched
            .iter()
            .map(|r| (0..r.columns().len()).map(|i| cell(r, i)).collect())
            .collect();
        table_rows.sort();
        all.extend(table_rows.into_iter().map(|r| (table.to_string(), r)));
    }
    conn.close().await.unwrap();
    all
}

/// The fixture's rows in a PostgreSQL database with the schema of its
/// time: a PostgreSQL store the previous release wrote.
async fn old_postgres_store() -> String {
    let url = weft_store::testing::fresh_postgres_database().await;
    let mut pg = connect(&url).await;
    pg.execute(include_str!("../migrations/0001_initial.sql"))
        .await
        .expect("the first schema version");
    let mut sqlite = connect(&format!("sqlite://{}?mode=ro", fixture().display())).await;
    for table in TABLES {
        // The first version seeded these rows; the fixture has the real ones.
        pg.execute(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .await
            .unwrap();
        // Bound by the PostgreSQL column's type: SQLite gives a NULL no type.
        let integers: Vec<String> = sqlx::query(
            "SELECT CAST(column_name AS TEXT) FROM information_schema.columns
             WHERE table_name = $1 AND data_type = 'bigint'",
        )
        .bind(*table)
        .fetch_all(&mut pg)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
        for row in sqlite
            .fetch_all(sqlx::AssertSqlSafe(format!("SELECT * FROM {table}")))
            .await
            .unwrap()
        {
            let columns: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
            let params: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                columns.join(", "),
                params.join(", ")
            );
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (i, column) in columns.iter().enumerate() {
                insert = if integers.iter().any(|c| c == column) {
                    insert.bind(row.get::<Option<i64>, _>(i))
                } else {
                    insert.bind(row.get::<Option<String>, _>(i))
                };
            }
            insert.execute(&mut pg).await.unwrap();
        }
    }
    pg.close().await.unwrap();
    url
}

/// A copy of the fixture in a temporary directory, and its URL.
fn old_sqlite_store() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.db");
    std::fs::copy(fixture(), &path).expect("the fixture (see tests/fixtures/make-store)");
    let url = format!("sqlite://{}", path.display());
    (dir, url)
}

async fn opens_migrated_and_intact(url: &str) {
    let before = rows(url).await;
    assert!(
        before.iter().any(|(t, _)| t == "resources") && before.iter().any(|(t, _)| t == "tokens"),
        "the fixture holds resources and tokens"
    );
    let store = Store::open(url).await.expect("an older store opens");
    assert_eq!(
        store.schema(),
        weft_store::SchemaVersion {
            found: None,
            now: schema::latest()
        }
    );
    store.close().await;
    let after = rows(url).await;
    assert_eq!(before, after, "every row is as it was");

    let store = Store::open(url).await.unwrap();
    assert!(
        !store.schema().migrated(),
        "migrated once: {:?}",
        store.schema()
    );
    let report = store.verify_audit().await.unwrap();
    assert!(report.intact, "the audit chain verifies: {report:?}");
    assert!(report.entries > 5, "{report:?}");
    assert!(!store.list("Tenant").await.unwrap().is_empty());
    assert_eq!(store.list_tokens(None).await.unwrap().len(), 5);
    assert_eq!(store.all_root_authorities().await.unwrap().len(), 1);
    store.close().await;
}

async fn refuses_a_newer_store(url: &str) {
    Store::open(url).await.unwrap().close().await;
    let newer = schema::latest() + 1;
    let mut conn = connect(url).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, 'from a newer release', TRUE, $2, 0)",
    )
    .bind(newer)
    .bind(vec![0u8; 48])
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let before = rows(url).await;
    let Err(error) = Store::open(url).await else {
        panic!("a store of a newer release opened");
    };
    assert!(
        matches!(error, StoreError::NewerSchema { found, supported } if found == newer && supported == schema::latest()),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("newer") && message.contains("left as it was"),
        "{message}"
    );
    assert_eq!(before, rows(url).await, "nothing was written");
}

#[tokio::test]
async fn sqlite_store_of_the_previous_release_opens_migrated_and_intact() {
    let (_dir, url) = old_sqlite_store();
    opens_migrated_and_intact(&url).await;
}

#[tokio::test]
async fn postgres_store_of_the_previous_release_opens_migrated_and_intact() {
    opens_migrated_and_intact(&old_postgres_store().await).await;
}

#[tokio::test]
async fn sqlite_store_of_a_newer_release_is_refused_and_left_as_it_was() {
    let (_dir, url) = old_sqlite_store();
    refuses_a_newer_store(&url).await;
}

#[tokio::test]
async fn postgres_store_of_a_newer_release_is_refused_and_left_as_it_was() {
    refuses_a_newer_store(&old_postgres_store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_on_an_old_postgres_store_migrate_it_once() {
    let url = old_postgres_store().await;
    let before = rows(&url).await;
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Store::open(&url).await })
        })
        .collect();
    let mut migrated = 0;
    for replica in replicas {
        let store = replica.await.unwrap().expect("every replica opens");
        migrated += usize::from(store.schema().migrated());
        store.close().await;
    }
    assert_eq!(
        migrated, 1,
        "one replica migrated, the others found it done"
    );
    let mut conn = connect(&url).await;
    let applied: i64 = sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, schema::latest());
    conn.close().await.unwrap();
    assert_eq!(before, rows(&url).await);
}
