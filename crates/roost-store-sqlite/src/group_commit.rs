//! Group commit for messages on SQLite: concurrent sends share one transaction and one fsync.
//!
//! Each send still gets its reply only after the transaction holding it has committed (and, with
//! `synchronous = FULL`, been fsynced), so "acknowledged = durable" holds. Under load, many
//! sends wait for the writer at once; the appender (`roost_store::batch`) takes all of them (up
//! to a cap) into one transaction instead of paying one fsync each.
//!
//! The batch is also written set-wise, in two round trips to the connection's worker thread
//! whatever its size: one statement list begins the transaction and reads what every message's
//! checks need (one JSON row for the whole batch), one inserts every row, moves the conversations'
//! heads and commits. Round trips matter more than statements here: each is a hand-off between
//! threads, and on a small machine those cost more than the SQL. Statements carry their values
//! in `VALUES` lists padded to a power of two, so each comes in a few shapes, prepared once.

use roost_proto::ConversationId;
use roost_proto::conversation::EntryKind;
use roost_store::batch::{self, Appender, Checked, Head};
use roost_store::{Appended, MessageWrite, StoreError, StoreResult};
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, AssertSqlSafe, Row, SqliteConnection, SqlitePool};

use crate::codec::{to_i64, to_u64};

/// Starts the appender on the writer pool.
pub(crate) fn start(writer: SqlitePool) -> StoreResult<Appender> {
    Appender::start("roost-appender", async move |messages: &[&MessageWrite]| commit_batch(&writer, messages).await)
}

/// Appends every message of the batch in one transaction. A message refused on its own merits
/// (unknown conversation, not a member, stale epoch) gets its error and writes nothing; a storage
/// failure fails the whole batch, and none of it is acknowledged.
///
/// The transaction takes two round trips to the connection's worker thread: one statement list
/// opens it and reads everything the checks need, one writes every row and commits.
async fn commit_batch(writer: &SqlitePool, messages: &[&MessageWrite]) -> StoreResult<Vec<StoreResult<Appended>>> {
    let mut conn = writer.acquire().await?;
    let outcome = append_batch(&mut conn, messages).await;
    if outcome.is_err() {
        // The transaction may still be open. If there is none, this fails harmlessly.
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    }
    outcome
}

/// Checks and appends the messages in order ([`batch::plan`]). Begins the transaction and,
/// unless it fails, commits it.
pub(crate) async fn append_batch(
    conn: &mut SqliteConnection,
    messages: &[&MessageWrite],
) -> StoreResult<Vec<StoreResult<Appended>>> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let checks = begin_and_check(conn, messages).await?;
    let plan = batch::plan(messages, &checks);
    write_and_commit(conn, &plan.written, &plan.moved).await?;
    Ok(plan.results)
}

/// One message's checks as the statement returns them: its index in the batch, its
/// conversation's epoch and last sequence number, whether its sender is a current member (1 or
/// 0), and the sequence number and time of an earlier message with its id.
type CheckRow = (i64, Option<i64>, Option<i64>, i64, Option<i64>, Option<i64>);

/// Opens the write transaction and reads, for every message, its conversation's head, whether
/// its sender is a current member and the result of an earlier message with the same id.
///
/// The checks come back as one row holding a JSON array rather than a row per message: the
/// connection's worker thread hands each row over separately, and on a small machine every
/// hand-off can cost a thread switch (measured: about one per message of the batch).
async fn begin_and_check(conn: &mut SqliteConnection, messages: &[&MessageWrite]) -> StoreResult<Vec<Checked>> {
    let rows = padded(messages.len());
    let sql = format!(
        "BEGIN IMMEDIATE; \
         SELECT json_group_array(json_array(v.column1, c.epoch, c.last_seq, \
                d.device_id IS NOT NULL AND d.removed_seq IS NULL, m.seq, m.created_at)) \
         FROM (VALUES {}) AS v \
         LEFT JOIN conversations c ON c.id = v.column2 \
         LEFT JOIN conversation_devices d ON d.conversation_id = v.column2 AND d.device_id = v.column3 \
         LEFT JOIN message_ids m ON m.conversation_id = v.column2 AND m.sender_device = v.column3 \
                                AND m.client_message_id = v.column4",
        placeholders(rows, 4)
    );
    let mut args = SqliteArguments::default();
    for i in 0..rows {
        // Padding rows repeat the last message; their results are ignored.
        let Some(message) = messages.get(i).or(messages.last()) else { break };
        bind(&mut args, i64::try_from(i).unwrap_or(i64::MAX))?;
        bind(&mut args, message.conversation_id.as_bytes().as_slice())?;
        bind(&mut args, message.sender.device_id.as_bytes().as_slice())?;
        bind(&mut args, message.client_message_id.as_str())?;
    }
    let row = sqlx::query_with(AssertSqlSafe(sql), args).fetch_one(&mut *conn).await?;
    let rows: Vec<CheckRow> = serde_json::from_str(row.try_get::<&str, _>(0)?)
        .map_err(|err| StoreError::Backend(format!("unreadable checks of a batch: {err}")))?;
    let mut found: Vec<Option<Checked>> = vec![None; messages.len()];
    for (idx, epoch, last_seq, active_sender, earlier_seq, earlier_at) in rows {
        let Some(slot) = usize::try_from(idx).ok().and_then(|i| found.get_mut(i)) else { continue };
        let head = epoch.map(|epoch| Head { epoch: to_u64(epoch), last_seq: to_u64(last_seq.unwrap_or(0)) });
        let earlier = earlier_seq.zip(earlier_at).map(|(seq, at)| (to_u64(seq), at));
        *slot = Some(Checked { head, active_sender: active_sender != 0, earlier });
    }
    found
        .into_iter()
        .map(|f| f.ok_or_else(|| StoreError::Backend("a message's checks returned no row".into())))
        .collect()
}

