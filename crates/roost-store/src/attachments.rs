//! The attachment half of the store: uploads in progress, completed attachments, who fetched
//! them, and each user's bytes per day. The bytes themselves live outside the database (a
//! directory or an object store); a row says how many of them are durably written.
//!
//! Rules a backend must keep (checked by the conformance suite):
//! - an upload is created only by a current member device, and only if the user's bytes for
//!   the day stay within the quota (checked and counted in one transaction);
//! - an upload's offset only moves by compare-and-set from the value the writer read;
//! - [`AttachmentStore::expired_attachments`] names every attachment that retention, the
//!   maximum age, burn-on-read or the end of its conversation would delete, and abandoned
//!   uploads.

use async_trait::async_trait;
use roost_proto::{AttachmentId, ConversationId, DeviceId};

use crate::{MemberRef, StoreResult};

/// An upload to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAttachment {
    /// Its id (random).
    pub id: AttachmentId,
    /// The conversation it is for.
    pub conversation_id: ConversationId,
    /// The uploading device.
    pub uploader: MemberRef,
    /// The ciphertext length announced.
    pub length: u64,
    /// SHA-256 of the ciphertext announced.
    pub sha256: Vec<u8>,
    /// How the bytes are cut into stored chunks.
    pub chunk_bytes: u64,
    /// The hash state of zero bytes.
    pub hash_state: Vec<u8>,
    /// Now.
    pub now: i64,
    /// The most bytes the user may announce on this UTC day, this upload included.
    pub daily_quota: u64,
}

/// A stored attachment or upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentRecord {
    /// Its id.
    pub id: AttachmentId,
    /// The conversation it is for.
    pub conversation_id: ConversationId,
    /// The uploading device.
    pub uploader: MemberRef,
    /// The ciphertext length announced.
    pub length: u64,
    /// SHA-256 of the ciphertext announced.
    pub sha256: Vec<u8>,
    /// How the bytes are cut into stored chunks.
    pub chunk_bytes: u64,
    /// How many bytes are durably stored.
    pub received: u64,
    /// The SHA-256 state after `received` bytes.
    pub hash_state: Vec<u8>,
    /// When the last byte arrived and matched; `None` while uploading.
    pub completed_at: Option<i64>,
    /// The conversation's last sequence number when the upload completed.
    pub completed_seq: Option<u64>,
    /// When the upload was created.
    pub created_at: i64,
}

impl AttachmentRecord {
    /// How many stored chunks the attachment has (or will have).
    pub fn chunks(&self) -> u64 {
        self.length.div_ceil(self.chunk_bytes.max(1))
    }
}

/// An upload's progress to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadProgress {
    /// The upload.
    pub id: AttachmentId,
    /// The offset the writer started from; the write applies only if it is still the stored one.
    pub from: u64,
    /// The new offset.
    pub to: u64,
    /// The SHA-256 state after `to` bytes.
    pub hash_state: Vec<u8>,
    /// Set when the last byte arrived and the digest matched.
    pub completed_at: Option<i64>,
}

/// Storage of attachment records.
#[async_trait]
pub trait AttachmentStore: Send + Sync + 'static {
    /// Creates an upload. Errors: `NotAMember` (the device is not a current member),
    /// `QuotaExceeded`.
    async fn create_attachment(&self, attachment: NewAttachment) -> StoreResult<()>;

    /// An attachment or upload.
    async fn attachment(&self, id: &AttachmentId) -> StoreResult<Option<AttachmentRecord>>;

    /// Moves an upload's offset. Errors: `NotFound`, `OffsetMismatch` (another write moved it).
    async fn record_upload(&self, progress: UploadProgress) -> StoreResult<()>;

    /// Notes that the device fetched the attachment's last byte (for burn-on-read).
    async fn record_fetch(&self, id: &AttachmentId, device: &DeviceId) -> StoreResult<()>;

    /// Up to `limit` attachments to delete now: completed ones past their conversation's TTL or
    /// the maximum age (`max_age_ms`, `None` for unlimited); burn-on-read ones every device that
    /// could read the message carrying them has fetched (current member devices that joined
    /// before the upload completed, the uploading device aside); those of conversations without
    /// any current member device; uploads created before `abandoned_before` and never completed.
    async fn expired_attachments(
        &self,
        now: i64,
        max_age_ms: Option<i64>,
        abandoned_before: i64,
        limit: u32,
    ) -> StoreResult<Vec<AttachmentRecord>>;

    /// Deletes an attachment's record and its fetches (its bytes must be gone first), and the
    /// daily byte counts of days before `now`'s.
    async fn delete_attachment(&self, id: &AttachmentId, now: i64) -> StoreResult<()>;
}

/// The UTC day (days since the Unix epoch) of a time in milliseconds: the quota's unit.
pub fn quota_day(now_ms: i64) -> i64 {
    now_ms.div_euclid(86_400_000)
}

