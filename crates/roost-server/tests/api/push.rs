//! Push notifications, checked by a push service played on 127.0.0.1 by an implementation
//! independent of roostd's (roost-testkit's `push/receiver.py`): it verifies each request's VAPID
//! token and decrypts the payload with the subscriber's private key.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use roost_testkit::push::{PushReceiver, ReceiverSubscription};
use serde_json::{Value, json};

use super::common::{TestServer, TestUser, assert_error};
use super::gateway::{Socket, direct, send};

async fn subscribe(server: &TestServer, token: &str, subscription: &ReceiverSubscription) {
    let (status, body) =
        server.call(Method::PUT, "/v1/push/subscription", Some(token), Some(subscription.body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["subscribed"], true, "{body}");
}

async fn subscribed(server: &TestServer, token: &str) -> bool {
    let (status, body) = server.get("/v1/push/subscription", Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["subscribed"].as_bool().unwrap()
}

/// Checks one push as the receiver saw it: a VAPID token signed by the server's key for the
/// receiver's origin, a payload that decrypts to the bare wake-up, and the delivery headers.
fn assert_wake_up(push: &Value, server_key: &str) {
    assert_eq!(push["vapid_problems"], json!([]), "{push}");
    assert_eq!(push["vapid_key"], server_key, "signed with the key the server publishes: {push}");
    assert_eq!(push["decrypt_error"], Value::Null, "{push}");
    assert_eq!(push["payload"], r#"{"type":"wake"}"#, "nothing but a wake-up: {push}");
    assert_eq!((push["ttl"].as_str(), push["urgency"].as_str()), (Some("86400"), Some("high")), "{push}");
    assert_eq!(push["topic"], "roost-wake", "{push}");
}

async fn server_key(server: &TestServer) -> String {
    let (status, body) = server.get("/v1/push/server-key", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let key = body["vapid_public_key"].as_str().unwrap().to_owned();
    assert_eq!(roost_proto::bytes::decode(&key).unwrap().len(), 65, "an uncompressed P-256 point");
    key
}

/// Alice, and bob and carol subscribed at the receiver (their subscriptions returned).
async fn bob_and_carol_subscribed(
    server: &TestServer,
    receiver: &PushReceiver,
) -> (TestUser, TestUser, TestUser, ReceiverSubscription, ReceiverSubscription) {
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let (bobs, carols) = (receiver.subscribe().await, receiver.subscribe().await);
    subscribe(server, &bob.token(), &bobs).await;
    subscribe(server, &carol.token(), &carols).await;
    (alice, bob, carol, bobs, carols)
}

/// Lets wake-ups that are not supposed to come have the time to come anyway.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(700)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_gets_one_wake_up_per_burst_until_it_syncs() {
    let Some(receiver) = PushReceiver::start().await else { return };
    let server = server!(|config| config.push.allow_http_loopback = true);
    let key = server_key(&server).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let bobs = receiver.subscribe().await;
    subscribe(&server, &bob.token(), &bobs).await;

    // The Welcome queued for bob wakes him...
    let id = direct(&server, &alice, &[&bob]).await;
    let first = receiver.wait_for(&bobs, 1).await;
    assert_wake_up(&first[0], &key);
    // ...and what follows before he comes back does not wake him again.
    for n in 0..20 {
        send(&server, &alice.token(), &id, &format!("m{n}")).await;
    }
    settle().await;
    assert_eq!(receiver.received(&bobs).await.len(), 1, "one wake-up until bob syncs");

    // Once bob has synced, the next message wakes him again, once for the whole burst.
    assert_eq!(server.get("/v1/sync", Some(&bob.token())).await.0, StatusCode::OK);
    for n in 20..30 {
        send(&server, &alice.token(), &id, &format!("m{n}")).await;
    }
    let second = receiver.wait_for(&bobs, 2).await;
    assert_wake_up(&second[1], &key);
    settle().await;
    assert_eq!(receiver.received(&bobs).await.len(), 2);

    // A socket counts as coming back too.
    let mut socket = Socket::connect(&server, &bob.token()).await;
    socket.drain().await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&server, &alice.token(), &id, "after-the-socket").await;
    receiver.wait_for(&bobs, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_device_and_the_sender_get_no_wake_up() {
    let Some(receiver) = PushReceiver::start().await else { return };
    let server = server!(|config| config.push.allow_http_loopback = true);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let (alices, bobs) = (receiver.subscribe().await, receiver.subscribe().await);
    subscribe(&server, &alice.token(), &alices).await;
    subscribe(&server, &bob.token(), &bobs).await;
    let mut socket = Socket::connect(&server, &bob.token()).await;
    socket.drain().await;

    let id = direct(&server, &alice, &[&bob]).await;
    let seq = send(&server, &alice.token(), &id, "hello").await;
    // Bob's socket gets the message live...
    loop {
        let frame = socket.next_frame().await;
        if frame["type"] == "entry" && frame["seq"] == seq {
            break;
        }
    }
    settle().await;
    // ...and neither bob (online) nor alice (the sender, offline) is woken for it.
    assert_eq!(receiver.received(&bobs).await.len(), 0);
    assert_eq!(receiver.received(&alices).await.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_subscription_is_deleted_and_failures_are_retried() {
    let Some(receiver) = PushReceiver::start().await else { return };
    let server = server!(|config| config.push.allow_http_loopback = true);
    let (alice, bob, carol, bobs, carols) = bob_and_carol_subscribed(&server, &receiver).await;
    receiver.answer_with(&bobs, &[410]).await;
    receiver.answer_with(&carols, &[503, 429, 201]).await;

    direct(&server, &alice, &[&bob, &carol]).await;
    // Bob's push service says the subscription is gone: the server forgets it.
    receiver.wait_for(&bobs, 1).await;
    let mut gone = false;
    for _ in 0..100 {
        if !subscribed(&server, &bob.token()).await {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "a 410 deletes the subscription");
    // Carol's is busy twice, then takes the wake-up.
    let pushes = receiver.wait_for(&carols, 3).await;
    let statuses: Vec<u64> = pushes.iter().map(|p| p["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![503, 429, 201]);
    assert!(pushes.iter().all(|p| p["payload"] == r#"{"type":"wake"}"#));
    assert!(subscribed(&server, &carol.token()).await, "a busy push service keeps the subscription");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_logged_out_devices_lose_their_subscription() {
    let Some(receiver) = PushReceiver::start().await else { return };
    let server = server!(|config| config.push.allow_http_loopback = true);
    let alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let laptop = server.link_device(&mut bob).await;
    let mut carol = server.user("carol").await;
    let (phones, laptops, carols) =
        (receiver.subscribe().await, receiver.subscribe().await, receiver.subscribe().await);
    subscribe(&server, &bob.token(), &phones).await;
    subscribe(&server, &bob.devices[laptop].token(), &laptops).await;
    subscribe(&server, &carol.token(), &carols).await;

    // Carol logs out: her subscription is gone (she sees so once she logs in again).
    let (status, _) = server.call(Method::DELETE, "/v1/auth/session", Some(&carol.token()), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    server.login(&mut carol.devices[0]).await;
    assert!(!subscribed(&server, &carol.token()).await);
    // Bob revokes his laptop: its subscription goes with it.
    let target = bob.devices[laptop].id();
    let signature = bob.sign(&roost_proto::signing::revoke_device_message(&bob.id(), &target));
    let (status, body) =
        server.post(&format!("/v1/devices/{target}/revoke"), Some(&bob.token()), json!({"signature": signature})).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    bob.devices.remove(laptop);

    // A group with all of them wakes only bob's phone.
    direct(&server, &alice, &[&bob, &carol]).await;
    receiver.wait_for(&phones, 1).await;
    settle().await;
    assert_eq!(receiver.received(&laptops).await.len(), 0, "the revoked laptop is not woken");
    assert_eq!(receiver.received(&carols).await.len(), 0, "the logged-out device is not woken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_checked_and_belong_to_their_device() {
    let server = server!();
    let bob = server.user("bob").await;
    let token = bob.token();
    let keys = json!({"p256dh": roost_proto::bytes::encode(&valid_point()), "auth": "AAAAAAAAAAAAAAAAAAAAAA"});
    let put = |endpoint: &str, keys: Value| json!({"endpoint": endpoint, "keys": keys});
    let call = |body: Value| server.call(Method::PUT, "/v1/push/subscription", Some(&token), Some(body));

    // Endpoints the server will not call, by default: not https, loopback, private, link-local,
    // with credentials.
    for endpoint in [
        "http://push.example.com/x",
        "http://127.0.0.1:9/x",
        "https://127.0.0.1/x",
        "https://localhost/x",
        "https://10.0.0.7/x",
        "https://169.254.169.254/latest",
        "https://[fd00::1]/x",
        "https://user:pw@push.example.com/x",
        "not a url",
    ] {
        assert_error(
            &call(put(endpoint, keys.clone())).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "push_endpoint_refused",
        );
    }
    // Keys that cannot be used.
    let bad_point = json!({"p256dh": roost_proto::bytes::encode(&[4; 65]), "auth": "AAAAAAAAAAAAAAAAAAAAAA"});
    let short_auth = json!({"p256dh": roost_proto::bytes::encode(&valid_point()), "auth": "AAAA"});
    for keys in [bad_point, short_auth, json!({"p256dh": "!!", "auth": "AAAAAAAAAAAAAAAAAAAAAA"})] {
        assert_error(
            &call(put("https://push.example.com/x", keys)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_argument",
        );
    }
    assert_error(
        &call(json!({"endpoint": "https://push.example.com/x"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_argument",
    );
    // Anonymous callers.
    let anonymous = server
        .call(Method::PUT, "/v1/push/subscription", None, Some(put("https://push.example.com/x", keys.clone())))
        .await;
    assert_error(&anonymous, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_error(&server.get("/v1/push/subscription", None).await, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(!subscribed(&server, &token).await, "nothing refused was stored");

    // A good one (padding allowed, as some browsers send it), replaced by the next, per device.
    let padded = json!({"p256dh": roost_proto::bytes::encode(&valid_point()), "auth": "AAAAAAAAAAAAAAAAAAAAAA=="});
    let (status, body) =
        call(json!({"endpoint": "https://push.example.com/a", "expirationTime": null, "keys": padded})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["endpoint"], "https://push.example.com/a");
    let (status, _) = call(put("https://push.example.com/b", keys.clone())).await;
    assert_eq!(status, StatusCode::OK);
    let (_, status_body) = server.get("/v1/push/subscription", Some(&token)).await;
    assert_eq!(status_body["endpoint"], "https://push.example.com/b");
    let carol = server.user("carol").await;
    assert!(!subscribed(&server, &carol.token()).await, "another device sees only its own");
    let (status, _) = server.call(Method::DELETE, "/v1/push/subscription", Some(&carol.token()), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(subscribed(&server, &token).await, "carol cannot remove bob's");
    let (status, _) = server.call(Method::DELETE, "/v1/push/subscription", Some(&token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!subscribed(&server, &token).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_can_list_push_services_or_turn_push_off() {
    let server = server!(|config| config.push.allowed_hosts = vec!["push.services.mozilla.com".into()]);
    let bob = server.user("bob").await;
    let keys = json!({"p256dh": roost_proto::bytes::encode(&valid_point()), "auth": "AAAAAAAAAAAAAAAAAAAAAA"});
    let listed = json!({"endpoint": "https://updates.push.services.mozilla.com/wpush/v2/x", "keys": keys});
    let other = json!({"endpoint": "https://fcm.googleapis.com/fcm/send/x", "keys": keys});
    let token = bob.token();
    let call = |body: Value| server.call(Method::PUT, "/v1/push/subscription", Some(&token), Some(body));
    assert_error(&call(other).await, StatusCode::UNPROCESSABLE_ENTITY, "push_endpoint_refused");
    assert_eq!(call(listed).await.0, StatusCode::OK);

    let off = server!(|config| config.push.enabled = false);
    let carol = off.user("carol").await;
    assert_error(&off.get("/v1/push/server-key", None).await, StatusCode::NOT_FOUND, "not_found");
    let body = json!({"endpoint": "https://push.example.com/x", "keys": keys});
    let refused = off.call(Method::PUT, "/v1/push/subscription", Some(&carol.token()), Some(body)).await;
    assert_error(&refused, StatusCode::NOT_FOUND, "not_found");
}

/// The VAPID key is made once and kept: a restarted server publishes the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_key_survives_a_restart() {
    let server = server!();
    let key = server_key(&server).await;
    let config = server.config.clone();
    let database = server.stop().await;
    let again = TestServer::start_on(database, config).await;
    assert_eq!(server_key(&again).await, key);
}

/// A P-256 public key (the generator point), uncompressed.
pub fn valid_point() -> Vec<u8> {
    let x = "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296";
    let y = "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
    let mut point = vec![4];
    for hex in [x, y] {
        point.extend((0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()));
    }
    point
}

/// A full wake-up queue drops wake-ups, counted in /metrics, never messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_wake_ups_and_counts_them_but_no_message() {
    let Some(receiver) = PushReceiver::start().await else { return };
    let server = server!(|config| {
        config.push.allow_http_loopback = true;
        config.push.queue = 1;
    });
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let dave = server.user("dave").await;
    let subscriptions = [receiver.subscribe().await, receiver.subscribe().await, receiver.subscribe().await];
    for (user, subscription) in [&bob, &carol, &dave].into_iter().zip(&subscriptions) {
        subscribe(&server, &user.token(), subscription).await;
    }
    // Whoever's push service is busy holds the one place, retrying.
    for subscription in &subscriptions {
        receiver.answer_with(subscription, &[503]).await;
    }

    let id = direct(&server, &alice, &[&bob, &carol, &dave]).await;
    let metrics = server.http.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    // Only this test fills a queue, so the count is exact even where tests share a registry.
    assert_eq!(counter(&metrics, "roost_push_dropped_total"), 2, "two of three wake-ups found no place: {metrics}");
    // Every Welcome is stored all the same, and messages still go through.
    for user in [&bob, &carol, &dave] {
        let (_, synced) = server.get("/v1/sync", Some(&user.token())).await;
        assert_eq!(synced["queue"][0]["kind"], "welcome", "{synced}");
    }
    send(&server, &alice.token(), &id, "still-sent").await;
}

/// A read position synced from another of the user's devices is stored for the device but wakes
/// nothing: there is nothing to show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_positions_from_the_users_other_devices_wake_nothing() {
    let Some(receiver) = PushReceiver::start().await else { return };
    let server = server!(|config| config.push.allow_http_loopback = true);
    let alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let laptop = server.link_device(&mut bob).await;
    let phones = receiver.subscribe().await;
    subscribe(&server, &bob.token(), &phones).await;

    let id = direct(&server, &alice, &[&bob]).await;
    let seq = send(&server, &alice.token(), &id, "hello").await;
    receiver.wait_for(&phones, 1).await;
    assert_eq!(server.get("/v1/sync", Some(&bob.token())).await.0, StatusCode::OK);

    // Bob reads on his laptop: his phone gets the read position in its queue, and no wake-up.
    let laptop_token = bob.devices[laptop].token();
    let (status, body) =
        server.post(&format!("/v1/conversations/{id}/read"), Some(&laptop_token), json!({"seq": seq})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    settle().await;
    assert_eq!(receiver.received(&phones).await.len(), 1);
    let (_, synced) = server.get("/v1/sync", Some(&bob.token())).await;
    assert!(synced["queue"].as_array().unwrap().iter().any(|item| item["kind"] == "read_marker"), "{synced}");
    // The next message does wake the phone.
    send(&server, &alice.token(), &id, "again").await;
    receiver.wait_for(&phones, 2).await;
}

/// A push service that never answers costs a bounded wait per try, and one that redirects is
/// not followed; either way the wake-up is given up, counted, and the next message tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_time_bound_and_follow_no_redirect() {
    let Some(receiver) = PushReceiver::start().await else { return };
    let server = server!(|config| {
        config.push.allow_http_loopback = true;
        config.push.timeout_secs = 1;
        config.push.max_attempts = 2;
    });
    let (alice, bob, carol, bobs, carols) = bob_and_carol_subscribed(&server, &receiver).await;
    receiver.answer_with(&bobs, &[0]).await;
    receiver.answer_with(&carols, &[307]).await;

    let id = direct(&server, &alice, &[&bob, &carol]).await;
    // Bob's service is tried twice (timed out, then again after the backoff), carol's once: the
    // redirect to the same endpoint is not followed.
    receiver.wait_for(&bobs, 2).await;
    // (At least: under `cargo test` other tests of this process count in the same registry.)
    let mut counted = (0, 0);
    for _ in 0..100 {
        let metrics = server.http.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
        counted = (
            counter(&metrics, r#"roost_push_wakeups_total{outcome="failed"}"#),
            counter(&metrics, r#"roost_push_wakeups_total{outcome="refused"}"#),
        );
        if counted.0 >= 1 && counted.1 >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted.0 >= 1 && counted.1 >= 1, "{counted:?}");
    assert_eq!(receiver.received(&carols).await.len(), 1, "no redirect followed");
    assert_eq!(receiver.received(&bobs).await.len(), 2);
    // Given up, the claim is released: the next message tries again.
    receiver.answer_with(&carols, &[201]).await;
    send(&server, &alice.token(), &id, "again").await;
    receiver.wait_for(&carols, 2).await;
}

/// A counter's value in the Prometheus text, 0 if absent.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics.lines().find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0)
}
