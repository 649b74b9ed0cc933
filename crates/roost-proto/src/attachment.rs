//! Wire types of attachments: encrypted files uploaded for one conversation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use crate::bytes::{self, Base64Bytes};
use crate::conversation::ConversationId;
use crate::ids::{IdParseError, byte_id};

byte_id!(
    /// An attachment: 16 random bytes chosen by the server, as unpadded base64url (22
    /// characters). Knowing one is not enough to download it: only member devices of its
    /// conversation may.
    AttachmentId,
    16,
    22,
    Attachment,
    "^[A-Za-z0-9_-]{21}[AQgw]$"
);

/// `POST /v1/conversations/{id}/attachments`: announce an upload of encrypted bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAttachmentRequest {
    /// The length of the ciphertext in bytes (1 to `attachments.max_bytes`).
    pub length: u64,
    /// SHA-256 of the ciphertext (32 bytes): the upload completes only if the bytes match.
    pub sha256: Base64Bytes,
}

/// The state of an upload (and, once complete, of the attachment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttachmentUpload {
    /// The attachment.
    pub attachment_id: AttachmentId,
    /// The conversation it was uploaded for.
    pub conversation_id: ConversationId,
    /// The ciphertext length announced.
    pub length: u64,
    /// How many bytes the server holds durably: the next `PATCH` starts here.
    pub offset: u64,
    /// Whether every byte arrived and matched the digest.
    pub complete: bool,
    /// When an incomplete upload is deleted (Unix milliseconds).
    pub expires_at: i64,
}

/// The byte string of an attachment digest, for the `ETag` and the upload check.
pub const DIGEST_BYTES: usize = 32;

/// The text of a digest as it appears in an `ETag` (quoted lowercase hex).
pub fn etag(sha256: &[u8]) -> String {
    let mut text = String::with_capacity(sha256.len() * 2 + 2);
    text.push('"');
    for byte in sha256 {
        text.push_str(&format!("{byte:02x}"));
    }
    text.push('"');
    text
}
