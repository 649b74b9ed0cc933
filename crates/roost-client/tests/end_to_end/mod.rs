//! End to end over a real server: real MLS through OpenMLS, real HTTP, a real store. The suite
//! runs once per backend: `end_to_end_sqlite.rs` and `end_to_end_postgres.rs` each include it
//! with their `BACKEND`.

use roost_client::{Client, Content, Event};
use roost_proto::conversation::ConversationKind;
use roost_testkit::TestServer;

/// A server on the suite's backend; where that backend is not available here, the test returns
/// at this point after a printed notice.
macro_rules! server {
    () => {
        match TestServer::on(crate::BACKEND).start().await {
            Some(server) => server,
            None => return,
        }
    };
}

mod files;
mod push;

fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Message(message) => Some(message.content.display()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_and_bob_exchange_encrypted_messages() {
    let log = roost_testkit::capture_logs();
    let server = server!();
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Client::register(&homes.path().join("alice"), &server.base, None).await.unwrap();
    let mut bob = Client::register(&homes.path().join("bob"), &server.base, None).await.unwrap();

    let id = alice.create_conversation(ConversationKind::Direct, &[bob.user_id()]).await.unwrap();
    let first = alice.send_text(&id, "hello bob, this is secret plaintext one").await.unwrap();
    assert_eq!(first, 1);

    let events = bob.sync().await.unwrap();
    assert!(events.contains(&Event::Joined(id)), "{events:?}");
    assert_eq!(texts(&events), vec!["hello bob, this is secret plaintext one"]);
    bob.send_text(&id, "hi alice, secret plaintext two").await.unwrap();
    let events = alice.sync().await.unwrap();
    assert_eq!(texts(&events), vec!["hi alice, secret plaintext two"]);
    assert!(bob.sync().await.unwrap().is_empty(), "everything was acknowledged");

    // Both keep the same history, in the same order.
    let alices: Vec<_> = alice.history(&id).unwrap().into_iter().map(|m| (m.seq, m.content)).collect();
    let bobs: Vec<_> = bob.history(&id).unwrap().into_iter().map(|m| (m.seq, m.content)).collect();
    assert_eq!(alices, bobs);
    assert_eq!(alices[0].1, Content::Text { body: "hello bob, this is secret plaintext one".into() });

    // A client that reopens its state keeps its history and its group.
    drop(alice);
    let mut alice = Client::open(&homes.path().join("alice")).unwrap();
    alice.connect().await.unwrap();
    alice.send_text(&id, "after a restart, secret plaintext three").await.unwrap();
    assert_eq!(texts(&bob.sync().await.unwrap()), vec!["after a restart, secret plaintext three"]);

    // The server never saw a plaintext: not in its database, not in its logs.
    let log = std::fs::read(log).unwrap();
    assert!(!log.is_empty(), "the server logged");
    for secret in ["secret plaintext one", "secret plaintext two", "secret plaintext three"] {
        assert!(!server.database().contains(secret).await, "{secret:?} found in the server's data");
        assert!(!log.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret:?} found in the server's log");
        assert!(roost_testkit::files_contain(homes.path(), secret), "the clients did store {secret:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_three_sees_the_same_messages() {
    let server = server!();
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Client::register(&homes.path().join("alice"), &server.base, None).await.unwrap();
    let mut bob = Client::register(&homes.path().join("bob"), &server.base, None).await.unwrap();
    let mut carol = Client::register(&homes.path().join("carol"), &server.base, None).await.unwrap();
    let id = alice.create_conversation(ConversationKind::Group, &[bob.user_id(), carol.user_id()]).await.unwrap();
    alice.send_text(&id, "one").await.unwrap();
    bob.sync().await.unwrap();
    bob.send_text(&id, "two").await.unwrap();
    carol.sync().await.unwrap();
    carol.send_text(&id, "three").await.unwrap();
    alice.sync().await.unwrap();
    bob.sync().await.unwrap();
    let show = |client: &Client| {
        client.history(&id).unwrap().into_iter().map(|m| (m.seq, m.content.display())).collect::<Vec<_>>()
    };
    let expected = vec![(1, "one".to_owned()), (2, "two".to_owned()), (3, "three".to_owned())];
    assert_eq!(show(&alice), expected);
    assert_eq!(show(&bob), expected);
    assert_eq!(show(&carol), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_device_gets_only_messages_after_it_joined() {
    let server = server!();
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Client::register(&homes.path().join("alice"), &server.base, None).await.unwrap();
    let mut bob = Client::register(&homes.path().join("bob"), &server.base, None).await.unwrap();
    let id = alice.create_conversation(ConversationKind::Direct, &[bob.user_id()]).await.unwrap();
    alice.send_text(&id, "before the phone").await.unwrap();
    bob.sync().await.unwrap();

    let phone_home = homes.path().join("alice-phone");
    let code = Client::start_link(&phone_home, &server.base).await.unwrap();
    assert!(Client::finish_link(&phone_home).await.unwrap().is_none(), "pending until approved");
    let phone_device = alice.approve_link(&code).await.unwrap();
    let mut phone = Client::finish_link(&phone_home).await.unwrap().expect("approved");
    assert_eq!((phone.user_id(), phone.device_id()), (alice.user_id(), phone_device));
    assert!(!phone.holds_identity());

    // Alice's first device adds the phone to her conversations on its next sync.
    alice.sync().await.unwrap();
    assert_eq!(alice.add_missing_own_devices().await.unwrap(), 1);
    let events = phone.sync().await.unwrap();
    assert!(events.contains(&Event::Joined(id)), "{events:?}");
    bob.sync().await.unwrap();
    bob.send_text(&id, "after the phone").await.unwrap();
    assert_eq!(texts(&phone.sync().await.unwrap()), vec!["after the phone"]);
    assert_eq!(texts(&alice.sync().await.unwrap()), vec!["after the phone"]);
    let seen: Vec<String> = phone.history(&id).unwrap().iter().map(|m| m.content.display()).collect();
    assert_eq!(seen, vec!["after the phone"], "forward-only: nothing from before the join");

    // Both directions, from every device; every device shows the same order.
    phone.send_text(&id, "from alice's phone").await.unwrap();
    alice.sync().await.unwrap();
    alice.send_text(&id, "from alice's laptop").await.unwrap();
    bob.sync().await.unwrap();
    bob.send_text(&id, "bob again").await.unwrap();
    for client in [&mut alice, &mut phone, &mut bob] {
        client.sync().await.unwrap();
    }
    let log = |client: &Client| -> Vec<(u64, String)> {
        client
            .history(&id)
            .unwrap()
            .into_iter()
            .map(|m| (m.seq, m.content.display()))
            .filter(|(seq, _)| *seq > 2)
            .collect()
    };
    assert_eq!(log(&alice), log(&bob));
    assert_eq!(log(&phone), log(&bob));
    assert_eq!(log(&bob).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_members_read_new_messages_and_removed_ones_cannot() {
    let server = server!();
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Client::register(&homes.path().join("alice"), &server.base, None).await.unwrap();
    let mut bob = Client::register(&homes.path().join("bob"), &server.base, None).await.unwrap();
    let mut carol = Client::register(&homes.path().join("carol"), &server.base, None).await.unwrap();
    let id = alice.create_conversation(ConversationKind::Group, &[bob.user_id()]).await.unwrap();
    alice.send_text(&id, "before carol").await.unwrap();

    alice.add_users(&id, &[carol.user_id()]).await.unwrap();
    alice.send_text(&id, "welcome carol").await.unwrap();
    let events = carol.sync().await.unwrap();
    assert!(events.contains(&Event::Joined(id)));
    assert_eq!(texts(&events), vec!["welcome carol"]);
    let events = bob.sync().await.unwrap();
    assert!(events.contains(&Event::MembersChanged(id)));
    assert_eq!(texts(&events), vec!["before carol", "welcome carol"]);

    // Bob is removed; what follows is encrypted under keys he does not have.
    alice.remove_users(&id, &[bob.user_id()]).await.unwrap();
    alice.send_text(&id, "bob must not read this secret").await.unwrap();
    let events = bob.sync().await.unwrap();
    assert!(events.contains(&Event::Removed(id)), "{events:?}");
    assert!(texts(&events).is_empty());
    assert!(bob.history(&id).unwrap().iter().all(|m| m.content.display() != "bob must not read this secret"));
    assert_eq!(texts(&carol.sync().await.unwrap()), vec!["bob must not read this secret"]);
    let err = bob.send_text(&id, "still here?").await.unwrap_err();
    assert!(err.code().is_some() || matches!(err, roost_client::ClientError::Mls(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_tampers_with_a_welcome_or_injects_a_device_is_detected() {
    let server = server!();
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Client::register(&homes.path().join("alice"), &server.base, None).await.unwrap();
    let mut bob = Client::register(&homes.path().join("bob"), &server.base, None).await.unwrap();

    // The server replaces the stored Welcome with garbage: bob refuses to join and reports it.
    let id = alice.create_conversation(ConversationKind::Direct, &[bob.user_id()]).await.unwrap();
    let mut db = server.database().connect().await;
    db.execute("UPDATE queue_blobs SET payload = $1", &[&[0u8; 256]]).await;
    let events = bob.sync().await.unwrap();
    assert!(
        events.iter().any(|e| matches!(e, Event::Rejected { conversation_id: Some(c), .. } if *c == id)),
        "{events:?}"
    );
    assert!(!events.contains(&Event::Joined(id)));

    // The server swaps a KeyPackage for one whose leaf claims to be a device of bob's that bob
    // never certified: alice refuses to add it.
    let forger = Client::register(&homes.path().join("forger"), &server.base, None).await.unwrap();
    let forged = db
        .fetch_bytes("SELECT data FROM key_packages WHERE device_id = $1 LIMIT 1", &[forger.device_id().as_bytes()])
        .await
        .unwrap();
    let bob_device = bob.device_id();
    db.execute("UPDATE key_packages SET data = $1 WHERE device_id = $2", &[&forged, bob_device.as_bytes()]).await;
    let err = alice.create_conversation(ConversationKind::Direct, &[bob.user_id()]).await.unwrap_err();
    assert!(matches!(err, roost_client::ClientError::Verification(_)), "{err:?}");
    drop(forger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_device_gets_messages_pushed_over_the_websocket() {
    let server = server!();
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Client::register(&homes.path().join("alice"), &server.base, None).await.unwrap();
    let mut bob = Client::register(&homes.path().join("bob"), &server.base, None).await.unwrap();
    let id = alice.create_conversation(ConversationKind::Direct, &[bob.user_id()]).await.unwrap();

    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    // The client's futures are not Send (its SQLite connections are not Sync), so the listener
    // runs in this task beside the sender rather than in a spawned one.
    let listening = bob.listen(|event| {
        let _ = events.send(event);
    });
    let driving = async {
        let mut next_message = async || {
            while let Some(event) = received.recv().await {
                if let Event::Message(message) = event {
                    return message.content.display();
                }
            }
            panic!("the listener stopped");
        };
        alice.send_text(&id, "pushed one").await.unwrap();
        assert_eq!(next_message().await, "pushed one");
        alice.send_text(&id, "pushed two").await.unwrap();
        assert_eq!(next_message().await, "pushed two");
    };
    tokio::select! {
        result = listening => panic!("the listener ended: {result:?}"),
        () = driving => {}
        () = tokio::time::sleep(std::time::Duration::from_secs(20)) => panic!("no push in time"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leavers_and_revoked_devices_are_removed_from_the_mls_group() {
    let server = server!();
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Client::register(&homes.path().join("alice"), &server.base, None).await.unwrap();
    let mut bob = Client::register(&homes.path().join("bob"), &server.base, None).await.unwrap();
    let mut carol = Client::register(&homes.path().join("carol"), &server.base, None).await.unwrap();
    let phone_home = homes.path().join("carol-phone");
    let code = Client::start_link(&phone_home, &server.base).await.unwrap();
    carol.approve_link(&code).await.unwrap();
    let mut phone = Client::finish_link(&phone_home).await.unwrap().unwrap();

    let id = alice.create_conversation(ConversationKind::Group, &[bob.user_id(), carol.user_id()]).await.unwrap();
    for client in [&mut bob, &mut carol, &mut phone] {
        assert!(client.sync().await.unwrap().contains(&Event::Joined(id)));
    }
    assert_eq!(alice.members(&id).unwrap().len(), 3);

    // Bob leaves; alice removes his leaf on her next sync.
    bob.leave(&id).await.unwrap();
    alice.sync().await.unwrap();
    assert_eq!(alice.remove_departed().await.unwrap(), 1);
    assert!(!alice.members(&id).unwrap().contains(&bob.user_id()));

    // Carol revokes her phone; its leaf goes too.
    carol.revoke_device(&phone.device_id()).await.unwrap();
    carol.sync().await.unwrap();
    assert_eq!(carol.remove_departed().await.unwrap(), 1);
    assert_eq!(alice.remove_departed().await.unwrap(), 0, "already removed by carol");
    alice.sync().await.unwrap();
    alice.send_text(&id, "after the departures").await.unwrap();
    assert_eq!(texts(&carol.sync().await.unwrap()), vec!["after the departures"]);
    assert!(phone.sync().await.is_err(), "the revoked device cannot even fetch");
    let err = bob.send_text(&id, "am I still here?").await.unwrap_err();
    assert!(err.code().is_some(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_joins_by_external_commit() {
    let server = server!();
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Client::register(&homes.path().join("alice"), &server.base, None).await.unwrap();
    let mut bob = Client::register(&homes.path().join("bob"), &server.base, None).await.unwrap();
    let mallory = Client::register(&homes.path().join("mallory"), &server.base, None).await.unwrap();
    let id = alice.create_conversation(ConversationKind::Direct, &[bob.user_id()]).await.unwrap();
    alice.send_text(&id, "before the tablet").await.unwrap();
    bob.sync().await.unwrap();

    let tablet_home = homes.path().join("alice-tablet");
    let code = Client::start_link(&tablet_home, &server.base).await.unwrap();
    alice.approve_link(&code).await.unwrap();
    let mut tablet = Client::finish_link(&tablet_home).await.unwrap().unwrap();
    tablet.join_by_external_commit(&id).await.unwrap();

    // The members verify the joining leaf and move to the new epoch.
    assert!(bob.sync().await.unwrap().contains(&Event::MembersChanged(id)));
    assert!(alice.sync().await.unwrap().contains(&Event::MembersChanged(id)));
    bob.send_text(&id, "hello tablet").await.unwrap();
    assert_eq!(texts(&tablet.sync().await.unwrap()), vec!["hello tablet"]);
    assert_eq!(texts(&alice.sync().await.unwrap()), vec!["hello tablet"]);
    tablet.send_text(&id, "from the tablet").await.unwrap();
    assert_eq!(texts(&bob.sync().await.unwrap()), vec!["from the tablet"]);
    assert_eq!(tablet.history(&id).unwrap().len(), 2, "forward-only");

    // Devices of users who are not members cannot join this way.
    let mut mallory = mallory;
    let err = mallory.join_by_external_commit(&id).await.unwrap_err();
    assert_eq!(err.code(), Some(roost_proto::ErrorCode::NotAMember), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_device_removes_a_device_revoked_meanwhile() {
    let server = server!();
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Client::register(&homes.path().join("alice"), &server.base, None).await.unwrap();
    let mut carol = Client::register(&homes.path().join("carol"), &server.base, None).await.unwrap();
    let phone_home = homes.path().join("carol-phone");
    let code = Client::start_link(&phone_home, &server.base).await.unwrap();
    carol.approve_link(&code).await.unwrap();
    let mut phone = Client::finish_link(&phone_home).await.unwrap().unwrap();
    let id = alice.create_conversation(ConversationKind::Group, &[carol.user_id()]).await.unwrap();
    for client in [&mut carol, &mut phone] {
        assert!(client.sync().await.unwrap().contains(&Event::Joined(id)));
    }

    // Alice listens while carol revokes her phone: the device list change reaches alice's
    // socket and her client removes the phone's leaf without being asked.
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let listening = alice.listen(|event| {
        let _ = events.send(event);
    });
    let revoking = async {
        // The listener must be connected to hear of the change: a message pushed to it says so.
        carol.send_text(&id, "are you there?").await.unwrap();
        while let Some(event) = received.recv().await {
            if matches!(event, Event::Message(_)) {
                break;
            }
        }
        carol.revoke_device(&phone.device_id()).await.unwrap();
        while let Some(event) = received.recv().await {
            if let Event::DevicesUpdated { removed, .. } = event {
                return removed;
            }
        }
        panic!("the listener stopped");
    };
    let removed = tokio::select! {
        result = listening => panic!("the listener ended: {result:?}"),
        removed = revoking => removed,
        () = tokio::time::sleep(std::time::Duration::from_secs(20)) => panic!("the revoked leaf stayed"),
    };
    assert_eq!(removed, 1);
    carol.sync().await.unwrap();
    assert_eq!(carol.remove_departed().await.unwrap(), 0, "already removed by alice's listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_send_catches_up_on_is_still_reported() {
    let server = server!();
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Client::register(&homes.path().join("alice"), &server.base, None).await.unwrap();
    let mut bob = Client::register(&homes.path().join("bob"), &server.base, None).await.unwrap();
    let carol = Client::register(&homes.path().join("carol"), &server.base, None).await.unwrap();
    let id = alice.create_conversation(ConversationKind::Group, &[bob.user_id()]).await.unwrap();
    bob.sync().await.unwrap();

    // Alice writes, then moves the group to a new epoch; bob sends without having synced, so
    // his client catches up inside the send. The message it found is reported all the same.
    alice.send_text(&id, "before the new epoch").await.unwrap();
    alice.add_users(&id, &[carol.user_id()]).await.unwrap();
    bob.send_text(&id, "sent after catching up").await.unwrap();
    assert_eq!(texts(&bob.sync().await.unwrap()), vec!["before the new epoch"]);
}
