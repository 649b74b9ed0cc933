//! Challenge-response authentication, sessions and every refusal code.

use reqwest::{Method, StatusCode};
use roost_proto::api::ChallengeResponse;
use roost_proto::bytes;
use serde_json::json;

use super::common::{TestDevice, TestServer, assert_error};

async fn fresh_challenge(server: &TestServer, device: &TestDevice) -> Vec<u8> {
    let (status, body) = server.challenge(&device.id()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let challenge: ChallengeResponse = serde_json::from_value(body).unwrap();
    assert_eq!(challenge.challenge.as_bytes().len(), 32);
    assert_eq!(challenge.expires_at, super::common::START_MS + 60_000);
    challenge.challenge.into_vec()
}

#[tokio::test]
async fn login_whoami_and_logout() {
    let server = server!();
    let alice = server.user("alice").await;
    let token = alice.token();

    let (status, me) = server.get("/v1/auth/session", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["user_id"], alice.id().to_string());
    assert_eq!(me["device_id"], alice.devices[0].id().to_string());

    let (status, _) = server.call(Method::DELETE, "/v1/auth/session", Some(&token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_error(&server.get("/v1/auth/session", Some(&token)).await, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_error(&server.get("/v1/keys/packages", Some(&token)).await, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn a_challenge_cannot_be_replayed() {
    let server = server!();
    let alice = server.user("alice").await;
    let device = &alice.devices[0];
    let challenge = fresh_challenge(&server, device).await;
    let signature = device.sign_auth("roost.test", &challenge);

    let first = server.answer(&device.id(), &bytes::encode(&challenge), &signature).await;
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
    let replay = server.answer(&device.id(), &bytes::encode(&challenge), &signature).await;
    assert_error(&replay, StatusCode::UNAUTHORIZED, "challenge_used");
}

#[tokio::test]
async fn concurrent_answers_to_one_challenge_open_one_session() {
    let server = server!();
    let alice = server.user("alice").await;
    let device = &alice.devices[0];
    let challenge = fresh_challenge(&server, device).await;
    let signature = device.sign_auth("roost.test", &challenge);
    let encoded = bytes::encode(&challenge);
    let id = device.id();
    let answers = futures::future::join_all((0..10).map(|_| server.answer(&id, &encoded, &signature))).await;
    let created = answers.iter().filter(|(status, _)| *status == StatusCode::CREATED).count();
    assert_eq!(created, 1);
    for refused in answers.iter().filter(|(status, _)| *status != StatusCode::CREATED) {
        assert_error(refused, StatusCode::UNAUTHORIZED, "challenge_used");
    }
}

#[tokio::test]
async fn expired_foreign_unknown_and_wrongly_signed_challenges_are_refused() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let (a, b) = (&alice.devices[0], &bob.devices[0]);

    // Foreign: bob's device answers a challenge issued to alice's device.
    let challenge = fresh_challenge(&server, a).await;
    let foreign = server.answer(&b.id(), &bytes::encode(&challenge), &b.sign_auth("roost.test", &challenge)).await;
    assert_error(&foreign, StatusCode::UNAUTHORIZED, "challenge_foreign");

    // Wrong signatures: another key, another server name, garbage. None consumes the challenge.
    let by_other_key = server.answer(&a.id(), &bytes::encode(&challenge), &b.sign_auth("roost.test", &challenge)).await;
    assert_error(&by_other_key, StatusCode::UNAUTHORIZED, "auth_signature_invalid");
    let other_server = server.answer(&a.id(), &bytes::encode(&challenge), &a.sign_auth("elsewhere", &challenge)).await;
    assert_error(&other_server, StatusCode::UNAUTHORIZED, "auth_signature_invalid");
    let garbage = server.answer(&a.id(), &bytes::encode(&challenge), &[7; 64]).await;
    assert_error(&garbage, StatusCode::UNAUTHORIZED, "auth_signature_invalid");
    let short = server.answer(&a.id(), &bytes::encode(&challenge), &[7; 12]).await;
    assert_error(&short, StatusCode::UNAUTHORIZED, "auth_signature_invalid");

    // Expired: 60 s later the same, correctly signed answer is refused.
    server.clock().advance_ms(60_001);
    let expired = server.answer(&a.id(), &bytes::encode(&challenge), &a.sign_auth("roost.test", &challenge)).await;
    assert_error(&expired, StatusCode::UNAUTHORIZED, "challenge_expired");

    // Unknown: a challenge the server never issued.
    let made_up = [9u8; 32];
    let unknown = server.answer(&a.id(), &bytes::encode(&made_up), &a.sign_auth("roost.test", &made_up)).await;
    assert_error(&unknown, StatusCode::UNAUTHORIZED, "challenge_unknown");
}

#[tokio::test]
async fn an_unknown_device_cannot_authenticate() {
    let server = server!();
    let stranger = TestDevice::new();
    assert_error(&server.challenge(&stranger.id()).await, StatusCode::UNAUTHORIZED, "device_unknown");

    // Even with a challenge issued to a real device, the stranger gets nowhere.
    let alice = server.user("alice").await;
    let challenge = fresh_challenge(&server, &alice.devices[0]).await;
    let answer =
        server.answer(&stranger.id(), &bytes::encode(&challenge), &stranger.sign_auth("roost.test", &challenge)).await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, "challenge_foreign");
}

#[tokio::test]
async fn sessions_expire() {
    let server = server!(|config| config.limits.session_ttl_secs = 3600);
    let alice = server.user("alice").await;
    let (status, _) = server.get("/v1/auth/session", Some(&alice.token())).await;
    assert_eq!(status, StatusCode::OK);
    server.clock().advance_ms(3_600_000);
    assert_error(
        &server.get("/v1/auth/session", Some(&alice.token())).await,
        StatusCode::UNAUTHORIZED,
        "session_expired",
    );
}

#[tokio::test]
async fn malformed_credentials_are_unauthenticated() {
    let server = server!();
    for token in ["", "rst_not-a-real-token", "nonsense", &"x".repeat(4000)] {
        let response = server.get("/v1/auth/session", Some(token)).await;
        assert_error(&response, StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    let basic = server
        .http
        .get(server.url("/v1/auth/session"))
        .header("authorization", "Basic YWxpY2U6cHc=")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(basic.headers()["www-authenticate"], "Bearer");
    let missing = server.get("/v1/auth/session", None).await;
    assert_error(&missing, StatusCode::UNAUTHORIZED, "unauthenticated");
    let bad_body =
        server.post("/v1/auth/session", None, json!({"device_id": "short", "challenge": "", "signature": ""})).await;
    assert_error(&bad_body, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument");
}
