//! The README walkthrough against a server on the embedded SQLite store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: failing loudly is the point.

/// The backend this suite runs on.
const BACKEND: roost_testkit::Backend = roost_testkit::Backend::Sqlite;

mod walkthrough;
