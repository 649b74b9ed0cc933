//! `ceiling`: what the storage allows for the server's storage work and nothing else. A raw
//! insert loop on the server's own schema (its migrations) with its durability settings: per
//! message the rows a send writes — its entry and its idempotency record — and per batch the
//! touched conversations' heads, committed in batches of 1, 10 and 100 messages over 50
//! conversations. The server's throughput divided by this is how much of the storage's capacity
//! it turns into delivered messages.
//!
//! On SQLite (the default) the loop runs on a scratch file with the server's settings (WAL,
//! `synchronous = FULL`). With `--database-url` it runs on PostgreSQL, in a scratch schema of
//! that database, one statement per batch as the server's group commit writes them, each
//! transaction committed with the server's (default) `synchronous_commit = on`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rusqlite::{Connection, params};
use serde_json::{Value, json};

use crate::server::remove_data_dir;

/// The server's migrations, in order (a test checks none is missing).
const MIGRATIONS: [(&str, &str); 5] = [
    ("0001_accounts_and_keys.sql", include_str!("../../roost-store-sqlite/migrations/0001_accounts_and_keys.sql")),
    ("0002_conversations.sql", include_str!("../../roost-store-sqlite/migrations/0002_conversations.sql")),
    (
        "0003_message_ids_by_client_id.sql",
        include_str!("../../roost-store-sqlite/migrations/0003_message_ids_by_client_id.sql"),
    ),
    ("0004_attachments.sql", include_str!("../../roost-store-sqlite/migrations/0004_attachments.sql")),
    ("0005_push.sql", include_str!("../../roost-store-sqlite/migrations/0005_push.sql")),
];

/// Messages per commit measured.
const BATCHES: [usize; 3] = [1, 10, 100];

/// Conversations the messages go round (as in the throughput mode's 50 pairs).
const CONVERSATIONS: usize = 50;

/// Arguments of the ceiling mode.
#[derive(clap::Args)]
pub struct Args {
    /// Directory for the scratch database (wiped before and after).
    #[arg(long, default_value = "/tmp/roost-ceiling")]
    pub dir: PathBuf,
    /// Seconds of inserts for each batch size.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Ciphertext size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Measure PostgreSQL at this URL instead of SQLite (in a scratch schema `roost_ceiling`,
    /// dropped afterwards).
    #[arg(long)]
    pub database_url: Option<String>,
}

/// What the ceiling mode measured: messages per second for each batch size.
pub struct Report {
    /// `SQLite` or `PostgreSQL`.
    pub store: &'static str,
    /// `(messages per commit, messages per second)`.
    pub rates: Vec<(usize, f64)>,
}

impl Report {
    /// Messages per second at the largest batch measured.
    pub fn best(&self) -> f64 {
        self.rates.last().map_or(0.0, |(_, rate)| *rate)
    }
}

impl crate::Summary for Report {
    fn summary(&self) -> String {
        let rates: Vec<String> = self
            .rates
            .iter()
            .map(|(batch, rate)| format!("{batch} per commit: {rate:.0} msg/s ({:.0} commits/s)", rate / *batch as f64))
            .collect();
        format!("ceiling: raw {} inserts of the server's rows on this disk; {}", self.store, rates.join("; "))
    }

    fn json(&self) -> Value {
        let rates: Vec<Value> =
            self.rates.iter().map(|(batch, rate)| json!({"batch": batch, "msgs_per_s": rate.round()})).collect();
        json!({"mode": "ceiling", "store": self.store, "rates": rates})
    }
}

/// Runs the mode and prints a summary and a JSON line.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    crate::print(&report);
    Ok(())
}

