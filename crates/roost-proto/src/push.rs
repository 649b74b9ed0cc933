//! Push subscriptions (Web Push, RFC 8030): what a device registers so that the server can wake
//! it while it holds no socket, and what the server tells about its own key.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `PUT /v1/push/subscription`: the device's Web Push subscription, in the shape a browser's
/// `PushSubscription.toJSON()` gives (and UnifiedPush distributors use the same fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushSubscription {
    /// The push service's URL for this subscription (`https://`).
    pub endpoint: String,
    /// The subscriber's keys.
    pub keys: PushKeys,
    /// What browsers send alongside (ignored; the server learns of an ended subscription from
    /// the push service).
    #[serde(default, rename = "expirationTime", skip_serializing)]
    #[schema(value_type = Option<i64>)]
    pub expiration_time: Option<serde_json::Value>,
}

/// A subscriber's keys, base64url (padding optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushKeys {
    /// The subscriber's P-256 public key, an uncompressed point (65 bytes).
    pub p256dh: String,
    /// The authentication secret (16 bytes).
    pub auth: String,
}

/// `GET /v1/push/subscription`: the calling device's subscription, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushStatus {
    /// Whether the device has a subscription.
    pub subscribed: bool,
    /// Its endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// When it was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
}

/// `GET /v1/push/server-key`: the key the server signs push requests with (VAPID, RFC 8292).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushServerKey {
    /// The P-256 public key, uncompressed (65 bytes), base64url: a browser's
    /// `pushManager.subscribe({applicationServerKey})` takes it.
    pub vapid_public_key: String,
}
