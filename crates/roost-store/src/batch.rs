//! Group commit of messages, the part every backend shares: the appender that gathers concurrent
//! sends into batches, and the rules that decide each message of a batch.
//!
//! A backend reads what the checks need for the whole batch (each conversation's head, whether
//! each sender is a current member, an earlier result of each client message id), hands it to
//! [`plan`], writes what the plan accepted and commits (PostgreSQL applies the same rules inside
//! the database, in one call per batch, and the store conformance suite holds both backends to
//! the same answers); each send is answered only after that commit, so "acknowledged = durable"
//! holds while many sends share one transaction and one flush of the log.

use std::collections::HashMap;

use roost_proto::{ConversationId, DeviceId};
use tokio::sync::{mpsc, oneshot};

use crate::{Appended, MessageWrite, StoreError, StoreResult};

/// Most messages in one transaction.
pub const MAX_BATCH: usize = 512;
/// Sends waiting for the appender before new ones wait for room.
const QUEUE: usize = 4096;

/// Where a conversation's log stands when the batch begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The current epoch.
    pub epoch: u64,
    /// The last assigned sequence number.
    pub last_seq: u64,
}

/// What the store holds that decides one message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Its conversation's head, or `None` when there is no such conversation.
    pub head: Option<Head>,
    /// Whether its sender is a current member device.
    pub active_sender: bool,
    /// The sequence number and time of an earlier message with the same id from the same device.
    pub earlier: Option<(u64, i64)>,
}

/// What a batch writes and answers.
#[derive(Debug)]
pub struct Plan<'a> {
    /// One result per message, in the batch's order.
    pub results: Vec<StoreResult<Appended>>,
    /// The accepted messages with their sequence numbers, in order.
    pub written: Vec<(&'a MessageWrite, u64)>,
    /// Each conversation the batch appended to, with its new last sequence number.
    pub moved: Vec<(ConversationId, u64)>,
}

/// Decides every message of a batch in order, as a lone send would be decided: the conversation
/// exists, the sender is a current member, a retried id returns its original result (even if
/// the epoch has moved on since, and also when the original is earlier in this batch), and the
/// epoch is the current one. Accepted messages take the next sequence numbers of their
/// conversation.
pub fn plan<'a>(messages: &[&'a MessageWrite], checks: &[Checked]) -> Plan<'a> {
    let mut heads: HashMap<ConversationId, (Head, bool)> = HashMap::new();
    for (message, check) in messages.iter().zip(checks) {
        if let Some(head) = check.head {
            heads.entry(message.conversation_id).or_insert((head, false));
        }
    }
    let mut earlier: HashMap<(ConversationId, DeviceId, &str), (u64, i64)> = HashMap::new();
    let mut results = Vec::with_capacity(messages.len());
    let mut written = Vec::with_capacity(messages.len());
    for (message, check) in messages.iter().zip(checks) {
        let Some((head, moved)) = heads.get_mut(&message.conversation_id) else {
            results.push(Err(StoreError::NotFound));
            continue;
        };
        if !check.active_sender {
            results.push(Err(StoreError::NotAMember));
            continue;
        }
        let key = (message.conversation_id, message.sender.device_id, message.client_message_id.as_str());
        if let Some((seq, created_at)) = check.earlier.or_else(|| earlier.get(&key).copied()) {
            results.push(Ok(Appended { seq, created_at, duplicate: true }));
            continue;
        }
        if head.epoch != message.epoch {
            results.push(Err(StoreError::StaleEpoch { current: head.epoch }));
            continue;
        }
        head.last_seq += 1;
        *moved = true;
        earlier.insert(key, (head.last_seq, message.now));
        written.push((*message, head.last_seq));
        results.push(Ok(Appended { seq: head.last_seq, created_at: message.now, duplicate: false }));
    }
    let moved = heads.into_iter().filter(|(_, (_, moved))| *moved).map(|(id, (head, _))| (id, head.last_seq)).collect();
    Plan { results, written, moved }
}

struct Job {
    message: MessageWrite,
    reply: oneshot::Sender<StoreResult<Appended>>,
}

/// Handle to an appender: a task on a thread of its own that commits batches of messages.
#[derive(Clone)]
pub struct Appender {
    jobs: mpsc::Sender<Job>,
}

