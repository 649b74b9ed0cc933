//! A fresh database for one test: a SQLite file in a temporary directory, or a PostgreSQL schema
//! of its own on the server `ROOST_TEST_DATABASE_URL` names.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection, PgConnection, Row, SqliteConnection};

/// The environment variable naming the PostgreSQL server tests may use.
pub const DATABASE_URL_VAR: &str = "ROOST_TEST_DATABASE_URL";

/// A storage backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file (always available).
    Sqlite,
    /// PostgreSQL, when `ROOST_TEST_DATABASE_URL` is set.
    Postgres,
}

/// A database no other test uses, removed when dropped: a temporary directory (the server's
/// data directory, holding the SQLite file) and, on PostgreSQL, a schema of its own.
pub struct TestDatabase {
    backend: Backend,
    dir: tempfile::TempDir,
    postgres: Option<Schema>,
}

struct Schema {
    /// The server's URL as the test environment gave it.
    admin_url: String,
    /// The schema's name.
    name: String,
}

impl TestDatabase {
    /// A fresh database on `backend`, or `None` (after printing why) when the backend is not
    /// available on this machine.
    pub async fn create(backend: Backend) -> Option<Self> {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temporary directory");
        let postgres = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(Schema::create(&postgres_url()?).await),
        };
        Some(Self { backend, dir, postgres })
    }

    /// The backend it is on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The data directory for a server on this database (the SQLite file lives here).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The URL a store or server opens: a `postgres://` URL whose connections use the test's
    /// schema, or the `sqlite://` URL of the file in the data directory.
    pub fn url(&self) -> String {
        match &self.postgres {
            Some(schema) => schema.url(),
            None => format!("sqlite://{}", self.sqlite_path().display()),
        }
    }

    /// The schema's name on PostgreSQL.
    pub fn schema(&self) -> Option<&str> {
        self.postgres.as_ref().map(|schema| schema.name.as_str())
    }

    /// The SQLite file a server on this database uses by default.
    pub fn sqlite_path(&self) -> PathBuf {
        self.dir.path().join("roost.db")
    }

    /// On PostgreSQL: a proxy in front of the database server, and the URL that reaches this
    /// database through it (cut the proxy to take the database away).
    pub async fn behind_proxy(&self) -> Option<(crate::proxy::Proxy, String)> {
        let schema = self.postgres.as_ref()?;
        let (_, target) = crate::proxy::redirect(&schema.url(), "127.0.0.1:1".parse().ok()?);
        let proxy = crate::proxy::Proxy::start(target).await;
        let (url, _) = crate::proxy::redirect(&schema.url(), proxy.address());
        Some((proxy, url))
    }

    /// On PostgreSQL: terminates every server connection to this database (as an operator's
    /// `pg_terminate_backend` or a database failover would); returns how many.
    pub async fn terminate_connections(&self) -> u64 {
        let Some(schema) = &self.postgres else { return 0 };
        let mut conn = schema.connect_admin().await;
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&schema.name)
        .fetch_all(&mut conn)
        .await
        .expect("terminate the schema's connections");
        ended.into_iter().filter(|ended| *ended).count() as u64
    }

    /// A connection of the test's own to this database.
    pub async fn connect(&self) -> RawConnection {
        match &self.postgres {
            Some(schema) => {
                RawConnection::Postgres(PgConnection::connect(&schema.url()).await.expect("connect to the schema"))
            }
            None => {
                RawConnection::Sqlite(SqliteConnection::connect(&self.url()).await.expect("open the database file"))
            }
        }
    }

    /// Whether `needle` occurs anywhere the server keeps data: in any file under the data
    /// directory and, on PostgreSQL, in any row of the schema (text columns as they are, byte
    /// columns in their hexadecimal form).
    pub async fn contains(&self, needle: &str) -> bool {
        if files_contain(self.dir.path(), needle) {
            return true;
        }
        let Some(schema) = &self.postgres else { return false };
        let mut conn = schema.connect_admin().await;
        let tables: Vec<String> =
            sqlx::query("SELECT table_name::text AS name FROM information_schema.tables WHERE table_schema = $1")
                .bind(&schema.name)
                .fetch_all(&mut conn)
                .await
                .expect("list tables")
                .iter()
                .map(|row| row.get("name"))
                .collect();
        let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
        for table in tables {
            let sql = format!(
                "SELECT EXISTS (SELECT 1 FROM \"{schema}\".\"{table}\" t WHERE strpos(t::text, $1) > 0 \
                 OR strpos(t::text, $2) > 0)",
                schema = schema.name
            );
            let found: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(needle)
                .bind(&hex)
                .fetch_one(&mut conn)
                .await
                .expect("search a table");
            if found {
                return true;
            }
        }
        false
    }
}

/// A connection of the test's own to the server's database, for reaching past the server as a
/// compromised or misbehaving operator could.
pub enum RawConnection {
    /// The SQLite file.
    Sqlite(SqliteConnection),
    /// The test's PostgreSQL schema.
    Postgres(PgConnection),
}

