//! The shared store conformance suite against PostgreSQL, each case in a schema of its own.
#![allow(clippy::expect_used)] // Test code: failing loudly is the point.

use roost_store_postgres::{PoolSettings, PostgresStore};
use roost_testkit::{Backend, TestDatabase};

/// A small pool: tests run side by side against one server.
fn settings() -> PoolSettings {
    PoolSettings { max_connections: 4, ..PoolSettings::default() }
}

async fn fresh_store() -> Option<(PostgresStore, TestDatabase)> {
    let database = TestDatabase::create(Backend::Postgres).await?;
    let store = PostgresStore::connect(&database.url(), &settings()).await.expect("connect and migrate");
    Some((store, database))
}

roost_store::conformance_tests!(fresh_store());

/// Two handles on one fresh schema, as two `roostd` processes would hold.
async fn two_handles() -> Option<(PostgresStore, PostgresStore, TestDatabase)> {
    let (a, database) = fresh_store().await?;
    let b = PostgresStore::connect(&database.url(), &settings()).await.expect("connect a second handle");
    Some((a, b, database))
}

roost_store::shared_conformance_tests!(two_handles());
