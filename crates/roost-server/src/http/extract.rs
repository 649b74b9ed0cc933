//! Extractors that turn every malformed input into a JSON error with a stable code, never axum's
//! plain-text rejections.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use roost_proto::ErrorCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{AppState, forwarded};
use crate::error::Error;
use crate::services::Caller;

/// A JSON body (request) or JSON response.
///
/// A request body must be a JSON object, as the OpenAPI document says: serde would also read a
/// struct from an array of its fields' values in order (`["<device id>"]`), a second spelling
/// of every request that no client is told of.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(Error::new(
                ErrorCode::MalformedRequest,
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::new(ErrorCode::PayloadTooLarge, "the request body is larger than this server accepts")
            } else {
                Error::new(ErrorCode::MalformedRequest, rejection.body_text())
            }
        })?;
        // Other values than objects and arrays fail to read as a struct anyway.
        if body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[') {
            return Err(Error::invalid("the request body must be a JSON object"));
        }
        match axum::Json::<T>::from_bytes(&body) {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection) -> Error {
    match rejection {
        JsonRejection::JsonDataError(err) => Error::invalid(err.body_text()),
        JsonRejection::JsonSyntaxError(err) => Error::new(ErrorCode::MalformedRequest, err.body_text()),
        JsonRejection::MissingJsonContentType(_) => {
            Error::new(ErrorCode::MalformedRequest, "expected a JSON body with Content-Type: application/json")
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Error::new(ErrorCode::PayloadTooLarge, "the request body is larger than this server accepts")
        }
        other => Error::new(ErrorCode::MalformedRequest, other.body_text()),
    }
}

/// Path parameters, parsed into their types (ids, handles).
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(err)) => {
                Err(Error::new(ErrorCode::MalformedRequest, format!("bad path parameter: {}", err.body_text())))
            }
            Err(other) => Err(Error::new(ErrorCode::MalformedRequest, other.body_text())),
        }
    }
}

/// Query parameters, parsed into their types.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection| {
                Error::new(ErrorCode::MalformedRequest, format!("bad query: {}", rejection.body_text()))
            })
    }
}

/// The address the request came from: the TCP peer, or the client a trusted proxy names.
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
        // Without connection info (a router driven in-process) every caller shares one bucket.
        let peer = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let config = &state.services.ctx.config;
        Ok(Self(forwarded::client_address(peer, &parts.headers, &config.trusted_proxies, config.forwarded_header)))
    }
}

/// The raw bearer token of the request.
pub struct BearerToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let missing = || Error::new(ErrorCode::Unauthenticated, "send Authorization: Bearer <token>");
        let value = parts.headers.get(axum::http::header::AUTHORIZATION).ok_or_else(missing)?;
        let value = value.to_str().map_err(|_| missing())?;
        let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(missing());
        }
        Ok(Self(token.trim().to_owned()))
    }
}

/// The authenticated device behind the request.
pub struct Authenticated(pub Caller);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let BearerToken(token) = BearerToken::from_request_parts(parts, state).await?;
        state.services.auth.authenticate(&token).await.map(Self)
    }
}
