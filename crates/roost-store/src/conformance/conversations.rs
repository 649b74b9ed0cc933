//! Conformance cases for conversations, logs, positions, queues and retention.

use std::collections::BTreeSet;

use futures::future::join_all;
use roost_proto::ConversationId;
use roost_proto::conversation::{ConversationKind, EntryKind, QueueKind, RetentionPolicy};

use super::{NOW, device, new_device, user};
use crate::{
    CommitWrite, MemberRef, MessageWrite, NewConversation, QueueWrite, Store, StoreError, SyncCursor, SyncPage,
};

pub(crate) fn member(user_n: u8, device_n: u8) -> MemberRef {
    MemberRef { user_id: user(user_n), device_id: device(device_n) }
}

pub(crate) fn conversation(n: u8) -> ConversationId {
    ConversationId::from_bytes([n; 16])
}

/// Users 1 (devices 10, 11), 2 (devices 20, 21) and 3 (device 30) are registered.
pub(crate) async fn people<S: Store>(store: &S) {
    store.register_user(new_device(1, 10), None).await.unwrap();
    store.add_device(new_device(1, 11), 10).await.unwrap();
    store.register_user(new_device(2, 20), None).await.unwrap();
    store.add_device(new_device(2, 21), 10).await.unwrap();
    store.register_user(new_device(3, 30), None).await.unwrap();
}

/// Creates conversation `n` by device 10 with the given other devices, at epoch 1.
pub(crate) async fn create<S: Store>(
    store: &S,
    n: u8,
    kind: ConversationKind,
    members: &[(u8, u8)],
    retention: RetentionPolicy,
) {
    store
        .create_conversation(NewConversation {
            id: conversation(n),
            kind,
            epoch: 1,
            group_info: b"group-info-1".to_vec(),
            retention,
            creator: member(1, 10),
            members: members.iter().map(|(u, d)| member(*u, *d)).collect(),
            welcome: Some(b"welcome".to_vec()),
            created_at: NOW,
        })
        .await
        .unwrap();
}

pub(crate) fn message(n: u8, sender: MemberRef, id: &str, epoch: u64, now: i64) -> MessageWrite {
    MessageWrite {
        conversation_id: conversation(n),
        sender,
        client_message_id: id.to_owned(),
        epoch,
        payload: format!("ciphertext {id}").into_bytes(),
        now,
    }
}

pub(crate) fn commit(n: u8, sender: MemberRef, epoch: u64) -> CommitWrite {
    CommitWrite {
        conversation_id: conversation(n),
        epoch,
        sender,
        external: false,
        commit: format!("commit at {epoch}").into_bytes(),
        group_info: format!("group-info-{}", epoch + 1).into_bytes(),
        add: Vec::new(),
        welcome: None,
        remove: Vec::new(),
        max_users: 1500,
        now: NOW,
    }
}

pub(crate) async fn everything<S: Store>(store: &S, device_n: u8) -> SyncPage {
    store.sync(&device(device_n), SyncCursor::default(), 1000).await.unwrap()
}

pub(crate) fn seqs(page: &SyncPage) -> Vec<u64> {
    page.entries.iter().map(|e| e.seq).collect()
}

