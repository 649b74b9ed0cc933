//! Golden vectors: the JSON of every content type, as docs/protocol.md fixes it. Another client
//! (in another language) must produce and read exactly these.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: failing loudly is the point.

use roost_client::content::CallAction;
use roost_client::{Attachment, Content};
use serde_json::{Value, json};

/// The JSON inside the padded encoding.
fn json_of(content: &Content) -> Value {
    let bytes = content.encode().expect("encodes");
    assert_eq!(bytes.len() % 256, 0, "padded to 256 bytes");
    let length = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert!(bytes[4 + length..].iter().all(|byte| *byte == 0), "zero padding");
    serde_json::from_slice(&bytes[4..4 + length]).expect("JSON")
}

/// The padded encoding of `json`, as another client would write it.
fn encoded(json: &Value) -> Vec<u8> {
    let text = serde_json::to_vec(json).unwrap();
    let mut bytes = (text.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&text);
    bytes.resize(bytes.len().div_ceil(256) * 256, 0);
    bytes
}

/// One example of every content type, with its fixed JSON.
fn content_vectors() -> Vec<(Content, Value)> {
    let user = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";
    vec![
        (Content::Text { body: "hi".into() }, json!({"v": 1, "type": "text", "body": "hi"})),
        (
            Content::Reply { to_seq: 4, body: "yes".into() },
            json!({"v": 1, "type": "reply", "to_seq": 4, "body": "yes"}),
        ),
        (
            Content::Reaction { to_seq: 4, emoji: "👍".into(), remove: false },
            json!({"v": 1, "type": "reaction", "to_seq": 4, "emoji": "👍"}),
        ),
        (
            Content::Reaction { to_seq: 4, emoji: "👍".into(), remove: true },
            json!({"v": 1, "type": "reaction", "to_seq": 4, "emoji": "👍", "remove": true}),
        ),
        (
            Content::Edit { to_seq: 4, body: "hello".into() },
            json!({"v": 1, "type": "edit", "to_seq": 4, "body": "hello"}),
        ),
        (Content::Delete { to_seq: 4 }, json!({"v": 1, "type": "delete", "to_seq": 4})),
        (
            Content::Attachment(Attachment {
                id: "AAECAwQFBgcICQoLDA0ODw".into(),
                key: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8".into(),
                digest: "GSWcDj0po55A_lIN8Ixs4egY-NJwDgEjeQcwGpqltMw".into(),
                name: "cat.png".into(),
                size: 5,
                media_type: Some("image/png".into()),
                width: Some(640),
                height: Some(480),
                duration_ms: None,
                thumbnail: None,
            }),
            json!({"v": 1, "type": "attachment", "id": "AAECAwQFBgcICQoLDA0ODw",
                   "key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
                   "digest": "GSWcDj0po55A_lIN8Ixs4egY-NJwDgEjeQcwGpqltMw", "name": "cat.png", "size": 5,
                   "media_type": "image/png", "width": 640, "height": 480}),
        ),
        (
            Content::Location {
                latitude_e7: 525_162_770,
                longitude_e7: 133_777_030,
                accuracy_m: Some(20),
                label: None,
            },
            json!({"v": 1, "type": "location", "latitude_e7": 525_162_770, "longitude_e7": 133_777_030, "accuracy_m": 20}),
        ),
        (
            Content::Contact {
                name: "Carol".into(),
                user_id: Some(user.into()),
                handle: Some("carol".into()),
                phone: None,
                email: Some("carol@example.com".into()),
            },
            json!({"v": 1, "type": "contact", "name": "Carol", "user_id": user, "handle": "carol",
                   "email": "carol@example.com"}),
        ),
        (
            Content::Poll { question: "lunch?".into(), options: vec!["pizza".into(), "sushi".into()], multiple: true },
            json!({"v": 1, "type": "poll", "question": "lunch?", "options": ["pizza", "sushi"], "multiple": true}),
        ),
        (
            Content::PollVote { to_seq: 9, choices: vec![1] },
            json!({"v": 1, "type": "poll_vote", "to_seq": 9, "choices": [1]}),
        ),
        (Content::PollClose { to_seq: 9 }, json!({"v": 1, "type": "poll_close", "to_seq": 9})),
        (
            Content::Call {
                call_id: "c1".into(),
                action: CallAction::Offer,
                sdp: Some("v=0".into()),
                candidate: None,
                video: true,
            },
            json!({"v": 1, "type": "call", "call_id": "c1", "action": "offer", "sdp": "v=0", "video": true}),
        ),
        (
            Content::Call {
                call_id: "c1".into(),
                action: CallAction::Ice,
                sdp: None,
                candidate: Some("candidate:1".into()),
                video: false,
            },
            json!({"v": 1, "type": "call", "call_id": "c1", "action": "ice", "candidate": "candidate:1"}),
        ),
        (
            Content::Call {
                call_id: "c1".into(),
                action: CallAction::Hangup,
                sdp: None,
                candidate: None,
                video: false,
            },
            json!({"v": 1, "type": "call", "call_id": "c1", "action": "hangup"}),
        ),
        (
            Content::MissedCall { call_id: "c1".into(), video: false },
            json!({"v": 1, "type": "missed_call", "call_id": "c1"}),
        ),
        (
            Content::Profile { display_name: Some("Alice L.".into()) },
            json!({"v": 1, "type": "profile", "display_name": "Alice L."}),
        ),
    ]
}

