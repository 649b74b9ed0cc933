//! The shared store conformance suite against a temporary SQLite file.
#![allow(clippy::expect_used)] // Test code: failing loudly is the point.

use roost_store_sqlite::SqliteStore;

async fn fresh_store() -> Option<(SqliteStore, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(&dir.path().join("roost.db")).await.expect("open store");
    Some((store, dir))
}

roost_store::conformance_tests!(fresh_store());
