//! Group commit for messages: concurrent sends share one transaction and one fsync.
//!
//! Each send still gets its reply only after the transaction holding it has committed (and, with
//! `synchronous = FULL`, been fsynced), so "acknowledged = durable" holds. Under load, many
//! sends wait for the writer at once; the appender takes all of them (up to a cap) into one
//! transaction instead of paying one fsync each.
//!
//! The batch is also written set-wise: one statement reads the conversations it touches, one the
//! senders' memberships, one the earlier ids of retried messages, and one multi-row statement
//! writes each table. The statement count per batch stays nearly flat however many messages it
//! holds, which matters because every SQLite statement is a round trip to the connection's
//! worker thread.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use roost_proto::conversation::EntryKind;
use roost_proto::{ConversationId, DeviceId};
use roost_store::{Appended, MessageWrite, StoreError, StoreResult};
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, AssertSqlSafe, Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use crate::conversations::{conversation_id_at, to_i64, to_u64};
use crate::store::device_id_at;

/// Most messages in one transaction.
const MAX_BATCH: usize = 512;
/// Sends waiting for the appender before new ones wait for room.
const QUEUE: usize = 4096;

struct Job {
    message: MessageWrite,
    reply: oneshot::Sender<StoreResult<Appended>>,
}

/// Handle to the appender task.
#[derive(Clone)]
pub(crate) struct Appender {
    jobs: mpsc::Sender<Job>,
}

impl Appender {
    /// Starts the appender on the writer pool. It stops when every handle is dropped.
    pub(crate) fn start(writer: SqlitePool) -> Self {
        let (jobs, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(writer, receiver));
        Self { jobs }
    }

    /// Appends a message; returns once it is committed.
    pub(crate) async fn append(&self, message: MessageWrite) -> StoreResult<Appended> {
        let (reply, result) = oneshot::channel();
        let stopped = || StoreError::Backend("the message appender stopped".into());
        self.jobs.send(Job { message, reply }).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }
}

async fn run(writer: SqlitePool, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("roost_store_group_commit_size").record(batch.len() as f64);
        match commit_batch(&writer, &batch).await {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(err) => {
                let message = err.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Backend(message.clone())));
                }
            }
        }
    }
}

/// Appends every message of the batch in one transaction. A message refused on its own merits
/// (unknown conversation, not a member, stale epoch) gets its error and writes nothing; a storage
/// failure fails the whole batch, and none of it is acknowledged.
async fn commit_batch(writer: &SqlitePool, batch: &[Job]) -> StoreResult<Vec<StoreResult<Appended>>> {
    let mut tx = writer.begin().await?;
    let messages: Vec<&MessageWrite> = batch.iter().map(|job| &job.message).collect();
    let results = append_batch(&mut tx, &messages).await?;
    tx.commit().await?;
    Ok(results)
}

/// Where a conversation's log stands.
#[derive(Clone, Copy)]
struct Head {
    epoch: u64,
    last_seq: u64,
    /// Whether this batch appended to it.
    moved: bool,
}

/// A sender's id for one message: (conversation, sending device, client message id).
type MessageKey = (ConversationId, DeviceId, String);

fn key_of(message: &MessageWrite) -> MessageKey {
    (message.conversation_id, message.sender.device_id, message.client_message_id.clone())
}