/// One stored entry per message, the same order for every member device, Welcomes queued once
/// per added device.
pub async fn conversation_entries_are_sequenced_once_for_every_device<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Group, &[(1, 11), (2, 20), (2, 21)], RetentionPolicy::Permanent).await;
    let err = store
        .create_conversation(NewConversation {
            id: conversation(1),
            kind: ConversationKind::Group,
            epoch: 1,
            group_info: vec![],
            retention: RetentionPolicy::Permanent,
            creator: member(3, 30),
            members: vec![],
            welcome: None,
            created_at: NOW,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ConversationExists), "{err:?}");

    for (i, sender) in [member(1, 10), member(2, 20), member(1, 11)].into_iter().enumerate() {
        let appended = store.append_message(message(1, sender, &format!("m{i}"), 1, NOW + i as i64)).await.unwrap();
        assert_eq!((appended.seq, appended.duplicate), (i as u64 + 1, false));
    }
    let record = store.conversation(&conversation(1)).await.unwrap().unwrap();
    assert_eq!((record.last_seq, record.epoch, record.group_info.as_slice()), (3, 1, b"group-info-1".as_slice()));

    let reference = everything(store, 10).await;
    assert_eq!(seqs(&reference), vec![1, 2, 3]);
    assert_eq!(reference.entries[1].sender, member(2, 20));
    assert_eq!(reference.entries[1].payload, b"ciphertext m1");
    assert_eq!(reference.entries[1].kind, EntryKind::Message);
    assert!(reference.queue.is_empty(), "the creator gets no Welcome");
    for d in [11, 20, 21] {
        let page = everything(store, d).await;
        assert_eq!(page.entries, reference.entries, "device {d} sees the same log");
        assert_eq!(page.queue.len(), 1);
        let welcome = &page.queue[0];
        assert_eq!(
            (welcome.kind, welcome.conversation_id, welcome.seq, welcome.payload.as_slice()),
            (QueueKind::Welcome, Some(conversation(1)), Some(0), b"welcome".as_slice())
        );
    }
    assert!(everything(store, 30).await.entries.is_empty(), "non-members see nothing");

    // Positions start where each device joined.
    assert_eq!(store.positions(&device(20)).await.unwrap(), vec![(conversation(1), 0)]);
    assert!(store.positions(&device(30)).await.unwrap().is_empty());

    // A live connection's targeted fetches agree with sync.
    let tail = store.entries_for_device(&device(20), &conversation(1), 1, 10).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert!(store.entries_for_device(&device(30), &conversation(1), 0, 10).await.unwrap().is_empty());
    let queue = store.queue_for_device(&device(20), 0, 10).await.unwrap();
    assert_eq!(queue.len(), 1);
    assert!(store.queue_for_device(&device(20), queue[0].id, 10).await.unwrap().is_empty());
    let contacts: BTreeSet<_> = store.contact_devices(&user(2)).await.unwrap().into_iter().collect();
    assert_eq!(contacts, BTreeSet::from([device(10), device(11), device(20), device(21)]));
    assert!(store.contact_devices(&user(3)).await.unwrap().is_empty());

    // Paging with a cursor returns the same entries in smaller pieces.
    let first = store.sync(&device(20), SyncCursor::default(), 2).await.unwrap();
    assert_eq!(seqs(&first), vec![1, 2]);
    let after = SyncCursor { queue_after: first.queue[0].id, entries_after: Some((conversation(1), 2)) };
    let second = store.sync(&device(20), after, 2).await.unwrap();
    assert_eq!(seqs(&second), vec![3]);
    assert!(second.queue.is_empty());
}

/// Concurrent sends never share or skip a sequence number.
pub async fn concurrent_sends_get_gap_free_sequence_numbers<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::Permanent).await;
    let writes: Vec<_> = (0..40)
        .map(|i| message(1, if i % 2 == 0 { member(1, 10) } else { member(2, 20) }, &format!("c{i}"), 1, NOW))
        .collect();
    let results = join_all(writes.into_iter().map(|w| store.append_message(w))).await;
    let assigned: BTreeSet<u64> = results.into_iter().map(|r| r.unwrap().seq).collect();
    assert_eq!(assigned, (1..=40).collect::<BTreeSet<u64>>());
}

/// Refused sends racing with accepted ones (as a group commit batches them) change nothing and
/// leave no gap.
pub async fn refused_sends_in_a_burst_leave_no_trace<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::Permanent).await;
    let writes: Vec<_> = (0..30)
        .map(|i| match i % 3 {
            0 => message(1, member(1, 10), &format!("ok{i}"), 1, NOW),
            1 => message(1, member(1, 10), &format!("stale{i}"), 0, NOW),
            _ => message(1, member(3, 30), &format!("outsider{i}"), 1, NOW),
        })
        .collect();
    let results = join_all(writes.into_iter().map(|w| store.append_message(w))).await;
    let accepted: BTreeSet<u64> = results.iter().filter_map(|r| r.as_ref().ok().map(|a| a.seq)).collect();
    assert_eq!(accepted, (1..=10).collect::<BTreeSet<u64>>());
    assert!(
        results
            .iter()
            .filter(|r| r.is_err())
            .all(|r| matches!(r, Err(StoreError::StaleEpoch { .. } | StoreError::NotAMember)))
    );
    let page = everything(store, 20).await;
    assert_eq!(seqs(&page), (1..=10).collect::<Vec<u64>>());
    assert!(page.entries.iter().all(|e| e.payload.starts_with(b"ciphertext ok")));
}