/// SQL shared by the backends (both take `$n` placeholders).
pub mod sql {
    /// Counts the announced bytes against the day's quota: `$1` user, `$2` day, `$3` bytes,
    /// `$4` quota. Affects no row when the quota would be exceeded.
    pub const COUNT_BYTES: &str = "INSERT INTO attachment_usage (user_id, day, bytes) SELECT $1, $2, $3 WHERE $3 <= $4 \
         ON CONFLICT (user_id, day) DO UPDATE SET bytes = attachment_usage.bytes + excluded.bytes \
         WHERE attachment_usage.bytes + excluded.bytes <= $4";

    /// Whether `$2` is a current member device of conversation `$1`.
    pub const IS_MEMBER: &str = "SELECT 1 AS member FROM conversation_devices WHERE conversation_id = $1 AND device_id = $2 AND removed_seq IS NULL";

    /// Inserts an upload.
    pub const INSERT: &str = "INSERT INTO attachments (id, conversation_id, uploader_user, uploader_device, length, \
         sha256, chunk_bytes, received, hash_state, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9)";

    /// The columns [`crate::rows::attachment_row`] reads.
    macro_rules! columns {
        () => {
            "a.id, a.conversation_id, a.uploader_user, a.uploader_device, a.length, a.sha256, a.chunk_bytes, \
             a.received, a.hash_state, a.completed_at, a.completed_seq, a.created_at"
        };
    }

    /// One attachment (`$1`).
    pub const SELECT: &str = concat!("SELECT ", columns!(), " FROM attachments a WHERE a.id = $1");

    /// Moves an upload's offset from `$2` to `$3` (`$4` hash state, `$5` completion time or NULL);
    /// on completion records the conversation's last sequence number.
    pub const ADVANCE: &str = "UPDATE attachments SET received = $3, hash_state = $4, completed_at = $5, \
         completed_seq = CASE WHEN $5 IS NULL THEN NULL ELSE \
         (SELECT c.last_seq FROM conversations c WHERE c.id = attachments.conversation_id) END \
         WHERE id = $1 AND received = $2 AND completed_at IS NULL";

    /// Records a fetch (`$1` attachment, `$2` device), once.
    pub const FETCH: &str =
        "INSERT INTO attachment_fetches (attachment_id, device_id) VALUES ($1, $2) ON CONFLICT DO NOTHING";

    /// Attachments to delete: `$1` now, `$2` maximum-age cutoff (or NULL), `$3` abandoned-upload
    /// cutoff, `$4` limit.
    pub const EXPIRED: &str = concat!(
        "SELECT ",
        columns!(),
        " FROM attachments a JOIN conversations c ON c.id = a.conversation_id WHERE \
         (a.completed_at IS NULL AND a.created_at <= $3) \
         OR (a.completed_at IS NOT NULL AND c.retention = 'ttl' AND a.completed_at <= $1 - c.retention_ttl_ms) \
         OR ($2 IS NOT NULL AND a.created_at <= $2) \
         OR NOT EXISTS (SELECT 1 FROM conversation_devices d WHERE d.conversation_id = a.conversation_id \
             AND d.removed_seq IS NULL) \
         OR (a.completed_at IS NOT NULL AND c.retention = 'burn_on_read' AND NOT EXISTS ( \
             SELECT 1 FROM conversation_devices d WHERE d.conversation_id = a.conversation_id \
             AND d.removed_seq IS NULL AND d.joined_seq <= a.completed_seq AND d.device_id <> a.uploader_device \
             AND NOT EXISTS (SELECT 1 FROM attachment_fetches f WHERE f.attachment_id = a.id \
                 AND f.device_id = d.device_id))) \
         LIMIT $4"
    );

    /// Deletes an attachment's fetches (`$1`).
    pub const DELETE_FETCHES: &str = "DELETE FROM attachment_fetches WHERE attachment_id = $1";
    /// Deletes an attachment (`$1`).
    pub const DELETE: &str = "DELETE FROM attachments WHERE id = $1";
    /// Deletes the byte counts of days before `$1`.
    pub const DELETE_OLD_USAGE: &str = "DELETE FROM attachment_usage WHERE day < $1";
}

