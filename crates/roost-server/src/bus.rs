//! Live events between the instances sharing one PostgreSQL database, over Redis pub/sub.
//!
//! Routing, not broadcast: each device has a channel (`roost:dev:<device id>`), and an instance
//! subscribes to it while it holds that device's socket. An event for a device held elsewhere is
//! published on the device's channel, so the work per event grows with its recipients on other
//! instances, and an instance hears only about the devices it serves. A 1:1 message costs one
//! publish (to the other user's device) plus one per other device of the sender's user; a
//! message to a 1,500-user group with three devices each costs up to 4,500 publishes, of which
//! each instance receives those of its own devices.
//!
//! Cache invalidations are the one broadcast: every instance listens on `roost:caches`, and a
//! change to sessions or memberships (rare next to messages) is published there before the
//! request that made it is answered.
//!
//! Redis is a wake-up path, never the record: everything an event announces is stored first.
//! When the subscriber connection comes back after a loss, or falls behind, every local
//! connection reads what it missed from the store ([`LiveEvent::Resync`]). An entry's frame
//! travels with the news when small; a large one travels as a wake-up and the receiving
//! connection reads it from the store. After such a loss every cache is emptied too, since
//! invalidations may have been lost with it; and while Redis is silently unreachable, values are
//! trusted only for the short shared TTL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::{Builder, Config as RedisConfig, ReconnectPolicy};
use fred::types::config::UnresponsiveConfig;
use fred::types::scripts::Script;
use futures::future::BoxFuture;
use roost_proto::{ConversationId, DeviceId, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::hub::{Bus, CloseReason, EncodedFrame, Hub, LiveEvent, PushedEntry, Seat, TooManyConnections};
use crate::services::Context;
use crate::services::cache::Stale;

/// How long a connection stays counted against its user's cap unless its instance renews it (so
/// the connections of an instance that died stop counting)...
const SEAT_LEASE: Duration = Duration::from_secs(30);
/// ...and how often each instance renews its connections' seats.
const SEAT_RENEWAL: Duration = Duration::from_secs(10);
/// Seats renewed in one script call, at most.
const RENEWAL_BATCH: usize = 500;

/// Counts the user's devices connected anywhere except `ARGV[1]` (seats are sorted-set members
/// `<device> <instance> <number>` scored by their lease's end, in Redis's own clock); admits the
/// seat `ARGV[2]` unless that reaches `ARGV[3]`. 1 if admitted, 0 if not.
const TAKE_SEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local seen, count = {}, 0
for _, seat in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local device = string.match(seat, '^(%S+)')
  if device ~= ARGV[1] and not seen[device] then
    seen[device] = true
    count = count + 1
  end
end
if count >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"#;

/// Gives the seat `ARGV[1]` back; returns how many devices of the user are still connected.
const LEAVE_SEAT: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local seen, count = {}, 0
for _, seat in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local device = string.match(seat, '^(%S+)')
  if not seen[device] then
    seen[device] = true
    count = count + 1
  end
end
return count
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

/// The channel every instance listens on for cache invalidations.
const CACHES: &str = "roost:caches";
/// How long an instance waits for the others to confirm a cache invalidation (one that is
/// frozen rather than gone holds changes up this long).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// Events waiting to be published before new ones are dropped (and counted).
const OUTBOX: usize = 65_536;
/// Publishes sent to Redis in one pipeline, at most.
const PIPELINE: usize = 512;
/// Entry frames up to this size travel on the bus; larger ones travel as a wake-up.
const MAX_FRAME_ON_BUS: usize = 8 * 1024;
/// How long a Redis command may take before it fails (while Redis is away, commands fail
/// rather than wait).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How often each connection pings Redis, so that a silently lost connection (no reset, just
/// silence) is noticed and replaced...
const HEARTBEAT: Duration = Duration::from_secs(1);
/// ...once a ping or command has waited this long.
const UNRESPONSIVE: Duration = Duration::from_secs(3);

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
#[error("connecting to Redis: {0}")]
pub struct BusError(String);

/// A message on the bus: what it says, and the instance that said it (an instance ignores its
/// own messages, such as the kick it sends when it takes a device's socket over).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Envelope<W> {
    o: u64,
    #[serde(flatten)]
    w: W,
}

