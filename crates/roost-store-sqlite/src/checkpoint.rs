//! Most of the WAL checkpoint work, off the commit path.
//!
//! SQLite checkpoints on the connection whose commit pushes the log past 1,000 pages: that commit
//! then also copies the log into the database file and fsyncs it, and every send waiting on the
//! group commit waits for the copy too (the main source of the latency tail under load). A
//! connection of its own runs a passive checkpoint on a short interval, beside the writer (in
//! WAL mode a checkpoint and a write transaction proceed at the same time), so when the writer's
//! own checkpoint comes due little is left to copy. The writer's checkpoint still runs: only it
//! finds the moment when everything is copied and the log can start over. Durability is
//! unchanged: a commit is durable once its log frames are fsynced, which the writer does on
//! every commit.

use std::sync::Weak;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, SqliteConnection};

/// How often the log is copied back into the database.
const EVERY: Duration = Duration::from_millis(100);

/// Starts the checkpointer. It stops once `alive` can no longer be upgraded (the store is gone).
pub(crate) async fn start(options: &SqliteConnectOptions, alive: Weak<()>) -> sqlx::Result<()> {
    let connection = options.connect().await?;
    tokio::spawn(run(connection, alive));
    Ok(())
}

async fn run(mut connection: SqliteConnection, alive: Weak<()>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if alive.upgrade().is_none() {
            return;
        }
        if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut connection).await {
            tracing::warn!(error = %err, "background WAL checkpoint failed");
        }
    }
}
