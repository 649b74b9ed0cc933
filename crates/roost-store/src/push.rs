//! The push half of the store: each device's Web Push subscription (RFC 8030), and the server's
//! VAPID key (RFC 8292), kept in the database so every instance signs with the same one.
//!
//! Rules a backend must keep (checked by the conformance suite):
//! - a subscription is stored only for an active device, one per device (a new one replaces it);
//! - revoking a device deletes its subscription in the same transaction;
//! - a conditional delete removes the subscription only while it still has the endpoint the
//!   caller saw, so a push service's "gone" for an old endpoint never deletes a newer one;
//! - the first VAPID key offered is kept, and every later offer gets that one back.

use async_trait::async_trait;
use roost_proto::{DeviceId, UserId};

use crate::StoreResult;

/// A device's Web Push subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubscriptionRecord {
    /// The subscribed device.
    pub device_id: DeviceId,
    /// Its user.
    pub user_id: UserId,
    /// The push service's URL for this subscription.
    pub endpoint: String,
    /// The subscriber's P-256 public key (uncompressed point, 65 bytes).
    pub p256dh: Vec<u8>,
    /// The subscriber's authentication secret (16 bytes).
    pub auth: Vec<u8>,
    /// When it was stored.
    pub created_at: i64,
}

/// Storage of push subscriptions and the VAPID key.
#[async_trait]
pub trait PushStore: Send + Sync + 'static {
    /// Stores the device's subscription, replacing any earlier one. Errors: `NotFound` (no
    /// such active device).
    async fn put_push_subscription(&self, subscription: PushSubscriptionRecord) -> StoreResult<()>;

    /// The device's subscription.
    async fn push_subscription(&self, device: &DeviceId) -> StoreResult<Option<PushSubscriptionRecord>>;

    /// Deletes the device's subscription (only while its endpoint is `endpoint`, when given);
    /// whether one was deleted.
    async fn delete_push_subscription(&self, device: &DeviceId, endpoint: Option<&str>) -> StoreResult<bool>;

    /// The VAPID private key: `candidate` if none was kept yet (it is kept then), else the one
    /// kept before.
    async fn vapid_key(&self, candidate: &[u8]) -> StoreResult<Vec<u8>>;
}

/// SQL shared by the backends (both take `$n` placeholders).
pub mod sql {
    /// Stores or replaces a subscription (`$1` device, `$2` endpoint, `$3` p256dh, `$4` auth,
    /// `$5` now) for an active device; affects no row when the device is not active.
    pub const PUT: &str = "INSERT INTO push_subscriptions (device_id, user_id, endpoint, p256dh, auth, created_at) \
         SELECT d.id, d.user_id, $2, $3, $4, $5 FROM devices d WHERE d.id = $1 AND d.revoked_at IS NULL \
         ON CONFLICT (device_id) DO UPDATE SET endpoint = excluded.endpoint, p256dh = excluded.p256dh, \
         auth = excluded.auth, created_at = excluded.created_at";

    /// One device's subscription (`$1`).
    pub const SELECT: &str = "SELECT device_id, user_id, endpoint, p256dh, auth, created_at \
         FROM push_subscriptions WHERE device_id = $1";

    /// Deletes a device's subscription (`$1`), only while its endpoint is `$2` when that is not
    /// NULL.
    pub const DELETE: &str = "DELETE FROM push_subscriptions WHERE device_id = $1 AND ($2 IS NULL OR endpoint = $2)";

    /// Keeps `$1` as the VAPID key unless one is kept already.
    pub const OFFER_VAPID: &str =
        "INSERT INTO server_keys (name, secret) VALUES ('vapid', $1) ON CONFLICT (name) DO NOTHING";

    /// The kept VAPID key.
    pub const VAPID: &str = "SELECT secret FROM server_keys WHERE name = 'vapid'";
}

/// Implements [`PushStore`] for an sqlx store with the shared SQL: `$store` is the type,
/// `$writer` and `$reader` its pools for writes and reads (the same pool on PostgreSQL).
#[cfg(feature = "sqlx")]
#[macro_export]
macro_rules! sql_push_store {
    ($store:ty, $writer:ident, $reader:ident) => {
        #[async_trait::async_trait]
        impl $crate::PushStore for $store {
            async fn put_push_subscription(
                &self,
                subscription: $crate::PushSubscriptionRecord,
            ) -> $crate::StoreResult<()> {
                $crate::timed("put_push_subscription", async {
                    let done = sqlx::query($crate::push_sql::PUT)
                        .bind(subscription.device_id.as_bytes().as_slice())
                        .bind(subscription.endpoint.as_str())
                        .bind(subscription.p256dh.as_slice())
                        .bind(subscription.auth.as_slice())
                        .bind(subscription.created_at)
                        .execute(&self.$writer)
                        .await?;
                    if done.rows_affected() == 0 {
                        return Err($crate::StoreError::NotFound);
                    }
                    Ok(())
                })
                .await
            }

            async fn push_subscription(
                &self,
                device: &roost_proto::DeviceId,
            ) -> $crate::StoreResult<Option<$crate::PushSubscriptionRecord>> {
                $crate::timed("push_subscription", async {
                    let row = sqlx::query($crate::push_sql::SELECT)
                        .bind(device.as_bytes().as_slice())
                        .fetch_optional(&self.$reader)
                        .await?;
                    row.as_ref().map($crate::rows::push_subscription_row).transpose()
                })
                .await
            }

            async fn delete_push_subscription(
                &self,
                device: &roost_proto::DeviceId,
                endpoint: Option<&str>,
            ) -> $crate::StoreResult<bool> {
                $crate::timed("delete_push_subscription", async {
                    let done = sqlx::query($crate::push_sql::DELETE)
                        .bind(device.as_bytes().as_slice())
                        .bind(endpoint)
                        .execute(&self.$writer)
                        .await?;
                    Ok(done.rows_affected() > 0)
                })
                .await
            }

            async fn vapid_key(&self, candidate: &[u8]) -> $crate::StoreResult<Vec<u8>> {
                $crate::timed("vapid_key", async {
                    sqlx::query($crate::push_sql::OFFER_VAPID).bind(candidate).execute(&self.$writer).await?;
                    Ok(sqlx::query_scalar($crate::push_sql::VAPID).fetch_one(&self.$writer).await?)
                })
                .await
            }
        }
    };
}
