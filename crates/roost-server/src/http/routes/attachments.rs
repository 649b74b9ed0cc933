//! Attachments: start an upload, send its bytes (resumable), see how far it got, download with
//! ranges, delete.

use std::ops::Range;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use roost_proto::attachment::{AttachmentUpload, CreateAttachmentRequest, etag};
use roost_proto::{AttachmentId, ConversationId, ErrorBody, ErrorCode};

use crate::error::{Error, Result};
use crate::http::AppState;
use crate::http::body::Bodies;
use crate::http::extract::{Authenticated, Json, Path};

/// The request header that says where a `PATCH` continues the upload.
pub const UPLOAD_OFFSET: &str = "upload-offset";

/// Start uploading an encrypted file for a conversation the caller's device is a member of.
///
/// The request announces the ciphertext's length and SHA-256; the bytes follow in `PATCH`
/// requests. The length counts against the user's bytes for the UTC day
/// (`attachments.daily_bytes_per_user`) whether or not the upload completes.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/attachments", tag = "attachments",
    request_body = CreateAttachmentRequest,
    params(("conversation_id" = String, Path, description = "The conversation")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The upload, at offset 0", body = AttachmentUpload),
        (status = 403, description = "not_a_member", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
        (status = 413, description = "payload_too_large: longer than attachments.max_bytes", body = ErrorBody),
        (status = 429, description = "quota_exceeded: the user's bytes for today are used up (Retry-After: until the next UTC day)", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(conversation_id): Path<ConversationId>,
    Json(request): Json<CreateAttachmentRequest>,
) -> Result<(StatusCode, Json<AttachmentUpload>)> {
    let upload = state.services.attachments.create(&caller, &conversation_id, request).await?;
    Ok((StatusCode::CREATED, Json(upload)))
}

/// How far one of the caller device's uploads got: where the next `PATCH` continues.
#[utoipa::path(get, path = "/v1/attachments/{attachment_id}/upload", tag = "attachments",
    params(("attachment_id" = String, Path, description = "The attachment")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The upload", body = AttachmentUpload),
        (status = 404, description = "No such upload of this device", body = ErrorBody),
    ))]
pub async fn status(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<AttachmentId>,
) -> Result<Json<AttachmentUpload>> {
    Ok(Json(state.services.attachments.status(&caller, &id).await?))
}

/// Append ciphertext to one of the caller device's uploads, from `Upload-Offset` (which must
/// be the `offset` the server holds).
///
/// The body may be the rest of the file or any part of it. The server stores it chunk by chunk;
/// if the connection breaks, what arrived is kept and `GET .../upload` says where to resume.
/// With the last byte the digest is checked: a mismatch deletes the upload
/// (`422 digest_mismatch`), as do bytes beyond the announced length (`413`).
#[utoipa::path(patch, path = "/v1/attachments/{attachment_id}", tag = "attachments",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The next bytes of the ciphertext"),
    params(
        ("attachment_id" = String, Path, description = "The attachment"),
        ("Upload-Offset" = u64, Header, description = "Where these bytes start: the upload's current offset"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The upload after these bytes (`complete` once all arrived)", body = AttachmentUpload),
        (status = 403, description = "not_a_member: the device left the conversation", body = ErrorBody),
        (status = 404, description = "No such upload of this device", body = ErrorBody),
        (status = 409, description = "upload_offset_mismatch (with current_offset) / upload_in_progress", body = ErrorBody),
        (status = 413, description = "payload_too_large: the bytes go past the announced length; the upload was deleted", body = ErrorBody),
        (status = 422, description = "digest_mismatch: the bytes do not match the sha256; the upload was deleted", body = ErrorBody),
    ))]
pub async fn upload(State(state): State<AppState>, bodies: axum::Extension<Bodies>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let prepared = async {
        let Authenticated(caller) = Authenticated::from_request_parts(&mut parts, &state).await?;
        let Path(id) = Path::<AttachmentId>::from_request_parts(&mut parts, &state).await?;
        let offset = parts
            .headers
            .get(UPLOAD_OFFSET)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok())
            .ok_or_else(|| Error::new(ErrorCode::MalformedRequest, "Upload-Offset must be a byte offset"))?;
        Ok::<_, Error>((caller, id, offset))
    }
    .await;
    let (caller, id, offset) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => return bodies.discard_then(Request::from_parts(parts, body), err).await,
    };
    let mut stream = body.into_data_stream();
    let uploaded =
        state.services.attachments.upload(&caller, &id, offset, &mut stream, |bytes| bodies.reserve(bytes)).await;
    match uploaded {
        Ok(upload) => Json(upload).into_response(),
        // What is left of the body is read and dropped (or the connection closes), so the
        // answer reaches the client.
        Err(err) => bodies.discard_then(Request::from_parts(parts, Body::from_stream(stream)), err).await,
    }
}

