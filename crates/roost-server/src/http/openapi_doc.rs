//! What the handlers' annotations leave out of the OpenAPI document because every route shares
//! it: the statuses the extractors, the authentication, the limits and the store can answer
//! with on any route, and the exact form of the path and query parameters. Added in one place
//! so the document lists every status a route can return.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

use crate::config::Limits;

/// Routes with a per-address or per-device rate limit.
const RATE_LIMITED: [(&str, &str); 7] = [
    ("post", "/v1/users"),
    ("post", "/v1/auth/challenge"),
    ("post", "/v1/links"),
    ("get", "/v1/links/{link_code}"),
    ("post", "/v1/keys/claim"),
    ("post", "/v1/conversations/{conversation_id}/messages"),
    ("post", "/v1/devices/{device_id}/messages"),
];

/// Routes that answer without touching the store (so never `503 unavailable`, only the
/// connection cap's `503`, which any route can meet).
const OPERATIONAL: [&str; 3] = ["/healthz", "/metrics", "/openapi.json"];

/// Adds the shared statuses to every operation and pins the parameters' forms.
pub(super) fn complete(doc: &mut OpenApi, limits: &Limits) {
    for (path, item) in &mut doc.paths.paths {
        let operations = [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("patch", &mut item.patch),
            ("delete", &mut item.delete),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let rate_limited = RATE_LIMITED.contains(&(method, path.as_str()));
            complete_operation(operation, path, rate_limited, limits);
        }
    }
}

fn complete_operation(operation: &mut Operation, path: &str, rate_limited: bool, limits: &Limits) {
    let has_parameters = operation.parameters.as_ref().is_some_and(|parameters| !parameters.is_empty());
    let has_body = operation.request_body.is_some();
    let authenticated = operation.security.as_ref().is_some_and(|security| !security.is_empty());
    if has_parameters || has_body || path == "/v1/ws" {
        add(
            operation,
            400,
            "malformed_request: a body that is not JSON (or not declared as JSON), a path or query parameter that does not parse, or not a WebSocket upgrade",
        );
    }
    if authenticated {
        add(operation, 401, "unauthenticated, session_expired or device_revoked: no valid bearer token");
    }
    if has_body {
        add(operation, 408, "request_timeout: the body did not arrive in time; the connection closes");
        add(operation, 413, "payload_too_large: the body, or an item in it, is over its limit");
    }
    if has_parameters || has_body {
        add(
            operation,
            422,
            "invalid_argument: well-formed, but a field or parameter breaks a rule (an unknown field, a key that is not an Ed25519 public key, a page size out of range, a cursor this server did not issue)",
        );
    }
    if rate_limited {
        add(operation, 429, "rate_limited: retry after the Retry-After header's seconds");
    }
    add(operation, 500, "internal: a fault inside the server (never caused by input; always logged)");
    let unavailable = if OPERATIONAL.contains(&path) {
        "too_many_connections: the server holds as many connections as it may (sent as the connection is accepted)"
    } else {
        "unavailable (the store cannot be reached) or too_many_connections (the server holds as many connections as it may)"
    };
    add(operation, 503, unavailable);
    for parameter in operation.parameters.iter_mut().flatten() {
        let RefOr::T(parameter) = parameter else { continue };
        let schema = match (parameter.parameter_in.clone(), parameter.name.as_str()) {
            (ParameterIn::Path, "user_id") => Some(reference("UserId")),
            (ParameterIn::Path, "device_id") => Some(reference("DeviceId")),
            (ParameterIn::Path, "conversation_id") => Some(reference("ConversationId")),
            (ParameterIn::Path, "attachment_id") => Some(reference("AttachmentId")),
            (ParameterIn::Path, "handle") => Some(text("^@?[a-z][a-z0-9_.]{2,31}$")),
            (ParameterIn::Path, "link_code") => Some(text("^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")),
            (ParameterIn::Query, "limit") => Some(RefOr::T(Schema::Object(
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::Integer))
                    .minimum(Some(1))
                    .maximum(Some(limits.max_page_size))
                    .build(),
            ))),
            _ => None,
        };
        if let Some(schema) = schema {
            parameter.schema = Some(schema);
        }
    }
}

/// Documents `status` with the JSON error body, unless the route's annotation already did.
fn add(operation: &mut Operation, status: u16, description: &str) {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    let response = ResponseBuilder::new().description(description).content("application/json", content).build();
    operation.responses.responses.entry(status.to_string()).or_insert(RefOr::T(response));
}

fn reference(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

fn text(pattern: &str) -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)).pattern(Some(pattern)).build(),
    ))
}
