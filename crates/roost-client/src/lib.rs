//! The Roost client SDK.
//!
//! Holds a user's identity and device keys, talks to `roostd` over its documented HTTP API, runs
//! MLS through OpenMLS (ciphersuite `MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519`), keeps
//! MLS state and decrypted history in a local SQLite file, and acknowledges an entry only after
//! what it carried is stored locally.
//!
//! Every MLS leaf carries its device certificate; a leaf whose certificate does not chain to its
//! user's identity key is refused, so a server cannot inject a device.

#![deny(missing_docs)]

pub mod api;
pub mod calls;
pub mod client;
pub mod content;
pub mod error;
pub mod files;
pub mod keys;
pub mod mls;
pub mod push;
pub mod store;
pub mod timeline;
pub mod tls;

pub use client::{Client, Event, FileDetails, MAX_THUMBNAIL_BYTES, Message};
pub use content::{Attachment, Content};
pub use error::{ClientError, Result};
pub use timeline::{Timeline, TimelineItem};
