//! The real-time gateway: one WebSocket per device at `GET /v1/ws`, on the same port as HTTP.
//!
//! A socket authenticates with its first frame; then the server sends everything stored for the
//! device that it has not acknowledged, `queue_empty`, and from then on pushes every entry as it
//! is committed. Memory per connection is bounded: a small read buffer, a write buffer of a few
//! kilobytes (frames pushed together are written together), a bounded event queue (a client
//! that cannot keep up is cut off and catches up from the store when it reconnects), and a
//! timeout on every write.
//!
//! The handshake (RFC 6455 section 4.2) is answered here rather than by axum's extractor, so the
//! connection is one task whose future holds the socket inline: axum's upgrade runs the callback
//! inside a task of its own, a second allocation of over 600 bytes kept for the connection's life.

mod connection;
mod order;
mod writer;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use roost_proto::ErrorCode;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use std::sync::Arc;

use crate::error::Error;
use crate::services::Services;

/// Initial capacity of a connection's read buffer. Client frames are small (auth, ack, typing);
/// tungstenite's default of 128 KiB per connection would dominate idle memory.
const READ_BUFFER_BYTES: usize = 256;

/// Open the WebSocket. Frames are JSON text messages; see docs/protocol.md.
#[utoipa::path(get, path = "/v1/ws", tag = "gateway",
    responses(
        (status = 101, description = "Switching Protocols: send an `auth` frame first; see docs/protocol.md for every frame"),
        (status = 400, description = "Not a WebSocket upgrade request", body = roost_proto::ErrorBody),
    ))]
pub async fn upgrade(State(services): State<Arc<Services>>, mut request: Request) -> Response {
    let accept = match accept_key(request.method(), request.version(), request.headers()) {
        Ok(accept) => accept,
        Err(problem) => {
            let message = format!("expected a WebSocket upgrade: {problem}");
            return Error::new(ErrorCode::MalformedRequest, message).into_response();
        }
    };
    let Some(upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return Error::new(
            ErrorCode::MalformedRequest,
            "expected a WebSocket upgrade: this connection cannot be upgraded",
        )
        .into_response();
    };
    let config = socket_config(&services);
    // The task waits for the 101 below to be written, then owns the socket until it closes.
    tokio::spawn(connection::run(upgrade, config, services));
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// Checks an opening handshake (RFC 6455 section 4.2.1) and derives its `Sec-WebSocket-Accept`.
fn accept_key(method: &Method, version: Version, headers: &HeaderMap) -> Result<HeaderValue, &'static str> {
    if method != Method::GET {
        return Err("the method must be GET");
    }
    if version != Version::HTTP_11 {
        return Err("WebSockets are served over HTTP/1.1");
    }
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| value.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err("the Connection header must contain \"upgrade\"");
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err("the Upgrade header must be \"websocket\"");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|version| version != "13") {
        return Err("the Sec-WebSocket-Version header must be 13");
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or("the Sec-WebSocket-Key header is missing")?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| "the Sec-WebSocket-Key header is unusable")
}

fn socket_config(services: &Services) -> WebSocketConfig {
    let config = &services.ctx.config;
    // The largest frame the server writes: a commit (or message) with its base64 and JSON.
    let largest_out = config.limits.max_handshake_bytes.max(config.limits.max_message_bytes) / 3 * 4 + 64 * 1024;
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(connection::WRITE_BUFFER_BYTES)
        .max_write_buffer_size(largest_out * 2)
        .max_message_size(Some(config.gateway.max_client_frame_bytes))
        .max_frame_size(Some(config.gateway.max_client_frame_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        headers.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        headers
    }

    #[test]
    fn accepts_the_rfc_example_handshake() {
        // RFC 6455 section 1.3: this key yields this accept value.
        let accept = accept_key(&Method::GET, Version::HTTP_11, &handshake()).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn refuses_incomplete_handshakes() {
        assert!(accept_key(&Method::POST, Version::HTTP_11, &handshake()).is_err());
        assert!(accept_key(&Method::GET, Version::HTTP_10, &handshake()).is_err());
        for (name, value) in
            [(header::CONNECTION, "keep-alive"), (header::UPGRADE, "h2c"), (header::SEC_WEBSOCKET_VERSION, "8")]
        {
            let mut headers = handshake();
            headers.insert(name, HeaderValue::from_static(value));
            assert!(accept_key(&Method::GET, Version::HTTP_11, &headers).is_err(), "{value}");
        }
        let mut headers = handshake();
        headers.remove(header::SEC_WEBSOCKET_KEY);
        assert!(accept_key(&Method::GET, Version::HTTP_11, &headers).is_err());
    }
}
