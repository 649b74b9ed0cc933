//! Push notifications: devices that hold no socket are woken through their Web Push
//! subscription when something is committed for them.
//!
//! The hub hands [`Push::wake`] the devices that something durable was committed for and that
//! hold no socket anywhere (alone: none here; with several instances: no instance received the
//! bus's publish for them, which Redis counts exactly). It returns at once: a device already
//! waiting for its wake-up, or woken and not seen since, is skipped (coalesced); past
//! `push.queue` devices waiting, wake-ups are dropped and counted. Each waiting device then gets
//! a task that
//! 1. claims its wake-up: a device is woken once until it connects or syncs (which releases the
//!    claim, [`Push::seen`]) or `push.rewake_secs` pass. With several instances the claim lives in
//!    Redis, so one instance wakes it; alone, in memory;
//! 2. reads its subscription and sends the wake-up ([`Notifier`]), retrying 429, 5xx and
//!    unreachable services with backoff; a 404 or 410 deletes the subscription.
//!
//! A wake-up carries nothing but [`WAKE_PAYLOAD`], encrypted to the device. Losing one (queue
//! full, push service down) costs the device a later notification, never a message: everything
//! stays in the store until the device syncs.

pub mod endpoint;
pub mod webpush;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use roost_proto::push::{PushServerKey, PushStatus, PushSubscription};
use roost_proto::{DeviceId, ErrorCode};
use roost_store::PushSubscriptionRecord;
use tokio::sync::{OnceCell, Semaphore};

use self::endpoint::EndpointPolicy;
pub use self::webpush::{Notifier, Outcome, Vapid, WAKE_PAYLOAD, WebPush};
use crate::error::{Error, Result};
use crate::hub::{Hub, Waker};
use crate::services::{Caller, Context};

/// Claims held in memory past which the lapsed ones are dropped.
const QUIET_PRUNE_AT: usize = 65_536;
/// The first wait before a retry; each further retry waits twice as long.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The push service: subscriptions, the VAPID key, and waking devices.
pub struct Push {
    ctx: Arc<Context>,
    hub: Arc<Hub>,
    policy: Arc<EndpointPolicy>,
    vapid: OnceCell<Vapid>,
    /// The notifier, once the VAPID key is known (tests may set their own first).
    notifier: OnceCell<Arc<dyn Notifier>>,
    /// Devices waiting for a wake-up or being woken (bounded by `push.queue`).
    pending: Mutex<HashSet<DeviceId>>,
    /// Pending devices something more arrived for since their task last looked.
    again: Mutex<HashSet<DeviceId>>,
    /// Alone (without a bus): devices woken and not seen since, until their claim lapses.
    quiet: Mutex<HashMap<DeviceId, Instant>>,
    requests: Semaphore,
}

impl Push {
    /// The push service over `ctx`, hooked to `hub` when enabled.
    pub fn new(ctx: Arc<Context>, hub: Arc<Hub>) -> Arc<Self> {
        let config = &ctx.config.push;
        let push = Arc::new(Self {
            policy: Arc::new(EndpointPolicy::new(config)),
            requests: Semaphore::new(config.concurrency),
            ctx: ctx.clone(),
            hub: hub.clone(),
            vapid: OnceCell::new(),
            notifier: OnceCell::new(),
            pending: Mutex::default(),
            again: Mutex::default(),
            quiet: Mutex::default(),
        });
        if config.enabled {
            hub.set_waker(Arc::new(Hook(Arc::downgrade(&push))));
        }
        push
    }

    /// Replaces the Web Push notifier (before the first wake-up): a relay to native push
    /// services would plug in here.
    pub fn set_notifier(&self, notifier: Arc<dyn Notifier>) {
        let _ = self.notifier.set(notifier);
    }

    /// The VAPID key: made at the first start and kept in the store, the same for every
    /// instance sharing it.
    pub async fn vapid(&self) -> Result<&Vapid> {
        self.vapid
            .get_or_try_init(|| async {
                let kept = self.ctx.store.vapid_key(&Vapid::generate().secret()).await?;
                Vapid::from_secret(&kept)
                    .ok_or_else(|| Error::new(ErrorCode::Internal, "the stored VAPID key is not a P-256 key"))
            })
            .await
    }

