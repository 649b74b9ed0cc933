//! Conversations over HTTP with opaque test ciphertext: ordering, idempotency, epochs,
//! membership, denial, retention and the device queue.

use reqwest::{Method, StatusCode};
use roost_proto::conversation::{ConversationSummary, QueueKind, SyncResponse};
use roost_proto::{ConversationId, DeviceId, bytes};
use serde_json::{Value, json};

use super::common::{TestServer, TestUser, assert_error};

fn new_conversation_id() -> ConversationId {
    ConversationId::from_bytes(rand::random())
}

pub fn b64(text: &str) -> String {
    bytes::encode(text.as_bytes())
}

/// A member commit as the server sees one: an MLSMessage (mls10) of wire format
/// private_message, with opaque test bytes after it.
pub fn member_commit(text: &str) -> String {
    bytes::encode(&[&[0, 1, 0, 2], text.as_bytes()].concat())
}

/// An external commit as the server sees one: wire format public_message.
pub fn external_commit(text: &str) -> String {
    bytes::encode(&[&[0, 1, 0, 1], text.as_bytes()].concat())
}

/// Creates a conversation from `creator`'s device `index` with the given other devices, at epoch 1.
pub async fn create(
    server: &TestServer,
    token: &str,
    kind: &str,
    members: &[DeviceId],
    retention: Option<Value>,
) -> ConversationId {
    let id = new_conversation_id();
    let mut body = json!({
        "conversation_id": id, "kind": kind, "epoch": 1, "group_info": b64("group-info-1"), "members": members,
    });
    if !members.is_empty() {
        body["welcome"] = json!(b64("welcome-1"));
    }
    if let Some(retention) = retention {
        body["retention"] = retention;
    }
    let (status, created) = server.post("/v1/conversations", Some(token), body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["conversation_id"], id.to_string());
    id
}

pub async fn send(
    server: &TestServer,
    token: &str,
    id: &ConversationId,
    client_id: &str,
    epoch: u64,
) -> (StatusCode, Value) {
    let body = json!({"client_message_id": client_id, "epoch": epoch, "ciphertext": b64(&format!("ct:{client_id}"))});
    server.post(&format!("/v1/conversations/{id}/messages"), Some(token), body).await
}

async fn send_ok(server: &TestServer, token: &str, id: &ConversationId, client_id: &str, epoch: u64) -> u64 {
    let (status, body) = send(server, token, id, client_id, epoch).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["seq"].as_u64().unwrap()
}