/// Appends the messages in order, checking each as a lone send would be checked: the
/// conversation exists, the sender is a current member, a retried id returns its original result
/// (even if the epoch has moved on since), and the epoch is the current one.
pub(crate) async fn append_batch(
    conn: &mut SqliteConnection,
    messages: &[&MessageWrite],
) -> StoreResult<Vec<StoreResult<Appended>>> {
    let conversation_ids: Vec<ConversationId> = distinct(messages.iter().map(|m| m.conversation_id));
    let senders: Vec<(ConversationId, DeviceId)> =
        distinct(messages.iter().map(|m| (m.conversation_id, m.sender.device_id)));
    let keys: Vec<MessageKey> = distinct(messages.iter().map(|m| key_of(m)));

    let mut heads = heads(conn, &conversation_ids).await?;
    let active = active_senders(conn, &senders).await?;
    let mut earlier = earlier_ids(conn, &keys).await?;

    let mut results = Vec::with_capacity(messages.len());
    let mut written: Vec<(&MessageWrite, u64)> = Vec::with_capacity(messages.len());
    for message in messages {
        let Some(head) = heads.get_mut(&message.conversation_id) else {
            results.push(Err(StoreError::NotFound));
            continue;
        };
        if !active.contains(&(message.conversation_id, message.sender.device_id)) {
            results.push(Err(StoreError::NotAMember));
            continue;
        }
        let key = key_of(message);
        if let Some(&(seq, created_at)) = earlier.get(&key) {
            results.push(Ok(Appended { seq, created_at, duplicate: true }));
            continue;
        }
        if head.epoch != message.epoch {
            results.push(Err(StoreError::StaleEpoch { current: head.epoch }));
            continue;
        }
        head.last_seq += 1;
        head.moved = true;
        earlier.insert(key, (head.last_seq, message.now));
        written.push((message, head.last_seq));
        results.push(Ok(Appended { seq: head.last_seq, created_at: message.now, duplicate: false }));
    }

    insert_entries(conn, &written).await?;
    insert_message_ids(conn, &written).await?;
    let moved: Vec<(ConversationId, u64)> =
        heads.into_iter().filter(|(_, head)| head.moved).map(|(id, head)| (id, head.last_seq)).collect();
    update_last_seqs(conn, &moved).await?;
    Ok(results)
}

async fn heads(conn: &mut SqliteConnection, ids: &[ConversationId]) -> StoreResult<HashMap<ConversationId, Head>> {
    let mut heads = HashMap::with_capacity(ids.len());
    for range in chunks(ids.len()) {
        let sql = format!(
            "SELECT id, epoch, last_seq FROM conversations WHERE id IN (VALUES {})",
            placeholders(range.len(), 1)
        );
        let mut args = SqliteArguments::default();
        for id in &ids[range] {
            bind(&mut args, id.as_bytes().as_slice())?;
        }
        for row in sqlx::query_with(AssertSqlSafe(sql), args).fetch_all(&mut *conn).await? {
            let id = conversation_id_at(&row, "id")?;
            let head =
                Head { epoch: to_u64(row.try_get("epoch")?), last_seq: to_u64(row.try_get("last_seq")?), moved: false };
            heads.insert(id, head);
        }
    }
    Ok(heads)
}

async fn active_senders(
    conn: &mut SqliteConnection,
    senders: &[(ConversationId, DeviceId)],
) -> StoreResult<HashSet<(ConversationId, DeviceId)>> {
    let mut active = HashSet::with_capacity(senders.len());
    for range in chunks(senders.len()) {
        let sql = format!(
            "SELECT conversation_id, device_id FROM conversation_devices \
             WHERE removed_seq IS NULL AND (conversation_id, device_id) IN (VALUES {})",
            placeholders(range.len(), 2)
        );
        let mut args = SqliteArguments::default();
        for (conversation, device) in &senders[range] {
            bind(&mut args, conversation.as_bytes().as_slice())?;
            bind(&mut args, device.as_bytes().as_slice())?;
        }
        for row in sqlx::query_with(AssertSqlSafe(sql), args).fetch_all(&mut *conn).await? {
            active.insert((conversation_id_at(&row, "conversation_id")?, device_id_at(&row, "device_id")?));
        }
    }
    Ok(active)
}

async fn earlier_ids(conn: &mut SqliteConnection, keys: &[MessageKey]) -> StoreResult<HashMap<MessageKey, (u64, i64)>> {
    let mut earlier = HashMap::new();
    for range in chunks(keys.len()) {
        let sql = format!(
            "SELECT conversation_id, sender_device, client_message_id, seq, created_at FROM message_ids \
             WHERE (conversation_id, sender_device, client_message_id) IN (VALUES {})",
            placeholders(range.len(), 3)
        );
        let mut args = SqliteArguments::default();
        for (conversation, device, client_id) in &keys[range] {
            bind(&mut args, conversation.as_bytes().as_slice())?;
            bind(&mut args, device.as_bytes().as_slice())?;
            bind(&mut args, client_id.as_str())?;
        }
        for row in sqlx::query_with(AssertSqlSafe(sql), args).fetch_all(&mut *conn).await? {
            let key = (
                conversation_id_at(&row, "conversation_id")?,
                device_id_at(&row, "sender_device")?,
                row.try_get::<String, _>("client_message_id")?,
            );
            earlier.insert(key, (to_u64(row.try_get("seq")?), row.try_get("created_at")?));
        }
    }
    Ok(earlier)
}

