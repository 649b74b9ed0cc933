//! The conversation half of the store: MLS groups, their logs, device positions and queues.
//!
//! Rules a backend must keep (checked by the conformance suite):
//! - a conversation's sequence numbers are assigned without gaps, one per log entry, in the same
//!   transaction that appends the entry;
//! - a commit is accepted only for the current epoch; the epoch check, the membership change,
//!   the log append and the Welcome queue entries happen in one transaction;
//! - a message is stored once per conversation however many devices are members (positions are
//!   per device), and a retried client message id returns the original result;
//! - an ack only moves the acknowledging device's own position, and only forward.

use async_trait::async_trait;
use roost_proto::conversation::{ConversationKind, EntryKind, QueueKind, RetentionPolicy};
use roost_proto::{ConversationId, DeviceId, UserId};

use crate::StoreResult;

/// A user's device, as a member of a conversation or the sender of something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRef {
    /// The user.
    pub user_id: UserId,
    /// The device.
    pub device_id: DeviceId,
}

/// A conversation to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConversation {
    /// The id chosen by the creator.
    pub id: ConversationId,
    /// Its kind.
    pub kind: ConversationKind,
    /// The MLS epoch after the creator added the initial members.
    pub epoch: u64,
    /// The GroupInfo of that epoch.
    pub group_info: Vec<u8>,
    /// The retention policy.
    pub retention: RetentionPolicy,
    /// The creating device.
    pub creator: MemberRef,
    /// The other initial member devices.
    pub members: Vec<MemberRef>,
    /// The Welcome for them (stored once, queued for each).
    pub welcome: Option<Vec<u8>>,
    /// Creation time.
    pub created_at: i64,
}

/// A stored conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRecord {
    /// Its id.
    pub id: ConversationId,
    /// Its kind.
    pub kind: ConversationKind,
    /// The current epoch.
    pub epoch: u64,
    /// The current GroupInfo.
    pub group_info: Vec<u8>,
    /// The last assigned sequence number (0 before the first entry).
    pub last_seq: u64,
    /// The retention policy.
    pub retention: RetentionPolicy,
    /// Creation time.
    pub created_at: i64,
}

/// A device's membership of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberDevice {
    /// The device and its user.
    pub member: MemberRef,
    /// The device sees entries after this sequence number.
    pub joined_seq: u64,
    /// Its acknowledged position.
    pub acked_seq: u64,
    /// When removed: the sequence number of the removing entry, the last it still receives.
    pub removed_seq: Option<u64>,
}

impl MemberDevice {
    /// Whether the device is a current member.
    pub fn is_active(&self) -> bool {
        self.removed_seq.is_none()
    }
}

/// A commit (or external join) to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitWrite {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The epoch the commit was made in; must be the current epoch.
    pub epoch: u64,
    /// The committing device.
    pub sender: MemberRef,
    /// True for an external join: the sender is not a member device yet and joins by this commit
    /// (its user must be a member).
    pub external: bool,
    /// The MLS commit.
    pub commit: Vec<u8>,
    /// The GroupInfo of the new epoch.
    pub group_info: Vec<u8>,
    /// Devices added.
    pub add: Vec<MemberRef>,
    /// The Welcome for the added devices.
    pub welcome: Option<Vec<u8>>,
    /// Devices removed.
    pub remove: Vec<DeviceId>,
    /// The most member users the conversation may have after the commit.
    pub max_users: u32,
    /// Now.
    pub now: i64,
}

/// The result of an accepted commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The commit's sequence number.
    pub seq: u64,
    /// The new epoch.
    pub epoch: u64,
}

/// An application message to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageWrite {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The sending device.
    pub sender: MemberRef,
    /// The sender's id for the message, for idempotent retries.
    pub client_message_id: String,
    /// The epoch it was encrypted in.
    pub epoch: u64,
    /// The ciphertext.
    pub payload: Vec<u8>,
    /// Now.
    pub now: i64,
}