/// Every unacknowledged entry and queue item, following cursors with a small page size.
pub async fn sync_all(server: &TestServer, token: &str) -> SyncResponse {
    let mut all = SyncResponse { entries: Vec::new(), queue: Vec::new(), cursor: None };
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/sync?limit=2&cursor={c}"),
            None => "/v1/sync?limit=2".to_owned(),
        };
        let (status, body) = server.get(&path, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page: SyncResponse = serde_json::from_value(body).unwrap();
        all.entries.extend(page.entries);
        all.queue.extend(page.queue);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

fn log_of(sync: &SyncResponse, id: &ConversationId) -> Vec<(u64, String, Vec<u8>)> {
    sync.entries
        .iter()
        .filter(|e| e.conversation_id == *id)
        .map(|e| (e.seq, e.sender_device.to_string(), e.payload.clone().into_vec()))
        .collect()
}

async fn ack(server: &TestServer, token: &str, id: &ConversationId, seq: u64) -> (StatusCode, Value) {
    server.post("/v1/ack", Some(token), json!({"conversations": [{"conversation_id": id, "seq": seq}]})).await
}

async fn summary(server: &TestServer, token: &str, id: &ConversationId) -> ConversationSummary {
    let (status, body) = server.get(&format!("/v1/conversations/{id}"), Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

async fn history_seqs(server: &TestServer, token: &str, id: &ConversationId) -> Vec<u64> {
    let (status, body) = server.get(&format!("/v1/conversations/{id}/history"), Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["entries"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

pub fn devices(user: &TestUser) -> Vec<DeviceId> {
    user.devices.iter().map(|d| d.id()).collect()
}

#[tokio::test]
async fn a_direct_chat_reaches_every_device_in_the_same_order() {
    let server = server!();
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    server.link_device(&mut alice).await;
    server.link_device(&mut bob).await;
    let mut members = vec![alice.devices[1].id()];
    members.extend(devices(&bob));
    let id = create(&server, &alice.token(), "direct", &members, None).await;

    // Both directions, from several devices.
    let senders = [&alice.devices[0], &bob.devices[0], &alice.devices[1], &bob.devices[1], &bob.devices[0]];
    for (i, device) in senders.iter().enumerate() {
        assert_eq!(send_ok(&server, &device.token(), &id, &format!("m{i}"), 1).await, i as u64 + 1);
    }

    let reference = log_of(&sync_all(&server, &alice.token()).await, &id);
    assert_eq!(reference.iter().map(|(seq, _, _)| *seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(reference[1].1, bob.devices[0].id().to_string());
    assert_eq!(reference[1].2, b"ct:m1");
    for device in alice.devices.iter().chain(bob.devices.iter()) {
        let sync = sync_all(&server, &device.token()).await;
        assert_eq!(log_of(&sync, &id), reference, "every device sees the same log");
        let welcomes: Vec<_> = sync.queue.iter().filter(|q| q.kind == QueueKind::Welcome).collect();
        if device.id() == alice.devices[0].id() {
            assert!(welcomes.is_empty(), "the creator gets no Welcome");
        } else {
            assert_eq!(welcomes.len(), 1);
            assert_eq!(welcomes[0].conversation_id, Some(id));
            assert_eq!(welcomes[0].payload.as_bytes(), b"welcome-1");
        }
        // Acknowledge everything, queue included; the next sync is empty.
        let queue_up_to = sync.queue.last().map(|q| q.id);
        let body = json!({"conversations": [{"conversation_id": id, "seq": 5}], "queue_up_to": queue_up_to});
        let (status, _) = server.post("/v1/ack", Some(&device.token()), body).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let after = sync_all(&server, &device.token()).await;
        assert!(after.entries.is_empty() && after.queue.is_empty());
    }

    // A direct chat holds exactly two users.
    let carol = server.user("carol").await;
    let commit = json!({"epoch": 1, "commit": member_commit("c"), "group_info": b64("g"), "add": [carol.devices[0].id()], "welcome": b64("w")});
    let crowded = server.post(&format!("/v1/conversations/{id}/commits"), Some(&alice.token()), commit).await;
    assert_error(&crowded, StatusCode::CONFLICT, "member_limit_reached");
    let three = json!({"conversation_id": new_conversation_id(), "kind": "direct", "epoch": 1, "group_info": b64("g"),
        "members": [bob.devices[0].id(), carol.devices[0].id()], "welcome": b64("w")});
    assert_error(
        &server.post("/v1/conversations", Some(&alice.token()), three).await,
        StatusCode::CONFLICT,
        "member_limit_reached",
    );
}

#[tokio::test]
async fn a_three_user_group_with_read_markers_and_unread_counts() {
    let server = server!();
    let alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    server.link_device(&mut bob).await;
    let carol = server.user("carol").await;
    let mut members = devices(&bob);
    members.push(carol.devices[0].id());
    let id = create(&server, &alice.token(), "group", &members, None).await;
    for (i, token) in [alice.token(), carol.devices[0].token(), alice.token()].iter().enumerate() {
        send_ok(&server, token, &id, &format!("g{i}"), 1).await;
    }
    let reference = log_of(&sync_all(&server, &alice.token()).await, &id);
    for token in [bob.devices[0].token(), bob.devices[1].token(), carol.token()] {
        assert_eq!(log_of(&sync_all(&server, &token).await, &id), reference);
    }

    let (status, list) = server.get("/v1/conversations", Some(&bob.token())).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let entry = &list["conversations"][0];
    assert_eq!(entry["conversation_id"], id.to_string());
    assert_eq!(
        (entry["last_seq"].as_u64(), entry["unread"].as_u64(), entry["read_seq"].as_u64()),
        (Some(3), Some(3), Some(0))
    );
    assert_eq!(entry["members"].as_array().unwrap().len(), 3);
    assert_eq!(entry["kind"], "group");

    // Bob reads up to 2 on one device: his other device is told, alice sees his position.
    let (status, read) =
        server.post(&format!("/v1/conversations/{id}/read"), Some(&bob.token()), json!({"seq": 2})).await;
    assert_eq!((status, read["seq"].as_u64()), (StatusCode::OK, Some(2)));
    let (_, read) = server.post(&format!("/v1/conversations/{id}/read"), Some(&bob.token()), json!({"seq": 1})).await;
    assert_eq!(read["seq"].as_u64(), Some(2), "read markers never go back");
    assert_eq!(summary(&server, &bob.token(), &id).await.unread, 1);
    let other = sync_all(&server, &bob.devices[1].token()).await;
    let marker = other.queue.iter().find(|q| q.kind == QueueKind::ReadMarker).expect("read marker synced");
    assert_eq!((marker.conversation_id, marker.seq), (Some(id), Some(2)));
    let seen_by_alice = summary(&server, &alice.token(), &id).await;
    let bob_member = seen_by_alice.members.iter().find(|m| m.user_id == bob.id()).unwrap();
    assert_eq!(bob_member.read_seq, Some(2));

    // With read receipts off, others no longer see bob's position.
    let (status, _) =
        server.call(Method::PUT, "/v1/settings", Some(&bob.token()), Some(json!({"read_receipts": false}))).await;
    assert_eq!(status, StatusCode::OK);
    let seen_by_alice = summary(&server, &alice.token(), &id).await;
    assert_eq!(seen_by_alice.members.iter().find(|m| m.user_id == bob.id()).unwrap().read_seq, None);
    assert_eq!(summary(&server, &bob.token(), &id).await.read_seq, 2, "bob still sees his own");
}

#[tokio::test]
async fn a_retried_send_returns_the_original_sequence_number() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id = create(&server, &alice.token(), "direct", &devices(&bob), None).await;
    let (status, first) = send(&server, &alice.token(), &id, "once", 1).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, retry) = send(&server, &alice.token(), &id, "once", 1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (retry["seq"].clone(), retry["created_at"].clone(), retry["duplicate"].clone()),
        (first["seq"].clone(), first["created_at"].clone(), json!(true))
    );
    assert_eq!(summary(&server, &alice.token(), &id).await.last_seq, 1, "nothing new stored");
    assert_eq!(log_of(&sync_all(&server, &bob.token()).await, &id).len(), 1);
}

#[tokio::test]
async fn a_stale_commit_gets_409_and_succeeds_after_catching_up() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let id = create(&server, &alice.token(), "group", &devices(&bob), None).await;
    let path = format!("/v1/conversations/{id}/commits");

    // A member commit that is not an encrypted MLS message would break the group for every
    // member that processes it: refused, and nothing changes.
    for wrong in [external_commit("a0"), b64("not mls at all")] {
        let refused = server
            .post(&path, Some(&alice.token()), json!({"epoch": 1, "commit": wrong, "group_info": b64("g")}))
            .await;
        assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument");
    }
    let (status, accepted) = server
        .post(&path, Some(&alice.token()), json!({"epoch": 1, "commit": member_commit("a1"), "group_info": b64("g2")}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{accepted}");
    assert_eq!((accepted["seq"].as_u64(), accepted["epoch"].as_u64()), (Some(1), Some(2)));

    let bobs = json!({"epoch": 1, "commit": member_commit("b1"), "group_info": b64("g2b"), "add": [carol.devices[0].id()], "welcome": b64("w")});
    let stale = server.post(&path, Some(&bob.token()), bobs).await;
    assert_error(&stale, StatusCode::CONFLICT, "stale_epoch");
    assert_eq!(stale.1["error"]["current_epoch"], 2);
    assert!(sync_all(&server, &carol.token()).await.queue.is_empty(), "the refused commit queued no Welcome");
    assert_error(&send(&server, &bob.token(), &id, "late", 1).await, StatusCode::CONFLICT, "stale_epoch");

    // Bob catches up: the commit is in his log; the GroupInfo is current.
    let caught_up = sync_all(&server, &bob.token()).await;
    let commit = caught_up.entries.iter().find(|e| e.seq == 1).unwrap();
    assert_eq!(
        (commit.kind, commit.payload.as_bytes(), commit.epoch),
        (roost_proto::conversation::EntryKind::Commit, b"\x00\x01\x00\x02a1".as_slice(), 1)
    );
    let (_, info) = server.get(&format!("/v1/conversations/{id}/group-info"), Some(&bob.token())).await;
    assert_eq!((info["epoch"].as_u64(), info["group_info"].clone()), (Some(2), json!(b64("g2"))));

    let retried = json!({"epoch": 2, "commit": member_commit("b2"), "group_info": b64("g3"), "add": [carol.devices[0].id()], "welcome": b64("w")});
    let (status, accepted) = server.post(&path, Some(&bob.token()), retried).await;
    assert_eq!(status, StatusCode::CREATED, "{accepted}");
    assert_eq!((accepted["seq"].as_u64(), accepted["epoch"].as_u64()), (Some(2), Some(3)));
    assert_eq!(sync_all(&server, &carol.token()).await.queue[0].seq, Some(2));
    assert_eq!(send_ok(&server, &carol.token(), &id, "hi", 3).await, 3);
}

#[tokio::test]
async fn non_members_are_refused_everything() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mallory = server.user("mallory").await;
    let id = create(&server, &alice.token(), "direct", &devices(&bob), None).await;
    send_ok(&server, &alice.token(), &id, "secret", 1).await;
    let token = mallory.token();
    let base = format!("/v1/conversations/{id}");

    assert_error(&server.get(&base, Some(&token)).await, StatusCode::FORBIDDEN, "not_a_member");
    assert_error(&server.get(&format!("{base}/history"), Some(&token)).await, StatusCode::FORBIDDEN, "not_a_member");
    assert_error(&server.get(&format!("{base}/group-info"), Some(&token)).await, StatusCode::FORBIDDEN, "not_a_member");
    assert_error(&send(&server, &token, &id, "intrude", 1).await, StatusCode::FORBIDDEN, "not_a_member");
    let ephemeral = json!({"client_message_id": "t", "epoch": 1, "ciphertext": b64("typing"), "ephemeral": true});
    assert_error(
        &server.post(&format!("{base}/messages"), Some(&token), ephemeral).await,
        StatusCode::FORBIDDEN,
        "not_a_member",
    );
    assert_error(&ack(&server, &token, &id, 1).await, StatusCode::FORBIDDEN, "not_a_member");
    let commit = json!({"epoch": 1, "commit": member_commit("c"), "group_info": b64("g"), "add": [mallory.devices[0].id()], "welcome": b64("w")});
    assert_error(
        &server.post(&format!("{base}/commits"), Some(&token), commit).await,
        StatusCode::FORBIDDEN,
        "not_a_member",
    );
    let join = json!({"epoch": 1, "commit": external_commit("c"), "group_info": b64("g")});
    assert_error(
        &server.post(&format!("{base}/external-joins"), Some(&token), join).await,
        StatusCode::FORBIDDEN,
        "not_a_member",
    );
    assert_error(
        &server.post(&format!("{base}/read"), Some(&token), json!({"seq": 1})).await,
        StatusCode::FORBIDDEN,
        "not_a_member",
    );
    assert_error(
        &server
            .call(Method::PUT, &format!("{base}/retention"), Some(&token), Some(json!({"policy": "burn_on_read"})))
            .await,
        StatusCode::FORBIDDEN,
        "not_a_member",
    );
    assert_error(
        &server.post(&format!("{base}/leave"), Some(&token), json!({})).await,
        StatusCode::FORBIDDEN,
        "not_a_member",
    );
    let sync = sync_all(&server, &token).await;
    assert!(sync.entries.is_empty() && sync.queue.is_empty());
    let (_, list) = server.get("/v1/conversations", Some(&token)).await;
    assert_eq!(list["conversations"], json!([]));

    // Unknown conversations are 404; nothing above changed the conversation.
    let unknown = new_conversation_id();
    assert_error(
        &server.get(&format!("/v1/conversations/{unknown}"), Some(&token)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(&send(&server, &token, &unknown, "x", 1).await, StatusCode::NOT_FOUND, "not_found");
    let seen = summary(&server, &alice.token(), &id).await;
    assert_eq!((seen.last_seq, seen.epoch, seen.members.len()), (1, 1, 2));
    assert_error(&server.get(&base, None).await, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn burn_on_read_deletes_exactly_when_the_last_member_device_acks() {
    let server = server!();
    let mut alice = server.user("alice").await;
    server.link_device(&mut alice).await;
    let bob = server.user("bob").await;
    let mut members = vec![alice.devices[1].id()];
    members.extend(devices(&bob));
    let id = create(&server, &alice.token(), "direct", &members, Some(json!({"policy": "burn_on_read"}))).await;
    let seq = send_ok(&server, &alice.token(), &id, "burn", 1).await;

    for device in &alice.devices {
        assert_eq!(ack(&server, &device.token(), &id, seq).await.0, StatusCode::NO_CONTENT);
        assert_eq!(history_seqs(&server, &bob.token(), &id).await, vec![seq], "kept while a device has not acked");
    }
    assert_eq!(ack(&server, &bob.token(), &id, seq).await.0, StatusCode::NO_CONTENT);
    assert!(history_seqs(&server, &bob.token(), &id).await.is_empty(), "gone once the last device acked");
    assert!(history_seqs(&server, &alice.token(), &id).await.is_empty());
    assert_eq!(
        summary(&server, &bob.token(), &id).await.retention,
        roost_proto::conversation::RetentionPolicy::BurnOnRead
    );
}

#[tokio::test]
async fn ttl_prunes_under_a_paused_clock() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id =
        create(&server, &alice.token(), "direct", &devices(&bob), Some(json!({"policy": "ttl", "ttl_secs": 60}))).await;
    send_ok(&server, &alice.token(), &id, "old", 1).await;
    server.clock().advance_ms(30_000);
    send_ok(&server, &alice.token(), &id, "new", 1).await;

    server.clock().advance_ms(30_001);
    server.services.conversations.prune().await.unwrap();
    assert_eq!(history_seqs(&server, &alice.token(), &id).await, vec![2]);
    assert_eq!(log_of(&sync_all(&server, &bob.token()).await, &id).iter().map(|e| e.0).collect::<Vec<_>>(), vec![2]);

    // Policies are bounded by the server's maximum age (30 days by default).
    let too_long = json!({"policy": "ttl", "ttl_secs": 31 * 24 * 3600});
    let refused = server
        .call(Method::PUT, &format!("/v1/conversations/{id}/retention"), Some(&alice.token()), Some(too_long))
        .await;
    assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument");
    let permanent = server
        .call(
            Method::PUT,
            &format!("/v1/conversations/{id}/retention"),
            Some(&alice.token()),
            Some(json!({"policy": "permanent"})),
        )
        .await;
    assert_error(&permanent, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument");
    let (status, _) = server
        .call(
            Method::PUT,
            &format!("/v1/conversations/{id}/retention"),
            Some(&bob.token()),
            Some(json!({"policy": "ttl", "ttl_secs": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    server.clock().advance_ms(5_000);
    server.services.conversations.prune().await.unwrap();
    assert!(history_seqs(&server, &alice.token(), &id).await.is_empty());
}

#[tokio::test]
async fn a_removed_member_gets_nothing_after_its_removal() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let id = create(&server, &alice.token(), "group", &[bob.devices[0].id(), carol.devices[0].id()], None).await;
    send_ok(&server, &alice.token(), &id, "before", 1).await;
    let remove = json!({"epoch": 1, "commit": member_commit("remove carol"), "group_info": b64("g2"), "remove": [carol.devices[0].id()]});
    let (status, removal) = server.post(&format!("/v1/conversations/{id}/commits"), Some(&alice.token()), remove).await;
    assert_eq!(status, StatusCode::CREATED, "{removal}");
    send_ok(&server, &alice.token(), &id, "after", 2).await;
    send_ok(&server, &bob.token(), &id, "after-bob", 2).await;

    let carols = sync_all(&server, &carol.token()).await;
    assert_eq!(
        log_of(&carols, &id).iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![1, 2],
        "up to and including the removal"
    );
    assert!(carols.queue.iter().any(|q| q.kind == QueueKind::Removed && q.conversation_id == Some(id)));
    assert_error(&send(&server, &carol.token(), &id, "still here?", 2).await, StatusCode::FORBIDDEN, "not_a_member");
    assert_error(
        &server.get(&format!("/v1/conversations/{id}/history"), Some(&carol.token())).await,
        StatusCode::FORBIDDEN,
        "not_a_member",
    );
    assert_eq!(summary(&server, &alice.token(), &id).await.members.len(), 2);
}

#[tokio::test]
async fn a_device_added_later_sees_nothing_before_its_join_point() {
    let server = server!();
    let mut alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id = create(&server, &alice.token(), "direct", &devices(&bob), None).await;
    for i in 0..3 {
        send_ok(&server, &bob.token(), &id, &format!("early{i}"), 1).await;
    }
    // Alice's new device is added by her first device with a regular commit and Welcome.
    let new = server.link_device(&mut alice).await;
    let add = json!({"epoch": 1, "commit": member_commit("add"), "group_info": b64("g2"), "add": [alice.devices[new].id()], "welcome": b64("w2")});
    let (status, added) = server.post(&format!("/v1/conversations/{id}/commits"), Some(&alice.token()), add).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    send_ok(&server, &bob.token(), &id, "late", 2).await;

    let token = alice.devices[new].token();
    let sync = sync_all(&server, &token).await;
    assert_eq!(log_of(&sync, &id).iter().map(|e| e.0).collect::<Vec<_>>(), vec![5]);
    assert_eq!(sync.queue.iter().filter(|q| q.kind == QueueKind::Welcome).count(), 1);
    assert_eq!(history_seqs(&server, &token, &id).await, vec![5]);
    let seen = summary(&server, &token, &id).await;
    assert_eq!((seen.joined_seq, seen.unread), (4, 1));
}

#[tokio::test]
async fn a_new_device_of_a_member_user_joins_by_external_commit() {
    let server = server!();
    let alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let stranger = server.user("stranger").await;
    let id = create(&server, &alice.token(), "direct", &devices(&bob), None).await;
    send_ok(&server, &alice.token(), &id, "before", 1).await;

    let new = server.link_device(&mut bob).await;
    let token = bob.devices[new].token();
    let (status, info) = server.get(&format!("/v1/conversations/{id}/group-info"), Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    let path = format!("/v1/conversations/{id}/external-joins");
    let encrypted = json!({"epoch": info["epoch"], "commit": member_commit("external"), "group_info": b64("g2")});
    assert_error(
        &server.post(&path, Some(&token), encrypted).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_argument",
    );
    let join = json!({"epoch": info["epoch"], "commit": external_commit("external"), "group_info": b64("g2")});
    assert_error(
        &server.post(&path, Some(&stranger.token()), join.clone()).await,
        StatusCode::FORBIDDEN,
        "not_a_member",
    );
    assert_error(&server.post(&path, Some(&bob.token()), join.clone()).await, StatusCode::FORBIDDEN, "not_a_member");
    let (status, joined) = server.post(&path, Some(&token), join).await;
    assert_eq!(status, StatusCode::CREATED, "{joined}");
    assert_eq!((joined["seq"].as_u64(), joined["epoch"].as_u64()), (Some(2), Some(2)));
    send_ok(&server, &alice.token(), &id, "after", 2).await;
    assert_eq!(log_of(&sync_all(&server, &token).await, &id).iter().map(|e| e.0).collect::<Vec<_>>(), vec![3]);
    let alices = log_of(&sync_all(&server, &alice.token()).await, &id);
    assert_eq!(alices.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2, 3], "members get the external commit");
}

#[tokio::test]
async fn ephemeral_sends_reach_online_devices_and_are_never_stored() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id = create(&server, &alice.token(), "direct", &devices(&bob), None).await;
    let mut online = super::gateway::Socket::connect(&server, &bob.token()).await;
    online.drain().await;

    let typing = json!({"client_message_id": "typing-1", "epoch": 1, "ciphertext": b64("typing…"), "ephemeral": true});
    let (status, accepted) =
        server.post(&format!("/v1/conversations/{id}/messages"), Some(&alice.token()), typing).await;
    assert_eq!(status, StatusCode::CREATED, "{accepted}");
    assert!(accepted.get("seq").is_none(), "{accepted}");
    let frame = online.next_frame().await;
    assert_eq!(frame["type"], "ephemeral");
    assert_eq!(frame["payload"], b64("typing…"));
    assert_eq!(frame["sender_device"], alice.devices[0].id().to_string());
    assert!(sync_all(&server, &bob.token()).await.entries.is_empty());
    assert!(history_seqs(&server, &alice.token(), &id).await.is_empty());
    assert_eq!(summary(&server, &alice.token(), &id).await.last_seq, 0);
}

#[tokio::test]
async fn device_queue_carries_device_messages_and_keys_low() {
    let server = server!(|config| config.limits.key_packages_low_threshold = 2);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let stranger = server.user("stranger").await;
    create(&server, &alice.token(), "direct", &devices(&bob), None).await;

    let path = format!("/v1/devices/{}/messages", bob.devices[0].id());
    let (status, queued) = server.post(&path, Some(&alice.token()), json!({"payload": b64("hello device")})).await;
    assert_eq!(status, StatusCode::CREATED, "{queued}");
    assert_error(
        &server.post(&path, Some(&stranger.token()), json!({"payload": b64("spam")})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let to_unknown = format!("/v1/devices/{}/messages", super::common::TestDevice::new().id());
    assert_error(
        &server.post(&to_unknown, Some(&alice.token()), json!({"payload": b64("x")})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let sync = sync_all(&server, &bob.token()).await;
    let message = sync.queue.iter().find(|q| q.kind == QueueKind::DeviceMessage).unwrap();
    assert_eq!(
        (message.payload.as_bytes(), message.sender_device),
        (b"hello device".as_slice(), Some(alice.devices[0].id()))
    );

    let upload = json!({"one_time": [b64("k1"), b64("k2"), b64("k3")], "last_resort": b64("lr")});
    server.post("/v1/keys/packages", Some(&bob.token()), upload).await;
    for _ in 0..3 {
        server.post("/v1/keys/claim", Some(&alice.token()), json!({"device_ids": [bob.devices[0].id()]})).await;
    }
    let warnings: Vec<Value> = sync_all(&server, &bob.token())
        .await
        .queue
        .iter()
        .filter(|q| q.kind == QueueKind::KeysLow)
        .map(|q| serde_json::from_slice(q.payload.as_bytes()).unwrap())
        .collect();
    assert_eq!(warnings, vec![json!({"one_time": 1}), json!({"one_time": 0})], "once when crossing, once when empty");
}

#[tokio::test]
async fn leaving_stops_delivery_to_every_device_of_the_user() {
    let server = server!();
    let alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    server.link_device(&mut bob).await;
    let id = create(&server, &alice.token(), "group", &devices(&bob), None).await;
    let (status, left) = server
        .post(&format!("/v1/conversations/{id}/leave"), Some(&bob.token()), json!({"payload": b64("self-remove")}))
        .await;
    assert_eq!((status, left["seq"].as_u64()), (StatusCode::OK, Some(1)));
    send_ok(&server, &alice.token(), &id, "after", 1).await;
    let alices = sync_all(&server, &alice.token()).await;
    let leave = alices.entries.iter().find(|e| e.seq == 1).unwrap();
    assert_eq!((leave.kind, leave.sender_user), (roost_proto::conversation::EntryKind::Leave, bob.id()));
    for device in &bob.devices {
        let sync = sync_all(&server, &device.token()).await;
        let seqs: Vec<u64> = log_of(&sync, &id).iter().map(|e| e.0).collect();
        assert_eq!(seqs, vec![1]);
        // The caller's device too: every device that left gets the removed notice.
        let removed: Vec<_> = sync
            .queue
            .iter()
            .filter(|item| item.kind == roost_proto::conversation::QueueKind::Removed)
            .map(|item| (item.conversation_id, item.seq))
            .collect();
        assert_eq!(removed, vec![(Some(id), Some(1))], "device {}", device.id());
        assert_error(&send(&server, &device.token(), &id, "back?", 1).await, StatusCode::FORBIDDEN, "not_a_member");
    }
}

#[tokio::test]
async fn acks_never_move_another_devices_position() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id = create(&server, &alice.token(), "direct", &devices(&bob), None).await;
    for i in 0..3 {
        send_ok(&server, &alice.token(), &id, &format!("m{i}"), 1).await;
    }
    assert_eq!(ack(&server, &bob.token(), &id, 3).await.0, StatusCode::NO_CONTENT);
    assert_eq!(ack(&server, &bob.token(), &id, 3).await.0, StatusCode::NO_CONTENT, "idempotent");
    assert_eq!(ack(&server, &bob.token(), &id, 1).await.0, StatusCode::NO_CONTENT, "older acks are harmless");
    assert!(log_of(&sync_all(&server, &bob.token()).await, &id).is_empty());
    assert_eq!(log_of(&sync_all(&server, &alice.token()).await, &id).len(), 3, "alice's device is untouched");
    assert_error(
        &server.post("/v1/ack", Some(&bob.token()), json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_argument",
    );
    assert_error(
        &server.get("/v1/sync?cursor=garbage", Some(&bob.token())).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_argument",
    );
    assert_error(
        &server.get("/v1/sync?limit=0", Some(&bob.token())).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_argument",
    );
    assert_error(
        &server.get("/v1/sync?limit=abc", Some(&bob.token())).await,
        StatusCode::BAD_REQUEST,
        "malformed_request",
    );
}

#[tokio::test]
async fn sends_are_rate_limited_per_device() {
    let server = server!(|config| config.rate_limits.sends_per_device = 3);
    let mut alice = server.user("alice").await;
    server.link_device(&mut alice).await;
    let bob = server.user("bob").await;
    let id = create(&server, &alice.token(), "direct", &[alice.devices[1].id(), bob.devices[0].id()], None).await;
    for i in 0..3 {
        send_ok(&server, &alice.token(), &id, &format!("m{i}"), 1).await;
    }
    assert_error(&send(&server, &alice.token(), &id, "m3", 1).await, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // The limit is per device: alice's other device and bob still send.
    send_ok(&server, &alice.devices[1].token(), &id, "other", 1).await;
    send_ok(&server, &bob.token(), &id, "bob", 1).await;
}
