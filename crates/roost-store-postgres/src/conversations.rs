//! `ConversationStore` for PostgreSQL.
//!
//! Every change to a conversation's log or membership first locks the conversation's row (`FOR
//! NO KEY UPDATE`, see [`lock_conversation`]) and then reads its head: the epoch check and
//! `seq = last_seq + 1` see the last committed change and no other change can commit in between.
//! `NO KEY UPDATE` leaves inserts of rows that merely reference the conversation free.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use roost_proto::conversation::{EntryKind, QueueKind, RetentionPolicy};
use roost_proto::{ConversationId, DeviceId, UserId};
use roost_store::{
    Appended, CommitOutcome, CommitWrite, ConversationRecord, ConversationStore, ConversationView, EntryRecord,
    MemberDevice, MemberRef, MemberUser, MessageWrite, NewConversation, QueueRecord, QueueWrite, StoreError,
    StoreResult, SyncCursor, SyncPage, timed,
};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use crate::PostgresStore;
use crate::codec::{
    CONVERSATION_COLUMNS, ENTRY_COLUMNS, MEMBER_COLUMNS, byte_arrays, conversation_id_at, conversation_row,
    device_id_at, encode_retention, entry_row, member_device_row, queue_row, to_i64, to_u64, user_id_at,
};
use crate::run::{Work, read, transaction};

