//! The WebSocket gateway over real sockets with an independent client (tokio-tungstenite).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use roost_proto::{ConversationId, bytes};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::common::{TestServer, TestUser, assert_error};

/// How long any single expected frame may take; generous, since only its arrival is asserted.
const PATIENCE: Duration = Duration::from_secs(10);

pub struct Socket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Socket {
    /// Opens a socket without authenticating.
    pub async fn open(server: &TestServer) -> Self {
        Self::open_at(&server.base).await
    }

    /// Opens a socket to the server at `base` (`http://host:port`) without authenticating.
    pub async fn open_at(base: &str) -> Self {
        let url = format!("{}/v1/ws", base.replace("http://", "ws://"));
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket handshake");
        Self { ws }
    }

    /// Opens a socket and authenticates it; returns it after the `ready` frame.
    pub async fn connect(server: &TestServer, token: &str) -> Self {
        Self::connect_at(&server.base, token).await
    }

    /// [`Socket::connect`] to the server at `base`.
    pub async fn connect_at(base: &str, token: &str) -> Self {
        let mut socket = Self::open_at(base).await;
        socket.send(json!({"type": "auth", "token": token})).await;
        let ready = socket.next_frame().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        socket
    }

    /// Opens a socket and authenticates it; returns it after the `ready` frame, or the close
    /// code if the server closed it instead.
    pub async fn try_connect(server: &TestServer, token: &str) -> Result<Self, Option<u16>> {
        let mut socket = Self::open(server).await;
        socket.send(json!({"type": "auth", "token": token})).await;
        loop {
            match tokio::time::timeout(PATIENCE, socket.ws.next()).await.expect("an answer in time") {
                Some(Ok(Message::Text(text))) => {
                    let ready: Value = serde_json::from_str(&text).expect("JSON frame");
                    assert_eq!(ready["type"], "ready", "{ready}");
                    return Ok(socket);
                }
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws.send(Message::Text(frame.to_string().into())).await.expect("send frame");
    }

    /// The next JSON frame, or `None` once the connection is closed or broken; fails after
    /// `PATIENCE`.
    #[allow(dead_code)] // Only the PostgreSQL suite kills servers under their sockets.
    pub async fn next_frame_or_end(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(PATIENCE, self.ws.next()).await.expect("a frame or the end in time") {
                Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).expect("JSON frame")),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(_) | Err(_)) | None => return None,
            }
        }
    }

    /// The next JSON frame; fails on a close or after `PATIENCE`.
    pub async fn next_frame(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next()).await.expect("a frame in time");
            match message {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).expect("JSON frame"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// Frames up to (not including) `queue_empty`.
    pub async fn drain(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next_frame().await;
            if frame["type"] == "queue_empty" {
                return frames;
            }
            frames.push(frame);
        }
    }

    /// Waits for the server to close the socket; returns the close code (None if the connection
    /// just dropped). Frames before the close are skipped.
    pub async fn closed(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next()).await.expect("closed in time");
            match message {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

fn b64(text: &str) -> String {
    bytes::encode(text.as_bytes())
}

pub async fn direct(server: &TestServer, creator: &TestUser, others: &[&TestUser]) -> ConversationId {
    let id = ConversationId::from_bytes(rand::random());
    let creator_device = creator.devices[0].id();
    let mut members: Vec<_> = creator.devices.iter().map(|d| d.id()).filter(|d| *d != creator_device).collect();
    for user in others {
        members.extend(user.devices.iter().map(|d| d.id()));
    }
    let kind = if others.len() == 1 { "direct" } else { "group" };
    let body = json!({"conversation_id": id, "kind": kind, "epoch": 1, "group_info": b64("gi"), "members": members, "welcome": b64("w")});
    let (status, created) = server.post("/v1/conversations", Some(&creator.token()), body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    id
}

pub async fn send(server: &TestServer, token: &str, id: &ConversationId, client_id: &str) -> u64 {
    let body = json!({"client_message_id": client_id, "epoch": 1, "ciphertext": b64(client_id)});
    let (status, sent) = server.post(&format!("/v1/conversations/{id}/messages"), Some(token), body).await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    sent["seq"].as_u64().unwrap()
}

/// A server where alice has a direct conversation with bob, whose socket is connected and
/// drained; `None` where the suite's backend is not available.
async fn alice_and_bob_online() -> Option<(TestServer, TestUser, ConversationId, Socket)> {
    let server = TestServer::start_with(|_| {}).await?;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id = direct(&server, &alice, &[&bob]).await;
    let mut bobs = Socket::connect(&server, &bob.token()).await;
    bobs.drain().await;
    Some((server, alice, id, bobs))
}

/// Polls a condition for up to `PATIENCE`.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

#[tokio::test]
async fn entries_reach_every_device_of_the_recipient_and_the_senders_other_devices_live() {
    let server = server!();
    let mut alice = server.user("alice").await;
    server.link_device(&mut alice).await;
    let mut bob = server.user("bob").await;
    server.link_device(&mut bob).await;
    let id = direct(&server, &alice, &[&bob]).await;

    let mut sockets = Vec::new();
    for device in alice.devices.iter().chain(bob.devices.iter()).skip(1) {
        let mut socket = Socket::connect(&server, &device.token()).await;
        let drained = socket.drain().await;
        assert!(drained.iter().all(|f| f["type"] == "queue" && f["kind"] == "welcome"), "{drained:?}");
        sockets.push(socket);
    }
    for (i, token) in [alice.token(), bob.token(), alice.token()].iter().enumerate() {
        let seq = send(&server, token, &id, &format!("live{i}")).await;
        for socket in &mut sockets {
            let frame = socket.next_frame().await;
            assert_eq!((frame["type"].as_str(), frame["seq"].as_u64()), (Some("entry"), Some(seq)), "{frame}");
            assert_eq!(frame["conversation_id"], id.to_string());
            assert_eq!(frame["payload"], b64(&format!("live{i}")));
        }
    }
}

#[tokio::test]
async fn a_large_entry_arrives_whole_live_and_in_the_drain() {
    // The server writes at most 4 KiB per frame, so this one goes out in fragments; the client
    // must see one message, live and again from the store on a new connection.
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id = direct(&server, &alice, &[&bob]).await;
    let mut socket = Socket::connect(&server, &bob.token()).await;
    socket.drain().await;
    let ciphertext: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let encoded = bytes::encode(&ciphertext);
    let body = json!({"client_message_id": "large", "epoch": 1, "ciphertext": encoded});
    let (status, sent) = server.post(&format!("/v1/conversations/{id}/messages"), Some(&alice.token()), body).await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let live = socket.next_frame().await;
    assert_eq!((live["type"].as_str(), &live["seq"]), (Some("entry"), &sent["seq"]), "{}", live["type"]);
    assert_eq!(live["payload"].as_str(), Some(encoded.as_str()));

    drop(socket);
    let mut socket = Socket::connect(&server, &bob.token()).await;
    let entries: Vec<Value> = socket.drain().await.into_iter().filter(|f| f["type"] == "entry").collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["payload"].as_str(), Some(encoded.as_str()));
}

#[tokio::test]
async fn a_removed_members_socket_gets_its_removal_and_nothing_after_it() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let group = direct(&server, &alice, &[&bob, &carol]).await;
    let marker = direct(&server, &alice, &[&carol]).await;
    let mut carols = Socket::connect(&server, &carol.token()).await;
    carols.drain().await;

    // A first send makes the server look up (and remember) the group's members.
    let first = send(&server, &alice.token(), &group, "before").await;
    let frame = carols.next_frame().await;
    assert_eq!((frame["type"].as_str(), frame["seq"].as_u64()), (Some("entry"), Some(first)), "{frame}");

    let remove = json!({"epoch": 1, "commit": super::conversations::member_commit("remove carol"), "group_info": b64("g2"), "remove": [carol.devices[0].id()]});
    let (status, removal) =
        server.post(&format!("/v1/conversations/{group}/commits"), Some(&alice.token()), remove).await;
    assert_eq!(status, StatusCode::CREATED, "{removal}");
    let after = json!({"client_message_id": "after", "epoch": 2, "ciphertext": b64("after")});
    let (status, sent) = server.post(&format!("/v1/conversations/{group}/messages"), Some(&alice.token()), after).await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    // Pushes to one device arrive in order: once the marker is in, the group's later entry would
    // have been too.
    let marker_seq = send(&server, &alice.token(), &marker, "marker").await;

    let mut group_seqs = Vec::new();
    loop {
        let frame = carols.next_frame().await;
        if frame["type"] != "entry" {
            continue;
        }
        if frame["conversation_id"] == marker.to_string() {
            assert_eq!(frame["seq"].as_u64(), Some(marker_seq));
            break;
        }
        group_seqs.push(frame["seq"].as_u64().unwrap());
    }
    assert_eq!(group_seqs, vec![removal["seq"].as_u64().unwrap()], "the removal only, nothing after it");
}

