//! Most of the WAL checkpoint work, off the commit path.
//!
//! SQLite checkpoints on the connection whose commit pushes the log past 1,000 pages: that commit
//! then also copies the log into the database file and fsyncs it, and every send waiting on the
//! group commit waits for the copy too (the main source of the latency tail under load). A
//! connection of its own runs a passive checkpoint every few milliseconds while the log grows,
//! beside the writer (in WAL mode a checkpoint and a write transaction proceed at the same time),
//! so each copy is small and when the writer's own checkpoint comes due almost nothing is left to
//! copy. (Copies made a hundred milliseconds apart were large enough to slow the commits beside
//! them; the comparison is in docs/benchmark-log.md.) While the log stands still the
//! checkpointer looks only a few times a second.
//!
//! The writer's checkpoint still runs: only it finds the moment when everything is copied and the
//! log can start over. Durability is unchanged: a commit is durable once its log frames are
//! fsynced, which the writer does on every commit.

use std::sync::Weak;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Row, SqliteConnection};

/// How soon the log is copied again after it grew.
const BUSY: Duration = Duration::from_millis(10);
/// How often an unchanged log is looked at.
const IDLE: Duration = Duration::from_millis(250);

/// Starts the checkpointer. It stops once `alive` can no longer be upgraded (the store is gone).
pub(crate) async fn start(options: &SqliteConnectOptions, alive: Weak<()>) -> sqlx::Result<()> {
    let connection = options.connect().await?;
    tokio::spawn(run(connection, alive));
    Ok(())
}

async fn run(mut connection: SqliteConnection, alive: Weak<()>) {
    // Frames in the log at the last look; the log grew (or started over) when this changes.
    let mut last_log: i64 = -1;
    let mut wait = BUSY;
    loop {
        tokio::time::sleep(wait).await;
        if alive.upgrade().is_none() {
            return;
        }
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&mut connection).await {
            Ok(row) => {
                // The row is (busy, frames in the log, frames copied).
                let log: i64 = row.try_get(1).unwrap_or(-1);
                wait = if log == last_log { IDLE } else { BUSY };
                last_log = log;
            }
            Err(err) => {
                tracing::warn!(error = %err, "background WAL checkpoint failed");
                wait = IDLE;
            }
        }
    }
}
