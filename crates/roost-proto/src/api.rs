//! HTTP request and response bodies. Times are Unix milliseconds (`*_at`), byte strings are
//! unpadded base64url.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::bytes::Base64Bytes;
use crate::ids::{DeviceId, Handle, UserId};

/// `POST /v1/users`: register a user together with its first device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The identity public key; it becomes the user id.
    pub identity_key: UserId,
    /// The first device's public key; it becomes the device id.
    pub device_id: DeviceId,
    /// The identity key's signature over the device certificate statement.
    pub device_certificate: Base64Bytes,
    /// A label for the device, shown only to its own user (at most 64 characters).
    #[serde(default)]
    pub device_name: Option<String>,
    /// Required when the server's registration policy is invite-only.
    #[serde(default)]
    pub invite_code: Option<String>,
}

/// The result of a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegisterResponse {
    /// The new user.
    pub user_id: UserId,
    /// Its first device.
    pub device: Device,
}

/// A device as the directory shows it. `name` is present only for the caller's own devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Device {
    /// The device's public key.
    pub device_id: DeviceId,
    /// The user it belongs to.
    pub user_id: UserId,
    /// The identity key's signature binding this device to the user; clients verify it.
    pub certificate: Base64Bytes,
    /// The label its user gave it (own devices only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the device was registered or linked.
    pub created_at: i64,
}

/// `GET /v1/users/{user_id}/devices`: the active devices of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceList {
    /// The user.
    pub user_id: UserId,
    /// The user's handle, if it holds one (as the server says: a client shows it, and checks
    /// the safety number before trusting it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<Handle>,
    /// Every active (not revoked) device, oldest first.
    pub devices: Vec<Device>,
}

/// `POST /v1/devices/{device_id}/revoke`: the identity key's signature over the revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeDeviceRequest {
    /// Signature over the revoke-device statement.
    pub signature: Base64Bytes,
}

/// `POST /v1/links`: a new device asks to be linked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkStartRequest {
    /// The new device's public key.
    pub device_id: DeviceId,
}

/// State of a link request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Waiting for a device holding the identity key to approve it.
    Pending,
    /// Approved: the device is registered and can authenticate.
    Approved,
}

/// A link request, as both the new device and the approving device see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LinkRequest {
    /// The short code the new device shows (derived from its key).
    pub link_code: String,
    /// The new device's public key. The approver checks that it hashes to the code.
    pub device_id: DeviceId,
    /// Pending or approved.
    pub state: LinkState,
    /// The user that approved it, once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// The certificate uploaded by the approver, once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Base64Bytes>,
    /// When the request lapses if nobody approves it.
    pub expires_at: i64,
}

/// `POST /v1/links/{link_code}/approve`: the certificate for the new device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkApproveRequest {
    /// The identity key's signature binding the new device to the approving user.
    pub device_certificate: Base64Bytes,
    /// A label for the new device (at most 64 characters).
    #[serde(default)]
    pub device_name: Option<String>,
}

/// `POST /v1/auth/challenge`: a device asks for a challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    /// The device that will answer it.
    pub device_id: DeviceId,
}

/// A single-use challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChallengeResponse {
    /// 32 random bytes to sign inside the auth statement.
    pub challenge: Base64Bytes,
    /// The server name that goes into the auth statement.
    pub server_name: String,
    /// When the challenge stops being accepted (60 s after issue).
    pub expires_at: i64,
}

/// `POST /v1/auth/session`: the device's answer to its challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// The device answering.
    pub device_id: DeviceId,
    /// The challenge it was given.
    pub challenge: Base64Bytes,
    /// The device key's signature over the auth statement.
    pub signature: Base64Bytes,
}

/// A new session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionResponse {
    /// The bearer token. The server keeps only its hash.
    pub token: String,
    /// The authenticated user.
    pub user_id: UserId,
    /// The authenticated device.
    pub device_id: DeviceId,
    /// When the token stops working.
    pub expires_at: i64,
}

impl std::fmt::Debug for SessionResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionResponse")
            .field("token", &"<redacted>")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// `GET /v1/auth/session`: who the bearer token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The authenticated user.
    pub user_id: UserId,
    /// The authenticated device.
    pub device_id: DeviceId,
    /// The user's handle, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<Handle>,
    /// When the token stops working.
    pub expires_at: i64,
}

/// `PUT` / `DELETE /v1/handles/{handle}`: a handle claim or release signed by the identity key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HandleRequest {
    /// Unix milliseconds when the client signed; must be within the server's allowed skew.
    pub timestamp: i64,
    /// The identity key's signature over the handle statement.
    pub signature: Base64Bytes,
}

/// A handle and the user that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HandleRecord {
    /// The handle (without `@`).
    pub handle: Handle,
    /// Its owner.
    pub user_id: UserId,
}

/// `POST /v1/keys/packages`: upload one-time KeyPackages and optionally the last-resort one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPackageUpload {
    /// One-time packages, each handed out at most once.
    #[serde(default)]
    pub one_time: Vec<Base64Bytes>,
    /// Replaces the device's last-resort package, handed out when no one-time package is left.
    #[serde(default)]
    pub last_resort: Option<Base64Bytes>,
}

/// How many KeyPackages a device has stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyPackageCount {
    /// One-time packages left.
    pub one_time: u32,
    /// Whether a last-resort package is stored.
    pub last_resort: bool,
    /// The cap on stored one-time packages.
    pub max_one_time: u32,
}

/// `POST /v1/keys/claim`: take one KeyPackage for each named device, or each device of each named
/// user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyClaimRequest {
    /// Users whose every active device gets a package claimed.
    #[serde(default)]
    pub user_ids: Vec<UserId>,
    /// Individual devices.
    #[serde(default)]
    pub device_ids: Vec<DeviceId>,
}

/// One claimed KeyPackage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClaimedKeyPackage {
    /// The device's user.
    pub user_id: UserId,
    /// The device the package belongs to.
    pub device_id: DeviceId,
    /// The opaque MLS KeyPackage.
    pub key_package: Base64Bytes,
    /// True when no one-time package was left and the last-resort package was returned.
    pub last_resort: bool,
}

/// The result of a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyClaimResponse {
    /// One entry per device that had a package.
    pub packages: Vec<ClaimedKeyPackage>,
    /// Active devices that had no package at all.
    pub missing: Vec<DeviceId>,
}

/// `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or what is not ready.
    pub status: String,
}
