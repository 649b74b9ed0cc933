//! What travels inside MLS application messages: a versioned, padded structure, so sizes do not
//! reveal lengths exactly and newer content types are shown as such rather than dropped.
//!
//! Encoding: `u32 big-endian length || JSON || zero bytes` up to the next multiple of 256 bytes.

use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};

/// Padding granularity in bytes.
const PAD_TO: usize = 256;
/// The content format version this SDK writes.
const VERSION: u32 = 1;

/// A piece of content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Content {
    /// A text message.
    Text {
        /// The text.
        body: String,
    },
    /// A reply to an earlier message (by its conversation sequence number).
    Reply {
        /// The message replied to.
        to_seq: u64,
        /// The text.
        body: String,
    },
    /// A reaction to an earlier message.
    Reaction {
        /// The message reacted to.
        to_seq: u64,
        /// The reaction, usually one emoji.
        emoji: String,
    },
    /// A replacement text for an earlier message of the same sender.
    Edit {
        /// The message edited.
        to_seq: u64,
        /// The new text.
        body: String,
    },
    /// The sender withdraws an earlier message.
    Delete {
        /// The message deleted.
        to_seq: u64,
    },
    /// A pointer to an encrypted attachment.
    Attachment {
        /// The attachment's id on the server.
        id: String,
        /// The file key (base64url).
        key: String,
        /// SHA-256 of the ciphertext (base64url).
        digest: String,
        /// The file name.
        name: String,
        /// The plaintext size in bytes.
        size: u64,
    },
    /// A content type this SDK does not know (from a newer client). Shown, never dropped.
    #[serde(skip)]
    Unknown {
        /// The type name it carried.
        type_name: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    #[serde(flatten)]
    content: T,
}

impl Content {
    /// The padded encoding.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(&Envelope { v: VERSION, content: self })
            .map_err(|err| ClientError::Invalid(format!("content: {err}")))?;
        let length = u32::try_from(json.len()).map_err(|_| ClientError::Invalid("content too large".into()))?;
        let mut out = length.to_be_bytes().to_vec();
        out.extend_from_slice(&json);
        out.resize(out.len().div_ceil(PAD_TO) * PAD_TO, 0);
        Ok(out)
    }

    /// Decodes padded content. Unknown types become [`Content::Unknown`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let malformed = || ClientError::Protocol("malformed message content".into());
        let (length, rest) = bytes.split_first_chunk::<4>().ok_or_else(malformed)?;
        let length = usize::try_from(u32::from_be_bytes(*length)).map_err(|_| malformed())?;
        let json = rest.get(..length).ok_or_else(malformed)?;
        match serde_json::from_slice::<Envelope<Content>>(json) {
            Ok(envelope) => Ok(envelope.content),
            Err(_) => {
                let value: serde_json::Value = serde_json::from_slice(json).map_err(|_| malformed())?;
                let type_name = value.get("type").and_then(|t| t.as_str()).unwrap_or("unknown").to_owned();
                Ok(Self::Unknown { type_name })
            }
        }
    }

    /// A one-line rendering for people.
    pub fn display(&self) -> String {
        match self {
            Self::Text { body } => body.clone(),
            Self::Reply { to_seq, body } => format!("(reply to #{to_seq}) {body}"),
            Self::Reaction { to_seq, emoji } => format!("(reacted {emoji} to #{to_seq})"),
            Self::Edit { to_seq, body } => format!("(edited #{to_seq}) {body}"),
            Self::Delete { to_seq } => format!("(deleted #{to_seq})"),
            Self::Attachment { name, size, .. } => format!("(attachment {name}, {size} bytes)"),
            Self::Unknown { type_name } => format!("(a {type_name} message this version cannot show)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trips_padded() {
        for content in [Content::Text { body: "hi".into() }, Content::Reaction { to_seq: 3, emoji: "👍".into() }] {
            let bytes = content.encode().unwrap();
            assert_eq!(bytes.len() % PAD_TO, 0);
            assert_eq!(Content::decode(&bytes).unwrap(), content);
        }
        let short = Content::Text { body: "a".into() }.encode().unwrap();
        let longer = Content::Text { body: "a".repeat(100) }.encode().unwrap();
        assert_eq!(short.len(), longer.len(), "lengths are hidden within a padding block");
    }

    #[test]
    fn unknown_types_are_kept_as_unknown() {
        let json = br#"{"v":2,"type":"poll","question":"?"}"#;
        let mut bytes = (json.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(json);
        assert_eq!(Content::decode(&bytes).unwrap(), Content::Unknown { type_name: "poll".into() });
        assert!(Content::decode(&[0, 0, 0, 9, 1]).is_err());
    }
}