#[tokio::test]
async fn a_leaving_devices_socket_gets_the_leave_and_its_removed_notice_live() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let group = direct(&server, &alice, &[&bob]).await;
    let mut bobs = Socket::connect(&server, &bob.token()).await;
    bobs.drain().await;
    let (status, left) = server.post(&format!("/v1/conversations/{group}/leave"), Some(&bob.token()), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{left}");
    let seq = left["seq"].as_u64().unwrap();
    let (mut entry, mut removed) = (None, None);
    while entry.is_none() || removed.is_none() {
        let frame = bobs.next_frame().await;
        match (frame["type"].as_str(), frame["kind"].as_str()) {
            (Some("entry"), _) => entry = frame["seq"].as_u64(),
            (Some("queue"), Some("removed")) => {
                removed = Some((frame["conversation_id"].clone(), frame["seq"].clone()))
            }
            _ => {}
        }
    }
    assert_eq!(entry, Some(seq));
    assert_eq!(removed, Some((json!(group.to_string()), json!(seq))));
}

/// Presence is per user over their visible connections: online when the first becomes visible,
/// offline when the last stops being visible or closes, whatever other (invisible) connections
/// the user holds. Alice's two devices connect to `a` and `b`, bob listens on `c`.
pub async fn presence_follows_the_users_visible_connections(a: &TestServer, b: &TestServer, c: &TestServer) {
    let mut alice = a.user("alice").await;
    a.link_device(&mut alice).await;
    let bob = a.user("bob").await;
    let chat = direct(a, &alice, &[&bob]).await;
    let mut bobs = Socket::connect(c, &bob.token()).await;
    bobs.drain().await;
    let (phone_token, laptop_token) = (alice.devices[0].token(), alice.devices[1].token());
    let mut phone = Socket::connect(a, &phone_token).await;
    let mut laptop = Socket::connect(b, &laptop_token).await;
    let visible = |on: bool| json!({"type": "presence", "visible": on});
    // The next presence frame bob gets: each step below expects exactly one, and a frame that
    // should not have been sent shows up as the wrong one.
    async fn next_presence(socket: &mut Socket) -> bool {
        loop {
            let frame = socket.next_frame().await;
            if frame["type"] == "presence" {
                return frame["online"].as_bool().expect("online");
            }
        }
    }

    // The laptop never opts in: the phone opting out makes alice offline.
    phone.send(visible(true)).await;
    assert!(next_presence(&mut bobs).await, "online");
    phone.send(visible(false)).await;
    assert!(!next_presence(&mut bobs).await, "opting out of the only visible connection is going offline");

    // Both visible: one announcement; the phone closing leaves her online until the laptop
    // opts out.
    phone.send(visible(true)).await;
    assert!(next_presence(&mut bobs).await);
    laptop.send(visible(true)).await;
    // Frames of one connection are handled in order: once bob has the laptop's typing, its
    // opt-in was handled (and announced nothing).
    laptop.send(json!({"type": "typing", "conversation_id": chat, "active": true})).await;
    while bobs.next_frame().await["type"] != "typing" {}
    drop(phone);
    laptop.send(visible(false)).await;
    assert!(!next_presence(&mut bobs).await, "the second visible connection was announced, or its end was missed");

    // The last visible connection closing while an invisible one stays is going offline.
    let mut phone = Socket::connect(a, &phone_token).await;
    phone.send(visible(true)).await;
    assert!(next_presence(&mut bobs).await);
    drop(phone);
    assert!(!next_presence(&mut bobs).await, "the last visible connection closed");
    laptop.send(visible(true)).await;
    assert!(next_presence(&mut bobs).await);
    drop(laptop);
    assert!(!next_presence(&mut bobs).await);
}

