//! The one place where an [`Error`] becomes an HTTP response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use roost_proto::{ErrorBody, ErrorCode};

use crate::error::Error;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = ?self.code, message = %self.message, "request failed on the server side");
        }
        let mut body = ErrorBody::new(self.code, self.message);
        body.error.current_epoch = self.current_epoch;
        body.error.current_offset = self.current_offset;
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(wait) = self.retry_after {
            // Round up: a client that waits the advertised time must succeed.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// JSON 404 for paths no route matches.
pub fn not_found() -> Error {
    Error::not_found("no such route")
}

/// JSON 405 for a known path with the wrong method.
pub fn method_not_allowed() -> Error {
    Error::new(ErrorCode::MethodNotAllowed, "this route does not accept that method")
}
