//! How records map to SQLite rows and values, in one place: the columns this backend's SQL
//! reads, and the decoders and value encodings (shared with the other sqlx backend, since the
//! columns carry the same names and types).

pub(crate) use roost_store::rows::{
    conversation_id_at, conversation_row, device_id_at, device_record, entry_row, link_record, member_device_row,
    queue_row, user_id_at,
};
pub(crate) use roost_store::sql::{corrupt, encode_retention, to_i64, to_u64};

/// The columns of an entry, as [`entry_row`] reads them.
pub(crate) const ENTRY_COLUMNS: &str =
    "conversation_id, seq, kind, sender_user, sender_device, epoch, payload, created_at";

pub(crate) fn prefixed_entry_columns(alias: &str) -> String {
    ENTRY_COLUMNS.split(", ").map(|column| format!("{alias}.{column}")).collect::<Vec<_>>().join(", ")
}