impl RawConnection {
    /// Runs a statement with byte-string parameters (`$1`, `$2`... on both backends); returns
    /// the rows it changed.
    pub async fn execute(&mut self, sql: &str, params: &[&[u8]]) -> u64 {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Self::Sqlite(conn) => {
                let query = params.iter().fold(sqlx::query(sql), |query, param| query.bind(param.to_vec()));
                query.execute(conn).await.expect("statement").rows_affected()
            }
            Self::Postgres(conn) => {
                let query = params.iter().fold(sqlx::query(sql), |query, param| query.bind(param.to_vec()));
                query.execute(conn).await.expect("statement").rows_affected()
            }
        }
    }

    /// The first column of the first row of a query with byte-string parameters, as bytes.
    pub async fn fetch_bytes(&mut self, sql: &str, params: &[&[u8]]) -> Option<Vec<u8>> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Self::Sqlite(conn) => {
                let query = params.iter().fold(sqlx::query_scalar(sql), |query, param| query.bind(param.to_vec()));
                query.fetch_optional(conn).await.expect("query")
            }
            Self::Postgres(conn) => {
                let query = params.iter().fold(sqlx::query_scalar(sql), |query, param| query.bind(param.to_vec()));
                query.fetch_optional(conn).await.expect("query")
            }
        }
    }

    /// Holds the write lock on the log until [`RawConnection::release`]: SQLite's database
    /// lock, or on PostgreSQL a lock on the `entries` table that lets reads through and makes
    /// every insert wait. A send waits for its commit meanwhile.
    pub async fn block_writes(&mut self) {
        match self {
            Self::Sqlite(conn) => {
                sqlx::query("BEGIN IMMEDIATE").execute(conn).await.expect("the write lock");
            }
            Self::Postgres(conn) => {
                sqlx::raw_sql("BEGIN; LOCK TABLE entries IN SHARE MODE").execute(conn).await.expect("the table lock");
            }
        }
    }

    /// Gives back what [`RawConnection::block_writes`] took.
    pub async fn release(&mut self) {
        let done = match self {
            Self::Sqlite(conn) => sqlx::query("ROLLBACK").execute(conn).await.map(|_| ()),
            Self::Postgres(conn) => sqlx::query("ROLLBACK").execute(conn).await.map(|_| ()),
        };
        done.expect("the lock given back");
    }
}

/// The environment variable naming the Redis server tests may use.
pub const REDIS_URL_VAR: &str = "ROOST_TEST_REDIS_URL";

/// The Redis server for tests, or `None` after a notice that tests needing Redis are skipped.
pub fn redis_url() -> Option<String> {
    match std::env::var(REDIS_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            static NOTICE: Once = Once::new();
            NOTICE.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "notice: {REDIS_URL_VAR} is not set; tests of instances cooperating over Redis are skipped \
                     (set it to a redis:// URL to run them, as .ci/run does)"
                );
            });
            None
        }
    }
}

/// The PostgreSQL server for tests, or `None` after a notice that PostgreSQL tests are skipped.
pub fn postgres_url() -> Option<String> {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            static NOTICE: Once = Once::new();
            NOTICE.call_once(|| {
                // Written to the process's stderr directly, past the test harness's capture, so
                // a skip is seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "notice: {DATABASE_URL_VAR} is not set; PostgreSQL tests are skipped \
                     (set it to a postgres:// URL to run them, as .ci/run does)"
                );
            });
            None
        }
    }
}

impl Schema {
    async fn create(admin_url: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "roost_test_{}_{}_{:08x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let schema = Self { admin_url: admin_url.to_owned(), name };
        let mut conn = schema.connect_admin().await;
        static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !SWEPT.swap(true, Ordering::Relaxed) {
            drop_abandoned_schemas(&mut conn).await;
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{}\"", schema.name)))
            .execute(&mut conn)
            .await
            .expect("create the test's schema");
        schema
    }

    fn url(&self) -> String {
        let separator = if self.admin_url.contains('?') { '&' } else { '?' };
        format!("{}{separator}options[search_path]={}&application_name={}", self.admin_url, self.name, self.name)
    }

    async fn connect_admin(&self) -> PgConnection {
        PgConnection::connect(&self.admin_url).await.expect("connect to the test PostgreSQL server")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // Drop cannot wait on the test's runtime, so the schema goes on a thread of its own.
        // A server of the test may still hold connections in the middle of a transaction (its
        // runtime is blocked here); they are ended first, which rolls their work back and
        // frees their locks.
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&url).await.ok()?;
                sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
                    .bind(&name)
                    .execute(&mut conn)
                    .await
                    .ok()?;
                let sql = format!("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.ok()
            })
        });
        if dropped.join().ok().flatten().is_none() {
            let _ = writeln!(std::io::stderr(), "warning: could not drop the test schema {}", self.name);
        }
    }
}

/// Drops the schemas of test processes that are gone (a process killed before its tests ended
/// leaves its schemas behind). A schema's name holds the id of the process that made it.
async fn drop_abandoned_schemas(conn: &mut PgConnection) {
    let Ok(names) =
        sqlx::query_scalar::<_, String>("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'roost\\_test\\_%'")
            .fetch_all(&mut *conn)
            .await
    else {
        return;
    };
    for name in names {
        let pid = name.strip_prefix("roost_test_").and_then(|rest| rest.split('_').next());
        let gone = pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists());
        if gone {
            let sql = format!("SET lock_timeout = '1s'; DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await;
        }
    }
}

/// Whether `needle` occurs in any file under `dir`.
pub fn files_contain(dir: &Path, needle: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            files_contain(&path, needle)
        } else {
            std::fs::read(&path).unwrap_or_default().windows(needle.len()).any(|window| window == needle.as_bytes())
        }
    })
}
