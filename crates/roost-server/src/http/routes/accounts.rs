//! Users, devices, device links and handles.

use axum::extract::State;
use axum::http::StatusCode;
use roost_proto::api::{
    Device, DeviceList, HandleRecord, HandleRequest, LinkApproveRequest, LinkRequest, LinkStartRequest,
    RegisterRequest, RegisterResponse, RevokeDeviceRequest,
};
use roost_proto::{DeviceId, ErrorBody, Handle, UserId};

use crate::error::Result;
use crate::http::AppState;
use crate::http::extract::{Authenticated, ClientIp, Json, Path};

/// Register a user and its first device.
///
/// The device certificate is the identity key's signature over the device-certificate statement
/// (see docs/protocol.md). Open registration is rate-limited per source address; invite-only
/// servers need `invite_code`.
#[utoipa::path(post, path = "/v1/users", tag = "accounts", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered", body = RegisterResponse),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 403, description = "invite_required / invite_invalid", body = ErrorBody),
        (status = 409, description = "user_exists / device_exists", body = ErrorBody),
        (status = 422, description = "signature_invalid / invalid_argument", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    ClientIp(source): ClientIp,
    Json(request): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>)> {
    let registered = state.services.accounts.register(request, source).await?;
    Ok((StatusCode::CREATED, Json(registered)))
}

/// List a user's active devices with their certificates.
///
/// Device names are included only when the caller is that user.
#[utoipa::path(get, path = "/v1/users/{user_id}/devices", tag = "accounts",
    params(("user_id" = String, Path, description = "The user id (base64url identity key)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The devices", body = DeviceList),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub async fn list_devices(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(user_id): Path<UserId>,
) -> Result<Json<DeviceList>> {
    Ok(Json(state.services.accounts.devices(&caller, &user_id).await?))
}

/// Revoke one of the caller's user's devices.
///
/// The identity key signs the revoke statement. The device's sessions and KeyPackages are deleted
/// at once and its key can never be registered again.
#[utoipa::path(post, path = "/v1/devices/{device_id}/revoke", tag = "accounts", request_body = RevokeDeviceRequest,
    params(("device_id" = String, Path, description = "The device to revoke")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked (or already revoked)"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "The device belongs to another user", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 422, description = "signature_invalid", body = ErrorBody),
    ))]
pub async fn revoke_device(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(device_id): Path<DeviceId>,
    Json(request): Json<RevokeDeviceRequest>,
) -> Result<StatusCode> {
    state.services.accounts.revoke_device(&caller, &device_id, &request.signature).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Start linking a new device: returns the short code the device shows its user.
///
/// The code is derived from the device key, so the approving device can check the key the server
/// hands it. Asking again while pending returns the same request.
#[utoipa::path(post, path = "/v1/links", tag = "accounts", request_body = LinkStartRequest,
    responses(
        (status = 201, description = "Pending link request", body = LinkRequest),
        (status = 409, description = "device_exists / link_code_in_use", body = ErrorBody),
        (status = 422, description = "invalid_argument", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody),
    ))]
pub async fn start_link(
    State(state): State<AppState>,
    ClientIp(source): ClientIp,
    Json(request): Json<LinkStartRequest>,
) -> Result<(StatusCode, Json<LinkRequest>)> {
    let link = state.services.accounts.start_link(request.device_id, source).await?;
    Ok((StatusCode::CREATED, Json(link)))
}

/// Look a link request up by its code.
///
/// The approving device reads the new device's key here; the new device polls it until the
/// state is `approved`.
#[utoipa::path(get, path = "/v1/links/{link_code}", tag = "accounts",
    params(("link_code" = String, Path, description = "The code, like ABCD-EFGH")),
    responses(
        (status = 200, description = "The link request", body = LinkRequest),
        (status = 404, description = "No live request with this code", body = ErrorBody),
        (status = 422, description = "Malformed code", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody),
    ))]
pub async fn get_link(
    State(state): State<AppState>,
    ClientIp(source): ClientIp,
    Path(code): Path<String>,
) -> Result<Json<LinkRequest>> {
    Ok(Json(state.services.accounts.link(&code, source).await?))
}

/// Approve a link request with a device certificate from the caller's identity key.
#[utoipa::path(post, path = "/v1/links/{link_code}/approve", tag = "accounts", request_body = LinkApproveRequest,
    params(("link_code" = String, Path, description = "The code the new device shows")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The new device", body = Device),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No live request with this code", body = ErrorBody),
        (status = 409, description = "link_already_approved / device_limit_reached", body = ErrorBody),
        (status = 422, description = "signature_invalid", body = ErrorBody),
    ))]
pub async fn approve_link(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(code): Path<String>,
    Json(request): Json<LinkApproveRequest>,
) -> Result<(StatusCode, Json<Device>)> {
    let device = state.services.accounts.approve_link(&caller, &code, request).await?;
    Ok((StatusCode::CREATED, Json(device)))
}

/// Resolve a handle to its user.
#[utoipa::path(get, path = "/v1/handles/{handle}", tag = "accounts",
    params(("handle" = String, Path, description = "The handle, with or without @")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The holder", body = HandleRecord),
        (status = 400, description = "Malformed handle", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "Nobody holds it", body = ErrorBody),
    ))]
pub async fn resolve_handle(
    State(state): State<AppState>,
    Authenticated(_caller): Authenticated,
    Path(handle): Path<Handle>,
) -> Result<Json<HandleRecord>> {
    Ok(Json(state.services.accounts.resolve_handle(handle).await?))
}

/// Claim a handle for the caller's user (replacing its previous handle).
#[utoipa::path(post, path = "/v1/handles/{handle}/claim", tag = "accounts", request_body = HandleRequest,
    params(("handle" = String, Path, description = "The handle to claim")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Claimed", body = HandleRecord),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 409, description = "handle_taken", body = ErrorBody),
        (status = 422, description = "signature_invalid / timestamp_out_of_range", body = ErrorBody),
    ))]
pub async fn claim_handle(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(handle): Path<Handle>,
    Json(request): Json<HandleRequest>,
) -> Result<Json<HandleRecord>> {
    Ok(Json(state.services.accounts.claim_handle(&caller, handle, &request).await?))
}

/// Release the caller's user's handle.
#[utoipa::path(post, path = "/v1/handles/{handle}/release", tag = "accounts", request_body = HandleRequest,
    params(("handle" = String, Path, description = "The handle to release")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Released"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "The user does not hold it", body = ErrorBody),
        (status = 422, description = "signature_invalid / timestamp_out_of_range", body = ErrorBody),
    ))]
pub async fn release_handle(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(handle): Path<Handle>,
    Json(request): Json<HandleRequest>,
) -> Result<StatusCode> {
    state.services.accounts.release_handle(&caller, handle, &request).await?;
    Ok(StatusCode::NO_CONTENT)
}
