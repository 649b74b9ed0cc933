//! The PostgreSQL backend of the Roost store: one database shared by any number of `roostd`
//! processes.
//!
//! Durability: a transaction is acknowledged only after PostgreSQL reported its commit, and with
//! PostgreSQL's default `synchronous_commit = on` that report comes after the commit's WAL
//! record was flushed to disk. [`PostgresStore::connect`] refuses a server running with
//! `fsync = off` and warns about `synchronous_commit = off` (both trade acknowledged writes for
//! speed).
//!
//! Concurrency: every method runs at PostgreSQL's default READ COMMITTED isolation on a pooled
//! connection, several at once and from several processes. The read-check-write paths that the
//! SQLite backend keeps safe with its single writer are made safe here by locks and atomic
//! statements, each named where it is taken: a conversation's row is locked (`FOR NO KEY
//! UPDATE`) by everything that appends to its log or changes its membership, so its sequence
//! numbers and epoch move one transaction at a time; a user's row is locked by device additions
//! and handle claims, a device's by KeyPackage uploads; single-row transitions are conditional
//! `UPDATE`s and `INSERT ... ON CONFLICT`. Locks are taken in one order (conversations, then
//! member rows, then queue counters; several rows of one table in key order), and a transaction
//! that still meets a deadlock, a serialization failure or a unique violation is retried from
//! the start (see [`run`]).
//!
//! Messages are group-committed as on SQLite: concurrent sends share one transaction and one
//! WAL flush (see `group_commit`).
#![deny(missing_docs)]

mod accounts;
mod attachments;
mod codec;
mod conversations;
mod group_commit;
mod import;
mod push;
mod run;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use import::ImportReport;
use roost_store::batch::Appender;
use roost_store::{Store, StoreError, StoreResult};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Executor, Row};

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    appender: Appender,
    options: PgConnectOptions,
    /// The connection holding the background-work lock, while this process holds it.
    leader: Arc<tokio::sync::Mutex<Option<PgConnection>>>,
}

/// How the store uses its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most connections the pool opens (the group commit takes one while a batch is written).
    pub max_connections: u32,
    /// How long a request waits for a free connection, or for a new one to be opened, before
    /// it fails as unavailable.
    pub acquire_timeout: Duration,
    /// Longest a statement may run before PostgreSQL cancels it (`statement_timeout`); `None`
    /// leaves the server's setting.
    pub statement_timeout: Option<Duration>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self { max_connections: 16, acquire_timeout: Duration::from_secs(5), statement_timeout: None }
    }
}

/// Two-part key of the advisory lock that migrations run under: this namespace, and a hash of
/// the schema being migrated (so separate schemas in one database migrate independently).
const MIGRATION_LOCK: i32 = 0x526f_6f73; // "Roos"
/// The namespace of the advisory lock held by the process that does the background work.
const BACKGROUND_LOCK: i32 = 0x526f_6f42; // "RooB"

impl PostgresStore {
    /// Connects to the database at a `postgres://` (or `postgresql://`) URL, checks that it is
    /// durable, and runs pending migrations under an advisory lock, so several processes
    /// starting at once migrate exactly once.
    pub async fn connect(url: &str, settings: &PoolSettings) -> StoreResult<Self> {
        // Notices (such as "relation already exists, skipping" from an idempotent migration)
        // would only be log noise. Statements are planned for their parameters each time
        // (`force_custom_plan`): a prepared statement's generic plan is chosen once, from the
        // table sizes of that moment, and a plan made while a table was nearly empty (every
        // new database) can scan the whole table on every batch once it has grown.
        let mut options = PgConnectOptions::from_str(url)?
            .options([("client_min_messages", "warning"), ("plan_cache_mode", "force_custom_plan")]);
        if let Some(timeout) = settings.statement_timeout {
            options = options.options([("statement_timeout", format!("{}ms", timeout.as_millis()))]);
        }
        let appender = group_commit::start(options.clone())?;
        // Connections are not pinged before each use (that would double the round trips of a
        // short request); one that died since its last use fails its statement, and `run`
        // retries work that had not reached its commit on a fresh connection.
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(2))
            .acquire_timeout(settings.acquire_timeout)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        check_durability(&pool).await?;
        migrate(&pool).await?;
        Ok(Self { pool, appender, options, leader: Arc::default() })
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        run::read!(self.pool, "ping", |conn| {
            conn.execute("SELECT 1").await?;
            Ok(())
        })
    }

    /// The process that holds a session-level advisory lock (keyed on the schema) on a
    /// connection of its own leads. The lock lives as long as that connection: when the process
    /// dies or loses the connection, PostgreSQL releases it and the next process to ask takes it.
    async fn lead_background_work(&self) -> StoreResult<bool> {
        let mut leader = self.leader.lock().await;
        if let Some(conn) = leader.as_mut() {
            if conn.execute("SELECT 1").await.is_ok() {
                return Ok(true);
            }
            // The connection is gone, and the lock with it; another process may hold it now.
            *leader = None;
        }
        let mut conn = self.options.connect().await?;
        let taken: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext(coalesce(current_schema(), '')))")
                .bind(BACKGROUND_LOCK)
                .fetch_one(&mut conn)
                .await?;
        if taken {
            *leader = Some(conn);
        }
        Ok(taken)
    }

    async fn deployment_id(&self) -> StoreResult<String> {
        Ok(sqlx::query_scalar("SELECT id FROM deployment").fetch_one(&self.pool).await?)
    }
}

/// Refuses a server that does not flush its log (every acknowledged write could be lost) and
/// warns about one that acknowledges commits before flushing them.
async fn check_durability(pool: &PgPool) -> StoreResult<()> {
    let row = sqlx::query("SELECT current_setting('fsync') AS fsync, current_setting('synchronous_commit') AS sync")
        .fetch_one(pool)
        .await?;
    let fsync: String = row.try_get("fsync")?;
    let sync: String = row.try_get("sync")?;
    if fsync == "off" {
        return Err(StoreError::Backend(
            "the PostgreSQL server runs with fsync = off: acknowledged messages would not survive a crash".into(),
        ));
    }
    if sync == "off" {
        tracing::warn!(
            "PostgreSQL synchronous_commit is off: a crash of the database can lose the last acknowledged writes"
        );
    }
    Ok(())
}

/// Runs pending migrations while holding an advisory lock on the schema; a process that finds
/// the lock taken waits, then finds the migrations applied.
async fn migrate(pool: &PgPool) -> StoreResult<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1, hashtext(coalesce(current_schema(), '')))")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    let mut migrator = sqlx::migrate!("./migrations");
    // The lock above replaces sqlx's own, which is one per database whatever the schema.
    migrator.set_locking(false);
    // `run_direct` rather than `run`: the future of `run` cannot be shown to be `Send` (sqlx's
    // `Acquire` bound), and a server's start-up future must be.
    let migrated = migrator.run_direct(None, &mut *conn, false).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1, hashtext(coalesce(current_schema(), '')))")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await;
    migrated.map_err(|err| StoreError::Backend(format!("migrating: {err}")))?;
    unlocked?;
    Ok(())
}
