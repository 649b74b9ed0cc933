//! Push subscriptions: the server's VAPID key, and the calling device's Web Push subscription.

use axum::extract::State;
use axum::http::StatusCode;
use roost_proto::ErrorBody;
use roost_proto::push::{PushServerKey, PushStatus, PushSubscription};

use crate::error::Result;
use crate::http::AppState;
use crate::http::extract::{Authenticated, Json};

/// The key this server signs push requests with (VAPID): a browser subscribes with it as
/// `applicationServerKey`.
#[utoipa::path(get, path = "/v1/push/server-key", tag = "push",
    responses(
        (status = 200, description = "The VAPID public key", body = PushServerKey),
        (status = 404, description = "Push notifications are turned off on this server", body = ErrorBody),
    ))]
pub async fn server_key(State(state): State<AppState>) -> Result<Json<PushServerKey>> {
    Ok(Json(state.services.push.server_key().await?))
}

/// Stores the calling device's Web Push subscription, replacing any earlier one. While the
/// device holds no socket, whatever is committed for it sends a wake-up there (one until it
/// connects or syncs again).
#[utoipa::path(put, path = "/v1/push/subscription", tag = "push",
    request_body = PushSubscription,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Subscribed", body = PushStatus),
        (status = 404, description = "Push notifications are turned off on this server", body = ErrorBody),
        (status = 422, description = "push_endpoint_refused: not https, not a public address, or not one of the \
            push services this server allows; invalid_argument: unusable keys", body = ErrorBody),
    ))]
pub async fn subscribe(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Json(subscription): Json<PushSubscription>,
) -> Result<Json<PushStatus>> {
    Ok(Json(state.services.push.subscribe(&caller, subscription).await?))
}

/// The calling device's subscription, if any.
#[utoipa::path(get, path = "/v1/push/subscription", tag = "push",
    security(("bearer" = [])),
    responses((status = 200, description = "The subscription", body = PushStatus)))]
pub async fn status(State(state): State<AppState>, Authenticated(caller): Authenticated) -> Result<Json<PushStatus>> {
    Ok(Json(state.services.push.status(&caller).await?))
}

/// Deletes the calling device's subscription (it is not woken any more).
#[utoipa::path(delete, path = "/v1/push/subscription", tag = "push",
    security(("bearer" = [])),
    responses((status = 204, description = "No subscription any more")))]
pub async fn unsubscribe(State(state): State<AppState>, Authenticated(caller): Authenticated) -> Result<StatusCode> {
    state.services.push.unsubscribe(&caller.device_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
