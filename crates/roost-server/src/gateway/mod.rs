//! The real-time gateway: one WebSocket per device at `GET /v1/ws`, on the same port as HTTP.
//!
//! A socket authenticates with its first frame; then the server sends everything stored for the
//! device that it has not acknowledged, `queue_empty`, and from then on pushes every entry as it
//! is committed. Memory per connection is bounded: a small read buffer, no write buffering beyond
//! the frame being sent, a bounded event queue (a client that cannot keep up is cut off and
//! catches up from the store when it reconnects), and a timeout on every write.

mod connection;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::response::{IntoResponse, Response};
use roost_proto::ErrorCode;

use crate::error::Error;
use crate::http::AppState;

/// Initial capacity of a connection's read buffer. Client frames are small (auth, ack, typing);
/// tungstenite's default of 128 KiB per connection would dominate idle memory.
const READ_BUFFER_BYTES: usize = 256;

/// Open the WebSocket. Frames are JSON text messages; see docs/protocol.md.
#[utoipa::path(get, path = "/v1/ws", tag = "gateway",
    responses(
        (status = 101, description = "Switching Protocols: send an `auth` frame first; see docs/protocol.md for every frame"),
        (status = 400, description = "Not a WebSocket upgrade request", body = roost_proto::ErrorBody),
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let message = format!("expected a WebSocket upgrade: {}", rejection.body_text());
            return Error::new(ErrorCode::MalformedRequest, message).into_response();
        }
    };
    let config = &state.services.ctx.config;
    // The largest frame the server writes: a commit (or message) with its base64 and JSON.
    let largest_out = config.limits.max_handshake_bytes.max(config.limits.max_message_bytes) / 3 * 4 + 64 * 1024;
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(largest_out * 2)
        .max_message_size(config.gateway.max_client_frame_bytes)
        .max_frame_size(config.gateway.max_client_frame_bytes)
        // Boxed: the upgrade task then holds a pointer to the connection's state, not a second
        // copy of its size (see docs/benchmarks.md on memory per connection).
        .on_upgrade(move |socket| Box::pin(connection::run(socket, state)))
}
