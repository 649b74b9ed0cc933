//! In-memory caches for what every send reads: the caller's session and the conversation's
//! member devices.
//!
//! Both are read-through: a miss reads the store. Every path that changes a session or a
//! membership invalidates them right after its store write ([`Stale`]), in this process and,
//! when instances cooperate over Redis, on every other instance before it answers, so a logout,
//! a revocation or a member's removal takes effect for the very next request wherever it lands.
//! Entries are also short-lived and the caches are bounded, so a change made outside Roost (an
//! operator editing the database), or one whose invalidation was lost with Redis, is seen within
//! the TTL at the latest ([`TTL`] alone, [`SHARED_TTL`] with other instances).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use roost_proto::{ConversationId, DeviceId};
use roost_store::{MemberRef, SessionRecord};

/// How long a cached value is trusted without reading the store again.
pub const TTL: Duration = Duration::from_secs(60);
/// The same when instances share the database: an invalidation from another instance travels
/// over Redis and is lost if Redis is, so values are trusted for less time (one read of a session
/// or a member list every few seconds costs the store little).
pub const SHARED_TTL: Duration = Duration::from_secs(5);

/// A change that makes cached values stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// The session with this token hash ended.
    Session([u8; 32]),
    /// The members of this conversation changed.
    Members(ConversationId),
    /// This device was revoked: its sessions ended and it left every conversation (which ones
    /// is not known here, so every member list is stale).
    Revoked(DeviceId),
}

/// A bounded read-through cache whose fills cannot outlive an invalidation.
///
/// A reader that misses gets a [`Ticket`] before it reads the store, and may fill the cache only
/// if no invalidation of its key happened since: a value read before a change can never be
/// stored after that change was invalidated, however the two interleave. Invalidations of one
/// key are remembered per key (up to [`MAX_FORGOTTEN`] of them), so the frequent single-key
/// changes do not cost every other reader in flight its fill; a wider invalidation refuses every
/// ticket issued before it.
pub struct ReadThrough<K, V> {
    inner: Mutex<Entries<K, V>>,
    /// Most total weight kept.
    capacity: usize,
    /// How long a value is trusted.
    ttl: Duration,
    /// What one value counts against the capacity.
    weigh: fn(&V) -> usize,
}

/// Most keys whose last invalidation is remembered; past that, every earlier ticket is refused.
const MAX_FORGOTTEN: usize = 4_096;

struct Entries<K, V> {
    /// Counts invalidations; a ticket carries the count at its issue.
    generation: u64,
    /// Tickets issued before this generation are refused (a wide invalidation happened since).
    floor: u64,
    /// The generation of the last invalidation of each key invalidated alone since `floor`.
    forgotten: HashMap<K, u64>,
    /// Cleared while invalidations may be missed (the bus to other instances is down): the cache
    /// then holds nothing and every read goes to the store.
    trusted: bool,
    values: HashMap<K, Cached<V>>,
    /// Sum of the weights of `values`.
    weight: usize,
}

struct Cached<V> {
    value: V,
    read_at: Instant,
    /// A reader was handed a ticket to read this value again before it lapses.
    refreshing: bool,
}

