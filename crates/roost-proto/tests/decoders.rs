//! Property tests of everything in the protocol that parses network input: ids, handles, byte
//! strings, request bodies, WebSocket client frames and the signed-statement layouts. Each
//! property runs `PROPTEST_CASES` cases (256 by default; CI runs the default, docs/operations.md
//! gives the command for a long run).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: failing loudly is the point.

use std::str::FromStr;

use proptest::prelude::*;
use roost_proto::api::*;
use roost_proto::conversation::*;
use roost_proto::signing::{self, HandleAction};
use roost_proto::socket::ClientFrame;
use roost_proto::{Base64Bytes, DeviceId, Handle, UserId, bytes};
use serde_json::Value;

/// Any JSON value, nested a few levels, with strings that are sometimes ids, handles or
/// base64url (so decoders see near-misses, not only noise).
fn json() -> impl Strategy<Value = Value> {
    let text = prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_-]{0,44}",
        "@?[a-z][a-z0-9_.]{0,33}",
        Just("AAAAAAAAAAAAAAAAAAAAAA".to_owned()),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text.prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        let keys = prop_oneof![
            "[a-z_]{1,24}",
            Just("type".to_owned()),
            Just("conversation_id".to_owned()),
            Just("epoch".to_owned()),
            Just("ciphertext".to_owned()),
            Just("token".to_owned()),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6).prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Decodes `value` and `raw` as `T`; whatever succeeds must encode and decode to the same.
fn decodes_consistently<T>(value: &Value, raw: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let decoded = [serde_json::from_value::<T>(value.clone()).ok(), serde_json::from_slice::<T>(raw).ok()];
    for decoded in decoded.into_iter().flatten() {
        let again: T = serde_json::from_value(serde_json::to_value(&decoded).unwrap()).unwrap();
        assert_eq!(again, decoded);
    }
}

