//! The axum adapter: routes, extractors, the error mapping, metrics and the OpenAPI document.

pub mod error;
pub mod extract;
pub mod forwarded;
mod openapi_doc;
pub mod routes;

use std::any::Any;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody as _};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use metrics_exporter_prometheus::PrometheusHandle;
use roost_proto::ErrorCode;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::Error;
use crate::services::Services;

/// What every handler can reach. Cloned for every request, so it is one shared pointer.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The contents of [`AppState`].
pub struct Shared {
    /// The services (shared with the WebSocket gateway, which takes them alone).
    pub services: Arc<Services>,
    /// The Prometheus registry to render.
    pub metrics: PrometheusHandle,
}

impl AppState {
    /// Wraps the services and the metrics registry.
    pub fn new(services: Services, metrics: PrometheusHandle) -> Self {
        Self(Arc::new(Shared { services: Arc::new(services), metrics }))
    }
}

impl axum::extract::FromRef<AppState> for Arc<Services> {
    fn from_ref(state: &AppState) -> Self {
        state.services.clone()
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Roost",
        description = "The HTTP API of roostd, the Roost end-to-end encrypted messaging server. \
                       Times are Unix milliseconds; byte strings are unpadded base64url. \
                       Errors are {\"error\": {\"code\", \"message\"}} with the stable codes of ErrorCode.",
    ),
    components(schemas(roost_proto::ErrorBody, roost_proto::ErrorCode)),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("rst_...").build()),
        );
    }
}

/// Body limits per kind of route: MLS handshake messages (commits, Welcomes, GroupInfo) can be
/// much larger than anything else, and message bodies follow the configured message size.
struct BodyLimits {
    default: usize,
    messages: usize,
    handshakes: usize,
}

impl BodyLimits {
    fn from(limits: &crate::config::Limits) -> Self {
        // Base64 grows bytes by 4/3; leave room for the JSON around them.
        let encoded = |bytes: usize| bytes.saturating_mul(4) / 3 + 64 * 1024;
        Self {
            default: limits.max_body_bytes,
            messages: limits.max_body_bytes.max(encoded(limits.max_message_bytes)),
            handshakes: limits.max_body_bytes.max(encoded(limits.max_handshake_bytes.saturating_mul(3))),
        }
    }
}

fn api_router(limits: &BodyLimits) -> OpenApiRouter<AppState> {
    use routes::{accounts, auth, conversations, delivery, keys, ops};
    let handshakes = OpenApiRouter::new()
        .routes(routes!(conversations::create, conversations::list))
        .routes(routes!(conversations::commit))
        .routes(routes!(conversations::external_join))
        .layer(DefaultBodyLimit::max(limits.handshakes));
    let messages = OpenApiRouter::new()
        .routes(routes!(conversations::send))
        .routes(routes!(delivery::send_to_device))
        .layer(DefaultBodyLimit::max(limits.messages));
    let everything_else = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .routes(routes!(accounts::register))
        .routes(routes!(accounts::list_devices))
        .routes(routes!(accounts::revoke_device))
        .routes(routes!(accounts::start_link))
        .routes(routes!(accounts::get_link))
        .routes(routes!(accounts::approve_link))
        .routes(routes!(accounts::resolve_handle))
        .routes(routes!(accounts::claim_handle))
        .routes(routes!(accounts::release_handle))
        .routes(routes!(auth::challenge))
        .routes(routes!(auth::open_session, auth::whoami, auth::logout))
        .routes(routes!(keys::upload, keys::count))
        .routes(routes!(keys::claim))
        .routes(routes!(conversations::get))
        .routes(routes!(conversations::group_info))
        .routes(routes!(conversations::leave))
        .routes(routes!(conversations::set_retention))
        .routes(routes!(conversations::history))
        .routes(routes!(conversations::mark_read))
        .routes(routes!(conversations::settings, conversations::set_settings))
        .routes(routes!(delivery::sync))
        .routes(routes!(delivery::ack))
        .routes(routes!(crate::gateway::upgrade))
        .layer(DefaultBodyLimit::max(limits.default));
    everything_else.merge(handshakes).merge(messages)
}

/// The OpenAPI document of every route, generated from the handlers' annotations and completed
/// with what every route shares ([`openapi_doc::complete`]).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_router(&BodyLimits::from(&crate::config::Limits::default())).split_for_parts().1;
    openapi_doc::complete(&mut doc, &crate::config::Limits::default());
    doc
}

/// The OpenAPI document as pretty JSON, built once.
pub fn openapi_json() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        openapi().to_pretty_json().unwrap_or_else(|err| {
            tracing::error!(error = %err, "cannot render the OpenAPI document");
            "{}".to_owned()
        })
    });
    &JSON
}

/// The complete HTTP application.
pub fn router(state: AppState) -> Router {
    let config = &state.services.ctx.config;
    let limits = BodyLimits::from(&config.limits);
    let bodies = BodyBounds {
        max_bytes: limits.default.max(limits.messages).max(limits.handshakes),
        timeout: Duration::from_secs(config.http.body_read_timeout_secs),
    };
    let (router, _api) = api_router(&limits).split_for_parts();
    router
        .route_layer(middleware::from_fn(track_request))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn_with_state(bodies, read_body))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// How much of a request body is read before routing, and for how long.
#[derive(Debug, Clone, Copy)]
struct BodyBounds {
    /// The largest body any route takes (each route then applies its own limit).
    max_bytes: usize,
    timeout: Duration,
}

/// Reads every request body in full before the route sees it, within the body timeout and the
/// largest body limit. Every body is then consumed, whatever the route does with it: one left
/// unread (a GET carrying a body, a request refused before its body was looked at) would make
/// the connection close with bytes unread, and the reset that follows can destroy the response
/// on its way to the client. A body too slow or too large is answered and its connection
/// closed, since the rest of it cannot be told from the next request.
async fn read_body(State(bounds): State<BodyBounds>, request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(bounds.timeout, Limited::new(body, bounds.max_bytes).collect()).await;
    let refusal = match read {
        Ok(Ok(collected)) => return next.run(Request::from_parts(parts, Body::from(collected.to_bytes()))).await,
        Err(_) => {
            metrics::counter!("roost_http_connections_timed_out_total", "phase" => "body").increment(1);
            Error::new(ErrorCode::RequestTimeout, "the request body did not arrive in time")
        }
        Ok(Err(err)) if err.is::<LengthLimitError>() => {
            Error::new(ErrorCode::PayloadTooLarge, "the request body is larger than any route takes")
        }
        Ok(Err(_)) => Error::new(ErrorCode::MalformedRequest, "the request body could not be read"),
    };
    let mut response = refusal.into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Records `roost_http_requests_total{method, route, status}` and
/// `roost_http_request_duration_seconds{method, route}`; the route is the matched pattern, so ids
/// and codes in paths never become labels (or log lines).
async fn track_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::counter!("roost_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("roost_http_request_duration_seconds", "method" => method.clone(), "route" => route.clone())
        .record(elapsed.as_secs_f64());
    tracing::debug!(%method, %route, status, elapsed_ms = elapsed.as_millis() as u64, "request");
    response
}

fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    // The panic message could contain request data, so it is not echoed or logged verbatim.
    tracing::error!("a request handler panicked");
    Error::new(ErrorCode::Internal, "internal error").into_response()
}