/// A burst larger than one statement's rows, over several conversations, with retries of the
/// same id inside the burst and sends to an unknown conversation: each conversation's log is
/// gap-free, each retry returns the sequence number of its original, and the payloads land
/// under the right numbers.
pub async fn bursts_across_conversations_keep_each_log_and_retry_exact<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::Permanent).await;
    create(store, 2, ConversationKind::Group, &[(2, 20), (3, 30)], RetentionPolicy::Permanent).await;
    let writes: Vec<_> = (0..150)
        .map(|i| match i % 5 {
            0 | 1 => message(1, member(1, 10), &format!("a{}", i / 2), 1, NOW + i),
            2 | 3 => message(2, member(3, 30), &format!("b{i}"), 1, NOW + i),
            _ => message(9, member(1, 10), &format!("lost{i}"), 1, NOW + i),
        })
        .collect();
    let results = join_all(writes.iter().cloned().map(|w| store.append_message(w))).await;

    let mut by_id = std::collections::HashMap::new();
    for (write, result) in writes.iter().zip(&results) {
        if write.conversation_id == conversation(9) {
            assert!(matches!(result, Err(StoreError::NotFound)), "{result:?}");
            continue;
        }
        let appended = result.as_ref().unwrap();
        let key = (write.conversation_id, write.client_message_id.clone());
        match by_id.get(&key) {
            None => {
                assert!(!appended.duplicate);
                by_id.insert(key, (appended.seq, write.payload.clone()));
            }
            Some((seq, _)) => assert_eq!((appended.seq, appended.duplicate), (*seq, true)),
        }
    }
    for n in [1u8, 2] {
        let stored = store.history(&conversation(n), 0, u64::MAX, 1000).await.unwrap();
        let expected: BTreeSet<u64> =
            by_id.iter().filter(|((c, _), _)| *c == conversation(n)).map(|(_, (seq, _))| *seq).collect();
        assert_eq!(stored.iter().map(|e| e.seq).collect::<BTreeSet<u64>>(), expected);
        assert_eq!(expected, (1..=expected.len() as u64).collect::<BTreeSet<u64>>(), "gap-free log of {n}");
        for entry in &stored {
            let original = by_id.values().find(|(seq, payload)| *seq == entry.seq && *payload == entry.payload);
            assert!(original.is_some(), "entry {} of {n} carries its own payload", entry.seq);
        }
        let record = store.conversation(&conversation(n)).await.unwrap().unwrap();
        assert_eq!(record.last_seq, expected.len() as u64);
    }
}

/// Within one burst, an id is decided message by message as lone sends would be: sent first
/// with a stale epoch it is refused, sent again with the current one it is stored, and sent
/// once more, even with a stale epoch, it is a retry answered with that stored message.
pub async fn retries_inside_a_burst_are_decided_in_order<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::Permanent).await;
    store.append_message(message(1, member(1, 10), "before", 1, NOW)).await.unwrap();
    let writes = vec![
        message(1, member(1, 10), "x", 0, NOW + 1),
        message(1, member(1, 10), "y", 1, NOW + 2),
        message(1, member(1, 10), "x", 1, NOW + 3),
        message(1, member(1, 10), "y", 0, NOW + 4),
        message(1, member(1, 10), "x", 0, NOW + 5),
        message(1, member(1, 10), "before", 0, NOW + 6),
    ];
    let results = join_all(writes.into_iter().map(|w| store.append_message(w))).await;
    let answered: Vec<Result<(u64, i64, bool), String>> = results
        .into_iter()
        .map(|r| r.map(|a| (a.seq, a.created_at, a.duplicate)).map_err(|e| format!("{e:?}")))
        .collect();
    let stale = Err(format!("{:?}", StoreError::StaleEpoch { current: 1 }));
    assert_eq!(
        answered,
        vec![
            stale,
            Ok((2, NOW + 2, false)),
            Ok((3, NOW + 3, false)),
            Ok((2, NOW + 2, true)),
            Ok((3, NOW + 3, true)),
            Ok((1, NOW, true)),
        ]
    );
    let page = everything(store, 20).await;
    assert_eq!(seqs(&page), vec![1, 2, 3]);
    assert_eq!(store.conversation(&conversation(1)).await.unwrap().unwrap().last_seq, 3);
}