/// Measures every batch size on a fresh database.
pub async fn measure(args: &Args) -> anyhow::Result<Report> {
    if let Some(url) = &args.database_url {
        let rates = postgres_loop(url, Duration::from_secs(args.seconds), args.size).await?;
        return Ok(Report { store: "PostgreSQL", rates });
    }
    let (dir, seconds, size) = (args.dir.clone(), args.seconds, args.size);
    tokio::task::spawn_blocking(move || {
        remove_data_dir(&dir)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let rates = insert_loop(&dir.join("ceiling.db"), Duration::from_secs(seconds), size);
        remove_data_dir(&dir)?;
        Ok(Report { store: "SQLite", rates: rates? })
    })
    .await?
}

fn insert_loop(path: &Path, period: Duration, size: usize) -> anyhow::Result<Vec<(usize, f64)>> {
    let mut db = Connection::open(path)?;
    // The server's writer: WAL, every commit fsynced, an 8 MiB page cache.
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "FULL")?;
    db.pragma_update(None, "foreign_keys", "ON")?;
    db.pragma_update(None, "cache_size", "-8192")?;
    for (name, sql) in MIGRATIONS {
        db.execute_batch(sql).with_context(|| format!("migration {name}"))?;
    }
    let conversations: Vec<[u8; 16]> = (0..CONVERSATIONS).map(|_| rand::random()).collect();
    for id in &conversations {
        db.execute(
            "INSERT INTO conversations (id, kind, epoch, group_info, last_seq, retention, retention_ttl_ms, created_at) \
             VALUES (?1, 'direct', 1, x'00', 0, 'ttl', 3600000, 0)",
            params![id.as_slice()],
        )?;
    }
    let (sender_user, sender_device): ([u8; 32], [u8; 32]) = (rand::random(), rand::random());
    let payload = vec![0x5a_u8; size];
    let mut heads = vec![0_i64; CONVERSATIONS];
    let mut next = 0_usize;
    let mut rates = Vec::new();
    for batch in BATCHES {
        let started = Instant::now();
        let mut messages = 0_usize;
        while started.elapsed() < period {
            let transaction = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut touched = Vec::with_capacity(batch);
            {
                let mut entry = transaction.prepare_cached(
                    "INSERT INTO entries (conversation_id, seq, kind, sender_user, sender_device, epoch, payload, created_at) \
                     VALUES (?1, ?2, 'message', ?3, ?4, 1, ?5, ?6)",
                )?;
                let mut id = transaction.prepare_cached(
                    "INSERT INTO message_ids (conversation_id, sender_device, client_message_id, seq, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for _ in 0..batch {
                    let conversation = next % CONVERSATIONS;
                    heads[conversation] += 1;
                    let (cid, seq, now) = (conversations[conversation].as_slice(), heads[conversation], next as i64);
                    entry.execute(params![cid, seq, sender_user.as_slice(), sender_device.as_slice(), payload, now])?;
                    id.execute(params![cid, sender_device.as_slice(), format!("c{next}"), seq, now])?;
                    touched.push(conversation);
                    next += 1;
                }
            }
            touched.sort_unstable();
            touched.dedup();
            {
                let mut head = transaction.prepare_cached("UPDATE conversations SET last_seq = ?2 WHERE id = ?1")?;
                for conversation in touched {
                    head.execute(params![conversations[conversation].as_slice(), heads[conversation]])?;
                }
            }
            transaction.commit()?;
            messages += batch;
        }
        rates.push((batch, messages as f64 / started.elapsed().as_secs_f64()));
    }
    Ok(rates)
}

/// The PostgreSQL schema, as the server's migration creates it.
const POSTGRES_SCHEMA: &str = include_str!("../../roost-store-postgres/migrations/0001_schema.sql");

