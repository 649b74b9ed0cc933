//! Golden tests: the exact JSON of every wire type and the exact bytes of every signed statement.
//! A failure here means the protocol changed; update docs/protocol.md and bump what must be
//! bumped before updating the expected text.
#![allow(clippy::unwrap_used)] // Test code: failing loudly is the point.

use roost_proto::api::*;
use roost_proto::signing::{self, HandleAction};
use roost_proto::{Base64Bytes, DeviceId, ErrorBody, ErrorCode, Handle, UserId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const USER: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";
const DEVICE: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI";

fn user() -> UserId {
    UserId::from_bytes([1; 32])
}

fn device() -> DeviceId {
    DeviceId::from_bytes([2; 32])
}

/// Serializes to exactly `expected` and parses back to the same value.
#[track_caller]
fn golden<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T, expected: Value) {
    assert_eq!(serde_json::to_value(value).unwrap(), expected);
    assert_eq!(&serde_json::from_value::<T>(expected).unwrap(), value);
}

#[test]
fn ids_are_unpadded_base64url() {
    assert_eq!(user().to_string(), USER);
    assert_eq!(device().to_string(), DEVICE);
}

#[test]
fn error_body() {
    golden(
        &ErrorBody::new(ErrorCode::ChallengeUsed, "this challenge has already been used"),
        json!({"error": {"code": "challenge_used", "message": "this challenge has already been used"}}),
    );
    let codes: Vec<Value> = [
        ErrorCode::MalformedRequest,
        ErrorCode::InvalidArgument,
        ErrorCode::PayloadTooLarge,
        ErrorCode::AuthSignatureInvalid,
        ErrorCode::KeyPackageLimitReached,
        ErrorCode::RateLimited,
    ]
    .iter()
    .map(|code| serde_json::to_value(code).unwrap())
    .collect();
    assert_eq!(
        codes,
        vec![
            json!("malformed_request"),
            json!("invalid_argument"),
            json!("payload_too_large"),
            json!("auth_signature_invalid"),
            json!("key_package_limit_reached"),
            json!("rate_limited"),
        ]
    );
}

#[test]
fn registration() {
    golden(
        &RegisterRequest {
            identity_key: user(),
            device_id: device(),
            device_certificate: Base64Bytes(vec![0xAB; 4]),
            device_name: Some("laptop".into()),
            invite_code: None,
        },
        json!({"identity_key": USER, "device_id": DEVICE, "device_certificate": "q6urqw", "device_name": "laptop", "invite_code": null}),
    );
    golden(
        &RegisterResponse {
            user_id: user(),
            device: Device {
                device_id: device(),
                user_id: user(),
                certificate: Base64Bytes(vec![0xAB; 4]),
                name: None,
                created_at: 1_700_000_000_000,
            },
        },
        json!({"user_id": USER, "device": {"device_id": DEVICE, "user_id": USER, "certificate": "q6urqw", "created_at": 1_700_000_000_000_i64}}),
    );
}

#[test]
fn links() {
    golden(
        &LinkRequest {
            link_code: "ABCD-EFGH".into(),
            device_id: device(),
            state: LinkState::Pending,
            user_id: None,
            certificate: None,
            expires_at: 5,
        },
        json!({"link_code": "ABCD-EFGH", "device_id": DEVICE, "state": "pending", "expires_at": 5}),
    );
    golden(
        &LinkRequest {
            link_code: "ABCD-EFGH".into(),
            device_id: device(),
            state: LinkState::Approved,
            user_id: Some(user()),
            certificate: Some(Base64Bytes(vec![1, 2, 3])),
            expires_at: 5,
        },
        json!({"link_code": "ABCD-EFGH", "device_id": DEVICE, "state": "approved", "user_id": USER, "certificate": "AQID", "expires_at": 5}),
    );
    golden(
        &LinkApproveRequest { device_certificate: Base64Bytes(vec![1, 2, 3]), device_name: None },
        json!({"device_certificate": "AQID", "device_name": null}),
    );
}

