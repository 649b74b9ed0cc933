//! Sync, acks and device-to-device payloads.

use axum::extract::State;
use axum::http::StatusCode;
use roost_proto::conversation::{AckRequest, DeviceMessageRequest, SyncResponse};
use roost_proto::{DeviceId, ErrorBody};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::Result;
use crate::http::AppState;
use crate::http::extract::{Authenticated, Json, Path, Query};

/// Paging of sync.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SyncQuery {
    /// The `cursor` of the previous page (absent for the first).
    pub cursor: Option<String>,
    /// Page size for entries and for queue items (default 100, at most `limits.max_page_size`).
    pub limit: Option<u32>,
}

/// The id of a queued item.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct QueuedResponse {
    /// The queue entry id.
    pub id: u64,
}

/// Fetch what the caller's device has not acknowledged: conversation entries after its
/// positions, by conversation then sequence number, and its queue, oldest first.
#[utoipa::path(get, path = "/v1/sync", tag = "delivery", params(SyncQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page; `cursor` is present when more may follow", body = SyncResponse),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 422, description = "Bad cursor or limit", body = ErrorBody),
    ))]
pub async fn sync(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(query): Query<SyncQuery>,
) -> Result<Json<SyncResponse>> {
    Ok(Json(state.services.delivery.sync(&caller, query.cursor.as_deref(), query.limit).await?))
}

/// Acknowledge: cumulative per conversation (everything up to `seq`), and queue entries up to
/// an id. Idempotent; an older or repeated ack changes nothing; only the caller's device moves.
#[utoipa::path(post, path = "/v1/ack", tag = "delivery", request_body = AckRequest, security(("bearer" = [])),
    responses(
        (status = 204, description = "Acknowledged"),
        (status = 403, description = "not_a_member of a named conversation (nothing changed)", body = ErrorBody),
        (status = 422, description = "Nothing to acknowledge", body = ErrorBody),
    ))]
pub async fn ack(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Json(request): Json<AckRequest>,
) -> Result<StatusCode> {
    state.services.delivery.ack(&caller, &request).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Queue an opaque payload for one device of the caller's user or of a user sharing a
/// conversation with the caller.
#[utoipa::path(post, path = "/v1/devices/{device_id}/messages", tag = "delivery", request_body = DeviceMessageRequest,
    params(("device_id" = String, Path, description = "The receiving device")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Queued", body = QueuedResponse),
        (status = 403, description = "No shared conversation", body = ErrorBody),
        (status = 404, description = "No such active device", body = ErrorBody),
        (status = 413, description = "Payload too large", body = ErrorBody),
    ))]
pub async fn send_to_device(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(device): Path<DeviceId>,
    Json(request): Json<DeviceMessageRequest>,
) -> Result<(StatusCode, Json<QueuedResponse>)> {
    let id = state.services.delivery.send_to_device(&caller, &device, request.payload.into_vec()).await?;
    Ok((StatusCode::CREATED, Json(QueuedResponse { id })))
}