#[tokio::test]
async fn presence_follows_the_users_visible_connections_on_one_instance() {
    let server = server!();
    presence_follows_the_users_visible_connections(&server, &server, &server).await;
}

#[tokio::test]
async fn concurrent_sends_arrive_once_each_and_in_order() {
    let Some((server, alice, id, mut bobs)) = alice_and_bob_online().await else { return };

    // Sent at once, the messages share group commits and their pushes race each other.
    let token = alice.token();
    let sends = (0..150).map(|i| {
        let (server, token) = (&server, &token);
        async move { send(server, token, &id, &format!("burst{i}")).await }
    });
    let mut seqs = futures::future::join_all(sends).await;
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=150).collect::<Vec<u64>>());

    for expected in 1..=150u64 {
        let frame = bobs.next_frame().await;
        assert_eq!((frame["type"].as_str(), frame["seq"].as_u64()), (Some("entry"), Some(expected)), "{frame}");
    }
    // Nothing twice: the next frame is the marker sent after the burst.
    let last = send(&server, &alice.token(), &id, "after").await;
    let frame = bobs.next_frame().await;
    assert_eq!(frame["seq"].as_u64(), Some(last), "{frame}");
}

#[tokio::test]
async fn an_entry_whose_push_never_came_is_read_from_the_store() {
    let Some((server, alice, id, mut bobs)) = alice_and_bob_online().await else { return };
    assert_eq!(send(&server, &alice.token(), &id, "first").await, 1);
    assert_eq!(bobs.next_frame().await["seq"].as_u64(), Some(1));

    // Stored without a push (as when a send fails between its commit and its push)…
    let alices = &alice.devices[0];
    let silent = roost_store::MessageWrite {
        conversation_id: id,
        sender: roost_store::MemberRef { user_id: alice.id(), device_id: alices.id() },
        client_message_id: "silent".into(),
        epoch: 1,
        payload: b"silent".to_vec(),
        now: roost_server::clock::Clock::now_ms(server.clock()),
    };
    let stored = server.services.ctx.store.append_message(silent).await.unwrap();
    assert_eq!(stored.seq, 2);
    // …then the next entry is pushed: the connection holds it, gives up waiting for 2 and reads
    // the gap from the store, so both arrive, in order.
    assert_eq!(send(&server, &alice.token(), &id, "third").await, 3);
    let frame = bobs.next_frame().await;
    assert_eq!((frame["seq"].as_u64(), frame["payload"].as_str()), (Some(2), Some(b64("silent").as_str())));
    assert_eq!(bobs.next_frame().await["seq"].as_u64(), Some(3));
}

