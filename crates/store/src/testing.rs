//! Test support: a fresh, empty PostgreSQL database per test on the server
//! that `scripts/test` starts (it exports `WEFT_TEST_POSTGRES_URL`).

use sqlx::any::install_default_drivers;
use sqlx::{AnyConnection, Connection, Executor};

/// The URL of a new empty database. Panics with a hint when no test
/// server is configured, so a PostgreSQL test can never pass by skipping.
pub async fn fresh_postgres_database() -> String {
    let Ok(admin) = std::env::var("WEFT_TEST_POSTGRES_URL") else {
        panic!(
            "WEFT_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts a throwaway PostgreSQL \
             (or point it at a server where this user may CREATE DATABASE)"
        );
    };
    install_default_drivers();
    let name = format!("weft_test_{:016x}", rand::random::<u64>());
    let mut conn = AnyConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to test PostgreSQL at {admin}: {e}"));
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("CREATE DATABASE");
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}
