//! Conformance cases of the attachment half.

use roost_proto::AttachmentId;
use roost_proto::conversation::{ConversationKind, RetentionPolicy};

use super::conversations::{commit, conversation, create, member, people};
use super::{NOW, device};
use crate::{MemberRef, NewAttachment, Store, StoreError, UploadProgress};

const DAY: i64 = 86_400_000;

fn attachment_id(n: u8) -> AttachmentId {
    AttachmentId::from_bytes([n; 16])
}

fn upload(n: u8, conversation_n: u8, uploader: MemberRef, length: u64, now: i64) -> NewAttachment {
    NewAttachment {
        id: attachment_id(n),
        conversation_id: conversation(conversation_n),
        uploader,
        length,
        sha256: vec![n; 32],
        chunk_bytes: 4,
        hash_state: b"empty".to_vec(),
        now,
        daily_quota: 100,
    }
}

async fn complete<S: Store>(store: &S, n: u8, length: u64, at: i64) {
    let progress = UploadProgress {
        id: attachment_id(n),
        from: 0,
        to: length,
        hash_state: b"done".to_vec(),
        completed_at: Some(at),
    };
    store.record_upload(progress).await.unwrap();
}

async fn expired<S: Store>(store: &S, now: i64, max_age_ms: Option<i64>) -> Vec<u8> {
    let mut ids: Vec<u8> = store
        .expired_attachments(now, max_age_ms, now - DAY, 100)
        .await
        .unwrap()
        .iter()
        .map(|record| record.id.as_bytes()[0])
        .collect();
    ids.sort_unstable();
    ids
}

/// Uploads are created by current member devices only, within the user's daily quota, and move
/// forward by compare-and-set.
pub async fn uploads_check_membership_quota_and_offsets<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::Permanent).await;

    let stranger = store.create_attachment(upload(1, 1, member(3, 30), 10, NOW)).await;
    assert!(matches!(stranger, Err(StoreError::NotAMember)), "{stranger:?}");
    assert!(store.attachment(&attachment_id(1)).await.unwrap().is_none(), "a refused upload leaves nothing");

    store.create_attachment(upload(1, 1, member(1, 10), 60, NOW)).await.unwrap();
    let record = store.attachment(&attachment_id(1)).await.unwrap().unwrap();
    assert_eq!((record.length, record.received, record.completed_at, record.chunks()), (60, 0, None, 15));
    assert_eq!(record.uploader, member(1, 10));
    assert_eq!(record.hash_state, b"empty");

    // 60 + 50 > 100: over the quota, whichever device of the user asks; the other user is not.
    let over = store.create_attachment(upload(2, 1, member(1, 10), 50, NOW)).await;
    assert!(matches!(over, Err(StoreError::QuotaExceeded)), "{over:?}");
    let alone = store.create_attachment(upload(2, 1, member(1, 10), 101, NOW + DAY)).await;
    assert!(matches!(alone, Err(StoreError::QuotaExceeded)), "one upload larger than the quota: {alone:?}");
    store.create_attachment(upload(3, 1, member(2, 20), 50, NOW)).await.unwrap();
    // The next UTC day starts afresh.
    store.create_attachment(upload(2, 1, member(1, 10), 50, NOW + DAY)).await.unwrap();

    let step = UploadProgress { id: attachment_id(1), from: 0, to: 8, hash_state: b"8".to_vec(), completed_at: None };
    store.record_upload(step.clone()).await.unwrap();
    let again = store.record_upload(step).await;
    assert!(matches!(again, Err(StoreError::OffsetMismatch { current: 8 })), "{again:?}");
    let unknown = UploadProgress { id: attachment_id(9), from: 0, to: 8, hash_state: vec![], completed_at: None };
    assert!(matches!(store.record_upload(unknown).await, Err(StoreError::NotFound)));

    store.append_message(super::conversations::message(1, member(1, 10), "m", 1, NOW)).await.unwrap();
    let last = UploadProgress {
        id: attachment_id(1),
        from: 8,
        to: 60,
        hash_state: b"60".to_vec(),
        completed_at: Some(NOW + 5),
    };
    store.record_upload(last.clone()).await.unwrap();
    let record = store.attachment(&attachment_id(1)).await.unwrap().unwrap();
    assert_eq!((record.received, record.completed_at, record.completed_seq), (60, Some(NOW + 5), Some(1)));
    assert_eq!(record.hash_state, b"60");
    let after = store.record_upload(UploadProgress { from: 60, to: 61, ..last }).await;
    assert!(after.is_err(), "a completed upload takes no more bytes");
}

/// Attachments go with their conversation's TTL, the maximum age, burn-on-read once every
/// device that could read them fetched them, and the end of the conversation; abandoned uploads
/// go after a day.
pub async fn attachments_expire_with_retention_and_their_conversation<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::Ttl { ttl_secs: 60 }).await;
    create(store, 2, ConversationKind::Direct, &[(2, 20), (2, 21)], RetentionPolicy::BurnOnRead).await;
    create(store, 3, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::Permanent).await;

    store.create_attachment(upload(1, 1, member(1, 10), 4, NOW)).await.unwrap();
    complete(store, 1, 4, NOW).await;
    store.create_attachment(upload(2, 2, member(1, 10), 4, NOW)).await.unwrap();
    complete(store, 2, 4, NOW).await;
    store.create_attachment(upload(3, 3, member(1, 10), 4, NOW)).await.unwrap();
    complete(store, 3, 4, NOW).await;
    store.create_attachment(upload(4, 3, member(1, 10), 4, NOW)).await.unwrap();

    assert_eq!(expired(store, NOW + 59_000, None).await, Vec::<u8>::new());
    assert_eq!(expired(store, NOW + 60_000, None).await, vec![1], "the conversation's TTL");

    // Burn-on-read: both of user 2's devices must fetch; a device added later does not count.
    let mut adding = commit(2, member(1, 10), 1);
    adding.add = vec![member(1, 11)];
    store.commit(adding).await.unwrap();
    store.record_fetch(&attachment_id(2), &device(20)).await.unwrap();
    store.record_fetch(&attachment_id(2), &device(20)).await.unwrap();
    assert_eq!(expired(store, NOW + 1, None).await, Vec::<u8>::new());
    store.record_fetch(&attachment_id(2), &device(21)).await.unwrap();
    assert_eq!(expired(store, NOW + 1, None).await, vec![2], "fetched by every device that could read it");

    assert_eq!(expired(store, NOW + DAY, None).await, vec![1, 2, 4], "an upload abandoned for a day");
    assert_eq!(expired(store, NOW + 1, Some(1)).await, vec![1, 2, 3, 4], "the maximum age bounds every policy");

    store.delete_attachment(&attachment_id(1), NOW).await.unwrap();
    assert!(store.attachment(&attachment_id(1)).await.unwrap().is_none());

    // Everybody leaves conversation 3: its attachments go.
    store.leave(&conversation(3), member(1, 10), b"bye".to_vec(), NOW).await.unwrap();
    assert_eq!(expired(store, NOW + 1, None).await, vec![2]);
    store.leave(&conversation(3), member(2, 20), b"bye".to_vec(), NOW).await.unwrap();
    assert_eq!(expired(store, NOW + 1, None).await, vec![2, 3, 4], "a conversation nobody is in any more");
}
