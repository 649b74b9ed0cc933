//! How records map to SQLite rows and values, in one place: every row decoder and value
//! encoding of the backend.

use roost_proto::conversation::ConversationKind;
use roost_proto::{ConversationId, DeviceId, UserId};
pub(crate) use roost_store::sql::{corrupt, decode_retention, encode_retention, to_i64, to_u64};
use roost_store::{
    ConversationRecord, DeviceRecord, EntryRecord, LinkRecord, MemberDevice, MemberRef, QueueRecord, StoreResult,
};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

/// The columns of an entry, as [`entry_row`] reads them.
pub(crate) const ENTRY_COLUMNS: &str =
    "conversation_id, seq, kind, sender_user, sender_device, epoch, payload, created_at";

pub(crate) fn device_record(row: &SqliteRow) -> StoreResult<DeviceRecord> {
    Ok(DeviceRecord {
        id: device_id_at(row, "id")?,
        user_id: user_id_at(row, "user_id")?,
        certificate: row.try_get("certificate")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

pub(crate) fn link_record(row: &SqliteRow) -> StoreResult<LinkRecord> {
    let approver: Option<Vec<u8>> = row.try_get("user_id")?;
    let certificate: Option<Vec<u8>> = row.try_get("certificate")?;
    let approved = match (approver, certificate) {
        (Some(user), Some(certificate)) => {
            Some((UserId::from_slice(&user).map_err(|_| corrupt("link_requests.user_id"))?, certificate))
        }
        _ => None,
    };
    Ok(LinkRecord {
        code: row.try_get("code")?,
        device_id: device_id_at(row, "device_id")?,
        expires_at: row.try_get("expires_at")?,
        approved,
    })
}

pub(crate) fn user_id_at(row: &SqliteRow, column: &'static str) -> StoreResult<UserId> {
    let raw: Vec<u8> = row.try_get(column)?;
    UserId::from_slice(&raw).map_err(|_| corrupt(column))
}

pub(crate) fn device_id_at(row: &SqliteRow, column: &'static str) -> StoreResult<DeviceId> {
    let raw: Vec<u8> = row.try_get(column)?;
    DeviceId::from_slice(&raw).map_err(|_| corrupt(column))
}

pub(crate) fn conversation_row(row: &SqliteRow) -> StoreResult<ConversationRecord> {
    let kind: String = row.try_get("kind")?;
    let retention: String = row.try_get("retention")?;
    let ttl_ms: Option<i64> = row.try_get("retention_ttl_ms")?;
    Ok(ConversationRecord {
        id: conversation_id_at(row, "id")?,
        kind: kind.parse::<ConversationKind>().map_err(|_| corrupt("conversations.kind"))?,
        epoch: to_u64(row.try_get("epoch")?),
        group_info: row.try_get("group_info")?,
        last_seq: to_u64(row.try_get("last_seq")?),
        retention: decode_retention(&retention, ttl_ms)?,
        created_at: row.try_get("created_at")?,
    })
}

pub(crate) fn member_device_row(row: &SqliteRow) -> StoreResult<MemberDevice> {
    Ok(MemberDevice {
        member: MemberRef { user_id: user_id_at(row, "user_id")?, device_id: device_id_at(row, "device_id")? },
        joined_seq: to_u64(row.try_get("joined_seq")?),
        acked_seq: to_u64(row.try_get("acked_seq")?),
        removed_seq: row.try_get::<Option<i64>, _>("removed_seq")?.map(to_u64),
    })
}

pub(crate) fn entry_row(row: &SqliteRow) -> StoreResult<EntryRecord> {
    let kind: String = row.try_get("kind")?;
    Ok(EntryRecord {
        conversation_id: conversation_id_at(row, "conversation_id")?,
        seq: to_u64(row.try_get("seq")?),
        kind: kind.parse().map_err(|_| corrupt("entries.kind"))?,
        sender: MemberRef { user_id: user_id_at(row, "sender_user")?, device_id: device_id_at(row, "sender_device")? },
        epoch: to_u64(row.try_get("epoch")?),
        payload: row.try_get("payload")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(crate) fn queue_row(row: &SqliteRow) -> StoreResult<QueueRecord> {
    let kind: String = row.try_get("kind")?;
    let conversation: Option<Vec<u8>> = row.try_get("conversation_id")?;
    let sender: Option<Vec<u8>> = row.try_get("sender_device")?;
    let inline: Option<Vec<u8>> = row.try_get("payload")?;
    let blob: Option<Vec<u8>> = row.try_get("blob")?;
    Ok(QueueRecord {
        id: to_u64(row.try_get("id")?),
        kind: kind.parse().map_err(|_| corrupt("device_queue.kind"))?,
        conversation_id: conversation
            .map(|raw| ConversationId::from_slice(&raw).map_err(|_| corrupt("device_queue.conversation_id")))
            .transpose()?,
        seq: row.try_get::<Option<i64>, _>("seq")?.map(to_u64),
        sender_device: sender
            .map(|raw| DeviceId::from_slice(&raw).map_err(|_| corrupt("device_queue.sender_device")))
            .transpose()?,
        payload: blob.or(inline).unwrap_or_default(),
        created_at: row.try_get("created_at")?,
    })
}

pub(crate) fn conversation_id_at(row: &SqliteRow, column: &'static str) -> StoreResult<ConversationId> {
    let raw: Vec<u8> = row.try_get(column)?;
    ConversationId::from_slice(&raw).map_err(|_| corrupt(column))
}

pub(crate) fn prefixed_entry_columns(alias: &str) -> String {
    ENTRY_COLUMNS.split(", ").map(|column| format!("{alias}.{column}")).collect::<Vec<_>>().join(", ")
}