/// What travels on the caches channel: an invalidation, numbered by its instance so that each
/// instance that applied it can confirm it (on `roost:ack:<instance>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Change {
    i: u64,
    #[serde(flatten)]
    f: Forget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Forget {
    /// A session ended (hex of its token's hash).
    Session { h: String },
    /// A conversation's members changed.
    Members { c: ConversationId },
    /// A device was revoked.
    Revoked { d: DeviceId },
}

impl Forget {
    fn of(stale: Stale) -> Self {
        match stale {
            Stale::Session(hash) => Self::Session { h: hex(&hash) },
            Stale::Members(c) => Self::Members { c },
            Stale::Revoked(d) => Self::Revoked { d },
        }
    }

    fn stale(self) -> Option<Stale> {
        Some(match self {
            Self::Session { h } => Stale::Session(unhex(&h)?),
            Self::Members { c } => Stale::Members(c),
            Self::Revoked { d } => Stale::Revoked(d),
        })
    }
}

/// What travels on a device's channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Wire {
    /// An entry was committed; `f` is its frame when small enough to travel, `e` the devices
    /// whose membership ends with it.
    Entry {
        c: ConversationId,
        s: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        f: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        e: Vec<DeviceId>,
    },
    /// Any other frame.
    Frame { f: String },
    /// Something was queued for the device.
    Queued,
    /// A session ended (hex of its token's hash).
    SessionEnded { h: String },
    /// The device's socket is to close.
    Kick { r: Kick },
}

/// The reasons a socket is closed from another instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kick {
    Replaced,
    SlowConsumer,
    Revoked,
}

/// A change to the channels this instance listens on, applied in order by one task.
enum Listen {
    Watch(DeviceId, oneshot::Sender<()>),
    Unwatch(DeviceId),
    /// After a reconnect: listen again for the caches and every device held here.
    Again,
}

/// The Redis side of the hub.
pub struct RedisBus {
    /// This instance on the bus (random per start).
    origin: u64,
    outbox: mpsc::Sender<(String, Arc<str>)>,
    listen: mpsc::UnboundedSender<Listen>,
    publisher: Client,
    subscriber: SubscriberClient,
    /// Set by [`close`](Self::close): the heartbeat stops.
    closed: AtomicBool,
    /// Invalidations this instance published, waiting for the others to confirm them.
    confirmations: Arc<Confirmations>,
    /// The seats of the connections held here, renewed while they last.
    seats: Arc<std::sync::Mutex<HashMap<String, UserId>>>,
    next_seat: AtomicU64,
}

/// Invalidations waiting for confirmations, by number.
#[derive(Default)]
struct Confirmations {
    next: AtomicU64,
    pending: std::sync::Mutex<HashMap<u64, Pending>>,
}

struct Pending {
    /// Confirmations received.
    received: i64,
    /// How many instances received the invalidation, once Redis has said.
    expected: Option<i64>,
    done: Option<oneshot::Sender<()>>,
}

impl Confirmations {
    fn open(&self) -> (u64, oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (done, confirmed) = oneshot::channel();
        self.lock().insert(id, Pending { received: 0, expected: None, done: Some(done) });
        (id, confirmed)
    }

    fn expect(&self, id: u64, receivers: i64) {
        self.update(id, |pending| pending.expected = Some(receivers));
    }

    fn confirm(&self, id: u64) {
        self.update(id, |pending| pending.received += 1);
    }

    fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut Pending)) {
        let mut pending = self.lock();
        let Some(entry) = pending.get_mut(&id) else { return };
        change(entry);
        if entry.expected.is_some_and(|expected| entry.received >= expected)
            && let Some(entry) = pending.remove(&id)
            && let Some(done) = entry.done
        {
            let _ = done.send(());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        lock(&self.pending)
    }
}

impl RedisBus {
    /// Connects to Redis at `url` and starts carrying `hub`'s events and invalidations of
    /// `ctx`'s caches to and from the other instances.
    pub async fn connect(url: &str, hub: &Arc<Hub>, ctx: &Arc<Context>) -> Result<Arc<Self>, BusError> {
        let config = RedisConfig::from_url(url).map_err(|err| BusError(err.to_string()))?;
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|performance| performance.default_command_timeout = COMMAND_TIMEOUT)
            .with_connection_config(|connection| {
                connection.connection_timeout = COMMAND_TIMEOUT;
                connection.unresponsive = UnresponsiveConfig { max_timeout: Some(UNRESPONSIVE), interval: HEARTBEAT };
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let publisher = builder.build().map_err(|err| BusError(err.to_string()))?;
        let subscriber = builder.build_subscriber_client().map_err(|err| BusError(err.to_string()))?;
        publisher.init().await.map_err(|err| BusError(err.to_string()))?;
        subscriber.init().await.map_err(|err| BusError(err.to_string()))?;
        let origin = rand::random();
        subscriber
            .subscribe(vec![CACHES.to_owned(), confirmations(origin)])
            .await
            .map_err(|err| BusError(err.to_string()))?;

        let (outbox, queued) = mpsc::channel(OUTBOX);
        let (listen, changes) = mpsc::unbounded_channel();
        tokio::spawn(publish(publisher.clone(), queued));
        let bus = Arc::new(Self {
            origin,
            outbox,
            listen: listen.clone(),
            publisher,
            subscriber: subscriber.clone(),
            closed: AtomicBool::new(false),
            confirmations: Arc::default(),
            seats: Arc::default(),
            next_seat: AtomicU64::new(0),
        });
        tokio::spawn(heartbeat(Arc::downgrade(&bus)));
        tokio::spawn(renew_seats(Arc::downgrade(&bus)));
        let local = Local {
            hub: Arc::downgrade(hub),
            ctx: Arc::downgrade(ctx),
            outbox: bus.outbox.clone(),
            confirmations: bus.confirmations.clone(),
        };
        tokio::spawn(manage(subscriber.clone(), changes, Arc::downgrade(&bus), local.clone()));
        tokio::spawn(receive(subscriber, local, listen, origin));
        Ok(bus)
    }

    /// Closes both connections.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.subscriber.quit().await;
        let _ = self.publisher.quit().await;
    }

    fn send(&self, devices: &[DeviceId], wire: &Wire) {
        let Ok(payload) = serde_json::to_string(&Envelope { o: self.origin, w: wire.clone() }) else { return };
        let payload: Arc<str> = payload.into();
        for device in devices {
            if self.outbox.try_send((channel(device), payload.clone())).is_err() {
                // A wake-up lost while Redis is slow or away: the device's connection catches up
                // at its instance's next resync or its own next reconnect.
                metrics::counter!("roost_bus_dropped_total").increment(1);
            }
        }
    }
}

impl Bus for RedisBus {
    fn forward(&self, devices: &[DeviceId], event: &LiveEvent) {
        let wire = match event {
            LiveEvent::Entry(entry) => Wire::Entry {
                c: entry.conversation_id,
                s: entry.seq,
                f: (entry.frame.as_str().len() <= MAX_FRAME_ON_BUS).then(|| entry.frame.as_str().to_owned()),
                e: entry.ends_for.clone(),
            },
            LiveEvent::Frame(frame) => Wire::Frame { f: frame.as_str().to_owned() },
            LiveEvent::Queued => Wire::Queued,
            LiveEvent::SessionEnded(hash) => Wire::SessionEnded { h: hex(hash) },
            // Wake-ups and resyncs are made by the receiving instance, never forwarded.
            LiveEvent::Committed { .. } | LiveEvent::Resync => return,
        };
        self.send(devices, &wire);
    }