/// A retry with the same client message id returns the original result and stores nothing.
pub async fn retried_client_message_ids_store_nothing_new<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::Permanent).await;
    let first = store.append_message(message(1, member(1, 10), "same", 1, NOW)).await.unwrap();
    let retry = store.append_message(message(1, member(1, 10), "same", 1, NOW + 50)).await.unwrap();
    assert_eq!((retry.seq, retry.created_at, retry.duplicate), (first.seq, first.created_at, true));
    // Still the original result after the epoch moved on.
    store.commit(commit(1, member(1, 10), 1)).await.unwrap();
    let late = store.append_message(message(1, member(1, 10), "same", 1, NOW + 90)).await.unwrap();
    assert_eq!((late.seq, late.duplicate), (first.seq, true));
    // Another device may use the same id for its own message.
    let other = store.append_message(message(1, member(2, 20), "same", 2, NOW)).await.unwrap();
    assert_eq!((other.seq, other.duplicate), (3, false));
    assert_eq!(seqs(&everything(store, 20).await), vec![1, 2, 3]);
}

/// The epoch check, the membership change and the log append are one transaction.
pub async fn commits_check_the_epoch_and_change_membership_atomically<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Group, &[(2, 20)], RetentionPolicy::Permanent).await;

    let err = store.commit(commit(1, member(1, 10), 0)).await.unwrap_err();
    assert!(matches!(err, StoreError::StaleEpoch { current: 1 }), "{err:?}");
    let err = store.append_message(message(1, member(1, 10), "old", 0, NOW)).await.unwrap_err();
    assert!(matches!(err, StoreError::StaleEpoch { current: 1 }), "{err:?}");
    let err = store.commit(commit(1, member(3, 30), 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotAMember), "{err:?}");
    let err = store.append_message(message(1, member(3, 30), "x", 1, NOW)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotAMember), "{err:?}");
    let err = store.commit(commit(9, member(1, 10), 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");

    // Over the member limit: nothing of the commit stays.
    let mut crowded = commit(1, member(1, 10), 1);
    crowded.add = vec![member(3, 30)];
    crowded.welcome = Some(b"w".to_vec());
    crowded.max_users = 2;
    let err = store.commit(crowded).await.unwrap_err();
    assert!(matches!(err, StoreError::MemberLimitReached), "{err:?}");
    let record = store.conversation(&conversation(1)).await.unwrap().unwrap();
    assert_eq!((record.epoch, record.last_seq), (1, 0));
    assert!(everything(store, 30).await.queue.is_empty());
    assert!(store.member_device(&conversation(1), &device(30)).await.unwrap().is_none());

    let mut adding = commit(1, member(1, 10), 1);
    adding.add = vec![member(3, 30), member(1, 11)];
    adding.welcome = Some(b"welcome-2".to_vec());
    let outcome = store.commit(adding).await.unwrap();
    assert_eq!((outcome.seq, outcome.epoch), (1, 2));
    let record = store.conversation(&conversation(1)).await.unwrap().unwrap();
    assert_eq!((record.epoch, record.last_seq, record.group_info.as_slice()), (2, 1, b"group-info-2".as_slice()));
    let joined = store.member_device(&conversation(1), &device(30)).await.unwrap().unwrap();
    assert_eq!((joined.joined_seq, joined.acked_seq, joined.removed_seq), (1, 1, None));
    assert!(store.is_member_user(&conversation(1), &user(3)).await.unwrap());
    let page = everything(store, 30).await;
    assert!(page.entries.is_empty(), "an added device starts after the commit that added it");
    assert_eq!(
        (page.queue[0].kind, page.queue[0].seq, page.queue[0].payload.as_slice()),
        (QueueKind::Welcome, Some(1), b"welcome-2".as_slice())
    );
    assert_eq!(seqs(&everything(store, 20).await), vec![1], "existing members get the commit");

    let mut again = commit(1, member(1, 10), 2);
    again.add = vec![member(2, 20)];
    let err = store.commit(again).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidMembership(_)), "{err:?}");
    assert_eq!(store.active_member_devices(&conversation(1)).await.unwrap().len(), 4);
    // Removing a device the server does not route to only cleans up the MLS tree.
    let mut absent = commit(1, member(1, 10), 2);
    absent.remove = vec![device(21)];
    store.commit(absent).await.unwrap();
    assert_eq!(store.active_member_devices(&conversation(1)).await.unwrap().len(), 4);
    assert!(everything(store, 21).await.queue.is_empty(), "no removal notice for a non-member");
}