/// Implements [`AttachmentStore`] for an sqlx store with the shared SQL: `$store` is the type,
/// `$writer` and `$reader` its pools for writes and reads (the same pool on PostgreSQL). Both
/// SQL backends use it, so the two implementations cannot drift apart.
#[cfg(feature = "sqlx")]
#[macro_export]
macro_rules! sql_attachment_store {
    ($store:ty, $writer:ident, $reader:ident) => {
        #[async_trait::async_trait]
        impl $crate::AttachmentStore for $store {
            async fn create_attachment(&self, attachment: $crate::NewAttachment) -> $crate::StoreResult<()> {
                $crate::timed("create_attachment", async {
                    let mut tx = self.$writer.begin().await?;
                    let member = sqlx::query($crate::attachment_sql::IS_MEMBER)
                        .bind(attachment.conversation_id.as_bytes().as_slice())
                        .bind(attachment.uploader.device_id.as_bytes().as_slice())
                        .fetch_optional(&mut *tx)
                        .await?;
                    if member.is_none() {
                        return Err($crate::StoreError::NotAMember);
                    }
                    let counted = sqlx::query($crate::attachment_sql::COUNT_BYTES)
                        .bind(attachment.uploader.user_id.as_bytes().as_slice())
                        .bind($crate::quota_day(attachment.now))
                        .bind($crate::sql::to_i64(attachment.length))
                        .bind($crate::sql::to_i64(attachment.daily_quota))
                        .execute(&mut *tx)
                        .await?;
                    if counted.rows_affected() == 0 {
                        return Err($crate::StoreError::QuotaExceeded);
                    }
                    sqlx::query($crate::attachment_sql::INSERT)
                        .bind(attachment.id.as_bytes().as_slice())
                        .bind(attachment.conversation_id.as_bytes().as_slice())
                        .bind(attachment.uploader.user_id.as_bytes().as_slice())
                        .bind(attachment.uploader.device_id.as_bytes().as_slice())
                        .bind($crate::sql::to_i64(attachment.length))
                        .bind(attachment.sha256.as_slice())
                        .bind($crate::sql::to_i64(attachment.chunk_bytes))
                        .bind(attachment.hash_state.as_slice())
                        .bind(attachment.now)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                })
                .await
            }

            async fn attachment(
                &self,
                id: &roost_proto::AttachmentId,
            ) -> $crate::StoreResult<Option<$crate::AttachmentRecord>> {
                $crate::timed("attachment", async {
                    let row = sqlx::query($crate::attachment_sql::SELECT)
                        .bind(id.as_bytes().as_slice())
                        .fetch_optional(&self.$reader)
                        .await?;
                    row.as_ref().map($crate::rows::attachment_row).transpose()
                })
                .await
            }

            async fn record_upload(&self, progress: $crate::UploadProgress) -> $crate::StoreResult<()> {
                $crate::timed("record_upload", async {
                    let mut tx = self.$writer.begin().await?;
                    let done = sqlx::query($crate::attachment_sql::ADVANCE)
                        .bind(progress.id.as_bytes().as_slice())
                        .bind($crate::sql::to_i64(progress.from))
                        .bind($crate::sql::to_i64(progress.to))
                        .bind(progress.hash_state.as_slice())
                        .bind(progress.completed_at)
                        .execute(&mut *tx)
                        .await?;
                    if done.rows_affected() == 0 {
                        let current: Option<i64> = sqlx::query_scalar("SELECT received FROM attachments WHERE id = $1")
                            .bind(progress.id.as_bytes().as_slice())
                            .fetch_optional(&mut *tx)
                            .await?;
                        return Err(match current {
                            Some(current) => {
                                $crate::StoreError::OffsetMismatch { current: $crate::sql::to_u64(current) }
                            }
                            None => $crate::StoreError::NotFound,
                        });
                    }
                    tx.commit().await?;
                    Ok(())
                })
                .await
            }

            async fn record_fetch(
                &self,
                id: &roost_proto::AttachmentId,
                device: &roost_proto::DeviceId,
            ) -> $crate::StoreResult<()> {
                $crate::timed("record_fetch", async {
                    sqlx::query($crate::attachment_sql::FETCH)
                        .bind(id.as_bytes().as_slice())
                        .bind(device.as_bytes().as_slice())
                        .execute(&self.$writer)
                        .await?;
                    Ok(())
                })
                .await
            }

            async fn expired_attachments(
                &self,
                now: i64,
                max_age_ms: Option<i64>,
                abandoned_before: i64,
                limit: u32,
            ) -> $crate::StoreResult<Vec<$crate::AttachmentRecord>> {
                $crate::timed("expired_attachments", async {
                    let rows = sqlx::query($crate::attachment_sql::EXPIRED)
                        .bind(now)
                        .bind(max_age_ms.map(|age| now.saturating_sub(age)))
                        .bind(abandoned_before)
                        .bind(i64::from(limit))
                        .fetch_all(&self.$reader)
                        .await?;
                    rows.iter().map($crate::rows::attachment_row).collect()
                })
                .await
            }

            async fn delete_attachment(&self, id: &roost_proto::AttachmentId, now: i64) -> $crate::StoreResult<()> {
                $crate::timed("delete_attachment", async {
                    let mut tx = self.$writer.begin().await?;
                    for statement in [$crate::attachment_sql::DELETE_FETCHES, $crate::attachment_sql::DELETE] {
                        sqlx::query(statement).bind(id.as_bytes().as_slice()).execute(&mut *tx).await?;
                    }
                    sqlx::query($crate::attachment_sql::DELETE_OLD_USAGE)
                        .bind($crate::quota_day(now))
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                })
                .await
            }
        }
    };
}