    fn kick(&self, device: DeviceId, reason: CloseReason) {
        let r = match reason {
            CloseReason::Replaced => Kick::Replaced,
            CloseReason::SlowConsumer => Kick::SlowConsumer,
            CloseReason::Revoked => Kick::Revoked,
        };
        self.send(&[device], &Wire::Kick { r });
    }

    fn watch(&self, device: DeviceId) -> BoxFuture<'static, ()> {
        let (done, listening) = oneshot::channel();
        let _ = self.listen.send(Listen::Watch(device, done));
        Box::pin(async move {
            let _ = listening.await;
        })
    }

    fn unwatch(&self, device: DeviceId) {
        let _ = self.listen.send(Listen::Unwatch(device));
    }

    fn forget(&self, stale: Stale) -> BoxFuture<'static, ()> {
        let publisher = self.publisher.clone();
        let confirmations = self.confirmations.clone();
        let (id, confirmed) = confirmations.open();
        let payload = serde_json::to_string(&Envelope { o: self.origin, w: Change { i: id, f: Forget::of(stale) } });
        Box::pin(async move {
            let Ok(payload) = payload else { return confirmations.close(id) };
            // Every instance listening, this one included, confirms once it has applied the
            // change; the change is answered only then, so no instance serves from a stale value
            // after that. An instance that does not listen now distrusts its caches until it
            // listens again.
            match publisher.publish::<i64, _, _>(CACHES, payload).await {
                Ok(receivers) => {
                    metrics::counter!("roost_bus_published_total").increment(1);
                    confirmations.expect(id, receivers);
                    if tokio::time::timeout(CONFIRM_TIMEOUT, confirmed).await.is_err() {
                        metrics::counter!("roost_bus_unconfirmed_total").increment(1);
                        tracing::warn!("an instance did not confirm a cache change in time");
                    }
                }
                Err(err) => {
                    // The other instances trust what they cached for the shared TTL at most, and
                    // empty their caches when their own link to Redis is lost and comes back.
                    metrics::counter!("roost_bus_dropped_total").increment(1);
                    tracing::warn!(error = %err, "telling other instances of a cache change failed");
                }
            }
            confirmations.close(id);
        })
    }

    fn take_seat(
        &self,
        user: UserId,
        device: DeviceId,
        max: u32,
    ) -> BoxFuture<'static, Result<Seat, TooManyConnections>> {
        let name = format!("{device} {} {}", self.origin, self.next_seat.fetch_add(1, Ordering::Relaxed));
        let seat = Seat { user, name };
        let args = vec![device.to_string(), seat.name.clone(), max.to_string(), lease_ms()];
        let script = Script::from_lua(TAKE_SEAT);
        let publisher = self.publisher.clone();
        let seats = self.seats.clone();
        Box::pin(async move {
            match script.evalsha_with_reload::<i64, _, _>(&publisher, seats_key(&user), args).await {
                Ok(0) => return Err(TooManyConnections),
                Ok(_) => {}
                // Redis is away: admitted, counted by the renewal once it is back (until then,
                // the cap holds per instance).
                Err(err) => tracing::warn!(error = %err, "counting a connection across instances failed"),
            }
            lock(&seats).insert(seat.name.clone(), user);
            Ok(seat)
        })
    }

    fn leave_seat(&self, seat: Seat) -> BoxFuture<'static, Option<u32>> {
        lock(&self.seats).remove(&seat.name);
        let script = Script::from_lua(LEAVE_SEAT);
        let publisher = self.publisher.clone();
        Box::pin(async move {
            match script.evalsha_with_reload::<i64, _, _>(&publisher, seats_key(&seat.user), vec![seat.name]).await {
                Ok(count) => u32::try_from(count).ok(),
                Err(err) => {
                    // Its lease ends it.
                    tracing::warn!(error = %err, "giving a connection's seat back failed");
                    None
                }
            }
        })
    }
}