/// A removed device receives the commit that removed it and nothing after.
pub async fn removed_devices_get_entries_up_to_their_removal_only<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Group, &[(2, 20), (3, 30)], RetentionPolicy::Permanent).await;
    store.append_message(message(1, member(1, 10), "before", 1, NOW)).await.unwrap();
    let mut removing = commit(1, member(1, 10), 1);
    removing.remove = vec![device(30)];
    let removal = store.commit(removing).await.unwrap();
    store.append_message(message(1, member(1, 10), "after", 2, NOW)).await.unwrap();

    let page = everything(store, 30).await;
    assert_eq!(seqs(&page), vec![1, removal.seq]);
    assert!(page.queue.iter().any(|q| q.kind == QueueKind::Removed && q.seq == Some(removal.seq)));
    assert!(!store.is_member_user(&conversation(1), &user(3)).await.unwrap());
    let err = store.append_message(message(1, member(3, 30), "x", 2, NOW)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotAMember), "{err:?}");

    // Once it has acknowledged its removal it is gone for good.
    store.ack(&device(30), &[(conversation(1), 99)], None).await.unwrap();
    assert!(store.member_device(&conversation(1), &device(30)).await.unwrap().is_none());
    assert!(everything(store, 30).await.entries.is_empty());
}

/// External joins: a new device of a member user, and nobody else.
pub async fn external_joins_are_for_devices_of_member_users<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::Permanent).await;
    store.append_message(message(1, member(1, 10), "before", 1, NOW)).await.unwrap();

    let external = |sender: MemberRef, epoch| CommitWrite { external: true, ..commit(1, sender, epoch) };
    let err = store.commit(external(member(3, 30), 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotAMember), "a non-member user cannot join: {err:?}");
    let err = store.commit(external(member(2, 20), 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotAMember), "an existing member device cannot external-join: {err:?}");
    let err = store.commit(external(member(2, 21), 0)).await.unwrap_err();
    assert!(matches!(err, StoreError::StaleEpoch { current: 1 }), "{err:?}");

    let joined = store.commit(external(member(2, 21), 1)).await.unwrap();
    assert_eq!((joined.seq, joined.epoch), (2, 2));
    let row = store.member_device(&conversation(1), &device(21)).await.unwrap().unwrap();
    assert_eq!(row.joined_seq, 2);
    assert!(everything(store, 21).await.entries.is_empty(), "forward-only: nothing before the join");
    store.append_message(message(1, member(2, 21), "hello", 2, NOW)).await.unwrap();
    assert_eq!(seqs(&everything(store, 21).await), vec![3]);
    assert_eq!(seqs(&everything(store, 10).await), vec![1, 2, 3]);
}