/// The result of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's sequence number.
    pub seq: u64,
    /// When it was first accepted.
    pub created_at: i64,
    /// True when the client message id had been accepted before.
    pub duplicate: bool,
}

/// A stored log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRecord {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Its sequence number.
    pub seq: u64,
    /// What it is.
    pub kind: EntryKind,
    /// Who sent it.
    pub sender: MemberRef,
    /// The epoch it was sent in.
    pub epoch: u64,
    /// The opaque payload.
    pub payload: Vec<u8>,
    /// When it was accepted.
    pub created_at: i64,
}

/// A queue entry to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueWrite {
    /// The receiving device.
    pub device_id: DeviceId,
    /// What it is.
    pub kind: QueueKind,
    /// The conversation it concerns.
    pub conversation_id: Option<ConversationId>,
    /// The sequence number it refers to.
    pub seq: Option<u64>,
    /// The sending device.
    pub sender_device: Option<DeviceId>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// A stored queue entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRecord {
    /// Its id: a device's entries have increasing ids, in the order they become visible (ids of
    /// different devices' entries may repeat).
    pub id: u64,
    /// What it is.
    pub kind: QueueKind,
    /// The conversation it concerns.
    pub conversation_id: Option<ConversationId>,
    /// The sequence number it refers to.
    pub seq: Option<u64>,
    /// The sending device.
    pub sender_device: Option<DeviceId>,
    /// The payload.
    pub payload: Vec<u8>,
    /// When it was queued.
    pub created_at: i64,
}

/// Where a sync page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncCursor {
    /// Queue entries with a larger id.
    pub queue_after: u64,
    /// Conversation entries after this (conversation, seq), in (conversation, seq) order.
    pub entries_after: Option<(ConversationId, u64)>,
}

/// One page of a device's sync.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncPage {
    /// Unacknowledged conversation entries.
    pub entries: Vec<EntryRecord>,
    /// Queue entries.
    pub queue: Vec<QueueRecord>,
}

/// A member user with what others may see of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberUser {
    /// The user.
    pub user_id: UserId,
    /// Its read position.
    pub read_seq: u64,
    /// Whether it shares read receipts.
    pub read_receipts: bool,
}

/// A conversation as one device sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationView {
    /// The conversation.
    pub record: ConversationRecord,
    /// Its member users, in joining order.
    pub members: Vec<MemberUser>,
    /// The sequence number after which the device sees entries.
    pub joined_seq: u64,
    /// Retained messages from other users after the user's read position.
    pub unread: u64,
}

