//! WebSocket frames. Every frame is a JSON text message with a `type` field.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::bytes::Base64Bytes;
use crate::conversation::{AckRequest, ConversationId, Entry, QueueEntry};
use crate::error::{ErrorCode, ErrorDetail};
use crate::ids::{DeviceId, UserId};

/// Close codes the server uses (4000–4999 is the application range).
pub mod close {
    /// No valid `auth` frame arrived in time, or its token was refused.
    pub const UNAUTHENTICATED: u16 = 4001;
    /// A newer connection of the same device took over.
    pub const REPLACED: u16 = 4002;
    /// The user already has the maximum number of connections.
    pub const TOO_MANY_CONNECTIONS: u16 = 4003;
    /// The device was revoked.
    pub const REVOKED: u16 = 4004;
    /// No frame or pong within the idle timeout.
    pub const IDLE: u16 = 4005;
    /// The session the socket authenticated with ended: logged out, or expired.
    pub const SESSION_ENDED: u16 = 4006;
    /// The client did not read fast enough; its outgoing buffer filled up.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A client frame was larger than the server accepts (`gateway.max_client_frame_bytes`).
    pub const TOO_LARGE: u16 = 1009;
}

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Must be the first frame: the session token from `POST /v1/auth/session`.
    Auth {
        /// The bearer token.
        token: String,
    },
    /// Same semantics as `POST /v1/ack`.
    Ack(AckRequest),
    /// The user is (or stopped) typing in a conversation. Delivered to online member devices,
    /// never stored.
    Typing {
        /// The conversation.
        conversation_id: ConversationId,
        /// Typing now, or stopped.
        active: bool,
    },
    /// Opt in to (or out of) presence: users sharing a conversation see this user come online
    /// and go offline.
    Presence {
        /// Whether to be visible.
        visible: bool,
    },
    /// Same semantics as `POST /v1/conversations/{id}/messages`, answered by a `sent` or a
    /// `send_failed` frame carrying the same conversation and client message id. Several may be
    /// in flight at once; their answers can come in any order.
    Send {
        /// The conversation.
        conversation_id: ConversationId,
        /// Chosen by the sending device (1 to 64 characters); a retry with the same id returns
        /// the original result and stores nothing.
        client_message_id: String,
        /// The epoch the ciphertext was encrypted in; it must be the current epoch.
        epoch: u64,
        /// The MLS ciphertext.
        ciphertext: Base64Bytes,
        /// Deliver only to devices online now and never store.
        #[serde(default)]
        ephemeral: bool,
    },
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Authentication succeeded; delivery starts.
    Ready {
        /// The authenticated user.
        user_id: UserId,
        /// The authenticated device.
        device_id: DeviceId,
    },
    /// A conversation entry (as in sync), pushed once committed, in order per conversation.
    Entry(Entry),
    /// A queue entry (as in sync): Welcome, device message, `keys_low`, read marker, removal.
    Queue(QueueEntry),
    /// Everything stored for the device before it connected has been sent.
    QueueEmpty,
    /// An ephemeral message (never stored).
    Ephemeral {
        /// The conversation.
        conversation_id: ConversationId,
        /// The sending user.
        sender_user: UserId,
        /// The sending device.
        sender_device: DeviceId,
        /// The epoch it was encrypted in.
        epoch: u64,
        /// The ciphertext.
        payload: Base64Bytes,
    },
    /// A member is typing (or stopped).
    Typing {
        /// The conversation.
        conversation_id: ConversationId,
        /// Who.
        user_id: UserId,
        /// On which device.
        device_id: DeviceId,
        /// Typing now, or stopped.
        active: bool,
    },
    /// A member read up to `seq` (only for members with read receipts on).
    ReadReceipt {
        /// The conversation.
        conversation_id: ConversationId,
        /// The reader.
        user_id: UserId,
        /// Their read position.
        seq: u64,
    },
    /// A user sharing a conversation came online or went offline (only users who opted in).
    Presence {
        /// The user.
        user_id: UserId,
        /// Online now.
        online: bool,
        /// When last seen (now, when online).
        last_seen: i64,
    },
    /// A user's device list changed (a device was linked or revoked): fetch it again and verify
    /// the certificates.
    DevicesChanged {
        /// The user.
        user_id: UserId,
    },
    /// A `send` frame's message was accepted: committed and synced to disk, as a `2xx` reply to
    /// `POST /v1/conversations/{id}/messages` means.
    Sent {
        /// The conversation.
        conversation_id: ConversationId,
        /// The sender's id for the message.
        client_message_id: String,
        /// The message's sequence number (absent for ephemeral sends).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// When the server accepted it.
        created_at: i64,
        /// True when this was a retry of an already accepted client message id.
        duplicate: bool,
    },
    /// A `send` frame's message was refused; nothing was stored. The error is what the HTTP
    /// send would have answered (`stale_epoch` with the current epoch, `not_a_member`, ...).
    SendFailed {
        /// The conversation.
        conversation_id: ConversationId,
        /// The sender's id for the message.
        client_message_id: String,
        /// Why.
        error: ErrorDetail,
    },
    /// A frame from the client was refused; the connection stays open.
    Error {
        /// The stable code, as in HTTP errors.
        code: ErrorCode,
        /// A short explanation.
        message: String,
    },
}
