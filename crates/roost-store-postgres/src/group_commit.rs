//! Group commit for messages on PostgreSQL: concurrent sends share one transaction and one WAL
//! flush, and each is answered only after that commit.
//!
//! A batch is one call of the database function `roost_append_messages` (migration 0005), run
//! outside any explicit transaction, so PostgreSQL commits it as the statement ends and the
//! batch costs one round trip. The function
//! 1. locks the batch's conversations (`FOR NO KEY UPDATE`, in id order): from there until the
//!    commit no other transaction, in this process or another, appends to them or changes their
//!    membership, so `last_seq + 1` is free and the epoch is current;
//! 2. in a second statement, whose snapshot is taken after the locks were granted (so a retry
//!    through another process that committed first is found), reads for every message whether
//!    its sender is a current member and the result of an earlier message with its client
//!    message id, decides each message in order as a lone send would be decided (the rules of
//!    [`roost_store::batch::plan`], which the SQLite backend runs in Rust), inserts every
//!    accepted entry and idempotency record, moves the heads, and returns each message's result.
//!
//! The appender keeps a connection of its own, opened on its own thread (a connection serves the
//! runtime that opened it), and opens a new one when that connection fails.

use roost_proto::conversation::EntryKind;
use roost_store::batch::Appender;
use roost_store::{Appended, MessageWrite, StoreError, StoreResult};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgRow};
use sqlx::{ConnectOptions, Row};

use crate::codec::{byte_arrays, corrupt, to_i64, to_u64};
use crate::run::{Attempts, Next, Work};

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

/// Appends the batch in one call of `roost_append_messages` (its migration holds the rules and
/// the statements), which PostgreSQL runs and commits as one transaction. A message refused on
/// its own merits (unknown conversation, not a member, stale epoch) gets its error and writes
/// nothing; a database failure fails the whole batch, and none of it is acknowledged.
///
/// A call that lost its connection may have committed. Running it again is still right: every
/// message it stored is then found by its client message id and answered with its original
/// sequence number, as the sender's own retry would be.
async fn commit_batch(conn: &mut PgConnection, messages: &[&MessageWrite]) -> Work<Vec<StoreResult<Appended>>> {
    let rows = sqlx::query(
        "SELECT message, result, result_seq, result_at, current_epoch \
         FROM roost_append_messages($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(byte_arrays(messages.iter().map(|m| m.conversation_id.as_bytes().as_slice())))
    .bind(byte_arrays(messages.iter().map(|m| m.sender.user_id.as_bytes().as_slice())))
    .bind(byte_arrays(messages.iter().map(|m| m.sender.device_id.as_bytes().as_slice())))
    .bind(messages.iter().map(|m| m.client_message_id.as_str()).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| to_i64(m.epoch)).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.payload.as_slice()).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.now).collect::<Vec<_>>())
    .bind(EntryKind::Message.as_str())
    .fetch_all(conn)
    .await?;
    if rows.len() != messages.len() {
        return Err(
            StoreError::Backend(format!("{} messages were answered with {} rows", messages.len(), rows.len())).into()
        );
    }
    let mut results = Vec::with_capacity(rows.len());
    for (position, row) in (1i64..).zip(&rows) {
        let message: i64 = row.try_get("message").map_err(|_| corrupt("message"))?;
        if message != position {
            return Err(StoreError::Backend(format!("message {position} was answered by row {message}")).into());
        }
        results.push(decided(row)?);
    }
    Ok(results)
}

/// One message's result, from its row of `roost_append_messages`.
fn decided(row: &PgRow) -> StoreResult<StoreResult<Appended>> {
    let column = |name: &'static str| move |_| corrupt(name);
    let result: String = row.try_get("result").map_err(column("result"))?;
    let appended = |duplicate| -> StoreResult<StoreResult<Appended>> {
        let seq: Option<i64> = row.try_get("result_seq").map_err(column("result_seq"))?;
        let created_at: Option<i64> = row.try_get("result_at").map_err(column("result_at"))?;
        let (seq, created_at) = seq.zip(created_at).ok_or_else(|| corrupt("result_seq"))?;
        Ok(Ok(Appended { seq: to_u64(seq), created_at, duplicate }))
    };
    match result.as_str() {
        "appended" => appended(false),
        "duplicate" => appended(true),
        "not_found" => Ok(Err(StoreError::NotFound)),
        "not_a_member" => Ok(Err(StoreError::NotAMember)),
        "stale_epoch" => {
            let current: Option<i64> = row.try_get("current_epoch").map_err(column("current_epoch"))?;
            Ok(Err(StoreError::StaleEpoch { current: current.map(to_u64).unwrap_or_default() }))
        }
        other => Err(StoreError::Backend(format!("unknown append result {other:?}"))),
    }
}
