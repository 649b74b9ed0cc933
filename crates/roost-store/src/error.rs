//! Errors of the storage layer.

/// Why a store operation failed. Domain outcomes (a taken handle, a full device list) are
/// variants of their own so services can answer precisely; everything else is
/// [`StoreError::Backend`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The named record does not exist.
    #[error("not found")]
    NotFound,
    /// A user with this identity key already exists.
    #[error("user already exists")]
    UserExists,
    /// A device with this key already exists (or existed and was revoked).
    #[error("device already exists")]
    DeviceExists,
    /// The user already has the maximum number of active devices.
    #[error("device limit reached")]
    DeviceLimitReached,
    /// The invite code is unknown or used.
    #[error("invite invalid")]
    InviteInvalid,
    /// Another user holds the handle.
    #[error("handle taken")]
    HandleTaken,
    /// The upload would exceed the one-time KeyPackage cap.
    #[error("key package limit reached")]
    KeyPackageLimitReached,
    /// A live link request with this code already exists.
    #[error("link request pending")]
    LinkPending,
    /// The link request was already approved.
    #[error("link request already approved")]
    LinkAlreadyApproved,
    /// A conversation with this id exists.
    #[error("conversation exists")]
    ConversationExists,
    /// The commit or message names another epoch than the current one.
    #[error("stale epoch; current is {current}")]
    StaleEpoch {
        /// The conversation's current epoch.
        current: u64,
    },
    /// The device (or, for external joins, its user) is not a member.
    #[error("not a member")]
    NotAMember,
    /// The membership change makes no sense (adding a member, removing a non-member).
    #[error("invalid membership change: {0}")]
    InvalidMembership(String),
    /// The change would exceed the conversation's user limit.
    #[error("member limit reached")]
    MemberLimitReached,
    /// The user's attachment bytes for the day would go over the quota.
    #[error("attachment quota exceeded")]
    QuotaExceeded,
    /// The upload holds another number of bytes than the write assumed.
    #[error("upload offset mismatch; it holds {current}")]
    OffsetMismatch {
        /// The bytes the upload holds.
        current: u64,
    },
    /// The backend failed: connection lost, disk full, corrupt data. Not the caller's fault.
    #[error("storage backend: {0}")]
    Backend(String),
}

#[cfg(feature = "sqlx")]
impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::RowNotFound => Self::NotFound,
            other => Self::Backend(other.to_string()),
        }
    }
}