/// Acks are cumulative, idempotent, harmless out of order, capped, and only the caller's own.
pub async fn acks_are_cumulative_and_only_move_the_own_position<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::Permanent).await;
    create(store, 2, ConversationKind::NoteToSelf, &[(1, 11)], RetentionPolicy::Permanent).await;
    for i in 0..5 {
        store.append_message(message(1, member(1, 10), &format!("m{i}"), 1, NOW)).await.unwrap();
    }
    store.ack(&device(20), &[(conversation(1), 3)], None).await.unwrap();
    assert_eq!(seqs(&everything(store, 20).await), vec![4, 5]);
    store.ack(&device(20), &[(conversation(1), 2)], None).await.unwrap();
    store.ack(&device(20), &[(conversation(1), 3)], None).await.unwrap();
    assert_eq!(seqs(&everything(store, 20).await), vec![4, 5], "older and repeated acks change nothing");
    store.ack(&device(20), &[(conversation(1), 1000)], None).await.unwrap();
    assert_eq!(store.member_device(&conversation(1), &device(20)).await.unwrap().unwrap().acked_seq, 5);
    assert_eq!(seqs(&everything(store, 10).await), vec![1, 2, 3, 4, 5], "other devices are untouched");

    // Acking a conversation the device is not in fails the whole call and changes nothing.
    let err = store.ack(&device(20), &[(conversation(1), 5), (conversation(2), 1)], None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotAMember), "{err:?}");

    // Queue acks delete only the caller's own entries.
    let queued = store
        .enqueue(
            vec![
                QueueWrite {
                    device_id: device(20),
                    kind: QueueKind::DeviceMessage,
                    conversation_id: None,
                    seq: None,
                    sender_device: Some(device(10)),
                    payload: b"a".to_vec(),
                },
                QueueWrite {
                    device_id: device(21),
                    kind: QueueKind::DeviceMessage,
                    conversation_id: None,
                    seq: None,
                    sender_device: Some(device(10)),
                    payload: b"b".to_vec(),
                },
            ],
            NOW,
        )
        .await
        .unwrap();
    let before = everything(store, 20).await.queue.len();
    // Queue ids increase per device; the bound is the largest id handed out here.
    let up_to = queued.iter().copied().max().unwrap();
    store.ack(&device(20), &[], Some(up_to)).await.unwrap();
    assert_eq!(everything(store, 20).await.queue.len(), before - 2, "the Welcome and the message are gone");
    assert_eq!(everything(store, 21).await.queue.len(), 1, "another device's queue is untouched");
}

/// Burn-on-read: an entry goes exactly when the last device that was a member when it was
/// written acknowledges it.
pub async fn burn_on_read_deletes_when_the_last_member_device_acks<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Direct, &[(1, 11), (2, 20)], RetentionPolicy::BurnOnRead).await;
    store.append_message(message(1, member(1, 10), "secret", 1, NOW)).await.unwrap();
    store.ack(&device(10), &[(conversation(1), 1)], None).await.unwrap();
    store.ack(&device(11), &[(conversation(1), 1)], None).await.unwrap();
    assert_eq!(store.history(&conversation(1), 0, u64::MAX, 10).await.unwrap().len(), 1);

    // A device added later does not pin what was written before it joined.
    let mut adding = commit(1, member(1, 10), 1);
    adding.add = vec![member(2, 21)];
    store.commit(adding).await.unwrap();
    assert_eq!(store.history(&conversation(1), 0, u64::MAX, 10).await.unwrap().len(), 2);

    store.ack(&device(20), &[(conversation(1), 1)], None).await.unwrap();
    let left: Vec<u64> =
        store.history(&conversation(1), 0, u64::MAX, 10).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(left, vec![2], "the message burned when the last member device acked it");
}

