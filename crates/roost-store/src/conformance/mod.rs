//! The store conformance suite, written once and run against every backend.
//!
//! A backend's test file instantiates it with [`conformance_tests!`](crate::conformance_tests),
//! giving an async expression that yields `Some((store, guard))`, or `None` when the backend is
//! not reachable here (the expression prints why, and the case is skipped); the guard (a
//! temporary directory, a scratch schema) lives as long as the test.
//!
//! This module is test code shipped in the library so backends in other crates can run it; it
//! panics on failure like any test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;

use futures::future::join_all;
use roost_proto::{DeviceId, Handle, UserId};

use crate::{NewDevice, NewLinkRequest, SessionRecord, Store, StoreError};

mod attachments;
mod conversations;
mod push;
mod shared;
pub use attachments::*;
pub use conversations::*;
pub use push::*;
pub use shared::*;

/// Generates one `#[tokio::test]` per conformance case for a backend.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            registration_and_devices,
            invites_admit_one_registration,
            revocation_removes_sessions_and_key_packages,
            link_requests,
            handles_are_unique,
            challenges_are_consumed_once,
            sessions,
            key_packages_cap_and_fallback,
            concurrent_claims_never_hand_out_a_package_twice,
            pruning_removes_only_expired_rows,
            conversation_entries_are_sequenced_once_for_every_device,
            concurrent_sends_get_gap_free_sequence_numbers,
            refused_sends_in_a_burst_leave_no_trace,
            retried_client_message_ids_store_nothing_new,
            retries_inside_a_burst_are_decided_in_order,
            bursts_across_conversations_keep_each_log_and_retry_exact,
            commits_check_the_epoch_and_change_membership_atomically,
            removed_devices_get_entries_up_to_their_removal_only,
            external_joins_are_for_devices_of_member_users,
            acks_are_cumulative_and_only_move_the_own_position,
            burn_on_read_deletes_when_the_last_member_device_acks,
            ttl_and_maximum_age_prune_entries,
            pruning_removes_a_backlog_in_batches,
            history_pages_backwards_from_the_join_point,
            conversation_views_count_unread_and_read_markers_are_monotonic,
            leaving_removes_all_devices_of_the_user,
            revoking_a_device_drops_its_queue_and_positions,
            uploads_check_membership_quota_and_offsets,
            attachments_expire_with_retention_and_their_conversation,
            push_subscriptions_follow_their_device,
            the_first_vapid_key_is_kept
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((store, _guard)) = $make.await else { return };
                $crate::conformance::$case(&store).await;
            }
        )*
    };
}

pub(crate) const NOW: i64 = 1_700_000_000_000;

pub(crate) fn user(n: u8) -> UserId {
    UserId::from_bytes([n; 32])
}

pub(crate) fn device(n: u8) -> DeviceId {
    DeviceId::from_bytes([n; 32])
}

pub(crate) fn new_device(user_n: u8, device_n: u8) -> NewDevice {
    NewDevice {
        id: device(device_n),
        user_id: user(user_n),
        certificate: vec![device_n; 64],
        name: Some(format!("device {device_n}")),
        created_at: NOW + i64::from(device_n),
    }
}

fn session(token: u8, device_n: u8, user_n: u8, expires_at: i64) -> SessionRecord {
    SessionRecord {
        token_hash: [token; 32],
        device_id: device(device_n),
        user_id: user(user_n),
        created_at: NOW,
        expires_at,
    }
}

/// Users register with a first device; further devices respect the limit; keys are unique.
pub async fn registration_and_devices<S: Store>(store: &S) {
    store.register_user(new_device(1, 10), None).await.unwrap();
    assert!(store.user_exists(&user(1)).await.unwrap());
    assert!(!store.user_exists(&user(2)).await.unwrap());

    let err = store.register_user(new_device(1, 11), None).await.unwrap_err();
    assert!(matches!(err, StoreError::UserExists), "{err:?}");
    let err = store.register_user(new_device(2, 10), None).await.unwrap_err();
    assert!(matches!(err, StoreError::DeviceExists), "{err:?}");
    assert!(!store.user_exists(&user(2)).await.unwrap(), "a failed registration leaves nothing");

    store.add_device(new_device(1, 11), 3).await.unwrap();
    store.add_device(new_device(1, 12), 3).await.unwrap();
    let err = store.add_device(new_device(1, 13), 3).await.unwrap_err();
    assert!(matches!(err, StoreError::DeviceLimitReached), "{err:?}");
    let err = store.add_device(new_device(9, 14), 3).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");

    let devices = store.active_devices(&user(1)).await.unwrap();
    let ids: Vec<_> = devices.iter().map(|d| d.id).collect();
    assert_eq!(ids, vec![device(10), device(11), device(12)]);
    let first = store.device(&device(10)).await.unwrap().unwrap();
    assert_eq!(first.user_id, user(1));
    assert_eq!(first.certificate, vec![10; 64]);
    assert_eq!(first.name.as_deref(), Some("device 10"));
    assert_eq!(first.revoked_at, None);
    assert!(store.device(&device(13)).await.unwrap().is_none());
}

