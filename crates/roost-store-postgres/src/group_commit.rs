//! Group commit for messages on PostgreSQL: concurrent sends share one transaction and one WAL
//! flush, and each is answered only after that commit.
//!
//! A batch is four statements inside its transaction, whatever its size:
//! 1. lock the batch's conversations (`FOR NO KEY UPDATE`, in id order): from here until the
//!    commit no other transaction, in this process or another, appends to them or changes
//!    their membership, so `last_seq + 1` is free and the epoch is current;
//! 2. read, for every message at once, whether its sender is a current member and the result of
//!    an earlier message with its client message id (a retry through another process that
//!    committed first is found here, since this read starts after the lock was granted);
//! 3. decide each message ([`roost_store::batch::plan`]);
//! 4. insert every entry and idempotency record and move the heads, in one statement.
//!
//! The appender keeps a connection of its own, opened on its own thread (a connection serves the
//! runtime that opened it), and opens a new one when that connection fails.

use std::collections::{BTreeMap, HashMap};

use roost_proto::ConversationId;
use roost_proto::conversation::EntryKind;
use roost_store::batch::{self, Appender, Checked, Head};
use roost_store::{Appended, MessageWrite, StoreError, StoreResult};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};

use crate::codec::{byte_arrays, conversation_id_at, to_i64, to_u64};
use crate::run::{self, Attempts, Class, Failure, Next, Work};

/// Starts the appender; it connects with `options` on its own thread.
pub(crate) fn start(options: PgConnectOptions) -> StoreResult<Appender> {
    let mut connection: Option<PgConnection> = None;
    Appender::start("roost-pg-appender", async move |messages: &[&MessageWrite]| {
        // One retry on a fresh connection after the connection was lost.
        let mut attempts = Attempts::new(1);
        loop {
            let outcome = async {
                let conn = match &mut connection {
                    Some(conn) => conn,
                    empty => empty.insert(options.connect().await?),
                };
                commit_batch(conn, messages).await
            }
            .await;
            if !Attempts::connection_intact(&outcome) {
                // Lost, or failed in its commit: the next batch opens a new one.
                connection = None;
            }
            match attempts.next("append_message", outcome).await {
                Next::Done(results) => return results,
                Next::Again => continue,
            }
        }
    })
}

/// Appends the batch in one transaction. A message refused on its own merits (unknown
/// conversation, not a member, stale epoch) gets its error and writes nothing; a database
/// failure fails the whole batch, and none of it is acknowledged.
async fn commit_batch(conn: &mut PgConnection, messages: &[&MessageWrite]) -> Work<Vec<StoreResult<Appended>>> {
    let mut tx = conn.begin().await?;
    let heads = lock_heads(&mut tx, messages).await?;
    let checks = check(&mut tx, messages, &heads).await?;
    let plan = batch::plan(messages, &checks);
    write(&mut tx, &plan.written, &plan.moved).await?;
    tx.commit().await.map_err(|err| match run::classify(&err) {
        Class::Conflict => Failure::Sql(err),
        _ => Failure::Store(run::backend("append_message", &err)),
    })?;
    Ok(plan.results)
}

