//! Instances cooperating over Redis: live events reach a device's socket on whichever instance
//! holds it, and a lost Redis costs latency, not messages.

use reqwest::{Method, StatusCode};
use roost_testkit::{TestDatabase, config_for, redis_url};
use serde_json::json;

use crate::api::common::{TestServer, TestUser, assert_error};
use crate::api::gateway::{Socket, direct, send};

/// Two servers on one database cooperating over Redis (the second connects to Redis at
/// `second_redis` when given), or `None` where PostgreSQL or Redis is not available here.
async fn two_instances(second_redis: Option<String>) -> Option<(TestServer, TestServer)> {
    two_instances_with(second_redis, |_| {}).await
}

async fn two_instances_with(
    second_redis: Option<String>,
    adjust: impl FnOnce(&mut roost_server::config::Config),
) -> Option<(TestServer, TestServer)> {
    let redis = redis_url()?;
    let database = TestDatabase::create(crate::BACKEND).await?;
    let mut config = config_for(&database);
    config.redis_url = Some(redis);
    adjust(&mut config);
    let first = TestServer::start_on(database, config.clone()).await;
    let second = match second_redis {
        Some(url) => first.another_with(|config| config.redis_url = Some(url)).await,
        None => first.another().await,
    };
    Some((first, second))
}

/// Three servers on one database cooperating over Redis, or `None` where PostgreSQL or Redis is
/// not available here.
async fn three_instances() -> Option<(TestServer, TestServer, TestServer)> {
    three_instances_with(|_| {}).await
}

