//! Sending one wake-up: the [`Notifier`] seam, and its Web Push implementation (RFC 8030
//! delivery, RFC 8291 payload encryption through `web-push-native`, RFC 8292 VAPID through
//! `jwt-simple`).
//!
//! APNs and FCM's native protocol would be other notifiers behind the same trait: a relay that
//! holds the app's Apple or Google credentials takes the subscription's endpoint (naming the
//! relay and the device's native token) and the encrypted payload, so roostd keeps speaking only
//! Web Push. See docs/operations.md, "Push notifications".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use roost_store::PushSubscriptionRecord;
use web_push_native::jwt_simple::algorithms::{ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair};
use web_push_native::jwt_simple::claims::Claims;
use web_push_native::p256::PublicKey;
use web_push_native::{Auth, WebPushBuilder};

use super::endpoint::{EndpointPolicy, GuardedResolver};

/// What every wake-up carries, encrypted to the device: nothing about the sender, the
/// conversation or the content. The device learns what arrived by syncing.
pub const WAKE_PAYLOAD: &[u8] = br#"{"type":"wake"}"#;
/// The `Topic` header: a push service keeps one undelivered message per topic and subscription,
/// so wake-ups waiting there replace each other instead of piling up.
const TOPIC: &str = "roost-wake";
/// How long a VAPID token is valid (RFC 8292 allows at most 24 hours).
const VAPID_VALIDITY_HOURS: u64 = 12;
/// How long a signed VAPID token is reused, well inside its validity.
const TOKEN_REUSE: Duration = Duration::from_secs(3600);
/// Push-service origins whose tokens are kept, at most (browsers use a handful).
const MAX_TOKENS: usize = 1024;
/// The longest wait a push service's `Retry-After` is honoured for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// What a push service made of a wake-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted (201): the service delivers it when the device is reachable.
    Delivered,
    /// The subscription no longer exists (404, 410): it should be deleted.
    Gone,
    /// Not now (429, 5xx, no connection): try again, not before the duration the service named.
    Retry(Option<Duration>),
    /// Refused for good (another status, or an endpoint that may not be called).
    Refused(String),
}

/// Sends one wake-up to one subscription. Web Push is the one implementation; a relay to APNs
/// or FCM would be another.
pub trait Notifier: Send + Sync + 'static {
    /// Sends the wake-up.
    fn notify<'a>(&'a self, subscription: &'a PushSubscriptionRecord) -> BoxFuture<'a, Outcome>;
}

/// The server's VAPID key pair (P-256).
#[derive(Clone)]
pub struct Vapid {
    key: Arc<ES256KeyPair>,
}

impl Vapid {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self { key: Arc::new(ES256KeyPair::generate()) }
    }

    /// The key from its 32 secret bytes.
    pub fn from_secret(secret: &[u8]) -> Option<Self> {
        // The library asserts the length rather than refusing another one.
        if secret.len() != 32 {
            return None;
        }
        ES256KeyPair::from_bytes(secret).ok().map(|key| Self { key: Arc::new(key) })
    }

    /// The 32 secret bytes (what the store keeps).
    pub fn secret(&self) -> Vec<u8> {
        self.key.to_bytes()
    }

    /// The public key as an uncompressed point (65 bytes): what clients pass to the browser's
    /// `pushManager.subscribe` as `applicationServerKey`.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().public_key().to_bytes_uncompressed()
    }

    /// The `Authorization` header for a request to `origin` (RFC 8292: `vapid t=<JWT>, k=<key>`).
    fn authorization(&self, origin: &str, contact: &str) -> Result<String, String> {
        let claims = Claims::create(web_push_native::jwt_simple::prelude::Duration::from_hours(VAPID_VALIDITY_HOURS))
            .with_audience(origin)
            .with_subject(contact);
        let token = self.key.sign(claims).map_err(|err| err.to_string())?;
        Ok(format!("vapid t={token}, k={}", super::base64url(&self.public_key())))
    }
}

/// Web Push over HTTPS.
pub struct WebPush {
    http: reqwest::Client,
    vapid: Vapid,
    contact: String,
    ttl: Duration,
    policy: Arc<EndpointPolicy>,
    /// VAPID headers by push-service origin, with when they were signed: one signature serves
    /// every request to that service for [`TOKEN_REUSE`].
    tokens: std::sync::Mutex<HashMap<String, (Instant, String)>>,
    sealer: Sealer,
}

