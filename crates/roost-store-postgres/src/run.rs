//! How work reaches the database: on a pooled connection, in a transaction or not, timed, and
//! retried when PostgreSQL says the same work may succeed if run again.
//!
//! Retried from the start, on a fresh transaction:
//! - a deadlock (`40P01`), a serialization failure (`40001`) or a unique violation (`23505`):
//!   another transaction got there first; run again, the work sees what it did and answers
//!   accordingly (a taken handle, an existing conversation), so a race ends in the domain answer
//!   a lone request would have had, never in a storage error;
//! - a lost connection (`08xxx`, `57P0x`, an I/O error) met before the commit was sent: nothing
//!   was written. A connection that failed is closed when given back, and the next attempt takes
//!   another; when the database restarted, every idle connection of the pool may be dead, so
//!   work is retried once more than the pool has connections before it fails. A connection lost during the commit is
//!   not retried, since the commit may have happened; the caller gets
//!   [`StoreError::Backend`] (`503 unavailable`) and retries as a client would.

use std::time::Duration;

use roost_store::{StoreError, StoreResult};

/// Attempts of work that met a conflict with another transaction.
const CONFLICT_ATTEMPTS: u32 = 10;

/// Why work on the database stopped: a domain answer, or an error from the database.
#[derive(Debug)]
pub(crate) enum Failure {
    /// An answer for the caller (not found, taken, stale epoch...).
    Store(StoreError),
    /// The database refused or failed.
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Self {
        Self::Sql(err)
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

/// The result of work on the database.
pub(crate) type Work<T> = Result<T, Failure>;

/// What an error from the database means for the work that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Another transaction got in the way; running again can succeed.
    Conflict,
    /// The connection is gone; nothing uncommitted happened.
    Connection,
    /// Anything else: report it.
    Other,
}

pub(crate) fn classify(err: &sqlx::Error) -> Class {
    match err {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("40001" | "40P01" | "23505") => Class::Conflict,
            Some(code) if code.starts_with("08") || code.starts_with("57P") => Class::Connection,
            _ => Class::Other,
        },
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => {
            Class::Connection
        }
        _ => Class::Other,
    }
}

/// Runs a block on a transaction (named by the closure-like parameter) and commits it, timed as
/// `op` and retried as the module describes. The block's `return` and `?` end the attempt.
///
/// A macro rather than a function taking an async closure: the futures of async closures that
/// borrow a connection cannot yet be shown to be `Send`, which the store's trait requires.
macro_rules! transaction {
    ($pool:expr, $op:literal, |$tx:ident| $body:block) => {
        roost_store::timed($op, async {
            let mut attempts = $crate::run::Attempts::for_pool(&$pool);
            loop {
                let outcome: $crate::run::Work<_> = async {
                    let mut transaction = $pool.begin().await?;
                    let $tx: &mut sqlx::PgConnection = &mut transaction;
                    let value = $crate::run::work(async { $body }).await?;
                    $crate::run::commit($op, transaction).await?;
                    Ok(value)
                }
                .await;
                match attempts.next($op, outcome).await {
                    $crate::run::Next::Done(result) => break result,
                    $crate::run::Next::Again => continue,
                }
            }
        })
        .await
    };
}

/// Runs a block on a pooled connection (named by the closure-like parameter) outside a
/// transaction (one statement, or reads that need no common snapshot), timed as `op` and
/// retried after a lost connection.
macro_rules! read {
    ($pool:expr, $op:literal, |$conn:ident| $body:block) => {
        roost_store::timed($op, async {
            let mut attempts = $crate::run::Attempts::for_pool(&$pool);
            loop {
                let outcome: $crate::run::Work<_> = async {
                    let mut connection = $pool.acquire().await?;
                    let $conn: &mut sqlx::PgConnection = &mut connection;
                    $crate::run::work(async { $body }).await
                }
                .await;
                match attempts.next($op, outcome).await {
                    $crate::run::Next::Done(result) => break result,
                    $crate::run::Next::Again => continue,
                }
            }
        })
        .await
    };
}

pub(crate) use {read, transaction};

/// Gives a block of work its type, so `?` inside it converts to [`Failure`].
pub(crate) fn work<T>(block: impl Future<Output = Work<T>>) -> impl Future<Output = Work<T>> {
    block
}

/// Commits a transaction. Failing here is failing in the commit: the work is retried only if
/// PostgreSQL said it rolled back (a conflict), never after a lost connection, since the commit
/// may have happened.
pub(crate) async fn commit(op: &str, transaction: sqlx::Transaction<'_, sqlx::Postgres>) -> Work<()> {
    transaction.commit().await.map_err(|err| match classify(&err) {
        Class::Conflict => Failure::Sql(err),
        _ => Failure::Store(backend(op, &err)),
    })
}

/// The error a caller gets for a database failure: the backend is unavailable (503).
pub(crate) fn backend(op: &str, err: &sqlx::Error) -> StoreError {
    match err {
        sqlx::Error::PoolTimedOut => StoreError::Backend(format!("{op}: no database connection became available")),
        other => StoreError::Backend(format!("{op}: {other}")),
    }
}

/// How many times work has been retried, and why.
pub(crate) struct Attempts {
    conflicts: u32,
    connections: u32,
    connection_limit: u32,
}

/// What follows an attempt.
pub(crate) enum Next<T> {
    /// The work is done, one way or the other.
    Done(StoreResult<T>),
    /// Run it again.
    Again,
}

impl Attempts {
    /// No attempt yet, of work on a connection of `pool`.
    pub(crate) fn for_pool(pool: &sqlx::PgPool) -> Self {
        Self::new(pool.options().get_max_connections() + 1)
    }

    /// No attempt yet; work that lost its connection is retried up to `connection_limit` times.
    pub(crate) fn new(connection_limit: u32) -> Self {
        Self { conflicts: 0, connections: 0, connection_limit }
    }

    /// Whether an outcome leaves the connection it came from fit for more work: it succeeded,
    /// gave a domain answer, or met a conflict (the transaction rolled back cleanly).
    pub(crate) fn connection_intact<T>(outcome: &Work<T>) -> bool {
        match outcome {
            Ok(_) => true,
            Err(Failure::Sql(err)) => classify(err) == Class::Conflict,
            Err(Failure::Store(_)) => false,
        }
    }

    /// Decides what follows an attempt's outcome, waiting a little before a retry after a
    /// conflict (so the transactions that collided do not collide again in step).
    pub(crate) async fn next<T>(&mut self, op: &'static str, outcome: Work<T>) -> Next<T> {
        let (class, err) = match outcome {
            Ok(value) => return Next::Done(Ok(value)),
            Err(Failure::Store(err)) => return Next::Done(Err(err)),
            Err(Failure::Sql(err)) => (classify(&err), err),
        };
        match class {
            Class::Conflict if self.conflicts + 1 < CONFLICT_ATTEMPTS => {
                self.conflicts += 1;
                metrics::counter!("roost_store_retries_total", "op" => op, "reason" => "conflict").increment(1);
                let ceiling = 1u64 << self.conflicts.min(6);
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..=ceiling))).await;
                Next::Again
            }
            Class::Connection if self.connections < self.connection_limit => {
                self.connections += 1;
                metrics::counter!("roost_store_retries_total", "op" => op, "reason" => "connection").increment(1);
                Next::Again
            }
            _ => Next::Done(Err(backend(op, &err))),
        }
    }
}
