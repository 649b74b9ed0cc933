//! `ConversationStore` for SQLite.

use async_trait::async_trait;
use roost_proto::conversation::{EntryKind, QueueKind, RetentionPolicy};
use roost_proto::{ConversationId, DeviceId, UserId};
use roost_store::{
    Appended, CommitOutcome, CommitWrite, ConversationRecord, ConversationStore, ConversationView, EntryRecord,
    MemberDevice, MemberRef, MemberUser, MessageWrite, NewConversation, QueueRecord, QueueWrite, StoreError,
    StoreResult, SyncCursor, SyncPage, timed,
};
use sqlx::{Row, SqliteConnection};

use crate::SqliteStore;
use crate::codec::{
    ENTRY_COLUMNS, conversation_id_at, conversation_row, device_id_at, encode_retention, entry_row, member_device_row,
    prefixed_entry_columns, queue_row, to_i64, to_u64, user_id_at,
};

#[async_trait]
impl ConversationStore for SqliteStore {
    async fn create_conversation(&self, new: NewConversation) -> StoreResult<()> {
        timed("create_conversation", async {
            let mut tx = self.writer.begin().await?;
            let id = new.id.as_bytes().as_slice();
            if sqlx::query("SELECT 1 FROM conversations WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?.is_some() {
                return Err(StoreError::ConversationExists);
            }
            let (retention, ttl_ms) = encode_retention(new.retention);
            sqlx::query(
                "INSERT INTO conversations (id, kind, epoch, group_info, last_seq, retention, retention_ttl_ms, created_at) \
                 VALUES ($1, $2, $3, $4, 0, $5, $6, $7)",
            )
            .bind(id)
            .bind(new.kind.as_str())
            .bind(to_i64(new.epoch))
            .bind(new.group_info.as_slice())
            .bind(retention)
            .bind(ttl_ms)
            .bind(new.created_at)
            .execute(&mut *tx)
            .await?;
            let all = std::iter::once(&new.creator).chain(new.members.iter());
            for member in all {
                add_member_device(&mut tx, &new.id, member, 0, new.created_at).await?;
            }
            if let Some(welcome) = &new.welcome {
                let devices: Vec<DeviceId> = new.members.iter().map(|m| m.device_id).collect();
                queue_welcome(&mut tx, &new.id, 0, &new.creator.device_id, &devices, welcome, new.created_at).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn conversation(&self, id: &ConversationId) -> StoreResult<Option<ConversationRecord>> {
        timed("conversation", async {
            let mut conn = self.reader.acquire().await?;
            conversation_in(&mut conn, id).await
        })
        .await
    }

    async fn member_device(&self, id: &ConversationId, device: &DeviceId) -> StoreResult<Option<MemberDevice>> {
        timed("member_device", async {
            let mut conn = self.reader.acquire().await?;
            member_device_in(&mut conn, id, device).await
        })
        .await
    }

    async fn is_member_user(&self, id: &ConversationId, user: &UserId) -> StoreResult<bool> {
        timed("is_member_user", async {
            let row = sqlx::query("SELECT 1 FROM conversation_users WHERE conversation_id = $1 AND user_id = $2")
                .bind(id.as_bytes().as_slice())
                .bind(user.as_bytes().as_slice())
                .fetch_optional(&self.reader)
                .await?;
            Ok(row.is_some())
        })
        .await
    }

    async fn active_member_devices(&self, id: &ConversationId) -> StoreResult<Vec<MemberDevice>> {
        timed("active_member_devices", async {
            let rows = sqlx::query(
                "SELECT device_id, user_id, joined_seq, acked_seq, removed_seq FROM conversation_devices \
                 WHERE conversation_id = $1 AND removed_seq IS NULL",
            )
            .bind(id.as_bytes().as_slice())
            .fetch_all(&self.reader)
            .await?;
            rows.iter().map(member_device_row).collect()
        })
        .await
    }

    async fn commit(&self, write: CommitWrite) -> StoreResult<CommitOutcome> {
        timed("commit", async {
            let mut tx = self.writer.begin().await?;
            let id = write.conversation_id;
            let conversation = conversation_in(&mut tx, &id).await?.ok_or(StoreError::NotFound)?;
            if conversation.epoch != write.epoch {
                return Err(StoreError::StaleEpoch { current: conversation.epoch });
            }
            let sender = member_device_in(&mut tx, &id, &write.sender.device_id).await?;
            let sender_active = sender.is_some_and(|s| s.is_active());
            if write.external {
                let user_is_member =
                    sqlx::query("SELECT 1 FROM conversation_users WHERE conversation_id = $1 AND user_id = $2")
                        .bind(id.as_bytes().as_slice())
                        .bind(write.sender.user_id.as_bytes().as_slice())
                        .fetch_optional(&mut *tx)
                        .await?
                        .is_some();
                if !user_is_member || sender_active {
                    return Err(StoreError::NotAMember);
                }
            } else if !sender_active {
                return Err(StoreError::NotAMember);
            }

            let seq = conversation.last_seq + 1;
            let joining = write.external.then_some(write.sender);
            for member in write.add.iter().chain(joining.iter()) {
                let existing = member_device_in(&mut tx, &id, &member.device_id).await?;
                if existing.is_some_and(|row| row.is_active()) {
                    return Err(StoreError::InvalidMembership(format!(
                        "device {} is already a member",
                        member.device_id
                    )));
                }
                add_member_device(&mut tx, &id, member, seq, write.now).await?;
            }
            // Removing a device the server no longer routes to (revoked, or its user left) only
            // cleans up the MLS tree: it is accepted and changes no routing.
            let mut removed_now = Vec::new();
            for device in &write.remove {
                let removed = sqlx::query(
                    "UPDATE conversation_devices SET removed_seq = $1 \
                     WHERE conversation_id = $2 AND device_id = $3 AND removed_seq IS NULL",
                )
                .bind(to_i64(seq))
                .bind(id.as_bytes().as_slice())
                .bind(device.as_bytes().as_slice())
                .execute(&mut *tx)
                .await?;
                if removed.rows_affected() == 1 {
                    removed_now.push(*device);
                }
            }
            drop_users_without_devices(&mut tx, &id).await?;
            let users: i64 = sqlx::query("SELECT COUNT(*) AS n FROM conversation_users WHERE conversation_id = $1")
                .bind(id.as_bytes().as_slice())
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
            if users > i64::from(write.max_users) {
                return Err(StoreError::MemberLimitReached);
            }

            append_entry(&mut tx, &id, seq, EntryKind::Commit, &write.sender, write.epoch, &write.commit, write.now)
                .await?;
            let epoch = write.epoch + 1;
            sqlx::query("UPDATE conversations SET epoch = $1, last_seq = $2, group_info = $3 WHERE id = $4")
                .bind(to_i64(epoch))
                .bind(to_i64(seq))
                .bind(write.group_info.as_slice())
                .bind(id.as_bytes().as_slice())
                .execute(&mut *tx)
                .await?;
            if let Some(welcome) = &write.welcome {
                let devices: Vec<DeviceId> = write.add.iter().map(|m| m.device_id).collect();
                queue_welcome(&mut tx, &id, seq, &write.sender.device_id, &devices, welcome, write.now).await?;
            }
            for device in &removed_now {
                let removed = QueueWrite {
                    device_id: *device,
                    kind: QueueKind::Removed,
                    conversation_id: Some(id),
                    seq: Some(seq),
                    sender_device: Some(write.sender.device_id),
                    payload: Vec::new(),
                };
                insert_queue(&mut tx, &removed, None, write.now).await?;
            }
            tx.commit().await?;
            Ok(CommitOutcome { seq, epoch })
        })
        .await
    }

    async fn append_message(&self, message: MessageWrite) -> StoreResult<Appended> {
        timed("append_message", self.appender.append(message)).await
    }

    async fn leave(&self, id: &ConversationId, sender: MemberRef, payload: Vec<u8>, now: i64) -> StoreResult<u64> {
        timed("leave", async {
            let mut tx = self.writer.begin().await?;
            let conversation = conversation_in(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
            let row = member_device_in(&mut tx, id, &sender.device_id).await?;
            if !row.is_some_and(|r| r.is_active()) {
                return Err(StoreError::NotAMember);
            }
            let seq = conversation.last_seq + 1;
            let leaving: Vec<DeviceId> = sqlx::query(
                "SELECT device_id FROM conversation_devices WHERE conversation_id = $1 AND user_id = $2 AND removed_seq IS NULL",
            )
            .bind(id.as_bytes().as_slice())
            .bind(sender.user_id.as_bytes().as_slice())
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| device_id_at(row, "device_id"))
            .collect::<StoreResult<_>>()?;
            sqlx::query(
                "UPDATE conversation_devices SET removed_seq = $1 WHERE conversation_id = $2 AND user_id = $3 AND removed_seq IS NULL",
            )
            .bind(to_i64(seq))
            .bind(id.as_bytes().as_slice())
            .bind(sender.user_id.as_bytes().as_slice())
            .execute(&mut *tx)
            .await?;
            drop_users_without_devices(&mut tx, id).await?;
            append_entry(&mut tx, id, seq, EntryKind::Leave, &sender, conversation.epoch, &payload, now).await?;
            sqlx::query("UPDATE conversations SET last_seq = $1 WHERE id = $2")
                .bind(to_i64(seq))
                .bind(id.as_bytes().as_slice())
                .execute(&mut *tx)
                .await?;
            // Every leaving device gets the notice, the caller's too: it learns of the leave
            // from its queue even if the answer to its request was lost.
            for device in leaving {
                let notice = QueueWrite {
                    device_id: device,
                    kind: QueueKind::Removed,
                    conversation_id: Some(*id),
                    seq: Some(seq),
                    sender_device: Some(sender.device_id),
                    payload: Vec::new(),
                };
                insert_queue(&mut tx, &notice, None, now).await?;
            }
            tx.commit().await?;
            Ok(seq)
        })
        .await
    }

    async fn sync(&self, device: &DeviceId, cursor: SyncCursor, limit: u32) -> StoreResult<SyncPage> {
        timed("sync", async {
            let (after_conversation, after_seq) = match cursor.entries_after {
                Some((conversation, seq)) => (conversation.as_bytes().to_vec(), to_i64(seq)),
                None => (Vec::new(), 0),
            };
            let sql = format!(
                "SELECT {columns} FROM conversation_devices d JOIN entries e ON e.conversation_id = d.conversation_id \
                 WHERE d.device_id = $1 AND e.seq > d.acked_seq AND (d.removed_seq IS NULL OR e.seq <= d.removed_seq) \
                 AND (e.conversation_id > $2 OR (e.conversation_id = $2 AND e.seq > $3)) \
                 ORDER BY e.conversation_id, e.seq LIMIT $4",
                columns = prefixed_entry_columns("e")
            );
            let entries = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(device.as_bytes().as_slice())
                .bind(after_conversation)
                .bind(after_seq)
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
            let mut conn = self.reader.acquire().await?;
            let queue = queue_in(&mut conn, device, cursor.queue_after, limit).await?;
            Ok(SyncPage { entries: entries.iter().map(entry_row).collect::<StoreResult<_>>()?, queue })
        })
        .await
    }

    async fn entries_for_device(
        &self,
        device: &DeviceId,
        id: &ConversationId,
        after_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<EntryRecord>> {
        timed("entries_for_device", async {
            let sql = format!(
                "SELECT {columns} FROM conversation_devices d JOIN entries e ON e.conversation_id = d.conversation_id \
                 WHERE d.device_id = $1 AND d.conversation_id = $2 AND e.seq > d.acked_seq AND e.seq > $3 \
                 AND (d.removed_seq IS NULL OR e.seq <= d.removed_seq) ORDER BY e.seq LIMIT $4",
                columns = prefixed_entry_columns("e")
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(device.as_bytes().as_slice())
                .bind(id.as_bytes().as_slice())
                .bind(to_i64(after_seq))
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
            rows.iter().map(entry_row).collect()
        })
        .await
    }

    async fn positions(&self, device: &DeviceId) -> StoreResult<Vec<(ConversationId, u64)>> {
        timed("positions", async {
            let rows = sqlx::query(
                "SELECT conversation_id, acked_seq FROM conversation_devices WHERE device_id = $1 AND removed_seq IS NULL",
            )
            .bind(device.as_bytes().as_slice())
            .fetch_all(&self.reader)
            .await?;
            rows.iter()
                .map(|row| Ok((conversation_id_at(row, "conversation_id")?, to_u64(row.try_get("acked_seq")?))))
                .collect()
        })
        .await
    }

    async fn queue_for_device(&self, device: &DeviceId, after_id: u64, limit: u32) -> StoreResult<Vec<QueueRecord>> {
        timed("queue_for_device", async {
            let mut conn = self.reader.acquire().await?;
            queue_in(&mut conn, device, after_id, limit).await
        })
        .await
    }

    async fn contact_devices(&self, user: &UserId) -> StoreResult<Vec<DeviceId>> {
        timed("contact_devices", async {
            let rows = sqlx::query(
                "SELECT DISTINCT d.device_id FROM conversation_users cu \
                 JOIN conversation_devices d ON d.conversation_id = cu.conversation_id \
                 WHERE cu.user_id = $1 AND d.removed_seq IS NULL",
            )
            .bind(user.as_bytes().as_slice())
            .fetch_all(&self.reader)
            .await?;
            rows.iter().map(|row| device_id_at(row, "device_id")).collect()
        })
        .await
    }

    async fn ack(
        &self,
        device: &DeviceId,
        positions: &[(ConversationId, u64)],
        queue_up_to: Option<u64>,
    ) -> StoreResult<()> {
        timed("ack", async {
            let mut tx = self.writer.begin().await?;
            for (id, seq) in positions {
                let row = member_device_in(&mut tx, id, device).await?.ok_or(StoreError::NotAMember)?;
                let conversation = conversation_in(&mut tx, id).await?.ok_or(StoreError::NotAMember)?;
                let target = (*seq).min(conversation.last_seq);
                if target <= row.acked_seq {
                    continue;
                }
                if row.removed_seq.is_some_and(|removed| target >= removed) {
                    // It has everything up to its removal: its membership row is no longer needed.
                    sqlx::query("DELETE FROM conversation_devices WHERE conversation_id = $1 AND device_id = $2")
                        .bind(id.as_bytes().as_slice())
                        .bind(device.as_bytes().as_slice())
                        .execute(&mut *tx)
                        .await?;
                } else {
                    sqlx::query(
                        "UPDATE conversation_devices SET acked_seq = $1 WHERE conversation_id = $2 AND device_id = $3",
                    )
                    .bind(to_i64(target))
                    .bind(id.as_bytes().as_slice())
                    .bind(device.as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await?;
                }
                if conversation.retention == RetentionPolicy::BurnOnRead {
                    burn_acknowledged(&mut tx, id, conversation.last_seq).await?;
                }
            }
            if let Some(up_to) = queue_up_to {
                sqlx::query("DELETE FROM device_queue WHERE device_id = $1 AND id <= $2")
                    .bind(device.as_bytes().as_slice())
                    .bind(to_i64(up_to))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn history(&self, id: &ConversationId, after: u64, before: u64, limit: u32) -> StoreResult<Vec<EntryRecord>> {
        timed("history", async {
            let sql = format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE conversation_id = $1 AND seq > $2 AND seq < $3 \
                 ORDER BY seq DESC LIMIT $4"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id.as_bytes().as_slice())
                .bind(to_i64(after))
                .bind(to_i64(before))
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
            rows.iter().map(entry_row).collect()
        })
        .await
    }

    async fn conversations_of(
        &self,
        device: &DeviceId,
        user: &UserId,
        after: Option<ConversationId>,
        limit: u32,
    ) -> StoreResult<Vec<ConversationView>> {
        timed("conversations_of", async {
            let mut conn = self.reader.acquire().await?;
            let after = after.map(|id| id.as_bytes().to_vec()).unwrap_or_default();
            let rows = sqlx::query(
                "SELECT c.id, c.kind, c.epoch, c.group_info, c.last_seq, c.retention, c.retention_ttl_ms, c.created_at, \
                 d.joined_seq FROM conversation_devices d JOIN conversations c ON c.id = d.conversation_id \
                 WHERE d.device_id = $1 AND d.removed_seq IS NULL AND c.id > $2 ORDER BY c.id LIMIT $3",
            )
            .bind(device.as_bytes().as_slice())
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
            let mut views = Vec::with_capacity(rows.len());
            for row in &rows {
                let joined_seq = to_u64(row.try_get("joined_seq")?);
                views.push(view_in(&mut conn, conversation_row(row)?, joined_seq, user).await?);
            }
            Ok(views)
        })
        .await
    }

    async fn conversation_view(
        &self,
        id: &ConversationId,
        device: &DeviceId,
        user: &UserId,
    ) -> StoreResult<Option<ConversationView>> {
        timed("conversation_view", async {
            let mut conn = self.reader.acquire().await?;
            let membership = member_device_in(&mut conn, id, device).await?;
            let Some(membership) = membership.filter(MemberDevice::is_active) else {
                return Ok(None);
            };
            let Some(record) = conversation_in(&mut conn, id).await? else {
                return Ok(None);
            };
            Ok(Some(view_in(&mut conn, record, membership.joined_seq, user).await?))
        })
        .await
    }

    async fn share_conversation(&self, a: &UserId, b: &UserId) -> StoreResult<bool> {
        timed("share_conversation", async {
            let row = sqlx::query(
                "SELECT 1 FROM conversation_users x JOIN conversation_users y ON y.conversation_id = x.conversation_id \
                 WHERE x.user_id = $1 AND y.user_id = $2 LIMIT 1",
            )
            .bind(a.as_bytes().as_slice())
            .bind(b.as_bytes().as_slice())
            .fetch_optional(&self.reader)
            .await?;
            Ok(row.is_some())
        })
        .await
    }

    async fn advance_read_marker(&self, id: &ConversationId, user: &UserId, seq: u64) -> StoreResult<Option<u64>> {
        timed("advance_read_marker", async {
            let mut tx = self.writer.begin().await?;
            let conversation = conversation_in(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
            let target = seq.min(conversation.last_seq);
            let moved = sqlx::query(
                "UPDATE conversation_users SET read_seq = $1 WHERE conversation_id = $2 AND user_id = $3 AND read_seq < $1",
            )
            .bind(to_i64(target))
            .bind(id.as_bytes().as_slice())
            .bind(user.as_bytes().as_slice())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok((moved.rows_affected() == 1).then_some(target))
        })
        .await
    }

    async fn set_retention(&self, id: &ConversationId, retention: RetentionPolicy) -> StoreResult<()> {
        timed("set_retention", async {
            let (kind, ttl_ms) = encode_retention(retention);
            let done = sqlx::query("UPDATE conversations SET retention = $1, retention_ttl_ms = $2 WHERE id = $3")
                .bind(kind)
                .bind(ttl_ms)
                .bind(id.as_bytes().as_slice())
                .execute(&self.writer)
                .await?;
            if done.rows_affected() == 1 { Ok(()) } else { Err(StoreError::NotFound) }
        })
        .await
    }

    async fn enqueue(&self, entries: Vec<QueueWrite>, now: i64) -> StoreResult<Vec<u64>> {
        timed("enqueue", async {
            let mut tx = self.writer.begin().await?;
            let mut ids = Vec::with_capacity(entries.len());
            for entry in &entries {
                ids.push(insert_queue(&mut tx, entry, None, now).await?);
            }
            tx.commit().await?;
            Ok(ids)
        })
        .await
    }

    async fn read_receipts(&self, user: &UserId) -> StoreResult<bool> {
        timed("read_receipts", async {
            let row = sqlx::query("SELECT read_receipts FROM users WHERE id = $1")
                .bind(user.as_bytes().as_slice())
                .fetch_optional(&self.reader)
                .await?
                .ok_or(StoreError::NotFound)?;
            Ok(row.try_get("read_receipts")?)
        })
        .await
    }

    async fn set_read_receipts(&self, user: &UserId, enabled: bool) -> StoreResult<()> {
        timed("set_read_receipts", async {
            sqlx::query("UPDATE users SET read_receipts = $1 WHERE id = $2")
                .bind(enabled)
                .bind(user.as_bytes().as_slice())
                .execute(&self.writer)
                .await?;
            Ok(())
        })
        .await
    }

    async fn prune_retention(&self, now: i64, max_age_ms: Option<i64>, batch: u32) -> StoreResult<u64> {
        timed("prune_retention", async {
            // Each statement deletes at most `batch` rows and commits on its own, so the group
            // commit (which shares the one writer connection) waits for one batch at most.
            let mut pruned = self
                .delete_in_batches(
                    "DELETE FROM entries WHERE rowid IN (SELECT e.rowid FROM entries e JOIN conversations c \
                     ON c.id = e.conversation_id WHERE c.retention = 'ttl' AND e.created_at <= $1 - c.retention_ttl_ms \
                     LIMIT $2)",
                    Some(now),
                    batch,
                )
                .await?;
            if let Some(max_age) = max_age_ms {
                let cutoff = now.saturating_sub(max_age);
                for sql in [
                    "DELETE FROM entries WHERE rowid IN (SELECT rowid FROM entries WHERE created_at <= $1 LIMIT $2)",
                    "DELETE FROM message_ids WHERE (client_message_id, sender_device, conversation_id) IN \
                     (SELECT client_message_id, sender_device, conversation_id FROM message_ids WHERE created_at <= $1 LIMIT $2)",
                    "DELETE FROM device_queue WHERE id IN (SELECT id FROM device_queue WHERE created_at <= $1 LIMIT $2)",
                ] {
                    pruned += self.delete_in_batches(sql, Some(cutoff), batch).await?;
                }
            }
            pruned += self
                .delete_in_batches(
                    "DELETE FROM queue_blobs WHERE id IN (SELECT b.id FROM queue_blobs b WHERE NOT EXISTS \
                     (SELECT 1 FROM device_queue q WHERE q.blob_id = b.id) LIMIT $1)",
                    None,
                    batch,
                )
                .await?;
            Ok(pruned)
        })
        .await
    }
}

async fn queue_in(
    conn: &mut SqliteConnection,
    device: &DeviceId,
    after_id: u64,
    limit: u32,
) -> StoreResult<Vec<QueueRecord>> {
    let rows = sqlx::query(
        "SELECT q.id, q.kind, q.conversation_id, q.seq, q.sender_device, q.payload, b.payload AS blob, q.created_at \
         FROM device_queue q LEFT JOIN queue_blobs b ON b.id = q.blob_id \
         WHERE q.device_id = $1 AND q.id > $2 ORDER BY q.id LIMIT $3",
    )
    .bind(device.as_bytes().as_slice())
    .bind(to_i64(after_id))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.iter().map(queue_row).collect()
}

async fn conversation_in(conn: &mut SqliteConnection, id: &ConversationId) -> StoreResult<Option<ConversationRecord>> {
    let row = sqlx::query(
        "SELECT id, kind, epoch, group_info, last_seq, retention, retention_ttl_ms, created_at FROM conversations WHERE id = $1",
    )
    .bind(id.as_bytes().as_slice())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(conversation_row).transpose()
}

async fn member_device_in(
    conn: &mut SqliteConnection,
    id: &ConversationId,
    device: &DeviceId,
) -> StoreResult<Option<MemberDevice>> {
    let row = sqlx::query(
        "SELECT device_id, user_id, joined_seq, acked_seq, removed_seq FROM conversation_devices \
         WHERE conversation_id = $1 AND device_id = $2",
    )
    .bind(id.as_bytes().as_slice())
    .bind(device.as_bytes().as_slice())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(member_device_row).transpose()
}

/// Completes a conversation view: members, and unread messages from other users after the
/// user's read position (never counting what came before the device joined).
async fn view_in(
    conn: &mut SqliteConnection,
    record: ConversationRecord,
    joined_seq: u64,
    user: &UserId,
) -> StoreResult<ConversationView> {
    let members = member_users_in(conn, &record.id).await?;
    let read_seq = members.iter().find(|m| m.user_id == *user).map_or(0, |m| m.read_seq);
    let unread: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM entries WHERE conversation_id = $1 AND kind = 'message' AND seq > $2 AND sender_user <> $3",
    )
    .bind(record.id.as_bytes().as_slice())
    .bind(to_i64(read_seq.max(joined_seq)))
    .bind(user.as_bytes().as_slice())
    .fetch_one(conn)
    .await?
    .try_get("n")?;
    Ok(ConversationView { record, members, joined_seq, unread: to_u64(unread) })
}

async fn member_users_in(conn: &mut SqliteConnection, id: &ConversationId) -> StoreResult<Vec<MemberUser>> {
    let rows = sqlx::query(
        "SELECT cu.user_id, cu.read_seq, u.read_receipts FROM conversation_users cu JOIN users u ON u.id = cu.user_id \
         WHERE cu.conversation_id = $1 ORDER BY cu.joined_at, cu.user_id",
    )
    .bind(id.as_bytes().as_slice())
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(MemberUser {
                user_id: user_id_at(row, "user_id")?,
                read_seq: to_u64(row.try_get("read_seq")?),
                read_receipts: row.try_get("read_receipts")?,
            })
        })
        .collect()
}

/// Adds (or re-adds) a member device that sees entries after `joined_seq`, and its user.
async fn add_member_device(
    conn: &mut SqliteConnection,
    id: &ConversationId,
    member: &MemberRef,
    joined_seq: u64,
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO conversation_devices (conversation_id, device_id, user_id, joined_seq, acked_seq) VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (conversation_id, device_id) DO UPDATE SET user_id = excluded.user_id, joined_seq = excluded.joined_seq, \
         acked_seq = excluded.acked_seq, removed_seq = NULL",
    )
    .bind(id.as_bytes().as_slice())
    .bind(member.device_id.as_bytes().as_slice())
    .bind(member.user_id.as_bytes().as_slice())
    .bind(to_i64(joined_seq))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO conversation_users (conversation_id, user_id, read_seq, joined_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (conversation_id, user_id) DO NOTHING",
    )
    .bind(id.as_bytes().as_slice())
    .bind(member.user_id.as_bytes().as_slice())
    .bind(to_i64(joined_seq))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

async fn drop_users_without_devices(conn: &mut SqliteConnection, id: &ConversationId) -> StoreResult<()> {
    sqlx::query(
        "DELETE FROM conversation_users WHERE conversation_id = $1 AND NOT EXISTS (SELECT 1 FROM conversation_devices d \
         WHERE d.conversation_id = $1 AND d.user_id = conversation_users.user_id AND d.removed_seq IS NULL)",
    )
    .bind(id.as_bytes().as_slice())
    .execute(conn)
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)] // One row's columns; a struct would only rename them.
async fn append_entry(
    conn: &mut SqliteConnection,
    id: &ConversationId,
    seq: u64,
    kind: EntryKind,
    sender: &MemberRef,
    epoch: u64,
    payload: &[u8],
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO entries (conversation_id, seq, kind, sender_user, sender_device, epoch, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id.as_bytes().as_slice())
    .bind(to_i64(seq))
    .bind(kind.as_str())
    .bind(sender.user_id.as_bytes().as_slice())
    .bind(sender.device_id.as_bytes().as_slice())
    .bind(to_i64(epoch))
    .bind(payload)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores a Welcome once and queues a reference to it for every added device.
#[allow(clippy::too_many_arguments)] // The queue row's columns.
async fn queue_welcome(
    conn: &mut SqliteConnection,
    id: &ConversationId,
    seq: u64,
    sender: &DeviceId,
    devices: &[DeviceId],
    welcome: &[u8],
    now: i64,
) -> StoreResult<()> {
    if devices.is_empty() {
        return Ok(());
    }
    let blob: i64 = sqlx::query("INSERT INTO queue_blobs (payload, created_at) VALUES ($1, $2) RETURNING id")
        .bind(welcome)
        .bind(now)
        .fetch_one(&mut *conn)
        .await?
        .try_get("id")?;
    for device in devices {
        let entry = QueueWrite {
            device_id: *device,
            kind: roost_proto::conversation::QueueKind::Welcome,
            conversation_id: Some(*id),
            seq: Some(seq),
            sender_device: Some(*sender),
            payload: Vec::new(),
        };
        insert_queue(conn, &entry, Some(blob), now).await?;
    }
    Ok(())
}

async fn insert_queue(
    conn: &mut SqliteConnection,
    entry: &QueueWrite,
    blob: Option<i64>,
    now: i64,
) -> StoreResult<u64> {
    let id: i64 = sqlx::query(
        "INSERT INTO device_queue (device_id, kind, conversation_id, seq, sender_device, payload, blob_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(entry.device_id.as_bytes().as_slice())
    .bind(entry.kind.as_str())
    .bind(entry.conversation_id.map(|c| c.as_bytes().to_vec()))
    .bind(entry.seq.map(to_i64))
    .bind(entry.sender_device.map(|d| d.as_bytes().to_vec()))
    .bind(if blob.is_some() { None } else { Some(entry.payload.as_slice()) })
    .bind(blob)
    .bind(now)
    .fetch_one(conn)
    .await?
    .try_get("id")?;
    Ok(to_u64(id))
}

/// Deletes the entries every member device has acknowledged; a removed device counts as having
/// acknowledged everything up to its removal.
async fn burn_acknowledged(conn: &mut SqliteConnection, id: &ConversationId, last_seq: u64) -> StoreResult<()> {
    let floor: Option<i64> = sqlx::query(
        "SELECT MIN(CASE WHEN removed_seq IS NOT NULL AND removed_seq > acked_seq THEN removed_seq ELSE acked_seq END) AS floor \
         FROM conversation_devices WHERE conversation_id = $1",
    )
    .bind(id.as_bytes().as_slice())
    .fetch_one(&mut *conn)
    .await?
    .try_get("floor")?;
    let floor = floor.unwrap_or(to_i64(last_seq));
    sqlx::query("DELETE FROM entries WHERE conversation_id = $1 AND seq <= $2")
        .bind(id.as_bytes().as_slice())
        .bind(floor)
        .execute(conn)
        .await?;
    Ok(())
}

impl SqliteStore {
    /// Runs a `DELETE` that takes a cutoff (`$1`, when given) and then a row limit until it
    /// deletes fewer rows than the limit; returns how many it deleted in all.
    async fn delete_in_batches(&self, sql: &'static str, cutoff: Option<i64>, batch: u32) -> StoreResult<u64> {
        let batch = batch.max(1);
        let mut deleted = 0;
        loop {
            let query = match cutoff {
                Some(cutoff) => sqlx::query(sql).bind(cutoff),
                None => sqlx::query(sql),
            };
            let done = query.bind(i64::from(batch)).execute(&self.writer).await?;
            deleted += done.rows_affected();
            if done.rows_affected() < u64::from(batch) {
                return Ok(deleted);
            }
        }
    }
}
