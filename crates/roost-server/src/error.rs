//! The error type of the service layer. Services speak in stable [`ErrorCode`]s; the HTTP adapter
//! turns a code into a status in exactly one place (`http::error`).

use std::time::Duration;

use roost_proto::ErrorCode;
use roost_store::StoreError;

/// How long a client is asked to wait after storage failed (`Retry-After` of a 503): long
/// enough for a pool to reconnect, short enough that a blip costs users little.
pub const STORAGE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A refused or failed operation: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct Error {
    /// The stable code.
    pub code: ErrorCode,
    /// A short explanation.
    pub message: String,
    /// For [`ErrorCode::RateLimited`] and [`ErrorCode::Unavailable`]: when to try again.
    pub retry_after: Option<Duration>,
    /// For [`ErrorCode::StaleEpoch`]: the conversation's current epoch.
    pub current_epoch: Option<u64>,
    /// For [`ErrorCode::UploadOffsetMismatch`]: how many bytes the upload holds.
    pub current_offset: Option<u64>,
}

/// Result of a service operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None, current_epoch: None, current_offset: None }
    }

    /// A 429 that says when to retry.
    pub fn rate_limited(retry_after: Duration) -> Self {
        Self { retry_after: Some(retry_after), ..Self::new(ErrorCode::RateLimited, "too many requests; slow down") }
    }

    /// 422 for a field that breaks a rule.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// 413 for one item in the body that is too large.
    pub fn too_large(what: &str, limit: usize) -> Self {
        Self::new(ErrorCode::PayloadTooLarge, format!("{what} may be at most {limit} bytes"))
    }

    /// 403 for a caller whose device is not a member of the conversation.
    pub fn not_a_member() -> Self {
        Self::new(ErrorCode::NotAMember, "this device is not a member of the conversation")
    }

    /// 404 for a resource that does not exist or that the caller may not see.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, what)
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        let (code, message) = match err {
            StoreError::NotFound => (ErrorCode::NotFound, "not found"),
            StoreError::UserExists => (ErrorCode::UserExists, "a user with this identity key is already registered"),
            StoreError::DeviceExists => {
                (ErrorCode::DeviceExists, "this device key is already registered or was revoked")
            }
            StoreError::DeviceLimitReached => {
                (ErrorCode::DeviceLimitReached, "the user has the maximum number of devices")
            }
            StoreError::InviteInvalid => (ErrorCode::InviteInvalid, "the invite code is unknown or already used"),
            StoreError::HandleTaken => (ErrorCode::HandleTaken, "the handle belongs to another user"),
            StoreError::KeyPackageLimitReached => {
                (ErrorCode::KeyPackageLimitReached, "the upload would exceed the one-time KeyPackage cap")
            }
            StoreError::LinkPending => (ErrorCode::LinkCodeInUse, "a different device holds this link code; try again"),
            StoreError::LinkAlreadyApproved => {
                (ErrorCode::LinkAlreadyApproved, "the link request was already approved")
            }
            StoreError::ConversationExists => {
                (ErrorCode::ConversationExists, "a conversation with this id already exists")
            }
            StoreError::StaleEpoch { current } => {
                return Self {
                    current_epoch: Some(current),
                    ..Self::new(
                        ErrorCode::StaleEpoch,
                        "the epoch is not the conversation's current one; catch up and retry",
                    )
                };
            }
            StoreError::NotAMember => return Self::not_a_member(),
            StoreError::QuotaExceeded => {
                (ErrorCode::QuotaExceeded, "the attachment bytes this user may upload today are used up")
            }
            StoreError::OffsetMismatch { current } => {
                return Self {
                    current_offset: Some(current),
                    ..Self::new(
                        ErrorCode::UploadOffsetMismatch,
                        "the upload holds a different number of bytes; resume from current_offset",
                    )
                };
            }
            StoreError::InvalidMembership(detail) => return Self::invalid(detail),
            StoreError::MemberLimitReached => {
                (ErrorCode::MemberLimitReached, "the conversation would have more users than its kind allows")
            }
            StoreError::Backend(detail) => {
                tracing::error!(%detail, "storage failure");
                // SQLite says "database or disk is full", PostgreSQL "No space left on device".
                let full = detail.contains("disk is full") || detail.contains("No space left");
                let message = if full {
                    "the server's storage is full; nothing was stored; try again later"
                } else {
                    "storage is unavailable; try again later"
                };
                return Self { retry_after: Some(STORAGE_RETRY_AFTER), ..Self::new(ErrorCode::Unavailable, message) };
            }
            other => {
                tracing::error!(error = %other, "unexpected storage error");
                (ErrorCode::Internal, "internal error")
            }
        };
        Self::new(code, message)
    }
}
