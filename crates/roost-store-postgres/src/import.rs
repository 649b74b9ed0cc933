//! Copying a SQLite store into PostgreSQL, for an operator who outgrows one machine
//! (`roostd migrate-store`).
//!
//! The source is a database of the SQLite backend at its current schema (the command opens it
//! with that backend first, which brings an older one up to date). Everything is copied in one
//! PostgreSQL transaction, in pages, with the rows' own ids (so KeyPackages are still claimed
//! oldest first and queue ids keep their order); the target's id counters then continue after
//! the highest id the source ever handed out. Before the commit every table's row count is
//! compared with the source's; a difference, like any error, leaves the target as it was.

use std::str::FromStr;

use futures::TryStreamExt;
use roost_store::{StoreError, StoreResult};
use sqlx::postgres::PgArguments;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{Arguments, AssertSqlSafe, ConnectOptions, PgConnection, Row};

use crate::PostgresStore;

/// The schema version (the last migration) of the SQLite backend this copier reads.
const SQLITE_SCHEMA_VERSION: i64 = 5;
/// Rows copied per statement.
const PAGE: usize = 500;

/// How a column's values travel.
#[derive(Clone, Copy)]
enum Kind {
    Bytes,
    Int,
    Text,
    Bool,
}

struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    /// The table's ids come from an identity column that must continue after the copied ones.
    identity: bool,
}

impl Table {
    /// The source's insertion order, so rows that tie on their sort columns (devices created in
    /// one millisecond) keep their order in the target; the tables without a rowid have no
    /// order of their own (they are only ever looked up by key).
    fn order(&self) -> &'static str {
        match self.name {
            "message_ids" => "client_message_id, sender_device, conversation_id",
            "attachment_fetches" => "attachment_id, device_id",
            "attachment_usage" => "user_id, day",
            "push_subscriptions" => "device_id",
            "server_keys" => "name",
            _ => "rowid",
        }
    }
}

use Kind::{Bool, Bytes, Int, Text};

