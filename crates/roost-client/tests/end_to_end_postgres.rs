//! The SDK end to end against a server on PostgreSQL (skipped with a notice where
//! `ROOST_TEST_DATABASE_URL` is unset).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: failing loudly is the point.

/// The backend this suite runs on.
const BACKEND: roost_testkit::Backend = roost_testkit::Backend::Postgres;

mod end_to_end;
