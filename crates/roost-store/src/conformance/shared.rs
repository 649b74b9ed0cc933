//! Conformance cases for backends that several servers share: two store handles on one database
//! (as two `roostd` processes would hold), racing each other.

use std::collections::BTreeSet;

use futures::future::join_all;
use roost_proto::Handle;
use roost_proto::conversation::{ConversationKind, RetentionPolicy};

use super::conversations::{commit, conversation, create, everything, member, message, people, seqs};
use super::{NOW, device, new_device, user};
use crate::{Store, StoreError};

/// Generates one `#[tokio::test]` per shared-database case for a backend. `$make` is an async
/// expression yielding `Some((store_a, store_b, guard))`, two handles on one fresh database, or
/// `None` when the backend is not reachable here.
#[macro_export]
macro_rules! shared_conformance_tests {
    ($make:expr) => {
        $crate::shared_conformance_tests!(@cases $make;
            two_writers_keep_sequence_numbers_gap_free,
            a_retry_through_the_other_handle_returns_the_original,
            racing_commits_through_two_handles_accept_one,
            racing_registrations_and_handle_claims_through_two_handles_admit_one,
            claims_through_two_handles_never_hand_out_a_package_twice,
            burn_on_read_acks_through_two_handles_see_each_other
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((a, b, _guard)) = $make.await else { return };
                $crate::conformance::$case(&a, &b).await;
            }
        )*
    };
}

/// Sends to one conversation through both handles at once get exactly 1..N, and both handles
/// read the same log.
pub async fn two_writers_keep_sequence_numbers_gap_free<S: Store>(a: &S, b: &S) {
    people(a).await;
    create(a, 1, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::Permanent).await;
    let sends = (0..120).map(|i| {
        let (handle, sender) = if i % 2 == 0 { (a, member(1, 10)) } else { (b, member(2, 20)) };
        handle.append_message(message(1, sender, &format!("w{i}"), 1, NOW + i))
    });
    let assigned: Vec<u64> = join_all(sends).await.into_iter().map(|r| r.unwrap().seq).collect();
    let distinct: BTreeSet<u64> = assigned.iter().copied().collect();
    assert_eq!(distinct, (1..=120).collect::<BTreeSet<u64>>(), "gap-free and never shared");
    assert_eq!(seqs(&everything(a, 20).await), (1..=120).collect::<Vec<u64>>());
    assert_eq!(everything(a, 20).await, everything(b, 20).await);
    assert_eq!(b.conversation(&conversation(1)).await.unwrap().unwrap().last_seq, 120);
}

/// A client message id sent through one handle and retried through the other (in turn, and at
/// the same moment) is stored once; every answer carries the original's result.
pub async fn a_retry_through_the_other_handle_returns_the_original<S: Store>(a: &S, b: &S) {
    people(a).await;
    create(a, 1, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::Permanent).await;
    let first = a.append_message(message(1, member(1, 10), "once", 1, NOW)).await.unwrap();
    let retry = b.append_message(message(1, member(1, 10), "once", 1, NOW + 5)).await.unwrap();
    assert_eq!((retry.seq, retry.created_at, retry.duplicate), (first.seq, first.created_at, true));

    // The same ids through both handles at once, among other sends that must all be kept.
    let sends = (0..40).map(|i| {
        let handle = if i % 2 == 0 { a } else { b };
        let id = if i % 4 < 2 { format!("twice{}", i / 4) } else { format!("alone{i}") };
        handle.append_message(message(1, member(1, 10), &id, 1, NOW + i))
    });
    let results: Vec<_> = join_all(sends).await.into_iter().map(Result::unwrap).collect();
    for pair in 0..10 {
        let (x, y) = (&results[pair * 4], &results[pair * 4 + 1]);
        assert_eq!(x.seq, y.seq, "both sends of twice{pair} answer with one sequence number");
        assert!(x.duplicate != y.duplicate, "exactly one of them is the original");
    }
    let stored = seqs(&everything(a, 20).await);
    assert_eq!(stored, (1..=31).collect::<Vec<u64>>(), "the first, 10 pairs stored once, 20 others");
}

/// Commits at the same epoch through both handles: one is accepted, the other is stale.
pub async fn racing_commits_through_two_handles_accept_one<S: Store>(a: &S, b: &S) {
    people(a).await;
    create(a, 1, ConversationKind::Group, &[(2, 20)], RetentionPolicy::Permanent).await;
    for round in 0..5u64 {
        let epoch = round + 1;
        let (x, y) =
            futures::join!(a.commit(commit(1, member(1, 10), epoch)), b.commit(commit(1, member(2, 20), epoch)));
        let accepted = [&x, &y].iter().filter(|r| r.is_ok()).count();
        assert_eq!(accepted, 1, "round {round}: {x:?} {y:?}");
        let refused = if x.is_ok() { y } else { x };
        assert!(matches!(refused, Err(StoreError::StaleEpoch { current }) if current == epoch + 1), "{refused:?}");
    }
    let record = b.conversation(&conversation(1)).await.unwrap().unwrap();
    assert_eq!((record.epoch, record.last_seq), (6, 5));
}