#[test]
fn every_content_type_has_its_fixed_json() {
    for (content, json) in content_vectors() {
        assert_eq!(json_of(&content), json, "{content:?} encodes as fixed");
        assert_eq!(Content::decode(&encoded(&json)).unwrap(), content, "{json} decodes");
    }
}

#[test]
fn optional_fields_may_be_left_out_and_newer_types_are_kept_as_unknown() {
    let bare = json!({"v": 1, "type": "location", "latitude_e7": 1, "longitude_e7": -2});
    let Content::Location { accuracy_m: None, label: None, .. } = Content::decode(&encoded(&bare)).unwrap() else {
        unreachable!("a location without its optional fields")
    };
    let single = json!({"v": 1, "type": "poll", "question": "?", "options": ["a", "b"]});
    let Content::Poll { multiple: false, .. } = Content::decode(&encoded(&single)).unwrap() else {
        unreachable!("a single-choice poll")
    };
    let newer = json!({"v": 2, "type": "sticker", "pack": "cats"});
    assert_eq!(Content::decode(&encoded(&newer)).unwrap(), Content::Unknown { type_name: "sticker".into() });
}

/// A sealed file, byte for byte: the key 00 01 .. 1f sealing "hello" (one chunk, the last) and
/// 65,537 bytes of 0x61 (two chunks), as protocol.md describes the sealing. The digests were
/// checked against an independent ChaCha20-Poly1305 (Python's `cryptography`).
#[test]
fn files_are_sealed_exactly_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let key = roost_client::files::FileKey::from_slice(&(0u8..32).collect::<Vec<_>>()).unwrap();
    for (plaintext, sealed_length, digest) in [
        (b"hello".to_vec(), 21, "GSWcDj0po55A_lIN8Ixs4egY-NJwDgEjeQcwGpqltMw"),
        (vec![0x61; 65_537], 65_537 + 32, "ISbYl33xCAhzVNda3liqTldBzmMRIu13OHkA9iHiwz0"),
    ] {
        let path = dir.path().join("file");
        std::fs::write(&path, &plaintext).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (length, sha256) = runtime.block_on(roost_client::files::seal_digest(&path, &key)).unwrap();
        assert_eq!(length, sealed_length);
        assert_eq!(roost_proto::bytes::encode(&sha256), digest);
    }
}

/// `tests/vectors.json` holds these vectors for other clients' tests (the TypeScript SDK's
/// among them): the content examples with this SDK's padded encoding, a safety number and the
/// file sealing examples. This test fails if the file is not exactly what this SDK produces;
/// `ROOST_WRITE_VECTORS=1 cargo test -p roost-client --test content` rewrites it.
#[test]
fn the_shared_vectors_file_is_what_this_sdk_produces() {
    use roost_proto::bytes::encode as b64;
    let content: Vec<Value> = content_vectors()
        .into_iter()
        .map(|(content, json)| json!({"json": json, "encoded": b64(&content.encode().unwrap())}))
        .collect();
    let newer = json!({"v": 2, "type": "sticker", "pack": "cats"});
    let (a, b) = (roost_proto::UserId::from_bytes([1; 32]), roost_proto::UserId::from_bytes([2; 32]));
    let key: Vec<u8> = (0u8..32).collect();
    let vectors = json!({
        "about": "Shared test vectors of the Roost client protocol (docs/protocol.md), written by the Rust SDK's tests/content.rs.",
        "content": content,
        "unknown_content": {"encoded": b64(&encoded(&newer)), "type": "sticker"},
        "safety_number": {"a": a, "b": b, "number": roost_client::keys::safety_number(&a, &b)},
        "file_sealing": {
            "key": b64(&key),
            "chunk_bytes": roost_client::files::CHUNK,
            "cases": [
                {"plaintext": b64(b"hello"), "sealed": "013910b55edac89809baedce66eec68b2fa929a901",
                 "sealed_length": 21, "sha256": "GSWcDj0po55A_lIN8Ixs4egY-NJwDgEjeQcwGpqltMw"},
                {"plaintext_byte": 0x61, "plaintext_length": 65_537, "sealed_length": 65_569,
                 "sha256": "ISbYl33xCAhzVNda3liqTldBzmMRIu13OHkA9iHiwz0"},
            ],
        },
    });
    let text = format!("{}\n", serde_json::to_string_pretty(&vectors).unwrap());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.json");
    if std::env::var_os("ROOST_WRITE_VECTORS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), text, "tests/vectors.json is stale: rewrite it");
}
