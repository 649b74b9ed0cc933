//! What travels inside MLS application messages: a versioned, padded structure, so sizes do not
//! reveal lengths exactly and newer content types are shown as such rather than dropped.
//!
//! Encoding: `u32 big-endian length || JSON || zero bytes` up to the next multiple of 256 bytes.

use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};

/// An encrypted file as a message carries it: where it is, how to open it, what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The attachment's id on the server.
    pub id: String,
    /// The file key (32 bytes, base64url).
    pub key: String,
    /// SHA-256 of the ciphertext (base64url).
    pub digest: String,
    /// The file name.
    pub name: String,
    /// The plaintext size in bytes.
    pub size: u64,
    /// The media type (`image/png`, `audio/ogg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// An image's or video's width in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// An image's or video's height in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A voice note's, audio's or video's length in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// A small preview image (JPEG, PNG or WebP, a few kilobytes; base64url), encrypted with the
    /// message itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<String>,
}

impl Attachment {
    /// The size for people: `812 B`, `4.2 KiB`, `100.0 MiB`.
    pub fn size_text(&self) -> String {
        byte_size(self.size)
    }
}

/// A byte count for people.
pub fn byte_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

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
    /// A reply to an earlier message (by its conversation sequence number); clients show the
    /// replied message quoted from their own history.
    Reply {
        /// The message replied to.
        to_seq: u64,
        /// The text.
        body: String,
    },
    /// The sender's reaction to an earlier message, or its withdrawal.
    Reaction {
        /// The message reacted to.
        to_seq: u64,
        /// The reaction, usually one emoji.
        emoji: String,
        /// Withdraws the sender's earlier reaction with this emoji.
        #[serde(default, skip_serializing_if = "is_false")]
        remove: bool,
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
    /// A pointer to an encrypted attachment ([`crate::files`]).
    Attachment(Attachment),
    /// A place on the map.
    Location {
        /// Latitude in units of 10⁻⁷ degrees (north positive): exact in every language's JSON.
        latitude_e7: i32,
        /// Longitude in units of 10⁻⁷ degrees (east positive).
        longitude_e7: i32,
        /// How far off the position may be, in metres.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accuracy_m: Option<u32>,
        /// What the place is ("Café Kranzler").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    /// A contact card: a Roost user, or anyone.
    Contact {
        /// The name to show.
        name: String,
        /// The Roost user, if the contact is one (their user id).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
        /// Their handle as the sender knew it (without `@`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handle: Option<String>,
        /// A phone number.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone: Option<String>,
        /// An email address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
    },
    /// A poll. Members vote with [`Content::PollVote`]; tallies are counted by each client from
    /// the votes (the server sees none of it).
    Poll {
        /// The question.
        question: String,
        /// The options, 2 to [`MAX_POLL_OPTIONS`].
        options: Vec<String>,
        /// Whether a vote may choose several options.
        #[serde(default, skip_serializing_if = "is_false")]
        multiple: bool,
    },
    /// The sender's vote in a poll, replacing their earlier one; no choices withdraws it.
    PollVote {
        /// The poll.
        to_seq: u64,
        /// Indices into the poll's options.
        choices: Vec<u32>,
    },
    /// The poll's author closes it: later votes do not count.
    PollClose {
        /// The poll.
        to_seq: u64,
    },
    /// The sender's profile, sent to their conversations when it changes (the server never
    /// sees it).
    Profile {
        /// The name to show instead of the handle; none clears it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display_name: Option<String>,
    },
    /// Call signalling, sent only as an ephemeral send (see [`crate::calls`]).
    Call {
        /// The call, chosen by the caller.
        call_id: String,
        /// What this signal does.
        action: CallAction,
        /// The WebRTC session description, with `offer` and `answer`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp: Option<String>,
        /// A WebRTC ICE candidate, with `ice`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        candidate: Option<String>,
        /// A video call (with `offer`).
        #[serde(default, skip_serializing_if = "is_false")]
        video: bool,
    },
    /// A call that rang and was not answered, left by the caller in the conversation's history.
    MissedCall {
        /// The call.
        call_id: String,
        /// It was a video call.
        #[serde(default, skip_serializing_if = "is_false")]
        video: bool,
    },
    /// A content type this SDK does not know (from a newer client). Shown, never dropped.
    #[serde(skip)]
    Unknown {
        /// The type name it carried.
        type_name: String,
    },
}

/// What a call signal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallAction {
    /// The caller rings the conversation's other members (every device).
    Offer,
    /// A callee's device takes the call.
    Answer,
    /// A network candidate for the media connection.
    Ice,
    /// Ends the call, or (by a callee) declines it, or (by the caller) stops the ringing.
    Hangup,
    /// A callee's device is in another call.
    Busy,
}

/// Most options a poll may have.
pub const MAX_POLL_OPTIONS: usize = 32;

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(value: &bool) -> bool {
    !*value
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
            Self::Reaction { to_seq, emoji, remove: false } => format!("(reacted {emoji} to #{to_seq})"),
            Self::Reaction { to_seq, emoji, remove: true } => format!("(withdrew {emoji} from #{to_seq})"),
            Self::Edit { to_seq, body } => format!("(edited #{to_seq}) {body}"),
            Self::Delete { to_seq } => format!("(deleted #{to_seq})"),
            Self::Attachment(file) => match (file.width, file.height) {
                (Some(width), Some(height)) => format!("(file {}, {}, {width}×{height})", file.name, file.size_text()),
                _ => format!("(file {}, {})", file.name, file.size_text()),
            },
            Self::Location { latitude_e7, longitude_e7, label, .. } => {
                let place = format!("{:.5}, {:.5}", degrees(*latitude_e7), degrees(*longitude_e7));
                match label {
                    Some(label) => format!("(location {label}: {place})"),
                    None => format!("(location {place})"),
                }
            }
            Self::Contact { name, handle, .. } => match handle {
                Some(handle) if *name != format!("@{handle}") => format!("(contact {name}, @{handle})"),
                _ => format!("(contact {name})"),
            },
            Self::Poll { question, options, .. } => format!("(poll) {question} [{}]", options.join(" / ")),
            Self::PollVote { to_seq, choices } if choices.is_empty() => format!("(withdrew a vote in #{to_seq})"),
            Self::PollVote { to_seq, .. } => format!("(voted in #{to_seq})"),
            Self::PollClose { to_seq } => format!("(closed the poll #{to_seq})"),
            Self::Call { action, .. } => format!("(call signal: {action:?})"),
            Self::MissedCall { video: false, .. } => "(missed call)".to_owned(),
            Self::MissedCall { video: true, .. } => "(missed video call)".to_owned(),
            Self::Profile { display_name: Some(name) } => format!("(now shown as {name})"),
            Self::Profile { display_name: None } => "(cleared their display name)".to_owned(),
            Self::Unknown { type_name } => format!("(a {type_name} message this version cannot show)"),
        }
    }
}

/// Degrees from units of 10⁻⁷ degrees.
pub fn degrees(e7: i32) -> f64 {
    f64::from(e7) / 1e7
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trips_padded() {
        for content in
            [Content::Text { body: "hi".into() }, Content::Reaction { to_seq: 3, emoji: "👍".into(), remove: false }]
        {
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
        let json = br#"{"v":2,"type":"sticker","pack":"?"}"#;
        let mut bytes = (json.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(json);
        assert_eq!(Content::decode(&bytes).unwrap(), Content::Unknown { type_name: "sticker".into() });
        assert!(Content::decode(&[0, 0, 0, 9, 1]).is_err());
    }
}