#[test]
fn authentication() {
    golden(&ChallengeRequest { device_id: device() }, json!({"device_id": DEVICE}));
    golden(
        &ChallengeResponse {
            challenge: Base64Bytes(vec![0; 3]),
            server_name: "roost.example".into(),
            expires_at: 60_000,
        },
        json!({"challenge": "AAAA", "server_name": "roost.example", "expires_at": 60_000}),
    );
    golden(
        &SessionRequest {
            device_id: device(),
            challenge: Base64Bytes(vec![0; 3]),
            signature: Base64Bytes(vec![0xff; 2]),
        },
        json!({"device_id": DEVICE, "challenge": "AAAA", "signature": "__8"}),
    );
    golden(
        &SessionResponse { token: "rst_abc".into(), user_id: user(), device_id: device(), expires_at: 9 },
        json!({"token": "rst_abc", "user_id": USER, "device_id": DEVICE, "expires_at": 9}),
    );
    golden(
        &WhoAmI { user_id: user(), device_id: device(), handle: Some("alice".parse().unwrap()), expires_at: 9 },
        json!({"user_id": USER, "device_id": DEVICE, "handle": "alice", "expires_at": 9}),
    );
}

#[test]
fn devices_and_handles() {
    golden(&RevokeDeviceRequest { signature: Base64Bytes(vec![7]) }, json!({"signature": "Bw"}));
    golden(
        &HandleRequest { timestamp: 42, signature: Base64Bytes(vec![7]) },
        json!({"timestamp": 42, "signature": "Bw"}),
    );
    golden(
        &HandleRecord { handle: "alice".parse().unwrap(), user_id: user() },
        json!({"handle": "alice", "user_id": USER}),
    );
    golden(&DeviceList { user_id: user(), handle: None, devices: vec![] }, json!({"user_id": USER, "devices": []}));
    golden(
        &DeviceList { user_id: user(), handle: Some("alice".parse().unwrap()), devices: vec![] },
        json!({"user_id": USER, "handle": "alice", "devices": []}),
    );
}

#[test]
fn key_directory() {
    golden(
        &KeyPackageUpload {
            one_time: vec![Base64Bytes(vec![1]), Base64Bytes(vec![2])],
            last_resort: Some(Base64Bytes(vec![3])),
        },
        json!({"one_time": ["AQ", "Ag"], "last_resort": "Aw"}),
    );
    golden(
        &KeyPackageCount { one_time: 3, last_resort: true, max_one_time: 200 },
        json!({"one_time": 3, "last_resort": true, "max_one_time": 200}),
    );
    golden(
        &KeyClaimRequest { user_ids: vec![user()], device_ids: vec![] },
        json!({"user_ids": [USER], "device_ids": []}),
    );
    golden(
        &KeyClaimResponse {
            packages: vec![ClaimedKeyPackage {
                user_id: user(),
                device_id: device(),
                key_package: Base64Bytes(vec![9]),
                last_resort: false,
            }],
            missing: vec![device()],
        },
        json!({"packages": [{"user_id": USER, "device_id": DEVICE, "key_package": "CQ", "last_resort": false}], "missing": [DEVICE]}),
    );
    // Omitted lists default to empty.
    let empty: KeyClaimRequest = serde_json::from_value(json!({"device_ids": [DEVICE]})).unwrap();
    assert!(empty.user_ids.is_empty());
}

