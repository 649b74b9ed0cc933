//! Conversations: create, commit, join, send, leave, history, read markers, retention.

use axum::extract::State;
use axum::http::StatusCode;
use roost_proto::conversation::{
    CommitAccepted, CommitRequest, ConversationList, ConversationSummary, CreateConversationRequest,
    ExternalJoinRequest, GroupInfoResponse, HistoryResponse, LeaveRequest, ReadMarkerRequest, RetentionPolicy,
    SendAccepted, SendRequest, Settings,
};
use roost_proto::{ConversationId, ErrorBody};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::Result;
use crate::http::AppState;
use crate::http::extract::{Authenticated, Json, Path, Query};

/// Paging of the conversation list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The `cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size (default 50, at most `limits.max_page_size`).
    pub limit: Option<u32>,
}

/// Paging of history.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only entries with a smaller sequence number (the `before` of the previous page).
    pub before: Option<u64>,
    /// Page size (default 50).
    pub limit: Option<u32>,
}

/// A sequence number in a response.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct SeqResponse {
    /// The sequence number.
    pub seq: u64,
}

/// Create a conversation (an MLS group) with the caller's device and the devices it welcomes.
///
/// Direct chats hold exactly two users, notes to self one, groups up to `limits.max_group_users`.
/// The Welcome is queued for every listed device.
#[utoipa::path(post, path = "/v1/conversations", tag = "conversations", request_body = CreateConversationRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = ConversationSummary),
        (status = 404, description = "A listed device does not exist or is revoked", body = ErrorBody),
        (status = 409, description = "conversation_exists / member_limit_reached", body = ErrorBody),
        (status = 413, description = "group_info or welcome too large", body = ErrorBody),
        (status = 422, description = "invalid_argument", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Json(request): Json<CreateConversationRequest>,
) -> Result<(StatusCode, Json<ConversationSummary>)> {
    Ok((StatusCode::CREATED, Json(state.services.conversations.create(&caller, request).await?)))
}

/// List the caller device's conversations, with members, last sequence number, read position,
/// unread count and retention policy.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page", body = ConversationList),
        (status = 422, description = "Bad cursor or limit", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(query): Query<ListQuery>,
) -> Result<Json<ConversationList>> {
    Ok(Json(state.services.conversations.list(&caller, query.cursor.as_deref(), query.limit).await?))
}

/// One conversation.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}", tag = "conversations",
    params(("conversation_id" = String, Path, description = "The conversation id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The conversation", body = ConversationSummary),
        (status = 403, description = "not_a_member", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<ConversationId>,
) -> Result<Json<ConversationSummary>> {
    Ok(Json(state.services.conversations.summary(&caller, &id).await?))
}

/// Submit an MLS commit with its membership delta.
///
/// Accepted only for the current epoch: otherwise `409 stale_epoch` with `current_epoch`; catch up
/// (sync), rebuild the commit and retry. The epoch check, the membership change and the log append
/// are one transaction; the Welcome is queued for every added device.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/commits", tag = "conversations",
    request_body = CommitRequest,
    params(("conversation_id" = String, Path, description = "The conversation id")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Accepted", body = CommitAccepted),
        (status = 403, description = "not_a_member", body = ErrorBody),
        (status = 404, description = "No such conversation or added device", body = ErrorBody),
        (status = 409, description = "stale_epoch (with current_epoch) / member_limit_reached", body = ErrorBody),
        (status = 422, description = "invalid_argument", body = ErrorBody),
    ))]
pub async fn commit(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<ConversationId>,
    Json(request): Json<CommitRequest>,
) -> Result<(StatusCode, Json<CommitAccepted>)> {
    Ok((StatusCode::CREATED, Json(state.services.conversations.commit(&caller, &id, request).await?)))
}

/// Join by an MLS external commit: only for a new device of a user who is already a member.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/external-joins", tag = "conversations",
    request_body = ExternalJoinRequest,
    params(("conversation_id" = String, Path, description = "The conversation id")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Joined", body = CommitAccepted),
        (status = 403, description = "not_a_member: the caller's user is not a member", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
        (status = 409, description = "stale_epoch", body = ErrorBody),
    ))]
pub async fn external_join(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<ConversationId>,
    Json(request): Json<ExternalJoinRequest>,
) -> Result<(StatusCode, Json<CommitAccepted>)> {
    Ok((StatusCode::CREATED, Json(state.services.conversations.external_join(&caller, &id, request).await?)))
}

