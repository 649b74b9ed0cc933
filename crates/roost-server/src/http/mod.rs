//! The axum adapter: routes, extractors, the error mapping, metrics and the OpenAPI document.

mod body;
mod cors;
pub mod error;
pub mod extract;
pub mod forwarded;
mod openapi_doc;
pub mod routes;
mod web;

use std::any::Any;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
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

/// Every route, grouped by how large a body it takes; `bodies` applies a group's limit to it.
fn api_router(
    limits: &crate::config::Limits,
    bodies: impl Fn(OpenApiRouter<AppState>, usize) -> OpenApiRouter<AppState>,
    streams: impl Fn(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
) -> OpenApiRouter<AppState> {
    use routes::{accounts, attachments, auth, conversations, delivery, keys, ops, push};
    // The upload streams its body to storage itself; the download and delete on its path take
    // none.
    let files = OpenApiRouter::new().routes(routes!(attachments::upload, attachments::download, attachments::delete));
    let handshakes = OpenApiRouter::new()
        .routes(routes!(conversations::create, conversations::list))
        .routes(routes!(conversations::commit))
        .routes(routes!(conversations::external_join));
    let messages = OpenApiRouter::new().routes(routes!(conversations::send)).routes(routes!(delivery::send_to_device));
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
        .routes(routes!(attachments::create))
        .routes(routes!(attachments::status))
        .routes(routes!(push::server_key))
        .routes(routes!(push::subscribe, push::status, push::unsubscribe))
        .routes(routes!(crate::gateway::upgrade));
    bodies(everything_else, limits.max_body_bytes)
        .merge(bodies(handshakes, limits.handshake_body_bytes()))
        .merge(bodies(messages, limits.message_body_bytes()))
        .merge(streams(files))
}

/// The OpenAPI document of every route, generated from the handlers' annotations and completed
/// with what every route shares ([`openapi_doc::complete`]).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc =
        api_router(&crate::config::Limits::default(), |routes, _| routes, |routes| routes).split_for_parts().1;
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
    let bodies = body::Bodies::new(&state);
    let streams = bodies.clone();
    let (router, _api) = api_router(
        &state.services.ctx.config.limits,
        |routes, max_bytes| {
            routes
                .layer(middleware::from_fn_with_state(bodies.limited_to(max_bytes), body::read_body))
                .layer(DefaultBodyLimit::max(max_bytes))
        },
        |routes| routes.layer(axum::Extension(streams.clone())).layer(DefaultBodyLimit::disable()),
    )
    .split_for_parts();
    let unmatched = bodies.clone();
    let app = state.services.ctx.config.web.dir.as_deref().map(web::WebApp::new);
    let router = router
        .route_layer(middleware::from_fn(track_request))
        .fallback(move |request: Request| {
            let bodies = unmatched.clone();
            let app = app.clone().filter(|_| web::WebApp::serves(&request));
            async move {
                match app {
                    Some(app) => bodies.answer_without_body(request, async |request| app.answer(request).await).await,
                    None => bodies.discard_then(request, error::not_found()).await,
                }
            }
        })
        .method_not_allowed_fallback(move |request: Request| {
            let bodies = bodies.clone();
            async move { bodies.discard_then(request, error::method_not_allowed()).await }
        })
        .layer(CatchPanicLayer::custom(panic_response));
    // Outermost: preflights are answered before routing, and every answer (errors included)
    // carries the headers a page needs to read it.
    let cors = cors::layer(&state.services.ctx.config.cors);
    let router = router.with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
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
    Error::new(roost_proto::ErrorCode::Internal, "internal error").into_response()
}
