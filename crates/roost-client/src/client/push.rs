//! Push subscriptions: register the one a browser or mobile OS made, or make one for a push
//! endpoint (UnifiedPush) with keys this device keeps and opens wake-ups with.

use roost_proto::bytes;
use roost_proto::push::{PushStatus, PushSubscription};

use super::Client;
use crate::error::{ClientError, Result};
use crate::push::PushKeys;

impl Client {
    /// The server's VAPID public key (65 bytes): what a browser's `pushManager.subscribe` takes
    /// as `applicationServerKey`.
    pub async fn push_server_key(&self) -> Result<Vec<u8>> {
        let key = self.api.push_server_key().await?;
        bytes::decode(&key.vapid_public_key)
            .map_err(|_| ClientError::Protocol("the server's VAPID key is not base64url".into()))
    }

    /// Registers a subscription the platform made (its keys stay with the platform).
    pub async fn subscribe_push(&self, subscription: &PushSubscription) -> Result<PushStatus> {
        let status = self.api.set_push_subscription(subscription).await?;
        self.store.clear_push_keys()?;
        Ok(status)
    }

    /// Makes keys for `endpoint` (a UnifiedPush distributor's URL, say), keeps them here and
    /// registers the subscription; [`Client::open_wake_up`] opens what arrives there.
    pub async fn subscribe_push_endpoint(&self, endpoint: &str) -> Result<PushStatus> {
        let keys = PushKeys::generate();
        let status = self.api.set_push_subscription(&keys.subscription(endpoint)).await?;
        self.store.save_push_keys(endpoint, &keys.secret_bytes(), &keys.auth())?;
        Ok(status)
    }

    /// This device's subscription as the server has it.
    pub async fn push_status(&self) -> Result<PushStatus> {
        self.api.push_status().await
    }

    /// Removes this device's subscription (on the server and its keys here).
    pub async fn unsubscribe_push(&self) -> Result<()> {
        self.api.delete_push_subscription().await?;
        self.store.clear_push_keys()
    }

    /// Opens a push message's body with the keys of [`Client::subscribe_push_endpoint`]; a
    /// Roost wake-up reads `{"type":"wake"}` (then sync).
    pub fn open_wake_up(&self, body: &[u8]) -> Result<Vec<u8>> {
        let saved = self.store.push_keys()?.ok_or_else(|| {
            ClientError::Invalid("this device holds no push keys; subscribe with an endpoint first".into())
        })?;
        PushKeys::from_parts(&saved.secret, &saved.auth)?.open(body)
    }

    /// The endpoint this device made keys for, if any.
    pub fn push_endpoint(&self) -> Result<Option<String>> {
        Ok(self.store.push_keys()?.map(|saved| saved.endpoint))
    }
}