/// Download an attachment's ciphertext: member devices of its conversation only.
///
/// Supports a single `Range` (`bytes=a-b`, `bytes=a-`, `bytes=-n`; `206` with `Content-Range`),
/// `If-Range`, and `If-None-Match` with the `ETag` (the quoted hex SHA-256 of the ciphertext).
/// Requesting the last byte counts as having fetched the attachment (burn-on-read).
#[utoipa::path(get, path = "/v1/attachments/{attachment_id}", tag = "attachments",
    params(
        ("attachment_id" = String, Path, description = "The attachment"),
        ("Range" = Option<String>, Header, description = "bytes=a-b, bytes=a- or bytes=-n"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The ciphertext", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 404, description = "Unknown, expired, or not readable by this device", body = ErrorBody),
        (status = 409, description = "upload_incomplete", body = ErrorBody),
        (status = 416, description = "range_not_satisfiable", body = ErrorBody),
    ))]
pub async fn download(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<AttachmentId>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response> {
    let attachments = &state.services.attachments;
    let record = attachments.readable(&caller, &id).await?;
    let tag = etag(&record.sha256);
    let tag_value = HeaderValue::from_str(&tag).map_err(|_| Error::new(ErrorCode::Internal, "bad etag"))?;
    if let Some(wanted) = headers.get(header::IF_NONE_MATCH).and_then(|value| value.to_str().ok())
        && wanted
            .split(',')
            .map(|candidate| candidate.trim().trim_start_matches("W/"))
            .any(|candidate| candidate == "*" || candidate == tag)
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag_value)]).into_response());
    }
    let range_applies =
        headers.get(header::IF_RANGE).is_none_or(|value| value.to_str().is_ok_and(|value| value.trim() == tag));
    let requested = headers
        .get(header::RANGE)
        .filter(|_| range_applies)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| byte_range(value, record.length));
    let range = match requested {
        Some(Ok(range)) => Some(range),
        Some(Err(())) => {
            let mut response =
                Error::new(ErrorCode::RangeNotSatisfiable, "the range lies outside the attachment").into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", record.length)) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
        None => None,
    };
    let length = record.length;
    let (status, served) = match range {
        Some(range) => (StatusCode::PARTIAL_CONTENT, range),
        None => (StatusCode::OK, 0..length),
    };
    // A HEAD (answered by this route too) reads nothing and fetches nothing.
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(attachments.read(&caller, &record, served.clone()).await?)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(served.end - served.start));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::ETAG, tag_value);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(value) = HeaderValue::from_str(&format!("bytes {}-{}/{length}", served.start, served.end - 1))
    {
        headers.insert(header::CONTENT_RANGE, value);
    }
    Ok(response)
}

/// Delete one of the caller device's uploads or attachments, bytes and all.
#[utoipa::path(delete, path = "/v1/attachments/{attachment_id}", tag = "attachments",
    params(("attachment_id" = String, Path, description = "The attachment")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such upload of this device", body = ErrorBody),
        (status = 409, description = "upload_in_progress", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<AttachmentId>,
) -> Result<StatusCode> {
    state.services.attachments.delete(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The byte range a `Range` header asks for within `length` bytes: `None` for a header this
/// server ignores (not bytes, several ranges, not well formed: the whole attachment is sent),
/// `Some(Err)` for a range outside the attachment.
fn byte_range(header: &str, length: u64) -> Option<Result<Range<u64>, ()>> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    if first.is_empty() {
        // The last `n` bytes.
        let suffix: u64 = last.parse().ok().filter(|_| digits(last))?;
        return Some(if suffix == 0 || length == 0 { Err(()) } else { Ok(length.saturating_sub(suffix)..length) });
    }
    let start: u64 = first.parse().ok().filter(|_| digits(first))?;
    let end = if last.is_empty() {
        length
    } else {
        let last: u64 = last.parse().ok().filter(|_| digits(last))?;
        if last < start {
            return None;
        }
        last.saturating_add(1).min(length)
    };
    Some(if start >= length { Err(()) } else { Ok(start..end) })
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(byte_range("bytes=0-9", 100), Some(Ok(0..10)));
        assert_eq!(byte_range("bytes=90-", 100), Some(Ok(90..100)));
        assert_eq!(byte_range("bytes=90-200", 100), Some(Ok(90..100)), "an end past the last byte is cut");
        assert_eq!(byte_range("bytes=-10", 100), Some(Ok(90..100)));
        assert_eq!(byte_range("bytes=-500", 100), Some(Ok(0..100)));
        assert_eq!(byte_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(byte_range("bytes=-0", 100), Some(Err(())));
        for ignored in ["items=0-1", "bytes=0-1,5-6", "bytes=5-1", "bytes=a-b", "bytes=-", "bytes=+1-2", "0-1"] {
            assert_eq!(byte_range(ignored, 100), None, "{ignored}");
        }
    }
}
