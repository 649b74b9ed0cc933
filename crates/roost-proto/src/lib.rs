//! Roost wire types.
//!
//! Everything that crosses the network between a Roost client and `roostd` is defined here:
//! identifiers, HTTP request and response bodies, error codes and the exact byte strings that
//! devices and identity keys sign. The crate does no I/O, so the server, the client SDK and the
//! tests all agree on one definition.
#![deny(missing_docs)]

pub mod api;
pub mod attachment;
pub mod bytes;
pub mod conversation;
pub mod error;
pub mod ids;
pub mod push;
pub mod signing;
pub mod socket;

pub use attachment::AttachmentId;
pub use bytes::Base64Bytes;
pub use conversation::ConversationId;
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use ids::{DeviceId, Handle, IdParseError, UserId};