async fn insert_entries(conn: &mut SqliteConnection, written: &[(&MessageWrite, u64)]) -> StoreResult<()> {
    for range in chunks(written.len()) {
        let sql = format!(
            "INSERT INTO entries (conversation_id, seq, kind, sender_user, sender_device, epoch, payload, created_at) \
             VALUES {}",
            placeholders(range.len(), 8)
        );
        let mut args = SqliteArguments::default();
        for (message, seq) in &written[range] {
            bind(&mut args, message.conversation_id.as_bytes().as_slice())?;
            bind(&mut args, to_i64(*seq))?;
            bind(&mut args, EntryKind::Message.as_str())?;
            bind(&mut args, message.sender.user_id.as_bytes().as_slice())?;
            bind(&mut args, message.sender.device_id.as_bytes().as_slice())?;
            bind(&mut args, to_i64(message.epoch))?;
            bind(&mut args, message.payload.as_slice())?;
            bind(&mut args, message.now)?;
        }
        sqlx::query_with(AssertSqlSafe(sql), args).execute(&mut *conn).await?;
    }
    Ok(())
}

async fn insert_message_ids(conn: &mut SqliteConnection, written: &[(&MessageWrite, u64)]) -> StoreResult<()> {
    for range in chunks(written.len()) {
        let sql = format!(
            "INSERT INTO message_ids (conversation_id, sender_device, client_message_id, seq, created_at) VALUES {}",
            placeholders(range.len(), 5)
        );
        let mut args = SqliteArguments::default();
        for (message, seq) in &written[range] {
            bind(&mut args, message.conversation_id.as_bytes().as_slice())?;
            bind(&mut args, message.sender.device_id.as_bytes().as_slice())?;
            bind(&mut args, message.client_message_id.as_str())?;
            bind(&mut args, to_i64(*seq))?;
            bind(&mut args, message.now)?;
        }
        sqlx::query_with(AssertSqlSafe(sql), args).execute(&mut *conn).await?;
    }
    Ok(())
}

async fn update_last_seqs(conn: &mut SqliteConnection, moved: &[(ConversationId, u64)]) -> StoreResult<()> {
    for range in chunks(moved.len()) {
        let sql = format!(
            "UPDATE conversations SET last_seq = moved.column2 FROM (VALUES {}) AS moved \
             WHERE conversations.id = moved.column1",
            placeholders(range.len(), 2)
        );
        let mut args = SqliteArguments::default();
        for (id, last_seq) in &moved[range] {
            bind(&mut args, id.as_bytes().as_slice())?;
            bind(&mut args, to_i64(*last_seq))?;
        }
        sqlx::query_with(AssertSqlSafe(sql), args).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Most rows in one multi-row statement (8 columns × 64 rows stays far below SQLite's limit on
/// bound parameters).
const MAX_ROWS: usize = 64;

/// Cuts `n` rows into statements of `MAX_ROWS`, then of decreasing powers of two, so the
/// connection's statement cache only ever sees a few shapes of each statement.
fn chunks(n: usize) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < n {
        let left = n - start;
        let size = if left >= MAX_ROWS { MAX_ROWS } else { 1 << left.ilog2() };
        ranges.push(start..start + size);
        start += size;
    }
    ranges
}

/// `(?, ?), (?, ?)` for `rows` rows of `columns` values.
fn placeholders(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

fn bind<'q, T>(args: &mut SqliteArguments, value: T) -> StoreResult<()>
where
    T: sqlx::Encode<'q, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + 'q,
{
    args.add(value).map_err(|err| StoreError::Backend(err.to_string()))
}

fn distinct<T: Clone + Eq + std::hash::Hash>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = HashSet::new();
    items.filter(|item| seen.insert(item.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_in_few_shapes() {
        for n in 0..300 {
            let ranges = chunks(n);
            assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), n);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
            assert!(ranges.iter().all(|r| r.len().is_power_of_two() && r.len() <= MAX_ROWS));
        }
        assert_eq!(chunks(0), Vec::<Range<usize>>::new());
        assert_eq!(chunks(70), vec![0..64, 64..68, 68..70]);
    }

    #[test]
    fn placeholders_are_rows_of_columns() {
        assert_eq!(placeholders(2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(placeholders(1, 1), "(?)");
    }
}
