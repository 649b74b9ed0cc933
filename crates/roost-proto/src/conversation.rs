//! Wire types of conversations (MLS groups), messages, the device queue, sync and retention.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use crate::bytes::{self, Base64Bytes};
use crate::ids::{DeviceId, IdParseError, UserId, byte_id};

byte_id!(
    /// A conversation: 16 random bytes chosen by its creator (the MLS group id), as unpadded
    /// base64url (22 characters).
    ConversationId,
    16,
    22,
    Conversation,
    "^[A-Za-z0-9_-]{21}[AQgw]$"
);

/// `as_str` and `FromStr` for a fieldless enum with a fixed text form (also its stored form).
macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $name {
            /// The stable text form (also the stored form).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),*
                }
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok(Self::$variant),)*
                    _ => Err(IdParseError::Text),
                }
            }
        }
    };
}

/// What kind of conversation this is. The server enforces the user count of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// Exactly two users.
    Direct,
    /// Up to the configured maximum of users (default 1,500).
    Group,
    /// One user's own devices.
    NoteToSelf,
}

text_enum!(ConversationKind { Direct => "direct", Group => "group", NoteToSelf => "note_to_self" });

/// How long a conversation's entries are kept. Every policy is also bounded by the server's
/// maximum age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)]
pub enum RetentionPolicy {
    /// Deleted once every device that was a member when it was written has acknowledged it (or
    /// has left).
    BurnOnRead,
    /// Deleted `ttl_secs` after it was written, acknowledged or not.
    Ttl {
        /// Seconds to keep each entry.
        ttl_secs: u64,
    },
    /// Kept until the server's maximum age (only where the operator made that unlimited).
    Permanent,
}

/// `POST /v1/conversations`: create a conversation with the caller's device and the devices it
/// welcomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversationRequest {
    /// The new conversation's id (the MLS group id).
    pub conversation_id: ConversationId,
    /// Direct, group or note-to-self.
    pub kind: ConversationKind,
    /// The MLS epoch the group is in after the creator added the initial members.
    pub epoch: u64,
    /// The group's current GroupInfo (for external joins).
    pub group_info: Base64Bytes,
    /// The initial member devices other than the creator's.
    #[serde(default)]
    pub members: Vec<DeviceId>,
    /// The MLS Welcome for them (one message serves every added device); required when
    /// `members` is not empty.
    #[serde(default)]
    pub welcome: Option<Base64Bytes>,
    /// The retention policy; the server default when absent.
    #[serde(default)]
    pub retention: Option<RetentionPolicy>,
}

/// `POST /v1/conversations/{id}/commits`: an MLS commit with its membership delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    /// The epoch the commit was made in; it must be the conversation's current epoch.
    pub epoch: u64,
    /// The MLS commit message, appended to the log for existing members.
    pub commit: Base64Bytes,
    /// The GroupInfo of the new epoch.
    pub group_info: Base64Bytes,
    /// Devices added by this commit.
    #[serde(default)]
    pub add: Vec<DeviceId>,
    /// The MLS Welcome for the added devices; required when `add` is not empty.
    #[serde(default)]
    pub welcome: Option<Base64Bytes>,
    /// Devices removed by this commit.
    #[serde(default)]
    pub remove: Vec<DeviceId>,
}

/// `POST /v1/conversations/{id}/external-joins`: a new device of a member user joins by an MLS
/// external commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalJoinRequest {
    /// The epoch of the GroupInfo the external commit was built from (the current epoch).
    pub epoch: u64,
    /// The external commit.
    pub commit: Base64Bytes,
    /// The GroupInfo of the new epoch.
    pub group_info: Base64Bytes,
}

/// The result of an accepted commit or external join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommitAccepted {
    /// The commit's sequence number in the conversation log.
    pub seq: u64,
    /// The conversation's epoch now.
    pub epoch: u64,
}

/// `GET /v1/conversations/{id}/group-info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupInfoResponse {
    /// The conversation's current epoch.
    pub epoch: u64,
    /// Its current GroupInfo.
    pub group_info: Base64Bytes,
}

/// `POST /v1/conversations/{id}/messages`: an application message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Chosen by the sending device (1 to 64 characters); a retry with the same id returns the
    /// original result and stores nothing.
    pub client_message_id: String,
    /// The epoch the ciphertext was encrypted in; it must be the current epoch.
    pub epoch: u64,
    /// The MLS ciphertext.
    pub ciphertext: Base64Bytes,
    /// Deliver only to devices online now and never store (typing, call signalling).
    #[serde(default)]
    pub ephemeral: bool,
}

/// The result of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SendAccepted {
    /// The message's sequence number (absent for ephemeral sends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// When the server accepted it.
    pub created_at: i64,
    /// True when this was a retry of an already accepted client message id.
    pub duplicate: bool,
}

/// What a conversation log entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// An MLS commit (a group change).
    Commit,
    /// An application message.
    Message,
    /// A user left; remaining members should commit the removal of its leaves. The payload is
    /// whatever the leaving device supplied (typically an MLS self-remove proposal).
    Leave,
}

text_enum!(EntryKind { Commit => "commit", Message => "message", Leave => "leave" });

