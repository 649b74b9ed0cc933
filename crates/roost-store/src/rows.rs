//! Records read from rows, the same way on every sqlx backend: each backend's own SQL names the
//! columns, these decoders turn them into records and refuse values that do not parse.

use roost_proto::conversation::ConversationKind;
use roost_proto::{ConversationId, DeviceId, UserId};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::sql::{corrupt, decode_retention, to_u64};
use crate::{
    ConversationRecord, DeviceRecord, EntryRecord, LinkRecord, MemberDevice, MemberRef, QueueRecord, StoreResult,
};

/// A row whose columns are read by name as the value types the stores use (BLOB/BYTEA, 64-bit
/// integers, text, booleans; each possibly NULL).
pub trait Columns {
    /// A byte-string column.
    fn bytes(&self, column: &str) -> StoreResult<Vec<u8>>;
    /// A byte-string column that may be NULL.
    fn maybe_bytes(&self, column: &str) -> StoreResult<Option<Vec<u8>>>;
    /// An integer column.
    fn int(&self, column: &str) -> StoreResult<i64>;
    /// An integer column that may be NULL.
    fn maybe_int(&self, column: &str) -> StoreResult<Option<i64>>;
    /// A text column.
    fn text(&self, column: &str) -> StoreResult<String>;
    /// A text column that may be NULL.
    fn maybe_text(&self, column: &str) -> StoreResult<Option<String>>;
    /// A boolean column.
    fn flag(&self, column: &str) -> StoreResult<bool>;
}

impl<R> Columns for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    fn bytes(&self, column: &str) -> StoreResult<Vec<u8>> {
        Ok(self.try_get(column)?)
    }

    fn maybe_bytes(&self, column: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.try_get(column)?)
    }

    fn int(&self, column: &str) -> StoreResult<i64> {
        Ok(self.try_get(column)?)
    }

    fn maybe_int(&self, column: &str) -> StoreResult<Option<i64>> {
        Ok(self.try_get(column)?)
    }

    fn text(&self, column: &str) -> StoreResult<String> {
        Ok(self.try_get(column)?)
    }

    fn maybe_text(&self, column: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(column)?)
    }

    fn flag(&self, column: &str) -> StoreResult<bool> {
        Ok(self.try_get(column)?)
    }
}

/// A device from `id, user_id, certificate, name, created_at, revoked_at`.
pub fn device_record(row: &impl Columns) -> StoreResult<DeviceRecord> {
    Ok(DeviceRecord {
        id: device_id_at(row, "id")?,
        user_id: user_id_at(row, "user_id")?,
        certificate: row.bytes("certificate")?,
        name: row.maybe_text("name")?,
        created_at: row.int("created_at")?,
        revoked_at: row.maybe_int("revoked_at")?,
    })
}

/// A link request from `code, device_id, expires_at, user_id, certificate`.
pub fn link_record(row: &impl Columns) -> StoreResult<LinkRecord> {
    let approved = match (row.maybe_bytes("user_id")?, row.maybe_bytes("certificate")?) {
        (Some(user), Some(certificate)) => {
            Some((UserId::from_slice(&user).map_err(|_| corrupt("link_requests.user_id"))?, certificate))
        }
        _ => None,
    };
    Ok(LinkRecord {
        code: row.text("code")?,
        device_id: device_id_at(row, "device_id")?,
        expires_at: row.int("expires_at")?,
        approved,
    })
}

/// A conversation from `id, kind, epoch, group_info, last_seq, retention, retention_ttl_ms,
/// created_at`.
pub fn conversation_row(row: &impl Columns) -> StoreResult<ConversationRecord> {
    Ok(ConversationRecord {
        id: conversation_id_at(row, "id")?,
        kind: row.text("kind")?.parse::<ConversationKind>().map_err(|_| corrupt("conversations.kind"))?,
        epoch: to_u64(row.int("epoch")?),
        group_info: row.bytes("group_info")?,
        last_seq: to_u64(row.int("last_seq")?),
        retention: decode_retention(&row.text("retention")?, row.maybe_int("retention_ttl_ms")?)?,
        created_at: row.int("created_at")?,
    })
}

