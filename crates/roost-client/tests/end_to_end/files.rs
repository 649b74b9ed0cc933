//! Files end to end: sealed by the sender's SDK, uploaded, pointed to inside MLS, downloaded
//! and opened by the recipient's; the server holds ciphertext only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use roost_client::files::{CHUNK, Progress};
use roost_client::{Client, Content, Event, FileDetails};
use roost_proto::conversation::ConversationKind;
use roost_testkit::TestServer;

const MARKER: &[u8] = b"secret file plaintext ";

/// A file of `length` bytes: the marker over and over, with a changing byte so no chunk repeats.
fn file_bytes(length: usize) -> Vec<u8> {
    (0..length).map(|i| if i % 1000 < MARKER.len() { MARKER[i % 1000] } else { (i / 7) as u8 }).collect()
}

fn counting() -> (Progress, Arc<AtomicU64>) {
    let reached = Arc::new(AtomicU64::new(0));
    let seen = reached.clone();
    (Arc::new(move |done, _total| seen.store(done, Ordering::SeqCst)), reached)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_travels_sealed_and_opens_only_as_sent() {
    let server = server!();
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Client::register(&homes.path().join("alice"), &server.base, None).await.unwrap();
    let mut bob = Client::register(&homes.path().join("bob"), &server.base, None).await.unwrap();
    let id = alice.create_conversation(ConversationKind::Direct, &[bob.user_id()]).await.unwrap();

    let original = file_bytes(3 * CHUNK + 12_345);
    let source = homes.path().join("holiday.jpg");
    std::fs::write(&source, &original).unwrap();
    let details = FileDetails {
        media_type: Some("image/jpeg".into()),
        width: Some(640),
        height: Some(480),
        ..FileDetails::default()
    };
    let (sent_progress, sent) = counting();
    let (seq, pointer) = alice.send_file(&id, &source, details, sent_progress).await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), roost_client::files::sealed_length(original.len() as u64));
    assert_eq!((pointer.name.as_str(), pointer.size), ("holiday.jpg", original.len() as u64));

    let events = bob.sync().await.unwrap();
    let received = events
        .iter()
        .find_map(|event| match event {
            Event::Message(message) if message.seq == seq => match &message.content {
                Content::Attachment(attachment) => Some(attachment.clone()),
                _ => None,
            },
            _ => None,
        })
        .expect("bob got the attachment message");
    assert_eq!(received, pointer);
    assert_eq!(
        (received.media_type.as_deref(), received.width, received.height),
        (Some("image/jpeg"), Some(640), Some(480))
    );

    let saved = homes.path().join("bob-holiday.jpg");
    let (got_progress, got) = counting();
    bob.save_attachment(&received, &saved, got_progress).await.unwrap();
    assert_eq!(std::fs::read(&saved).unwrap(), original);
    assert_eq!(got.load(Ordering::SeqCst), roost_client::files::sealed_length(original.len() as u64));

    // The server's data (database and attachment files) holds no plaintext of the file.
    let marker = std::str::from_utf8(MARKER).unwrap();
    assert!(!roost_testkit::files_contain(&server.config.data_dir, marker), "plaintext in the server's data directory");
    assert!(!server.database().contains(marker).await, "plaintext in the server's database");

    // A download interrupted after two chunks resumes from the partial file.
    let resumed = homes.path().join("resumed.jpg");
    std::fs::write(homes.path().join("resumed.jpg.part"), &original[..2 * CHUNK + 100]).unwrap();
    bob.save_attachment(&received, &resumed, Arc::new(|_, _| {})).await.unwrap();
    assert_eq!(std::fs::read(&resumed).unwrap(), original);

    // A partial file that is not what was sent fails the digest and is deleted.
    let forged = homes.path().join("forged.jpg");
    let mut wrong = original[..CHUNK].to_vec();
    wrong[5] ^= 1;
    std::fs::write(homes.path().join("forged.jpg.part"), &wrong).unwrap();
    assert!(bob.save_attachment(&received, &forged, Arc::new(|_, _| {})).await.is_err());
    assert!(!forged.exists() && !homes.path().join("forged.jpg.part").exists(), "nothing of it is left");

    // A pointer whose digest or key was changed does not open.
    for tampered in [
        roost_client::Attachment { digest: roost_proto::bytes::encode(&[0; 32]), ..received.clone() },
        roost_client::Attachment { key: roost_proto::bytes::encode(&[1; 32]), ..received.clone() },
    ] {
        let target = homes.path().join("tampered.jpg");
        assert!(bob.save_attachment(&tampered, &target, Arc::new(|_, _| {})).await.is_err());
        assert!(!target.exists() && !homes.path().join("tampered.jpg.part").exists());
    }

    // Somebody outside the conversation cannot fetch it, even with the pointer.
    let carol = Client::register(&homes.path().join("carol"), &server.base, None).await.unwrap();
    let outsider = homes.path().join("carol.jpg");
    let refused = carol.save_attachment(&received, &outsider, Arc::new(|_, _| {})).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(!outsider.exists());
    // Empty files travel too.
    let empty = homes.path().join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let (_, pointer) = alice.send_file(&id, &empty, FileDetails::default(), Arc::new(|_, _| {})).await.unwrap();
    bob.sync().await.unwrap();
    let copy = homes.path().join("empty-copy.txt");
    bob.save_attachment(&pointer, &copy, Arc::new(|_, _| {})).await.unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), b"");
}
