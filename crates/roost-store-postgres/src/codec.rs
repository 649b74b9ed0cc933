//! How records map to PostgreSQL rows and values, in one place: the columns this backend's SQL
//! reads, and the decoders and value encodings (shared with the other sqlx backend, since the
//! columns carry the same names and types).

pub(crate) use roost_store::rows::{
    conversation_id_at, conversation_row, device_id_at, device_record, entry_row, link_record, member_device_row,
    queue_row, user_id_at,
};
pub(crate) use roost_store::sql::{corrupt, encode_retention, to_i64, to_u64};

/// The columns [`conversation_row`] reads.
pub(crate) const CONVERSATION_COLUMNS: &str =
    "id, kind, epoch, group_info, last_seq, retention, retention_ttl_ms, created_at";
/// The columns [`entry_row`] reads.
pub(crate) const ENTRY_COLUMNS: &str =
    "conversation_id, seq, kind, sender_user, sender_device, epoch, payload, created_at";
/// The columns [`member_device_row`] reads.
pub(crate) const MEMBER_COLUMNS: &str = "device_id, user_id, joined_seq, acked_seq, removed_seq";
/// The columns [`device_record`] reads.
pub(crate) const DEVICE_COLUMNS: &str = "id, user_id, certificate, name, created_at, revoked_at";
/// The columns [`link_record`] reads.
pub(crate) const LINK_COLUMNS: &str = "code, device_id, expires_at, user_id, certificate";

/// Key bytes as a PostgreSQL `bytea[]` parameter.
pub(crate) fn byte_arrays<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Vec<Vec<u8>> {
    keys.into_iter().map(<[u8]>::to_vec).collect()
}
