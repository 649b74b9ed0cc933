//! Push from the SDK: a device subscribes with keys it makes (as with a UnifiedPush
//! distributor), the server's wake-ups reach the endpoint sealed to those keys, and the SDK opens
//! them; the endpoint is roost-testkit's push service, which checks each request's VAPID token.

use roost_client::Client;
use roost_proto::conversation::ConversationKind;
use roost_testkit::TestServer;
use roost_testkit::push::PushReceiver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_opens_the_wake_ups_sealed_to_the_keys_it_subscribed_with() {
    let Some(receiver) = PushReceiver::start().await else { return };
    let Some(server) =
        TestServer::on(crate::BACKEND).configure(|config| config.push.allow_http_loopback = true).start().await
    else {
        return;
    };
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Client::register(&homes.path().join("alice"), &server.base, None).await.unwrap();
    let mut bob = Client::register(&homes.path().join("bob"), &server.base, None).await.unwrap();
    let endpoint = receiver.endpoint().await;
    let url = endpoint.body["endpoint"].as_str().unwrap();
    let status = bob.subscribe_push_endpoint(url).await.unwrap();
    assert!(status.subscribed && status.endpoint.as_deref() == Some(url), "{status:?}");
    assert_eq!(bob.push_endpoint().unwrap().as_deref(), Some(url));
    let server_key = roost_proto::bytes::encode(&bob.push_server_key().await.unwrap());

    // Alice's new chat wakes bob; the wake-up opens with bob's keys and says nothing else.
    let id = alice.create_conversation(ConversationKind::Direct, &[bob.user_id()]).await.unwrap();
    let pushes = receiver.wait_for(&endpoint, 1).await;
    assert_eq!(pushes[0]["vapid_problems"], serde_json::json!([]), "{}", pushes[0]);
    assert_eq!(pushes[0]["vapid_key"], server_key.as_str());
    let body = roost_proto::bytes::decode(pushes[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(bob.open_wake_up(&body).unwrap(), br#"{"type":"wake"}"#);

    // Woken, bob syncs; the next message wakes him again.
    bob.sync().await.unwrap();
    alice.send_text(&id, "are you there?").await.unwrap();
    let pushes = receiver.wait_for(&endpoint, 2).await;
    let body = roost_proto::bytes::decode(pushes[1]["body"].as_str().unwrap()).unwrap();
    assert_eq!(bob.open_wake_up(&body).unwrap(), br#"{"type":"wake"}"#);
    assert!(alice.open_wake_up(&body).is_err(), "alice holds no push keys");

    bob.unsubscribe_push().await.unwrap();
    assert!(!bob.push_status().await.unwrap().subscribed);
    assert!(bob.open_wake_up(&body).is_err(), "the keys are gone with the subscription");
}