/// A job for the sealing thread.
type Job = Box<dyn FnOnce() + Send>;

/// The thread that encrypts wake-ups (two P-256 operations each), at a lower scheduling priority
/// than the rest of the server: on a busy machine the sends come first and wake-ups wait.
struct Sealer {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Sealer {
    fn start() -> Self {
        let (jobs, queued) = std::sync::mpsc::channel::<Job>();
        let started = std::thread::Builder::new().name("roost-push-seal".into()).spawn(move || {
            // On Linux this lowers this thread alone (nice 10); elsewhere it may do nothing.
            if let Err(err) = rustix::process::setpriority_process(None, 10) {
                tracing::debug!(error = %err, "the push sealing thread keeps the server's priority");
            }
            while let Ok(job) = queued.recv() {
                job();
            }
        });
        if let Err(err) = started {
            tracing::error!(error = %err, "the push sealing thread cannot start: wake-ups cannot be sent");
        }
        Self { jobs }
    }

    /// Runs `work` on the sealing thread; `None` if the thread is gone.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(work());
            }))
            .ok()?;
        result.await.ok()
    }
}

impl WebPush {
    /// A notifier signing with `vapid` and naming `contact`, whose requests take at most
    /// `timeout`, follow no redirect, use no proxy and reach only the addresses `policy` admits.
    pub fn new(vapid: Vapid, contact: String, ttl: Duration, timeout: Duration, policy: Arc<EndpointPolicy>) -> Self {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map(|builder| {
                let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
                builder.with_root_certificates(roots).with_no_client_auth()
            });
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())));
        match tls {
            Ok(tls) => builder = builder.tls_backend_preconfigured(tls),
            Err(err) => tracing::error!(error = %err, "TLS for push requests cannot be set up"),
        }
        let http = builder.build().unwrap_or_else(|err| {
            tracing::error!(error = %err, "the HTTP client for push requests cannot be built");
            reqwest::Client::new()
        });
        Self { http, vapid, contact, ttl, policy, tokens: std::sync::Mutex::default(), sealer: Sealer::start() }
    }

    /// The VAPID header for `origin`: signed once per [`TOKEN_REUSE`], not per request.
    fn authorization(&self, origin: &str) -> Result<String, String> {
        let mut tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((signed, header)) = tokens.get(origin)
            && signed.elapsed() < TOKEN_REUSE
        {
            return Ok(header.clone());
        }
        if tokens.len() >= MAX_TOKENS {
            tokens.retain(|_, (signed, _)| signed.elapsed() < TOKEN_REUSE);
            if tokens.len() >= MAX_TOKENS {
                tokens.clear();
            }
        }
        let header = self.vapid.authorization(origin, &self.contact)?;
        tokens.insert(origin.to_owned(), (Instant::now(), header.clone()));
        Ok(header)
    }

    async fn send(&self, subscription: &PushSubscriptionRecord) -> Outcome {
        let url = match self.policy.check(&subscription.endpoint) {
            Ok(url) => url,
            Err(refused) => return Outcome::Refused(refused.0),
        };
        let Ok(uri) = url.as_str().parse() else { return Outcome::Refused("unusable endpoint".into()) };
        let Ok(public) = PublicKey::from_sec1_bytes(&subscription.p256dh) else {
            return Outcome::Refused("unusable p256dh key".into());
        };
        let Ok(auth) = <[u8; 16]>::try_from(subscription.auth.as_slice()).map(Auth::from) else {
            return Outcome::Refused("unusable auth secret".into());
        };
        let ttl = self.ttl;
        let built = self
            .sealer
            .run(move || WebPushBuilder::new(uri, public, auth).with_valid_duration(ttl).build(WAKE_PAYLOAD))
            .await;
        let request = match built {
            Some(Ok(request)) => request,
            Some(Err(err)) => return Outcome::Refused(format!("encrypting: {err}")),
            None => return Outcome::Retry(None),
        };
        let authorization = match self.authorization(&url.origin().ascii_serialization()) {
            Ok(authorization) => authorization,
            Err(err) => return Outcome::Refused(format!("signing: {err}")),
        };
        let (parts, body) = request.into_parts();
        let mut headers = HeaderMap::new();
        for (name, value) in &parts.headers {
            if name != reqwest::header::CONTENT_LENGTH {
                headers.insert(name.clone(), value.clone());
            }
        }
        headers.insert(HeaderName::from_static("urgency"), HeaderValue::from_static("high"));
        headers.insert(HeaderName::from_static("topic"), HeaderValue::from_static(TOPIC));
        match HeaderValue::from_str(&authorization) {
            Ok(value) => headers.insert(reqwest::header::AUTHORIZATION, value),
            Err(_) => return Outcome::Refused("unusable VAPID header".into()),
        };
        match self.http.post(url).headers(headers).body(body).send().await {
            Ok(response) => outcome_of(response.status().as_u16(), response.headers()),
            Err(err) if is_refused_address(&err) => Outcome::Refused(error_chain(&err)),
            Err(err) => {
                tracing::debug!(error = %error_chain(&err), "a push request failed");
                Outcome::Retry(None)
            }
        }
    }
}

