//! What only the embedded SQLite store has: a database file whose size must stay bounded.

use reqwest::StatusCode;
use serde_json::json;

use crate::api::conversations::{b64, create, devices};

#[tokio::test]
async fn the_database_file_stays_bounded_under_steady_traffic_with_pruning() {
    let server = server!(|config| config.retention.max_age_secs = 3600);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id =
        create(&server, &alice.token(), "direct", &devices(&bob), Some(json!({"policy": "ttl", "ttl_secs": 60}))).await;
    let db = server.config.data_dir.join("roost.db");
    let file_size = |path: &std::path::Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let payload = "x".repeat(16 * 1024);
    let (mut sizes, mut largest_log) = (Vec::new(), 0);
    for round in 0..8 {
        for i in 0..40 {
            let body = json!({"client_message_id": format!("r{round}-{i}"), "epoch": 1, "ciphertext": b64(&payload)});
            let (status, _) =
                server.post(&format!("/v1/conversations/{id}/messages"), Some(&alice.token()), body).await;
            assert_eq!(status, StatusCode::CREATED);
        }
        server.clock().advance_ms(61_000);
        server.services.conversations.prune().await.unwrap();
        sizes.push(file_size(&db));
        largest_log = largest_log.max(file_size(&db.with_extension("db-wal")));
    }
    // Freed pages are reused: after the first rounds the database file stops growing. (Each
    // round adds 640 KiB of entries; kept, eight rounds would be over 5 MiB.)
    assert!(sizes[7] <= sizes[2] + 2 * 1024 * 1024, "database grows without bound: {sizes:?}");
    // The log starts over after checkpoints. Its file keeps the largest size it reached, which
    // depends on when checkpoints ran, so it is only held to a generous bound.
    assert!(largest_log <= 16 * 1024 * 1024, "the WAL grew to {largest_log} bytes");
}
