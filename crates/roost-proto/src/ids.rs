//! Identifiers: users, devices and handles. Each is constructed only by parsing, so a value of
//! these types is always well formed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use crate::bytes;

/// Why a piece of text is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdParseError {
    /// The text is not unpadded base64url of a 32-byte Ed25519 public key.
    #[error("expected the unpadded base64url encoding of a 32-byte public key")]
    Key,
    /// The handle breaks the handle rules.
    #[error("a handle is 3 to 32 characters of a-z, 0-9, '_' and '.', starting with a letter")]
    Handle,
    /// The text is not unpadded base64url of a 16-byte conversation id.
    #[error("expected the unpadded base64url encoding of a 16-byte conversation id")]
    Conversation,
    /// The text is not unpadded base64url of a 16-byte attachment id.
    #[error("expected the unpadded base64url encoding of a 16-byte attachment id")]
    Attachment,
    /// The text is not one of the names the field allows.
    #[error("not one of the allowed values")]
    Text,
}

/// A fixed-size byte string shown as unpadded base64url: the type, its byte and text lengths, the
/// parse error, the schema pattern (the last character carries only the bits the length allows).
macro_rules! byte_id {
    ($(#[$meta:meta])* $name:ident, $bytes:tt, $text:tt, $error:ident, $pattern:tt) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ToSchema)]
        #[schema(value_type = String, format = "base64url", min_length = $text, max_length = $text, pattern = $pattern)]
        pub struct $name([u8; $bytes]);

        impl $name {
            /// Wraps the bytes.
            pub const fn from_bytes(bytes: [u8; $bytes]) -> Self {
                Self(bytes)
            }

            /// The bytes.
            pub const fn as_bytes(&self) -> &[u8; $bytes] {
                &self.0
            }

            /// Parses raw bytes (as stored in a database column).
            pub fn from_slice(bytes: &[u8]) -> Result<Self, IdParseError> {
                <[u8; $bytes]>::try_from(bytes).map(Self).map_err(|_| IdParseError::$error)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                if text.len() != $text {
                    return Err(IdParseError::$error);
                }
                let raw = bytes::decode(text).map_err(|_| IdParseError::$error)?;
                Self::from_slice(&raw)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&bytes::encode(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use byte_id;

/// A 32-byte Ed25519 public key as an identifier.
macro_rules! key_id {
    ($(#[$meta:meta])* $name:ident) => {
        byte_id!($(#[$meta])* $name, 32, 43, Key, "^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$");
    };
}

key_id!(
    /// A user: the unpadded base64url of the user's Ed25519 identity public key (a point on the
    /// curve: other 32-byte strings are refused with `422 invalid_argument` where a key is
    /// registered).
    UserId
);

key_id!(
    /// A device: the unpadded base64url of the device's own Ed25519 public key (a point on the
    /// curve: other 32-byte strings are refused with `422 invalid_argument` where a key is
    /// registered).
    DeviceId
);

/// A public handle such as `alice` (shown to people as `@alice`).
///
/// Handles are 3 to 32 characters of `a-z`, `0-9`, `_` and `.`, start with a letter, and are
/// compared exactly; a leading `@` is accepted when parsing and dropped.
#[derive(Clone, PartialEq, Eq, Hash, ToSchema)]
#[schema(value_type = String, pattern = "^[a-z][a-z0-9_.]{2,31}$")]
pub struct Handle(String);

impl Handle {
    /// The handle without its `@`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Handle {
    type Err = IdParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.strip_prefix('@').unwrap_or(text);
        let mut chars = text.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
        if starts_with_letter && rest_ok && (3..=32).contains(&text.len()) {
            Ok(Self(text.to_owned()))
        } else {
            Err(IdParseError::Handle)
        }
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle(@{})", self.0)
    }
}

impl Serialize for Handle {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Handle {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_round_trip_and_refuse_bad_text() {
        let id = UserId::from_bytes([7; 32]);
        let text = id.to_string();
        assert_eq!(text.len(), 43);
        assert_eq!(text.parse::<UserId>(), Ok(id));
        assert_eq!("".parse::<UserId>(), Err(IdParseError::Key));
        assert_eq!(format!("{text}=").parse::<DeviceId>(), Err(IdParseError::Key));
        assert_eq!("+".repeat(43).parse::<DeviceId>(), Err(IdParseError::Key));
    }

    #[test]
    fn handles_follow_the_rules() {
        assert_eq!("@alice".parse::<Handle>().map(|h| h.to_string()), Ok("alice".to_owned()));
        assert!("a.b_9".parse::<Handle>().is_ok());
        for bad in ["al", "Alice", "9lives", "a-b", "", "@", &"a".repeat(33), "ali ce", "é.abc"] {
            assert_eq!(bad.parse::<Handle>(), Err(IdParseError::Handle), "{bad}");
        }
    }
}
