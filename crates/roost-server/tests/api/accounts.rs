//! Registration, devices, linking, revocation, handles and invites.

use ed25519_dalek::{Signature, VerifyingKey};
use reqwest::{Method, StatusCode};
use roost_proto::api::{DeviceList, LinkRequest, LinkState};
use roost_proto::signing::{self, HandleAction};
use roost_proto::{Handle, bytes};
use roost_server::config::RegistrationPolicy;
use roost_testkit::TestDatabase;
use serde_json::json;

use super::common::{START_MS, TestDevice, TestServer, TestUser, assert_error, random_key, registration};

pub fn handle_body(user: &TestUser, action: HandleAction, handle: &str, timestamp: i64) -> serde_json::Value {
    let handle: Handle = handle.parse().unwrap();
    json!({"timestamp": timestamp, "signature": user.sign(&signing::handle_message(action, &user.id(), &handle, timestamp))})
}

fn revoke_body(user: &TestUser, device: &roost_proto::DeviceId) -> serde_json::Value {
    json!({"signature": user.sign(&signing::revoke_device_message(&user.id(), device))})
}

#[tokio::test]
async fn two_users_with_three_devices_register_link_and_authenticate() {
    let server = server!();
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    server.link_device(&mut alice).await;
    server.link_device(&mut alice).await;
    server.link_device(&mut bob).await;
    server.link_device(&mut bob).await;

    for user in [&alice, &bob] {
        for device in &user.devices {
            let (status, me) = server.get("/v1/auth/session", Some(&device.token())).await;
            assert_eq!(status, StatusCode::OK, "{me}");
            assert_eq!(me["user_id"], user.id().to_string());
            assert_eq!(me["device_id"], device.id().to_string());
        }
    }

    // Alice sees her own devices with names; bob sees them without, and can verify each
    // certificate against alice's identity key.
    let (status, own) = server.get(&format!("/v1/users/{}/devices", alice.id()), Some(&alice.token())).await;
    assert_eq!(status, StatusCode::OK);
    let own: DeviceList = serde_json::from_value(own).unwrap();
    assert_eq!(own.devices.len(), 3);
    assert_eq!(own.devices[0].name.as_deref(), Some("alice's first device"));
    assert_eq!(own.devices[1].name.as_deref(), Some("linked"));

    let (status, seen) = server.get(&format!("/v1/users/{}/devices", alice.id()), Some(&bob.token())).await;
    assert_eq!(status, StatusCode::OK);
    let seen: DeviceList = serde_json::from_value(seen).unwrap();
    let identity = VerifyingKey::from_bytes(alice.id().as_bytes()).unwrap();
    let ids: Vec<_> = seen.devices.iter().map(|d| d.device_id).collect();
    assert_eq!(ids, alice.devices.iter().map(TestDevice::id).collect::<Vec<_>>());
    for device in &seen.devices {
        assert_eq!(device.name, None, "names are private to their user");
        let signature = Signature::from_slice(device.certificate.as_bytes()).unwrap();
        identity
            .verify_strict(&signing::device_certificate_message(&alice.id(), &device.device_id), &signature)
            .unwrap();
    }

    let unknown = random_key();
    let unknown_id = roost_proto::UserId::from_bytes(unknown.verifying_key().to_bytes());
    assert_error(
        &server.get(&format!("/v1/users/{unknown_id}/devices"), Some(&bob.token())).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn registration_is_refused_without_a_valid_certificate_and_changes_nothing() {
    let server = server!();
    let identity = random_key();
    let device = TestDevice::new();

    // Certificate made by a different identity key.
    let mut forged = registration(&identity, &device, "mallory");
    forged["device_certificate"] = registration(&random_key(), &device, "x")["device_certificate"].clone();
    assert_error(&server.post("/v1/users", None, forged).await, StatusCode::UNPROCESSABLE_ENTITY, "signature_invalid");
    // Certificate for another device.
    let mut swapped = registration(&identity, &device, "mallory");
    swapped["device_certificate"] = registration(&identity, &TestDevice::new(), "x")["device_certificate"].clone();
    assert_error(&server.post("/v1/users", None, swapped).await, StatusCode::UNPROCESSABLE_ENTITY, "signature_invalid");
    // Device name too long, unknown fields, bad key encodings.
    let mut long_name = registration(&identity, &device, "m");
    long_name["device_name"] = json!("x".repeat(65));
    assert_error(
        &server.post("/v1/users", None, long_name).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_argument",
    );
    let mut extra = registration(&identity, &device, "m");
    extra["admin"] = json!(true);
    assert_error(&server.post("/v1/users", None, extra).await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument");
    let mut bad_key = registration(&identity, &device, "m");
    bad_key["identity_key"] = json!("AAAA");
    assert_error(&server.post("/v1/users", None, bad_key).await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument");

    // Nothing was created: the proper registration still succeeds, once.
    let (status, body) = server.post("/v1/users", None, registration(&identity, &device, "m")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_error(
        &server.post("/v1/users", None, registration(&identity, &device, "m")).await,
        StatusCode::CONFLICT,
        "user_exists",
    );
    // The same device key under another identity.
    assert_error(
        &server.post("/v1/users", None, registration(&random_key(), &device, "m")).await,
        StatusCode::CONFLICT,
        "device_exists",
    );
}

#[tokio::test]
async fn link_requests_are_approved_once_by_the_right_identity() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let newcomer = TestDevice::new();

    let (status, body) = server.post("/v1/links", None, json!({"device_id": newcomer.id()})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let link: LinkRequest = serde_json::from_value(body).unwrap();
    assert_eq!(link.state, LinkState::Pending);
    // Asking again while pending shows the same request.
    let (status, again) = server.post("/v1/links", None, json!({"device_id": newcomer.id()})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(again["link_code"], link.link_code);

    // The newcomer cannot authenticate yet.
    assert_error(&server.challenge(&newcomer.id()).await, StatusCode::UNAUTHORIZED, "device_unknown");

    // Bob cannot approve with a certificate from alice's identity key: the certificate must come
    // from the approver's own identity.
    let path = format!("/v1/links/{}/approve", link.link_code);
    let stolen = json!({"device_certificate": alice.certify(&newcomer.id())});
    assert_error(
        &server.post(&path, Some(&bob.token()), stolen).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "signature_invalid",
    );
    // Without a session nobody can approve.
    let unauthenticated = server.post(&path, None, json!({"device_certificate": alice.certify(&newcomer.id())})).await;
    assert_error(&unauthenticated, StatusCode::UNAUTHORIZED, "unauthenticated");

    // Lower-case codes work too.
    let lower = format!("/v1/links/{}/approve", link.link_code.to_lowercase());
    let (status, body) =
        server.post(&lower, Some(&alice.token()), json!({"device_certificate": alice.certify(&newcomer.id())})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["user_id"], alice.id().to_string());

    let again =
        server.post(&path, Some(&alice.token()), json!({"device_certificate": alice.certify(&newcomer.id())})).await;
    assert_error(&again, StatusCode::CONFLICT, "link_already_approved");

    let (status, polled) = server.get(&format!("/v1/links/{}", link.link_code), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(polled["state"], "approved");
    assert_eq!(polled["user_id"], alice.id().to_string());
    assert_eq!(polled["certificate"], alice.certify(&newcomer.id()));

    // A registered key cannot ask to be linked again.
    assert_error(
        &server.post("/v1/links", None, json!({"device_id": newcomer.id()})).await,
        StatusCode::CONFLICT,
        "device_exists",
    );
    assert_error(&server.get("/v1/links/ZZZZ-ZZZZ", None).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&server.get("/v1/links/not-a-code", None).await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument");
}

#[tokio::test]
async fn link_requests_lapse_and_devices_are_capped() {
    let server = server!(|config| config.limits.max_devices_per_user = 2);
    let mut alice = server.user("alice").await;
    server.link_device(&mut alice).await;

    let third = TestDevice::new();
    let (_, body) = server.post("/v1/links", None, json!({"device_id": third.id()})).await;
    let code = body["link_code"].as_str().unwrap().to_owned();
    let approve = server
        .post(
            &format!("/v1/links/{code}/approve"),
            Some(&alice.token()),
            json!({"device_certificate": alice.certify(&third.id())}),
        )
        .await;
    assert_error(&approve, StatusCode::CONFLICT, "device_limit_reached");

    server.clock().advance_ms(600_000);
    assert_error(&server.get(&format!("/v1/links/{code}"), None).await, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn revocation_is_signed_by_the_identity_and_takes_effect_at_once() {
    let server = server!();
    let mut alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let second = server.link_device(&mut alice).await;
    let target = alice.devices[second].id();
    let target_token = alice.devices[second].token();
    let (status, _) = server
        .post(
            "/v1/keys/packages",
            Some(&target_token),
            json!({"one_time": [bytes::encode(b"kp-1")], "last_resort": bytes::encode(b"kp-lr")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let path = format!("/v1/devices/{target}/revoke");
    // Bob cannot revoke alice's device, not even by replaying alice's own signature.
    assert_error(
        &server.post(&path, Some(&bob.token()), revoke_body(&alice, &target)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &server.post(&path, Some(&bob.token()), revoke_body(&bob, &target)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // A signature by a device key instead of the identity key does not count.
    let by_device = json!({"signature": bytes::encode(&ed25519_dalek::Signer::sign(&alice.devices[0].key, &signing::revoke_device_message(&alice.id(), &target)).to_bytes())});
    assert_error(
        &server.post(&path, Some(&alice.token()), by_device).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "signature_invalid",
    );
    // Nothing changed so far.
    let (status, _) = server.get("/v1/auth/session", Some(&target_token)).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = server.post(&path, Some(&alice.token()), revoke_body(&alice, &target)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_error(
        &server.get("/v1/auth/session", Some(&target_token)).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_error(&server.challenge(&target).await, StatusCode::UNAUTHORIZED, "device_revoked");
    let (_, devices) = server.get(&format!("/v1/users/{}/devices", alice.id()), Some(&bob.token())).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1);
    // Its KeyPackages went with it.
    assert_error(
        &server.post("/v1/keys/claim", Some(&bob.token()), json!({"device_ids": [target]})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Revoking again is harmless; a revoked key can never be linked again.
    let (status, _) = server.post(&path, Some(&alice.token()), revoke_body(&alice, &target)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_error(
        &server.post("/v1/links", None, json!({"device_id": target})).await,
        StatusCode::CONFLICT,
        "device_exists",
    );
    let unknown = TestDevice::new().id();
    assert_error(
        &server
            .post(&format!("/v1/devices/{unknown}/revoke"), Some(&alice.token()), revoke_body(&alice, &unknown))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn handles_are_claimed_with_signatures_and_unique() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;

    let claim = handle_body(&alice, HandleAction::Claim, "alice", START_MS);
    let (status, body) = server.post("/v1/handles/alice/claim", Some(&alice.token()), claim.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, resolved) = server.get("/v1/handles/@alice", Some(&bob.token())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resolved, json!({"handle": "alice", "user_id": alice.id()}));
    let (_, me) = server.get("/v1/auth/session", Some(&alice.token())).await;
    assert_eq!(me["handle"], "alice");
    // A user's device list names its handle, so clients can show @alice for a user id.
    let (status, devices) = server.get(&format!("/v1/users/{}/devices", alice.id()), Some(&bob.token())).await;
    assert_eq!((status, &devices["handle"]), (StatusCode::OK, &json!("alice")));
    let (_, devices) = server.get(&format!("/v1/users/{}/devices", bob.id()), Some(&alice.token())).await;
    assert!(devices.get("handle").is_none(), "bob holds no handle: {devices}");

    // Bob can neither take it nor release it, even by replaying alice's signed request.
    let bobs = handle_body(&bob, HandleAction::Claim, "alice", START_MS);
    assert_error(
        &server.post("/v1/handles/alice/claim", Some(&bob.token()), bobs).await,
        StatusCode::CONFLICT,
        "handle_taken",
    );
    assert_error(
        &server.post("/v1/handles/alice/claim", Some(&bob.token()), claim).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "signature_invalid",
    );
    let release_as_bob = handle_body(&bob, HandleAction::Release, "alice", START_MS);
    assert_error(
        &server.post("/v1/handles/alice/release", Some(&bob.token()), release_as_bob).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // A claim signature is not a release signature.
    let wrong_action = handle_body(&alice, HandleAction::Claim, "alice", START_MS);
    assert_error(
        &server.post("/v1/handles/alice/release", Some(&alice.token()), wrong_action).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "signature_invalid",
    );
    // Stale requests are refused.
    let stale = handle_body(&alice, HandleAction::Claim, "ally", START_MS - 3_600_000);
    assert_error(
        &server.post("/v1/handles/ally/claim", Some(&alice.token()), stale).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "timestamp_out_of_range",
    );
    assert_error(
        &server.get("/v1/handles/Not-Valid", Some(&bob.token())).await,
        StatusCode::BAD_REQUEST,
        "malformed_request",
    );
    assert_error(&server.get("/v1/handles/alice", None).await, StatusCode::UNAUTHORIZED, "unauthenticated");

    let release = handle_body(&alice, HandleAction::Release, "alice", START_MS);
    let (status, _) = server.post("/v1/handles/alice/release", Some(&alice.token()), release).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_error(&server.get("/v1/handles/alice", Some(&bob.token())).await, StatusCode::NOT_FOUND, "not_found");
    let (_, devices) = server.get(&format!("/v1/users/{}/devices", alice.id()), Some(&bob.token())).await;
    assert!(devices.get("handle").is_none(), "released: {devices}");
    let (status, _) = server
        .post("/v1/handles/alice/claim", Some(&bob.token()), handle_body(&bob, HandleAction::Claim, "alice", START_MS))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn invite_only_registration_uses_codes_from_the_admin_command() {
    let Some(database) = TestDatabase::create(crate::BACKEND).await else { return };
    let mut config = roost_testkit::config_for(&database);
    let mut admin = std::process::Command::new(env!("CARGO_BIN_EXE_roostd"));
    admin.arg("--data-dir").arg(database.data_dir());
    if let Some(url) = &config.database_url {
        admin.args(["--database-url", url]);
    }
    let output = admin.args(["admin", "invite", "--count", "2"]).output().expect("run roostd admin invite");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let codes: Vec<String> = String::from_utf8(output.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(codes.len(), 2);

    config.registration = RegistrationPolicy::InviteOnly;
    let server = TestServer::start_on(database, config).await;

    let identity = random_key();
    let device = TestDevice::new();
    let plain = registration(&identity, &device, "carol");
    assert_error(&server.post("/v1/users", None, plain.clone()).await, StatusCode::FORBIDDEN, "invite_required");
    let mut bad = plain.clone();
    bad["invite_code"] = json!("inv_made_up");
    assert_error(&server.post("/v1/users", None, bad).await, StatusCode::FORBIDDEN, "invite_invalid");
    let mut good = plain.clone();
    good["invite_code"] = json!(codes[0]);
    let (status, body) = server.post("/v1/users", None, good).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut reused = registration(&random_key(), &TestDevice::new(), "dave");
    reused["invite_code"] = json!(codes[0]);
    assert_error(&server.post("/v1/users", None, reused).await, StatusCode::FORBIDDEN, "invite_invalid");
    let mut second = registration(&random_key(), &TestDevice::new(), "erin");
    second["invite_code"] = json!(codes[1]);
    assert_eq!(server.post("/v1/users", None, second).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn registrations_are_rate_limited_per_address() {
    let server = server!(|config| config.rate_limits.registrations_per_address = 2);
    for name in ["a", "b"] {
        let (status, body) =
            server.post("/v1/users", None, registration(&random_key(), &TestDevice::new(), name)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let response = server
        .http
        .request(Method::POST, server.url("/v1/users"))
        .json(&registration(&random_key(), &TestDevice::new(), "c"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
}

/// Registers `name` as sent by a proxy that says the request came from `forwarded_for`.
async fn register_forwarded(server: &TestServer, name: &str, forwarded_for: &str) -> StatusCode {
    register_with_header(server, name, "x-forwarded-for", forwarded_for).await
}

/// Registers `name` with the header `header: value`.
async fn register_with_header(server: &TestServer, name: &str, header: &str, value: &str) -> StatusCode {
    let response = server
        .http
        .request(Method::POST, server.url("/v1/users"))
        .header(header, value)
        .json(&registration(&random_key(), &TestDevice::new(), name))
        .send()
        .await
        .unwrap();
    response.status()
}

#[tokio::test]
async fn behind_a_trusted_proxy_per_address_limits_key_on_the_forwarded_client() {
    let server = server!(|config| {
        config.rate_limits.registrations_per_address = 2;
        config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    });
    // The test talks from 127.0.0.1, a listed proxy: each forwarded client has its own quota.
    assert_eq!(register_forwarded(&server, "a1", "198.51.100.1").await, StatusCode::CREATED);
    assert_eq!(register_forwarded(&server, "a2", "203.0.113.9, 198.51.100.1").await, StatusCode::CREATED);
    assert_eq!(register_forwarded(&server, "a3", "198.51.100.1").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(register_forwarded(&server, "b1", "198.51.100.2").await, StatusCode::CREATED);
    // A forged entry left of the client's does not give the client a fresh quota.
    assert_eq!(register_forwarded(&server, "a4", "192.0.2.77, 198.51.100.1").await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn proxies_that_write_the_standard_forwarded_header_are_read_when_configured() {
    let server = server!(|config| {
        config.rate_limits.registrations_per_address = 2;
        config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        config.forwarded_header = roost_server::http::forwarded::ForwardedHeader::Forwarded;
    });
    let forwarded = |server, name, value| register_with_header(server, name, "forwarded", value);
    assert_eq!(forwarded(&server, "a1", "for=198.51.100.1;proto=https").await, StatusCode::CREATED);
    assert_eq!(forwarded(&server, "a2", r#"for="[2001:db8::1]:4711""#).await, StatusCode::CREATED);
    assert_eq!(forwarded(&server, "a3", "for=198.51.100.1").await, StatusCode::CREATED);
    assert_eq!(forwarded(&server, "a4", "for=192.0.2.7, for=198.51.100.1").await, StatusCode::TOO_MANY_REQUESTS);
    // X-Forwarded-For is not read now: these all count against 127.0.0.1.
    assert_eq!(register_forwarded(&server, "b1", "203.0.113.1").await, StatusCode::CREATED);
    assert_eq!(register_forwarded(&server, "b2", "203.0.113.2").await, StatusCode::CREATED);
    assert_eq!(register_forwarded(&server, "b3", "203.0.113.3").await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn from_a_peer_not_listed_the_forwarded_header_is_ignored() {
    let server = server!(|config| {
        config.rate_limits.registrations_per_address = 2;
        config.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    });
    // Every request claims another client; all of them are 127.0.0.1's.
    assert_eq!(register_forwarded(&server, "a1", "198.51.100.1").await, StatusCode::CREATED);
    assert_eq!(register_forwarded(&server, "a2", "198.51.100.2").await, StatusCode::CREATED);
    assert_eq!(register_forwarded(&server, "a3", "198.51.100.3").await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn accounts_survive_a_restart() {
    let server = server!();
    let alice = server.user("alice").await;
    let token = alice.token();
    let config = server.config.clone();
    let database = server.stop().await;

    let server = TestServer::start_on(database, config).await;
    let (status, me) = server.get("/v1/auth/session", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["user_id"], alice.id().to_string());
}