/// A device's membership from `device_id, user_id, joined_seq, acked_seq, removed_seq`.
pub fn member_device_row(row: &impl Columns) -> StoreResult<MemberDevice> {
    Ok(MemberDevice {
        member: MemberRef { user_id: user_id_at(row, "user_id")?, device_id: device_id_at(row, "device_id")? },
        joined_seq: to_u64(row.int("joined_seq")?),
        acked_seq: to_u64(row.int("acked_seq")?),
        removed_seq: row.maybe_int("removed_seq")?.map(to_u64),
    })
}

/// A log entry from `conversation_id, seq, kind, sender_user, sender_device, epoch, payload,
/// created_at`.
pub fn entry_row(row: &impl Columns) -> StoreResult<EntryRecord> {
    Ok(EntryRecord {
        conversation_id: conversation_id_at(row, "conversation_id")?,
        seq: to_u64(row.int("seq")?),
        kind: row.text("kind")?.parse().map_err(|_| corrupt("entries.kind"))?,
        sender: MemberRef { user_id: user_id_at(row, "sender_user")?, device_id: device_id_at(row, "sender_device")? },
        epoch: to_u64(row.int("epoch")?),
        payload: row.bytes("payload")?,
        created_at: row.int("created_at")?,
    })
}

/// A queue entry from `id, kind, conversation_id, seq, sender_device, created_at` and its
/// payload, inline (`payload`) or shared (`blob`).
pub fn queue_row(row: &impl Columns) -> StoreResult<QueueRecord> {
    let conversation = row.maybe_bytes("conversation_id")?;
    let sender = row.maybe_bytes("sender_device")?;
    Ok(QueueRecord {
        id: to_u64(row.int("id")?),
        kind: row.text("kind")?.parse().map_err(|_| corrupt("device_queue.kind"))?,
        conversation_id: conversation
            .map(|raw| ConversationId::from_slice(&raw).map_err(|_| corrupt("device_queue.conversation_id")))
            .transpose()?,
        seq: row.maybe_int("seq")?.map(to_u64),
        sender_device: sender
            .map(|raw| DeviceId::from_slice(&raw).map_err(|_| corrupt("device_queue.sender_device")))
            .transpose()?,
        payload: row.maybe_bytes("blob")?.or(row.maybe_bytes("payload")?).unwrap_or_default(),
        created_at: row.int("created_at")?,
    })
}

/// A user id column.
pub fn user_id_at(row: &impl Columns, column: &'static str) -> StoreResult<UserId> {
    UserId::from_slice(&row.bytes(column)?).map_err(|_| corrupt(column))
}

/// A device id column.
pub fn device_id_at(row: &impl Columns, column: &'static str) -> StoreResult<DeviceId> {
    DeviceId::from_slice(&row.bytes(column)?).map_err(|_| corrupt(column))
}

/// A conversation id column.
pub fn conversation_id_at(row: &impl Columns, column: &'static str) -> StoreResult<ConversationId> {
    ConversationId::from_slice(&row.bytes(column)?).map_err(|_| corrupt(column))
}

/// An attachment from the columns of [`crate::attachment_sql::COLUMNS`].
pub fn attachment_row(row: &impl Columns) -> StoreResult<crate::AttachmentRecord> {
    Ok(crate::AttachmentRecord {
        id: roost_proto::AttachmentId::from_slice(&row.bytes("id")?).map_err(|_| corrupt("attachments.id"))?,
        conversation_id: conversation_id_at(row, "conversation_id")?,
        uploader: MemberRef {
            user_id: user_id_at(row, "uploader_user")?,
            device_id: device_id_at(row, "uploader_device")?,
        },
        length: to_u64(row.int("length")?),
        sha256: row.bytes("sha256")?,
        chunk_bytes: to_u64(row.int("chunk_bytes")?),
        received: to_u64(row.int("received")?),
        hash_state: row.bytes("hash_state")?,
        completed_at: row.maybe_int("completed_at")?,
        completed_seq: row.maybe_int("completed_seq")?.map(to_u64),
        created_at: row.int("created_at")?,
    })
}

/// A push subscription from the columns of [`crate::push_sql::SELECT`].
pub fn push_subscription_row(row: &impl Columns) -> StoreResult<crate::PushSubscriptionRecord> {
    Ok(crate::PushSubscriptionRecord {
        device_id: device_id_at(row, "device_id")?,
        user_id: user_id_at(row, "user_id")?,
        endpoint: row.text("endpoint")?,
        p256dh: row.bytes("p256dh")?,
        auth: row.bytes("auth")?,
        created_at: row.int("created_at")?,
    })
}
