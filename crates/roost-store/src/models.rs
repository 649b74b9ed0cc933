//! Records the store reads and writes.

use roost_proto::{DeviceId, UserId};

/// A device to create (with its user, for registration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// The device key.
    pub id: DeviceId,
    /// Its user.
    pub user_id: UserId,
    /// The identity key's signature binding the two (already verified).
    pub certificate: Vec<u8>,
    /// The owner's label for it.
    pub name: Option<String>,
    /// Creation time.
    pub created_at: i64,
}

/// A stored device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device key.
    pub id: DeviceId,
    /// Its user.
    pub user_id: UserId,
    /// Its certificate.
    pub certificate: Vec<u8>,
    /// The owner's label.
    pub name: Option<String>,
    /// Creation time.
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// A link request to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLinkRequest {
    /// The short code derived from the device key.
    pub code: String,
    /// The device waiting to be linked.
    pub device_id: DeviceId,
    /// When it lapses.
    pub expires_at: i64,
}

/// A stored link request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecord {
    /// The short code.
    pub code: String,
    /// The device waiting to be linked.
    pub device_id: DeviceId,
    /// When it lapses.
    pub expires_at: i64,
    /// The approving user and the certificate it uploaded, once approved.
    pub approved: Option<(UserId, Vec<u8>)>,
}

/// A stored challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeRecord {
    /// The device it was issued to.
    pub device_id: DeviceId,
    /// When it stops being accepted.
    pub expires_at: i64,
    /// Whether it has been used.
    pub used: bool,
}

/// A session, stored by the hash of its token.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// SHA-256 of the bearer token.
    pub token_hash: [u8; 32],
    /// The device that authenticated.
    pub device_id: DeviceId,
    /// Its user.
    pub user_id: UserId,
    /// When it was created.
    pub created_at: i64,
    /// When it stops working.
    pub expires_at: i64,
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("device_id", &self.device_id)
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// How many KeyPackages a device has stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyPackageStock {
    /// One-time packages left.
    pub one_time: u32,
    /// Whether a last-resort package is stored.
    pub last_resort: bool,
}

/// A KeyPackage handed out by a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedPackage {
    /// The opaque package.
    pub data: Vec<u8>,
    /// Whether it is the (reusable) last-resort package.
    pub last_resort: bool,
}
