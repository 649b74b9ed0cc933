//! Confirmations of cache invalidations: an instance that publishes one waits until every
//! instance that received it (itself included) has applied it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use super::lock;

/// Invalidations waiting for confirmations, by number.
#[derive(Default)]
pub(super) struct Confirmations {
    next: AtomicU64,
    pending: std::sync::Mutex<HashMap<u64, Pending>>,
}

struct Pending {
    /// Confirmations received.
    received: i64,
    /// How many instances received the invalidation, once Redis has said.
    expected: Option<i64>,
    done: Option<oneshot::Sender<()>>,
}

impl Confirmations {
    pub(super) fn open(&self) -> (u64, oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (done, confirmed) = oneshot::channel();
        self.lock().insert(id, Pending { received: 0, expected: None, done: Some(done) });
        (id, confirmed)
    }

    pub(super) fn expect(&self, id: u64, receivers: i64) {
        self.update(id, |pending| pending.expected = Some(receivers));
    }

    pub(super) fn confirm(&self, id: u64) {
        self.update(id, |pending| pending.received += 1);
    }

    pub(super) fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut Pending)) {
        let mut pending = self.lock();
        let Some(entry) = pending.get_mut(&id) else { return };
        change(entry);
        if entry.expected.is_some_and(|expected| entry.received >= expected)
            && let Some(entry) = pending.remove(&id)
            && let Some(done) = entry.done
        {
            let _ = done.send(());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        lock(&self.pending)
    }
}
