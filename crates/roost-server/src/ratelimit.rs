//! Keyed token-bucket rate limits, one per abuse control (docs/operations.md, limits and abuse controls).
//!
//! Alone, an instance keeps its buckets in memory (governor). Instances that cooperate over
//! Redis share them there ([`SharedLimits`]): a device that spreads its sends, or an address that
//! spreads its registrations, over every instance gets one quota, not one per instance. When
//! Redis cannot answer, the instance falls back to its own buckets, so the limit then holds per
//! instance rather than not at all.
//!
//! A limit of many requests a minute (sends: 6,000) would cost a Redis round trip per request,
//! so an instance takes a key's tokens a hundredth of the quota at a time and spends them here
//! for at most [`LEASE`]. Nothing is admitted without its token having been taken from the
//! shared bucket; what a lease leaves unspent is lost, so a key can be refused up to a hundredth
//! of its quota early per instance holding a lease, never admitted beyond it.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use roost_proto::{DeviceId, UserId};

use crate::config::RateLimits;
use crate::error::{Error, Result};

/// How long tokens taken ahead from the shared bucket may be spent.
const LEASE: Duration = Duration::from_secs(1);

/// What taking tokens from a shared bucket gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// This many tokens (at least one, at most as many as asked for).
    Tokens(u32),
    /// None: the bucket is empty for this long.
    Wait(Duration),
}

/// Buckets shared by the instances (in Redis).
pub trait SharedLimits: Send + Sync + 'static {
    /// Takes up to `want` tokens from the bucket named `bucket` (unique per limit and key),
    /// refilled at `per_minute` tokens a minute and holding at most that many; `Err(())` if the
    /// shared buckets cannot answer now.
    fn take(&self, bucket: String, per_minute: u32, want: u32) -> BoxFuture<'static, std::result::Result<Taken, ()>>;
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
    /// Tokens taken ahead from the shared bucket at a time.
    lease: u32,
    /// Each key's tokens taken ahead and not spent yet, with when they lapse.
    leases: Mutex<HashMap<K, (u32, Instant)>>,
}

impl<K: LimitKey> KeyedLimit<K> {
    fn per_minute(name: &'static str, n: u32, shared: &Arc<OnceLock<Arc<dyn SharedLimits>>>) -> Self {
        let per_minute = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Self {
            name,
            per_minute: per_minute.get(),
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            shared: shared.clone(),
            lease: (per_minute.get() / 100).max(1),
            leases: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or says how long to wait.
    pub async fn check(&self, key: &K) -> Result<()> {
        if let Some(shared) = self.shared.get() {
            if self.spend_leased(key) {
                return Ok(());
            }
            let bucket = format!("{}:{}", self.name, key.text());
            match shared.take(bucket, self.per_minute, self.lease).await {
                Ok(Taken::Tokens(taken)) => {
                    if taken > 1 {
                        self.keep_leased(key, taken - 1);
                    }
                    return Ok(());
                }
                Ok(Taken::Wait(wait)) => return Err(Error::rate_limited(wait)),
                Err(()) => {} // Redis cannot answer: this instance's buckets decide.
            }
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| Error::rate_limited(not_until.wait_time_from(DefaultClock::default().now())))
    }

    /// Spends a token taken ahead for `key`, if one is left and not lapsed.
    fn spend_leased(&self, key: &K) -> bool {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        match leases.get_mut(key) {
            Some((left, until)) if *until > Instant::now() => {
                *left -= 1;
                if *left == 0 {
                    leases.remove(key);
                }
                true
            }
            Some(_) => {
                leases.remove(key);
                false
            }
            None => false,
        }
    }

    /// Keeps `tokens` taken ahead for `key` for [`LEASE`] (added to any still held).
    fn keep_leased(&self, key: &K, tokens: u32) {
        let until = Instant::now() + LEASE;
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        let lease = leases.entry(key.clone()).or_insert((0, until));
        *lease = (lease.0 + tokens, until);
    }

    fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let now = Instant::now();
        self.leases.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, (_, until)| *until > now);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A shared bucket holding `left` tokens that never refill, counting how often it is asked.
    struct Bucket {
        left: AtomicU32,
        asked: AtomicU32,
    }

    impl SharedLimits for Bucket {
        fn take(
            &self,
            _bucket: String,
            _per_minute: u32,
            want: u32,
        ) -> BoxFuture<'static, std::result::Result<Taken, ()>> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            let left = self.left.load(Ordering::Relaxed);
            let taken = want.min(left);
            self.left.store(left - taken, Ordering::Relaxed);
            let answer = if taken == 0 { Taken::Wait(Duration::from_secs(1)) } else { Taken::Tokens(taken) };
            Box::pin(async move { Ok(answer) })
        }
    }

    fn shared_limit(per_minute: u32, bucket: &Arc<Bucket>) -> KeyedLimit<UserId> {
        let shared: Arc<OnceLock<Arc<dyn SharedLimits>>> = Arc::new(OnceLock::new());
        let _ = shared.set(bucket.clone());
        KeyedLimit::per_minute("test", per_minute, &shared)
    }

    #[tokio::test]
    async fn a_busy_key_asks_the_shared_bucket_once_per_hundredth_of_its_quota() {
        let bucket = Arc::new(Bucket { left: AtomicU32::new(1_000), asked: AtomicU32::new(0) });
        let limit = shared_limit(6_000, &bucket);
        let key = UserId::from_bytes([1; 32]);
        for _ in 0..120 {
            assert!(limit.check(&key).await.is_ok());
        }
        assert_eq!(bucket.asked.load(Ordering::Relaxed), 2, "60 tokens a time");
    }

    #[tokio::test]
    async fn nothing_is_admitted_beyond_what_the_shared_bucket_gave() {
        let bucket = Arc::new(Bucket { left: AtomicU32::new(75), asked: AtomicU32::new(0) });
        let limit = shared_limit(6_000, &bucket);
        let key = UserId::from_bytes([1; 32]);
        let mut admitted = 0;
        for _ in 0..200 {
            admitted += u32::from(limit.check(&key).await.is_ok());
        }
        assert_eq!(admitted, 75);
        // A small quota is taken a token at a time: exact.
        let bucket = Arc::new(Bucket { left: AtomicU32::new(3), asked: AtomicU32::new(0) });
        let limit = shared_limit(10, &bucket);
        for expected in [true, true, true, false] {
            assert_eq!(limit.check(&key).await.is_ok(), expected);
        }
        assert_eq!(bucket.asked.load(Ordering::Relaxed), 4);
    }
}
