//! A `roostd` the bench starts itself: for modes that kill the server or need a fresh one for
//! each measurement.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// A running `roostd` child process, killed (SIGKILL) when dropped.
pub struct Roostd {
    child: Child,
    base: String,
}

/// What to start.
#[derive(Clone)]
pub struct Launch {
    /// The `roostd` binary.
    pub binary: PathBuf,
    /// Its data directory (kept as is: callers wipe it when they want a fresh server).
    pub data_dir: PathBuf,
    /// Loopback port to listen on.
    pub port: u16,
    /// A PostgreSQL database to run on instead of SQLite in the data directory. Its current
    /// schema is emptied whenever a fresh server is asked for.
    pub database_url: Option<String>,
}

impl Roostd {
    /// Starts the server with the per-address and per-device rate limits raised (the bench
    /// registers every device from one address and sends far faster than a person) and waits
    /// until `/readyz` answers.
    pub async fn start(launch: &Launch) -> anyhow::Result<Self> {
        let base = format!("http://127.0.0.1:{}", launch.port);
        let mut command = Command::new(&launch.binary);
        command.args(["--listen", &format!("127.0.0.1:{}", launch.port), "--data-dir"]).arg(&launch.data_dir);
        if let Some(url) = &launch.database_url {
            command.args(["--database-url", url]);
        }
        let child = command
            .env("ROOST_RATE_LIMITS__REGISTRATIONS_PER_ADDRESS", "10000000")
            .env("ROOST_RATE_LIMITS__CHALLENGES_PER_ADDRESS", "10000000")
            .env("ROOST_RATE_LIMITS__LINKS_PER_ADDRESS", "10000000")
            .env("ROOST_RATE_LIMITS__SENDS_PER_DEVICE", "100000000")
            .env("ROOST_LOG", "error")
            .spawn()
            .with_context(|| format!("starting {}", launch.binary.display()))?;
        let server = Self { child, base };
        let http = reqwest::Client::new();
        for _ in 0..400 {
            let ready = http.get(format!("{}/readyz", server.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("{} did not become ready on {}", launch.binary.display(), server.base)
    }

    /// Starts the server on an emptied data directory (and an emptied PostgreSQL schema).
    pub async fn start_fresh(launch: &Launch) -> anyhow::Result<Self> {
        remove_data_dir(&launch.data_dir)?;
        if let Some(url) = &launch.database_url {
            empty_schema(url).await?;
        }
        Self::start(launch).await
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no flush. Waits for the process to be gone.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Roostd {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Removes a data directory if it exists.
pub fn remove_data_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Drops everything in the current schema of the PostgreSQL database at `url` (the one a server
/// on that URL would create its tables in) and creates the schema again, empty.
pub async fn empty_schema(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;

    let mut conn = sqlx::PgConnection::connect(url).await.with_context(|| "connecting to PostgreSQL")?;
    let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()").fetch_one(&mut conn).await?;
    let schema = schema.context("the database URL names no existing schema")?;
    let sql = format!("DROP SCHEMA \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\"");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.with_context(|| format!("emptying {schema}"))?;
    Ok(())
}
