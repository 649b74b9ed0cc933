//! Migrations on PostgreSQL: several processes starting at once on an empty schema migrate it
//! exactly once.
#![allow(clippy::expect_used)] // Test code: failing loudly is the point.

use futures::future::join_all;
use roost_store_postgres::{PoolSettings, PostgresStore};
use roost_testkit::{Backend, TestDatabase};
use sqlx::{Connection, PgConnection};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_migrate_once() {
    let Some(database) = TestDatabase::create(Backend::Postgres).await else { return };
    let settings = PoolSettings { max_connections: 2, ..PoolSettings::default() };
    let url = database.url();
    let starts = (0..6).map(|_| PostgresStore::connect(&url, &settings));
    for started in join_all(starts).await {
        started.expect("every store starts on the shared schema");
    }
    let mut conn = PgConnection::connect(&database.url()).await.expect("connect");
    let applied: Vec<(i64, i64)> =
        sqlx::query_as("SELECT version, count(*) FROM _sqlx_migrations GROUP BY version ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .expect("read the migration log");
    let expected = sqlx::migrate!("./migrations").migrations.len();
    assert_eq!(applied.len(), expected, "{applied:?}");
    assert!(applied.iter().all(|(_, times)| *times == 1), "each migration ran once: {applied:?}");
}
