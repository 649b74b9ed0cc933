//! The test harness of Roost, shared by every crate's black-box tests: a fresh database for each
//! test on either backend, and (in [`server`]) a real `roostd` on `127.0.0.1:0` over it.
//!
//! PostgreSQL tests use the server named by `ROOST_TEST_DATABASE_URL` (CI sets it); each test
//! gets a schema of its own, dropped when the test ends. Where the variable is unset, those
//! tests print a notice and return without running.
//!
//! Test code: failing loudly is the point, so this crate panics instead of returning errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod certificate;
mod database;
pub mod proxy;
pub mod push;
pub mod s3;
pub mod server;

pub use certificate::{TestCertificate, tls_server};
pub use database::{Backend, RawConnection, TestDatabase, files_contain, postgres_url, redis_url};
pub use server::{TestServer, capture_logs, config_for};

/// Makes ring the process's TLS provider, which HTTP clients built without TLS settings of
/// their own (`reqwest::Client::new()`) need; called by every way a test gets a database.
pub fn install_crypto_provider() {
    // Already installed (by an earlier test in this process) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