#[tokio::test]
async fn unacknowledged_entries_are_delivered_again_after_a_reconnect() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id = direct(&server, &alice, &[&bob]).await;
    for i in 0..3 {
        send(&server, &alice.token(), &id, &format!("m{i}")).await;
    }
    let mut socket = Socket::connect(&server, &bob.token()).await;
    let first = socket.drain().await;
    let seqs = |frames: &[Value]| {
        frames.iter().filter(|f| f["type"] == "entry").map(|f| f["seq"].as_u64().unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(seqs(&first), vec![1, 2, 3]);
    let kinds: Vec<&str> = first.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["queue", "entry", "entry", "entry"], "the Welcome before the entries it lets bob read");
    let welcome_id = first.iter().find(|f| f["type"] == "queue").unwrap()["id"].clone();
    drop(socket);

    let mut socket = Socket::connect(&server, &bob.token()).await;
    assert_eq!(seqs(&socket.drain().await), vec![1, 2, 3], "nothing was acknowledged");
    // Ack over the socket: cumulative, like HTTP.
    socket
        .send(json!({"type": "ack", "conversations": [{"conversation_id": id, "seq": 2}], "queue_up_to": welcome_id}))
        .await;
    send(&server, &alice.token(), &id, "m3").await;
    assert_eq!(socket.next_frame().await["seq"], 4);
    drop(socket);

    let mut socket = Socket::connect(&server, &bob.token()).await;
    let again = socket.drain().await;
    assert_eq!(seqs(&again), vec![3, 4]);
    assert!(again.iter().all(|f| f["type"] != "queue"), "the acknowledged Welcome is gone");
    // Acks over the socket have the HTTP semantics, refusals included.
    let stranger_conversation = ConversationId::from_bytes([9; 16]);
    socket.send(json!({"type": "ack", "conversations": [{"conversation_id": stranger_conversation, "seq": 1}]})).await;
    let refused = socket.next_frame().await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("not_a_member")));
}

#[tokio::test]
async fn a_devices_newer_connection_replaces_the_older_one() {
    let server = server!();
    let alice = server.user("alice").await;
    let mut first = Socket::connect(&server, &alice.token()).await;
    first.drain().await;
    let mut second = Socket::connect(&server, &alice.token()).await;
    second.drain().await;
    assert_eq!(first.closed().await, Some(roost_proto::socket::close::REPLACED));
    // The newer connection is the one that receives.
    let bob = server.user("bob").await;
    let id = direct(&server, &bob, &[&alice]).await;
    assert_eq!(second.next_frame().await["kind"], "welcome");
    send(&server, &bob.token(), &id, "hello").await;
    assert_eq!(second.next_frame().await["type"], "entry");
}

#[tokio::test]
async fn a_user_may_hold_only_so_many_connections() {
    let server = server!(|config| config.gateway.max_connections_per_user = 2);
    let mut alice = server.user("alice").await;
    server.link_device(&mut alice).await;
    server.link_device(&mut alice).await;
    let mut kept = Vec::new();
    for device in &alice.devices[..2] {
        let mut socket = Socket::connect(&server, &device.token()).await;
        socket.drain().await;
        kept.push(socket);
    }
    let third = Socket::try_connect(&server, &alice.devices[2].token()).await.err();
    assert_eq!(third, Some(Some(roost_proto::socket::close::TOO_MANY_CONNECTIONS)));
    // Another user is unaffected.
    let bob = server.user("bob").await;
    Socket::connect(&server, &bob.token()).await.drain().await;
}

