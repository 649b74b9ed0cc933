//! The KeyPackage directory: uploads, caps, claims, fallback, concurrency and rate limits.

use std::collections::HashSet;

use reqwest::StatusCode;
use roost_proto::api::KeyClaimResponse;
use roost_proto::bytes;
use serde_json::{Value, json};

use super::common::assert_error;

fn packages(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| bytes::encode(format!("{prefix}-{i}").as_bytes())).collect()
}

fn claimed(body: Value) -> KeyClaimResponse {
    serde_json::from_value(body).expect("claim response")
}

#[tokio::test]
async fn upload_count_and_claim_with_last_resort_fallback() {
    let server = server!();
    let mut alice = server.user("alice").await;
    server.link_device(&mut alice).await;
    let bob = server.user("bob").await;

    for (i, device) in alice.devices.iter().enumerate() {
        let upload = json!({"one_time": packages(&format!("a{i}"), 2), "last_resort": bytes::encode(format!("a{i}-lr").as_bytes())});
        let (status, count) = server.post("/v1/keys/packages", Some(&device.token()), upload).await;
        assert_eq!(status, StatusCode::OK, "{count}");
        assert_eq!(count, json!({"one_time": 2, "last_resort": true, "max_one_time": 200}));
    }

    // Claiming by user returns one package per device of alice, oldest package first.
    let (status, body) = server.post("/v1/keys/claim", Some(&bob.token()), json!({"user_ids": [alice.id()]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = claimed(body);
    assert_eq!(first.packages.len(), 2);
    assert!(first.missing.is_empty());
    for (i, package) in first.packages.iter().enumerate() {
        assert_eq!(package.user_id, alice.id());
        assert_eq!(package.device_id, alice.devices[i].id());
        assert_eq!(package.key_package.as_bytes(), format!("a{i}-0").as_bytes());
        assert!(!package.last_resort);
    }
    let (_, count) = server.get("/v1/keys/packages", Some(&alice.devices[0].token())).await;
    assert_eq!(count["one_time"], 1);

    // Claiming by device; then the last resort once one-time packages are gone.
    let target = alice.devices[0].id();
    let (_, body) = server.post("/v1/keys/claim", Some(&bob.token()), json!({"device_ids": [target]})).await;
    assert_eq!(claimed(body).packages[0].key_package.as_bytes(), b"a0-1");
    for _ in 0..2 {
        let (_, body) = server.post("/v1/keys/claim", Some(&bob.token()), json!({"device_ids": [target]})).await;
        let package = &claimed(body).packages[0];
        assert!(package.last_resort);
        assert_eq!(package.key_package.as_bytes(), b"a0-lr");
    }

    // Alice claiming her own user gets her other device only; bob's device has nothing stored.
    let (_, body) =
        server.post("/v1/keys/claim", Some(&alice.token()), json!({"user_ids": [alice.id(), bob.id()]})).await;
    let own = claimed(body);
    assert_eq!(own.packages.iter().map(|p| p.device_id).collect::<Vec<_>>(), vec![alice.devices[1].id()]);
    assert_eq!(own.missing, vec![bob.devices[0].id()]);
}

#[tokio::test]
async fn uploads_respect_the_cap_and_size_limits() {
    let server = server!(|config| {
        config.limits.max_one_time_key_packages = 3;
        config.limits.max_key_package_bytes = 64;
    });
    let alice = server.user("alice").await;
    let token = alice.token();

    let (status, _) = server.post("/v1/keys/packages", Some(&token), json!({"one_time": packages("k", 2)})).await;
    assert_eq!(status, StatusCode::OK);
    let over = server.post("/v1/keys/packages", Some(&token), json!({"one_time": packages("more", 2)})).await;
    assert_error(&over, StatusCode::CONFLICT, "key_package_limit_reached");
    let (_, count) = server.get("/v1/keys/packages", Some(&token)).await;
    assert_eq!(count["one_time"], 2, "a refused upload stores nothing");

    let too_big = server.post("/v1/keys/packages", Some(&token), json!({"one_time": [bytes::encode(&[1; 65])]})).await;
    assert_error(&too_big, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let empty = server.post("/v1/keys/packages", Some(&token), json!({"one_time": [""]})).await;
    assert_error(&empty, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument");
    let nothing = server.post("/v1/keys/packages", Some(&token), json!({})).await;
    assert_error(&nothing, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument");
    let not_base64 = server.post("/v1/keys/packages", Some(&token), json!({"one_time": ["!!!"]})).await;
    assert_error(&not_base64, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument");
    let (_, count) = server.get("/v1/keys/packages", Some(&token)).await;
    assert_eq!(count, json!({"one_time": 2, "last_resort": false, "max_one_time": 3}));
}

#[tokio::test]
async fn claims_need_a_valid_session_and_real_targets() {
    let server = server!();
    let alice = server.user("alice").await;
    let body = json!({"user_ids": [alice.id()]});
    assert_error(&server.post("/v1/keys/claim", None, body.clone()).await, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_error(
        &server.post("/v1/keys/claim", Some("rst_forged"), body.clone()).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_error(
        &server.post("/v1/keys/packages", Some("rst_forged"), json!({"one_time": packages("x", 1)})).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_error(
        &server.post("/v1/keys/claim", Some(&alice.token()), json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_argument",
    );
    let stranger = super::common::TestDevice::new().id();
    assert_error(
        &server.post("/v1/keys/claim", Some(&alice.token()), json!({"device_ids": [stranger]})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let many: Vec<_> = (0..101).map(|_| super::common::TestDevice::new().id()).collect();
    assert_error(
        &server.post("/v1/keys/claim", Some(&alice.token()), json!({"device_ids": many})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_argument",
    );
}

#[tokio::test]
async fn fifty_concurrent_claimers_never_get_the_same_one_time_package() {
    let server = server!();
    let target = server.user("target").await;
    let upload = json!({"one_time": packages("otk", 10), "last_resort": bytes::encode(b"last-resort")});
    let (status, _) = server.post("/v1/keys/packages", Some(&target.token()), upload).await;
    assert_eq!(status, StatusCode::OK);

    let mut claimers = Vec::new();
    for i in 0..50 {
        claimers.push(server.user(&format!("claimer{i}")).await);
    }
    let body = json!({"user_ids": [target.id()]});
    let responses = futures::future::join_all(claimers.iter().map(|claimer| {
        server.post("/v1/keys/claim", Some(claimer.devices[0].token.as_deref().unwrap()), body.clone())
    }))
    .await;

    let mut one_time = Vec::new();
    let mut last_resort = 0;
    for (status, body) in responses {
        assert_eq!(status, StatusCode::OK, "{body}");
        let response = claimed(body);
        assert_eq!(response.packages.len(), 1);
        let package = &response.packages[0];
        if package.last_resort {
            assert_eq!(package.key_package.as_bytes(), b"last-resort");
            last_resort += 1;
        } else {
            one_time.push(package.key_package.clone().into_vec());
        }
    }
    let distinct: HashSet<_> = one_time.iter().cloned().collect();
    assert_eq!(one_time.len(), 10, "every one-time package handed out");
    assert_eq!(distinct.len(), 10, "none twice");
    assert_eq!(last_resort, 40);
    let (_, count) = server.get("/v1/keys/packages", Some(&target.token())).await;
    assert_eq!(count["one_time"], 0);
}

#[tokio::test]
async fn claims_are_rate_limited_per_requester_and_target() {
    let server = server!(|config| config.rate_limits.key_claims_per_pair = 2);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    for _ in 0..2 {
        let (status, _) = server.post("/v1/keys/claim", Some(&bob.token()), json!({"user_ids": [alice.id()]})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let limited = server.post("/v1/keys/claim", Some(&bob.token()), json!({"user_ids": [alice.id()]})).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Other pairs are unaffected.
    let (status, _) = server.post("/v1/keys/claim", Some(&bob.token()), json!({"user_ids": [carol.id()]})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.post("/v1/keys/claim", Some(&carol.token()), json!({"user_ids": [alice.id()]})).await;
    assert_eq!(status, StatusCode::OK);
}