/// The same registration, invite and handle through both handles at once: one wins, the other
/// gets the domain answer a lone request would have had.
pub async fn racing_registrations_and_handle_claims_through_two_handles_admit_one<S: Store>(a: &S, b: &S) {
    let (x, y) = futures::join!(a.register_user(new_device(1, 10), None), b.register_user(new_device(1, 11), None));
    let outcomes = [x, y];
    assert_eq!(outcomes.iter().filter(|r| r.is_ok()).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().any(|r| matches!(r, Err(StoreError::UserExists))), "{outcomes:?}");

    a.create_invites(&[[7; 32]], NOW).await.unwrap();
    let (x, y) = futures::join!(
        a.register_user(new_device(2, 20), Some([7; 32])),
        b.register_user(new_device(3, 30), Some([7; 32]))
    );
    let outcomes = [x, y];
    assert_eq!(outcomes.iter().filter(|r| r.is_ok()).count(), 1, "one invite, one registration: {outcomes:?}");
    assert!(outcomes.iter().any(|r| matches!(r, Err(StoreError::InviteInvalid))), "{outcomes:?}");

    let registered = if a.user_exists(&user(2)).await.unwrap() { 2 } else { 3 };
    b.register_user(new_device(4, 40), None).await.unwrap();
    let alice: Handle = "alice".parse().unwrap();
    let (first, second) = (user(registered), user(4));
    let (x, y) = futures::join!(a.claim_handle(&first, &alice, NOW), b.claim_handle(&second, &alice, NOW));
    let outcomes = [x, y];
    assert_eq!(outcomes.iter().filter(|r| r.is_ok()).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().any(|r| matches!(r, Err(StoreError::HandleTaken))), "{outcomes:?}");
    let holder = a.resolve_handle(&alice).await.unwrap().unwrap();
    assert_eq!(b.handle_of(&holder).await.unwrap(), Some(alice));

    // User 1 has one device; two additions race for the one free slot of two.
    let (x, y) = futures::join!(a.add_device(new_device(1, 12), 2), b.add_device(new_device(1, 13), 2));
    let outcomes = [x, y];
    assert_eq!(outcomes.iter().filter(|r| r.is_ok()).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().any(|r| matches!(r, Err(StoreError::DeviceLimitReached))), "{outcomes:?}");
}

/// Claims of one device's KeyPackages through both handles: each one-time package once.
pub async fn claims_through_two_handles_never_hand_out_a_package_twice<S: Store>(a: &S, b: &S) {
    a.register_user(new_device(1, 10), None).await.unwrap();
    let one_time: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 16]).collect();
    a.add_key_packages(&device(10), one_time, Some(vec![0xff; 16]), 200, NOW).await.unwrap();
    let target = device(10);
    let claims = (0..60).map(|i| if i % 2 == 0 { a.claim_key_package(&target) } else { b.claim_key_package(&target) });
    let claimed: Vec<_> = join_all(claims).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    let one_time: Vec<_> = claimed.iter().filter(|c| !c.last_resort).map(|c| c.data.clone()).collect();
    let distinct: BTreeSet<_> = one_time.iter().cloned().collect();
    assert_eq!((one_time.len(), distinct.len()), (20, 20), "every one-time package handed out exactly once");
}

/// Burn-on-read: the two member devices acknowledge at the same moment through different
/// handles; the entries go, since whichever commits second counts the other's position.
pub async fn burn_on_read_acks_through_two_handles_see_each_other<S: Store>(a: &S, b: &S) {
    people(a).await;
    create(a, 1, ConversationKind::Direct, &[(2, 20)], RetentionPolicy::BurnOnRead).await;
    for round in 0..100u64 {
        let seq = a.append_message(message(1, member(1, 10), &format!("r{round}"), 1, NOW)).await.unwrap().seq;
        let (mine, theirs, position) = (device(10), device(20), [(conversation(1), seq)]);
        let (x, y) = futures::join!(a.ack(&mine, &position, None), b.ack(&theirs, &position, None));
        x.unwrap();
        y.unwrap();
        assert!(a.history(&conversation(1), 0, u64::MAX, 10).await.unwrap().is_empty(), "round {round}");
    }
}
