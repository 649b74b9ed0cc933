//! A minimal Roost client for load: registration, authentication and sockets, speaking the
//! documented protocol directly (no SDK), so the bench measures the server alone.

use anyhow::{Context as _, bail};
use ed25519_dalek::{Signer, SigningKey};
use roost_proto::api::{ChallengeResponse, SessionResponse};
use roost_proto::{DeviceId, UserId, bytes, signing};
use serde_json::{Value, json};

/// A registered, authenticated device.
pub struct Device {
    /// Its bearer token.
    pub token: String,
    /// Its id.
    pub device_id: DeviceId,
}

/// Registers a fresh user with one device and authenticates it.
pub async fn register_and_login(http: &reqwest::Client, base: &str) -> anyhow::Result<Device> {
    Ok(register_user(http, base, 1).await?.remove(0))
}

/// Registers a fresh user with `devices` devices (the first registers, the others are linked
/// and approved with the identity key) and authenticates each.
pub async fn register_user(http: &reqwest::Client, base: &str, devices: usize) -> anyhow::Result<Vec<Device>> {
    let identity = SigningKey::from_bytes(&rand::random());
    let first = register_with(http, base, &identity).await?;
    let user_id = UserId::from_bytes(identity.verifying_key().to_bytes());
    let mut all = vec![first];
    for _ in 1..devices {
        let device = SigningKey::from_bytes(&rand::random());
        let device_id = DeviceId::from_bytes(device.verifying_key().to_bytes());
        let link = post(http, &format!("{base}/v1/links"), &json!({"device_id": device_id})).await?;
        let code = link["link_code"].as_str().context("link code")?.to_owned();
        let certificate = identity.sign(&signing::device_certificate_message(&user_id, &device_id)).to_bytes();
        let approve = json!({"device_certificate": bytes::encode(&certificate)});
        let response = http
            .post(format!("{base}/v1/links/{code}/approve"))
            .bearer_auth(&all[0].token)
            .json(&approve)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("approving a linked device: {}", response.status());
        }
        all.push(login(http, base, &device).await?);
    }
    Ok(all)
}

async fn register_with(http: &reqwest::Client, base: &str, identity: &SigningKey) -> anyhow::Result<Device> {
    let device = SigningKey::from_bytes(&rand::random());
    let user_id = UserId::from_bytes(identity.verifying_key().to_bytes());
    let device_id = DeviceId::from_bytes(device.verifying_key().to_bytes());
    let certificate = identity.sign(&signing::device_certificate_message(&user_id, &device_id)).to_bytes();
    let body =
        json!({"identity_key": user_id, "device_id": device_id, "device_certificate": bytes::encode(&certificate)});
    post(http, &format!("{base}/v1/users"), &body).await.context("registering")?;
    login(http, base, &device).await
}

async fn login(http: &reqwest::Client, base: &str, device: &SigningKey) -> anyhow::Result<Device> {
    let device_id = DeviceId::from_bytes(device.verifying_key().to_bytes());
    let challenge: ChallengeResponse = serde_json::from_value(
        post(http, &format!("{base}/v1/auth/challenge"), &json!({"device_id": device_id})).await?,
    )?;
    let statement = signing::auth_message(&challenge.server_name, &device_id, challenge.challenge.as_bytes());
    let answer = json!({
        "device_id": device_id,
        "challenge": challenge.challenge,
        "signature": bytes::encode(&device.sign(&statement).to_bytes()),
    });
    let session: SessionResponse =
        serde_json::from_value(post(http, &format!("{base}/v1/auth/session"), &answer).await?)?;
    Ok(Device { token: session.token, device_id })
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let response = http.post(url).json(body).send().await.with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url}: {status} {value}");
    }
    Ok(value)
}

/// A client WebSocket.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The WebSocket endpoint of the server at `base` (`http://…` becomes `ws://…/v1/ws`).
pub fn ws_url(base: &str) -> String {
    format!("{}/v1/ws", base.replacen("http", "ws", 1))
}

/// Opens a device's WebSocket, authenticates it and waits for the initial drain to finish
/// (`queue_empty`): the connection is then idle.
pub async fn open_socket(url: &str, token: &str) -> anyhow::Result<Socket> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    // The frames are small: a 4 KiB read buffer (tungstenite's default is 128 KiB, cleared on
    // every read) keeps the load generator cheap per socket and per frame. Nagle's algorithm is
    // off, as in the server: a send frame must not wait for the ACK of the one before.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(config), true).await.context("websocket handshake")?;
    socket.send(Message::Text(json!({"type": "auth", "token": token}).to_string().into())).await?;
    while let Some(message) = socket.next().await {
        if let Message::Text(text) = message? {
            if text.contains("\"queue_empty\"") {
                return Ok(socket);
            }
            if text.contains("\"error\"") {
                bail!("server refused the socket: {text}");
            }
        }
    }
    bail!("the server closed the socket before queue_empty")
}

/// A progress bar over `len` steps labelled `what` (drawn on stderr when it is a terminal).
pub fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(u64::try_from(len).unwrap_or(u64::MAX));
    let style = indicatif::ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {what}"))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