#[tokio::test]
async fn typing_reaches_online_members_only_and_is_never_stored() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let outsider = server.user("outsider").await;
    let id = direct(&server, &alice, &[&bob, &carol]).await;
    let mut bobs = Socket::connect(&server, &bob.token()).await;
    bobs.drain().await;
    let mut outsiders = Socket::connect(&server, &outsider.token()).await;
    outsiders.drain().await;
    let mut alices = Socket::connect(&server, &alice.token()).await;
    alices.drain().await;

    alices.send(json!({"type": "typing", "conversation_id": id, "active": true})).await;
    let typing = bobs.next_frame().await;
    assert_eq!((typing["type"].as_str(), typing["active"].as_bool()), (Some("typing"), Some(true)));
    assert_eq!(typing["user_id"], alice.id().to_string());

    // An outsider can neither see nor send typing for the conversation.
    outsiders.send(json!({"type": "typing", "conversation_id": id, "active": true})).await;
    let refused = outsiders.next_frame().await;
    assert_eq!(refused["code"], "not_a_member");
    // Carol was offline: nothing waits for her, and nothing was stored.
    let (_, sync) = server.get("/v1/sync", Some(&carol.token())).await;
    assert_eq!(sync["entries"], json!([]));
    let (_, summary) = server.get(&format!("/v1/conversations/{id}"), Some(&alice.token())).await;
    assert_eq!(summary["last_seq"], 0);
}

#[tokio::test]
async fn a_slow_reader_is_bounded_and_cut_off() {
    let server = server!(|config| {
        config.gateway.outgoing_buffer = 4;
        config.gateway.send_timeout_secs = 1;
    });
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id = direct(&server, &alice, &[&bob]).await;
    let mut slow = Socket::connect(&server, &bob.token()).await;
    slow.drain().await;
    assert!(server.services.hub.is_online(&bob.devices[0].id()));

    // Bob stops reading; alice keeps sending large messages until the server gives up on him.
    let big = "x".repeat(256 * 1024);
    for i in 0..200 {
        let body = json!({"client_message_id": format!("big{i}"), "epoch": 1, "ciphertext": b64(&big)});
        let (status, _) = server.post(&format!("/v1/conversations/{id}/messages"), Some(&alice.token()), body).await;
        assert_eq!(status, StatusCode::CREATED, "sending never fails because of a slow reader");
        if !server.services.hub.is_online(&bob.devices[0].id()) {
            break;
        }
    }
    let hub = server.services.hub.clone();
    let device = bob.devices[0].id();
    assert!(eventually(|| !hub.is_online(&device)).await, "the slow reader was disconnected");
    // Nothing is lost: the messages wait in the store for the next connection.
    let (_, sync) = server.get("/v1/sync?limit=1", Some(&bob.token())).await;
    assert_eq!(sync["entries"][0]["seq"], 1);
}

#[tokio::test]
async fn unauthenticated_sockets_are_closed() {
    let server = server!(|config| config.gateway.auth_timeout_secs = 1);
    let unauthenticated = roost_proto::socket::close::UNAUTHENTICATED;
    let mut silent = Socket::open(&server).await;
    assert_eq!(silent.closed().await, Some(unauthenticated), "closed after the timeout");
    let mut forged = Socket::open(&server).await;
    forged.send(json!({"type": "auth", "token": "rst_forged"})).await;
    assert_eq!(forged.closed().await, Some(unauthenticated));
    let mut wrong_first = Socket::open(&server).await;
    wrong_first.send(json!({"type": "presence", "visible": true})).await;
    assert_eq!(wrong_first.closed().await, Some(unauthenticated));
    let mut garbage = Socket::open(&server).await;
    garbage.ws.send(Message::Binary(vec![0xff, 0x00].into())).await.unwrap();
    assert_eq!(garbage.closed().await, Some(unauthenticated));
    // A plain HTTP request to the socket route gets a JSON error.
    assert_error(&server.get("/v1/ws", None).await, StatusCode::BAD_REQUEST, "malformed_request");
}

#[tokio::test]
async fn oversized_frames_are_refused() {
    let server = server!(|config| config.gateway.max_client_frame_bytes = 1024);
    let alice = server.user("alice").await;
    let mut socket = Socket::connect(&server, &alice.token()).await;
    socket.drain().await;
    socket.ws.send(Message::Text("x".repeat(4096).into())).await.unwrap();
    assert_eq!(socket.closed().await, Some(u16::from(CloseCode::Size)), "closed with 1009");
    // Before authenticating too.
    let mut unauthenticated = Socket::open(&server).await;
    unauthenticated.ws.send(Message::Text("x".repeat(4096).into())).await.unwrap();
    assert_eq!(unauthenticated.closed().await, Some(u16::from(CloseCode::Size)));
    let hub = server.services.hub.clone();
    let device = alice.devices[0].id();
    assert!(eventually(|| !hub.is_online(&device)).await);
    // Malformed but small frames only get an error frame.
    let mut socket = Socket::connect(&server, &alice.token()).await;
    socket.drain().await;
    socket.ws.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(socket.next_frame().await["code"], "malformed_request");
    socket.send(json!({"type": "auth", "token": alice.token()})).await;
    assert_eq!(socket.next_frame().await["code"], "invalid_argument");
}

