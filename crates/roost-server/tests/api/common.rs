//! A real `roostd` on 127.0.0.1:0 on the suite's backend (roost-testkit), and fixtures that
//! register users, link devices and authenticate over HTTP exactly as a client would.

use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};
use reqwest::{Method, StatusCode};
use roost_proto::api::{ChallengeResponse, LinkRequest, RegisterResponse, SessionResponse};
use roost_proto::{DeviceId, UserId, bytes, signing};
use roost_server::clock::ManualClock;
use roost_server::config::Config;
use roost_testkit::TestDatabase;
use serde_json::{Value, json};

/// The start of the manual clock every test server runs on.
pub const START_MS: i64 = 1_800_000_000_000;

/// A real server for one test, on the suite's backend, with an HTTP client.
pub struct TestServer {
    server: roost_testkit::TestServer,
    pub http: reqwest::Client,
}

impl std::ops::Deref for TestServer {
    type Target = roost_testkit::TestServer;

    fn deref(&self) -> &Self::Target {
        &self.server
    }
}

/// A fresh server on the suite's backend for this test (`server!()`, or `server!(|config| ...)`
/// to change its configuration); where the backend is not available here, the test returns
/// at this point after a printed notice.
macro_rules! server {
    () => {
        server!(|_| {})
    };
    ($adjust:expr) => {
        match $crate::api::common::TestServer::start_with($adjust).await {
            Some(server) => server,
            None => return,
        }
    };
}

impl TestServer {
    /// A server on a manual clock with generous rate limits (so only tests about limits meet
    /// them), adjusted by `adjust`; `None` when the suite's backend is not available.
    pub async fn start_with(adjust: impl FnOnce(&mut Config) + 'static) -> Option<Self> {
        let server =
            roost_testkit::TestServer::on(crate::BACKEND).manual_clock(START_MS).configure(adjust).start().await?;
        Some(Self { server, http: reqwest::Client::new() })
    }

    /// A server on an existing database, as after [`TestServer::stop`].
    pub async fn start_on(database: TestDatabase, config: Config) -> Self {
        let clock = Arc::new(ManualClock::new(START_MS));
        let server = roost_testkit::TestServer::start_on(database, config, Some(clock)).await;
        Self { server, http: reqwest::Client::new() }
    }

    /// A server on an existing database on the system clock (as a `roostd` process beside it
    /// runs).
    #[allow(dead_code)] // Only the PostgreSQL suite runs servers as processes.
    pub async fn start_on_system_clock(database: TestDatabase, config: Config) -> Self {
        let server = roost_testkit::TestServer::start_on(database, config, None).await;
        Self { server, http: reqwest::Client::new() }
    }

    /// Another server on this one's database (a second instance behind a load balancer).
    #[allow(dead_code)] // Only the PostgreSQL suite shares a database between servers.
    pub async fn another(&self) -> Self {
        Self { server: self.server.another().await, http: reqwest::Client::new() }
    }

    /// Another server on this one's database with its configuration changed.
    #[allow(dead_code)] // Only the PostgreSQL suite shares a database between servers.
    pub async fn another_with(&self, adjust: impl FnOnce(&mut Config)) -> Self {
        Self { server: self.server.another_with(adjust).await, http: reqwest::Client::new() }
    }

    /// Stops the server and hands back its database.
    pub async fn stop(self) -> TestDatabase {
        self.server.stop().await
    }

    /// Stops the server; hands back its database if it holds it.
    #[allow(dead_code)] // Only the PostgreSQL suite runs several servers.
    pub async fn halt(self) -> Option<TestDatabase> {
        self.server.halt().await
    }