#[test]
fn signed_statements_have_fixed_layouts() {
    let hex = |bytes: Vec<u8>| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let ones = "01".repeat(32);
    let twos = "02".repeat(32);
    assert_eq!(
        hex(signing::device_certificate_message(&user(), &device())),
        format!("{}{ones}{twos}", hex(b"roost/v1/device-certificate\0".to_vec()))
    );
    assert_eq!(
        hex(signing::auth_message("roost.example", &device(), &[0xaa, 0xbb])),
        format!("{}000d{}{twos}aabb", hex(b"roost/v1/auth\0".to_vec()), hex(b"roost.example".to_vec()))
    );
    assert_eq!(
        hex(signing::revoke_device_message(&user(), &device())),
        format!("{}{ones}{twos}", hex(b"roost/v1/revoke-device\0".to_vec()))
    );
    let handle: Handle = "alice".parse().unwrap();
    assert_eq!(
        hex(signing::handle_message(HandleAction::Release, &user(), &handle, 1)),
        format!(
            "{}{}{ones}0005{}0000000000000001",
            hex(b"roost/v1/handle\0".to_vec()),
            hex(b"release\0".to_vec()),
            hex(b"alice".to_vec())
        )
    );
    // First 40 bits of SHA-256("roost/v1/link-code\0" || device) in Crockford base32.
    assert_eq!(signing::link_code(&device()), "M2AF-57YW");
}

#[test]
fn malformed_ids_and_bytes_are_refused() {
    for bad in [json!({"device_id": "AQ"}), json!({"device_id": format!("{DEVICE}=")}), json!({"device_id": 7})] {
        assert!(serde_json::from_value::<ChallengeRequest>(bad).is_err());
    }
    assert!(serde_json::from_value::<RevokeDeviceRequest>(json!({"signature": "a+b/"})).is_err());
    assert!(serde_json::from_value::<ChallengeRequest>(json!({"device_id": DEVICE, "extra": 1})).is_err());
}

mod conversations {
    use roost_proto::conversation::*;
    use roost_proto::{Base64Bytes, ConversationId};
    use serde_json::json;

    use super::{DEVICE, USER, device, golden, user};

    const CONVERSATION: &str = "BwcHBwcHBwcHBwcHBwcHBw";

    fn conversation() -> ConversationId {
        ConversationId::from_bytes([7; 16])
    }

    #[test]
    fn conversation_ids_are_16_bytes() {
        assert_eq!(conversation().to_string(), CONVERSATION);
        assert!("BwcHBwcHBwcHBwcHBwcH".parse::<ConversationId>().is_err());
    }

    #[test]
    fn create_commit_join_send() {
        golden(
            &CreateConversationRequest {
                conversation_id: conversation(),
                kind: ConversationKind::Direct,
                epoch: 1,
                group_info: Base64Bytes(vec![1]),
                members: vec![device()],
                welcome: Some(Base64Bytes(vec![2])),
                retention: Some(RetentionPolicy::Ttl { ttl_secs: 60 }),
            },
            json!({"conversation_id": CONVERSATION, "kind": "direct", "epoch": 1, "group_info": "AQ",
                   "members": [DEVICE], "welcome": "Ag", "retention": {"policy": "ttl", "ttl_secs": 60}}),
        );
        golden(
            &CommitRequest {
                epoch: 4,
                commit: Base64Bytes(vec![3]),
                group_info: Base64Bytes(vec![4]),
                add: vec![device()],
                welcome: Some(Base64Bytes(vec![5])),
                remove: vec![],
            },
            json!({"epoch": 4, "commit": "Aw", "group_info": "BA", "add": [DEVICE], "welcome": "BQ", "remove": []}),
        );
        golden(&CommitAccepted { seq: 9, epoch: 5 }, json!({"seq": 9, "epoch": 5}));
        golden(
            &ExternalJoinRequest { epoch: 5, commit: Base64Bytes(vec![6]), group_info: Base64Bytes(vec![7]) },
            json!({"epoch": 5, "commit": "Bg", "group_info": "Bw"}),
        );
        golden(
            &SendRequest {
                client_message_id: "m-1".into(),
                epoch: 5,
                ciphertext: Base64Bytes(vec![8]),
                ephemeral: false,
            },
            json!({"client_message_id": "m-1", "epoch": 5, "ciphertext": "CA", "ephemeral": false}),
        );
        golden(
            &SendAccepted { seq: Some(10), created_at: 99, duplicate: true },
            json!({"seq": 10, "created_at": 99, "duplicate": true}),
        );
        golden(
            &SendAccepted { seq: None, created_at: 99, duplicate: false },
            json!({"created_at": 99, "duplicate": false}),
        );
        golden(&RetentionPolicy::BurnOnRead, json!({"policy": "burn_on_read"}));
        golden(&RetentionPolicy::Permanent, json!({"policy": "permanent"}));
    }