/// One entry of a conversation log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Entry {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Its gap-free sequence number in the conversation.
    pub seq: u64,
    /// Commit, message or leave.
    pub kind: EntryKind,
    /// The sending user.
    pub sender_user: UserId,
    /// The sending device.
    pub sender_device: DeviceId,
    /// The epoch it was sent in.
    pub epoch: u64,
    /// The opaque MLS payload.
    pub payload: Base64Bytes,
    /// When the server accepted it.
    pub created_at: i64,
}

/// What a device queue entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    /// An MLS Welcome: the device was added to `conversation_id` and starts after `seq`.
    Welcome,
    /// A payload another device sent to this one.
    DeviceMessage,
    /// The device's one-time KeyPackages fell below the threshold; payload is JSON
    /// `{"one_time": n}`.
    KeysLow,
    /// The user's own read position moved (synced from another device); payload is JSON
    /// `{"seq": n}`.
    ReadMarker,
    /// This device was removed from `conversation_id` (by a commit or because its user left).
    Removed,
}

text_enum!(QueueKind {
    Welcome => "welcome",
    DeviceMessage => "device_message",
    KeysLow => "keys_low",
    ReadMarker => "read_marker",
    Removed => "removed",
});

/// One entry of a device's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueEntry {
    /// Increasing per server; ack with `queue_up_to`.
    pub id: u64,
    /// What it is.
    pub kind: QueueKind,
    /// The conversation it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<ConversationId>,
    /// The conversation sequence number it refers to (a Welcome's commit, a read marker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The sending device, if a device sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_device: Option<DeviceId>,
    /// The payload (opaque bytes; JSON for server events).
    pub payload: Base64Bytes,
    /// When it was queued.
    pub created_at: i64,
}

/// `GET /v1/sync`: a page of everything the device has not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SyncResponse {
    /// Conversation entries after the device's acknowledged positions, by conversation then seq.
    pub entries: Vec<Entry>,
    /// Queue entries, oldest first.
    pub queue: Vec<QueueEntry>,
    /// Pass as `cursor` to get the next page; absent when this page is the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// A cumulative acknowledgement of one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationAck {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Everything up to and including this sequence number is acknowledged.
    pub seq: u64,
}

/// `POST /v1/ack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Per-conversation cumulative positions.
    #[serde(default)]
    pub conversations: Vec<ConversationAck>,
    /// Deletes every queue entry of the caller's device with an id up to and including this.
    #[serde(default)]
    pub queue_up_to: Option<u64>,
}

/// `POST /v1/devices/{device_id}/messages`: a payload for one device's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceMessageRequest {
    /// The opaque payload.
    pub payload: Base64Bytes,
}

/// A member user of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Member {
    /// The user.
    pub user_id: UserId,
    /// Its read position, when it shares read receipts (always for the caller itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_seq: Option<u64>,
}

/// A conversation as its member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConversationSummary {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Its kind.
    pub kind: ConversationKind,
    /// Its current epoch.
    pub epoch: u64,
    /// Member users.
    pub members: Vec<Member>,
    /// The last assigned sequence number.
    pub last_seq: u64,
    /// The caller's user's read position.
    pub read_seq: u64,
    /// Retained messages after the read position (not counting the user's own).
    pub unread: u64,
    /// The retention policy.
    pub retention: RetentionPolicy,
    /// The sequence number after which the caller's device sees entries.
    pub joined_seq: u64,
}

/// `GET /v1/conversations`: a page of the caller's conversations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConversationList {
    /// The conversations, by id.
    pub conversations: Vec<ConversationSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `GET /v1/conversations/{id}/history`: retained entries, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryResponse {
    /// Entries with `seq` below `before`, newest first, never from before the device joined.
    pub entries: Vec<Entry>,
    /// Pass as `before` for the next (older) page; absent when there is nothing older.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

/// `POST /v1/conversations/{id}/read`: move the user's read position forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadMarkerRequest {
    /// Everything up to and including this sequence number has been read.
    pub seq: u64,
}

/// `POST /v1/conversations/{id}/leave`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct LeaveRequest {
    /// Optional payload for the remaining members (an MLS self-remove proposal).
    #[serde(default)]
    pub payload: Option<Base64Bytes>,
}

/// `PUT /v1/settings`: the user's preferences the server enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Whether other members see this user's read positions.
    pub read_receipts: bool,
}

/// MLS wire formats (RFC 9420, section 6) that the server tells apart in what it relays.
pub mod wire_format {
    /// A PublicMessage: external commits.
    pub const PUBLIC_MESSAGE: u16 = 1;
    /// A PrivateMessage: member commits and application messages.
    pub const PRIVATE_MESSAGE: u16 = 2;

    /// The wire format of a TLS-serialised MLSMessage of protocol version mls10, read from its
    /// first four bytes; `None` for bytes that do not start like one.
    pub fn of(bytes: &[u8]) -> Option<u16> {
        let [0, 1, high, low, ..] = bytes else { return None };
        Some(u16::from_be_bytes([*high, *low]))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_wire_format_follows_the_version() {
            assert_eq!(super::of(&[0, 1, 0, 2, 9, 9]), Some(super::PRIVATE_MESSAGE));
            assert_eq!(super::of(&[0, 1, 0, 1]), Some(super::PUBLIC_MESSAGE));
            assert_eq!(super::of(&[0, 2, 0, 1]), None, "another protocol version");
            assert_eq!(super::of(&[0, 1, 0]), None);
        }
    }
}
