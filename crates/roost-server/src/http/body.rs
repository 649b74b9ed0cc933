//! Request bodies: each is read in full before its handler runs, and every body is consumed,
//! whatever the route does with it. A body left unread (a GET carrying one, a request refused
//! before its body was looked at) would make the connection close with bytes unread, and the
//! reset that follows can destroy the response on its way to the client.
//!
//! Reading is bounded three ways, so that bodies cannot be used to exhaust the server's memory:
//! - by the matched route's limit (most routes take small bodies; those that carry MLS messages
//!   take more);
//! - by authentication: beyond `limits.max_body_bytes` a body is read only for a request whose
//!   bearer token is valid (every route that takes more needs one), so an anonymous client can
//!   hold at most that much per connection;
//! - by `http.max_body_memory_bytes` across all connections: a body that would go over is
//!   refused with `503 unavailable` rather than waited for.
//!
//! A refused body is not read any further, so its connection is closed after the answer: the
//! rest of the body cannot be told from the next request. The body timeout closes a connection
//! the same way.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use roost_proto::ErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;
use super::extract::Authenticated;
use crate::error::Error;

/// How long a client refused for want of body memory is asked to wait.
const MEMORY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What every body read shares: the memory budget, the timeout and the size anyone may send.
#[derive(Clone)]
pub struct Bodies {
    state: AppState,
    memory: Arc<Semaphore>,
    anonymous_bytes: usize,
    timeout: Duration,
}

impl Bodies {
    pub(super) fn new(state: &AppState) -> Self {
        let config = &state.services.ctx.config;
        Self {
            state: state.clone(),
            memory: Arc::new(Semaphore::new(config.http.max_body_memory_bytes)),
            anonymous_bytes: config.limits.max_body_bytes,
            timeout: Duration::from_secs(config.http.body_read_timeout_secs),
        }
    }

    /// Takes `bytes` of the memory budget, or refuses at once: waiting would hold the
    /// connection and its descriptor for a budget that other slow bodies may keep exhausted.
    pub(super) fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Error> {
        u32::try_from(bytes).ok().and_then(|bytes| self.memory.clone().try_acquire_many_owned(bytes).ok()).ok_or_else(
            || Error {
                retry_after: Some(MEMORY_RETRY_AFTER),
                ..Error::new(ErrorCode::Unavailable, "the server is holding as many request bodies as it can; retry")
            },
        )
    }

    /// The reader for routes that take bodies of up to `max_bytes`.
    pub(super) fn limited_to(&self, max_bytes: usize) -> BodyReader {
        BodyReader { bodies: self.clone(), max_bytes }
    }

    /// Answers a request no route takes with `answer`, after reading and discarding its body
    /// (up to what anyone may send, within the timeout; beyond that the connection closes).
    pub(super) async fn discard_then(&self, request: Request, answer: Error) -> Response {
        self.answer_without_body(request, async |_| answer.into_response()).await
    }

    /// Reads and discards the request's body as [`Bodies::discard_then`] does, then answers
    /// the bodiless request with `answer`.
    pub(super) async fn answer_without_body(
        &self,
        request: Request,
        answer: impl AsyncFnOnce(Request) -> Response,
    ) -> Response {
        let (parts, mut body) = request.into_parts();
        let mut seen = 0usize;
        let discarded = tokio::time::timeout(self.timeout, async {
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return false };
                seen = seen.saturating_add(frame.data_ref().map_or(0, Bytes::len));
                if seen > self.anonymous_bytes {
                    return false;
                }
            }
            true
        })
        .await;
        let response = answer(Request::from_parts(parts, Body::empty())).await;
        if discarded == Ok(true) { response } else { closing(response) }
    }
}

/// Reads bodies for one group of routes.
#[derive(Clone)]
pub(super) struct BodyReader {
    bodies: Bodies,
    max_bytes: usize,
}

/// Middleware: reads the body in full, then runs the route with it; the body's share of the
/// memory budget is held until the route has answered.
pub(super) async fn read_body(State(reader): State<BodyReader>, request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    match reader.read(&mut parts, body).await {
        Ok((bytes, _held)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(refusal) => {
            let reason = match refusal.code {
                ErrorCode::PayloadTooLarge => "too_large",
                ErrorCode::Unavailable => "memory",
                ErrorCode::RequestTimeout => "timeout",
                ErrorCode::MalformedRequest => "unreadable",
                _ => "unauthenticated",
            };
            metrics::counter!("roost_http_bodies_refused_total", "reason" => reason).increment(1);
            if refusal.code == ErrorCode::RequestTimeout {
                metrics::counter!("roost_http_connections_timed_out_total", "phase" => "body").increment(1);
            }
            closing(refusal.into_response())
        }
    }
}

impl BodyReader {
    async fn read(&self, parts: &mut Parts, mut body: Body) -> Result<(Bytes, OwnedSemaphorePermit), Error> {
        let too_large = || Error::new(ErrorCode::PayloadTooLarge, "the request body is larger than this route takes");
        let declared = body.size_hint().exact().map(|length| usize::try_from(length).unwrap_or(usize::MAX));
        let mut authenticated = false;
        if let Some(length) = declared {
            if length > self.max_bytes {
                return Err(too_large());
            }
            if length > self.bodies.anonymous_bytes {
                self.authenticate(parts).await?;
                authenticated = true;
            }
        }
        let mut held = self.reserve(declared.unwrap_or(0))?;
        let mut buffer = Vec::with_capacity(declared.unwrap_or(0));
        let reading = async {
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|_| Error::new(ErrorCode::MalformedRequest, "the request body could not be read"))?;
                let Ok(data) = frame.into_data() else { continue };
                let total = buffer.len().saturating_add(data.len());
                if total > self.max_bytes {
                    return Err(too_large());
                }
                if total > self.bodies.anonymous_bytes && !authenticated {
                    self.authenticate(parts).await?;
                    authenticated = true;
                }
                // A body that announced its length reserved it all before the first byte.
                if total > held.num_permits() {
                    held.merge(self.reserve(total - held.num_permits())?);
                }
                buffer.extend_from_slice(&data);
            }
            Ok(())
        };
        match tokio::time::timeout(self.bodies.timeout, reading).await {
            Ok(Ok(())) => Ok((Bytes::from(buffer), held)),
            Ok(Err(refusal)) => Err(refusal),
            Err(_) => Err(Error::new(ErrorCode::RequestTimeout, "the request body did not arrive in time")),
        }
    }

    fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Error> {
        self.bodies.reserve(bytes)
    }

    async fn authenticate(&self, parts: &mut Parts) -> Result<(), Error> {
        Authenticated::from_request_parts(parts, &self.bodies.state).await.map(drop)
    }
}

/// Marks a response as the connection's last.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
