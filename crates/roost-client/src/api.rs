//! The HTTP transport: one typed method per route the SDK uses.

use reqwest::Method;
use roost_proto::api::{
    ChallengeRequest, ChallengeResponse, DeviceList, HandleRecord, HandleRequest, KeyClaimRequest, KeyClaimResponse,
    KeyPackageCount, KeyPackageUpload, LinkApproveRequest, LinkStartRequest, RegisterRequest, RegisterResponse,
    RevokeDeviceRequest, SessionRequest, SessionResponse,
};
use roost_proto::attachment::{AttachmentUpload, CreateAttachmentRequest};
use roost_proto::conversation::{
    AckRequest, CommitAccepted, CommitRequest, ConversationAck, ConversationSummary, CreateConversationRequest,
    ExternalJoinRequest, GroupInfoResponse, LeaveRequest, ReadMarkerRequest, SendAccepted, SendRequest, SyncResponse,
};
use roost_proto::push::{PushServerKey, PushStatus, PushSubscription};
use roost_proto::{AttachmentId, ConversationId, DeviceId, ErrorBody, ErrorCode, UserId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;

use crate::error::{ClientError, Result};

/// A response's JSON body, or the error it carries.
async fn decode<T: DeserializeOwned>(response: reqwest::Response, path: &str) -> Result<T> {
    let status = response.status();
    let text = response.text().await.map_err(|err| ClientError::Protocol(err.to_string()))?;
    if !status.is_success() {
        return Err(server_error(status, &text));
    }
    let text = if text.is_empty() { "null" } else { &text };
    serde_json::from_str(text).map_err(|err| ClientError::Protocol(format!("{path}: {err}")))
}

/// The error an unsuccessful response's body names.
fn server_error(status: reqwest::StatusCode, text: &str) -> ClientError {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(body) => ClientError::Server {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
            current_epoch: body.error.current_epoch,
        },
        Err(_) => ClientError::Protocol(format!("HTTP {status}")),
    }
}

/// A connection to one server, with the device's session token once logged in.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// The TLS settings of `https://` and `wss://` connections.
    tls: Arc<rustls::ClientConfig>,
    base: String,
    token: Option<String>,
}

