//! State the instances share in Redis keys rather than pub/sub: the seats that count each
//! user's connections (and which of them are visible for presence), and the rate limits'
//! buckets. Each is changed by a Lua script: one round
//! trip, atomic, timed by Redis's clock rather than the instances'.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{LazyLock, Mutex, Weak};
use std::time::Duration;

use fred::types::scripts::Script;
use roost_proto::{DeviceId, UserId};

use super::link::Link;
use super::names::Names;
use super::{RedisBus, lock};
use crate::hub::{Seat, TooManyConnections};
use crate::ratelimit::Taken;

/// How long a connection stays counted against its user's cap unless its instance renews it (so
/// the connections of an instance that died stop counting)...
const SEAT_LEASE: Duration = Duration::from_secs(30);
/// ...and how often each instance renews its connections' seats.
const SEAT_RENEWAL: Duration = Duration::from_secs(10);
/// Seats renewed in one script call, at most.
const RENEWAL_BATCH: usize = 500;

/// What the seat scripts share: `now` in Redis's clock; `connected(key, except)`, which drops
/// the expired seats of `key` and counts the distinct devices of the rest other than `except`
/// (seats are sorted-set members `<device> <instance> <number>`, with ` v` appended while the
/// connection is visible for presence, scored by their lease's end); and `visible(key)`, which
/// counts the visible seats that have not expired.
const SEATS_PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function connected(key, except)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local seen, count = {}, 0
  for _, seat in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local device = string.match(seat, '^(%S+)')
    if device ~= except and not seen[device] then
      seen[device] = true
      count = count + 1
    end
  end
  return count
end
local function visible(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local count = 0
  for _, seat in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if string.sub(seat, -2) == ' v' then count = count + 1 end
  end
  return count
end
"#;

/// Counts the user's devices connected anywhere except `ARGV[1]`; admits the seat `ARGV[2]`
/// unless that reaches `ARGV[3]`. 1 if admitted, 0 if not.
const TAKE_SEAT: &str = r#"
if connected(KEYS[1], ARGV[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"#;

/// Gives the seat `ARGV[1]` back; returns how many of the user's connections are still visible.
const LEAVE_SEAT: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1], ARGV[1] .. ' v')
return visible(KEYS[1])
"#;

/// Marks the seat `ARGV[1]` visible (`ARGV[2]` = 1) or not, with a lease of `ARGV[3]` ms;
/// returns how many of the user's connections are visible after.
const SET_VISIBLE: &str = r#"
local from, to = ARGV[1], ARGV[1] .. ' v'
if ARGV[2] ~= '1' then from, to = to, from end
redis.call('ZREM', KEYS[1], from)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), to)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return visible(KEYS[1])
"#;

/// Renews the seat `ARGV[i + 1]` of each key `KEYS[i]` for `ARGV[1]` ms (adding it again if
/// Redis lost it).
const RENEW_SEATS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', key, lease)
end
return #KEYS
"#;

/// Takes a token from the bucket `KEYS[1]` (generic cell rate: the key holds the time its bucket
/// is full again, in Redis's clock) refilled one token every `ARGV[1]` ms and holding `ARGV[2]`;
/// returns 0 if taken, else how many ms until one is there.
const TAKE_TOKENS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local full_at = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local available = math.floor((burst * interval - (full_at - now)) / interval)
if available < 1 then return -math.max(1, math.ceil(full_at - (burst - 1) * interval - now)) end
local taken = math.min(want, available)
full_at = full_at + taken * interval
redis.call('SET', KEYS[1], tostring(full_at), 'PX', math.ceil(full_at - now))
return taken
"#;

/// Claims the wake-up of the device whose key is `KEYS[1]` for `ARGV[1]` ms: 1 if this caller
/// got it, 0 if another holds it.
const CLAIM_WAKE: &str = r#"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', tonumber(ARGV[1])) then return 1 end
return 0
"#;

/// Gives a wake-up claim back.
const RELEASE_WAKE: &str = "return redis.call('DEL', KEYS[1])";

