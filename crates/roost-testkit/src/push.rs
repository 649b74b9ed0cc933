//! A Web Push service on 127.0.0.1 for tests: `push/receiver.py`, an implementation written
//! independently of roostd's (Python's `cryptography` and `http_ece`), which checks each push's
//! VAPID token and decrypts its payload with the subscriber's private key.
//!
//! Where `python3` with those packages is missing, [`PushReceiver::start`] prints a notice and
//! returns `None` (the test then returns), unless `ROOST_TEST_REQUIRE_PUSH_RECEIVER` is set, as
//! `.ci/run` sets it: then a missing receiver fails the test.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The variable that makes a missing receiver an error.
pub const REQUIRE_VARIABLE: &str = "ROOST_TEST_REQUIRE_PUSH_RECEIVER";

/// The push service, running until dropped.
pub struct PushReceiver {
    base: String,
    http: reqwest::Client,
    _process: Child,
}

/// A subscription the receiver made: what a device registers with roostd.
#[derive(Debug, Clone)]
pub struct ReceiverSubscription {
    /// The receiver's name for it.
    pub id: String,
    /// The body of `PUT /v1/push/subscription`.
    pub body: Value,
}

impl PushReceiver {
    /// Starts the receiver; `None` (after a notice) where Python or its packages are missing.
    pub async fn start() -> Option<Self> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/push/receiver.py");
        let spawned = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut process = match spawned {
            Ok(process) => process,
            Err(err) => return missing(&format!("python3 cannot be started: {err}")),
        };
        let stdout = process.stdout.take()?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let port = match first {
            Ok(Ok(Some(line))) => line.strip_prefix("listening ").and_then(|port| port.parse::<u16>().ok()),
            _ => None,
        };
        let Some(port) = port else {
            let mut err = String::new();
            if let Some(stderr) = process.stderr.take() {
                let mut stderr = BufReader::new(stderr).lines();
                while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(1), stderr.next_line()).await {
                    err.push_str(&line);
                    err.push('\n');
                }
            }
            return missing(&format!("the push receiver did not start (pip install http_ece cryptography):\n{err}"));
        };
        crate::install_crypto_provider();
        Some(Self { base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new(), _process: process })
    }

    /// A new subscription: a key pair and auth secret the receiver keeps, and an endpoint on it.
    pub async fn subscribe(&self) -> ReceiverSubscription {
        let body: Value =
            self.http.post(format!("{}/subscriptions", self.base)).send().await.unwrap().json().await.unwrap();
        let id = body["id"].as_str().unwrap().to_owned();
        let body = json!({"endpoint": body["endpoint"], "keys": body["keys"]});
        ReceiverSubscription { id, body }
    }

    /// A bare endpoint, for keys the subscriber makes itself: its pushes are kept as they came
    /// (`body`, base64url), VAPID-checked but not decrypted.
    pub async fn endpoint(&self) -> ReceiverSubscription {
        let body: Value =
            self.http.post(format!("{}/endpoints", self.base)).send().await.unwrap().json().await.unwrap();
        let id = body["id"].as_str().unwrap().to_owned();
        ReceiverSubscription { id, body: json!({"endpoint": body["endpoint"]}) }
    }

    /// Every push the subscription received so far, as the receiver checked and decrypted it:
    /// `payload` (decrypted text), `decrypt_error`, `vapid_problems` (empty when the token
    /// checks out), `vapid_key`, `ttl`, `urgency`, `topic`, `status` (what it answered), `body`
    /// (as received, base64url).
    pub async fn received(&self, subscription: &ReceiverSubscription) -> Vec<Value> {
        let url = format!("{}/received/{}", self.base, subscription.id);
        let body: Value = self.http.get(url).send().await.unwrap().json().await.unwrap();
        body.as_array().cloned().unwrap_or_default()
    }

    /// Waits until the subscription received at least `count` pushes (at most 30 s); returns
    /// them.
    pub async fn wait_for(&self, subscription: &ReceiverSubscription, count: usize) -> Vec<Value> {
        for _ in 0..600 {
            let received = self.received(subscription).await;
            if received.len() >= count {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the push service did not receive {count} pushes for {}", subscription.id);
    }

    /// Makes the subscription's endpoint answer with `statuses` in turn (the last one stays).
    pub async fn answer_with(&self, subscription: &ReceiverSubscription, statuses: &[u16]) {
        let url = format!("{}/statuses/{}", self.base, subscription.id);
        self.http.post(url).json(&json!({"statuses": statuses})).send().await.unwrap();
    }
}

fn missing(why: &str) -> Option<PushReceiver> {
    if std::env::var_os(REQUIRE_VARIABLE).is_some() {
        panic!("{REQUIRE_VARIABLE} is set, but {why}");
    }
    eprintln!("skipped: no push receiver here ({why})");
    None
}