async fn postgres_loop(url: &str, period: Duration, size: usize) -> anyhow::Result<Vec<(usize, f64)>> {
    use sqlx::Connection as _;

    let mut db = sqlx::PgConnection::connect(url).await.context("connecting to PostgreSQL")?;
    sqlx::raw_sql(
        "DROP SCHEMA IF EXISTS roost_ceiling CASCADE; CREATE SCHEMA roost_ceiling; SET search_path = roost_ceiling",
    )
    .execute(&mut db)
    .await?;
    sqlx::raw_sql(POSTGRES_SCHEMA).execute(&mut db).await.context("the server's schema")?;
    let conversations: Vec<Vec<u8>> = (0..CONVERSATIONS).map(|_| rand::random::<[u8; 16]>().to_vec()).collect();
    sqlx::query(
        "INSERT INTO conversations (id, kind, epoch, group_info, last_seq, retention, retention_ttl_ms, created_at) \
         SELECT id, 'direct', 1, '\\x00', 0, 'ttl', 3600000, 0 FROM unnest($1::bytea[]) AS t(id)",
    )
    .bind(&conversations)
    .execute(&mut db)
    .await?;
    let (sender_user, sender_device) = (rand::random::<[u8; 32]>().to_vec(), rand::random::<[u8; 32]>().to_vec());
    let payload = vec![0x5a_u8; size];
    let mut heads = vec![0_i64; CONVERSATIONS];
    let mut next = 0_usize;
    let mut rates = Vec::new();
    for batch in BATCHES {
        let started = Instant::now();
        let mut messages = 0_usize;
        while started.elapsed() < period {
            let (mut ids, mut seqs, mut client_ids, mut times) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..batch {
                let conversation = next % CONVERSATIONS;
                heads[conversation] += 1;
                ids.push(conversations[conversation].clone());
                seqs.push(heads[conversation]);
                client_ids.push(format!("c{next}"));
                times.push(next as i64);
                next += 1;
            }
            let moved: Vec<(Vec<u8>, i64)> = (0..CONVERSATIONS.min(batch))
                .map(|k| {
                    let conversation = (next - 1 - k) % CONVERSATIONS;
                    (conversations[conversation].clone(), heads[conversation])
                })
                .collect();
            let mut transaction = db.begin().await?;
            sqlx::query(
                "WITH e AS ( \
                    INSERT INTO entries (conversation_id, seq, kind, sender_user, sender_device, epoch, payload, created_at) \
                    SELECT c, s, 'message', $3, $4, 1, $5, t FROM unnest($1::bytea[], $2::int8[], $7::int8[]) AS x(c, s, t) \
                 ), m AS ( \
                    INSERT INTO message_ids (client_message_id, sender_device, conversation_id, seq, created_at) \
                    SELECT i, $4, c, s, t FROM unnest($6::text[], $1::bytea[], $2::int8[], $7::int8[]) AS x(i, c, s, t) \
                 ) UPDATE conversations c SET last_seq = h.s FROM unnest($8::bytea[], $9::int8[]) AS h(id, s) \
                 WHERE c.id = h.id",
            )
            .bind(&ids)
            .bind(&seqs)
            .bind(&sender_user)
            .bind(&sender_device)
            .bind(&payload)
            .bind(&client_ids)
            .bind(&times)
            .bind(moved.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>())
            .bind(moved.iter().map(|(_, seq)| *seq).collect::<Vec<_>>())
            .execute(&mut *transaction)
            .await?;
            transaction.commit().await?;
            messages += batch;
        }
        rates.push((batch, messages as f64 / started.elapsed().as_secs_f64()));
    }
    sqlx::raw_sql("DROP SCHEMA roost_ceiling CASCADE").execute(&mut db).await?;
    Ok(rates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_runs_every_migration_of_the_server() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../roost-store-sqlite/migrations");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        on_disk.sort();
        let included: Vec<&str> = MIGRATIONS.iter().map(|(name, _)| *name).collect();
        assert_eq!(on_disk, included);
    }

    #[test]
    fn a_short_ceiling_run_commits_every_batch_size() {
        let dir = std::env::temp_dir().join(format!("roost-ceiling-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rates = insert_loop(&dir.join("c.db"), Duration::from_millis(50), 64).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(rates.iter().map(|(batch, _)| *batch).collect::<Vec<_>>(), BATCHES);
        assert!(rates.iter().all(|(_, rate)| *rate > 0.0));
    }
}
