//! Cross-origin access: which web pages served from elsewhere may call the API from a browser.
//!
//! Every request is authorized by its bearer token, never by a cookie, so a page on an origin
//! that is not listed gains nothing from the browser; the list decides which web apps can read
//! roostd's answers at all. The WebSocket gateway is not subject to CORS in browsers, and needs
//! no origin check for the same reason: a socket is only as good as the token it sends.

use std::time::Duration;

use axum::http::{HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::CorsConfig;

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The layer that answers preflights and marks responses for the configured origins; `None`
/// when no origin is allowed.
pub(super) fn layer(config: &CorsConfig) -> Option<CorsLayer> {
    if config.allowed_origins.is_empty() {
        return None;
    }
    let origins = if config.allowed_origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        // Validated at start-up as origins, so every one is a valid header value.
        AllowOrigin::list(config.allowed_origins.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}