/// Every table, parents before children (foreign keys hold at each insert).
const TABLES: &[Table] = &[
    Table { name: "users", columns: &[("id", Bytes), ("created_at", Int), ("read_receipts", Bool)], identity: false },
    Table {
        name: "devices",
        columns: &[
            ("id", Bytes),
            ("user_id", Bytes),
            ("certificate", Bytes),
            ("name", Text),
            ("created_at", Int),
            ("revoked_at", Int),
        ],
        identity: false,
    },
    Table { name: "handles", columns: &[("handle", Text), ("user_id", Bytes), ("claimed_at", Int)], identity: false },
    Table {
        name: "invites",
        columns: &[("code_hash", Bytes), ("created_at", Int), ("used_by", Bytes)],
        identity: false,
    },
    Table {
        name: "challenges",
        columns: &[("challenge", Bytes), ("device_id", Bytes), ("expires_at", Int), ("used_at", Int)],
        identity: false,
    },
    Table {
        name: "sessions",
        columns: &[
            ("token_hash", Bytes),
            ("device_id", Bytes),
            ("user_id", Bytes),
            ("created_at", Int),
            ("expires_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "link_requests",
        columns: &[
            ("code", Text),
            ("device_id", Bytes),
            ("created_at", Int),
            ("expires_at", Int),
            ("user_id", Bytes),
            ("certificate", Bytes),
        ],
        identity: false,
    },
    Table {
        name: "key_packages",
        columns: &[("id", Int), ("device_id", Bytes), ("last_resort", Bool), ("data", Bytes), ("created_at", Int)],
        identity: true,
    },
    Table {
        name: "conversations",
        columns: &[
            ("id", Bytes),
            ("kind", Text),
            ("epoch", Int),
            ("group_info", Bytes),
            ("last_seq", Int),
            ("retention", Text),
            ("retention_ttl_ms", Int),
            ("created_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "conversation_users",
        columns: &[("conversation_id", Bytes), ("user_id", Bytes), ("read_seq", Int), ("joined_at", Int)],
        identity: false,
    },
    Table {
        name: "conversation_devices",
        columns: &[
            ("conversation_id", Bytes),
            ("device_id", Bytes),
            ("user_id", Bytes),
            ("joined_seq", Int),
            ("acked_seq", Int),
            ("removed_seq", Int),
        ],
        identity: false,
    },
    Table {
        name: "entries",
        columns: &[
            ("conversation_id", Bytes),
            ("seq", Int),
            ("kind", Text),
            ("sender_user", Bytes),
            ("sender_device", Bytes),
            ("epoch", Int),
            ("payload", Bytes),
            ("created_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "message_ids",
        columns: &[
            ("client_message_id", Text),
            ("sender_device", Bytes),
            ("conversation_id", Bytes),
            ("seq", Int),
            ("created_at", Int),
        ],
        identity: false,
    },
    Table { name: "queue_blobs", columns: &[("id", Int), ("payload", Bytes), ("created_at", Int)], identity: true },
    Table {
        name: "device_queue",
        columns: &[
            ("device_id", Bytes),
            ("id", Int),
            ("kind", Text),
            ("conversation_id", Bytes),
            ("seq", Int),
            ("sender_device", Bytes),
            ("payload", Bytes),
            ("blob_id", Int),
            ("created_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "attachments",
        columns: &[
            ("id", Bytes),
            ("conversation_id", Bytes),
            ("uploader_user", Bytes),
            ("uploader_device", Bytes),
            ("length", Int),
            ("sha256", Bytes),
            ("chunk_bytes", Int),
            ("received", Int),
            ("hash_state", Bytes),
            ("completed_at", Int),
            ("completed_seq", Int),
            ("created_at", Int),
        ],
        identity: false,
    },
    Table { name: "attachment_fetches", columns: &[("attachment_id", Bytes), ("device_id", Bytes)], identity: false },
    Table { name: "attachment_usage", columns: &[("user_id", Bytes), ("day", Int), ("bytes", Int)], identity: false },
    Table {
        name: "push_subscriptions",
        columns: &[
            ("device_id", Bytes),
            ("user_id", Bytes),
            ("endpoint", Text),
            ("p256dh", Bytes),
            ("auth", Bytes),
            ("created_at", Int),
        ],
        identity: false,
    },
    // The VAPID key: browsers' subscriptions are bound to it, so it moves with them.
    Table { name: "server_keys", columns: &[("name", Text), ("secret", Bytes)], identity: false },
];

/// What was copied: each table with its row count (the same in source and target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Table name and rows copied, in copy order.
    pub tables: Vec<(&'static str, u64)>,
}

impl PostgresStore {
    /// Copies the SQLite database at `sqlite_url` (read only) into this store, which must be
    /// empty, and verifies every table's row count. Errors leave this store unchanged.
    ///
    /// Errors: [`StoreError::Backend`] naming what failed; a non-empty target, a source at
    /// another schema version and a count that differs are refused before anything commits.
    pub async fn import_sqlite(&self, sqlite_url: &str) -> StoreResult<ImportReport> {
        let mut source = SqliteConnectOptions::from_str(sqlite_url)?.read_only(true).connect().await?;
        let version: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut source)
            .await?;
        if version != Some(SQLITE_SCHEMA_VERSION) {
            return Err(refused(format!(
                "the SQLite database is at schema version {version:?}; this roostd copies version {SQLITE_SCHEMA_VERSION}"
            )));
        }
        let mut tx = self.pool.begin().await?;
        for table in TABLES {
            let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", table.name);
            if sqlx::query_scalar::<_, bool>(AssertSqlSafe(sql)).fetch_one(&mut *tx).await? {
                return Err(refused(format!(
                    "the PostgreSQL database is not empty ({} has rows); copy into a new database",
                    table.name
                )));
            }
        }
        let mut report = ImportReport { tables: Vec::with_capacity(TABLES.len()) };
        for table in TABLES {
            let copied = copy_table(&mut source, &mut tx, table).await?;
            let sql = format!("SELECT count(*) FROM {}", table.name);
            let source_rows: i64 = sqlx::query_scalar(AssertSqlSafe(sql.clone())).fetch_one(&mut source).await?;
            let target_rows: i64 = sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(&mut *tx).await?;
            if source_rows != target_rows || u64::try_from(target_rows).ok() != Some(copied) {
                return Err(refused(format!(
                    "{}: {source_rows} rows in SQLite but {target_rows} in PostgreSQL after copying {copied}",
                    table.name
                )));
            }
            if table.identity {
                continue_identity(&mut source, &mut tx, table.name).await?;
            }
            report.tables.push((table.name, copied));
        }
        // Queue ids continue, for every device, after the highest the source handed out.
        let last_queue_id = last_id(&mut source, "device_queue").await?;
        sqlx::query("INSERT INTO queue_heads (device_id, last_id) SELECT id, $1 FROM devices")
            .bind(last_queue_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(report)
    }
}

fn refused(message: String) -> StoreError {
    StoreError::Backend(message)
}

/// Copies one table in pages; returns how many rows.
async fn copy_table(source: &mut SqliteConnection, target: &mut PgConnection, table: &Table) -> StoreResult<u64> {
    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let select = format!("SELECT {} FROM {} ORDER BY {}", names.join(", "), table.name, table.order());
    let arrays: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, kind))| {
            let ty = match kind {
                Bytes => "bytea",
                Int => "int8",
                Text => "text",
                Bool => "bool",
            };
            format!("${}::{ty}[]", i + 1)
        })
        .collect();
    let overriding = if table.identity { " OVERRIDING SYSTEM VALUE" } else { "" };
    let insert = format!(
        "INSERT INTO {} ({}){overriding} SELECT * FROM unnest({})",
        table.name,
        names.join(", "),
        arrays.join(", ")
    );
    let mut rows = sqlx::query(AssertSqlSafe(select)).fetch(source);
    let mut page: Vec<SqliteRow> = Vec::with_capacity(PAGE);
    let mut copied = 0;
    while let Some(row) = rows.try_next().await? {
        page.push(row);
        if page.len() == PAGE {
            copied += insert_page(target, &insert, table, &page).await?;
            page.clear();
        }
    }
    if !page.is_empty() {
        copied += insert_page(target, &insert, table, &page).await?;
    }
    Ok(copied)
}

async fn insert_page(target: &mut PgConnection, insert: &str, table: &Table, rows: &[SqliteRow]) -> StoreResult<u64> {
    let mut args = PgArguments::default();
    for (i, (_, kind)) in table.columns.iter().enumerate() {
        let added = match kind {
            Bytes => args.add(column::<Vec<u8>>(rows, i)?),
            Int => args.add(column::<i64>(rows, i)?),
            Text => args.add(column::<String>(rows, i)?),
            Bool => args.add(column::<bool>(rows, i)?),
        };
        added.map_err(|err| StoreError::Backend(format!("{}: {err}", table.name)))?;
    }
    let done = sqlx::query_with(AssertSqlSafe(insert.to_owned()), args).execute(target).await?;
    Ok(done.rows_affected())
}

/// Column `i` of every row, NULLs kept.
fn column<T>(rows: &[SqliteRow], i: usize) -> StoreResult<Vec<Option<T>>>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    Ok(rows.iter().map(|row| row.try_get::<Option<T>, _>(i)).collect::<Result<_, _>>()?)
}

/// The highest id SQLite ever handed out in a table with an AUTOINCREMENT key (rows may have
/// been deleted since, so it can exceed the largest id left).
async fn last_id(source: &mut SqliteConnection, table: &str) -> StoreResult<i64> {
    let counter: Option<i64> = sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = $1")
        .bind(table)
        .fetch_optional(&mut *source)
        .await?;
    let sql = format!("SELECT coalesce(max(id), 0) FROM {table}");
    let largest: i64 = sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(&mut *source).await?;
    Ok(counter.unwrap_or(0).max(largest))
}

/// Moves a table's identity counter past every id the source handed out.
async fn continue_identity(source: &mut SqliteConnection, target: &mut PgConnection, table: &str) -> StoreResult<()> {
    let last = last_id(source, table).await?;
    if last > 0 {
        sqlx::query("SELECT setval(pg_get_serial_sequence($1, 'id'), $2)")
            .bind(table)
            .bind(last)
            .execute(target)
            .await?;
    }
    Ok(())
}
