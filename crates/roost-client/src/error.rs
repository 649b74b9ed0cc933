//! Errors of the SDK.

use roost_proto::ErrorCode;

/// Why an SDK call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused the request with a stable code.
    #[error("the server refused: {message} ({code:?})")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The stable error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// With `stale_epoch`: the conversation's current epoch.
        current_epoch: Option<u64>,
    },
    /// The server could not be reached.
    #[error("cannot reach the server at {0}")]
    Unreachable(String),
    /// The server answered something that is not the protocol.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// MLS processing failed.
    #[error("MLS: {0}")]
    Mls(String),
    /// A device or leaf did not verify against its user's identity key.
    #[error("verification failed: {0}")]
    Verification(String),
    /// The local store failed.
    #[error("local store: {0}")]
    Store(String),
    /// Something the caller named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The call is not possible in this state (no account yet, identity key not on this device).
    #[error("{0}")]
    Invalid(String),
}

/// Result of an SDK call.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    /// The server's error code, if the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for ClientError {
    fn from(err: rusqlite::Error) -> Self {
        Self::Store(err.to_string())
    }
}
