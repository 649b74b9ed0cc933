//! Every route, driven from the OpenAPI document: malformed, oversized, wrongly typed and
//! unauthenticated requests get a JSON error with a stable code, never a 500. Plus the
//! operational endpoints.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::common::{TestServer, assert_error};

const BODY_LIMIT: usize = 64 * 1024;

struct Route {
    method: Method,
    path: String,
    has_body: bool,
    needs_auth: bool,
}

async fn routes(server: &TestServer) -> Vec<Route> {
    let (status, doc) = server.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            routes.push(Route {
                method: method.to_uppercase().parse().expect("method"),
                path: path.clone(),
                // The JSON checks are for JSON bodies (the attachment upload takes raw bytes).
                has_body: operation.pointer("/requestBody/content/application~1json").is_some(),
                needs_auth: operation.get("security").is_some(),
            });
        }
    }
    routes
}

/// Fills path parameters with well-formed values (`good`) or garbage.
fn fill(path: &str, good: bool, user: &str, device: &str) -> String {
    let pick = |valid: &str| {
        if good { valid.to_owned() } else { "%00!!".to_owned() }
    };
    path.replace("{user_id}", &pick(user))
        .replace("{device_id}", &pick(device))
        .replace("{link_code}", &pick("ABCD-EFGH"))
        .replace("{handle}", &pick("someone"))
        .replace("{conversation_id}", &pick("AAAAAAAAAAAAAAAAAAAAAA"))
        .replace("{attachment_id}", &pick("AAAAAAAAAAAAAAAAAAAAAA"))
}

