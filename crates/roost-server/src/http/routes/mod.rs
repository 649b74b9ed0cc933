//! HTTP handlers: each extracts, calls one service method and maps the result.

pub mod accounts;
pub mod attachments;
pub mod auth;
pub mod conversations;
pub mod delivery;
pub mod keys;
pub mod ops;
pub mod push;
