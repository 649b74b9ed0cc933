//! Black-box tests of the HTTP API: a real server on 127.0.0.1:0 with a temporary SQLite file,
//! driven over real TCP with reqwest.

mod accounts;
mod auth;
mod common;
mod keys;
mod robustness;