/// Which invalidations a reader had seen when it missed; see [`ReadThrough`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl<K: Eq + Hash + Copy, V: Clone> ReadThrough<K, V> {
    /// An empty cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self::weighed(capacity, |_| 1)
    }

    /// An empty cache whose values weigh `weigh(value)` each (at least 1), at most `capacity` in
    /// all. A value heavier than the whole capacity is not kept.
    pub fn weighed(capacity: usize, weigh: fn(&V) -> usize) -> Self {
        let entries = Entries {
            generation: 0,
            floor: 0,
            forgotten: HashMap::new(),
            trusted: true,
            values: HashMap::new(),
            weight: 0,
        };
        Self { inner: Mutex::new(entries), capacity, ttl: TTL, weigh }
    }

    /// The same cache, trusting values for `ttl` rather than [`TTL`].
    pub fn trusting_for(self, ttl: Duration) -> Self {
        Self { ttl, ..self }
    }

    /// The cached value, or a ticket to fill it after reading the store.
    pub fn get(&self, key: &K) -> Result<V, Ticket> {
        let inner = self.lock();
        match inner.values.get(key) {
            Some(cached) if cached.read_at.elapsed() < self.ttl => Ok(cached.value.clone()),
            _ => Err(Ticket(inner.generation)),
        }
    }

    /// [`get`](Self::get), and once the value is past half its trust, a ticket to read it again
    /// (to one reader at a time), so a key in use is refreshed before it lapses and its readers
    /// never wait for the store. The value given is as valid as [`get`](Self::get)'s.
    pub fn get_refreshing(&self, key: &K) -> Result<(V, Option<Ticket>), Ticket> {
        let mut inner = self.lock();
        let generation = inner.generation;
        match inner.values.get_mut(key) {
            Some(cached) if cached.read_at.elapsed() < self.ttl => {
                let refresh = !cached.refreshing && cached.read_at.elapsed() >= self.ttl / 2;
                cached.refreshing |= refresh;
                Ok((cached.value.clone(), refresh.then_some(Ticket(generation))))
            }
            _ => Err(Ticket(generation)),
        }
    }

    /// Stores a value read from the store under `ticket`, unless it may be stale.
    pub fn fill(&self, key: K, ticket: Ticket, value: V) {
        let weight = (self.weigh)(&value).max(1);
        let mut inner = self.lock();
        let stale = ticket.0 < inner.floor || inner.forgotten.get(&key).is_some_and(|forgotten| *forgotten > ticket.0);
        if stale || !inner.trusted || weight > self.capacity {
            // A refresh that may not be stored lets the next reader try again.
            if let Some(cached) = inner.values.get_mut(&key) {
                cached.refreshing = false;
            }
            return;
        }
        if let Some(old) = inner.values.remove(&key) {
            inner.weight -= (self.weigh)(&old.value).max(1);
        }
        if inner.weight + weight > self.capacity {
            inner.values.retain(|_, cached| cached.read_at.elapsed() < self.ttl);
            self.reweigh(&mut inner);
            if inner.weight + weight > self.capacity {
                inner.values.clear();
                inner.weight = 0;
            }
        }
        inner.values.insert(key, Cached { value, read_at: Instant::now(), refreshing: false });
        inner.weight += weight;
    }

    /// Forgets one entry; readers in flight may not fill theirs. Constant time, unlike
    /// [`invalidate`](Self::invalidate), so the frequent single-key changes (a commit, a logout)
    /// never scan the cache while holding its lock.
    pub fn forget(&self, key: &K) {
        let mut inner = self.lock();
        inner.generation += 1;
        let generation = inner.generation;
        if inner.forgotten.len() >= MAX_FORGOTTEN && !inner.forgotten.contains_key(key) {
            inner.raise_floor();
        } else {
            inner.forgotten.insert(*key, generation);
        }
        if let Some(cached) = inner.values.remove(key) {
            inner.weight -= (self.weigh)(&cached.value).max(1);
        }
    }

    /// Forgets the entries `stale` picks (a scan: for rare changes such as a revocation); readers
    /// in flight may not fill theirs.
    pub fn invalidate(&self, mut stale: impl FnMut(&K, &V) -> bool) {
        let mut inner = self.lock();
        inner.raise_floor();
        inner.values.retain(|key, cached| !stale(key, &cached.value));
        self.reweigh(&mut inner);
    }

    /// Empties the cache and keeps it empty until [`trust`](Self::trust): invalidations may be
    /// missed meanwhile. Readers in flight may not fill theirs.
    pub fn distrust(&self) {
        let mut inner = self.lock();
        inner.raise_floor();
        inner.trusted = false;
        inner.values.clear();
        inner.weight = 0;
    }

    /// Empties the cache and lets it fill again (invalidations arrive again from now on, and
    /// whatever was missed before is gone). Readers in flight may not fill theirs.
    pub fn trust(&self) {
        self.distrust();
        self.lock().trusted = true;
    }

    fn reweigh(&self, inner: &mut Entries<K, V>) {
        inner.weight = inner.values.values().map(|cached| (self.weigh)(&cached.value).max(1)).sum();
    }

    fn lock(&self) -> MutexGuard<'_, Entries<K, V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K, V> Entries<K, V> {
    /// Refuses every ticket issued until now.
    fn raise_floor(&mut self) {
        self.generation += 1;
        self.floor = self.generation;
        self.forgotten.clear();
    }
}

