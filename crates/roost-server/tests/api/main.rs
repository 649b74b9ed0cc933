//! Black-box tests of the HTTP API: a real server on 127.0.0.1:0 with a temporary SQLite file,
//! driven over real TCP with reqwest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: failing loudly is the point.

mod accounts;
mod auth;
mod common;
mod conversations;
mod gateway;
mod keys;
mod robustness;
