//! The API suite on PostgreSQL (skipped with a notice where `ROOST_TEST_DATABASE_URL` is unset),
//! what only a shared database allows (several servers on it, the database going away) and the move
//! from SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: failing loudly is the point.

/// The backend this suite runs on.
const BACKEND: roost_testkit::Backend = roost_testkit::Backend::Postgres;

#[macro_use]
mod api;
#[path = "api/instances.rs"]
mod instances;
#[path = "api/migrate_store.rs"]
mod migrate_store;
#[path = "api/shared_database.rs"]
mod shared_database;
