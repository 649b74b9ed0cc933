//! Challenge-response authentication.

use axum::extract::State;
use axum::http::StatusCode;
use roost_proto::ErrorBody;
use roost_proto::api::{ChallengeRequest, ChallengeResponse, SessionRequest, SessionResponse, WhoAmI};

use crate::error::Result;
use crate::http::AppState;
use crate::http::extract::{Authenticated, BearerToken, ClientIp, Json};

/// Get a single-use challenge for a device (valid 60 s).
#[utoipa::path(post, path = "/v1/auth/challenge", tag = "auth", request_body = ChallengeRequest,
    responses(
        (status = 200, description = "The challenge", body = ChallengeResponse),
        (status = 401, description = "device_unknown / device_revoked", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody),
    ))]
pub async fn challenge(
    State(state): State<AppState>,
    ClientIp(source): ClientIp,
    Json(request): Json<ChallengeRequest>,
) -> Result<Json<ChallengeResponse>> {
    Ok(Json(state.services.auth.challenge(request.device_id, source).await?))
}

/// Answer a challenge and get a session token.
///
/// The device signs the auth statement (label, server name, device id, challenge; see
/// docs/protocol.md). Each refusal has its own code: `challenge_unknown`, `challenge_foreign`,
/// `challenge_used`, `challenge_expired`, `device_unknown`, `device_revoked`,
/// `auth_signature_invalid`.
#[utoipa::path(post, path = "/v1/auth/session", tag = "auth", request_body = SessionRequest,
    responses(
        (status = 201, description = "A new session", body = SessionResponse),
        (status = 401, description = "Refused; see the code", body = ErrorBody),
    ))]
pub async fn open_session(
    State(state): State<AppState>,
    Json(request): Json<SessionRequest>,
) -> Result<(StatusCode, Json<SessionResponse>)> {
    Ok((StatusCode::CREATED, Json(state.services.auth.open_session(request).await?)))
}

/// Who the bearer token belongs to.
#[utoipa::path(get, path = "/v1/auth/session", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = WhoAmI),
        (status = 401, description = "unauthenticated / session_expired", body = ErrorBody),
    ))]
pub async fn whoami(State(state): State<AppState>, Authenticated(caller): Authenticated) -> Result<Json<WhoAmI>> {
    Ok(Json(state.services.auth.whoami(&caller).await?))
}

/// Log out: revoke the bearer token.
#[utoipa::path(delete, path = "/v1/auth/session", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 204, description = "The token no longer works; a WebSocket authenticated with it is closed (4006)"),
        (status = 401, description = "unauthenticated / session_expired", body = ErrorBody),
    ))]
pub async fn logout(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    BearerToken(token): BearerToken,
) -> Result<StatusCode> {
    state.services.auth.close_session(&caller, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}
