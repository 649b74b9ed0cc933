//! The API suite on the embedded SQLite store, and what only that store has.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: failing loudly is the point.

/// The backend this suite runs on.
const BACKEND: roost_testkit::Backend = roost_testkit::Backend::Sqlite;

#[macro_use]
mod api;
#[path = "api/disk_full.rs"]
mod disk_full;
#[path = "api/schemathesis.rs"]
mod schemathesis;
#[path = "api/sqlite_file.rs"]
mod sqlite_file;
#[path = "api/tls.rs"]
mod tls;
#[path = "api/transport.rs"]
mod transport;
