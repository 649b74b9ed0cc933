//! The SDK against a server that serves TLS with a certificate generated here: registration,
//! messages and the WebSocket over `https://` and `wss://`, and a clear error for a certificate
//! the client does not trust.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: failing loudly is the point.

use roost_client::{Client, ClientError, Event};
use roost_proto::conversation::ConversationKind;
use roost_testkit::tls_server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_talks_https_and_wss_to_a_server_it_trusts() {
    let files = tempfile::tempdir().unwrap();
    let (_server, certificate, base) = tls_server(files.path()).await;
    let homes = tempfile::tempdir().unwrap();

    // Not trusted yet: refused, and said why.
    let err = Client::register(&homes.path().join("early"), &base, None).await.err().expect("refused");
    assert!(matches!(&err, ClientError::Invalid(message) if message.contains("TLS")), "{err:?}");

    assert_eq!(roost_client::tls::trust(certificate.pem.as_bytes()).unwrap(), 1);
    let mut alice = Client::register(&homes.path().join("alice"), &base, None).await.unwrap();
    let mut bob = Client::register(&homes.path().join("bob"), &base, None).await.unwrap();
    let id = alice.create_conversation(ConversationKind::Direct, &[bob.user_id()]).await.unwrap();

    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let listening = bob.listen(|event| {
        let _ = events.send(event);
    });
    let driving = async {
        alice.send_text(&id, "over TLS").await.unwrap();
        while let Some(event) = received.recv().await {
            if let Event::Message(message) = event {
                assert_eq!(message.content.display(), "over TLS");
                return;
            }
        }
        panic!("the listener stopped");
    };
    tokio::select! {
        result = listening => panic!("the listener ended: {result:?}"),
        () = driving => {}
        () = tokio::time::sleep(std::time::Duration::from_secs(20)) => panic!("no push in time"),
    }
}