/// An invite admits exactly one registration; a bad invite changes nothing.
pub async fn invites_admit_one_registration<S: Store>(store: &S) {
    let err = store.register_user(new_device(1, 10), Some([5; 32])).await.unwrap_err();
    assert!(matches!(err, StoreError::InviteInvalid), "{err:?}");
    assert!(!store.user_exists(&user(1)).await.unwrap());

    store.create_invites(&[[5; 32], [6; 32]], NOW).await.unwrap();
    store.register_user(new_device(1, 10), Some([5; 32])).await.unwrap();
    let err = store.register_user(new_device(2, 20), Some([5; 32])).await.unwrap_err();
    assert!(matches!(err, StoreError::InviteInvalid), "{err:?}");
    store.register_user(new_device(2, 20), Some([6; 32])).await.unwrap();
}

/// Revocation is scoped to the owner and takes sessions and KeyPackages with it.
pub async fn revocation_removes_sessions_and_key_packages<S: Store>(store: &S) {
    store.register_user(new_device(1, 10), None).await.unwrap();
    store.add_device(new_device(1, 11), 10).await.unwrap();
    store.register_user(new_device(2, 20), None).await.unwrap();
    store.create_session(session(1, 11, 1, NOW + 1000)).await.unwrap();
    store.create_session(session(2, 10, 1, NOW + 1000)).await.unwrap();
    store.add_key_packages(&device(11), vec![vec![1], vec![2]], Some(vec![3]), 10, NOW).await.unwrap();

    let err = store.revoke_device(&user(2), &device(11), NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "another user cannot revoke: {err:?}");
    assert!(store.session(&[1; 32]).await.unwrap().is_some());

    assert!(store.revoke_device(&user(1), &device(11), NOW).await.unwrap());
    assert!(!store.revoke_device(&user(1), &device(11), NOW).await.unwrap(), "idempotent");
    assert!(store.session(&[1; 32]).await.unwrap().is_none());
    assert!(store.session(&[2; 32]).await.unwrap().is_some(), "other devices keep sessions");
    let stock = store.key_package_stock(&device(11)).await.unwrap();
    assert_eq!((stock.one_time, stock.last_resort), (0, false));
    assert_eq!(store.device(&device(11)).await.unwrap().unwrap().revoked_at, Some(NOW));
    let active: Vec<_> = store.active_devices(&user(1)).await.unwrap().iter().map(|d| d.id).collect();
    assert_eq!(active, vec![device(10)]);

    let err = store.add_device(new_device(1, 11), 10).await.unwrap_err();
    assert!(matches!(err, StoreError::DeviceExists), "revoked keys are never reused: {err:?}");
}

