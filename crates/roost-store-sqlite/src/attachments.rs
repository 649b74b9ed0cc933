//! [`AttachmentStore`] on SQLite, with the SQL the backends share.

use async_trait::async_trait;
use roost_proto::{AttachmentId, DeviceId};
use roost_store::attachment_sql as sql;
use roost_store::rows::attachment_row;
use roost_store::sql::to_i64;
use roost_store::{
    AttachmentRecord, AttachmentStore, NewAttachment, StoreError, StoreResult, UploadProgress, quota_day, timed,
};

use crate::SqliteStore;

#[async_trait]
impl AttachmentStore for SqliteStore {
    async fn create_attachment(&self, attachment: NewAttachment) -> StoreResult<()> {
        timed("create_attachment", async {
            let mut tx = self.writer.begin().await?;
            let member = sqlx::query(sql::IS_MEMBER)
                .bind(attachment.conversation_id.as_bytes().as_slice())
                .bind(attachment.uploader.device_id.as_bytes().as_slice())
                .fetch_optional(&mut *tx)
                .await?;
            if member.is_none() {
                return Err(StoreError::NotAMember);
            }
            let counted = sqlx::query(sql::COUNT_BYTES)
                .bind(attachment.uploader.user_id.as_bytes().as_slice())
                .bind(quota_day(attachment.now))
                .bind(to_i64(attachment.length))
                .bind(to_i64(attachment.daily_quota))
                .execute(&mut *tx)
                .await?;
            if counted.rows_affected() == 0 {
                return Err(StoreError::QuotaExceeded);
            }
            sqlx::query(sql::INSERT)
                .bind(attachment.id.as_bytes().as_slice())
                .bind(attachment.conversation_id.as_bytes().as_slice())
                .bind(attachment.uploader.user_id.as_bytes().as_slice())
                .bind(attachment.uploader.device_id.as_bytes().as_slice())
                .bind(to_i64(attachment.length))
                .bind(attachment.sha256.as_slice())
                .bind(to_i64(attachment.chunk_bytes))
                .bind(attachment.hash_state.as_slice())
                .bind(attachment.now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn attachment(&self, id: &AttachmentId) -> StoreResult<Option<AttachmentRecord>> {
        timed("attachment", async {
            let row = sqlx::query(sql::SELECT).bind(id.as_bytes().as_slice()).fetch_optional(&self.reader).await?;
            row.as_ref().map(attachment_row).transpose()
        })
        .await
    }

    async fn record_upload(&self, progress: UploadProgress) -> StoreResult<()> {
        timed("record_upload", async {
            let mut tx = self.writer.begin().await?;
            let done = sqlx::query(sql::ADVANCE)
                .bind(progress.id.as_bytes().as_slice())
                .bind(to_i64(progress.from))
                .bind(to_i64(progress.to))
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
                    Some(current) => StoreError::OffsetMismatch { current: roost_store::sql::to_u64(current) },
                    None => StoreError::NotFound,
                });
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn record_fetch(&self, id: &AttachmentId, device: &DeviceId) -> StoreResult<()> {
        timed("record_fetch", async {
            sqlx::query(sql::FETCH)
                .bind(id.as_bytes().as_slice())
                .bind(device.as_bytes().as_slice())
                .execute(&self.writer)
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
    ) -> StoreResult<Vec<AttachmentRecord>> {
        timed("expired_attachments", async {
            let rows = sqlx::query(sql::EXPIRED)
                .bind(now)
                .bind(max_age_ms.map(|age| now.saturating_sub(age)))
                .bind(abandoned_before)
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
            rows.iter().map(attachment_row).collect()
        })
        .await
    }

    async fn delete_attachment(&self, id: &AttachmentId, now: i64) -> StoreResult<()> {
        timed("delete_attachment", async {
            let mut tx = self.writer.begin().await?;
            for statement in [sql::DELETE_FETCHES, sql::DELETE] {
                sqlx::query(statement).bind(id.as_bytes().as_slice()).execute(&mut *tx).await?;
            }
            sqlx::query(sql::DELETE_OLD_USAGE).bind(quota_day(now)).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