#[async_trait]
impl ConversationStore for PostgresStore {
    async fn create_conversation(&self, new: NewConversation) -> StoreResult<()> {
        transaction!(self.pool, "create_conversation", |tx| {
            let (retention, ttl_ms) = encode_retention(new.retention);
            // Of racing creations with one id, the second waits for the first and inserts nothing.
            let created = sqlx::query(
                "INSERT INTO conversations (id, kind, epoch, group_info, last_seq, retention, retention_ttl_ms, created_at) \
                 VALUES ($1, $2, $3, $4, 0, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            )
            .bind(new.id.as_bytes().as_slice())
            .bind(new.kind.as_str())
            .bind(to_i64(new.epoch))
            .bind(new.group_info.as_slice())
            .bind(retention)
            .bind(ttl_ms)
            .bind(new.created_at)
            .execute(&mut *tx)
            .await?;
            if created.rows_affected() != 1 {
                return Err(StoreError::ConversationExists.into());
            }
            let all: Vec<MemberRef> = std::iter::once(new.creator).chain(new.members.iter().copied()).collect();
            add_member_devices(tx, &new.id, &all, 0, new.created_at).await?;
            if let Some(welcome) = &new.welcome {
                let devices: Vec<DeviceId> = new.members.iter().map(|m| m.device_id).collect();
                queue_welcome(tx, &new.id, 0, &new.creator.device_id, &devices, welcome, new.created_at).await?;
            }
            Ok(())
        })
    }

    async fn conversation(&self, id: &ConversationId) -> StoreResult<Option<ConversationRecord>> {
        read!(self.pool, "conversation", |conn| { conversation_in(conn, id).await })
    }

    async fn member_device(&self, id: &ConversationId, device: &DeviceId) -> StoreResult<Option<MemberDevice>> {
        read!(self.pool, "member_device", |conn| { member_device_in(conn, id, device).await })
    }

    async fn is_member_user(&self, id: &ConversationId, user: &UserId) -> StoreResult<bool> {
        read!(self.pool, "is_member_user", |conn| { is_member_user_in(conn, id, user).await })
    }

    async fn active_member_devices(&self, id: &ConversationId) -> StoreResult<Vec<MemberDevice>> {
        read!(self.pool, "active_member_devices", |conn| {
            let sql = format!(
                "SELECT {MEMBER_COLUMNS} FROM conversation_devices WHERE conversation_id = $1 AND removed_seq IS NULL"
            );
            let rows = sqlx::query(AssertSqlSafe(sql)).bind(id.as_bytes().as_slice()).fetch_all(conn).await?;
            Ok(rows.iter().map(member_device_row).collect::<StoreResult<_>>()?)
        })
    }

    async fn commit(&self, write: CommitWrite) -> StoreResult<CommitOutcome> {
        transaction!(self.pool, "commit", |tx| {
            let id = write.conversation_id;
            let conversation = lock_conversation(tx, &id).await?.ok_or(StoreError::NotFound)?;
            if conversation.epoch != write.epoch {
                return Err(StoreError::StaleEpoch { current: conversation.epoch }.into());
            }
            let sender = member_device_in(tx, &id, &write.sender.device_id).await?;
            let sender_active = sender.is_some_and(|s| s.is_active());
            if write.external {
                if !is_member_user_in(tx, &id, &write.sender.user_id).await? || sender_active {
                    return Err(StoreError::NotAMember.into());
                }
            } else if !sender_active {
                return Err(StoreError::NotAMember.into());
            }

            let seq = conversation.last_seq + 1;
            let joining = write.external.then_some(write.sender);
            let adding: Vec<MemberRef> = write.add.iter().copied().chain(joining).collect();
            let already = active_among(tx, &id, adding.iter().map(|m| &m.device_id)).await?;
            if let Some(device) = already.first() {
                return Err(StoreError::InvalidMembership(format!("device {device} is already a member")).into());
            }
            add_member_devices(tx, &id, &adding, seq, write.now).await?;
            // Removing a device the server no longer routes to (revoked, or its user left) only
            // cleans up the MLS tree: it is accepted and changes no routing.
            let removing = byte_arrays(write.remove.iter().map(|d| d.as_bytes().as_slice()));
            let removed_now: Vec<DeviceId> = sqlx::query(
                "UPDATE conversation_devices SET removed_seq = $1 \
                 WHERE conversation_id = $2 AND device_id = ANY($3) AND removed_seq IS NULL RETURNING device_id",
            )
            .bind(to_i64(seq))
            .bind(id.as_bytes().as_slice())
            .bind(&removing)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| device_id_at(row, "device_id"))
            .collect::<StoreResult<_>>()?;
            drop_users_without_devices(tx, &id).await?;
            let users: i64 = sqlx::query_scalar("SELECT count(*) FROM conversation_users WHERE conversation_id = $1")
                .bind(id.as_bytes().as_slice())
                .fetch_one(&mut *tx)
                .await?;
            if users > i64::from(write.max_users) {
                return Err(StoreError::MemberLimitReached.into());
            }

            append_entry(tx, &id, seq, EntryKind::Commit, &write.sender, write.epoch, &write.commit, write.now).await?;
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
                queue_welcome(tx, &id, seq, &write.sender.device_id, &devices, welcome, write.now).await?;
            }
            let notices: Vec<QueueWrite> =
                removed_now.iter().map(|device| removal_notice(*device, id, seq, write.sender.device_id)).collect();
            insert_queue(tx, &notices, None, write.now).await?;
            Ok(CommitOutcome { seq, epoch })
        })
    }

    async fn append_message(&self, message: MessageWrite) -> StoreResult<Appended> {
        timed("append_message", self.appender.append(message)).await
    }

    async fn leave(&self, id: &ConversationId, sender: MemberRef, payload: Vec<u8>, now: i64) -> StoreResult<u64> {
        transaction!(self.pool, "leave", |tx| {
            let conversation = lock_conversation(tx, id).await?.ok_or(StoreError::NotFound)?;
            let row = member_device_in(tx, id, &sender.device_id).await?;
            if !row.is_some_and(|r| r.is_active()) {
                return Err(StoreError::NotAMember.into());
            }
            let seq = conversation.last_seq + 1;
            let leaving: Vec<DeviceId> = sqlx::query(
                "UPDATE conversation_devices SET removed_seq = $1 \
                 WHERE conversation_id = $2 AND user_id = $3 AND removed_seq IS NULL RETURNING device_id",
            )
            .bind(to_i64(seq))
            .bind(id.as_bytes().as_slice())
            .bind(sender.user_id.as_bytes().as_slice())
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| device_id_at(row, "device_id"))
            .collect::<StoreResult<_>>()?;
            drop_users_without_devices(tx, id).await?;
            append_entry(tx, id, seq, EntryKind::Leave, &sender, conversation.epoch, &payload, now).await?;
            sqlx::query("UPDATE conversations SET last_seq = $1 WHERE id = $2")
                .bind(to_i64(seq))
                .bind(id.as_bytes().as_slice())
                .execute(&mut *tx)
                .await?;
            // Every leaving device gets the notice, the caller's too: it learns of the leave
            // from its queue even if the answer to its request was lost.
            let notices: Vec<QueueWrite> =
                leaving.into_iter().map(|device| removal_notice(device, *id, seq, sender.device_id)).collect();
            insert_queue(tx, &notices, None, now).await?;
            Ok(seq)
        })
    }

    async fn sync(&self, device: &DeviceId, cursor: SyncCursor, limit: u32) -> StoreResult<SyncPage> {
        read!(self.pool, "sync", |conn| {
            let (after_conversation, after_seq) = match cursor.entries_after {
                Some((conversation, seq)) => (conversation.as_bytes().to_vec(), to_i64(seq)),
                None => (Vec::new(), 0),
            };
            let sql = format!(
                "SELECT {columns} FROM conversation_devices d JOIN entries e ON e.conversation_id = d.conversation_id \
                 WHERE d.device_id = $1 AND e.seq > d.acked_seq AND (d.removed_seq IS NULL OR e.seq <= d.removed_seq) \
                 AND (e.conversation_id, e.seq) > ($2, $3) ORDER BY e.conversation_id, e.seq LIMIT $4",
                columns = prefixed(ENTRY_COLUMNS, "e")
            );
            let entries = sqlx::query(AssertSqlSafe(sql))
                .bind(device.as_bytes().as_slice())
                .bind(after_conversation)
                .bind(after_seq)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?;
            let queue = queue_in(conn, device, cursor.queue_after, limit).await?;
            Ok(SyncPage { entries: entries.iter().map(entry_row).collect::<StoreResult<_>>()?, queue })
        })
    }

    async fn entries_for_device(
        &self,
        device: &DeviceId,
        id: &ConversationId,
        after_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<EntryRecord>> {
        read!(self.pool, "entries_for_device", |conn| {
            let sql = format!(
                "SELECT {columns} FROM conversation_devices d JOIN entries e ON e.conversation_id = d.conversation_id \
                 WHERE d.device_id = $1 AND d.conversation_id = $2 AND e.seq > d.acked_seq AND e.seq > $3 \
                 AND (d.removed_seq IS NULL OR e.seq <= d.removed_seq) ORDER BY e.seq LIMIT $4",
                columns = prefixed(ENTRY_COLUMNS, "e")
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(device.as_bytes().as_slice())
                .bind(id.as_bytes().as_slice())
                .bind(to_i64(after_seq))
                .bind(i64::from(limit))
                .fetch_all(conn)
                .await?;
            Ok(rows.iter().map(entry_row).collect::<StoreResult<_>>()?)
        })
    }

    async fn positions(&self, device: &DeviceId) -> StoreResult<Vec<(ConversationId, u64)>> {
        read!(self.pool, "positions", |conn| {
            let rows = sqlx::query(
                "SELECT conversation_id, acked_seq FROM conversation_devices WHERE device_id = $1 AND removed_seq IS NULL",
            )
            .bind(device.as_bytes().as_slice())
            .fetch_all(conn)
            .await?;
            let positions = rows
                .iter()
                .map(|row| Ok((conversation_id_at(row, "conversation_id")?, to_u64(row.try_get("acked_seq")?))))
                .collect::<StoreResult<_>>()?;
            Ok(positions)
        })
    }

    async fn queue_for_device(&self, device: &DeviceId, after_id: u64, limit: u32) -> StoreResult<Vec<QueueRecord>> {
        read!(self.pool, "queue_for_device", |conn| { queue_in(conn, device, after_id, limit).await })
    }

    async fn contact_devices(&self, user: &UserId) -> StoreResult<Vec<DeviceId>> {
        read!(self.pool, "contact_devices", |conn| {
            let rows = sqlx::query(
                "SELECT DISTINCT d.device_id FROM conversation_users cu \
                 JOIN conversation_devices d ON d.conversation_id = cu.conversation_id \
                 WHERE cu.user_id = $1 AND d.removed_seq IS NULL",
            )
            .bind(user.as_bytes().as_slice())
            .fetch_all(conn)
            .await?;
            Ok(rows.iter().map(|row| device_id_at(row, "device_id")).collect::<StoreResult<_>>()?)
        })
    }

    async fn ack(
        &self,
        device: &DeviceId,
        positions: &[(ConversationId, u64)],
        queue_up_to: Option<u64>,
    ) -> StoreResult<()> {
        // In conversation order, so acks touching several conversations lock them in one order.
        let mut positions = positions.to_vec();
        positions.sort_by_key(|(id, _)| *id);
        transaction!(self.pool, "ack", |tx| {
            for (id, seq) in &positions {
                let retention: Option<String> = sqlx::query_scalar("SELECT retention FROM conversations WHERE id = $1")
                    .bind(id.as_bytes().as_slice())
                    .fetch_optional(&mut *tx)
                    .await?;
                let burn = retention.as_deref() == Some(encode_retention(RetentionPolicy::BurnOnRead).0);
                // Burn-on-read acks of one conversation run one at a time: each then counts the
                // others' committed positions when it decides what every member has read.
                // Other acks touch only the device's own row.
                let conversation =
                    if burn { lock_conversation(tx, id).await? } else { conversation_in(tx, id).await? };
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {MEMBER_COLUMNS} FROM conversation_devices WHERE conversation_id = $1 AND device_id = $2 \
                     FOR UPDATE"
                )))
                .bind(id.as_bytes().as_slice())
                .bind(device.as_bytes().as_slice())
                .fetch_optional(&mut *tx)
                .await?;
                let row = row.as_ref().map(member_device_row).transpose()?.ok_or(StoreError::NotAMember)?;
                let conversation = conversation.ok_or(StoreError::NotAMember)?;
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
                    burn_acknowledged(tx, id, conversation.last_seq).await?;
                }
            }
            if let Some(up_to) = queue_up_to {
                sqlx::query("DELETE FROM device_queue WHERE device_id = $1 AND id <= $2")
                    .bind(device.as_bytes().as_slice())
                    .bind(to_i64(up_to))
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        })
    }

    async fn history(&self, id: &ConversationId, after: u64, before: u64, limit: u32) -> StoreResult<Vec<EntryRecord>> {
        read!(self.pool, "history", |conn| {
            let sql = format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE conversation_id = $1 AND seq > $2 AND seq < $3 \
                 ORDER BY seq DESC LIMIT $4"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(id.as_bytes().as_slice())
                .bind(to_i64(after))
                .bind(to_i64(before))
                .bind(i64::from(limit))
                .fetch_all(conn)
                .await?;
            Ok(rows.iter().map(entry_row).collect::<StoreResult<_>>()?)
        })
    }

    async fn conversations_of(
        &self,
        device: &DeviceId,
        user: &UserId,
        after: Option<ConversationId>,
        limit: u32,
    ) -> StoreResult<Vec<ConversationView>> {
        read!(self.pool, "conversations_of", |conn| {
            let after = after.map(|id| id.as_bytes().to_vec()).unwrap_or_default();
            let sql = format!(
                "SELECT {columns}, d.joined_seq FROM conversation_devices d JOIN conversations c ON c.id = d.conversation_id \
                 WHERE d.device_id = $1 AND d.removed_seq IS NULL AND c.id > $2 ORDER BY c.id LIMIT $3",
                columns = prefixed(CONVERSATION_COLUMNS, "c")
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(device.as_bytes().as_slice())
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?;
            let mut views = Vec::with_capacity(rows.len());
            for row in &rows {
                let joined_seq = to_u64(row.try_get("joined_seq")?);
                views.push(view_in(conn, conversation_row(row)?, joined_seq, user).await?);
            }
            Ok(views)
        })
    }

    async fn conversation_view(
        &self,
        id: &ConversationId,
        device: &DeviceId,
        user: &UserId,
    ) -> StoreResult<Option<ConversationView>> {
        read!(self.pool, "conversation_view", |conn| {
            let membership = member_device_in(conn, id, device).await?;
            let Some(membership) = membership.filter(MemberDevice::is_active) else {
                return Ok(None);
            };
            let Some(record) = conversation_in(conn, id).await? else {
                return Ok(None);
            };
            Ok(Some(view_in(conn, record, membership.joined_seq, user).await?))
        })
    }

    async fn share_conversation(&self, a: &UserId, b: &UserId) -> StoreResult<bool> {
        read!(self.pool, "share_conversation", |conn| {
            let row = sqlx::query(
                "SELECT 1 FROM conversation_users x JOIN conversation_users y ON y.conversation_id = x.conversation_id \
                 WHERE x.user_id = $1 AND y.user_id = $2 LIMIT 1",
            )
            .bind(a.as_bytes().as_slice())
            .bind(b.as_bytes().as_slice())
            .fetch_optional(conn)
            .await?;
            Ok(row.is_some())
        })
    }

    async fn advance_read_marker(&self, id: &ConversationId, user: &UserId, seq: u64) -> StoreResult<Option<u64>> {
        transaction!(self.pool, "advance_read_marker", |tx| {
            let conversation = conversation_in(tx, id).await?.ok_or(StoreError::NotFound)?;
            let target = seq.min(conversation.last_seq);
            // Conditional and row-locking: a racing advance to a lower position, re-checked
            // after it waits for this one, changes nothing.
            let moved = sqlx::query(
                "UPDATE conversation_users SET read_seq = $1 WHERE conversation_id = $2 AND user_id = $3 AND read_seq < $1",
            )
            .bind(to_i64(target))
            .bind(id.as_bytes().as_slice())
            .bind(user.as_bytes().as_slice())
            .execute(&mut *tx)
            .await?;
            Ok((moved.rows_affected() == 1).then_some(target))
        })
    }

    async fn set_retention(&self, id: &ConversationId, retention: RetentionPolicy) -> StoreResult<()> {
        read!(self.pool, "set_retention", |conn| {
            let (kind, ttl_ms) = encode_retention(retention);
            let done = sqlx::query("UPDATE conversations SET retention = $1, retention_ttl_ms = $2 WHERE id = $3")
                .bind(kind)
                .bind(ttl_ms)
                .bind(id.as_bytes().as_slice())
                .execute(conn)
                .await?;
            if done.rows_affected() == 1 { Ok(()) } else { Err(StoreError::NotFound.into()) }
        })
    }

    async fn enqueue(&self, entries: Vec<QueueWrite>, now: i64) -> StoreResult<Vec<u64>> {
        transaction!(self.pool, "enqueue", |tx| { insert_queue(tx, &entries, None, now).await })
    }

    async fn read_receipts(&self, user: &UserId) -> StoreResult<bool> {
        read!(self.pool, "read_receipts", |conn| {
            let enabled: Option<bool> = sqlx::query_scalar("SELECT read_receipts FROM users WHERE id = $1")
                .bind(user.as_bytes().as_slice())
                .fetch_optional(conn)
                .await?;
            Ok(enabled.ok_or(StoreError::NotFound)?)
        })
    }

    async fn set_read_receipts(&self, user: &UserId, enabled: bool) -> StoreResult<()> {
        read!(self.pool, "set_read_receipts", |conn| {
            sqlx::query("UPDATE users SET read_receipts = $1 WHERE id = $2")
                .bind(enabled)
                .bind(user.as_bytes().as_slice())
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    async fn prune_retention(&self, now: i64, max_age_ms: Option<i64>, batch: u32) -> StoreResult<u64> {
        // Each statement deletes at most `batch` rows in a transaction of its own, so no lock is
        // held over a big table for long. Each walks its table's `created_at` index from the
        // oldest row (`ORDER BY created_at`), so a pass that finds nothing to delete reads
        // nothing: without that, PostgreSQL may plan a scan of the whole table every pass, which
        // on a busy server stalls the sends committing meanwhile (benchmark-log.md).
        let mut pruned = self
            .delete_in_batches(
                "DELETE FROM entries WHERE ctid = ANY(ARRAY(SELECT e.ctid FROM entries e \
                 WHERE e.created_at <= $1 - (SELECT min(retention_ttl_ms) FROM conversations WHERE retention = 'ttl') \
                 AND e.created_at <= $1 - (SELECT c.retention_ttl_ms FROM conversations c \
                                           WHERE c.id = e.conversation_id AND c.retention = 'ttl') \
                 ORDER BY e.created_at LIMIT $2))",
                Some(now),
                batch,
            )
            .await?;
        if let Some(max_age) = max_age_ms {
            let cutoff = now.saturating_sub(max_age);
            for sql in [
                "DELETE FROM entries WHERE ctid = ANY(ARRAY(SELECT ctid FROM entries WHERE created_at <= $1 \
                 ORDER BY created_at LIMIT $2))",
                "DELETE FROM message_ids WHERE ctid = ANY(ARRAY(SELECT ctid FROM message_ids WHERE created_at <= $1 \
                 ORDER BY created_at LIMIT $2))",
                "DELETE FROM device_queue WHERE ctid = ANY(ARRAY(SELECT ctid FROM device_queue WHERE created_at <= $1 \
                 ORDER BY created_at LIMIT $2))",
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
    }
}

/// Reads a conversation and locks its row until the transaction ends.
pub(crate) async fn lock_conversation(
    conn: &mut PgConnection,
    id: &ConversationId,
) -> Work<Option<ConversationRecord>> {
    let sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1 FOR NO KEY UPDATE");
    let row = sqlx::query(AssertSqlSafe(sql)).bind(id.as_bytes().as_slice()).fetch_optional(conn).await?;
    Ok(row.as_ref().map(conversation_row).transpose()?)
}

async fn conversation_in(conn: &mut PgConnection, id: &ConversationId) -> Work<Option<ConversationRecord>> {
    let sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1");
    let row = sqlx::query(AssertSqlSafe(sql)).bind(id.as_bytes().as_slice()).fetch_optional(conn).await?;
    Ok(row.as_ref().map(conversation_row).transpose()?)
}

async fn member_device_in(
    conn: &mut PgConnection,
    id: &ConversationId,
    device: &DeviceId,
) -> Work<Option<MemberDevice>> {
    let sql =
        format!("SELECT {MEMBER_COLUMNS} FROM conversation_devices WHERE conversation_id = $1 AND device_id = $2");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(id.as_bytes().as_slice())
        .bind(device.as_bytes().as_slice())
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(member_device_row).transpose()?)
}

async fn is_member_user_in(conn: &mut PgConnection, id: &ConversationId, user: &UserId) -> Work<bool> {
    let row = sqlx::query("SELECT 1 FROM conversation_users WHERE conversation_id = $1 AND user_id = $2")
        .bind(id.as_bytes().as_slice())
        .bind(user.as_bytes().as_slice())
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

/// Which of `devices` are current members.
async fn active_among(
    conn: &mut PgConnection,
    id: &ConversationId,
    devices: impl Iterator<Item = &DeviceId>,
) -> Work<Vec<DeviceId>> {
    let devices = byte_arrays(devices.map(|d| d.as_bytes().as_slice()));
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT device_id FROM conversation_devices WHERE conversation_id = $1 AND device_id = ANY($2) \
         AND removed_seq IS NULL ORDER BY device_id",
    )
    .bind(id.as_bytes().as_slice())
    .bind(&devices)
    .fetch_all(conn)
    .await?;
    Ok(rows.iter().map(|row| device_id_at(row, "device_id")).collect::<StoreResult<_>>()?)
}

async fn queue_in(conn: &mut PgConnection, device: &DeviceId, after_id: u64, limit: u32) -> Work<Vec<QueueRecord>> {
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
    Ok(rows.iter().map(queue_row).collect::<StoreResult<_>>()?)
}

/// Completes a conversation view: members, and unread messages from other users after the
/// user's read position (never counting what came before the device joined).
async fn view_in(
    conn: &mut PgConnection,
    record: ConversationRecord,
    joined_seq: u64,
    user: &UserId,
) -> Work<ConversationView> {
    let rows = sqlx::query(
        "SELECT cu.user_id, cu.read_seq, u.read_receipts FROM conversation_users cu JOIN users u ON u.id = cu.user_id \
         WHERE cu.conversation_id = $1 ORDER BY cu.joined_at, cu.user_id",
    )
    .bind(record.id.as_bytes().as_slice())
    .fetch_all(&mut *conn)
    .await?;
    let members = rows
        .iter()
        .map(|row| {
            Ok(MemberUser {
                user_id: user_id_at(row, "user_id")?,
                read_seq: to_u64(row.try_get("read_seq")?),
                read_receipts: row.try_get("read_receipts")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let read_seq = members.iter().find(|m| m.user_id == *user).map_or(0, |m| m.read_seq);
    let unread: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM entries WHERE conversation_id = $1 AND kind = 'message' AND seq > $2 AND sender_user <> $3",
    )
    .bind(record.id.as_bytes().as_slice())
    .bind(to_i64(read_seq.max(joined_seq)))
    .bind(user.as_bytes().as_slice())
    .fetch_one(conn)
    .await?;
    Ok(ConversationView { record, members, joined_seq, unread: to_u64(unread) })
}

/// Adds (or re-adds) member devices that see entries after `joined_seq`, and their users.
async fn add_member_devices(
    conn: &mut PgConnection,
    id: &ConversationId,
    members: &[MemberRef],
    joined_seq: u64,
    now: i64,
) -> Work<()> {
    // One row per device, in key order (an upsert may not touch a row twice, and rows locked in
    // one order cannot deadlock with another transaction's).
    let devices: BTreeMap<DeviceId, UserId> = members.iter().map(|m| (m.device_id, m.user_id)).collect();
    if devices.is_empty() {
        return Ok(());
    }
    let users: BTreeSet<UserId> = devices.values().copied().collect();
    sqlx::query(
        "INSERT INTO conversation_devices (conversation_id, device_id, user_id, joined_seq, acked_seq) \
         SELECT $1, t.device_id, t.user_id, $4, $4 FROM unnest($2::bytea[], $3::bytea[]) AS t(device_id, user_id) \
         ON CONFLICT (conversation_id, device_id) DO UPDATE SET user_id = EXCLUDED.user_id, \
         joined_seq = EXCLUDED.joined_seq, acked_seq = EXCLUDED.acked_seq, removed_seq = NULL",
    )
    .bind(id.as_bytes().as_slice())
    .bind(byte_arrays(devices.keys().map(|d| d.as_bytes().as_slice())))
    .bind(byte_arrays(devices.values().map(|u| u.as_bytes().as_slice())))
    .bind(to_i64(joined_seq))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO conversation_users (conversation_id, user_id, read_seq, joined_at) \
         SELECT $1, t.user_id, $3, $4 FROM unnest($2::bytea[]) AS t(user_id) \
         ON CONFLICT (conversation_id, user_id) DO NOTHING",
    )
    .bind(id.as_bytes().as_slice())
    .bind(byte_arrays(users.iter().map(|u| u.as_bytes().as_slice())))
    .bind(to_i64(joined_seq))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

async fn drop_users_without_devices(conn: &mut PgConnection, id: &ConversationId) -> Work<()> {
    sqlx::query(
        "DELETE FROM conversation_users cu WHERE cu.conversation_id = $1 AND NOT EXISTS (SELECT 1 FROM \
         conversation_devices d WHERE d.conversation_id = $1 AND d.user_id = cu.user_id AND d.removed_seq IS NULL)",
    )
    .bind(id.as_bytes().as_slice())
    .execute(conn)
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)] // One row's columns; a struct would only rename them.
async fn append_entry(
    conn: &mut PgConnection,
    id: &ConversationId,
    seq: u64,
    kind: EntryKind,
    sender: &MemberRef,
    epoch: u64,
    payload: &[u8],
    now: i64,
) -> Work<()> {
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

fn removal_notice(device: DeviceId, id: ConversationId, seq: u64, sender: DeviceId) -> QueueWrite {
    QueueWrite {
        device_id: device,
        kind: QueueKind::Removed,
        conversation_id: Some(id),
        seq: Some(seq),
        sender_device: Some(sender),
        payload: Vec::new(),
    }
}

/// Stores a Welcome once and queues a reference to it for every added device.
#[allow(clippy::too_many_arguments)] // The queue row's columns.
async fn queue_welcome(
    conn: &mut PgConnection,
    id: &ConversationId,
    seq: u64,
    sender: &DeviceId,
    devices: &[DeviceId],
    welcome: &[u8],
    now: i64,
) -> Work<()> {
    if devices.is_empty() {
        return Ok(());
    }
    let blob: i64 = sqlx::query_scalar("INSERT INTO queue_blobs (payload, created_at) VALUES ($1, $2) RETURNING id")
        .bind(welcome)
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
    let entries: Vec<QueueWrite> = devices
        .iter()
        .map(|device| QueueWrite {
            device_id: *device,
            kind: QueueKind::Welcome,
            conversation_id: Some(*id),
            seq: Some(seq),
            sender_device: Some(*sender),
            payload: Vec::new(),
        })
        .collect();
    insert_queue(conn, &entries, Some(blob), now).await?;
    Ok(())
}

/// Adds queue entries (with their payloads inline, or all referring to `blob`) and returns their
/// ids. Ids are numbered per device by the device's counter in `queue_heads`; taking numbers
/// locks the counters (in device order) until the transaction ends, so each device's entries
/// become visible in the order of their ids.
async fn insert_queue(conn: &mut PgConnection, entries: &[QueueWrite], blob: Option<i64>, now: i64) -> Work<Vec<u64>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let mut wanted: BTreeMap<DeviceId, i64> = BTreeMap::new();
    for entry in entries {
        *wanted.entry(entry.device_id).or_default() += 1;
    }
    let rows = sqlx::query(
        "INSERT INTO queue_heads AS h (device_id, last_id) \
         SELECT t.device_id, t.n FROM unnest($1::bytea[], $2::int8[]) AS t(device_id, n) ORDER BY t.device_id \
         ON CONFLICT (device_id) DO UPDATE SET last_id = h.last_id + EXCLUDED.last_id RETURNING device_id, last_id",
    )
    .bind(byte_arrays(wanted.keys().map(|d| d.as_bytes().as_slice())))
    .bind(wanted.values().copied().collect::<Vec<i64>>())
    .fetch_all(&mut *conn)
    .await?;
    // The next free id of each device: the counter's new value minus what this call takes.
    let mut next: BTreeMap<DeviceId, i64> = BTreeMap::new();
    for row in &rows {
        let device = device_id_at(row, "device_id")?;
        let last: i64 = row.try_get("last_id")?;
        next.insert(device, last - wanted.get(&device).copied().unwrap_or(0) + 1);
    }
    let mut ids = Vec::with_capacity(entries.len());
    for entry in entries {
        let slot = next.get_mut(&entry.device_id).ok_or(StoreError::Backend("a queue counter was not taken".into()))?;
        ids.push(*slot);
        *slot += 1;
    }
    let inline = blob.is_none();
    sqlx::query(
        "INSERT INTO device_queue (device_id, id, kind, conversation_id, seq, sender_device, payload, blob_id, created_at) \
         SELECT t.device_id, t.id, t.kind, t.conversation_id, t.seq, t.sender_device, t.payload, $8, $9 \
         FROM unnest($1::bytea[], $2::int8[], $3::text[], $4::bytea[], $5::int8[], $6::bytea[], $7::bytea[]) \
         AS t(device_id, id, kind, conversation_id, seq, sender_device, payload)",
    )
    .bind(byte_arrays(entries.iter().map(|e| e.device_id.as_bytes().as_slice())))
    .bind(&ids)
    .bind(entries.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.conversation_id.map(|c| c.as_bytes().to_vec())).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.seq.map(to_i64)).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.sender_device.map(|d| d.as_bytes().to_vec())).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| inline.then(|| e.payload.clone())).collect::<Vec<_>>())
    .bind(blob)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(ids.into_iter().map(to_u64).collect())
}

/// Deletes the entries every member device has acknowledged; a removed device counts as having
/// acknowledged everything up to its removal. Called with the conversation's row locked, so
/// every other ack of the conversation has either committed (and is counted) or waits.
async fn burn_acknowledged(conn: &mut PgConnection, id: &ConversationId, last_seq: u64) -> Work<()> {
    let floor: Option<i64> = sqlx::query_scalar(
        "SELECT min(CASE WHEN removed_seq IS NOT NULL AND removed_seq > acked_seq THEN removed_seq ELSE acked_seq END) \
         FROM conversation_devices WHERE conversation_id = $1",
    )
    .bind(id.as_bytes().as_slice())
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM entries WHERE conversation_id = $1 AND seq <= $2")
        .bind(id.as_bytes().as_slice())
        .bind(floor.unwrap_or(to_i64(last_seq)))
        .execute(conn)
        .await?;
    Ok(())
}

fn prefixed(columns: &str, alias: &str) -> String {
    columns.split(", ").map(|column| format!("{alias}.{column}")).collect::<Vec<_>>().join(", ")
}

impl PostgresStore {
    /// Runs a `DELETE` that takes a cutoff (`$1`, when given) and then a row limit until it
    /// deletes fewer rows than the limit, each run its own transaction; returns how many rows
    /// it deleted in all.
    async fn delete_in_batches(&self, sql: &'static str, cutoff: Option<i64>, batch: u32) -> StoreResult<u64> {
        let batch = i64::from(batch.max(1));
        let mut deleted = 0;
        loop {
            let done = read!(self.pool, "prune_retention", |conn| {
                let query = match cutoff {
                    Some(cutoff) => sqlx::query(sql).bind(cutoff),
                    None => sqlx::query(sql),
                };
                Ok(query.bind(batch).execute(conn).await?.rows_affected())
            })?;
            deleted += done;
            if i64::try_from(done).unwrap_or(i64::MAX) < batch {
                return Ok(deleted);
            }
        }
    }
}