    /// Sends a request with an optional bearer token and JSON body; returns status and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body read");
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Registers a new user with one device and authenticates that device.
    pub async fn user(&self, name: &str) -> TestUser {
        let identity = random_key();
        let device = TestDevice::new();
        let (status, body) = self.post("/v1/users", None, registration(&identity, &device, name)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let registered: RegisterResponse = serde_json::from_value(body).expect("register response");
        let mut user = TestUser { identity, devices: vec![device] };
        assert_eq!(registered.user_id, user.id());
        self.login(&mut user.devices[0]).await;
        user
    }

    /// Links a new device to `user` through the link-code flow, approved by the user's first
    /// device, and authenticates it.
    pub async fn link_device(&self, user: &mut TestUser) -> usize {
        let mut device = TestDevice::new();
        let (status, body) = self.post("/v1/links", None, json!({"device_id": device.id()})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let link: LinkRequest = serde_json::from_value(body).expect("link request");
        assert_eq!(link.link_code, signing::link_code(&device.id()));

        let (status, body) = self.get(&format!("/v1/links/{}", link.link_code), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let seen: LinkRequest = serde_json::from_value(body).expect("link request");
        assert_eq!(signing::link_code(&seen.device_id), link.link_code, "the approver checks the key against the code");

        let certificate = user.certify(&seen.device_id);
        let approver = user.devices[0].token();
        let (status, body) = self
            .post(
                &format!("/v1/links/{}/approve", link.link_code),
                Some(&approver),
                json!({"device_certificate": certificate, "device_name": "linked"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        self.login(&mut device).await;
        user.devices.push(device);
        user.devices.len() - 1
    }

    /// Gets a challenge for the device.
    pub async fn challenge(&self, device: &DeviceId) -> (StatusCode, Value) {
        self.post("/v1/auth/challenge", None, json!({"device_id": device})).await
    }

    /// Answers a challenge with the given signature.
    pub async fn answer(&self, device: &DeviceId, challenge: &str, signature: &[u8]) -> (StatusCode, Value) {
        let body = json!({"device_id": device, "challenge": challenge, "signature": bytes::encode(signature)});
        self.post("/v1/auth/session", None, body).await
    }

    /// Authenticates a device and stores its token.
    pub async fn login(&self, device: &mut TestDevice) {
        let (status, body) = self.challenge(&device.id()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let challenge: ChallengeResponse = serde_json::from_value(body).expect("challenge");
        assert_eq!(challenge.server_name, self.config.server_name);
        let signature = device.sign_auth(&challenge.server_name, challenge.challenge.as_bytes());
        let (status, body) =
            self.answer(&device.id(), &bytes::encode(challenge.challenge.as_bytes()), &signature).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let session: SessionResponse = serde_json::from_value(body).expect("session");
        device.token = Some(session.token);
    }
}

pub fn random_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random())
}

/// A registration body for `identity` with `device` as first device.
pub fn registration(identity: &SigningKey, device: &TestDevice, name: &str) -> Value {
    let user = UserId::from_bytes(identity.verifying_key().to_bytes());
    let certificate = identity.sign(&signing::device_certificate_message(&user, &device.id())).to_bytes();
    json!({
        "identity_key": user,
        "device_id": device.id(),
        "device_certificate": bytes::encode(&certificate),
        "device_name": format!("{name}'s first device"),
    })
}

pub struct TestUser {
    pub identity: SigningKey,
    pub devices: Vec<TestDevice>,
}

impl TestUser {
    pub fn id(&self) -> UserId {
        UserId::from_bytes(self.identity.verifying_key().to_bytes())
    }

    /// The first device's token.
    pub fn token(&self) -> String {
        self.devices[0].token()
    }

    /// A device certificate for `device`, as base64url.
    pub fn certify(&self, device: &DeviceId) -> String {
        bytes::encode(&self.identity.sign(&signing::device_certificate_message(&self.id(), device)).to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> String {
        bytes::encode(&self.identity.sign(message).to_bytes())
    }
}

pub struct TestDevice {
    pub key: SigningKey,
    pub token: Option<String>,
}

impl TestDevice {
    pub fn new() -> Self {
        Self { key: random_key(), token: None }
    }

    pub fn id(&self) -> DeviceId {
        DeviceId::from_bytes(self.key.verifying_key().to_bytes())
    }

    pub fn token(&self) -> String {
        self.token.clone().expect("device is logged in")
    }

    pub fn sign_auth(&self, server_name: &str, challenge: &[u8]) -> Vec<u8> {
        self.key.sign(&signing::auth_message(server_name, &self.id(), challenge)).to_bytes().to_vec()
    }
}

/// Asserts an error response: status and stable code.
#[track_caller]
pub fn assert_error(response: &(StatusCode, Value), status: StatusCode, code: &str) {
    let (actual, body) = response;
    assert_eq!(*actual, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}