/// Link requests: unique while live, approved once, invisible once lapsed.
pub async fn link_requests<S: Store>(store: &S) {
    store.register_user(new_device(1, 10), None).await.unwrap();
    let link = NewLinkRequest { code: "AAAA-BBBB".into(), device_id: device(11), expires_at: NOW + 600 };
    store.create_link_request(link.clone(), NOW).await.unwrap();
    let err = store.create_link_request(link.clone(), NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::LinkPending), "{err:?}");

    let pending = store.link_request("AAAA-BBBB", NOW).await.unwrap().unwrap();
    assert_eq!((pending.device_id, pending.approved.clone()), (device(11), None));
    assert!(store.link_request("AAAA-BBBB", NOW + 600).await.unwrap().is_none(), "lapsed");

    let err = store.approve_link_request("ZZZZ-ZZZZ", new_device(1, 11), 10, NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    store.approve_link_request("AAAA-BBBB", new_device(1, 11), 10, NOW).await.unwrap();
    let approved = store.link_request("AAAA-BBBB", NOW).await.unwrap().unwrap();
    assert_eq!(approved.approved, Some((user(1), vec![11; 64])));
    assert!(store.device(&device(11)).await.unwrap().is_some());
    let err = store.approve_link_request("AAAA-BBBB", new_device(1, 11), 10, NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::LinkAlreadyApproved), "{err:?}");

    let registered = NewLinkRequest { code: "CCCC-DDDD".into(), device_id: device(10), expires_at: NOW + 600 };
    let err = store.create_link_request(registered, NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::DeviceExists), "{err:?}");

    // A lapsed request can be replaced by a new one with the same code.
    let again = NewLinkRequest { code: "EEEE-FFFF".into(), device_id: device(12), expires_at: NOW + 10 };
    store.create_link_request(again.clone(), NOW).await.unwrap();
    store.create_link_request(NewLinkRequest { expires_at: NOW + 700, ..again }, NOW + 20).await.unwrap();
    let err = store.approve_link_request("EEEE-FFFF", new_device(1, 13), 10, NOW + 30).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "the device must match the request: {err:?}");
}

/// A handle has one holder; a user holds one handle.
pub async fn handles_are_unique<S: Store>(store: &S) {
    let alice: Handle = "alice".parse().unwrap();
    let ally: Handle = "ally".parse().unwrap();
    store.register_user(new_device(1, 10), None).await.unwrap();
    store.register_user(new_device(2, 20), None).await.unwrap();

    store.claim_handle(&user(1), &alice, NOW).await.unwrap();
    store.claim_handle(&user(1), &alice, NOW).await.unwrap();
    let err = store.claim_handle(&user(2), &alice, NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::HandleTaken), "{err:?}");
    assert_eq!(store.resolve_handle(&alice).await.unwrap(), Some(user(1)));
    assert!(!store.release_handle(&user(2), &alice).await.unwrap());

    store.claim_handle(&user(1), &ally, NOW).await.unwrap();
    assert_eq!(store.resolve_handle(&alice).await.unwrap(), None, "the old handle is freed");
    assert_eq!(store.handle_of(&user(1)).await.unwrap(), Some(ally.clone()));
    store.claim_handle(&user(2), &alice, NOW).await.unwrap();
    assert!(store.release_handle(&user(1), &ally).await.unwrap());
    assert_eq!(store.resolve_handle(&ally).await.unwrap(), None);
    assert_eq!(store.handle_of(&user(1)).await.unwrap(), None);
}

/// However many racers, a challenge is consumed once.
pub async fn challenges_are_consumed_once<S: Store>(store: &S) {
    store.insert_challenge(b"challenge-1", &device(10), NOW + 60_000).await.unwrap();
    let record = store.challenge(b"challenge-1").await.unwrap().unwrap();
    assert_eq!((record.device_id, record.expires_at, record.used), (device(10), NOW + 60_000, false));
    assert!(store.challenge(b"other").await.unwrap().is_none());

    let results = join_all((0..10).map(|_| store.consume_challenge(b"challenge-1", NOW))).await;
    let winners = results.into_iter().map(Result::unwrap).filter(|won| *won).count();
    assert_eq!(winners, 1);
    assert!(store.challenge(b"challenge-1").await.unwrap().unwrap().used);
    assert!(!store.consume_challenge(b"unknown", NOW).await.unwrap());
}

/// Sessions are stored by token hash and deleted on logout.
pub async fn sessions<S: Store>(store: &S) {
    store.register_user(new_device(1, 10), None).await.unwrap();
    store.create_session(session(7, 10, 1, NOW + 5)).await.unwrap();
    let found = store.session(&[7; 32]).await.unwrap().unwrap();
    assert_eq!((found.device_id, found.user_id, found.expires_at), (device(10), user(1), NOW + 5));
    assert!(store.session(&[8; 32]).await.unwrap().is_none());
    assert!(store.delete_session(&[7; 32]).await.unwrap());
    assert!(!store.delete_session(&[7; 32]).await.unwrap());
    assert!(store.session(&[7; 32]).await.unwrap().is_none());
}