impl Notifier for WebPush {
    fn notify<'a>(&'a self, subscription: &'a PushSubscriptionRecord) -> BoxFuture<'a, Outcome> {
        Box::pin(self.send(subscription))
    }
}

/// What a push service's answer means.
fn outcome_of(status: u16, headers: &HeaderMap) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        404 | 410 => Outcome::Gone,
        429 | 500..=599 => {
            let after = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
            Outcome::Retry(after.map(|secs: u64| Duration::from_secs(secs).min(MAX_RETRY_AFTER)))
        }
        other => Outcome::Refused(format!("the push service answered {other}")),
    }
}

/// Whether a request failed because the endpoint's name resolved to no admitted address.
fn is_refused_address(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = source {
        if error.is::<super::endpoint::Refused>() {
            return true;
        }
        source = error.source();
    }
    false
}

fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(error) = source {
        text.push_str(": ");
        text.push_str(&error.to_string());
        source = error.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_what_the_worker_does() {
        let mut headers = HeaderMap::new();
        assert_eq!(outcome_of(201, &headers), Outcome::Delivered);
        assert_eq!(outcome_of(410, &headers), Outcome::Gone);
        assert_eq!(outcome_of(404, &headers), Outcome::Gone);
        assert_eq!(outcome_of(503, &headers), Outcome::Retry(None));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(outcome_of(429, &headers), Outcome::Retry(Some(Duration::from_secs(7))));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("86400"));
        assert_eq!(outcome_of(429, &headers), Outcome::Retry(Some(MAX_RETRY_AFTER)));
        assert!(matches!(outcome_of(400, &headers), Outcome::Refused(_)));
        assert!(matches!(outcome_of(301, &headers), Outcome::Refused(_)), "redirects are not followed");
    }

    #[test]
    fn one_signed_token_serves_each_push_service_for_a_while() {
        let policy = Arc::new(EndpointPolicy::new(&crate::config::PushConfig::default()));
        let push = WebPush::new(
            Vapid::generate(),
            "mailto:ops@example.com".into(),
            Duration::from_secs(60),
            Duration::from_secs(5),
            policy,
        );
        let first = push.authorization("https://fcm.googleapis.com").unwrap();
        assert_eq!(push.authorization("https://fcm.googleapis.com").unwrap(), first, "reused, not signed again");
        assert_ne!(push.authorization("https://push.services.mozilla.com").unwrap(), first, "one per audience");
    }

    #[test]
    fn the_vapid_key_survives_its_secret_and_signs_for_an_origin() {
        let vapid = Vapid::generate();
        let again = Vapid::from_secret(&vapid.secret()).unwrap();
        assert_eq!(again.public_key(), vapid.public_key());
        assert_eq!(vapid.public_key().len(), 65);
        let header = vapid.authorization("https://push.example:8443", "mailto:ops@example.com").unwrap();
        assert!(header.starts_with("vapid t="));
        assert!(header.ends_with(&format!(", k={}", crate::push::base64url(&vapid.public_key()))));
        assert!(Vapid::from_secret(&[0; 3]).is_none());
    }
}
