//! Black-box tests of the HTTP and WebSocket API: a real server on 127.0.0.1:0, driven over real
//! TCP with reqwest and tungstenite. The suite runs once per backend: `api_sqlite.rs` and
//! `api_postgres.rs` each include it with their `BACKEND`.

#[macro_use]
pub mod common;
pub mod accounts;
mod attachments;
mod auth;
pub mod conversations;
pub mod gateway;
mod keys;
pub mod push;
mod robustness;
