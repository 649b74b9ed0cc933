//! Conformance cases of the push half.

use super::{NOW, device, new_device, user};
use crate::{PushSubscriptionRecord, Store, StoreError};

fn subscription(device_n: u8, user_n: u8, endpoint: &str) -> PushSubscriptionRecord {
    PushSubscriptionRecord {
        device_id: device(device_n),
        user_id: user(user_n),
        endpoint: endpoint.to_owned(),
        p256dh: vec![4; 65],
        auth: vec![device_n; 16],
        created_at: NOW,
    }
}

/// One subscription per active device, replaced by a newer one, deleted conditionally on its
/// endpoint, and gone with the device's revocation.
pub async fn push_subscriptions_follow_their_device<S: Store>(store: &S) {
    store.register_user(new_device(1, 10), None).await.unwrap();
    store.add_device(new_device(1, 11), 10).await.unwrap();

    let err = store.put_push_subscription(subscription(12, 1, "https://push.example/a")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "an unknown device has no subscription: {err:?}");
    assert!(store.push_subscription(&device(12)).await.unwrap().is_none());

    store.put_push_subscription(subscription(10, 1, "https://push.example/a")).await.unwrap();
    let newer = PushSubscriptionRecord { created_at: NOW + 5, ..subscription(10, 1, "https://push.example/b") };
    store.put_push_subscription(newer.clone()).await.unwrap();
    assert_eq!(store.push_subscription(&device(10)).await.unwrap(), Some(newer), "the newer one replaced it");

    assert!(
        !store.delete_push_subscription(&device(10), Some("https://push.example/a")).await.unwrap(),
        "news about the old endpoint leaves the new one"
    );
    assert!(store.push_subscription(&device(10)).await.unwrap().is_some());
    assert!(store.delete_push_subscription(&device(10), Some("https://push.example/b")).await.unwrap());
    assert!(store.push_subscription(&device(10)).await.unwrap().is_none());

    store.put_push_subscription(subscription(10, 1, "https://push.example/c")).await.unwrap();
    assert!(store.delete_push_subscription(&device(10), None).await.unwrap());
    assert!(!store.delete_push_subscription(&device(10), None).await.unwrap());

    store.put_push_subscription(subscription(11, 1, "https://push.example/d")).await.unwrap();
    assert!(store.revoke_device(&user(1), &device(11), NOW).await.unwrap());
    assert!(store.push_subscription(&device(11)).await.unwrap().is_none(), "revocation takes it");
    let err = store.put_push_subscription(subscription(11, 1, "https://push.example/d")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "a revoked device cannot subscribe: {err:?}");
}

/// The first VAPID key offered is kept; every later offer gets it back.
pub async fn the_first_vapid_key_is_kept<S: Store>(store: &S) {
    assert_eq!(store.vapid_key(&[1; 32]).await.unwrap(), vec![1; 32]);
    assert_eq!(store.vapid_key(&[2; 32]).await.unwrap(), vec![1; 32]);
}
