//! The account half of the store: users, devices, links, handles, authentication and the key
//! directory.

use async_trait::async_trait;
use roost_proto::{DeviceId, Handle, UserId};

use crate::{
    ChallengeRecord, ClaimedPackage, DeviceRecord, KeyPackageStock, LinkRecord, NewDevice, NewLinkRequest,
    SessionRecord, StoreResult,
};

/// Storage of users, devices, link requests, handles, challenges, sessions and KeyPackages.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    // --- users and devices ---

    /// Creates a user with its first device. When `invite_hash` is given, that invite must exist
    /// unused and is consumed in the same transaction.
    ///
    /// Errors: [`StoreError::UserExists`](crate::StoreError::UserExists),
    /// [`StoreError::DeviceExists`](crate::StoreError::DeviceExists),
    /// [`StoreError::InviteInvalid`](crate::StoreError::InviteInvalid).
    async fn register_user(&self, device: NewDevice, invite_hash: Option<[u8; 32]>) -> StoreResult<()>;

    /// Stores invite codes (by hash) that each admit one registration.
    async fn create_invites(&self, hashes: &[[u8; 32]], now: i64) -> StoreResult<()>;

    /// Whether the user exists.
    async fn user_exists(&self, user: &UserId) -> StoreResult<bool>;

    /// Adds a device to an existing user if it has fewer than `max_devices` active devices.
    ///
    /// Errors: [`StoreError::NotFound`](crate::StoreError::NotFound) (no such user),
    /// [`StoreError::DeviceExists`](crate::StoreError::DeviceExists),
    /// [`StoreError::DeviceLimitReached`](crate::StoreError::DeviceLimitReached).
    async fn add_device(&self, device: NewDevice, max_devices: u32) -> StoreResult<()>;

    /// A device, active or revoked.
    async fn device(&self, device: &DeviceId) -> StoreResult<Option<DeviceRecord>>;

    /// A user's active devices, oldest first.
    async fn active_devices(&self, user: &UserId) -> StoreResult<Vec<DeviceRecord>>;

    /// Revokes one of `user`'s devices and, in the same transaction, deletes its sessions and
    /// KeyPackages. Returns false when it was already revoked.
    ///
    /// Errors: [`StoreError::NotFound`](crate::StoreError::NotFound) when the device does not belong to `user`.
    async fn revoke_device(&self, user: &UserId, device: &DeviceId, now: i64) -> StoreResult<bool>;

    // --- linking ---

    /// Records a pending link request. A lapsed request with the same code is replaced.
    ///
    /// Errors: [`StoreError::DeviceExists`](crate::StoreError::DeviceExists) when the key is already registered,
    /// [`StoreError::LinkPending`](crate::StoreError::LinkPending) when a live request with this code exists.
    async fn create_link_request(&self, link: NewLinkRequest, now: i64) -> StoreResult<()>;

    /// A link request that has not lapsed.
    async fn link_request(&self, code: &str, now: i64) -> StoreResult<Option<LinkRecord>>;

    /// Approves a pending, live link request: adds `device` (whose id must match the request)
    /// and marks the request approved, in one transaction.
    ///
    /// Errors: [`StoreError::NotFound`](crate::StoreError::NotFound),
    /// [`StoreError::LinkAlreadyApproved`](crate::StoreError::LinkAlreadyApproved), and those of
    /// [`AccountStore::add_device`].
    async fn approve_link_request(&self, code: &str, device: NewDevice, max_devices: u32, now: i64) -> StoreResult<()>;

    // --- handles ---

    /// Gives `handle` to `user`, replacing the user's previous handle if any.
    ///
    /// Errors: [`StoreError::HandleTaken`](crate::StoreError::HandleTaken) when another user holds it.
    async fn claim_handle(&self, user: &UserId, handle: &Handle, now: i64) -> StoreResult<()>;

    /// Releases `handle` if `user` holds it. Returns whether it did.
    async fn release_handle(&self, user: &UserId, handle: &Handle) -> StoreResult<bool>;

    /// The holder of a handle.
    async fn resolve_handle(&self, handle: &Handle) -> StoreResult<Option<UserId>>;

    /// The handle a user holds.
    async fn handle_of(&self, user: &UserId) -> StoreResult<Option<Handle>>;

    // --- authentication ---

    /// Stores a freshly issued challenge.
    async fn insert_challenge(&self, challenge: &[u8], device: &DeviceId, expires_at: i64) -> StoreResult<()>;

    /// Looks a challenge up without consuming it.
    async fn challenge(&self, challenge: &[u8]) -> StoreResult<Option<ChallengeRecord>>;

    /// Marks a challenge used. Returns true for exactly one caller, however many race.
    async fn consume_challenge(&self, challenge: &[u8], now: i64) -> StoreResult<bool>;

    /// Stores a session by the hash of its token.
    async fn create_session(&self, session: SessionRecord) -> StoreResult<()>;

    /// A session by token hash, with the state of its device.
    async fn session(&self, token_hash: &[u8; 32]) -> StoreResult<Option<SessionRecord>>;

    /// Deletes a session. Returns whether it existed.
    async fn delete_session(&self, token_hash: &[u8; 32]) -> StoreResult<bool>;

    // --- key directory ---

    /// Adds one-time KeyPackages (refusing the whole upload if the device would exceed `cap`) and
    /// replaces the last-resort package when one is given.
    ///
    /// Errors: [`StoreError::KeyPackageLimitReached`](crate::StoreError::KeyPackageLimitReached).
    async fn add_key_packages(
        &self,
        device: &DeviceId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        cap: u32,
        now: i64,
    ) -> StoreResult<KeyPackageStock>;

    /// How many KeyPackages a device has.
    async fn key_package_stock(&self, device: &DeviceId) -> StoreResult<KeyPackageStock>;

    /// Takes one one-time KeyPackage of the device (deleting it), or returns the last-resort one
    /// (kept) when none is left.
    async fn claim_key_package(&self, device: &DeviceId) -> StoreResult<Option<ClaimedPackage>>;

    // --- housekeeping ---

    /// Deletes expired challenges (after a grace period the caller folds into `now`), sessions and
    /// lapsed link requests. Returns how many rows went.
    async fn prune_expired(&self, now: i64, challenge_grace_ms: i64) -> StoreResult<u64>;
}