async fn three_instances_with(
    adjust: impl FnOnce(&mut roost_server::config::Config),
) -> Option<(TestServer, TestServer, TestServer)> {
    let (a, b) = two_instances_with(None, adjust).await?;
    let c = a.another().await;
    Some((a, b, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_on_one_instance_gets_what_is_sent_through_another_live_and_in_order() {
    let Some((first, second)) = two_instances(None).await else { return };
    let alice = first.user("alice").await;
    let bob = first.user("bob").await;
    let id = direct(&first, &alice, &[&bob]).await;
    let mut bobs = Socket::connect(&second, &bob.token()).await;
    bobs.drain().await;
    let mut alices = Socket::connect(&first, &alice.token()).await;
    alices.drain().await;

    // Entries sent through the first instance reach bob's socket on the second, each once, in
    // order.
    for i in 1..=20 {
        assert_eq!(send(&first, &alice.token(), &id, &format!("m{i}")).await, i);
    }
    expect_entries(&mut bobs, 1..=20).await;
    // A large entry travels as a wake-up; the second instance reads it from the store.
    let large = "x".repeat(20 * 1024);
    let body =
        json!({"client_message_id": "large", "epoch": 1, "ciphertext": roost_proto::bytes::encode(large.as_bytes())});
    let (status, _) = first.post(&format!("/v1/conversations/{id}/messages"), Some(&alice.token()), body).await;
    assert_eq!(status, StatusCode::CREATED);
    let frame = bobs.next_frame().await;
    assert_eq!((frame["type"].as_str(), frame["seq"].as_u64()), (Some("entry"), Some(21)), "{frame}");

    // Typing and queue wake-ups cross too.
    alices.send(json!({"type": "typing", "conversation_id": id, "active": true})).await;
    let typing = bobs.next_frame().await;
    assert_eq!(typing["type"], "typing", "{typing}");
    let payload = json!({"payload": roost_proto::bytes::encode(b"to bob")});
    let (status, _) =
        first.post(&format!("/v1/devices/{}/messages", bob.devices[0].id()), Some(&alice.token()), payload).await;
    assert_eq!(status, StatusCode::CREATED);
    let queued = bobs.next_frame().await;
    assert_eq!((queued["type"].as_str(), queued["kind"].as_str()), (Some("queue"), Some("device_message")), "{queued}");

    // A logout through the first instance closes the socket on the second at once.
    let (status, _) = first.call(Method::DELETE, "/v1/auth/session", Some(&bob.token()), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(bobs.closed().await, Some(roost_proto::socket::close::SESSION_ENDED));
}

/// Reads the next frames of `socket`, which must be the entries `seqs`, in order.
async fn expect_entries(socket: &mut Socket, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        let frame = socket.next_frame().await;
        assert_eq!((frame["type"].as_str(), frame["seq"].as_u64()), (Some("entry"), Some(seq)), "{frame}");
    }
}

/// Alice and bob in a direct conversation, on two instances as [`second_behind_a_proxy`], with
/// bob's socket connected (and drained) to the second instance or the first. Bind every server
/// (`first: _first`, not `..`): an instance dropped stops, and the first one's database with it.
struct Chat {
    proxy: roost_testkit::proxy::Proxy,
    first: TestServer,
    second: TestServer,
    alice: TestUser,
    bob: TestUser,
    bobs: Socket,
    id: roost_proto::ConversationId,
}

async fn chat_behind_a_proxy(bobs_on_second: bool) -> Option<Chat> {
    let (proxy, first, second) = second_behind_a_proxy().await?;
    let alice = first.user("alice").await;
    let bob = first.user("bob").await;
    let id = direct(&first, &alice, &[&bob]).await;
    let mut bobs = Socket::connect(if bobs_on_second { &second } else { &first }, &bob.token()).await;
    bobs.drain().await;
    Some(Chat { proxy, first, second, alice, bob, bobs, id })
}

/// How long after its Redis is cut an instance has surely found it away: its next ping (within
/// a second) has waited out the 2 s command timeout. Before that, what it publishes waits in
/// the client for the connection to come back.
const UNTIL_AWAY: std::time::Duration = std::time::Duration::from_secs(4);

/// Two servers as [`two_instances`], the second reaching Redis through a proxy that can cut it
/// off.
async fn second_behind_a_proxy() -> Option<(roost_testkit::proxy::Proxy, TestServer, TestServer)> {
    let redis = redis_url()?;
    let (_, target) = roost_testkit::proxy::redirect(&redis, "127.0.0.1:1".parse().unwrap());
    let proxy = roost_testkit::proxy::Proxy::start(target).await;
    let (through_proxy, _) = roost_testkit::proxy::redirect(&redis, proxy.address());
    let (first, second) = two_instances(Some(through_proxy)).await?;
    Some((proxy, first, second))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_delays_live_events_but_loses_none() {
    let Some(Chat { proxy, first, second: _second, alice, bob: _bob, mut bobs, id }) = chat_behind_a_proxy(true).await
    else {
        return;
    };
    assert_eq!(send(&first, &alice.token(), &id, "before").await, 1);
    assert_eq!(bobs.next_frame().await["seq"].as_u64(), Some(1));

    // The second instance loses Redis: what is sent meanwhile is stored (the sends succeed) but
    // its news cannot reach the second instance.
    proxy.cut();
    for i in 2..=6 {
        assert_eq!(send(&first, &alice.token(), &id, &format!("during{i}")).await, i);
    }
    // Redis back: the second instance listens again and its connections read what they missed.
    proxy.restore();
    expect_entries(&mut bobs, 2..=6).await;
    assert_eq!(send(&first, &alice.token(), &id, "after").await, 7);
    assert_eq!(bobs.next_frame().await["seq"].as_u64(), Some(7));
}

/// With its Redis away, an instance stops asking it: the sends and sockets that would ask it (for
/// rate-limit tokens, for a seat under the connection cap) are served at once by what the
/// instance holds itself, rather than each waiting for a Redis command's timeout (2 s). Once
/// Redis answers it again, it tells the other instances that its news went unsent meanwhile, and
/// their sockets read what was sent: the other instance's own link was fine throughout, so
/// nothing else would tell it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_redis_serves_at_once_and_others_catch_up() {
    let Some(Chat { proxy, first: _first, second, alice, bob: _bob, mut bobs, id }) = chat_behind_a_proxy(false).await
    else {
        return;
    };
    assert_eq!(send(&second, &alice.token(), &id, "before").await, 1);
    assert_eq!(bobs.next_frame().await["seq"].as_u64(), Some(1));

    proxy.cut();
    // The send tokens the second instance took ahead lapse within a second; after that each send
    // would ask Redis for more. By the end of the wait a ping went unanswered, so nothing the
    // second instance publishes is held for Redis's return: it is lost.
    tokio::time::sleep(UNTIL_AWAY).await;
    let started = std::time::Instant::now();
    for i in 2..=6 {
        assert_eq!(send(&second, &alice.token(), &id, &format!("during{i}")).await, i);
    }
    let mut alices = Socket::connect(&second, &alice.token()).await;
    let waited = started.elapsed();
    assert!(
        waited < std::time::Duration::from_secs(2),
        "five sends and a socket took {waited:?}: one of them waited for Redis"
    );
    alices.drain().await;

    // The first instance heard nothing of 2 to 6; its socket reads them once the second
    // instance is back, with nothing else sent.
    proxy.restore();
    expect_entries(&mut bobs, 2..=6).await;
    assert_eq!(send(&second, &alice.token(), &id, "after").await, 7);
    assert_eq!(bobs.next_frame().await["seq"].as_u64(), Some(7));
}

/// While an instance's Redis is away its sockets read the store every few seconds: they get
/// what is sent through other instances late rather than not at all, and a socket whose session
/// is logged out through another instance closes without waiting for Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_on_an_instance_without_redis_poll_the_store_until_it_is_back() {
    let Some(Chat { proxy, first, second: _second, alice, bob, mut bobs, id }) = chat_behind_a_proxy(true).await else {
        return;
    };

    proxy.cut();
    assert_eq!(send(&first, &alice.token(), &id, "while away").await, 1);
    expect_entries(&mut bobs, 1..=1).await;
    let (status, _) = first.call(Method::DELETE, "/v1/auth/session", Some(&bob.token()), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(bobs.closed().await, Some(roost_proto::socket::close::SESSION_ENDED));
    proxy.restore();
}

/// A logout through an instance cut off from Redis cannot reach the socket on another instance
/// at once; once it is back, that socket reads the store, finds its session gone and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_while_redis_is_away_closes_the_socket_elsewhere_once_it_is_back() {
    let Some(Chat { proxy, first: _first, second, alice: _alice, bob, mut bobs, id: _ }) =
        chat_behind_a_proxy(false).await
    else {
        return;
    };

    proxy.cut();
    tokio::time::sleep(UNTIL_AWAY).await;
    let (status, _) = second.call(Method::DELETE, "/v1/auth/session", Some(&bob.token()), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    proxy.restore();
    assert_eq!(bobs.closed().await, Some(roost_proto::socket::close::SESSION_ENDED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_new_connection_on_another_instance_replaces_its_old_one() {
    let Some((first, second)) = two_instances(None).await else { return };
    let alice = first.user("alice").await;
    let bob = first.user("bob").await;
    let id = direct(&first, &alice, &[&bob]).await;
    let mut old = Socket::connect(&first, &bob.token()).await;
    old.drain().await;
    let mut new = Socket::connect(&second, &bob.token()).await;
    new.drain().await;
    // One consumer per device, whichever instances its connections reach.
    assert_eq!(old.closed().await, Some(roost_proto::socket::close::REPLACED));
    // The new connection goes on receiving, from either instance.
    assert_eq!(send(&first, &alice.token(), &id, "to the new socket").await, 1);
    let frame = new.next_frame().await;
    assert_eq!((frame["type"].as_str(), frame["seq"].as_u64()), (Some("entry"), Some(1)), "{frame}");
    assert_eq!(send(&second, &alice.token(), &id, "and through the other instance").await, 2);
    assert_eq!(new.next_frame().await["seq"].as_u64(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_through_one_instance_gets_nothing_after_it_on_another_whatever_a_third_sends() {
    let Some((a, b, c)) = three_instances().await else { return };
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let carol = a.user("carol").await;
    let members = [bob.devices[0].id(), carol.devices[0].id()];
    let id = crate::api::conversations::create(&a, &alice.token(), "group", &members, None).await;
    let mut carols = Socket::connect(&b, &carol.token()).await;
    carols.drain().await;
    // The third instance sends once, so its member cache lists carol.
    assert_eq!(send(&c, &alice.token(), &id, "before").await, 1);
    assert_eq!(carols.next_frame().await["seq"].as_u64(), Some(1));

    // Carol is removed through the first instance...
    let remove = json!({"epoch": 1, "commit": crate::api::conversations::member_commit("remove carol"),
                        "group_info": crate::api::conversations::b64("g2"), "remove": [carol.devices[0].id()]});
    let (status, removal) = a.post(&format!("/v1/conversations/{id}/commits"), Some(&alice.token()), remove).await;
    assert_eq!(status, StatusCode::CREATED, "{removal}");
    let frame = carols.next_frame().await;
    assert_eq!((frame["kind"].as_str(), frame["seq"].as_u64()), (Some("commit"), Some(2)), "{frame}");
    // (A removal also wakes the removed device's queue.)
    assert_eq!(carols.next_frame().await["type"], "queue");
    // The third instance had cached carol among the members; it forgot them when told, so carol
    // can no longer send there what only its cache authorizes.
    let ephemeral = json!({"client_message_id": "e", "epoch": 2, "ciphertext": crate::api::conversations::b64("hi"), "ephemeral": true});
    let refused = c.post(&format!("/v1/conversations/{id}/messages"), Some(&carol.token()), ephemeral).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "not_a_member");

    // ...then the third, which has not heard of it, sends; and after that it queues a payload for
    // carol (from carol: alice no longer shares a conversation with her). Its events reach carol's
    // instance in the order it published them, so the payload's wake-up comes first only if the
    // entry was not delivered.
    let body = json!({"client_message_id": "after", "epoch": 2, "ciphertext": crate::api::conversations::b64("after")});
    let (status, sent) = c.post(&format!("/v1/conversations/{id}/messages"), Some(&alice.token()), body).await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let payload = json!({"payload": roost_proto::bytes::encode(b"probe")});
    let (status, _) =
        c.post(&format!("/v1/devices/{}/messages", carol.devices[0].id()), Some(&carol.token()), payload).await;
    assert_eq!(status, StatusCode::CREATED);
    let next = carols.next_frame().await;
    assert_eq!(next["type"], "queue", "carol got something after her removal: {next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_logged_out_or_revoked_on_one_instance_is_refused_on_the_others_at_once() {
    let Some((a, b, c)) = three_instances().await else { return };
    let mut alice = a.user("alice").await;
    for _ in 0..10 {
        a.login(&mut alice.devices[0]).await;
        let token = alice.token();
        // Both other instances have the session cached...
        for instance in [&b, &c] {
            assert_eq!(instance.get("/v1/auth/session", Some(&token)).await.0, StatusCode::OK);
        }
        // ...and refuse it as soon as the logout is answered.
        let (status, _) = a.call(Method::DELETE, "/v1/auth/session", Some(&token), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        for instance in [&b, &c] {
            assert_error(
                &instance.get("/v1/auth/session", Some(&token)).await,
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
            );
        }
    }

    // A revoked device's sessions likewise.
    a.login(&mut alice.devices[0]).await;
    let second = b.link_device(&mut alice).await;
    let target = alice.devices[second].id();
    let target_token = alice.devices[second].token();
    for instance in [&b, &c] {
        assert_eq!(instance.get("/v1/auth/session", Some(&target_token)).await.0, StatusCode::OK);
    }
    let (status, body) =
        a.post(&format!("/v1/devices/{target}/revoke"), Some(&alice.token()), revoke(&alice, &target)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    for instance in [&b, &c] {
        assert_error(
            &instance.get("/v1/auth/session", Some(&target_token)).await,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        );
    }
}

fn revoke(user: &TestUser, device: &roost_proto::DeviceId) -> serde_json::Value {
    json!({"signature": user.sign(&roost_proto::signing::revoke_device_message(&user.id(), device))})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_connections_count_against_its_cap_on_every_instance() {
    let Some((a, b, c)) = three_instances_with(|config| config.gateway.max_connections_per_user = 2).await else {
        return;
    };
    let mut alice = a.user("alice").await;
    a.link_device(&mut alice).await;
    a.link_device(&mut alice).await;
    let mut first = Socket::connect(&a, &alice.devices[0].token()).await;
    first.drain().await;
    let mut second = Socket::connect(&b, &alice.devices[1].token()).await;
    second.drain().await;
    // Two connections on two instances: a third on a third instance is one too many.
    let refused = Socket::try_connect(&c, &alice.devices[2].token()).await.err();
    assert_eq!(refused, Some(Some(roost_proto::socket::close::TOO_MANY_CONNECTIONS)));
    // A device connecting again elsewhere replaces its connection rather than adding one.
    let mut again = Socket::connect(&c, &alice.devices[1].token()).await;
    again.drain().await;
    assert_eq!(second.closed().await, Some(roost_proto::socket::close::REPLACED));
    // Once a connection is gone, its seat is free for another device.
    drop(first);
    let mut attempts = 0;
    let third = loop {
        match Socket::try_connect(&b, &alice.devices[2].token()).await {
            Ok(socket) => break socket,
            Err(code) => assert_eq!(code, Some(roost_proto::socket::close::TOO_MANY_CONNECTIONS)),
        }
        attempts += 1;
        assert!(attempts < 100, "the first connection's seat was never given back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    drop((third, again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_the_users_visible_connections_on_every_instance() {
    let Some((a, b, c)) = three_instances().await else { return };
    crate::api::gateway::presence_follows_the_users_visible_connections(&a, &b, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_across_instances() {
    let Some((a, b, c)) = three_instances_with(|config| {
        config.rate_limits.sends_per_device = 3;
        config.rate_limits.challenges_per_address = 4;
    })
    .await
    else {
        return;
    };
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let id = direct(&a, &alice, &[&bob]).await;
    // One device's sends spread over three instances share one quota.
    for (i, instance) in [&a, &b, &c].into_iter().enumerate() {
        let body = json!({"client_message_id": format!("m{i}"), "epoch": 1, "ciphertext": crate::api::conversations::b64("hi")});
        let (status, sent) =
            instance.post(&format!("/v1/conversations/{id}/messages"), Some(&alice.token()), body).await;
        assert_eq!(status, StatusCode::CREATED, "{sent}");
    }
    let body = json!({"client_message_id": "over", "epoch": 1, "ciphertext": crate::api::conversations::b64("hi")});
    let over = a.post(&format!("/v1/conversations/{id}/messages"), Some(&alice.token()), body).await;
    assert_error(&over, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Another device's quota is its own.
    let body = json!({"client_message_id": "bob", "epoch": 1, "ciphertext": crate::api::conversations::b64("hi")});
    assert_eq!(
        b.post(&format!("/v1/conversations/{id}/messages"), Some(&bob.token()), body).await.0,
        StatusCode::CREATED
    );

    // One address's challenges likewise: the two logins above (through a) took two of its four.
    let device = alice.devices[0].id();
    assert_eq!(b.challenge(&device).await.0, StatusCode::OK);
    assert_eq!(c.challenge(&device).await.0, StatusCode::OK);
    assert_error(&a.challenge(&device).await, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
}

/// A `roostd` process on 127.0.0.1:0 with `config`, killed (SIGKILL) when dropped.
struct Process {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Process {
    fn start(mut config: roost_server::config::Config) -> Self {
        use std::io::BufRead as _;
        let dir = tempfile::tempdir().expect("a directory for the process's configuration");
        config.listen = "127.0.0.1:0".parse().expect("an address");
        config.log_format = roost_server::config::LogFormat::Json;
        let file = dir.path().join("roostd.toml");
        std::fs::write(&file, toml::to_string(&config).expect("the configuration as TOML")).expect("write it");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roostd"))
            .arg("--config")
            .arg(&file)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("ROOST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start roostd");
        // Its log says where it listens; the rest of its output is read and dropped so it never
        // blocks on a full pipe.
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("its output")).lines();
        let base = loop {
            let line = lines.next().expect("roostd said where it listens before exiting").expect("a log line");
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if event["fields"]["message"] == "roostd listening" {
                break format!("http://{}", event["fields"]["address"].as_str().expect("an address"));
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, base, _dir: dir }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_under_load_loses_nothing_acknowledged_and_its_sockets_move_on() {
    const MESSAGES_PER_SENDER: usize = 150;
    const KILL_AFTER: usize = 100;
    let Some(redis) = redis_url() else { return };
    let Some(database) = TestDatabase::create(crate::BACKEND).await else { return };
    let mut config = config_for(&database);
    config.redis_url = Some(redis);
    let mut doomed = Process::start(config.clone());
    let survivor = TestServer::start_on_system_clock(database, config).await;
    let alice = survivor.user("alice").await;
    let bob = survivor.user("bob").await;
    let id = direct(&survivor, &alice, &[&bob]).await;
    let mut bobs = Socket::connect_at(&doomed.base, &bob.token()).await;
    bobs.drain().await;
    // Bob's socket on the doomed instance takes what comes until the instance is killed.
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(frame) = bobs.next_frame_or_end().await {
            if frame["type"] == "entry" {
                seen.push(frame["seq"].as_u64().expect("a seq"));
            }
        }
        seen
    });

    // Two senders, one through each instance; a send that fails because its instance died is
    // sent again, with the same client_message_id, through the survivor. The instance is killed
    // once a third of the sends are acknowledged, so the first sender has some left whatever
    // the two senders' pace.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let failed_over = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let kill_now = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut senders = Vec::new();
    for (sender, first) in [doomed.base.clone(), survivor.base.clone()].into_iter().enumerate() {
        let (acknowledged, failed_over, kill_now) = (acknowledged.clone(), failed_over.clone(), kill_now.clone());
        let (token, survivor) = (alice.token(), survivor.base.clone());
        let http = reqwest::Client::new();
        let url = move |base: &str| format!("{base}/v1/conversations/{id}/messages");
        senders.push(tokio::spawn(async move {
            let mut base = first;
            for i in 0..MESSAGES_PER_SENDER {
                let client_id = format!("s{sender}-{i}");
                let body = json!({"client_message_id": client_id, "epoch": 1, "ciphertext": crate::api::conversations::b64(&client_id)});
                let seq = loop {
                    match http.post(url(&base)).bearer_auth(&token).json(&body).send().await {
                        Ok(response) => {
                            // 201, or 200 for a resend the dead instance had stored.
                            let status = response.status();
                            assert!([StatusCode::CREATED, StatusCode::OK].contains(&status), "{client_id}: {status}");
                            let sent: serde_json::Value = response.json().await.expect("the send's answer");
                            break sent["seq"].as_u64().expect("a seq");
                        }
                        Err(_) => {
                            failed_over.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            base = survivor.clone();
                        }
                    }
                };
                let mut acknowledged = acknowledged.lock().expect("not poisoned");
                acknowledged.push((client_id, seq));
                if acknowledged.len() == KILL_AFTER {
                    kill_now.notify_one();
                }
            }
        }));
    }
    kill_now.notified().await;
    doomed.kill();
    for sender in senders {
        sender.await.expect("the sender finished");
    }
    assert!(failed_over.load(std::sync::atomic::Ordering::Relaxed) > 0, "a send met the dead instance");
    let seen_before = watcher.await.expect("the socket's watcher");
    assert!(seen_before.windows(2).all(|pair| pair[0] < pair[1]), "in order, once: {seen_before:?}");

    // Every acknowledged send is stored once: 300 client ids, 300 distinct seqs, 1..=300.
    let acknowledged = acknowledged.lock().expect("not poisoned").clone();
    let total = (2 * MESSAGES_PER_SENDER) as u64;
    let mut seqs: Vec<u64> = acknowledged.iter().map(|(_, seq)| *seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "each acknowledged send has its own seq, none lost");

    // Bob reconnects, to the survivor, and gets every entry he has not acknowledged (he acked
    // none), in order and once.
    let mut bobs = Socket::connect_at(&survivor.base, &bob.token()).await;
    let mut seen_after = Vec::new();
    while seen_after.last() != Some(&total) {
        let frame = bobs.next_frame().await;
        if frame["type"] == "entry" {
            seen_after.push(frame["seq"].as_u64().expect("a seq"));
        }
    }
    assert_eq!(seen_after, (1..=total).collect::<Vec<_>>());
}

/// Attachments in an object store work wherever the load balancer sends each request: an upload
/// started on one instance resumes on another, and a third serves it; a removal through one
/// instance ends the removed device's access on every other at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_in_an_object_store_work_across_instances() {
    use sha2::Digest;
    let s3 = roost_testkit::s3::S3Server::start().await;
    let settings = s3.config();
    let Some((a, b, c)) = three_instances_with(move |config| {
        config.attachments.s3 = Some(settings);
        config.attachments.chunk_bytes = 1000;
    })
    .await
    else {
        return;
    };
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let carol = a.user("carol").await;
    let group = crate::api::conversations::create(
        &a,
        &alice.token(),
        "group",
        &[bob.devices[0].id(), carol.devices[0].id()],
        None,
    )
    .await;
    let file: Vec<u8> = (0..2_345u32).map(|i| (i * 7 % 251) as u8).collect();
    let announce = json!({"length": file.len(), "sha256": roost_proto::bytes::encode(&sha2::Sha256::digest(&file))});
    let (status, upload) =
        a.post(&format!("/v1/conversations/{group}/attachments"), Some(&alice.token()), announce).await;
    assert_eq!(status, StatusCode::CREATED, "{upload}");
    let id = upload["attachment_id"].as_str().unwrap().to_owned();
    let patch = |server: &TestServer, offset: usize| {
        server
            .http
            .patch(server.url(&format!("/v1/attachments/{id}")))
            .bearer_auth(alice.token())
            .header("Upload-Offset", offset.to_string())
            .body(
                file[offset..].iter().take(if offset == 0 { 1_500 } else { usize::MAX }).copied().collect::<Vec<u8>>(),
            )
            .send()
    };
    assert_eq!(patch(&a, 0).await.unwrap().status(), StatusCode::OK);
    let (_, status) = b.get(&format!("/v1/attachments/{id}/upload"), Some(&alice.token())).await;
    assert_eq!(status["offset"], 1_500, "the other instance sees how far it got");
    let done: serde_json::Value = patch(&b, 1_500).await.unwrap().json().await.unwrap();
    assert_eq!(done["complete"], true, "{done}");

    for server in [&a, &b, &c] {
        let got = server
            .http
            .get(server.url(&format!("/v1/attachments/{id}")))
            .bearer_auth(carol.token())
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(got.bytes().await.unwrap().as_ref(), file.as_slice());
    }

    // Carol is removed through b; c refuses her at once.
    let remove = json!({"epoch": 1, "commit": crate::api::conversations::member_commit("remove carol"),
                        "group_info": crate::api::conversations::b64("g2"), "remove": [carol.devices[0].id()]});
    let (status, _) = b.post(&format!("/v1/conversations/{group}/commits"), Some(&alice.token()), remove).await;
    assert_eq!(status, StatusCode::CREATED);
    let refused = c.http.get(c.url(&format!("/v1/attachments/{id}"))).bearer_auth(carol.token()).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    let kept = c.http.get(c.url(&format!("/v1/attachments/{id}"))).bearer_auth(bob.token()).send().await.unwrap();
    assert_eq!(kept.status(), StatusCode::OK);
    assert!(!a.config.data_dir.join("attachments").exists(), "nothing on any instance's disk");
}

/// Push across instances: a device whose socket is on another instance is not woken, and an
/// offline one is woken once for a burst sent through several instances, then again after it
/// synced through a third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_woken_once_across_instances_and_never_while_connected_to_any() {
    let Some(receiver) = roost_testkit::push::PushReceiver::start().await else { return };
    let Some((a, b, c)) = three_instances_with(|config| config.push.allow_http_loopback = true).await else {
        return;
    };
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let bobs = receiver.subscribe().await;
    let (status, body) =
        b.call(Method::PUT, "/v1/push/subscription", Some(&bob.token()), Some(bobs.body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut socket = Socket::connect(&b, &bob.token()).await;
    socket.drain().await;
    let id = direct(&a, &alice, &[&bob]).await;
    let mut last = 0;
    for n in 0..6 {
        let through = if n % 2 == 0 { &a } else { &c };
        last = send(through, &alice.token(), &id, &format!("online-{n}")).await;
    }
    loop {
        let frame = socket.next_frame().await;
        if frame["type"] == "entry" && frame["seq"] == last {
            break;
        }
    }
    drop(socket);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(receiver.received(&bobs).await.len(), 0, "connected on b: no wake-up from a or c");

    for n in 0..10 {
        let through = if n % 2 == 0 { &a } else { &c };
        send(through, &alice.token(), &id, &format!("offline-{n}")).await;
    }
    receiver.wait_for(&bobs, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(receiver.received(&bobs).await.len(), 1, "one wake-up for the burst, whichever instance sent");

    // Synced through c, bob is woken again by the next message through a.
    assert_eq!(c.get("/v1/sync", Some(&bob.token())).await.0, StatusCode::OK);
    send(&a, &alice.token(), &id, "after-sync").await;
    let pushes = receiver.wait_for(&bobs, 2).await;
    assert!(pushes.iter().all(|push| push["payload"] == r#"{"type":"wake"}"# && push["vapid_problems"] == json!([])));
}
