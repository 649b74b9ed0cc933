//! The error body every failed request carries, and its stable machine-readable codes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A stable, machine-readable error code. Clients branch on this, never on the message.
///
/// The HTTP status that goes with each code is fixed in one place on the server and listed in
/// `docs/protocol.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the body is not valid JSON for this route, or a path or query parameter is malformed.
    MalformedRequest,
    /// 422: the request is well formed but a field breaks a rule (a bad handle, an empty list).
    InvalidArgument,
    /// 408: the request body did not arrive within the configured time; the connection closes.
    RequestTimeout,
    /// 413: the body, or one item in it, is larger than the configured limit.
    PayloadTooLarge,
    /// 401: no bearer token, or a token the server does not know.
    Unauthenticated,
    /// 401: the bearer token was valid but has expired; authenticate again.
    SessionExpired,
    /// 401: the device has been revoked; it can no longer authenticate or use its sessions.
    DeviceRevoked,
    /// 401: the device named in an authentication request is not registered.
    DeviceUnknown,
    /// 401: the challenge was never issued (or was pruned long ago).
    ChallengeUnknown,
    /// 401: the challenge is older than its 60-second lifetime.
    ChallengeExpired,
    /// 401: the challenge has already been used to open a session.
    ChallengeUsed,
    /// 401: the challenge was issued to a different device.
    ChallengeForeign,
    /// 401: the device's signature over the challenge does not verify.
    AuthSignatureInvalid,
    /// 422: a signature in the body (device certificate, revocation, handle request) does not
    /// verify against the identity key it must come from.
    SignatureInvalid,
    /// 422: a signed request carries a timestamp too far from the server's clock.
    TimestampOutOfRange,
    /// 403: the caller is authenticated but may not act on this resource.
    Forbidden,
    /// 403: registration is invite-only and no invite code was given.
    InviteRequired,
    /// 403: the invite code is unknown or already used.
    InviteInvalid,
    /// 403: the caller's device is not a member of the conversation.
    NotAMember,
    /// 404: the route or the named resource does not exist (or is not visible to the caller).
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 409: a user with this identity key is already registered.
    UserExists,
    /// 409: a device with this key is already registered (or was revoked; keys are not reused).
    DeviceExists,
    /// 409: the user already has the maximum number of devices.
    DeviceLimitReached,
    /// 409: the handle belongs to another user.
    HandleTaken,
    /// 409: the upload would take the device past its one-time KeyPackage cap.
    KeyPackageLimitReached,
    /// 409: the link request was already approved.
    LinkAlreadyApproved,
    /// 409: a conversation with this id already exists.
    ConversationExists,
    /// 409: the commit or message names an epoch that is not the conversation's current one;
    /// `current_epoch` in the error says which is. Catch up (sync) and retry.
    StaleEpoch,
    /// 409: the change would take the conversation past its user limit (2 for direct chats, 1
    /// for notes to self, the configured maximum for groups).
    MemberLimitReached,
    /// 409: another device's live link request has the same code (a 1-in-2^40 event); retry
    /// with a new device key.
    LinkCodeInUse,
    /// 409: the upload holds a different number of bytes than the request's `Upload-Offset`;
    /// `current_offset` in the error says how many. Resume from there.
    UploadOffsetMismatch,
    /// 409: another request is writing this upload right now.
    UploadInProgress,
    /// 409: the attachment's upload has not completed; it cannot be downloaded yet.
    UploadIncomplete,
    /// 416: the requested byte range lies outside the attachment.
    RangeNotSatisfiable,
    /// 422: the uploaded bytes do not match the announced SHA-256; nothing of them was kept.
    DigestMismatch,
    /// 422: the push endpoint is not one this server calls (not https, not a public address, or
    /// not one of the push services the operator listed).
    PushEndpointRefused,
    /// 429: too many requests; retry after the number of seconds in `Retry-After`.
    RateLimited,
    /// 429: the user's attachment bytes for today are used up; `Retry-After` says when the next
    /// day (UTC) starts.
    QuotaExceeded,
    /// 503: the server cannot reach its storage right now; retry later.
    Unavailable,
    /// 503: the server holds as many connections as it may; the connection closes. Retry later.
    TooManyConnections,
    /// 500: a fault inside the server. Never caused by client input; always logged.
    Internal,
}

impl ErrorCode {
    /// The HTTP status that always accompanies this code.
    pub const fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            MalformedRequest => 400,
            Unauthenticated | SessionExpired | DeviceRevoked | DeviceUnknown | ChallengeUnknown | ChallengeExpired
            | ChallengeUsed | ChallengeForeign | AuthSignatureInvalid => 401,
            Forbidden | InviteRequired | InviteInvalid | NotAMember => 403,
            NotFound => 404,
            MethodNotAllowed => 405,
            RequestTimeout => 408,
            UserExists
            | DeviceExists
            | DeviceLimitReached
            | HandleTaken
            | KeyPackageLimitReached
            | LinkAlreadyApproved
            | LinkCodeInUse
            | ConversationExists
            | StaleEpoch
            | MemberLimitReached
            | UploadOffsetMismatch
            | UploadInProgress
            | UploadIncomplete => 409,
            PayloadTooLarge => 413,
            RangeNotSatisfiable => 416,
            InvalidArgument | SignatureInvalid | TimestampOutOfRange | DigestMismatch | PushEndpointRefused => 422,
            RateLimited | QuotaExceeded => 429,
            Internal => 500,
            Unavailable | TooManyConnections => 503,
        }
    }
}

/// The JSON body of every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code and a human-readable explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// The stable code.
    pub code: ErrorCode,
    /// A short explanation for people; its wording may change.
    pub message: String,
    /// With `stale_epoch`: the conversation's current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<u64>,
    /// With `upload_offset_mismatch`: how many bytes the upload holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_offset: Option<u64>,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { error: ErrorDetail { code, message: message.into(), current_epoch: None, current_offset: None } }
    }
}
