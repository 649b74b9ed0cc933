//! Keyed token-bucket rate limits, one per abuse control in SPEC section 10.
//!
//! Alone, an instance keeps its buckets in memory (governor). Instances that cooperate over
//! Redis share them there ([`SharedLimits`]): a device that spreads its sends, or an address that
//! spreads its registrations, over every instance gets one quota, not one per instance. When
//! Redis cannot answer, the instance falls back to its own buckets, so the limit then holds per
//! instance rather than not at all.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use roost_proto::{DeviceId, UserId};

use crate::config::RateLimits;
use crate::error::{Error, Result};

/// Buckets shared by the instances (in Redis).
pub trait SharedLimits: Send + Sync + 'static {
    /// Takes one token from the bucket named `bucket` (unique per limit and key), refilled at `per_minute` tokens a minute and holding
    /// at most that many: `Ok(None)` if taken, `Ok(Some(wait))` if empty for `wait`, `Err(())`
    /// if the shared buckets cannot answer now.
    fn take(&self, bucket: String, per_minute: u32) -> BoxFuture<'static, std::result::Result<Option<Duration>, ()>>;
}

/// What names a bucket in the shared store.
pub trait LimitKey: Hash + Eq + Clone {
    /// The key's text, unique among the keys of one limit.
    fn text(&self) -> String;
}

impl LimitKey for IpAddr {
    fn text(&self) -> String {
        self.to_string()
    }
}

impl LimitKey for UserId {
    fn text(&self) -> String {
        self.to_string()
    }
}

impl LimitKey for DeviceId {
    fn text(&self) -> String {
        self.to_string()
    }
}

impl LimitKey for (UserId, UserId) {
    fn text(&self) -> String {
        format!("{}:{}", self.0, self.1)
    }
}

/// A per-key limit of `n` requests a minute, bursting up to `n`.
pub struct KeyedLimit<K: LimitKey> {
    /// Names the limit's buckets in the shared store.
    name: &'static str,
    per_minute: u32,
    limiter: DefaultKeyedRateLimiter<K>,
    shared: Arc<OnceLock<Arc<dyn SharedLimits>>>,
}

impl<K: LimitKey> KeyedLimit<K> {
    fn per_minute(name: &'static str, n: u32, shared: &Arc<OnceLock<Arc<dyn SharedLimits>>>) -> Self {
        let per_minute = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Self {
            name,
            per_minute: per_minute.get(),
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            shared: shared.clone(),
        }
    }

    /// Takes one token for `key`, or says how long to wait.
    pub async fn check(&self, key: &K) -> Result<()> {
        if let Some(shared) = self.shared.get() {
            let bucket = format!("{}:{}", self.name, key.text());
            match shared.take(bucket, self.per_minute).await {
                Ok(None) => return Ok(()),
                Ok(Some(wait)) => return Err(Error::rate_limited(wait)),
                Err(()) => {} // Redis cannot answer: this instance's buckets decide.
            }
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| Error::rate_limited(not_until.wait_time_from(DefaultClock::default().now())))
    }

    fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// Every rate limit of the server.
pub struct RateLimiters {
    /// Registrations per source address.
    pub registrations: KeyedLimit<IpAddr>,
    /// Challenges per source address.
    pub challenges: KeyedLimit<IpAddr>,
    /// Link starts and look-ups per source address.
    pub links: KeyedLimit<IpAddr>,
    /// Key claim requests per requesting user.
    pub claims_by_requester: KeyedLimit<UserId>,
    /// Key claims per (requesting user, target user).
    pub claims_by_pair: KeyedLimit<(UserId, UserId)>,
    /// Sends per device.
    pub sends: KeyedLimit<DeviceId>,
    shared: Arc<OnceLock<Arc<dyn SharedLimits>>>,
}

impl RateLimiters {
    /// Limiters with the configured quotas.
    pub fn new(rates: &RateLimits) -> Self {
        let shared = Arc::new(OnceLock::new());
        Self {
            registrations: KeyedLimit::per_minute("registrations", rates.registrations_per_address, &shared),
            challenges: KeyedLimit::per_minute("challenges", rates.challenges_per_address, &shared),
            links: KeyedLimit::per_minute("links", rates.links_per_address, &shared),
            claims_by_requester: KeyedLimit::per_minute("claims", rates.key_claims_per_requester, &shared),
            claims_by_pair: KeyedLimit::per_minute("claim_pairs", rates.key_claims_per_pair, &shared),
            sends: KeyedLimit::per_minute("sends", rates.sends_per_device, &shared),
            shared,
        }
    }

    /// Keeps every bucket in `shared` from now on (set once, before serving).
    pub fn share(&self, shared: Arc<dyn SharedLimits>) {
        let _ = self.shared.set(shared);
    }

    /// Drops the state of keys whose buckets are full again, so the maps do not grow with every
    /// address ever seen. Called periodically by the housekeeping task.
    pub fn forget_idle(&self) {
        self.registrations.forget_idle();
        self.challenges.forget_idle();
        self.links.forget_idle();
        self.claims_by_requester.forget_idle();
        self.claims_by_pair.forget_idle();
        self.sends.forget_idle();
    }
}