    /// `GET /v1/push/server-key`.
    pub async fn server_key(&self) -> Result<PushServerKey> {
        self.require_enabled()?;
        Ok(PushServerKey { vapid_public_key: base64url(&self.vapid().await?.public_key()) })
    }

    /// Stores the calling device's subscription (replacing any earlier one).
    pub async fn subscribe(&self, caller: &Caller, subscription: PushSubscription) -> Result<PushStatus> {
        self.require_enabled()?;
        self.policy
            .check(&subscription.endpoint)
            .map_err(|refused| Error::new(ErrorCode::PushEndpointRefused, refused.0))?;
        let p256dh = decode_key(&subscription.keys.p256dh, "keys.p256dh")?;
        if p256dh.len() != 65 || web_push_native::p256::PublicKey::from_sec1_bytes(&p256dh).is_err() {
            return Err(Error::invalid("keys.p256dh must be an uncompressed P-256 point (65 bytes)"));
        }
        let auth = decode_key(&subscription.keys.auth, "keys.auth")?;
        if auth.len() != 16 {
            return Err(Error::invalid("keys.auth must be 16 bytes"));
        }
        let record = PushSubscriptionRecord {
            device_id: caller.device_id,
            user_id: caller.user_id,
            endpoint: subscription.endpoint,
            p256dh,
            auth,
            created_at: self.ctx.clock.now_ms(),
        };
        let status = status_of(Some(&record));
        self.ctx.store.put_push_subscription(record).await?;
        self.seen(&caller.device_id);
        Ok(status)
    }

    /// The calling device's subscription.
    pub async fn status(&self, caller: &Caller) -> Result<PushStatus> {
        let record = self.ctx.store.push_subscription(&caller.device_id).await?;
        Ok(status_of(record.as_ref()))
    }

    /// Deletes the device's subscription; whether it had one.
    pub async fn unsubscribe(&self, device: &DeviceId) -> Result<bool> {
        Ok(self.ctx.store.delete_push_subscription(device, None).await?)
    }

    /// The device connected or synced: it has what was committed so far, so the next commit
    /// for it may wake it again.
    pub fn seen(&self, device: &DeviceId) {
        if !self.ctx.config.push.enabled {
            return;
        }
        lock(&self.quiet).remove(device);
        if let Some(bus) = self.hub.bus() {
            bus.release_wake(*device);
        }
    }

    /// Devices without a socket here that something was committed for (see the module's
    /// documentation). Returns at once.
    pub fn wake(self: &Arc<Self>, devices: Vec<DeviceId>) {
        let now = Instant::now();
        let mut fresh = Vec::new();
        {
            let quiet = lock(&self.quiet);
            let mut pending = lock(&self.pending);
            for device in devices {
                if quiet.get(&device).is_some_and(|until| *until > now) {
                    metrics::counter!("roost_push_coalesced_total").increment(1);
                } else if pending.contains(&device) {
                    lock(&self.again).insert(device);
                    metrics::counter!("roost_push_coalesced_total").increment(1);
                } else if pending.len() >= self.ctx.config.push.queue {
                    metrics::counter!("roost_push_dropped_total").increment(1);
                } else {
                    pending.insert(device);
                    fresh.push(device);
                }
            }
            metrics::gauge!("roost_push_pending").set(pending.len() as f64);
        }
        for device in fresh {
            let push = self.clone();
            tokio::spawn(async move {
                push.wake_one(device).await;
                let mut pending = lock(&push.pending);
                pending.remove(&device);
                lock(&push.again).remove(&device);
                metrics::gauge!("roost_push_pending").set(pending.len() as f64);
            });
        }
    }