/// The current GroupInfo and epoch (for member users' devices).
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/group-info", tag = "conversations",
    params(("conversation_id" = String, Path, description = "The conversation id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The GroupInfo", body = GroupInfoResponse),
        (status = 403, description = "not_a_member", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
    ))]
pub async fn group_info(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<ConversationId>,
) -> Result<Json<GroupInfoResponse>> {
    Ok(Json(state.services.conversations.group_info(&caller, &id).await?))
}

/// Send an application message (or an ephemeral one, never stored).
///
/// A retry with the same `client_message_id` returns the original result (`duplicate: true`)
/// and stores nothing. Accepted only for the current epoch (`409 stale_epoch` otherwise).
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/messages", tag = "conversations",
    request_body = SendRequest,
    params(("conversation_id" = String, Path, description = "The conversation id")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored (or delivered, if ephemeral)", body = SendAccepted),
        (status = 200, description = "A retry of an accepted message", body = SendAccepted),
        (status = 403, description = "not_a_member", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
        (status = 409, description = "stale_epoch", body = ErrorBody),
        (status = 413, description = "Ciphertext too large", body = ErrorBody),
    ))]
pub async fn send(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<ConversationId>,
    Json(request): Json<SendRequest>,
) -> Result<(StatusCode, Json<SendAccepted>)> {
    let accepted = state.services.conversations.send(&caller, &id, request).await?;
    let status = if accepted.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(accepted)))
}

/// Leave: every device of the caller's user stops receiving the conversation. A `leave` entry
/// tells the remaining members to commit the removal.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/leave", tag = "conversations",
    request_body = LeaveRequest,
    params(("conversation_id" = String, Path, description = "The conversation id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The leave entry's sequence number", body = SeqResponse),
        (status = 403, description = "not_a_member", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
    ))]
pub async fn leave(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<ConversationId>,
    Json(request): Json<LeaveRequest>,
) -> Result<Json<SeqResponse>> {
    Ok(Json(SeqResponse { seq: state.services.conversations.leave(&caller, &id, request).await? }))
}

/// Set the retention policy (within the server's maximum age).
#[utoipa::path(put, path = "/v1/conversations/{conversation_id}/retention", tag = "conversations",
    request_body = RetentionPolicy,
    params(("conversation_id" = String, Path, description = "The conversation id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Set"),
        (status = 403, description = "not_a_member", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
        (status = 422, description = "Outside the server's limits", body = ErrorBody),
    ))]
pub async fn set_retention(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<ConversationId>,
    Json(policy): Json<RetentionPolicy>,
) -> Result<StatusCode> {
    state.services.conversations.set_retention(&caller, &id, policy).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Page backwards through retained entries, never before the caller's device joined.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/history", tag = "conversations",
    params(("conversation_id" = String, Path, description = "The conversation id"), HistoryQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Entries, newest first", body = HistoryResponse),
        (status = 403, description = "not_a_member", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
    ))]
pub async fn history(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<ConversationId>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<HistoryResponse>> {
    Ok(Json(state.services.conversations.history(&caller, &id, query.before, query.limit).await?))
}

/// Move the caller's user's read position forward (monotonic); synced to the user's other
/// devices and announced to other members unless read receipts are off.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/read", tag = "conversations",
    request_body = ReadMarkerRequest,
    params(("conversation_id" = String, Path, description = "The conversation id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The read position now", body = SeqResponse),
        (status = 403, description = "not_a_member", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
    ))]
pub async fn mark_read(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<ConversationId>,
    Json(request): Json<ReadMarkerRequest>,
) -> Result<Json<SeqResponse>> {
    Ok(Json(SeqResponse { seq: state.services.conversations.mark_read(&caller, &id, request.seq).await? }))
}

/// The caller's user's settings.
#[utoipa::path(get, path = "/v1/settings", tag = "conversations", security(("bearer" = [])),
    responses((status = 200, description = "The settings", body = Settings)))]
pub async fn settings(State(state): State<AppState>, Authenticated(caller): Authenticated) -> Result<Json<Settings>> {
    Ok(Json(state.services.conversations.settings(&caller).await?))
}

/// Change the caller's user's settings (read receipts on or off).
#[utoipa::path(put, path = "/v1/settings", tag = "conversations", request_body = Settings, security(("bearer" = [])),
    responses((status = 200, description = "The settings now", body = Settings)))]
pub async fn set_settings(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Json(settings): Json<Settings>,
) -> Result<Json<Settings>> {
    Ok(Json(state.services.conversations.set_settings(&caller, settings).await?))
}
