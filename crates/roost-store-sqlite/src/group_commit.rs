//! Group commit for messages: concurrent sends share one transaction and one fsync.
//!
//! Each send still gets its reply only after the transaction holding it has committed (and, with
//! `synchronous = FULL`, been fsynced), so "acknowledged = durable" holds. Under load, many
//! sends wait for the writer at once; the appender takes all of them (up to a cap) into one
//! transaction instead of paying one fsync each.

use roost_store::{Appended, MessageWrite, StoreError, StoreResult};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use crate::conversations::append_in;

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
/// (not a member, stale epoch) gets its error and writes nothing; a storage failure fails the
/// whole batch, and none of it is acknowledged.
async fn commit_batch(writer: &SqlitePool, batch: &[Job]) -> StoreResult<Vec<StoreResult<Appended>>> {
    let mut tx = writer.begin().await?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        match append_in(&mut tx, &job.message).await {
            Err(StoreError::Backend(detail)) => return Err(StoreError::Backend(detail)),
            outcome => results.push(outcome),
        }
    }
    tx.commit().await?;
    Ok(results)
}