impl Appender {
    /// Starts an appender that hands each batch to `commit`, which must write it in one
    /// transaction and return one result per message (or fail the whole batch). It stops when
    /// every handle is dropped.
    ///
    /// It runs on a thread of its own (a single-threaded runtime): between the statements of a
    /// batch it waits for the database, and on the server's shared runtime each of those waits
    /// would end behind every queued request task, stretching every commit under load.
    pub fn start<F>(name: &str, commit: F) -> StoreResult<Self>
    where
        F: AsyncFnMut(&[&MessageWrite]) -> StoreResult<Vec<StoreResult<Appended>>> + Send + 'static,
    {
        let (jobs, receiver) = mpsc::channel::<Job>(QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| StoreError::Backend(format!("starting the message appender: {err}")))?;
        std::thread::Builder::new()
            .name(name.to_owned())
            // The future is made on the appender's thread: it need not be `Send`, only what it
            // starts from.
            .spawn(move || runtime.block_on(run(commit, receiver)))
            .map_err(|err| StoreError::Backend(format!("starting the message appender: {err}")))?;
        Ok(Self { jobs })
    }

    /// Appends a message; returns once it is committed.
    pub async fn append(&self, message: MessageWrite) -> StoreResult<Appended> {
        let (reply, result) = oneshot::channel();
        let stopped = || StoreError::Backend("the message appender stopped".into());
        self.jobs.send(Job { message, reply }).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }
}

/// Takes every send waiting (up to [`MAX_BATCH`]) into one batch, commits it, answers each.
async fn run<F>(mut commit: F, mut receiver: mpsc::Receiver<Job>)
where
    F: AsyncFnMut(&[&MessageWrite]) -> StoreResult<Vec<StoreResult<Appended>>>,
{
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("roost_store_group_commit_size").record(batch.len() as f64);
        let messages: Vec<&MessageWrite> = batch.iter().map(|job| &job.message).collect();
        match commit(&messages).await {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(err) => {
                for job in batch {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use roost_proto::UserId;

    use super::*;
    use crate::MemberRef;

    fn message(conversation: u8, id: &str, epoch: u64) -> MessageWrite {
        MessageWrite {
            conversation_id: ConversationId::from_bytes([conversation; 16]),
            sender: MemberRef { user_id: UserId::from_bytes([1; 32]), device_id: DeviceId::from_bytes([2; 32]) },
            client_message_id: id.to_owned(),
            epoch,
            payload: vec![1],
            now: 7,
        }
    }

    const OPEN: Checked = Checked { head: Some(Head { epoch: 1, last_seq: 4 }), active_sender: true, earlier: None };

    #[test]
    fn each_message_is_decided_as_if_sent_alone() {
        let batch = [
            message(1, "a", 1),
            message(1, "b", 0),
            message(1, "a", 1),
            message(2, "c", 1),
            message(1, "d", 1),
            message(1, "e", 1),
            message(1, "f", 1),
        ];
        let refs: Vec<&MessageWrite> = batch.iter().collect();
        let checks = [
            OPEN,
            OPEN,
            OPEN,
            Checked { head: None, ..OPEN },
            Checked { active_sender: false, ..OPEN },
            Checked { earlier: Some((2, 3)), ..OPEN },
            OPEN,
        ];
        let plan = plan(&refs, &checks);
        let outcome: Vec<_> = plan.results.iter().map(|r| r.as_ref().map(|a| (a.seq, a.duplicate))).collect();
        assert!(matches!(outcome[1], Err(StoreError::StaleEpoch { current: 1 })));
        assert!(matches!(outcome[3], Err(StoreError::NotFound)));
        assert!(matches!(outcome[4], Err(StoreError::NotAMember)));
        assert_eq!(outcome[0].as_ref().unwrap(), &(5, false));
        assert_eq!(outcome[2].as_ref().unwrap(), &(5, true), "a retry inside the batch returns the original");
        assert_eq!(outcome[5].as_ref().unwrap(), &(2, true), "a stored original wins");
        assert_eq!(outcome[6].as_ref().unwrap(), &(6, false), "no gap after refusals");
        assert_eq!(
            plan.written.iter().map(|(m, seq)| (m.client_message_id.as_str(), *seq)).collect::<Vec<_>>(),
            [("a", 5), ("f", 6)]
        );
        assert_eq!(plan.moved, vec![(ConversationId::from_bytes([1; 16]), 6)]);
    }
}
