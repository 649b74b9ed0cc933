//! The KeyPackage directory.

use axum::extract::State;
use roost_proto::ErrorBody;
use roost_proto::api::{KeyClaimRequest, KeyClaimResponse, KeyPackageCount, KeyPackageUpload};

use crate::error::Result;
use crate::http::AppState;
use crate::http::extract::{Authenticated, Json};

/// Upload the caller device's one-time KeyPackages and optionally its last-resort package.
///
/// An upload that would exceed the cap is refused whole.
#[utoipa::path(post, path = "/v1/keys/packages", tag = "keys", request_body = KeyPackageUpload,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What the device now has stored", body = KeyPackageCount),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 409, description = "key_package_limit_reached", body = ErrorBody),
        (status = 413, description = "A package or the body is too large", body = ErrorBody),
        (status = 422, description = "Empty upload or empty package", body = ErrorBody),
    ))]
pub async fn upload(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Json(upload): Json<KeyPackageUpload>,
) -> Result<Json<KeyPackageCount>> {
    Ok(Json(state.services.keys.upload(&caller, upload).await?))
}

/// How many KeyPackages the caller's device has stored.
#[utoipa::path(get, path = "/v1/keys/packages", tag = "keys", security(("bearer" = [])),
    responses(
        (status = 200, description = "The count", body = KeyPackageCount),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    ))]
pub async fn count(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<KeyPackageCount>> {
    Ok(Json(state.services.keys.count(&caller).await?))
}

/// Claim one KeyPackage per device: every active device of each named user (except the caller's
/// own device) and each named device.
///
/// A one-time package is handed out at most once; when a device has none left its last-resort
/// package is returned. Devices with no package at all are listed in `missing`. Rate-limited per
/// requester and per requester/target pair.
#[utoipa::path(post, path = "/v1/keys/claim", tag = "keys", request_body = KeyClaimRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The claimed packages", body = KeyClaimResponse),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "A named user or device does not exist", body = ErrorBody),
        (status = 422, description = "No targets, or too many", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody),
    ))]
pub async fn claim(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Json(request): Json<KeyClaimRequest>,
) -> Result<Json<KeyClaimResponse>> {
    Ok(Json(state.services.keys.claim(&caller, request).await?))
}
