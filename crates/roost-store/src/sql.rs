//! Values as the SQL backends store them: how a retention policy and unsigned counters map to
//! columns, and the error for a stored value that does not decode.

use roost_proto::conversation::RetentionPolicy;

use crate::{StoreError, StoreResult};

/// A retention policy as its two columns: the policy's name and, for `ttl`, the TTL in
/// milliseconds.
pub fn encode_retention(retention: RetentionPolicy) -> (&'static str, Option<i64>) {
    match retention {
        RetentionPolicy::BurnOnRead => ("burn_on_read", None),
        RetentionPolicy::Ttl { ttl_secs } => ("ttl", Some(to_i64(ttl_secs.saturating_mul(1000)))),
        RetentionPolicy::Permanent => ("permanent", None),
    }
}

/// The retention policy stored as [`encode_retention`] wrote it.
pub fn decode_retention(kind: &str, ttl_ms: Option<i64>) -> StoreResult<RetentionPolicy> {
    match (kind, ttl_ms) {
        ("burn_on_read", _) => Ok(RetentionPolicy::BurnOnRead),
        ("ttl", Some(ms)) => Ok(RetentionPolicy::Ttl { ttl_secs: to_u64(ms) / 1000 }),
        ("permanent", _) => Ok(RetentionPolicy::Permanent),
        _ => Err(corrupt("conversations.retention")),
    }
}

/// Sequence numbers and epochs are u64 on the wire and 64-bit signed integers in SQL; real
/// values stay far below 2^63, and anything beyond saturates rather than wraps.
pub fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored counter as u64 (a negative value, which no write produces, reads as 0).
pub fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The error for a stored value that is not well formed.
pub fn corrupt(column: &str) -> StoreError {
    StoreError::Backend(format!("stored value in {column} is not well formed"))
}