    #[test]
    fn sync_and_ack() {
        golden(
            &SyncResponse {
                entries: vec![Entry {
                    conversation_id: conversation(),
                    seq: 3,
                    kind: EntryKind::Message,
                    sender_user: user(),
                    sender_device: device(),
                    epoch: 2,
                    payload: Base64Bytes(vec![9]),
                    created_at: 77,
                }],
                queue: vec![QueueEntry {
                    id: 12,
                    kind: QueueKind::Welcome,
                    conversation_id: Some(conversation()),
                    seq: Some(0),
                    sender_device: Some(device()),
                    payload: Base64Bytes(vec![10]),
                    created_at: 76,
                }],
                cursor: Some("abc".into()),
            },
            json!({
                "entries": [{"conversation_id": CONVERSATION, "seq": 3, "kind": "message", "sender_user": USER,
                             "sender_device": DEVICE, "epoch": 2, "payload": "CQ", "created_at": 77}],
                "queue": [{"id": 12, "kind": "welcome", "conversation_id": CONVERSATION, "seq": 0,
                           "sender_device": DEVICE, "payload": "Cg", "created_at": 76}],
                "cursor": "abc"
            }),
        );
        golden(
            &AckRequest {
                conversations: vec![ConversationAck { conversation_id: conversation(), seq: 3 }],
                queue_up_to: Some(12),
            },
            json!({"conversations": [{"conversation_id": CONVERSATION, "seq": 3}], "queue_up_to": 12}),
        );
    }

    #[test]
    fn conversation_list() {
        golden(
            &ConversationList {
                conversations: vec![ConversationSummary {
                    conversation_id: conversation(),
                    kind: ConversationKind::Group,
                    epoch: 2,
                    members: vec![Member { user_id: user(), read_seq: Some(1) }],
                    last_seq: 3,
                    read_seq: 1,
                    unread: 2,
                    retention: RetentionPolicy::BurnOnRead,
                    joined_seq: 0,
                }],
                cursor: None,
            },
            json!({"conversations": [{"conversation_id": CONVERSATION, "kind": "group", "epoch": 2,
                "members": [{"user_id": USER, "read_seq": 1}], "last_seq": 3, "read_seq": 1, "unread": 2,
                "retention": {"policy": "burn_on_read"}, "joined_seq": 0}]}),
        );
        golden(&Settings { read_receipts: false }, json!({"read_receipts": false}));
    }

    #[test]
    fn stale_epoch_errors_carry_the_current_epoch() {
        let mut body = roost_proto::ErrorBody::new(roost_proto::ErrorCode::StaleEpoch, "catch up");
        body.error.current_epoch = Some(6);
        golden(&body, json!({"error": {"code": "stale_epoch", "message": "catch up", "current_epoch": 6}}));
    }
}

mod socket_frames {
    use roost_proto::conversation::*;
    use roost_proto::socket::{ClientFrame, ServerFrame};
    use roost_proto::{Base64Bytes, ConversationId, ErrorCode};
    use serde_json::json;

    use super::{DEVICE, USER, device, golden, user};

    const CONVERSATION: &str = "BwcHBwcHBwcHBwcHBwcHBw";

    fn conversation() -> ConversationId {
        ConversationId::from_bytes([7; 16])
    }