/// TTL and the server's maximum age prune entries, acknowledged or not.
pub async fn ttl_and_maximum_age_prune_entries<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::Ttl { ttl_secs: 60 }).await;
    create(store, 2, ConversationKind::Direct, &[(2, 21)], RetentionPolicy::Permanent).await;
    store.append_message(message(1, member(1, 10), "old", 1, NOW)).await.unwrap();
    store.append_message(message(1, member(1, 10), "new", 1, NOW + 30_000)).await.unwrap();
    store.append_message(message(2, member(1, 10), "kept", 1, NOW)).await.unwrap();

    store.prune_retention(NOW + 60_000, None, 1000).await.unwrap();
    assert_eq!(seqs(&everything(store, 20).await), vec![2]);
    assert_eq!(seqs(&everything(store, 21).await), vec![1], "permanent entries stay without a maximum age");

    store.prune_retention(NOW + 100_000, Some(90_000), 1000).await.unwrap();
    assert!(everything(store, 21).await.entries.is_empty(), "the maximum age bounds every policy");
    assert!(everything(store, 21).await.queue.is_empty(), "and queue entries");
    // The sequence keeps counting after pruning: no number is reused.
    let next = store.append_message(message(1, member(1, 10), "later", 1, NOW + 100_000)).await.unwrap();
    assert_eq!(next.seq, 3);
}

/// History goes backwards and never before the device's join point.
pub async fn history_pages_backwards_from_the_join_point<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Group, &[(2, 20)], RetentionPolicy::Permanent).await;
    for i in 0..5 {
        store.append_message(message(1, member(1, 10), &format!("m{i}"), 1, NOW)).await.unwrap();
    }
    let page: Vec<u64> = store.history(&conversation(1), 0, u64::MAX, 3).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(page, vec![5, 4, 3]);
    let older: Vec<u64> = store.history(&conversation(1), 0, 3, 3).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(older, vec![2, 1]);
    let late: Vec<u64> =
        store.history(&conversation(1), 4, u64::MAX, 10).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(late, vec![5]);
}

/// The conversation list counts unread messages from others; read markers only move forward.
pub async fn conversation_views_count_unread_and_read_markers_are_monotonic<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::Permanent).await;
    create(store, 2, ConversationKind::Group, &[(3, 30)], RetentionPolicy::Permanent).await;
    for i in 0..3 {
        store.append_message(message(1, member(2, 20), &format!("m{i}"), 1, NOW)).await.unwrap();
    }
    store.append_message(message(1, member(1, 10), "mine", 1, NOW)).await.unwrap();

    let views = store.conversations_of(&device(10), &user(1), None, 10).await.unwrap();
    assert_eq!(views.iter().map(|v| v.record.id).collect::<Vec<_>>(), vec![conversation(1), conversation(2)]);
    assert_eq!((views[0].unread, views[0].record.last_seq), (3, 4));
    assert_eq!(views[0].members.iter().map(|m| m.user_id).collect::<Vec<_>>(), vec![user(1), user(2)]);

    assert_eq!(store.advance_read_marker(&conversation(1), &user(1), 2).await.unwrap(), Some(2));
    assert_eq!(store.advance_read_marker(&conversation(1), &user(1), 1).await.unwrap(), None, "never backwards");
    assert_eq!(
        store.advance_read_marker(&conversation(1), &user(1), 99).await.unwrap(),
        Some(4),
        "capped at the last entry"
    );
    let views = store.conversations_of(&device(10), &user(1), None, 1).await.unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].unread, 0);
    let paged = store.conversations_of(&device(10), &user(1), Some(conversation(1)), 10).await.unwrap();
    assert_eq!(paged.iter().map(|v| v.record.id).collect::<Vec<_>>(), vec![conversation(2)]);

    assert!(store.read_receipts(&user(1)).await.unwrap());
    store.set_read_receipts(&user(1), false).await.unwrap();
    assert!(!store.read_receipts(&user(1)).await.unwrap());
}