/// The channel on which instance `origin` receives confirmations of its invalidations.
fn confirmations(origin: u64) -> String {
    format!("roost:ack:{origin}")
}

/// What the bus delivers to on this instance.
#[derive(Clone)]
struct Local {
    hub: Weak<Hub>,
    ctx: Weak<Context>,
    /// For confirmations to other instances.
    outbox: mpsc::Sender<(String, Arc<str>)>,
    confirmations: Arc<Confirmations>,
}

/// A device's channel.
fn channel(device: &DeviceId) -> String {
    format!("roost:dev:{device}")
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Pings both connections while the bus is open, so that one lost silently is noticed (see
/// [`UNRESPONSIVE`]) and replaced, and what it missed is read from the store.
async fn heartbeat(bus: Weak<RedisBus>) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    loop {
        ticks.tick().await;
        let Some(bus) = bus.upgrade() else { return };
        if bus.closed.load(Ordering::Relaxed) {
            return;
        }
        let (_, _): (Result<(), _>, Result<(), _>) = tokio::join!(bus.publisher.ping(None), bus.subscriber.ping(None));
    }
}

/// Renews the seats of the connections held here while the bus is open (and adds them again
/// after Redis lost them, in a restart).
async fn renew_seats(bus: Weak<RedisBus>) {
    let script = Script::from_lua(RENEW_SEATS);
    let mut ticks = tokio::time::interval(SEAT_RENEWAL);
    loop {
        ticks.tick().await;
        let Some(bus) = bus.upgrade() else { return };
        if bus.closed.load(Ordering::Relaxed) {
            return;
        }
        let held: Vec<(String, UserId)> = lock(&bus.seats).iter().map(|(name, user)| (name.clone(), *user)).collect();
        for batch in held.chunks(RENEWAL_BATCH) {
            let keys: Vec<String> = batch.iter().map(|(_, user)| seats_key(user)).collect();
            let args: Vec<String> =
                std::iter::once(lease_ms()).chain(batch.iter().map(|(name, _)| name.clone())).collect();
            if let Err(err) = script.evalsha_with_reload::<i64, _, _>(&bus.publisher, keys, args).await {
                tracing::warn!(error = %err, "renewing connections' seats failed");
                break;
            }
        }
    }
}

/// The sorted set of a user's seats.
fn seats_key(user: &UserId) -> String {
    format!("roost:seats:{user}")
}

fn lease_ms() -> String {
    SEAT_LEASE.as_millis().to_string()
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends what was queued for other instances, many publishes per round trip.
async fn publish(publisher: Client, mut queued: mpsc::Receiver<(String, Arc<str>)>) {
    while let Some(first) = queued.recv().await {
        let mut batch = vec![first];
        while batch.len() < PIPELINE {
            match queued.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let pipeline = publisher.pipeline();
        for (channel, payload) in &batch {
            let _: Result<(), _> = pipeline.publish(channel.as_str(), payload.as_ref()).await;
        }
        match pipeline.all::<Vec<fred::types::Value>>().await {
            Ok(_) => metrics::counter!("roost_bus_published_total").increment(batch.len() as u64),
            Err(err) => {
                metrics::counter!("roost_bus_dropped_total").increment(batch.len() as u64);
                tracing::warn!(error = %err, lost = batch.len(), "publishing live events to Redis failed");
            }
        }
    }
}

/// Applies changes to the channels listened on, in order (so a device that disconnects and
/// reconnects here is not left unsubscribed by a late unsubscribe). A device's channel, once
/// listened on, is told that this instance holds its socket now. Once everything is listened
/// on again after a reconnect, the caches are trusted again and every local connection reads
/// from the store what it may have missed.
async fn manage(
    subscriber: SubscriberClient,
    mut changes: mpsc::UnboundedReceiver<Listen>,
    bus: Weak<RedisBus>,
    local: Local,
) {
    while let Some(change) = changes.recv().await {
        match change {
            Listen::Watch(device, done) => {
                if let Err(err) = subscriber.subscribe(channel(&device)).await {
                    // Redis is away: the reconnect listens again for every device held here.
                    tracing::warn!(error = %err, "subscribing to a device's channel failed");
                }
                if let Some(bus) = bus.upgrade() {
                    bus.send(&[device], &Wire::Kick { r: Kick::Replaced });
                }
                let _ = done.send(());
            }
            Listen::Unwatch(device) => {
                let _ = subscriber.unsubscribe(channel(&device)).await;
            }
            Listen::Again => {
                let (Some(hub), Some(ctx)) = (local.hub.upgrade(), local.ctx.upgrade()) else { return };
                let devices = hub.local_devices();
                let Some(origin) = bus.upgrade().map(|bus| bus.origin) else { return };
                let mut channels = vec![CACHES.to_owned(), confirmations(origin)];
                channels.extend(devices.iter().map(channel));
                if let Err(err) = subscriber.subscribe(channels).await {
                    tracing::warn!(error = %err, "subscribing again after a reconnect failed; retrying");
                    let Some(bus) = bus.upgrade() else { return };
                    tokio::spawn(async move {
                        tokio::time::sleep(HEARTBEAT).await;
                        let _ = bus.listen.send(Listen::Again);
                    });
                    continue;
                }
                caught_up(&hub, &ctx);
            }
        }
    }
}

/// News from other instances may have been missed: empty the caches and make every local
/// connection read the store.
fn caught_up(hub: &Hub, ctx: &Context) {
    metrics::counter!("roost_bus_resyncs_total").increment(1);
    tracing::info!("news from other instances may have been missed; caches emptied, connections read the store");
    ctx.trust_caches();
    hub.publish_local(hub.local_devices(), LiveEvent::Resync);
}

/// Delivers what other instances publish for the devices held here and applies their cache
/// invalidations. While the subscriber connection is lost the caches are not trusted; after a
/// reconnect everything is listened on again (then [`caught_up`]), and after a fall behind
/// the instance catches up at once.
async fn receive(subscriber: SubscriberClient, local: Local, listen: mpsc::UnboundedSender<Listen>, origin: u64) {
    use tokio::sync::broadcast::error::RecvError;

    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    let mut errors = subscriber.error_rx();
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(message) => {
                    let text = message.value.as_str();
                    let text = text.as_deref().unwrap_or_default();
                    if message.channel == CACHES {
                        let Some(ctx) = local.ctx.upgrade() else { return };
                        if let Ok(Envelope { o, w: Change { i, f } }) = serde_json::from_str::<Envelope<Change>>(text) {
                            metrics::counter!("roost_bus_received_total").increment(1);
                            if o != origin && let Some(stale) = f.stale() {
                                ctx.forget(stale);
                            }
                            let _ = local.outbox.try_send((confirmations(o), i.to_string().into()));
                        }
                    } else if message.channel.starts_with("roost:ack:") {
                        if let Ok(id) = text.parse() {
                            local.confirmations.confirm(id);
                        }
                    } else {
                        let Some(hub) = local.hub.upgrade() else { return };
                        let device = message.channel.strip_prefix("roost:dev:").and_then(|id| id.parse::<DeviceId>().ok());
                        if let (Some(device), Ok(envelope)) = (device, serde_json::from_str::<Envelope<Wire>>(text))
                            && envelope.o != origin
                        {
                            metrics::counter!("roost_bus_received_total").increment(1);
                            deliver(&hub, device, envelope.w);
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    let (Some(hub), Some(ctx)) = (local.hub.upgrade(), local.ctx.upgrade()) else { return };
                    caught_up(&hub, &ctx);
                }
                Err(RecvError::Closed) => return,
            },
            error = errors.recv() => match error {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    let Some(ctx) = local.ctx.upgrade() else { return };
                    ctx.distrust_caches();
                }
                Err(RecvError::Closed) => return,
            },
            reconnect = reconnects.recv() => match reconnect {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    let Some(ctx) = local.ctx.upgrade() else { return };
                    ctx.distrust_caches();
                    let _ = listen.send(Listen::Again);
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

fn deliver(hub: &Hub, device: DeviceId, wire: Wire) {
    let event = match wire {
        Wire::Entry { c, s, f: Some(frame), e } => LiveEvent::Entry(Arc::new(PushedEntry {
            conversation_id: c,
            seq: s,
            frame: EncodedFrame::from_text(frame),
            ends_for: e,
        })),
        Wire::Entry { c, s, f: None, e } => LiveEvent::Committed { conversation_id: c, seq: s, ends_for: e },
        Wire::Frame { f } => LiveEvent::Frame(EncodedFrame::from_text(f)),
        Wire::Queued => LiveEvent::Queued,
        Wire::SessionEnded { h } => match unhex(&h) {
            Some(hash) => LiveEvent::SessionEnded(hash),
            None => return,
        },
        Wire::Kick { r } => {
            let reason = match r {
                Kick::Replaced => CloseReason::Replaced,
                Kick::SlowConsumer => CloseReason::SlowConsumer,
                Kick::Revoked => CloseReason::Revoked,
            };
            hub.kick_local(&device, reason);
            return;
        }
    };
    hub.publish_local([device], event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_is_stable() {
        let id = ConversationId::from_bytes([7; 16]);
        let entry = Wire::Entry { c: id, s: 5, f: Some("{\"type\":\"entry\"}".into()), e: vec![] };
        assert_eq!(
            serde_json::to_string(&entry).unwrap_or_default(),
            r#"{"t":"entry","c":"BwcHBwcHBwcHBwcHBwcHBw","s":5,"f":"{\"type\":\"entry\"}"}"#
        );
        let wake_up = Wire::Entry { c: id, s: 6, f: None, e: vec![DeviceId::from_bytes([1; 32])] };
        assert_eq!(
            serde_json::to_string(&wake_up).unwrap_or_default(),
            r#"{"t":"entry","c":"BwcHBwcHBwcHBwcHBwcHBw","s":6,"e":["AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"]}"#
        );
        assert_eq!(
            serde_json::to_string(&Wire::Kick { r: Kick::Revoked }).unwrap_or_default(),
            r#"{"t":"kick","r":"revoked"}"#
        );
        let envelope = Envelope { o: 42, w: Wire::Queued };
        assert_eq!(serde_json::to_string(&envelope).unwrap_or_default(), r#"{"o":42,"t":"queued"}"#);
        for w in [entry, wake_up, Wire::Queued, Wire::SessionEnded { h: hex(&[9; 32]) }] {
            let text = serde_json::to_string(&Envelope { o: 7, w: w.clone() }).unwrap_or_default();
            assert_eq!(serde_json::from_str::<Envelope<Wire>>(&text).ok(), Some(Envelope { o: 7, w }));
        }
        let change = Envelope { o: 7, w: Change { i: 3, f: Forget::Members { c: id } } };
        let text = serde_json::to_string(&change).unwrap_or_default();
        assert_eq!(text, r#"{"o":7,"i":3,"t":"members","c":"BwcHBwcHBwcHBwcHBwcHBw"}"#);
        assert_eq!(serde_json::from_str::<Envelope<Change>>(&text).ok(), Some(change));
        for stale in [Stale::Session([5; 32]), Stale::Members(id), Stale::Revoked(DeviceId::from_bytes([1; 32]))] {
            assert_eq!(Forget::of(stale).stale(), Some(stale));
        }
        assert_eq!(unhex(&hex(&[0xab; 32])), Some([0xab; 32]));
        assert_eq!(unhex("zz"), None);
    }
}