/// A WebSocket to the server, over TLS or not.
pub type WebSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Api {
    /// A client for the server at `base` (such as `http://127.0.0.1:8080` or
    /// `https://chat.example.com`); fails only if the extra trusted certificates
    /// ([`crate::tls`]) cannot be read.
    pub fn new(base: &str) -> Result<Self> {
        let tls = crate::tls::client_config()?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .build()
            .map_err(|err| ClientError::Invalid(format!("cannot set up HTTP: {err}")))?;
        Ok(Self { http, tls: Arc::new(tls), base: base.trim_end_matches('/').to_owned(), token: None })
    }

    /// Opens the WebSocket (`/v1/ws`), without Nagle's algorithm: frames are small and should
    /// leave at once. Not yet authenticated.
    pub async fn websocket(&self) -> Result<WebSocket> {
        let url = format!("{}/v1/ws", self.base.replacen("http", "ws", 1));
        let connector = tokio_tungstenite::Connector::Rustls(self.tls.clone());
        let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(url.as_str(), None, true, Some(connector))
            .await
            .map_err(|err| match err {
                tokio_tungstenite::tungstenite::Error::Io(ref io) => self.transport_error(io),
                tokio_tungstenite::tungstenite::Error::Tls(ref tls) => self.transport_error(tls),
                other => ClientError::Protocol(format!("opening the WebSocket: {other}")),
            })?;
        Ok(socket)
    }

    /// What a failed connection means: a certificate that is not trusted (said so, since
    /// "unreachable" would send the user looking in the wrong place), or an unreachable server.
    fn transport_error(&self, err: &(dyn std::error::Error + 'static)) -> ClientError {
        let mut cause = Some(err);
        while let Some(current) = cause {
            if let Some(tls) = current.downcast_ref::<rustls::Error>() {
                return ClientError::Invalid(format!(
                    "TLS with {} failed: {tls} (for a certificate no public authority signed, name it in {})",
                    self.base,
                    crate::tls::CA_FILE_VARIABLE
                ));
            }
            // An I/O error's source is its inner error's source: look at the inner error itself.
            cause = match current.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => current.source(),
            };
        }
        ClientError::Unreachable(self.base.clone())
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The session token, once logged in.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Uses a session token for the calls that need one.
    pub fn set_token(&mut self, token: String) {
        self.token = Some(token);
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&Value>) -> Result<T> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|err| self.transport_error(&err))?;
        decode(response, path).await
    }

    /// `POST /v1/conversations/{id}/attachments`: announces an upload.
    pub async fn create_attachment(
        &self,
        id: &ConversationId,
        body: &CreateAttachmentRequest,
    ) -> Result<AttachmentUpload> {
        self.post(&format!("/v1/conversations/{id}/attachments"), body).await
    }

    /// `GET /v1/attachments/{id}/upload`: how far an upload got.
    pub async fn attachment_upload(&self, id: &AttachmentId) -> Result<AttachmentUpload> {
        self.get(&format!("/v1/attachments/{id}/upload")).await
    }

    /// `PATCH /v1/attachments/{id}`: sends upload bytes from `offset`.
    pub async fn upload_attachment(
        &self,
        id: &AttachmentId,
        offset: u64,
        body: reqwest::Body,
    ) -> Result<AttachmentUpload> {
        let path = format!("/v1/attachments/{id}");
        let mut request = self
            .http
            .patch(format!("{}{path}", self.base))
            .header("Upload-Offset", offset.to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|err| self.transport_error(&err))?;
        decode(response, &path).await
    }

    /// `GET /v1/attachments/{id}`: the ciphertext from byte `from` on, as a response to stream.
    pub async fn download_attachment(&self, id: &AttachmentId, from: u64) -> Result<reqwest::Response> {
        let path = format!("/v1/attachments/{id}");
        let mut request = self.http.get(format!("{}{path}", self.base));
        if from > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|err| self.transport_error(&err))?;
        let status = response.status();
        if status == reqwest::StatusCode::OK && from == 0 || status == reqwest::StatusCode::PARTIAL_CONTENT && from > 0
        {
            return Ok(response);
        }
        if status.is_success() {
            return Err(ClientError::Protocol(format!("{path}: HTTP {status} to a range from {from}")));
        }
        let text = response.text().await.map_err(|err| ClientError::Protocol(err.to_string()))?;
        Err(server_error(status, &text))
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        let body = serde_json::to_value(body).map_err(|err| ClientError::Protocol(err.to_string()))?;
        self.call(Method::POST, path, Some(&body)).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None).await
    }

    /// `GET /v1/push/server-key`: the server's VAPID public key.
    pub async fn push_server_key(&self) -> Result<PushServerKey> {
        self.get("/v1/push/server-key").await
    }

    /// `PUT /v1/push/subscription`: registers this device's Web Push subscription.
    pub async fn set_push_subscription(&self, subscription: &PushSubscription) -> Result<PushStatus> {
        let body = serde_json::to_value(subscription).map_err(|err| ClientError::Protocol(err.to_string()))?;
        self.call(Method::PUT, "/v1/push/subscription", Some(&body)).await
    }

    /// `GET /v1/push/subscription`: this device's subscription.
    pub async fn push_status(&self) -> Result<PushStatus> {
        self.get("/v1/push/subscription").await
    }

    /// `DELETE /v1/push/subscription`.
    pub async fn delete_push_subscription(&self) -> Result<()> {
        let _: Value = self.call(Method::DELETE, "/v1/push/subscription", None).await?;
        Ok(())
    }

    /// `POST /v1/users`.
    pub async fn register(&self, body: &RegisterRequest) -> Result<RegisterResponse> {
        self.post("/v1/users", body).await
    }

    /// `POST /v1/auth/challenge` then `POST /v1/auth/session`, signing with `sign`.
    pub async fn login(&self, device: &DeviceId, sign: impl Fn(&[u8]) -> [u8; 64]) -> Result<SessionResponse> {
        let challenge: ChallengeResponse =
            self.post("/v1/auth/challenge", &ChallengeRequest { device_id: *device }).await?;
        let statement =
            roost_proto::signing::auth_message(&challenge.server_name, device, challenge.challenge.as_bytes());
        let body = SessionRequest {
            device_id: *device,
            challenge: challenge.challenge,
            signature: sign(&statement).to_vec().into(),
        };
        self.post("/v1/auth/session", &body).await
    }

    /// `GET /v1/auth/session`: whether the token works.
    pub async fn whoami(&self) -> Result<roost_proto::api::WhoAmI> {
        if self.token.is_none() {
            return Err(ClientError::Invalid("not logged in".into()));
        }
        self.get("/v1/auth/session").await
    }

    /// `GET /v1/users/{user}/devices`.
    pub async fn devices(&self, user: &UserId) -> Result<DeviceList> {
        self.get(&format!("/v1/users/{user}/devices")).await
    }

    /// `GET /v1/handles/{handle}`.
    pub async fn resolve_handle(&self, handle: &str) -> Result<HandleRecord> {
        self.get(&format!("/v1/handles/{}", handle.trim_start_matches('@'))).await
    }

    /// `POST /v1/handles/{handle}/claim`.
    pub async fn claim_handle(&self, handle: &str, body: &HandleRequest) -> Result<HandleRecord> {
        self.post(&format!("/v1/handles/{handle}/claim"), body).await
    }

    /// `POST /v1/keys/packages`.
    pub async fn upload_key_packages(&self, body: &KeyPackageUpload) -> Result<KeyPackageCount> {
        self.post("/v1/keys/packages", body).await
    }

    /// `POST /v1/keys/claim`.
    pub async fn claim_key_packages(&self, users: &[UserId], devices: &[DeviceId]) -> Result<KeyClaimResponse> {
        self.post("/v1/keys/claim", &KeyClaimRequest { user_ids: users.to_vec(), device_ids: devices.to_vec() }).await
    }

    /// `POST /v1/conversations`.
    pub async fn create_conversation(&self, body: &CreateConversationRequest) -> Result<ConversationSummary> {
        self.post("/v1/conversations", body).await
    }

    /// `GET /v1/conversations`, every page: the caller's conversations, each with its unread
    /// count, read positions and retention.
    pub async fn conversations(&self) -> Result<Vec<ConversationSummary>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page: roost_proto::conversation::ConversationList = match &cursor {
                Some(cursor) => self.get(&format!("/v1/conversations?cursor={cursor}")).await?,
                None => self.get("/v1/conversations").await?,
            };
            all.extend(page.conversations);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// `GET /v1/conversations/{id}`.
    pub async fn conversation(&self, id: &ConversationId) -> Result<ConversationSummary> {
        self.get(&format!("/v1/conversations/{id}")).await
    }

    /// `POST /v1/conversations/{id}/commits`.
    pub async fn commit(&self, id: &ConversationId, body: &CommitRequest) -> Result<CommitAccepted> {
        self.post(&format!("/v1/conversations/{id}/commits"), body).await
    }

    /// `POST /v1/conversations/{id}/external-joins`.
    pub async fn external_join(&self, id: &ConversationId, body: &ExternalJoinRequest) -> Result<CommitAccepted> {
        self.post(&format!("/v1/conversations/{id}/external-joins"), body).await
    }

    /// `GET /v1/conversations/{id}/group-info`.
    pub async fn group_info(&self, id: &ConversationId) -> Result<GroupInfoResponse> {
        self.get(&format!("/v1/conversations/{id}/group-info")).await
    }

    /// `POST /v1/conversations/{id}/messages`.
    pub async fn send(&self, id: &ConversationId, body: &SendRequest) -> Result<SendAccepted> {
        self.post(&format!("/v1/conversations/{id}/messages"), body).await
    }

    /// `GET /v1/sync`.
    pub async fn sync(&self, cursor: Option<&str>) -> Result<SyncResponse> {
        match cursor {
            Some(cursor) => self.get(&format!("/v1/sync?cursor={cursor}")).await,
            None => self.get("/v1/sync").await,
        }
    }

    /// `POST /v1/ack`.
    pub async fn ack(&self, conversations: &[(ConversationId, u64)], queue_up_to: Option<u64>) -> Result<()> {
        let conversations =
            conversations.iter().map(|(id, seq)| ConversationAck { conversation_id: *id, seq: *seq }).collect();
        let _: Value = self.post("/v1/ack", &AckRequest { conversations, queue_up_to }).await?;
        Ok(())
    }

    /// `POST /v1/links`.
    pub async fn start_link(&self, device: &DeviceId) -> Result<roost_proto::api::LinkRequest> {
        self.post("/v1/links", &LinkStartRequest { device_id: *device }).await
    }

    /// `GET /v1/links/{code}`.
    pub async fn link(&self, code: &str) -> Result<roost_proto::api::LinkRequest> {
        self.get(&format!("/v1/links/{code}")).await
    }

    /// `POST /v1/links/{code}/approve`.
    pub async fn approve_link(&self, code: &str, certificate: &[u8]) -> Result<roost_proto::api::Device> {
        let body =
            LinkApproveRequest { device_certificate: certificate.to_vec().into(), device_name: Some("linked".into()) };
        self.post(&format!("/v1/links/{code}/approve"), &body).await
    }

    /// `POST /v1/devices/{id}/revoke`.
    pub async fn revoke_device(&self, device: &DeviceId, signature: &[u8]) -> Result<()> {
        let _: Value = self
            .post(
                &format!("/v1/devices/{device}/revoke"),
                &RevokeDeviceRequest { signature: signature.to_vec().into() },
            )
            .await?;
        Ok(())
    }

    /// `POST /v1/conversations/{id}/read`: moves the user's read position.
    pub async fn mark_read(&self, id: &ConversationId, seq: u64) -> Result<()> {
        let _: Value = self.post(&format!("/v1/conversations/{id}/read"), &ReadMarkerRequest { seq }).await?;
        Ok(())
    }

    /// `POST /v1/conversations/{id}/leave`.
    pub async fn leave(&self, id: &ConversationId) -> Result<()> {
        let _: Value = self.post(&format!("/v1/conversations/{id}/leave"), &LeaveRequest::default()).await?;
        Ok(())
    }

    /// `PUT /v1/conversations/{id}/retention`.
    pub async fn set_retention(
        &self,
        id: &ConversationId,
        policy: &roost_proto::conversation::RetentionPolicy,
    ) -> Result<()> {
        let body = serde_json::to_value(policy).map_err(|err| ClientError::Protocol(err.to_string()))?;
        let _: Value = self.call(Method::PUT, &format!("/v1/conversations/{id}/retention"), Some(&body)).await?;
        Ok(())
    }

    /// Whether an error is the server's `stale_epoch`, and the current epoch it named.
    pub fn stale_epoch(err: &ClientError) -> Option<u64> {
        match err {
            ClientError::Server { code: ErrorCode::StaleEpoch, current_epoch, .. } => *current_epoch,
            _ => None,
        }
    }
}
