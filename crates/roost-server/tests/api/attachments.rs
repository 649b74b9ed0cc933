//! Attachments over raw HTTP, as protocol.md describes them: uploads in pieces and after a cut
//! connection, ranges and ETags, who may read and write, the quota, refused uploads leaving
//! nothing behind, and expiry deleting the bytes, on the local directory and on a real
//! S3-compatible server.

use std::path::Path;

use reqwest::header::{CONTENT_RANGE, ETAG, IF_NONE_MATCH, RANGE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use roost_proto::{ConversationId, bytes};
use roost_testkit::s3::S3Server;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::common::{TestServer, TestUser, assert_error};
use super::conversations::{b64, create};

/// Small chunks, so that a few kilobytes cross several of them.
const CHUNK: u64 = 1000;

fn ciphertext(length: usize, seed: u8) -> Vec<u8> {
    (0..length).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn digest(bytes: &[u8]) -> String {
    bytes::encode(&Sha256::digest(bytes))
}

async fn start(server: &TestServer, token: &str, conversation: &ConversationId, file: &[u8]) -> (StatusCode, Value) {
    let body = json!({"length": file.len(), "sha256": digest(file)});
    server.post(&format!("/v1/conversations/{conversation}/attachments"), Some(token), body).await
}

async fn start_ok(server: &TestServer, token: &str, conversation: &ConversationId, file: &[u8]) -> String {
    let (status, upload) = start(server, token, conversation, file).await;
    assert_eq!(status, StatusCode::CREATED, "{upload}");
    assert_eq!((upload["offset"].as_u64(), upload["complete"].as_bool()), (Some(0), Some(false)));
    upload["attachment_id"].as_str().unwrap().to_owned()
}

async fn patch(server: &TestServer, token: &str, id: &str, offset: u64, body: &[u8]) -> (StatusCode, Value) {
    let response = server
        .http
        .patch(server.url(&format!("/v1/attachments/{id}")))
        .bearer_auth(token)
        .header("Upload-Offset", offset.to_string())
        .header("Content-Type", "application/octet-stream")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn download(server: &TestServer, token: &str, id: &str, range: Option<&str>) -> reqwest::Response {
    let mut request = server.http.get(server.url(&format!("/v1/attachments/{id}"))).bearer_auth(token);
    if let Some(range) = range {
        request = request.header(RANGE, range);
    }
    request.send().await.unwrap()
}

async fn upload_all(server: &TestServer, token: &str, conversation: &ConversationId, file: &[u8]) -> String {
    let id = start_ok(server, token, conversation, file).await;
    let (status, done) = patch(server, token, &id, 0, file).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["complete"], true);
    id
}

fn small_chunks(config: &mut roost_server::config::Config) {
    config.attachments.chunk_bytes = CHUNK;
}

async fn pair(server: &TestServer) -> (TestUser, TestUser, ConversationId) {
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let conversation = create(server, &alice.token(), "direct", &[bob.devices[0].id()], None).await;
    (alice, bob, conversation)
}

#[tokio::test]
async fn uploads_in_pieces_download_whole_and_in_ranges() {
    let server = server!(small_chunks);
    let (alice, bob, conversation) = pair(&server).await;
    let file = ciphertext(4_321, 7);
    let id = start_ok(&server, &alice.token(), &conversation, &file).await;

    // Pieces that do not line up with the stored chunks.
    let mut offset = 0;
    for piece in [700, 1, 1_800, 1_820] {
        let (status, upload) = patch(&server, &alice.token(), &id, offset, &file[offset as usize..][..piece]).await;
        assert_eq!(status, StatusCode::OK, "{upload}");
        offset += piece as u64;
        assert_eq!(upload["offset"].as_u64(), Some(offset));
        assert_eq!(upload["complete"], offset == file.len() as u64);
    }
    let (status, upload) = server.get(&format!("/v1/attachments/{id}/upload"), Some(&alice.token())).await;
    assert_eq!((status, upload["complete"].as_bool()), (StatusCode::OK, Some(true)), "{upload}");

    let whole = download(&server, &bob.token(), &id, None).await;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.content_length(), Some(file.len() as u64));
    let etag = whole.headers()[ETAG].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", Sha256::digest(&file).iter().map(|b| format!("{b:02x}")).collect::<String>()));
    assert_eq!(whole.bytes().await.unwrap().as_ref(), file.as_slice());

    for (range, expected, content_range) in [
        ("bytes=990-2010", &file[990..2011], "bytes 990-2010/4321"),
        ("bytes=4000-", &file[4000..], "bytes 4000-4320/4321"),
        ("bytes=-21", &file[4300..], "bytes 4300-4320/4321"),
        ("bytes=0-0", &file[..1], "bytes 0-0/4321"),
    ] {
        let part = download(&server, &bob.token(), &id, Some(range)).await;
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(part.headers()[CONTENT_RANGE], content_range);
        assert_eq!(part.bytes().await.unwrap().as_ref(), expected, "{range}");
    }
    let outside = download(&server, &bob.token(), &id, Some("bytes=4321-")).await;
    assert_eq!(outside.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(outside.headers()[CONTENT_RANGE], "bytes */4321");
    assert_eq!(outside.json::<Value>().await.unwrap()["error"]["code"], "range_not_satisfiable");

    let cached = server
        .http
        .get(server.url(&format!("/v1/attachments/{id}")))
        .bearer_auth(bob.token())
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    // The uploading user's other devices read it like any member device.
    assert_eq!(download(&server, &alice.token(), &id, None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_upload_resumes_after_a_cut_connection() {
    let server = server!(small_chunks);
    let (alice, bob, conversation) = pair(&server).await;
    let file = ciphertext(5_000, 3);
    let id = start_ok(&server, &alice.token(), &conversation, &file).await;

    // Announce the whole file, send 2,500 bytes, and drop the connection.
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "PATCH /v1/attachments/{id} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Upload-Offset: 0\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        alice.token(),
        file.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&file[..2_500]).await.unwrap();
    socket.flush().await.unwrap();
    let mut offset = 0;
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let (_, upload) = server.get(&format!("/v1/attachments/{id}/upload"), Some(&alice.token())).await;
        offset = upload["offset"].as_u64().unwrap();
        if offset >= 2_000 {
            break;
        }
    }
    assert_eq!(offset, 2_000, "the complete chunks are stored while the body still arrives");
    drop(socket);
    let mut held = 0;
    for _ in 0..200 {
        let (_, upload) = server.get(&format!("/v1/attachments/{id}/upload"), Some(&alice.token())).await;
        held = upload["offset"].as_u64().unwrap();
        if held == 2_500 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(held, 2_500, "what arrived before the cut is kept");

    // Resuming from the wrong offset is refused with the right one.
    let wrong = patch(&server, &alice.token(), &id, 0, &file).await;
    assert_error(&wrong, StatusCode::CONFLICT, "upload_offset_mismatch");
    assert_eq!(wrong.1["error"]["current_offset"], 2_500);
    let (status, done) = patch(&server, &alice.token(), &id, 2_500, &file[2_500..]).await;
    assert_eq!((status, done["complete"].as_bool()), (StatusCode::OK, Some(true)), "{done}");
    let body = download(&server, &bob.token(), &id, None).await.bytes().await.unwrap();
    assert_eq!(body.as_ref(), file.as_slice());
}

#[tokio::test]
async fn only_member_devices_read_and_only_the_uploading_device_writes() {
    let server = server!(small_chunks);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let mallory = server.user("mallory").await;
    let group = create(&server, &alice.token(), "group", &[bob.devices[0].id(), carol.devices[0].id()], None).await;
    let file = ciphertext(1_500, 9);

    // A stranger cannot start an upload for the conversation, nor for one that does not exist.
    assert_error(&start(&server, &mallory.token(), &group, &file).await, StatusCode::FORBIDDEN, "not_a_member");
    let nowhere = ConversationId::from_bytes([7; 16]);
    assert_error(&start(&server, &alice.token(), &nowhere, &file).await, StatusCode::NOT_FOUND, "not_found");

    let id = start_ok(&server, &alice.token(), &group, &file).await;
    // Nobody but the uploading device sees or writes the upload.
    for token in [bob.token(), mallory.token()] {
        assert_error(&patch(&server, &token, &id, 0, &file).await, StatusCode::NOT_FOUND, "not_found");
        let status = server.get(&format!("/v1/attachments/{id}/upload"), Some(&token)).await;
        assert_error(&status, StatusCode::NOT_FOUND, "not_found");
        let deleted = server.call(Method::DELETE, &format!("/v1/attachments/{id}"), Some(&token), None).await;
        assert_error(&deleted, StatusCode::NOT_FOUND, "not_found");
    }
    let unfinished = download(&server, &bob.token(), &id, None).await;
    assert_eq!(unfinished.status(), StatusCode::CONFLICT);
    assert_eq!(unfinished.json::<Value>().await.unwrap()["error"]["code"], "upload_incomplete");
    let (status, _) = patch(&server, &alice.token(), &id, 0, &file).await;
    assert_eq!(status, StatusCode::OK);

    // Strangers and anonymous callers cannot download.
    let stranger = download(&server, &mallory.token(), &id, None).await;
    assert_eq!(stranger.status(), StatusCode::NOT_FOUND);
    let anonymous = server.http.get(server.url(&format!("/v1/attachments/{id}"))).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(download(&server, &carol.token(), &id, None).await.status(), StatusCode::OK);

    // Carol is removed: from then on she cannot download it.
    let remove = json!({"epoch": 1, "commit": super::conversations::member_commit("remove carol"), "group_info": b64("g2"), "remove": [carol.devices[0].id()]});
    let (status, removal) =
        server.post(&format!("/v1/conversations/{group}/commits"), Some(&alice.token()), remove).await;
    assert_eq!(status, StatusCode::CREATED, "{removal}");
    let removed = download(&server, &carol.token(), &id, None).await;
    assert_eq!(removed.status(), StatusCode::NOT_FOUND);
    assert_eq!(download(&server, &bob.token(), &id, None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn refused_uploads_leave_nothing_behind() {
    let server = server!(|config| {
        small_chunks(config);
        config.attachments.max_bytes = 10_000;
        config.attachments.daily_bytes_per_user = 20_000;
    });
    let (alice, _bob, conversation) = pair(&server).await;
    let files = server.config.data_dir.join("attachments");

    // Bytes that do not match the announced digest: refused, and the upload is gone.
    let file = ciphertext(2_500, 1);
    let id = start_ok(&server, &alice.token(), &conversation, &file).await;
    let mut forged = file.clone();
    forged[2_400] ^= 1;
    assert_error(
        &patch(&server, &alice.token(), &id, 0, &forged).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "digest_mismatch",
    );
    let status = server.get(&format!("/v1/attachments/{id}/upload"), Some(&alice.token())).await;
    assert_error(&status, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(count_files(&files), 0, "no bytes of it are kept");

    // More bytes than announced: refused, and gone.
    let id = start_ok(&server, &alice.token(), &conversation, &file).await;
    let mut longer = file.clone();
    longer.push(0);
    assert_error(
        &patch(&server, &alice.token(), &id, 0, &longer).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let status = server.get(&format!("/v1/attachments/{id}/upload"), Some(&alice.token())).await;
    assert_error(&status, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(count_files(&files), 0);

    // Announcements the server refuses outright.
    let path = format!("/v1/conversations/{conversation}/attachments");
    let oversize = json!({"length": 10_001, "sha256": digest(b"x")});
    assert_error(
        &server.post(&path, Some(&alice.token()), oversize).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let empty = json!({"length": 0, "sha256": digest(b"")});
    assert_error(
        &server.post(&path, Some(&alice.token()), empty).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_argument",
    );
    let short_digest = json!({"length": 5, "sha256": b64("short")});
    assert_error(
        &server.post(&path, Some(&alice.token()), short_digest).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_argument",
    );
    let anonymous = json!({"length": 5, "sha256": digest(b"hello")});
    assert_error(&server.post(&path, None, anonymous).await, StatusCode::UNAUTHORIZED, "unauthenticated");

    // An unauthenticated PATCH, and one without an offset, change nothing.
    let id = start_ok(&server, &alice.token(), &conversation, &file).await;
    let response = server
        .http
        .patch(server.url(&format!("/v1/attachments/{id}")))
        .header("Upload-Offset", "0")
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = server
        .http
        .patch(server.url(&format!("/v1/attachments/{id}")))
        .bearer_auth(alice.token())
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (_, upload) = server.get(&format!("/v1/attachments/{id}/upload"), Some(&alice.token())).await;
    assert_eq!(upload["offset"], 0);
    assert_eq!(count_files(&files), 0);

    // The uploader may delete its upload.
    let deleted = server.call(Method::DELETE, &format!("/v1/attachments/{id}"), Some(&alice.token()), None).await;
    assert_eq!(deleted.0, StatusCode::NO_CONTENT);

    // The daily quota counts every announcement, refused or deleted ones too:
    // 3 x 2,500 + 2 x 6,250 = 20,000, then no more.
    let big = ciphertext(6_250, 2);
    start_ok(&server, &alice.token(), &conversation, &big).await;
    start_ok(&server, &alice.token(), &conversation, &big).await;
    let over = start(&server, &alice.token(), &conversation, &file).await;
    assert_error(&over, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded");
    let retry = server
        .http
        .post(server.url(&path))
        .bearer_auth(alice.token())
        .json(&json!({"length": 1, "sha256": digest(b"x")}))
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = retry.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&wait), "until the next UTC day: {wait}");
    server.clock().advance_ms(i64::try_from(wait).unwrap() * 1000);
    start_ok(&server, &alice.token(), &conversation, &file).await;
}

#[tokio::test]
async fn expiry_deletes_the_bytes_on_disk() {
    let server = server!(small_chunks);
    let files = server.config.data_dir.join("attachments");
    expiry_deletes_the_bytes(&server, || count_files(&files)).await;
}

#[tokio::test]
async fn attachments_live_in_an_s3_compatible_store() {
    let s3 = S3Server::start().await;
    let settings = s3.config();
    let server = server!(move |config| {
        small_chunks(config);
        config.attachments.s3 = Some(settings);
    });
    let (alice, bob, conversation) = pair(&server).await;
    let file = ciphertext(2_345, 5);
    let id = start_ok(&server, &alice.token(), &conversation, &file).await;
    let (status, upload) = patch(&server, &alice.token(), &id, 0, &file[..1_500]).await;
    assert_eq!((status, upload["offset"].as_u64()), (StatusCode::OK, Some(1_500)), "{upload}");
    let (status, upload) = patch(&server, &alice.token(), &id, 1_500, &file[1_500..]).await;
    assert_eq!((status, upload["complete"].as_bool()), (StatusCode::OK, Some(true)), "{upload}");
    assert!(!server.config.data_dir.join("attachments").exists(), "nothing on the local disk");
    let chunks = s3.objects().into_iter().filter(|path| path.to_string_lossy().contains(&id)).count();
    assert!(chunks >= 3, "one object per chunk: {:?}", s3.objects());

    assert_eq!(download(&server, &bob.token(), &id, None).await.bytes().await.unwrap().as_ref(), file.as_slice());
    let part = download(&server, &bob.token(), &id, Some("bytes=900-2100")).await;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &file[900..2101]);

    let objects = || s3.objects().into_iter().filter(|path| path.to_string_lossy().contains("/roost-test/")).count();
    drop((alice, bob));
    expiry_deletes_the_bytes(&server, objects).await;
}

/// A TTL conversation's attachment goes with the TTL, bytes and all; `stored` counts the bytes'
/// files in the storage.
async fn expiry_deletes_the_bytes(server: &TestServer, stored: impl Fn() -> usize) {
    let alice = server.user("ttl-alice").await;
    let bob = server.user("ttl-bob").await;
    let retention = json!({"policy": "ttl", "ttl_secs": 60});
    let conversation = create(server, &alice.token(), "direct", &[bob.devices[0].id()], Some(retention)).await;
    let before = stored();
    let file = ciphertext(2_100, 4);
    let id = upload_all(server, &alice.token(), &conversation, &file).await;
    assert!(stored() > before, "the bytes are stored");
    server.services.attachments.prune().await.unwrap();
    assert_eq!(download(server, &bob.token(), &id, None).await.status(), StatusCode::OK);

    server.clock().advance_ms(60_000);
    assert_eq!(download(server, &bob.token(), &id, None).await.status(), StatusCode::NOT_FOUND, "expired for readers");
    server.services.attachments.prune().await.unwrap();
    assert_eq!(stored(), before, "the bytes are deleted");
    let status = server.get(&format!("/v1/attachments/{id}/upload"), Some(&alice.token())).await;
    assert_error(&status, StatusCode::NOT_FOUND, "not_found");

    // An upload that stops short is kept for a day to be resumed, then deleted with its bytes.
    let permanent = create(server, &alice.token(), "group", &[bob.devices[0].id()], None).await;
    let file = ciphertext(2_500, 9);
    let id = start_ok(server, &alice.token(), &permanent, &file).await;
    let (status, upload) = patch(server, &alice.token(), &id, 0, &file[..1_700]).await;
    assert_eq!((status, upload["offset"].as_u64()), (StatusCode::OK, Some(1_700)));
    assert!(stored() > before);
    server.clock().advance_ms(86_400_000 - 1);
    server.services.attachments.prune().await.unwrap();
    let (_, upload) = server.get(&format!("/v1/attachments/{id}/upload"), Some(&alice.token())).await;
    assert_eq!(upload["offset"], 1_700, "still resumable within the day");
    server.clock().advance_ms(1);
    server.services.attachments.prune().await.unwrap();
    assert_eq!(stored(), before, "an abandoned upload's bytes are deleted");
    let status = server.get(&format!("/v1/attachments/{id}/upload"), Some(&alice.token())).await;
    assert_error(&status, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn burn_on_read_attachments_go_once_every_other_device_fetched_them() {
    let server = server!(small_chunks);
    let mut alice = server.user("alice").await;
    server.link_device(&mut alice).await;
    let bob = server.user("bob").await;
    let retention = json!({"policy": "burn_on_read"});
    let members = [alice.devices[1].id(), bob.devices[0].id()];
    let conversation = create(&server, &alice.token(), "direct", &members, Some(retention)).await;
    let file = ciphertext(1_200, 6);
    let id = upload_all(&server, &alice.token(), &conversation, &file).await;

    // Neither a HEAD nor a range short of the end is a fetch.
    let head = server.http.head(server.url(&format!("/v1/attachments/{id}"))).bearer_auth(bob.token()).send().await;
    let head = head.unwrap();
    let announced = head.headers()[reqwest::header::CONTENT_LENGTH].to_str().unwrap().to_owned();
    assert_eq!((head.status(), announced), (StatusCode::OK, file.len().to_string()));
    assert_eq!(download(&server, &bob.token(), &id, Some("bytes=0-99")).await.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(download(&server, &alice.devices[1].token(), &id, None).await.status(), StatusCode::OK);
    server.services.attachments.prune().await.unwrap();
    assert_eq!(download(&server, &bob.token(), &id, None).await.status(), StatusCode::OK, "bob had not fetched it");
    server.services.attachments.prune().await.unwrap();
    assert_eq!(download(&server, &bob.token(), &id, None).await.status(), StatusCode::NOT_FOUND, "burned");
    assert_eq!(count_files(&server.config.data_dir.join("attachments")), 0);
}

#[tokio::test]
async fn a_slow_reader_is_served_what_it_asks_for_over_raw_tcp() {
    let server = server!(small_chunks);
    let (alice, bob, conversation) = pair(&server).await;
    let file = ciphertext(3_000, 8);
    let id = upload_all(&server, &alice.token(), &conversation, &file).await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "GET /v1/attachments/{id} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nRange: bytes=100-\r\nConnection: close\r\n\r\n",
        bob.token()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await.unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&response[..split]).to_lowercase();
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert!(head.contains("content-length: 2900"), "{head}");
    assert!(head.contains("accept-ranges: bytes"), "{head}");
    assert_eq!(&response[split..], &file[100..]);
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|entry| if entry.path().is_dir() { count_files(&entry.path()) } else { 1 }).sum()
}

#[tokio::test]
async fn pruning_leaves_an_upload_being_written_and_takes_it_once_abandoned() {
    let server = server!(small_chunks);
    let (alice, _bob, conversation) = pair(&server).await;
    let file = ciphertext(3_000, 2);
    let id = start_ok(&server, &alice.token(), &conversation, &file).await;
    // A PATCH that stays open: the request is writing the upload.
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "PATCH /v1/attachments/{id} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Upload-Offset: 0\r\nContent-Length: {}\r\n\r\n",
        alice.token(),
        file.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&file[..1_200]).await.unwrap();
    let mut offset = 0;
    for _ in 0..200 {
        let (_, upload) = server.get(&format!("/v1/attachments/{id}/upload"), Some(&alice.token())).await;
        offset = upload["offset"].as_u64().unwrap();
        if offset == 1_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(offset, 1_000);
    server.clock().advance_ms(86_400_000);
    assert_eq!(server.services.attachments.prune().await.unwrap(), 0, "the upload in progress is left alone");
    drop(socket);
    let mut deleted = 0;
    for _ in 0..200 {
        deleted += server.services.attachments.prune().await.unwrap();
        if deleted == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(deleted, 1, "once the request is gone the abandoned upload goes");
    assert_eq!(count_files(&server.config.data_dir.join("attachments")), 0);
}