/// The scripts, hashed once (Redis runs them by hash and is sent the text when it lacks it).
struct Scripts {
    take_seat: Script,
    leave_seat: Script,
    set_visible: Script,
    renew_seats: Script,
    take_tokens: Script,
    claim_wake: Script,
    release_wake: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    take_seat: Script::from_lua(format!("{SEATS_PRELUDE}{TAKE_SEAT}")),
    leave_seat: Script::from_lua(format!("{SEATS_PRELUDE}{LEAVE_SEAT}")),
    set_visible: Script::from_lua(format!("{SEATS_PRELUDE}{SET_VISIBLE}")),
    renew_seats: Script::from_lua(RENEW_SEATS),
    take_tokens: Script::from_lua(TAKE_TOKENS),
    claim_wake: Script::from_lua(CLAIM_WAKE),
    release_wake: Script::from_lua(RELEASE_WAKE),
});

/// Runs `script` unless Redis is known not to answer this instance now ([`Link::ask`]).
async fn run<K>(redis: &Link, script: &'static Script, keys: K, args: Vec<String>) -> Result<i64, fred::error::Error>
where
    K: Into<fred::types::MultipleKeys> + Send,
{
    redis.ask(|client| async move { script.evalsha_with_reload(&client, keys, args).await }).await
}

/// The seats of the connections held by this instance (by name, with their user and whether
/// they are visible), renewed while they last.
pub(super) type HeldSeats = Mutex<HashMap<String, (UserId, bool)>>;

/// The sorted-set member of a seat.
fn member(name: &str, visible: bool) -> String {
    if visible { format!("{name} v") } else { name.to_owned() }
}

/// Counts `seat` against its user's cap of `max` devices, unless that is reached.
pub(super) async fn take_seat(
    redis: Link,
    names: Names,
    held: std::sync::Arc<HeldSeats>,
    seat: Seat,
    device: DeviceId,
    max: u32,
) -> Result<Seat, TooManyConnections> {
    let args = vec![device.to_string(), seat.name.clone(), max.to_string(), lease_ms()];
    let key = names.seats(&seat.user);
    match run(&redis, &SCRIPTS.take_seat, key, args).await {
        Ok(0) => return Err(TooManyConnections),
        Ok(_) => {}
        // Redis is away: admitted, and counted by the renewal once it is back (until then the
        // cap holds per instance).
        Err(err) => tracing::debug!(error = %err, "counting a connection across instances failed"),
    }
    lock(&held).insert(seat.name.clone(), (seat.user, false));
    Ok(seat)
}

/// Marks a seat visible for presence or not; returns how many of its user's connections are
/// visible anywhere after.
pub(super) async fn set_visible(
    redis: Link,
    names: Names,
    held: std::sync::Arc<HeldSeats>,
    seat: Seat,
    visible: bool,
) -> Option<u32> {
    if let Some(entry) = lock(&held).get_mut(&seat.name) {
        entry.1 = visible;
    }
    let args = vec![seat.name, u8::from(visible).to_string(), lease_ms()];
    let key = names.seats(&seat.user);
    match run(&redis, &SCRIPTS.set_visible, key, args).await {
        Ok(count) => u32::try_from(count).ok(),
        Err(err) => {
            tracing::debug!(error = %err, "recording a connection's presence across instances failed");
            None
        }
    }
}

/// Gives a seat back; returns how many of its user's connections are still visible anywhere.
pub(super) async fn leave_seat(redis: Link, names: Names, seat: Seat) -> Option<u32> {
    let (key, args) = (names.seats(&seat.user), vec![seat.name]);
    match run(&redis, &SCRIPTS.leave_seat, key, args).await {
        Ok(count) => u32::try_from(count).ok(),
        Err(err) => {
            // Its lease ends it.
            tracing::debug!(error = %err, "giving a connection's seat back failed");
            None
        }
    }
}

/// Renews the seats of the connections held here while the bus is open (and adds them again
/// after Redis lost them, in a restart).
pub(super) async fn renew_seats(bus: Weak<RedisBus>) {
    let mut ticks = tokio::time::interval(SEAT_RENEWAL);
    loop {
        ticks.tick().await;
        let Some(bus) = bus.upgrade() else { return };
        if bus.closed.load(Ordering::Relaxed) {
            return;
        }
        let held: Vec<(String, UserId)> =
            lock(&bus.seats).iter().map(|(name, (user, visible))| (member(name, *visible), *user)).collect();
        for batch in held.chunks(RENEWAL_BATCH) {
            let keys: Vec<String> = batch.iter().map(|(_, user)| bus.names.seats(user)).collect();
            let args: Vec<String> =
                std::iter::once(lease_ms()).chain(batch.iter().map(|(name, _)| name.clone())).collect();
            let renewed: Result<i64, _> = bus
                .publisher
                .tell(|client| async move { SCRIPTS.renew_seats.evalsha_with_reload(&client, keys, args).await })
                .await;
            if let Err(err) = renewed {
                tracing::debug!(error = %err, "renewing connections' seats failed");
                break;
            }
        }
    }
}

fn lease_ms() -> String {
    SEAT_LEASE.as_millis().to_string()
}

/// Claims a device's wake-up for `hold`; `None` if Redis cannot answer.
pub(super) async fn claim_wake(redis: Link, key: String, hold: Duration) -> Option<bool> {
    let args = vec![hold.as_millis().max(1).to_string()];
    match run(&redis, &SCRIPTS.claim_wake, key, args).await {
        Ok(claimed) => Some(claimed == 1),
        Err(err) => {
            tracing::debug!(error = %err, "claiming a wake-up across instances failed");
            None
        }
    }
}

/// Gives a device's wake-up claim back (it lapses by itself if this fails).
pub(super) async fn release_wake(redis: Link, key: String) {
    let released = run(&redis, &SCRIPTS.release_wake, key, Vec::new()).await;
    if let Err(err) = released {
        tracing::debug!(error = %err, "giving a wake-up claim back failed");
    }
}

/// Takes up to `want` tokens (at least one) from the shared bucket `key` of a limit of
/// `per_minute`; `Err(())` if Redis cannot answer.
pub(super) async fn take_tokens(redis: Link, key: String, per_minute: u32, want: u32) -> Result<Taken, ()> {
    let interval = 60_000.0 / f64::from(per_minute.max(1));
    let args = vec![interval.to_string(), per_minute.to_string(), want.max(1).to_string()];
    match run(&redis, &SCRIPTS.take_tokens, key, args).await {
        Ok(taken) if taken > 0 => Ok(Taken::Tokens(u32::try_from(taken).unwrap_or(1))),
        Ok(wait_ms) => Ok(Taken::Wait(Duration::from_millis(wait_ms.unsigned_abs()))),
        Err(err) => {
            tracing::debug!(error = %err, "a shared rate limit could not be checked; this instance's applies");
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use fred::clients::Client;
    use fred::prelude::ClientLike as _;

    use super::*;

    #[tokio::test]
    async fn a_bucket_gives_what_it_holds_up_to_what_is_asked_then_says_how_long_to_wait() {
        let Some(url) = roost_testkit::redis_url() else { return };
        let redis = Client::new(fred::types::config::Config::from_url(&url).expect("a Redis URL"), None, None, None);
        redis.init().await.expect("connect to Redis");
        let redis = Link::new(redis);
        // A fresh key, gone by itself within a minute.
        let key = format!("roost:test:{}:limit", rand::random::<u64>());
        // Three a minute (one every 20 s): two of two asked, then the one left, then none.
        assert_eq!(take_tokens(redis.clone(), key.clone(), 3, 2).await, Ok(Taken::Tokens(2)));
        assert_eq!(take_tokens(redis.clone(), key.clone(), 3, 2).await, Ok(Taken::Tokens(1)));
        let Ok(Taken::Wait(wait)) = take_tokens(redis.clone(), key.clone(), 3, 2).await else {
            unreachable!("an empty bucket gives nothing")
        };
        assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20), "{wait:?}");
    }
}