/// Storage of conversations, logs, positions and device queues.
#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// Creates a conversation with its initial member devices, queueing the Welcome for each.
    ///
    /// Errors: [`StoreError::ConversationExists`](crate::StoreError::ConversationExists).
    async fn create_conversation(&self, conversation: NewConversation) -> StoreResult<()>;

    /// A conversation.
    async fn conversation(&self, id: &ConversationId) -> StoreResult<Option<ConversationRecord>>;

    /// A device's membership row (current or removed).
    async fn member_device(&self, id: &ConversationId, device: &DeviceId) -> StoreResult<Option<MemberDevice>>;

    /// Whether the user is a member user of the conversation.
    async fn is_member_user(&self, id: &ConversationId, user: &UserId) -> StoreResult<bool>;

    /// The current member devices.
    async fn active_member_devices(&self, id: &ConversationId) -> StoreResult<Vec<MemberDevice>>;

    /// Applies a commit. Devices in `remove` that are not current members are ignored (the commit
    /// only cleans up the MLS tree for them). Errors: `NotFound`, `StaleEpoch`, `NotAMember`,
    /// `InvalidMembership` (adding a current member), `MemberLimitReached`.
    async fn commit(&self, commit: CommitWrite) -> StoreResult<CommitOutcome>;

    /// Appends an application message (or returns the original result of a retry). Errors:
    /// `NotFound`, `NotAMember`, `StaleEpoch`.
    async fn append_message(&self, message: MessageWrite) -> StoreResult<Appended>;

    /// Removes every device of the sender's user from the conversation and appends a `leave`
    /// entry. Returns its sequence number. Errors: `NotFound`, `NotAMember`.
    async fn leave(&self, id: &ConversationId, sender: MemberRef, payload: Vec<u8>, now: i64) -> StoreResult<u64>;

    /// A page of what the device has not acknowledged.
    async fn sync(&self, device: &DeviceId, cursor: SyncCursor, limit: u32) -> StoreResult<SyncPage>;

    /// The device's unacknowledged entries of one conversation after `after_seq`, in order (what
    /// a live connection fetches when it missed a push).
    async fn entries_for_device(
        &self,
        device: &DeviceId,
        id: &ConversationId,
        after_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<EntryRecord>>;

    /// The device's acknowledged position in each conversation it is a current member of.
    async fn positions(&self, device: &DeviceId) -> StoreResult<Vec<(ConversationId, u64)>>;

    /// The device's queue entries with ids above `after_id`, oldest first.
    async fn queue_for_device(&self, device: &DeviceId, after_id: u64, limit: u32) -> StoreResult<Vec<QueueRecord>>;

    /// The current member devices of every conversation the user is in (the user's own
    /// included): who hears about the user's presence and device list.
    async fn contact_devices(&self, user: &UserId) -> StoreResult<Vec<DeviceId>>;

    /// Moves the device's positions forward (never back, never past the last entry) and deletes
    /// its queue entries up to `queue_up_to`. Burn-on-read entries every member device has
    /// acknowledged are deleted in the same transaction. Errors: `NotAMember` (nothing changes).
    async fn ack(
        &self,
        device: &DeviceId,
        positions: &[(ConversationId, u64)],
        queue_up_to: Option<u64>,
    ) -> StoreResult<()>;

    /// Retained entries with `after < seq < before`, newest first.
    async fn history(&self, id: &ConversationId, after: u64, before: u64, limit: u32) -> StoreResult<Vec<EntryRecord>>;

    /// The device's current conversations with ids above `after`, by id.
    async fn conversations_of(
        &self,
        device: &DeviceId,
        user: &UserId,
        after: Option<ConversationId>,
        limit: u32,
    ) -> StoreResult<Vec<ConversationView>>;

    /// One conversation as the device sees it, if the device is a current member.
    async fn conversation_view(
        &self,
        id: &ConversationId,
        device: &DeviceId,
        user: &UserId,
    ) -> StoreResult<Option<ConversationView>>;

    /// Whether two users are both members of some conversation.
    async fn share_conversation(&self, a: &UserId, b: &UserId) -> StoreResult<bool>;

    /// Moves the user's read position forward. Returns the new position if it moved.
    async fn advance_read_marker(&self, id: &ConversationId, user: &UserId, seq: u64) -> StoreResult<Option<u64>>;

    /// Sets the retention policy.
    async fn set_retention(&self, id: &ConversationId, retention: RetentionPolicy) -> StoreResult<()>;

    /// Adds queue entries. Returns their ids.
    async fn enqueue(&self, entries: Vec<QueueWrite>, now: i64) -> StoreResult<Vec<u64>>;

    /// Whether the user shares read receipts.
    async fn read_receipts(&self, user: &UserId) -> StoreResult<bool>;

    /// Sets whether the user shares read receipts.
    async fn set_read_receipts(&self, user: &UserId, enabled: bool) -> StoreResult<()>;

    /// Deletes entries past their conversation's TTL or the server's maximum age
    /// (`max_age_ms`, `None` for unlimited), queue entries and idempotency records past the
    /// maximum age, and Welcome payloads no queue entry refers to any more. Unlike the other
    /// methods it is not one transaction: it deletes at most `batch` rows per transaction, so
    /// that pruning a large backlog never holds the writers up for long. Returns how many rows
    /// went.
    async fn prune_retention(&self, now: i64, max_age_ms: Option<i64>, batch: u32) -> StoreResult<u64>;
}