    #[test]
    fn client_frames() {
        golden(&ClientFrame::Auth { token: "rst_x".into() }, json!({"type": "auth", "token": "rst_x"}));
        golden(
            &ClientFrame::Ack(AckRequest {
                conversations: vec![ConversationAck { conversation_id: conversation(), seq: 4 }],
                queue_up_to: None,
            }),
            json!({"type": "ack", "conversations": [{"conversation_id": CONVERSATION, "seq": 4}], "queue_up_to": null}),
        );
        golden(
            &ClientFrame::Typing { conversation_id: conversation(), active: true },
            json!({"type": "typing", "conversation_id": CONVERSATION, "active": true}),
        );
        golden(&ClientFrame::Presence { visible: false }, json!({"type": "presence", "visible": false}));
        assert!(serde_json::from_value::<ClientFrame>(json!({"type": "auth", "token": "t", "extra": 1})).is_err());
        assert!(serde_json::from_value::<ClientFrame>(json!({"type": "shout"})).is_err());
    }

    #[test]
    fn server_frames() {
        golden(
            &ServerFrame::Ready { user_id: user(), device_id: device() },
            json!({"type": "ready", "user_id": USER, "device_id": DEVICE}),
        );
        golden(
            &ServerFrame::Entry(Entry {
                conversation_id: conversation(),
                seq: 3,
                kind: EntryKind::Commit,
                sender_user: user(),
                sender_device: device(),
                epoch: 2,
                payload: Base64Bytes(vec![1]),
                created_at: 5,
            }),
            json!({"type": "entry", "conversation_id": CONVERSATION, "seq": 3, "kind": "commit", "sender_user": USER,
                   "sender_device": DEVICE, "epoch": 2, "payload": "AQ", "created_at": 5}),
        );
        golden(
            &ServerFrame::Queue(QueueEntry {
                id: 8,
                kind: QueueKind::KeysLow,
                conversation_id: None,
                seq: None,
                sender_device: None,
                payload: Base64Bytes(b"{}".to_vec()),
                created_at: 6,
            }),
            json!({"type": "queue", "id": 8, "kind": "keys_low", "payload": "e30", "created_at": 6}),
        );
        golden(&ServerFrame::QueueEmpty, json!({"type": "queue_empty"}));
        golden(
            &ServerFrame::Ephemeral {
                conversation_id: conversation(),
                sender_user: user(),
                sender_device: device(),
                epoch: 2,
                payload: Base64Bytes(vec![2]),
            },
            json!({"type": "ephemeral", "conversation_id": CONVERSATION, "sender_user": USER, "sender_device": DEVICE,
                   "epoch": 2, "payload": "Ag"}),
        );
        golden(
            &ServerFrame::Typing {
                conversation_id: conversation(),
                user_id: user(),
                device_id: device(),
                active: false,
            },
            json!({"type": "typing", "conversation_id": CONVERSATION, "user_id": USER, "device_id": DEVICE, "active": false}),
        );
        golden(
            &ServerFrame::ReadReceipt { conversation_id: conversation(), user_id: user(), seq: 9 },
            json!({"type": "read_receipt", "conversation_id": CONVERSATION, "user_id": USER, "seq": 9}),
        );
        golden(
            &ServerFrame::Presence { user_id: user(), online: true, last_seen: 10 },
            json!({"type": "presence", "user_id": USER, "online": true, "last_seen": 10}),
        );
        golden(&ServerFrame::DevicesChanged { user_id: user() }, json!({"type": "devices_changed", "user_id": USER}));
        golden(
            &ServerFrame::Error { code: ErrorCode::NotAMember, message: "no".into() },
            json!({"type": "error", "code": "not_a_member", "message": "no"}),
        );
    }

    #[test]
    fn close_codes_are_stable() {
        use roost_proto::socket::close::*;
        assert_eq!(
            [UNAUTHENTICATED, REPLACED, TOO_MANY_CONNECTIONS, REVOKED, IDLE, SLOW_CONSUMER, GOING_AWAY],
            [4001, 4002, 4003, 4004, 4005, 4008, 1001]
        );
    }
}