/// Sessions by token hash.
pub type SessionCache = ReadThrough<[u8; 32], SessionRecord>;

/// The current member devices of conversations.
pub type MemberCache = ReadThrough<ConversationId, Arc<[MemberRef]>>;

/// Most sessions kept.
pub const MAX_SESSIONS: usize = 65_536;
/// Most member devices kept over all cached conversations (64 bytes each: about 64 MiB). A
/// conversation weighs its number of member devices, so a few large groups cannot hold more
/// than many small chats.
pub const MAX_MEMBER_DEVICES: usize = 1_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_past_half_its_trust_is_given_with_one_ticket_to_refresh_it() {
        let cache: ReadThrough<u8, u8> = ReadThrough::new(10).trusting_for(Duration::from_secs(2));
        cache.fill(1, cache.get(&1).unwrap_err(), 10);
        assert_eq!(cache.get_refreshing(&1), Ok((10, None)), "fresh: nothing to refresh");
        std::thread::sleep(Duration::from_millis(1_050));
        let Ok((10, Some(ticket))) = cache.get_refreshing(&1) else { unreachable!("a ticket to refresh") };
        assert_eq!(cache.get_refreshing(&1), Ok((10, None)), "one refresh at a time");
        cache.fill(1, ticket, 11);
        assert_eq!(cache.get_refreshing(&1), Ok((11, None)), "refreshed");

        // A refresh read before an invalidation is not stored after it.
        cache.fill(2, cache.get(&2).unwrap_err(), 20);
        std::thread::sleep(Duration::from_millis(1_050));
        let Ok((20, Some(ticket))) = cache.get_refreshing(&2) else { unreachable!("a ticket to refresh") };
        cache.forget(&2);
        cache.fill(2, ticket, 21);
        assert!(cache.get(&2).is_err());
    }

    #[test]
    fn invalidation_forgets_what_it_picks() {
        let cache: ReadThrough<u8, u8> = ReadThrough::new(10);
        for key in 1..=3 {
            let ticket = cache.get(&key).unwrap_err();
            cache.fill(key, ticket, key * 10);
        }
        assert_eq!(cache.get(&1), Ok(10));
        cache.invalidate(|key, _| *key == 1);
        assert!(cache.get(&1).is_err());
        cache.invalidate(|_, value| *value == 20);
        assert!(cache.get(&2).is_err());
        assert_eq!(cache.get(&3), Ok(30));
    }

    #[test]
    fn a_distrusted_cache_holds_nothing_until_trusted_again() {
        let cache: ReadThrough<u8, u8> = ReadThrough::new(10);
        let before = cache.get(&1).unwrap_err();
        cache.fill(2, cache.get(&2).unwrap_err(), 20);
        cache.distrust();
        assert!(cache.get(&2).is_err(), "emptied");
        cache.fill(1, before, 10);
        let during = cache.get(&1).expect_err("a fill from before was kept");
        cache.fill(1, during, 10);
        assert!(cache.get(&1).is_err(), "a fill while distrusted was kept");
        cache.trust();
        cache.fill(1, during, 10);
        assert!(cache.get(&1).is_err(), "a fill from while distrusted was kept after");
        cache.fill(1, cache.get(&1).unwrap_err(), 11);
        assert_eq!(cache.get(&1), Ok(11));
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let cache: ReadThrough<u8, u8> = ReadThrough::new(10);
        let stale = cache.get(&1).unwrap_err();
        cache.invalidate(|key, _| *key == 2);
        cache.fill(1, stale, 10);
        let fresh = cache.get(&1).expect_err("the stale fill was kept");
        cache.fill(1, fresh, 11);
        assert_eq!(cache.get(&1), Ok(11));
    }

    #[test]
    fn forgetting_one_key_keeps_the_fills_of_others() {
        let cache: ReadThrough<u32, u32> = ReadThrough::new(10);
        let (one, two) = (cache.get(&1).unwrap_err(), cache.get(&2).unwrap_err());
        cache.forget(&1);
        cache.fill(1, one, 10);
        cache.fill(2, two, 20);
        assert!(cache.get(&1).is_err(), "a fill read before its key was forgotten was kept");
        assert_eq!(cache.get(&2), Ok(20), "another key's fill was dropped");
        let after = cache.get(&1).unwrap_err();
        cache.fill(1, after, 11);
        assert_eq!(cache.get(&1), Ok(11), "a fill read after the forget was dropped");
    }

    #[test]
    fn past_the_remembered_keys_every_earlier_ticket_is_refused() {
        let cache: ReadThrough<u32, u32> = ReadThrough::new(10);
        let early = cache.get(&u32::MAX).unwrap_err();
        let other = cache.get(&0).unwrap_err();
        for key in 1..=MAX_FORGOTTEN as u32 {
            cache.forget(&key);
        }
        cache.fill(0, other, 1);
        assert_eq!(cache.get(&0), Ok(1), "still remembered per key");
        cache.forget(&(MAX_FORGOTTEN as u32 + 1));
        cache.fill(u32::MAX, early, 1);
        assert!(cache.get(&u32::MAX).is_err(), "a ticket from before a forgotten forget was honoured");
        let ticket = cache.get(&1).unwrap_err();
        cache.fill(1, ticket, 1);
        assert_eq!(cache.get(&1), Ok(1), "a ticket from after it was refused");
    }

    #[test]
    fn a_refresh_that_may_not_be_stored_lets_the_next_reader_refresh() {
        let cache: ReadThrough<u8, u8> = ReadThrough::new(10).trusting_for(Duration::from_secs(2));
        cache.fill(1, cache.get(&1).unwrap_err(), 10);
        std::thread::sleep(Duration::from_millis(1_050));
        let Ok((10, Some(ticket))) = cache.get_refreshing(&1) else { unreachable!("a ticket to refresh") };
        cache.invalidate(|key, _| *key == 2);
        cache.fill(1, ticket, 11);
        let Ok((10, Some(again))) = cache.get_refreshing(&1) else { unreachable!("a second ticket to refresh") };
        cache.fill(1, again, 12);
        assert_eq!(cache.get(&1), Ok(12));
    }

    #[test]
    fn weight_not_count_bounds_a_weighed_cache() {
        let cache: ReadThrough<u8, Vec<u8>> = ReadThrough::weighed(10, Vec::len);
        for (key, len) in [(1, 4), (2, 4)] {
            let ticket = cache.get(&key).unwrap_err();
            cache.fill(key, ticket, vec![0; len]);
        }
        assert_eq!(cache.lock().weight, 8);
        let ticket = cache.get(&3).unwrap_err();
        cache.fill(3, ticket, vec![0; 11]);
        assert!(cache.get(&3).is_err(), "heavier than the whole cache: not kept");
        let ticket = cache.get(&3).unwrap_err();
        cache.fill(3, ticket, vec![0; 4]);
        assert!(cache.lock().weight <= 10);
        assert!(cache.get(&3).is_ok());
        cache.forget(&3);
        assert!(cache.get(&3).is_err());
        assert!(cache.lock().weight <= 8);
    }

    #[test]
    fn a_full_cache_starts_over_instead_of_growing() {
        let cache: ReadThrough<u32, u32> = ReadThrough::new(4);
        for key in 0..9 {
            let ticket = cache.get(&key).unwrap_err();
            cache.fill(key, ticket, key);
        }
        assert!(cache.lock().values.len() <= 4);
        assert_eq!(cache.get(&8), Ok(8));
    }
}
