//! The web app roostd serves itself when `web.dir` names a directory of built files: every
//! `GET` or `HEAD` outside the API's paths is a file of that directory, and a path that names
//! no file gets `index.html`, so an app that routes in the browser can be reloaded on any of
//! its pages. The API keeps its JSON errors: an unknown `/v1/...` path is a JSON 404, never
//! the app.

use std::convert::Infallible;
use std::path::Path;

use axum::extract::Request;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

/// The files of one built web app.
#[derive(Clone)]
pub(super) struct WebApp(ServeDir<ServeFile>);

impl WebApp {
    pub(super) fn new(dir: &Path) -> Self {
        Self(ServeDir::new(dir).append_index_html_on_directories(true).fallback(ServeFile::new(dir.join("index.html"))))
    }

    /// Whether `request` is the app's rather than the API's.
    pub(super) fn serves(request: &Request) -> bool {
        let path = request.uri().path();
        matches!(*request.method(), Method::GET | Method::HEAD) && path != "/v1" && !path.starts_with("/v1/")
    }

    pub(super) async fn answer(self, request: Request) -> Response {
        let served: Result<_, Infallible> = self.0.oneshot(request).await;
        let mut response = match served {
            Ok(response) => response.into_response(),
            Err(never) => match never {},
        };
        // The app's files are what they say they are, and the browser must not guess otherwise.
        response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        response
    }
}
