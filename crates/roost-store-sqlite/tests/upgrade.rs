//! A database written by an earlier schema opens with the current one and keeps what it held.
#![allow(clippy::expect_used)] // Test code: failing loudly is the point.

use std::borrow::Cow;

use roost_proto::{ConversationId, DeviceId, UserId};
use roost_store::{ConversationStore, MemberRef, MessageWrite};
use roost_store_sqlite::SqliteStore;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

/// Applies the migrations before `version` only, as a server of that time would have.
async fn migrate_before(path: &std::path::Path, version: i64) -> sqlx::SqlitePool {
    let options = SqliteConnectOptions::new().filename(path).create_if_missing(true);
    let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.expect("open database");
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.migrations =
        Cow::Owned(migrator.migrations.iter().filter(|migration| migration.version < version).cloned().collect());
    migrator.run(&pool).await.expect("earlier migrations");
    pool
}

#[tokio::test]
async fn a_send_recorded_before_the_idempotency_key_was_reordered_is_still_found() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("roost.db");
    let (conversation, user, device) = ([7_u8; 16], [1_u8; 32], [2_u8; 32]);
    let pool = migrate_before(&path, 3).await;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (c, u, d) = (hex(&conversation), hex(&user), hex(&device));
    let rows = format!(
        "INSERT INTO users (id, created_at) VALUES (x'{u}', 0); \
         INSERT INTO conversations (id, kind, epoch, group_info, last_seq, retention, retention_ttl_ms, created_at) \
             VALUES (x'{c}', 'direct', 1, x'00', 1, 'keep_until_acked', NULL, 0); \
         INSERT INTO conversation_devices (conversation_id, device_id, user_id, joined_seq, acked_seq) \
             VALUES (x'{c}', x'{d}', x'{u}', 0, 0); \
         INSERT INTO entries (conversation_id, seq, kind, sender_user, sender_device, epoch, payload, created_at) \
             VALUES (x'{c}', 1, 'message', x'{u}', x'{d}', 1, x'01', 1000); \
         INSERT INTO message_ids (conversation_id, sender_device, client_message_id, seq, created_at) \
             VALUES (x'{c}', x'{d}', 'first', 1, 1000);"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(rows)).execute(&pool).await.expect("rows of the earlier schema");
    pool.close().await;

    let store = SqliteStore::open(&path).await.expect("open and migrate");
    let send = |client_message_id: &str| MessageWrite {
        conversation_id: ConversationId::from_bytes(conversation),
        sender: MemberRef { user_id: UserId::from_bytes(user), device_id: DeviceId::from_bytes(device) },
        client_message_id: client_message_id.to_owned(),
        epoch: 1,
        payload: vec![2],
        now: 2000,
    };
    let retry = store.append_message(send("first")).await.expect("retried send");
    assert_eq!((retry.seq, retry.created_at, retry.duplicate), (1, 1000, true));
    let next = store.append_message(send("second")).await.expect("new send");
    assert_eq!((next.seq, next.duplicate), (2, false));
    let again = store.append_message(send("second")).await.expect("retried new send");
    assert_eq!((again.seq, again.created_at, again.duplicate), (2, 2000, true));
}
