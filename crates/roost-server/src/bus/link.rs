//! Whether Redis answers this instance now.
//!
//! Requests ask Redis on their way: a send for its rate-limit tokens, a new socket for its seat
//! under the connection cap, a logout to tell the other instances. Each of these has an answer
//! without Redis (this instance's own buckets, a seat counted here, an invalidation the others
//! make up for when their own link comes back), but a command sent while Redis is down waits
//! for the client's timeout before failing; asked on every request, that held every send for
//! [`COMMAND_TIMEOUT`](super::COMMAND_TIMEOUT) while Redis was stopped. So once a command finds
//! Redis not answering, or the connection is down, requests stop asking and decide without it
//! at once; the heartbeat keeps asking every second and finds Redis back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fred::clients::Client;
use fred::error::{Error, ErrorKind};
use fred::interfaces::ClientLike;

/// The publishing connection to Redis, and whether Redis answered it last.
#[derive(Clone)]
pub(super) struct Link {
    client: Client,
    answering: Arc<AtomicBool>,
    /// Whether something told went unsent since Redis last came back: the other instances may
    /// have missed live events or invalidations from this one.
    lost: Arc<AtomicBool>,
}

impl Link {
    /// A link over `client`, connected and answering.
    pub(super) fn new(client: Client) -> Self {
        metrics::gauge!("roost_bus_redis_answering").set(1.0);
        Self { client, answering: Arc::new(AtomicBool::new(true)), lost: Arc::new(AtomicBool::new(false)) }
    }

    /// The client, whether or not Redis answers (for the heartbeat, which finds it back, and for
    /// closing).
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `command` on the client and notes its outcome; fails at once instead (with a
    /// `Canceled` error) while the last command went unanswered or the connection is down. For
    /// what has an answer without Redis (rate-limit tokens, seats, presence, wake-up claims).
    pub(super) async fn ask<T, F, Fut>(&self, command: F) -> Result<T, Error>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        if !self.client.is_connected() {
            return Err(away());
        }
        self.tell(command).await
    }

    /// Like [`ask`](Self::ask), but waits for a connection being made again (the client holds
    /// commands meanwhile, up to its timeout) and fails at once only while the last command went
    /// unanswered. For what has no answer without Redis (live events, cache invalidations,
    /// renewing seats), which a short reconnect should not lose.
    pub(super) async fn tell<T, F, Fut>(&self, command: F) -> Result<T, Error>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        if !self.answering.load(Ordering::Relaxed) {
            self.lost.store(true, Ordering::Relaxed);
            return Err(away());
        }
        let outcome = command(self.client.clone()).await;
        self.note(&outcome);
        outcome
    }

    /// Notes a command's outcome: an answer means Redis is back, a failure to get one that it is
    /// away. Each change is logged once, and shown by the `roost_bus_redis_answering` gauge.
    /// Says whether this outcome brought Redis back after something told went unsent (the caller
    /// tells the other instances so: see [`Forget::Missed`](super::wire::Forget::Missed)).
    pub(super) fn note<T>(&self, outcome: &Result<T, Error>) -> bool {
        match outcome {
            Ok(_) => {
                if !self.answering.load(Ordering::Relaxed) && !self.answering.swap(true, Ordering::Relaxed) {
                    metrics::gauge!("roost_bus_redis_answering").set(1.0);
                    tracing::info!("Redis answers again: rate limits and the connection cap are shared again");
                    return self.lost.swap(false, Ordering::Relaxed);
                }
            }
            Err(err) if unanswered(err) => {
                self.lost.store(true, Ordering::Relaxed);
                if self.answering.swap(false, Ordering::Relaxed) {
                    metrics::gauge!("roost_bus_redis_answering").set(0.0);
                    tracing::warn!(
                        error = %err,
                        "Redis does not answer: until it does, rate limits and the connection cap hold per \
                         instance and other instances' sockets get events when it is back"
                    );
                }
            }
            Err(err) => tracing::warn!(error = %err, "Redis refused a command"),
        }
        false
    }
}

fn away() -> Error {
    Error::new(ErrorKind::Canceled, "Redis is not answering this instance")
}

/// Whether an error means no answer came (rather than an answer that was an error).
fn unanswered(err: &Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Routing | ErrorKind::Backpressure
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_answer_counts_as_redis_away() {
        assert!(unanswered(&Error::new(ErrorKind::Timeout, "timed out")));
        assert!(unanswered(&Error::new(ErrorKind::IO, "connection reset")));
        assert!(unanswered(&Error::new(ErrorKind::Canceled, "connection closed")));
        assert!(!unanswered(&Error::new(ErrorKind::InvalidArgument, "WRONGTYPE")));
        assert!(!unanswered(&Error::new(ErrorKind::Parse, "not an integer")));
    }
}