#[tokio::test]
async fn heartbeats_detect_a_dead_peer() {
    let server = server!(|config| {
        config.gateway.heartbeat_interval_secs = 1;
        config.gateway.idle_timeout_secs = 2;
    });
    let alice = server.user("alice").await;
    let mut socket = Socket::connect(&server, &alice.token()).await;
    socket.drain().await;
    // The client stops polling its socket, so it answers no ping: to the server it is dead.
    let hub = server.services.hub.clone();
    let device = alice.devices[0].id();
    assert!(eventually(|| !hub.is_online(&device)).await, "the silent peer was dropped");
    drop(socket);

    // A live peer (one that keeps reading, and so answers pings) stays connected past the timeout.
    let mut live = Socket::connect(&server, &alice.token()).await;
    live.drain().await;
    let quiet = tokio::time::timeout(Duration::from_secs(3), live.ws.next()).await;
    assert!(quiet.is_err() || matches!(quiet, Ok(Some(Ok(Message::Ping(_))))), "{quiet:?}");
    assert!(hub.is_online(&device));
}

#[tokio::test]
async fn receipts_keys_low_presence_and_device_list_events_travel_live() {
    let server = server!(|config| config.limits.key_packages_low_threshold = 1);
    let alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let outsider = server.user("outsider").await;
    let id = direct(&server, &alice, &[&bob]).await;
    let seq = send(&server, &bob.token(), &id, "read me").await;
    let mut bobs = Socket::connect(&server, &bob.token()).await;
    bobs.drain().await;
    let mut outsiders = Socket::connect(&server, &outsider.token()).await;
    outsiders.drain().await;

    // Presence is opt-in and visible to users sharing a conversation only.
    let mut alices = Socket::connect(&server, &alice.token()).await;
    alices.drain().await;
    alices.send(json!({"type": "presence", "visible": true})).await;
    let online = bobs.next_frame().await;
    assert_eq!((online["type"].as_str(), online["online"].as_bool()), (Some("presence"), Some(true)));
    assert_eq!(online["user_id"], alice.id().to_string());

    // A read receipt.
    let (status, _) =
        server.post(&format!("/v1/conversations/{id}/read"), Some(&alice.token()), json!({"seq": seq})).await;
    assert_eq!(status, StatusCode::OK);
    let receipt = bobs.next_frame().await;
    assert_eq!((receipt["type"].as_str(), receipt["seq"].as_u64()), (Some("read_receipt"), Some(seq)));

    // keys_low as a queue frame.
    let upload = json!({"one_time": [b64("k1")], "last_resort": b64("lr")});
    server.post("/v1/keys/packages", Some(&bob.token()), upload).await;
    server.post("/v1/keys/claim", Some(&alice.token()), json!({"user_ids": [bob.id()]})).await;
    let low = bobs.next_frame().await;
    assert_eq!((low["type"].as_str(), low["kind"].as_str()), (Some("queue"), Some("keys_low")));

    // A linked device is announced to the user's contacts; a revoked one is disconnected.
    let new = server.link_device(&mut bob).await;
    let changed = alices.next_frame().await;
    assert_eq!(
        (changed["type"].as_str(), changed["user_id"].as_str()),
        (Some("devices_changed"), Some(bob.id().to_string().as_str()))
    );
    let mut doomed = Socket::connect(&server, &bob.devices[new].token()).await;
    doomed.drain().await;
    let target = bob.devices[new].id();
    let revoke = json!({"signature": bob.sign(&roost_proto::signing::revoke_device_message(&bob.id(), &target))});
    let (status, _) = server.post(&format!("/v1/devices/{target}/revoke"), Some(&bob.token()), revoke).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(doomed.closed().await, Some(roost_proto::socket::close::REVOKED));

    // Going offline is announced too; the outsider heard none of it.
    drop(alices);
    loop {
        let frame = bobs.next_frame().await;
        if frame["type"] == "presence" {
            assert_eq!(frame["online"], false);
            break;
        }
    }
    let nothing = tokio::time::timeout(Duration::from_millis(300), outsiders.ws.next()).await;
    assert!(nothing.is_err(), "the outsider got {nothing:?}");
}

#[tokio::test]
async fn shutdown_closes_sockets_with_a_reason() {
    let server = server!();
    let alice = server.user("alice").await;
    let mut socket = Socket::connect(&server, &alice.token()).await;
    socket.drain().await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(socket.closed().await, Some(roost_proto::socket::close::GOING_AWAY));
    stopping.await.unwrap();
}