/// Leaving removes every device of the user and appends a leave entry.
pub async fn leaving_removes_all_devices_of_the_user<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Group, &[(2, 20), (2, 21), (3, 30)], RetentionPolicy::Permanent).await;
    let err = store.leave(&conversation(1), member(1, 11), Vec::new(), NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::NotAMember), "{err:?}");

    let seq = store.leave(&conversation(1), member(2, 20), b"self-remove".to_vec(), NOW).await.unwrap();
    assert_eq!(seq, 1);
    assert!(!store.is_member_user(&conversation(1), &user(2)).await.unwrap());
    let remaining: BTreeSet<_> =
        store.active_member_devices(&conversation(1)).await.unwrap().iter().map(|m| m.member.device_id).collect();
    assert_eq!(remaining, BTreeSet::from([device(10), device(30)]));
    let page = everything(store, 30).await;
    assert_eq!(
        (page.entries[0].kind, page.entries[0].payload.as_slice()),
        (EntryKind::Leave, b"self-remove".as_slice())
    );
    for leaving in [20, 21] {
        let removed = everything(store, leaving).await.queue.into_iter().filter(|q| q.kind == QueueKind::Removed);
        assert_eq!(removed.map(|q| q.seq).collect::<Vec<_>>(), vec![Some(seq)], "device {leaving}");
    }
    let record = store.conversation(&conversation(1)).await.unwrap().unwrap();
    assert_eq!(record.epoch, 1, "leaving is not a commit");
}

/// Revoking a device drops its queue and conversation positions at once.
pub async fn revoking_a_device_drops_its_queue_and_positions<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Direct, &[(2, 20), (2, 21)], RetentionPolicy::Permanent).await;
    assert_eq!(everything(store, 21).await.queue.len(), 1);
    store.revoke_device(&user(2), &device(21), NOW).await.unwrap();
    assert!(everything(store, 21).await.queue.is_empty());
    assert!(store.member_device(&conversation(1), &device(21)).await.unwrap().is_none());
    assert!(store.is_member_user(&conversation(1), &user(2)).await.unwrap(), "the user stays through device 20");
    store.revoke_device(&user(2), &device(20), NOW).await.unwrap();
    assert!(!store.is_member_user(&conversation(1), &user(2)).await.unwrap());
}

/// Pruning a backlog larger than one batch removes all of it, a batch at a time, and counts
/// every row it removed.
pub async fn pruning_removes_a_backlog_in_batches<S: Store>(store: &S) {
    people(store).await;
    create(store, 1, ConversationKind::Group, &[(2, 20), (3, 30)], RetentionPolicy::Ttl { ttl_secs: 60 }).await;
    for i in 0..7 {
        store.append_message(message(1, member(1, 10), &format!("b{i}"), 1, NOW + i)).await.unwrap();
    }
    let mut welcomed = commit(1, member(1, 10), 1);
    welcomed.add = vec![member(2, 21)];
    welcomed.welcome = Some(b"welcome-2".to_vec());
    store.commit(welcomed).await.unwrap();
    let queued = |d: u8| QueueWrite {
        device_id: device(d),
        kind: QueueKind::DeviceMessage,
        conversation_id: None,
        seq: None,
        sender_device: Some(device(10)),
        payload: vec![d],
    };
    store.enqueue((0..5).map(|_| queued(30)).collect(), NOW).await.unwrap();
    let kept = store.append_message(message(1, member(1, 10), "young", 2, NOW + 200_000)).await.unwrap();

    // Every message but the young one is past the TTL and the maximum age; so are the queue
    // entries (the Welcomes and the five device messages) and the idempotency records.
    let pruned = store.prune_retention(NOW + 200_000, Some(150_000), 2).await.unwrap();
    // 8 entries (7 messages and the commit), 7 idempotency records, 8 queue entries (the
    // Welcomes of devices 20 and 30, then 21, and 5 device messages) and 2 Welcome payloads.
    assert_eq!(pruned, 8 + 7 + 8 + 2, "every pruned row is counted");
    let left: Vec<u64> =
        store.history(&conversation(1), 0, u64::MAX, 100).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(left, vec![kept.seq]);
    for d in [20, 21, 30] {
        assert!(everything(store, d).await.queue.is_empty(), "device {d}'s expired queue is gone");
    }
    assert_eq!(store.prune_retention(NOW + 200_000, Some(150_000), 2).await.unwrap(), 0, "nothing is left to prune");
}