proptest! {
    #[test]
    fn ids_parse_only_their_canonical_text(text in prop_oneof![any::<String>(), "[A-Za-z0-9_=+/-]{20,46}"]) {
        if let Ok(user) = UserId::from_str(&text) {
            prop_assert_eq!(user.to_string(), text.clone());
        }
        if let Ok(device) = DeviceId::from_str(&text) {
            prop_assert_eq!(device.to_string(), text.clone());
        }
        if let Ok(conversation) = ConversationId::from_str(&text) {
            prop_assert_eq!(conversation.to_string(), text.clone());
        }
    }

    #[test]
    fn every_id_survives_its_text(key in any::<[u8; 32]>(), conversation in any::<[u8; 16]>()) {
        let user = UserId::from_bytes(key);
        prop_assert_eq!(user.to_string().parse::<UserId>().unwrap(), user);
        let device = DeviceId::from_bytes(key);
        prop_assert_eq!(device.to_string().parse::<DeviceId>().unwrap(), device);
        let id = ConversationId::from_bytes(conversation);
        prop_assert_eq!(id.to_string().parse::<ConversationId>().unwrap(), id);
    }

    #[test]
    fn handles_are_what_the_rule_says(text in prop_oneof![any::<String>(), "@?[a-z0-9_.A-Z-]{0,34}"]) {
        let bare = text.strip_prefix('@').unwrap_or(&text);
        let valid = (3..=32).contains(&bare.len())
            && bare.starts_with(|c: char| c.is_ascii_lowercase())
            && bare.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
        match Handle::from_str(&text) {
            Ok(handle) => {
                prop_assert!(valid, "{text:?} was accepted");
                prop_assert_eq!(handle.as_str(), bare);
            }
            Err(_) => prop_assert!(!valid, "{text:?} was refused"),
        }
    }

    #[test]
    fn byte_strings_decode_only_canonical_base64url(text in prop_oneof![any::<String>(), "[A-Za-z0-9_=+/-]{0,16}"]) {
        if let Ok(decoded) = bytes::decode(&text) {
            prop_assert_eq!(bytes::encode(&decoded), text.clone());
        }
        if let Ok(Base64Bytes(decoded)) = serde_json::from_value::<Base64Bytes>(Value::String(text.clone())) {
            prop_assert_eq!(bytes::encode(&decoded), text);
        }
    }

    #[test]
    fn request_bodies_and_client_frames_decode_without_surprises(value in json(), raw in prop::collection::vec(any::<u8>(), 0..64)) {
        decodes_consistently::<ClientFrame>(&value, &raw);
        decodes_consistently::<RegisterRequest>(&value, &raw);
        decodes_consistently::<RevokeDeviceRequest>(&value, &raw);
        decodes_consistently::<LinkStartRequest>(&value, &raw);
        decodes_consistently::<LinkApproveRequest>(&value, &raw);
        decodes_consistently::<ChallengeRequest>(&value, &raw);
        decodes_consistently::<SessionRequest>(&value, &raw);
        decodes_consistently::<HandleRequest>(&value, &raw);
        decodes_consistently::<KeyPackageUpload>(&value, &raw);
        decodes_consistently::<KeyClaimRequest>(&value, &raw);
        decodes_consistently::<CreateConversationRequest>(&value, &raw);
        decodes_consistently::<CommitRequest>(&value, &raw);
        decodes_consistently::<ExternalJoinRequest>(&value, &raw);
        decodes_consistently::<SendRequest>(&value, &raw);
        decodes_consistently::<LeaveRequest>(&value, &raw);
        decodes_consistently::<RetentionPolicy>(&value, &raw);
        decodes_consistently::<ReadMarkerRequest>(&value, &raw);
        decodes_consistently::<Settings>(&value, &raw);
        decodes_consistently::<AckRequest>(&value, &raw);
        decodes_consistently::<DeviceMessageRequest>(&value, &raw);
    }

    #[test]
    fn client_frames_survive_their_json(
        token in any::<String>(),
        conversation in any::<[u8; 16]>(),
        flag in any::<bool>(),
        seq in any::<u64>(),
        client_message_id in "[ -~]{1,64}",
        ciphertext in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let conversation_id = ConversationId::from_bytes(conversation);
        let frames = [
            ClientFrame::Auth { token },
            ClientFrame::Typing { conversation_id, active: flag },
            ClientFrame::Presence { visible: flag },
            ClientFrame::Ack(AckRequest {
                conversations: vec![ConversationAck { conversation_id, seq }],
                queue_up_to: flag.then_some(seq),
            }),
            ClientFrame::Send {
                conversation_id,
                client_message_id,
                epoch: seq,
                ciphertext: Base64Bytes(ciphertext),
                ephemeral: flag,
            },
        ];
        for frame in frames {
            let text = serde_json::to_string(&frame).unwrap();
            prop_assert_eq!(serde_json::from_str::<ClientFrame>(&text).unwrap(), frame);
        }
    }

    /// Different statements never share a signed byte string: the labels separate purposes and
    /// the length prefixes separate fields, so no signature can be replayed as another.
    #[test]
    fn signed_statements_are_unambiguous(
        names in (any::<String>(), any::<String>()),
        challenges in (prop::collection::vec(any::<u8>(), 0..40), prop::collection::vec(any::<u8>(), 0..40)),
        keys in (any::<[u8; 32]>(), any::<[u8; 32]>()),
        handles in ("[a-z][a-z0-9_.]{2,31}", "[a-z][a-z0-9_.]{2,31}"),
        times in (any::<i64>(), any::<i64>()),
    ) {
        let (user, device) = (UserId::from_bytes(keys.0), DeviceId::from_bytes(keys.1));
        let first = signing::auth_message(&names.0, &device, &challenges.0);
        let second = signing::auth_message(&names.1, &device, &challenges.1);
        prop_assert_eq!(first == second, names.0 == names.1 && challenges.0 == challenges.1);

        let (handle_a, handle_b): (Handle, Handle) = (handles.0.parse().unwrap(), handles.1.parse().unwrap());
        let claim = signing::handle_message(HandleAction::Claim, &user, &handle_a, times.0);
        let other = signing::handle_message(HandleAction::Claim, &user, &handle_b, times.1);
        prop_assert_eq!(claim == other, handle_a == handle_b && times.0 == times.1);
        let release = signing::handle_message(HandleAction::Release, &user, &handle_a, times.0);
        prop_assert_ne!(&claim, &release);

        let statements = [
            signing::device_certificate_message(&user, &device),
            signing::revoke_device_message(&user, &device),
            first,
            claim,
        ];
        for (i, a) in statements.iter().enumerate() {
            for b in &statements[i + 1..] {
                prop_assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn link_codes_are_eight_crockford_characters(key in any::<[u8; 32]>()) {
        let code = signing::link_code(&DeviceId::from_bytes(key));
        prop_assert_eq!(code.len(), 9);
        prop_assert_eq!(&code[4..5], "-");
        prop_assert!(code.chars().filter(|c| *c != '-').all(|c| "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(c)));
    }
}