/// The cap refuses a whole upload; claims go oldest first, then fall back to the last resort.
pub async fn key_packages_cap_and_fallback<S: Store>(store: &S) {
    store.register_user(new_device(1, 10), None).await.unwrap();
    assert!(store.claim_key_package(&device(10)).await.unwrap().is_none());

    let stock = store.add_key_packages(&device(10), vec![vec![1], vec![2]], None, 3, NOW).await.unwrap();
    assert_eq!((stock.one_time, stock.last_resort), (2, false));
    let err = store.add_key_packages(&device(10), vec![vec![3], vec![4]], Some(vec![9]), 3, NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::KeyPackageLimitReached), "{err:?}");
    let stock = store.key_package_stock(&device(10)).await.unwrap();
    assert_eq!((stock.one_time, stock.last_resort), (2, false), "a refused upload stores nothing");

    store.add_key_packages(&device(10), vec![], Some(vec![8]), 3, NOW).await.unwrap();
    store.add_key_packages(&device(10), vec![vec![3]], Some(vec![9]), 3, NOW).await.unwrap();

    let mut taken = Vec::new();
    for _ in 0..5 {
        let claimed = store.claim_key_package(&device(10)).await.unwrap().unwrap();
        taken.push((claimed.data, claimed.last_resort));
    }
    assert_eq!(
        taken,
        vec![(vec![1], false), (vec![2], false), (vec![3], false), (vec![9], true), (vec![9], true)],
        "one-time packages in upload order, then the newest last-resort package, which stays"
    );
    let stock = store.key_package_stock(&device(10)).await.unwrap();
    assert_eq!((stock.one_time, stock.last_resort), (0, true));
}

/// 50 concurrent claims on 10 one-time packages: each handed out once, the rest get the last
/// resort.
pub async fn concurrent_claims_never_hand_out_a_package_twice<S: Store>(store: &S) {
    store.register_user(new_device(1, 10), None).await.unwrap();
    let one_time: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 16]).collect();
    store.add_key_packages(&device(10), one_time, Some(vec![0xff; 16]), 200, NOW).await.unwrap();

    let target = device(10);
    let results = join_all((0..50).map(|_| store.claim_key_package(&target))).await;
    let claimed: Vec<_> = results.into_iter().map(|r| r.unwrap().unwrap()).collect();
    let one_time: Vec<_> = claimed.iter().filter(|c| !c.last_resort).map(|c| c.data.clone()).collect();
    let distinct: HashSet<_> = one_time.iter().cloned().collect();
    assert_eq!(one_time.len(), 10);
    assert_eq!(distinct.len(), 10, "no one-time package twice");
    assert!(claimed.iter().filter(|c| c.last_resort).all(|c| c.data == vec![0xff; 16]));
}

/// Pruning deletes expired challenges, sessions and link requests and keeps live ones.
pub async fn pruning_removes_only_expired_rows<S: Store>(store: &S) {
    store.register_user(new_device(1, 10), None).await.unwrap();
    store.insert_challenge(b"old", &device(10), NOW - 10).await.unwrap();
    store.insert_challenge(b"new", &device(10), NOW + 10).await.unwrap();
    store.create_session(session(1, 10, 1, NOW - 1)).await.unwrap();
    store.create_session(session(2, 10, 1, NOW + 1)).await.unwrap();
    let link = |code: &str, n: u8, expires_at| NewLinkRequest { code: code.into(), device_id: device(n), expires_at };
    store.create_link_request(link("OLD0-0000", 11, NOW - 1), NOW - 100).await.unwrap();
    store.create_link_request(link("NEW0-0000", 12, NOW + 1), NOW - 100).await.unwrap();

    let pruned = store.prune_expired(NOW, 0).await.unwrap();
    assert_eq!(pruned, 3);
    assert!(store.challenge(b"old").await.unwrap().is_none());
    assert!(store.challenge(b"new").await.unwrap().is_some());
    assert!(store.session(&[1; 32]).await.unwrap().is_none());
    assert!(store.session(&[2; 32]).await.unwrap().is_some());
    assert!(store.link_request("NEW0-0000", NOW).await.unwrap().is_some());

    // With a grace period, recently expired challenges stay so replays are still recognised.
    store.insert_challenge(b"recent", &device(10), NOW - 10).await.unwrap();
    store.prune_expired(NOW, 60_000).await.unwrap();
    assert!(store.challenge(b"recent").await.unwrap().is_some());
}