/// The answer to a `send` frame: the next `sent` or `send_failed` frame (other frames skipped).
async fn answer(socket: &mut Socket) -> Value {
    loop {
        let frame = socket.next_frame().await;
        if frame["type"] == "sent" || frame["type"] == "send_failed" {
            return frame;
        }
    }
}

fn send_frame(id: &ConversationId, client_id: &str, epoch: u64) -> Value {
    json!({"type": "send", "conversation_id": id, "client_message_id": client_id, "epoch": epoch, "ciphertext": b64(client_id)})
}

#[tokio::test]
async fn sends_over_the_socket_are_answered_stored_and_pushed() {
    let Some((server, alice, id, mut bobs)) = alice_and_bob_online().await else { return };
    let mut alices = Socket::connect(&server, &alice.token()).await;
    alices.drain().await;

    alices.send(send_frame(&id, "hello", 1)).await;
    let sent = answer(&mut alices).await;
    assert_eq!(sent["type"], "sent", "{sent}");
    assert_eq!((sent["seq"].as_u64(), sent["duplicate"].as_bool()), (Some(1), Some(false)));
    assert_eq!(
        (sent["conversation_id"].as_str(), sent["client_message_id"].as_str()),
        (Some(id.to_string().as_str()), Some("hello"))
    );
    let entry = bobs.next_frame().await;
    assert_eq!((entry["type"].as_str(), entry["seq"].as_u64()), (Some("entry"), Some(1)));
    assert_eq!(entry["payload"], b64("hello"));

    // A retry answers the original result; the HTTP send and the socket share one idempotency.
    alices.send(send_frame(&id, "hello", 1)).await;
    let retry = answer(&mut alices).await;
    assert_eq!((retry["seq"].as_u64(), retry["duplicate"].as_bool()), (Some(1), Some(true)));
    assert_eq!(retry["created_at"], sent["created_at"]);
    let body = json!({"client_message_id": "hello", "epoch": 1, "ciphertext": b64("hello")});
    let (status, over_http) =
        server.post(&format!("/v1/conversations/{id}/messages"), Some(&alice.token()), body).await;
    assert_eq!((status, over_http["seq"].as_u64()), (StatusCode::OK, Some(1)));

    // Several in flight at once: each is answered and stored once.
    for i in 0..20 {
        alices.send(send_frame(&id, &format!("burst-{i}"), 1)).await;
    }
    let mut seqs = Vec::new();
    for _ in 0..20 {
        let sent = answer(&mut alices).await;
        assert_eq!(sent["type"], "sent", "{sent}");
        seqs.push(sent["seq"].as_u64().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (2..=21).collect::<Vec<_>>());
    let (_, summary) = server.get(&format!("/v1/conversations/{id}"), Some(&alice.token())).await;
    assert_eq!(summary["last_seq"], 21);
}

#[tokio::test]
async fn logging_out_closes_the_socket_of_that_session_only() {
    let server = server!();
    let mut alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id = direct(&server, &alice, &[&bob]).await;
    let first_token = alice.token();
    server.login(&mut alice.devices[0]).await;
    let second_token = alice.token();
    assert_ne!(first_token, second_token, "the device holds two sessions");
    let mut alices = Socket::connect(&server, &first_token).await;
    alices.drain().await;

    // Ending the device's other session leaves this socket working.
    let (status, _) = server.call(Method::DELETE, "/v1/auth/session", Some(&second_token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    alices.send(send_frame(&id, "still here", 1)).await;
    assert_eq!(answer(&mut alices).await["type"], "sent");

    // Ending its own session closes it, so a logged-out token can neither send nor receive.
    let (status, _) = server.call(Method::DELETE, "/v1/auth/session", Some(&first_token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(alices.closed().await, Some(roost_proto::socket::close::SESSION_ENDED));
    let mut again = Socket::open(&server).await;
    again.send(json!({"type": "auth", "token": first_token})).await;
    assert_eq!(again.closed().await, Some(roost_proto::socket::close::UNAUTHENTICATED));
}

#[tokio::test]
async fn a_socket_closes_once_its_session_has_expired() {
    let server = server!(|config| config.gateway.heartbeat_interval_secs = 1);
    let alice = server.user("alice").await;
    let mut alices = Socket::connect(&server, &alice.token()).await;
    alices.drain().await;
    server.clock().advance_ms(31 * 24 * 3600 * 1000);
    assert_eq!(alices.closed().await, Some(roost_proto::socket::close::SESSION_ENDED));
}

#[tokio::test]
async fn sends_beyond_the_in_flight_limit_are_refused_until_one_is_answered() {
    let server = server!(|config| config.gateway.max_sends_in_flight = 1);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id = direct(&server, &alice, &[&bob]).await;
    let mut alices = Socket::connect(&server, &alice.token()).await;
    alices.drain().await;

    // Another writer holds the database, so the first send waits for its commit.
    let mut other_writer = server.database().connect().await;
    other_writer.block_writes().await;
    alices.send(send_frame(&id, "first", 1)).await;
    alices.send(send_frame(&id, "second", 1)).await;
    let refused = answer(&mut alices).await;
    assert_eq!(
        (refused["client_message_id"].as_str(), refused["error"]["code"].as_str()),
        (Some("second"), Some("rate_limited")),
        "{refused}"
    );

    other_writer.release().await;
    let first = answer(&mut alices).await;
    assert_eq!((first["type"].as_str(), first["client_message_id"].as_str()), (Some("sent"), Some("first")));
    alices.send(send_frame(&id, "third", 1)).await;
    let third = answer(&mut alices).await;
    assert_eq!((third["type"].as_str(), third["seq"].as_u64()), (Some("sent"), Some(2)), "{third}");
    let (_, sync) = server.get("/v1/sync", Some(&bob.token())).await;
    let stored: Vec<u64> = sync["entries"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(stored, [1, 2], "the refused send stored nothing");
}

#[tokio::test]
async fn refused_sends_over_the_socket_say_why_and_store_nothing() {
    let server = server!(|config| config.rate_limits.sends_per_device = 2);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let outsider = server.user("outsider").await;
    let id = direct(&server, &alice, &[&bob]).await;
    let mut alices = Socket::connect(&server, &alice.token()).await;
    alices.drain().await;
    let mut outsiders = Socket::connect(&server, &outsider.token()).await;
    outsiders.drain().await;

    // Someone else's conversation.
    outsiders.send(send_frame(&id, "intrusion", 1)).await;
    let refused = answer(&mut outsiders).await;
    assert_eq!(
        (refused["type"].as_str(), refused["error"]["code"].as_str()),
        (Some("send_failed"), Some("not_a_member"))
    );
    assert_eq!(refused["client_message_id"], "intrusion");
    // A stale epoch names the current one.
    alices.send(send_frame(&id, "old", 7)).await;
    let stale = answer(&mut alices).await;
    assert_eq!(
        (stale["error"]["code"].as_str(), stale["error"]["current_epoch"].as_u64()),
        (Some("stale_epoch"), Some(1))
    );
    // Bad fields are refused as the HTTP send refuses them.
    let mut empty = send_frame(&id, "empty", 1);
    empty["ciphertext"] = json!("");
    alices.send(empty).await;
    assert_eq!(answer(&mut alices).await["error"]["code"], "invalid_argument");
    // A frame that is not a send at all gets an error frame, and the socket stays open.
    alices.send(json!({"type": "send", "conversation_id": id})).await;
    assert_eq!(alices.next_frame().await["code"], "malformed_request");
    // The device's send rate limit counts socket sends too (the stale and the empty one above
    // used up its two).
    alices.send(send_frame(&id, "limited", 1)).await;
    assert_eq!(answer(&mut alices).await["error"]["code"], "rate_limited");

    let (_, summary) = server.get(&format!("/v1/conversations/{id}"), Some(&alice.token())).await;
    assert_eq!(summary["last_seq"], 0, "nothing was stored");
    let (_, sync) = server.get("/v1/sync", Some(&bob.token())).await;
    assert_eq!(sync["entries"], json!([]));

    // A socket that outlived its session cannot send on it.
    server.clock().advance_ms(31 * 24 * 3600 * 1000);
    alices.send(send_frame(&id, "late", 1)).await;
    assert_eq!(answer(&mut alices).await["error"]["code"], "session_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_committed_while_a_socket_connects_is_pushed_to_it() {
    let server = server!();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id = direct(&server, &alice, &[&bob]).await;

    // No device is connected when the send starts, and its commit waits behind another writer.
    let mut other_writer = server.database().connect().await;
    other_writer.block_writes().await;
    let token = alice.token();
    let sending = send(&server, &token, &id, "while bob connects");
    let connecting = async {
        // Time for the send to reach its commit (the assertions hold however long this is;
        // only a send that already waits shows what this test is about).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut bobs = Socket::connect(&server, &bob.token()).await;
        let drained = bobs.drain().await;
        assert!(drained.iter().all(|frame| frame["type"] != "entry"), "not committed yet: {drained:?}");
        other_writer.release().await;
        bobs
    };
    let (seq, mut bobs) = futures::join!(sending, connecting);
    // Bob's socket read the store before the commit, so only a push brings him the entry.
    let frame = bobs.next_frame().await;
    assert_eq!((frame["type"].as_str(), frame["seq"].as_u64()), (Some("entry"), Some(seq)), "{frame}");
}