async fn raw(
    server: &TestServer,
    route: &Route,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = server.http.request(route.method.clone(), server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.body(body).send().await.expect("sent");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[track_caller]
fn assert_json_error(response: &(StatusCode, Value), what: &str) {
    let (status, body) = response;
    assert!(status.is_client_error(), "{what}: expected a 4xx, got {status}: {body}");
    assert!(body["error"]["code"].is_string(), "{what}: not a JSON error: {body}");
}

#[tokio::test]
async fn every_route_refuses_bad_input_with_a_json_error() {
    let server = server!(|config| {
        config.limits.max_body_bytes = BODY_LIMIT;
        config.limits.max_message_bytes = 16 * 1024;
        config.limits.max_handshake_bytes = 16 * 1024;
    });
    let alice = server.user("alice").await;
    let token = alice.token();
    let (user, device) = (alice.id().to_string(), alice.devices[0].id().to_string());
    let routes = routes(&server).await;
    assert!(routes.len() >= 20, "the OpenAPI document lists every route");

    for route in &routes {
        let path = fill(&route.path, true, &user, &device);
        let what = format!("{} {}", route.method, route.path);
        if route.needs_auth {
            let response = raw(&server, route, &path, None, None, Vec::new()).await;
            assert_error(&response, StatusCode::UNAUTHORIZED, "unauthenticated");
            let response = raw(&server, route, &path, Some("rst_bogus"), None, Vec::new()).await;
            assert_error(&response, StatusCode::UNAUTHORIZED, "unauthenticated");
        }
        if route.has_body {
            let json = Some("application/json");
            let response = raw(&server, route, &path, Some(&token), json, b"{not json".to_vec()).await;
            assert_error(&response, StatusCode::BAD_REQUEST, "malformed_request");
            let response = raw(&server, route, &path, Some(&token), json, vec![0xff, 0xfe, 0x00, 0x80]).await;
            assert_error(&response, StatusCode::BAD_REQUEST, "malformed_request");
            let response = raw(&server, route, &path, Some(&token), json, Vec::new()).await;
            assert_json_error(&response, &format!("{what} with an empty body"));
            let response = raw(&server, route, &path, Some(&token), Some("text/plain"), b"{}".to_vec()).await;
            assert_error(&response, StatusCode::BAD_REQUEST, "malformed_request");
            let response = raw(&server, route, &path, Some(&token), json, b"[1, 2, 3]".to_vec()).await;
            assert_json_error(&response, &format!("{what} with an array body"));
            // Not even the array of the fields' values in order (serde's other form of a struct).
            let response = raw(&server, route, &path, Some(&token), json, b" []".to_vec()).await;
            assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument");
            let response =
                raw(&server, route, &path, Some(&token), json, b"{\"unexpected\": {\"deep\": [null]}}".to_vec()).await;
            assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument");
            let mut huge = b"{\"pad\": \"".to_vec();
            // Above every route's limit: handshake routes allow three encoded handshake messages.
            huge.resize(4 * BODY_LIMIT, b'a');
            huge.extend_from_slice(b"\"}");
            let response = raw(&server, route, &path, Some(&token), json, huge).await;
            assert_error(&response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        }
        if route.path.contains('{') {
            let bad_path = fill(&route.path, false, &user, &device);
            let body = if route.has_body { b"{}".to_vec() } else { Vec::new() };
            let response = raw(&server, route, &bad_path, Some(&token), Some("application/json"), body).await;
            assert_json_error(&response, &format!("{what} with garbage path parameters"));
        }
    }

    // Nothing above changed alice's account.
    let (status, devices) = server.get(&format!("/v1/users/{user}/devices"), Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(devices["devices"].as_array().map(Vec::len), Some(1));
    let (_, count) = server.get("/v1/keys/packages", Some(&token)).await;
    assert_eq!(count["one_time"], 0);
}

/// Generated bodies: JSON of every shape (with strings that are near-misses of ids, handles and
/// base64url) and raw bytes, to every route that takes a body, with a token and without. None
/// may cause a server error or an answer that is not a JSON error; `PROPTEST_CASES` bodies per
/// route (32 by default), from a fixed seed so a failure repeats.
#[tokio::test]
async fn generated_bodies_never_cause_a_server_error() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    let server = server!();
    let alice = server.user("alice").await;
    let token = alice.token();
    let (user, device) = (alice.id().to_string(), alice.devices[0].id().to_string());
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(32u32);
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(Config { cases, ..Config::default() }, rng);
    let text = prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_-]{0,44}".boxed(),
        Just(user.clone()).boxed(),
        Just(device.clone()).boxed(),
        "@?[a-z][a-z0-9_.]{0,33}".boxed(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text.prop_map(Value::String),
    ];
    let json = leaf.prop_recursive(3, 32, 6, |inner| {
        let keys = prop_oneof![
            "[a-z_]{1,16}".boxed(),
            prop::sample::select(vec![
                "device_id",
                "identity_key",
                "epoch",
                "ciphertext",
                "commit",
                "group_info",
                "members",
                "welcome",
                "kind",
                "conversation_id",
                "policy",
                "ttl_secs",
                "seq",
                "signature",
                "one_time",
                "last_resort",
                "user_ids",
                "payload",
                "client_message_id",
                "challenge",
                "device_certificate",
                "timestamp",
            ])
            .prop_map(str::to_owned)
            .boxed(),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6).prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    });
    let body = prop_oneof![
        4 => json.prop_map(|value| value.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];

    let routes = routes(&server).await;
    let mut sent = 0;
    for route in routes.iter().filter(|route| route.has_body) {
        let path = fill(&route.path, true, &user, &device);
        for _ in 0..cases {
            let bytes = body.new_tree(&mut runner).expect("a body").current();
            for token in [Some(token.as_str()), None] {
                let (status, answer) = raw(&server, route, &path, token, Some("application/json"), bytes.clone()).await;
                let what = format!("{} {} with {:?}", route.method, route.path, String::from_utf8_lossy(&bytes));
                assert!(!status.is_server_error(), "{what}: {status} {answer}");
                if !status.is_success() {
                    assert!(answer["error"]["code"].is_string(), "{what}: not a JSON error: {status} {answer}");
                }
                sent += 1;
            }
        }
    }
    assert!(sent >= 20 * 2 * cases, "{sent} requests");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let server = server!();
    assert_error(&server.get("/v1/nothing-here", None).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(
        &server.call(Method::DELETE, "/healthz", None, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_error(
        &server.call(Method::PUT, "/v1/users", None, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let server = server!();
    let listed: Vec<String> = routes(&server).await.iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    for expected in [
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
        "POST /v1/users",
        "GET /v1/users/{user_id}/devices",
        "POST /v1/devices/{device_id}/revoke",
        "POST /v1/links",
        "GET /v1/links/{link_code}",
        "POST /v1/links/{link_code}/approve",
        "GET /v1/handles/{handle}",
        "POST /v1/handles/{handle}/claim",
        "POST /v1/handles/{handle}/release",
        "POST /v1/auth/challenge",
        "POST /v1/auth/session",
        "GET /v1/auth/session",
        "DELETE /v1/auth/session",
        "POST /v1/keys/packages",
        "GET /v1/keys/packages",
        "POST /v1/keys/claim",
        "POST /v1/conversations",
        "GET /v1/conversations",
        "GET /v1/conversations/{conversation_id}",
        "POST /v1/conversations/{conversation_id}/commits",
        "POST /v1/conversations/{conversation_id}/external-joins",
        "GET /v1/conversations/{conversation_id}/group-info",
        "POST /v1/conversations/{conversation_id}/messages",
        "POST /v1/conversations/{conversation_id}/leave",
        "PUT /v1/conversations/{conversation_id}/retention",
        "GET /v1/conversations/{conversation_id}/history",
        "POST /v1/conversations/{conversation_id}/read",
        "GET /v1/settings",
        "PUT /v1/settings",
        "GET /v1/sync",
        "POST /v1/ack",
        "POST /v1/devices/{device_id}/messages",
    ] {
        assert!(listed.contains(&expected.to_owned()), "{expected} missing from {listed:?}");
    }
    let (_, doc) = server.get("/openapi.json", None).await;
    assert!(doc["components"]["schemas"]["ErrorCode"]["enum"].as_array().is_some_and(|codes| codes.len() > 20));
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = server!();
    let (status, body) = server.get("/healthz", None).await;
    assert_eq!((status, body), (StatusCode::OK, serde_json::json!({"status": "ok"})));
    let (status, body) = server.get("/readyz", None).await;
    assert_eq!((status, body), (StatusCode::OK, serde_json::json!({"status": "ok"})));

    let alice = server.user("alice").await;
    let (_, _) = server.get("/v1/auth/session", Some(&alice.token())).await;
    let response = server.http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(text.contains("roost_http_requests_total{method=\"POST\",route=\"/v1/users\",status=\"201\"}"), "{text}");
    assert!(text.contains("roost_http_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains("roost_store_operation_duration_seconds_bucket{op=\"register_user\""), "{text}");
    assert!(!text.contains(&alice.token()), "no secrets in metrics");
}

#[tokio::test]
async fn a_body_is_an_object_never_the_array_of_its_fields() {
    let server = server!();
    let alice = server.user("alice").await;
    let device = alice.devices[0].id();
    let array = server.post("/v1/auth/challenge", None, json!([device])).await;
    assert_error(&array, StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument");
    let (status, _) = server.post("/v1/auth/challenge", None, json!({"device_id": device})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn pages_on_listed_origins_may_call_the_api_and_others_may_not() {
    const ORIGIN: &str = "https://chat.example.com";
    let preflight = |server: &TestServer, origin: &str, path: &str| {
        server
            .http
            .request(Method::OPTIONS, server.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
    };
    let allowed = |response: &reqwest::Response| {
        response.headers().get("access-control-allow-origin").map(|value| value.to_str().unwrap().to_owned())
    };

    // By default no origin is allowed: a preflight is just a method this route does not take.
    let closed = server!();
    let response = preflight(&closed, ORIGIN, "/v1/auth/challenge").await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(allowed(&response), None);

    let server = server!(|config| config.cors.allowed_origins = vec![ORIGIN.to_owned()]);
    let alice = server.user("alice").await;
    let id = crate::api::conversations::create(&server, &alice.token(), "group", &[], None).await;
    // Every route answers the preflight, with or without path parameters.
    for path in ["/v1/auth/challenge", &format!("/v1/conversations/{id}/messages"), "/v1/sync", "/v1/nowhere"] {
        let response = preflight(&server, ORIGIN, path).await.unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        assert_eq!(allowed(&response).as_deref(), Some(ORIGIN), "{path}");
        let headers = response.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
        assert!(headers.contains("authorization") && headers.contains("content-type"), "{headers}");
        let methods = response.headers()["access-control-allow-methods"].to_str().unwrap();
        assert!(methods.contains("POST") && methods.contains("PUT") && methods.contains("DELETE"), "{methods}");
    }
    // Answers, errors included, can be read by the page; Retry-After too.
    let response = server.http.get(server.url("/v1/sync")).header("origin", ORIGIN).bearer_auth(alice.token());
    let response = response.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(allowed(&response).as_deref(), Some(ORIGIN));
    let response = server.http.get(server.url("/v1/sync")).header("origin", ORIGIN).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(allowed(&response).as_deref(), Some(ORIGIN));
    assert!(response.headers()["access-control-expose-headers"].to_str().unwrap().contains("retry-after"));

    // Another origin gets no grant, for the preflight or the request.
    let response = preflight(&server, "https://evil.example", "/v1/auth/challenge").await.unwrap();
    assert_eq!(allowed(&response), None);
    let response = server.http.get(server.url("/healthz")).header("origin", "https://evil.example").send().await;
    assert_eq!(allowed(&response.unwrap()), None);

    // "*" allows any page.
    let open = server!(|config| config.cors.allowed_origins = vec!["*".to_owned()]);
    let response = preflight(&open, "https://anywhere.example", "/v1/users").await.unwrap();
    assert_eq!(allowed(&response).as_deref(), Some("*"));
}

#[tokio::test]
async fn a_configured_web_app_is_served_beside_the_api() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<!doctype html><title>Roost web</title>").unwrap();
    std::fs::create_dir(dir.path().join("assets")).unwrap();
    std::fs::write(dir.path().join("assets/app.js"), "console.log('roost')").unwrap();
    let outside = dir.path().parent().unwrap().join(format!("{}-secret", std::process::id()));
    std::fs::write(&outside, "not for the web").unwrap();
    let root = dir.path().to_path_buf();
    let server = server!(move |config| config.web.dir = Some(root));
    let get = async |path: &str| {
        let response = server.http.get(server.url(path)).send().await.unwrap();
        let kind = response.headers().get("content-type").map(|value| value.to_str().unwrap().to_owned());
        let nosniff = response.headers().get("x-content-type-options").is_some();
        (response.status(), kind.unwrap_or_default(), nosniff, response.text().await.unwrap())
    };

    let (status, kind, nosniff, body) = get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/html") && nosniff && body.contains("Roost web"), "{kind} {body}");
    let (status, kind, _, body) = get("/assets/app.js").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "console.log('roost')"));
    assert!(kind.contains("javascript"), "{kind}");
    // A page the app routes in the browser gets the app.
    let (status, _, _, body) = get("/chats/4_jsGhkr").await;
    assert!(status == StatusCode::OK && body.contains("Roost web"), "{status} {body}");
    // Nothing outside the directory.
    let name = outside.file_name().unwrap().to_string_lossy().into_owned();
    for path in [format!("/..%2f{name}"), format!("/assets/..%2f..%2f{name}"), format!("/%2e%2e/{name}")] {
        let (_, _, _, body) = get(&path).await;
        assert!(!body.contains("not for the web"), "{path} served a file outside the app");
    }
    std::fs::remove_file(&outside).unwrap();

    // The API keeps its paths and its JSON errors.
    let (status, kind, _, body) = get("/v1/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(kind.starts_with("application/json") && body.contains("not_found"), "{body}");
    let (status, _, _, body) = get("/healthz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"status":"ok"}"#));
    let posted = server.http.post(server.url("/")).body("x").send().await.unwrap();
    assert_eq!(posted.status(), StatusCode::NOT_FOUND);

    // Without the setting there is no app.
    let plain = server!();
    let response = plain.http.get(plain.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.text().await.unwrap().contains("not_found"));
}