/// Locks the conversations of the batch and reads their heads.
async fn lock_heads(conn: &mut PgConnection, messages: &[&MessageWrite]) -> Work<HashMap<ConversationId, Head>> {
    let ids: BTreeMap<ConversationId, ()> = messages.iter().map(|m| (m.conversation_id, ())).collect();
    let rows =
        sqlx::query("SELECT id, epoch, last_seq FROM conversations WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
            .bind(byte_arrays(ids.keys().map(|id| id.as_bytes().as_slice())))
            .fetch_all(conn)
            .await?;
    let mut heads = HashMap::with_capacity(rows.len());
    for row in &rows {
        let head = Head { epoch: to_u64(row.try_get("epoch")?), last_seq: to_u64(row.try_get("last_seq")?) };
        heads.insert(conversation_id_at(row, "id")?, head);
    }
    Ok(heads)
}

/// Reads, for every message, whether its sender is a current member and an earlier result of
/// its client message id.
async fn check(
    conn: &mut PgConnection,
    messages: &[&MessageWrite],
    heads: &HashMap<ConversationId, Head>,
) -> Work<Vec<Checked>> {
    let rows = sqlx::query(
        "SELECT v.n, d.device_id IS NOT NULL AND d.removed_seq IS NULL AS active, m.seq, m.created_at \
         FROM unnest($1::bytea[], $2::bytea[], $3::text[]) WITH ORDINALITY AS v(conversation_id, device_id, id, n) \
         LEFT JOIN conversation_devices d ON d.conversation_id = v.conversation_id AND d.device_id = v.device_id \
         LEFT JOIN message_ids m ON m.client_message_id = v.id AND m.sender_device = v.device_id \
                                AND m.conversation_id = v.conversation_id",
    )
    .bind(byte_arrays(messages.iter().map(|m| m.conversation_id.as_bytes().as_slice())))
    .bind(byte_arrays(messages.iter().map(|m| m.sender.device_id.as_bytes().as_slice())))
    .bind(messages.iter().map(|m| m.client_message_id.as_str()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    let mut checks: Vec<Option<Checked>> = vec![None; messages.len()];
    for row in &rows {
        let n: i64 = row.try_get("n")?;
        let Some((slot, message)) =
            usize::try_from(n - 1).ok().and_then(|i| Some((checks.get_mut(i)?, messages.get(i)?)))
        else {
            continue;
        };
        let earlier_seq: Option<i64> = row.try_get("seq")?;
        let earlier_at: Option<i64> = row.try_get("created_at")?;
        *slot = Some(Checked {
            head: heads.get(&message.conversation_id).copied(),
            active_sender: row.try_get("active")?,
            earlier: earlier_seq.zip(earlier_at).map(|(seq, at)| (to_u64(seq), at)),
        });
    }
    let checks = checks.into_iter().collect::<Option<Vec<_>>>();
    Ok(checks.ok_or_else(|| StoreError::Backend("a message's checks returned no row".into()))?)
}

/// Inserts the accepted messages' entries and idempotency records and moves the conversations'
/// heads, in one statement.
async fn write(conn: &mut PgConnection, written: &[(&MessageWrite, u64)], moved: &[(ConversationId, u64)]) -> Work<()> {
    if written.is_empty() {
        return Ok(());
    }
    let conversations = byte_arrays(written.iter().map(|(m, _)| m.conversation_id.as_bytes().as_slice()));
    let seqs: Vec<i64> = written.iter().map(|(_, seq)| to_i64(*seq)).collect();
    let inserted: i64 = sqlx::query_scalar(
        "WITH e AS ( \
            INSERT INTO entries (conversation_id, seq, kind, sender_user, sender_device, epoch, payload, created_at) \
            SELECT conversation_id, seq, $1, sender_user, sender_device, epoch, payload, created_at \
            FROM unnest($2::bytea[], $3::int8[], $4::bytea[], $5::bytea[], $6::int8[], $7::bytea[], $8::int8[]) \
                 AS t(conversation_id, seq, sender_user, sender_device, epoch, payload, created_at) \
         ), m AS ( \
            INSERT INTO message_ids (client_message_id, sender_device, conversation_id, seq, created_at) \
            SELECT * FROM unnest($9::text[], $5::bytea[], $2::bytea[], $3::int8[], $8::int8[]) \
            ON CONFLICT DO NOTHING RETURNING 1 \
         ), h AS ( \
            UPDATE conversations c SET last_seq = t.last_seq FROM unnest($10::bytea[], $11::int8[]) AS t(id, last_seq) \
            WHERE c.id = t.id \
         ) SELECT count(*) FROM m",
    )
    .bind(EntryKind::Message.as_str())
    .bind(&conversations)
    .bind(&seqs)
    .bind(byte_arrays(written.iter().map(|(m, _)| m.sender.user_id.as_bytes().as_slice())))
    .bind(byte_arrays(written.iter().map(|(m, _)| m.sender.device_id.as_bytes().as_slice())))
    .bind(written.iter().map(|(m, _)| to_i64(m.epoch)).collect::<Vec<_>>())
    .bind(written.iter().map(|(m, _)| m.payload.as_slice()).collect::<Vec<_>>())
    .bind(written.iter().map(|(m, _)| m.now).collect::<Vec<_>>())
    .bind(written.iter().map(|(m, _)| m.client_message_id.as_str()).collect::<Vec<_>>())
    .bind(byte_arrays(moved.iter().map(|(id, _)| id.as_bytes().as_slice())))
    .bind(moved.iter().map(|(_, seq)| to_i64(*seq)).collect::<Vec<_>>())
    .fetch_one(conn)
    .await?;
    if usize::try_from(inserted).ok() != Some(written.len()) {
        // An id was recorded by a transaction that did not hold the conversation's lock, which
        // no writer of Roost does; starting over finds that record and answers with it.
        return Err(Failure::Conflict);
    }
    Ok(())
}
