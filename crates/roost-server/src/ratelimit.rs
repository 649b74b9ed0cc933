//! Keyed token-bucket rate limits (governor), one per abuse control in SPEC section 10.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use roost_proto::{DeviceId, UserId};

use crate::config::RateLimits;
use crate::error::{Error, Result};

/// A per-key limit of `n` requests a minute, bursting up to `n`.
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    fn per_minute(n: u32) -> Self {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Self { limiter: RateLimiter::keyed(Quota::per_minute(n)) }
    }

    /// Takes one token for `key`, or says how long to wait.
    pub fn check(&self, key: &K) -> Result<()> {
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
}

impl RateLimiters {
    /// Limiters with the configured quotas.
    pub fn new(rates: &RateLimits) -> Self {
        Self {
            registrations: KeyedLimit::per_minute(rates.registrations_per_address),
            challenges: KeyedLimit::per_minute(rates.challenges_per_address),
            links: KeyedLimit::per_minute(rates.links_per_address),
            claims_by_requester: KeyedLimit::per_minute(rates.key_claims_per_requester),
            claims_by_pair: KeyedLimit::per_minute(rates.key_claims_per_pair),
            sends: KeyedLimit::per_minute(rates.sends_per_device),
        }
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
