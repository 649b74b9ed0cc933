//! The embedded SQLite backend of the Roost store.
//!
//! Durability: the database runs in WAL mode with `synchronous = FULL`, so every committed
//! transaction has its WAL frames fsynced before the commit returns. A write the server has
//! acknowledged therefore survives both `kill -9` and power loss. (`NORMAL` would survive a
//! process crash but could lose the last transactions on power loss.)
//!
//! Messages are group-committed: concurrent sends share one transaction and one fsync, and each
//! is acknowledged only after that commit (see `group_commit`).
//!
//! Concurrency: all writes go through one connection (SQLite allows one writer at a time anyway),
//! so read-check-write transactions cannot interleave and never meet `SQLITE_BUSY`; reads use a
//! separate pool and see the last committed state thanks to WAL. A background connection copies
//! the log back into the database whenever it has grown (see `checkpoint`), so the checkpoint
//! the writer still runs every 1,000 log pages has little left to do inside a commit.
#![deny(missing_docs)]

mod accounts;
mod attachments;
mod checkpoint;
mod codec;
mod conversations;
mod group_commit;
mod push;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use roost_store::{Store, StoreError, StoreResult, timed};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    appender: roost_store::batch::Appender,
    /// Held by every clone; background tasks stop once it is gone.
    _alive: Arc<()>,
}

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 512;
/// The writer's page cache, in SQLite's notation (negative: KiB). The group commit touches the
/// right edge of every index it inserts into; keeping those pages in memory saves a read per page.
/// 8 MiB rather than more: SQLite walks its page cache's hash table at the end of every write
/// transaction (`pcache1TruncateUnsafe`), and a larger cache spreads the hot pages over more
/// memory, so at saturation a larger cache gave fewer messages per second, not more (the runs
/// are in docs/benchmark-log.md). A page that no longer fits is read back from the operating
/// system's cache.
const WRITER_CACHE_SIZE: &str = "-8192";
/// Page cache of each reader connection, in KiB (as `PRAGMA cache_size` takes it: negative).
/// Small on purpose: in WAL mode a reader drops its whole cache whenever the database changed
/// since its last read, which under write load is almost every time, so a large cache buys
/// little and only fills with pages no later read can use (eight readers at SQLite's default of
/// 2 MiB were most of the memory an idle burst of WebSocket authentications left behind).
const READER_CACHE_SIZE: &str = "-512";

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, creating its directory, and runs
    /// pending migrations.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|err| StoreError::Backend(format!("creating {}: {err}", dir.display())))?;
        }
        Self::connect(SqliteConnectOptions::new().filename(path)).await
    }

    /// Opens a database from a `sqlite:` URL, such as `sqlite://roost-data/roost.db`.
    pub async fn open_url(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?;
        let path = options.get_filename().to_path_buf();
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|err| StoreError::Backend(format!("creating {}: {err}", dir.display())))?;
        }
        Self::connect(options).await
    }

    /// Opens an existing database from a `sqlite:` URL (running pending migrations); a missing
    /// file is an error rather than a new, empty database.
    pub async fn open_existing_url(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?;
        if !options.get_filename().is_file() {
            return Err(StoreError::Backend(format!("{} does not exist", options.get_filename().display())));
        }
        Self::connect(options).await
    }

    async fn connect(options: SqliteConnectOptions) -> StoreResult<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // Room for every statement shape the store uses (the group commit alone has a few
            // dozen), so none is compiled again under load.
            .statement_cache_capacity(STATEMENT_CACHE);
        // A local file needs no liveness check before each use (it would cost a round trip to
        // the connection's thread every time).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone().pragma("cache_size", WRITER_CACHE_SIZE))
            .await?;
        // `run_direct` rather than `run`: the future of `run` cannot be shown to be `Send`
        // (sqlx's `Acquire` bound), and a server's start-up future must be.
        let mut conn = writer.acquire().await?;
        sqlx::migrate!("./migrations")
            .run_direct(None, &mut *conn, false)
            .await
            .map_err(|err| StoreError::Backend(format!("migrating: {err}")))?;
        drop(conn);
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(options.clone().read_only(true).pragma("cache_size", READER_CACHE_SIZE))
            .await?;
        let appender = group_commit::start(writer.clone())?;
        let alive = Arc::new(());
        checkpoint::start(&options, Arc::downgrade(&alive)).await?;
        Ok(Self { writer, reader, appender, _alive: alive })
    }

    /// Closes both pools, checkpointing the WAL.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        timed("ping", async {
            sqlx::query("SELECT 1").execute(&self.reader).await?;
            Ok(())
        })
        .await
    }

    /// One process uses the file (SQLite's locks are not meant for several servers), so it
    /// always leads.
    async fn lead_background_work(&self) -> StoreResult<bool> {
        Ok(true)
    }

    /// Shared with no other process, for the same reason.
    async fn deployment_id(&self) -> StoreResult<String> {
        Ok("local".to_owned())
    }
}