/// Writes the accepted messages' entries and ids, moves the conversations' last sequence
/// numbers, and commits.
async fn write_and_commit(
    conn: &mut SqliteConnection,
    written: &[(&MessageWrite, u64)],
    moved: &[(ConversationId, u64)],
) -> StoreResult<()> {
    if written.is_empty() {
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        return Ok(());
    }
    let (rows, heads) = (padded(written.len()), padded(moved.len()));
    // Padding rows are all NULL and filtered out. A conflict (which the checks rule out) rolls
    // the whole transaction back; saying so up front spares SQLite a statement journal, a copy
    // of every page each multi-row statement touches.
    let sql = format!(
        "INSERT OR ROLLBACK INTO entries \
             (conversation_id, seq, kind, sender_user, sender_device, epoch, payload, created_at) \
         SELECT * FROM (VALUES {entries}) WHERE column1 IS NOT NULL; \
         INSERT OR ROLLBACK INTO message_ids (conversation_id, sender_device, client_message_id, seq, created_at) \
         SELECT * FROM (VALUES {ids}) WHERE column1 IS NOT NULL; \
         UPDATE OR ROLLBACK conversations SET last_seq = moved.column2 FROM (VALUES {heads}) AS moved \
         WHERE conversations.id = moved.column1; \
         COMMIT",
        entries = placeholders(rows, 8),
        ids = placeholders(rows, 5),
        heads = placeholders(heads, 2),
    );
    let mut args = SqliteArguments::default();
    for i in 0..rows {
        match written.get(i) {
            Some((message, seq)) => {
                bind(&mut args, message.conversation_id.as_bytes().as_slice())?;
                bind(&mut args, to_i64(*seq))?;
                bind(&mut args, EntryKind::Message.as_str())?;
                bind(&mut args, message.sender.user_id.as_bytes().as_slice())?;
                bind(&mut args, message.sender.device_id.as_bytes().as_slice())?;
                bind(&mut args, to_i64(message.epoch))?;
                bind(&mut args, message.payload.as_slice())?;
                bind(&mut args, message.now)?;
            }
            None => bind_nulls(&mut args, 8)?,
        }
    }
    for i in 0..rows {
        match written.get(i) {
            Some((message, seq)) => {
                bind(&mut args, message.conversation_id.as_bytes().as_slice())?;
                bind(&mut args, message.sender.device_id.as_bytes().as_slice())?;
                bind(&mut args, message.client_message_id.as_str())?;
                bind(&mut args, to_i64(*seq))?;
                bind(&mut args, message.now)?;
            }
            None => bind_nulls(&mut args, 5)?,
        }
    }
    for i in 0..heads {
        match moved.get(i) {
            Some((id, last_seq)) => {
                bind(&mut args, id.as_bytes().as_slice())?;
                bind(&mut args, to_i64(*last_seq))?;
            }
            None => bind_nulls(&mut args, 2)?,
        }
    }
    sqlx::query_with(AssertSqlSafe(sql), args).execute(&mut *conn).await?;
    Ok(())
}

/// The rows a statement gets for `n` values: the next power of two, so each statement comes in
/// only a few shapes (and each shape is prepared once per connection).
fn padded(n: usize) -> usize {
    n.max(1).next_power_of_two()
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

fn bind_nulls(args: &mut SqliteArguments, n: usize) -> StoreResult<()> {
    (0..n).try_for_each(|_| bind(args, Option::<i64>::None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_come_in_power_of_two_shapes() {
        assert_eq!([0, 1, 2, 3, 64, 65, 512].map(padded), [1, 1, 2, 4, 64, 128, 512]);
    }

    #[test]
    fn placeholders_are_rows_of_columns() {
        assert_eq!(placeholders(2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(placeholders(1, 1), "(?)");
    }
}