    async fn wake_one(&self, device: DeviceId) {
        let rewake = Duration::from_secs(self.ctx.config.push.rewake_secs);
        loop {
            if self.hub.is_online(&device) {
                return;
            }
            let Some(bus) = self.hub.bus() else {
                let mut quiet = lock(&self.quiet);
                if quiet.len() >= QUIET_PRUNE_AT {
                    // Devices that never came back: their claims lapsed.
                    let now = Instant::now();
                    quiet.retain(|_, until| *until > now);
                }
                quiet.insert(device, Instant::now() + rewake);
                break;
            };
            // Unreachable Redis (None) wakes the device rather than risk missing it.
            if bus.claim_wake(device, rewake).await != Some(false) {
                break;
            }
            // Claimed elsewhere: coalesced, unless more arrived while Redis was asked (the
            // claim may have been released meanwhile).
            metrics::counter!("roost_push_coalesced_total").increment(1);
            if !lock(&self.again).remove(&device) {
                return;
            }
        }
        let subscription = match self.ctx.store.push_subscription(&device).await {
            Ok(Some(subscription)) => subscription,
            // The claim stays: a device without a subscription is not looked up again until
            // it is seen (subscribing counts) or the claim lapses.
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = %err, "reading a push subscription failed");
                return self.release(device);
            }
        };
        let Some(notifier) = self.notifier().await else { return self.release(device) };
        let max_attempts = self.ctx.config.push.max_attempts;
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=max_attempts {
            let started = Instant::now();
            let outcome = {
                let _permit = self.requests.acquire().await;
                notifier.notify(&subscription).await
            };
            metrics::histogram!("roost_push_request_seconds").record(started.elapsed().as_secs_f64());
            match outcome {
                Outcome::Delivered => {
                    metrics::counter!("roost_push_wakeups_total", "outcome" => "delivered").increment(1);
                    return;
                }
                Outcome::Gone => {
                    metrics::counter!("roost_push_wakeups_total", "outcome" => "gone").increment(1);
                    let endpoint = Some(subscription.endpoint.as_str());
                    if let Err(err) = self.ctx.store.delete_push_subscription(&device, endpoint).await {
                        tracing::warn!(error = %err, "deleting an ended push subscription failed");
                    }
                    return self.release(device);
                }
                Outcome::Refused(why) => {
                    metrics::counter!("roost_push_wakeups_total", "outcome" => "refused").increment(1);
                    tracing::info!(reason = %why, "a push service refused a wake-up");
                    return self.release(device);
                }
                Outcome::Retry(after) if attempt < max_attempts => {
                    metrics::counter!("roost_push_retries_total").increment(1);
                    tokio::time::sleep(after.unwrap_or(backoff).max(backoff)).await;
                    backoff = backoff.saturating_mul(2);
                    if self.hub.is_online(&device) {
                        return self.release(device);
                    }
                }
                Outcome::Retry(_) => {}
            }
        }
        metrics::counter!("roost_push_wakeups_total", "outcome" => "failed").increment(1);
        self.release(device);
    }

    /// Gives a claim back after a wake-up that did not go out, so the next commit tries again.
    fn release(&self, device: DeviceId) {
        self.seen(&device);
    }

    async fn notifier(&self) -> Option<&Arc<dyn Notifier>> {
        let made = self
            .notifier
            .get_or_try_init(|| async {
                let vapid = self.vapid().await?.clone();
                let config = &self.ctx.config.push;
                let contact =
                    config.contact.clone().unwrap_or_else(|| format!("https://{}", self.ctx.config.server_name));
                let notifier: Arc<dyn Notifier> = Arc::new(WebPush::new(
                    vapid,
                    contact,
                    Duration::from_secs(config.ttl_secs),
                    Duration::from_secs(config.timeout_secs),
                    self.policy.clone(),
                ));
                Ok::<_, Error>(notifier)
            })
            .await;
        match made {
            Ok(notifier) => Some(notifier),
            Err(err) => {
                tracing::warn!(error = %err, "push notifications cannot be sent: no VAPID key");
                None
            }
        }
    }

    fn require_enabled(&self) -> Result<()> {
        if self.ctx.config.push.enabled {
            Ok(())
        } else {
            Err(Error::not_found("push notifications are turned off on this server"))
        }
    }
}

/// The hub's handle on the push service (weak: the service owns the hub's other end).
struct Hook(std::sync::Weak<Push>);

impl Waker for Hook {
    fn wake(&self, devices: Vec<DeviceId>) {
        if let Some(push) = self.0.upgrade() {
            push.wake(devices);
        }
    }
}

fn status_of(record: Option<&PushSubscriptionRecord>) -> PushStatus {
    PushStatus {
        subscribed: record.is_some(),
        endpoint: record.map(|r| r.endpoint.clone()),
        created_at: record.map(|r| r.created_at),
    }
}

fn decode_key(text: &str, field: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|_| Error::invalid(format!("{field} must be base64url")))
}

/// Unpadded base64url.
pub fn base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
