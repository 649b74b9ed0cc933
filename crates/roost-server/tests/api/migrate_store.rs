//! `roostd migrate-store`: an operator moves a populated SQLite database to PostgreSQL and their
//! users carry on, sessions and positions included.

use reqwest::{Method, StatusCode};
use roost_proto::signing::HandleAction;
use roost_testkit::{Backend, TestDatabase, config_for};
use serde_json::{Value, json};

use crate::api::accounts::handle_body;
use crate::api::common::{START_MS, TestServer};
use crate::api::conversations::{b64, create, devices, send};

/// Runs `roostd migrate-store`; returns whether it succeeded and what it printed.
fn migrate_store(from: &str, to: &str) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_roostd"))
        .args(["migrate-store", "--from", from, "--to", to])
        .output()
        .expect("run roostd migrate-store");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), printed)
}

/// What a user sees of the server: their session, sync, conversations, history and handles.
async fn view(server: &TestServer, token: &str, conversation: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    for path in [
        "/v1/auth/session".to_owned(),
        "/v1/sync".to_owned(),
        "/v1/conversations".to_owned(),
        format!("/v1/conversations/{conversation}/history"),
        "/v1/handles/alice".to_owned(),
        "/v1/keys/packages".to_owned(),
    ] {
        let (status, body) = server.get(&path, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        seen.push(body);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_moves_to_postgres_and_its_users_carry_on() {
    let Some(target) = TestDatabase::create(Backend::Postgres).await else { return };
    let source = TestDatabase::create(Backend::Sqlite).await.expect("SQLite is always available");
    let (source_url, target_url) = (source.url(), target.url());

    // A server on SQLite with accounts, linked devices, a handle, KeyPackages, a direct chat
    // partly acknowledged, a group whose Welcome waits in a queue, and revoked state.
    let config = config_for(&source);
    let sqlite = TestServer::start_on(source, config).await;
    let mut alice = sqlite.user("alice").await;
    sqlite.link_device(&mut alice).await;
    let bob = sqlite.user("bob").await;
    let carol = sqlite.user("carol").await;
    let (status, body) = sqlite
        .post(
            "/v1/handles/alice/claim",
            Some(&alice.token()),
            handle_body(&alice, HandleAction::Claim, "alice", START_MS),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let packages: Vec<String> = (0..5).map(|i| b64(&format!("package-{i}"))).collect();
    let upload = json!({"one_time": packages, "last_resort": b64("last resort")});
    assert_eq!(sqlite.post("/v1/keys/packages", Some(&bob.token()), upload).await.0, StatusCode::OK);
    let (_, claimed) = sqlite.post("/v1/keys/claim", Some(&alice.token()), json!({"user_ids": [bob.id()]})).await;
    let direct = create(&sqlite, &alice.token(), "direct", &devices(&bob), None).await;
    for i in 0..5 {
        assert_eq!(send(&sqlite, &alice.token(), &direct, &format!("m{i}"), 1).await.0, StatusCode::CREATED);
    }
    let ack = json!({"conversations": [{"conversation_id": direct, "seq": 2}]});
    assert_eq!(sqlite.post("/v1/ack", Some(&bob.token()), ack).await.0, StatusCode::NO_CONTENT);
    let group = create(&sqlite, &alice.token(), "group", &devices(&carol), None).await;
    send(&sqlite, &alice.token(), &group, "hello carol", 1).await;
    // An attachment, whose record moves and whose file stays in the data directory.
    let file: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let digest = roost_proto::bytes::encode(&<sha2::Sha256 as sha2::Digest>::digest(&file));
    let (status, upload) = sqlite
        .post(
            &format!("/v1/conversations/{direct}/attachments"),
            Some(&alice.token()),
            json!({"length": file.len(), "sha256": digest}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{upload}");
    let attachment = upload["attachment_id"].as_str().unwrap().to_owned();
    let patched = sqlite
        .http
        .patch(sqlite.url(&format!("/v1/attachments/{attachment}")))
        .bearer_auth(alice.token())
        .header("Upload-Offset", "0")
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let users = [(alice.token(), direct), (bob.token(), direct), (carol.token(), group)];
    let mut before = Vec::new();
    for (token, id) in &users {
        before.push(view(&sqlite, token, &id.to_string()).await);
    }
    // A push subscription, and the server key browsers' subscriptions are bound to.
    let point = crate::api::push::valid_point();
    let subscription = json!({"endpoint": "https://push.example.com/bob", "keys": {"p256dh": b64_bytes(&point), "auth": b64_bytes(&[7; 16])}});
    let (status, _) = sqlite.call(Method::PUT, "/v1/push/subscription", Some(&bob.token()), Some(subscription)).await;
    assert_eq!(status, StatusCode::OK);
    let server_key = sqlite.get("/v1/push/server-key", None).await.1;
    let config = sqlite.config.clone();
    let source = sqlite.stop().await;

    let (copied, printed) = migrate_store(&source_url, &target_url);
    assert!(copied, "{printed}");
    assert!(printed.contains("entries") && printed.contains("5 rows copied and verified"), "{printed}");

    // The same users on PostgreSQL: same sessions, same positions, same logs.
    let config = roostd_config_on(&target, config);
    let postgres = TestServer::start_on(target, config).await;
    let mut after = Vec::new();
    for (token, id) in &users {
        after.push(view(&postgres, token, &id.to_string()).await);
    }
    assert_eq!(after, before);
    let downloaded = postgres
        .http
        .get(postgres.url(&format!("/v1/attachments/{attachment}")))
        .bearer_auth(bob.token())
        .send()
        .await
        .unwrap();
    assert_eq!(downloaded.status(), StatusCode::OK);
    assert_eq!(downloaded.bytes().await.unwrap().as_ref(), file.as_slice(), "the attachment moved along");
    assert_eq!(postgres.get("/v1/push/server-key", None).await.1, server_key, "the VAPID key moved along");
    let (_, push) = postgres.get("/v1/push/subscription", Some(&bob.token())).await;
    assert_eq!(push["endpoint"], "https://push.example.com/bob", "{push}");
    assert_eq!(before[1][1]["entries"].as_array().unwrap().len(), 3, "bob had acknowledged 2 of 5");
    assert_eq!(before[2][1]["queue"][0]["kind"], "welcome", "carol's Welcome waits");

    // And carry on: claims continue in upload order, the log continues gap-free, queue ids
    // continue after the copied ones.
    assert_eq!(claimed["packages"][0]["key_package"], b64("package-0"), "{claimed}");
    let (_, next) = postgres.post("/v1/keys/claim", Some(&alice.token()), json!({"user_ids": [bob.id()]})).await;
    assert_eq!(next["packages"][0]["key_package"], b64("package-1"), "{next}");
    let (status, sent) = send(&postgres, &bob.token(), &direct, "after the move", 1).await;
    assert_eq!((status, sent["seq"].as_u64()), (StatusCode::CREATED, Some(6)), "{sent}");
    let old_queue_id = before[2][1]["queue"][0]["id"].as_u64().unwrap();
    let (_, payload) = postgres
        .post(
            &format!("/v1/devices/{}/messages", carol.devices[0].id()),
            Some(&alice.token()),
            json!({"payload": b64("hi")}),
        )
        .await;
    assert!(payload["id"].as_u64().unwrap() > old_queue_id, "{payload}");
    let config = postgres.config.clone();
    let target = postgres.stop().await;

    // A second copy into the now populated database is refused and changes nothing.
    let (copied, printed) = migrate_store(&source_url, &target.url());
    assert!(!copied && printed.contains("not empty"), "{printed}");
    let postgres = TestServer::start_on(target, config).await;
    let (_, synced) = postgres.get("/v1/sync", Some(&bob.token())).await;
    assert_eq!(synced["entries"].as_array().unwrap().len(), 4);
    drop(source);
}

fn b64_bytes(bytes: &[u8]) -> String {
    roost_proto::bytes::encode(bytes)
}

/// The configuration of a server moved to `database` (everything else as before).
fn roostd_config_on(database: &TestDatabase, before: roost_server::config::Config) -> roost_server::config::Config {
    roost_server::config::Config { database_url: config_for(database).database_url, ..before }
}
