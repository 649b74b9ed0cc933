//! Live events between the instances sharing one PostgreSQL database, over Redis pub/sub.
//!
//! Every name in Redis belongs to the deployment (`roost:<deployment>:...`, see [`names`]), so
//! below `dev:<device id>` stands for `roost:<deployment>:dev:<device id>`.
//!
//! Routing, not broadcast: each device has a channel (`dev:<device id>`), and an instance
//! subscribes to it while it holds that device's socket. An event for a device held elsewhere is
//! published on the device's channel, so the work per event grows with its recipients on other
//! instances, and an instance hears only about the devices it serves. A 1:1 message costs one
//! publish per member device whose socket is not here (the other user's, and the sender's own,
//! the sending device included when it sent over HTTP); a message to a 1,500-user group with
//! three devices each costs up to 4,500 publishes, of which each instance receives those of its
//! own devices.
//!
//! Cache invalidations are the one broadcast: every instance listens on `caches`, and a change
//! to sessions or memberships (rare next to messages) is published there and confirmed by every
//! instance before the request that made it is answered ([`confirm`]). The per-user connection
//! cap and the rate limits keep their state in Redis keys ([`shared`]).
//!
//! Redis is a wake-up path, never the record: everything an event announces is stored first.
//! When the subscriber connection comes back after a loss, or falls behind, every local
//! connection reads what it missed from the store ([`LiveEvent::Resync`]). An entry's frame
//! travels with the news when small; a large one travels as a wake-up and the receiving
//! connection reads it from the store. After such a loss every cache is emptied too, since
//! invalidations may have been lost with it; and while Redis is silently unreachable, values are
//! trusted only for the short shared TTL.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::{Builder, Config as RedisConfig, ReconnectPolicy};
use fred::types::config::{TcpConfig, UnresponsiveConfig};
use fred::types::scripts::Script;
use futures::future::BoxFuture;
use roost_proto::{DeviceId, UserId};
use tokio::sync::{mpsc, oneshot};

mod confirm;
mod link;
mod names;
mod shared;
mod wire;

use self::confirm::Confirmations;
use self::link::Link;
use self::names::{Channel, Names};
use self::wire::{Change, Envelope, Forget, Kick, Wire, hex, unhex};
use crate::hub::{Bus, CloseReason, EncodedFrame, Hub, LiveEvent, PushedEntry, Seat, TooManyConnections};
use crate::ratelimit::{SharedLimits, Taken};
use crate::services::Context;
use crate::services::cache::Stale;

/// How long an instance waits for the others to confirm a cache invalidation (one that is
/// frozen rather than gone holds changes up this long).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// Events waiting to be published before new ones are dropped (and counted).
const OUTBOX: usize = 65_536;
/// Messages received from Redis waiting for the receiving task. Beyond this the task has
/// fallen behind and every connection here reads the store instead; Redis's client library
/// holds only 32 by default, which a burst of sends overflows at once.
const RECEIVED: usize = 16_384;
/// Publishes sent to Redis in one command, at most (Redis runs the batch in one go: up to 4 MiB
/// of frames, a fraction of a millisecond's work).
const PUBLISH_BATCH: usize = 512;
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
/// While news from other instances cannot arrive, every local connection reads the store this
/// often (what was sent through other instances, and whether its session still lasts)...
const POLL_WHILE_AWAY: Duration = Duration::from_secs(5);
/// ...or less often, so that the store is asked about this many connections a second at most.
const POLLS_PER_SECOND: usize = 2_000;

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
#[error("connecting to Redis: {0}")]
pub struct BusError(String);

/// A publish waiting to be sent: the channel, the payload, and the device to wake if no instance
/// receives it (it announces something stored for a device that holds no socket anywhere).
type Outgoing = (String, Arc<str>, Option<DeviceId>);

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
    outbox: mpsc::Sender<Outgoing>,
    listen: mpsc::UnboundedSender<Listen>,
    publisher: Link,
    subscriber: SubscriberClient,
    /// Set by [`close`](Self::close): the heartbeat stops.
    closed: AtomicBool,
    /// Invalidations this instance published, waiting for the others to confirm them.
    confirmations: Arc<Confirmations>,
    /// The seats of the connections held here, renewed while they last.
    seats: Arc<shared::HeldSeats>,
    next_seat: AtomicU64,
    /// This deployment's channels and keys.
    names: Names,
}

impl RedisBus {
    /// Connects to Redis at `url` and starts carrying `hub`'s events and invalidations of
    /// `ctx`'s caches to and from the other instances.
    pub async fn connect(url: &str, hub: &Arc<Hub>, ctx: &Arc<Context>) -> Result<Arc<Self>, BusError> {
        let deployment = ctx.store.deployment_id().await.map_err(|err| BusError(err.to_string()))?;
        let names = Names::new(&deployment);
        let config = RedisConfig::from_url(url).map_err(|err| BusError(err.to_string()))?;
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|performance| {
                performance.default_command_timeout = COMMAND_TIMEOUT;
                performance.broadcast_channel_capacity = RECEIVED;
            })
            .with_connection_config(|connection| {
                connection.connection_timeout = COMMAND_TIMEOUT;
                connection.unresponsive = UnresponsiveConfig { max_timeout: Some(UNRESPONSIVE), interval: HEARTBEAT };
                // Commands leave at once rather than wait for the acknowledgement of the write
                // before (Nagle's algorithm, which the client library leaves on by default): a
                // rate-limit check must not wait behind a publish.
                connection.tcp = TcpConfig { nodelay: Some(true), ..TcpConfig::default() };
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let publisher = builder.build().map_err(|err| BusError(err.to_string()))?;
        let subscriber = builder.build_subscriber_client().map_err(|err| BusError(err.to_string()))?;
        publisher.init().await.map_err(|err| BusError(err.to_string()))?;
        subscriber.init().await.map_err(|err| BusError(err.to_string()))?;
        let origin = rand::random();
        subscriber
            .subscribe(vec![names.caches(), names.confirmations(origin)])
            .await
            .map_err(|err| BusError(err.to_string()))?;

        let (outbox, queued) = mpsc::channel(OUTBOX);
        let (listen, changes) = mpsc::unbounded_channel();
        let publisher = Link::new(publisher);
        tokio::spawn(publish(publisher.clone(), queued, Arc::downgrade(hub)));
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
            names,
        });
        tokio::spawn(heartbeat(Arc::downgrade(&bus)));
        tokio::spawn(shared::renew_seats(Arc::downgrade(&bus)));
        let local = Local {
            names: bus.names.clone(),
            hub: Arc::downgrade(hub),
            ctx: Arc::downgrade(ctx),
            outbox: bus.outbox.clone(),
            confirmations: bus.confirmations.clone(),
            catching_up: Arc::default(),
            away: Arc::default(),
        };
        tokio::spawn(manage(subscriber.clone(), changes, Arc::downgrade(&bus), local.clone()));
        tokio::spawn(receive(subscriber, local, listen, origin));
        Ok(bus)
    }

    /// Closes both connections.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.subscriber.quit().await;
        let _ = self.publisher.client().quit().await;
    }

    /// Tells the other instances that live events and invalidations from this one went unsent
    /// while Redis did not answer it: they empty their caches and their connections read the
    /// store. (Their own link may have been fine all along, so they would not know otherwise.)
    /// If this fails too, Redis is away again and this is told when it is back.
    async fn tell_missed(&self) {
        let Ok(payload) = serde_json::to_string(&Envelope { o: self.origin, w: Change { i: 0, f: Forget::Missed } })
        else {
            return;
        };
        let channel = self.names.caches();
        let told = self.publisher.tell(|redis| async move { redis.publish::<i64, _, _>(channel, payload).await }).await;
        if told.is_ok() {
            metrics::counter!("roost_bus_published_total").increment(1);
        }
    }

    /// Publishes `wire` on each device's channel; `wake` says whether a device no instance
    /// listens for is to be woken (push notifications), `author` is never woken.
    fn send(&self, devices: &[DeviceId], wire: &Wire, wake: bool, author: Option<DeviceId>) {
        let Ok(payload) = serde_json::to_string(&Envelope { o: self.origin, w: wire.clone() }) else { return };
        let payload: Arc<str> = payload.into();
        for device in devices {
            let wake = (wake && Some(*device) != author).then_some(*device);
            if self.outbox.try_send((self.names.device(device), payload.clone(), wake)).is_err() {
                // A wake-up lost while Redis is slow or away: the device's connection catches up
                // at its instance's next resync or its own next reconnect.
                metrics::counter!("roost_bus_dropped_total").increment(1);
            }
        }
    }
}

impl Bus for RedisBus {
    fn forward(&self, devices: &[DeviceId], event: &LiveEvent, wake: bool) {
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
        self.send(devices, &wire, wake && event.is_durable(), event.author());
    }

    fn kick(&self, device: DeviceId, reason: CloseReason) {
        let r = match reason {
            CloseReason::Replaced => Kick::Replaced,
            CloseReason::SlowConsumer => Kick::SlowConsumer,
            CloseReason::Revoked => Kick::Revoked,
        };
        self.send(&[device], &Wire::Kick { r }, false, None);
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
        let channel = self.names.caches();
        let confirmations = self.confirmations.clone();
        let (id, confirmed) = confirmations.open();
        let payload = serde_json::to_string(&Envelope { o: self.origin, w: Change { i: id, f: Forget::of(stale) } });
        Box::pin(async move {
            let Ok(payload) = payload else { return confirmations.close(id) };
            // Every instance listening, this one included, confirms once it has applied the
            // change; the change is answered only then, so no instance serves from a stale value
            // after that. An instance that does not listen now distrusts its caches until it
            // listens again.
            match publisher.tell(|redis| async move { redis.publish::<i64, _, _>(channel, payload).await }).await {
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
                    tracing::debug!(error = %err, "telling other instances of a cache change failed");
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
        Box::pin(shared::take_seat(self.publisher.clone(), self.names.clone(), self.seats.clone(), seat, device, max))
    }

    fn set_visible(&self, seat: Seat, visible: bool) -> BoxFuture<'static, Option<u32>> {
        Box::pin(shared::set_visible(self.publisher.clone(), self.names.clone(), self.seats.clone(), seat, visible))
    }

    fn leave_seat(&self, seat: Seat) -> BoxFuture<'static, Option<u32>> {
        lock(&self.seats).remove(&seat.name);
        Box::pin(shared::leave_seat(self.publisher.clone(), self.names.clone(), seat))
    }

    fn claim_wake(&self, device: DeviceId, hold: Duration) -> BoxFuture<'static, Option<bool>> {
        Box::pin(shared::claim_wake(self.publisher.clone(), self.names.wake(&device), hold))
    }

    fn release_wake(&self, device: DeviceId) {
        tokio::spawn(shared::release_wake(self.publisher.clone(), self.names.wake(&device)));
    }
}

impl SharedLimits for RedisBus {
    fn take(&self, bucket: String, per_minute: u32, want: u32) -> BoxFuture<'static, Result<Taken, ()>> {
        Box::pin(shared::take_tokens(self.publisher.clone(), self.names.bucket(&bucket), per_minute, want))
    }
}

/// What the bus delivers to on this instance.
#[derive(Clone)]
struct Local {
    names: Names,
    hub: Weak<Hub>,
    ctx: Weak<Context>,
    /// For confirmations to other instances.
    outbox: mpsc::Sender<Outgoing>,
    confirmations: Arc<Confirmations>,
    /// Whether a catch-up is gathering (see [`Local::catch_up_soon`]).
    catching_up: Arc<AtomicBool>,
    /// Whether news from other instances cannot arrive now (the subscriber connection is lost
    /// and not yet listening again); see [`Local::lost_news`].
    away: Arc<AtomicBool>,
}

impl Local {
    /// Notes that news from other instances cannot arrive: the caches are not trusted, and until
    /// everything is listened on again every local connection reads the store now and then, so
    /// it still gets what is sent through other instances (late) and a socket whose session was
    /// logged out elsewhere still closes.
    fn lost_news(&self) {
        let Some(ctx) = self.ctx.upgrade() else { return };
        ctx.distrust_caches();
        if self.away.swap(true, Ordering::Relaxed) {
            return;
        }
        let local = self.clone();
        tokio::spawn(async move {
            loop {
                let Some(hub) = local.hub.upgrade() else { return };
                let devices = hub.local_devices();
                let pause = POLL_WHILE_AWAY.max(Duration::from_secs((devices.len() / POLLS_PER_SECOND) as u64));
                drop(hub);
                tokio::time::sleep(pause).await;
                if !local.away.load(Ordering::Relaxed) {
                    return;
                }
                let Some(hub) = local.hub.upgrade() else { return };
                metrics::counter!("roost_bus_resyncs_total").increment(1);
                hub.publish_local(hub.local_devices(), LiveEvent::Resync);
            }
        });
    }

    /// Empties the caches and makes every local connection read the store, a moment from now:
    /// when Redis itself comes back every instance that published meanwhile says so at its next
    /// heartbeat, and one catch-up covers them all.
    fn catch_up_soon(&self) {
        if self.catching_up.swap(true, Ordering::Relaxed) {
            return;
        }
        let local = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HEARTBEAT).await;
            local.catching_up.store(false, Ordering::Relaxed);
            if let (Some(hub), Some(ctx)) = (local.hub.upgrade(), local.ctx.upgrade()) {
                ctx.forget_everything();
                hub.publish_local(hub.local_devices(), LiveEvent::Resync);
                metrics::counter!("roost_bus_resyncs_total").increment(1);
                tracing::info!(
                    "another instance could not publish for a while; caches emptied, connections read the store"
                );
            }
        });
    }
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
        let (published, _): (Result<(), _>, Result<(), _>) =
            tokio::join!(bus.publisher.client().ping(None), bus.subscriber.ping(None));
        if bus.publisher.note(&published) {
            bus.tell_missed().await;
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Publishes each channel's message (`ARGV` holds channel, message, channel, message...) and
/// returns how many instances received each. One command for a batch: the client library
/// writes each command of a pipeline to the socket with a flush of its own, so a pipeline of
/// `PUBLISH`es cost a system call here and a read in Redis per message.
const PUBLISH_ALL: &str = r"
local heard = {}
for i = 1, #ARGV, 2 do
    heard[#heard + 1] = redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return heard
";

static PUBLISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::from_lua(PUBLISH_ALL));

/// Sends what was queued for other instances, many publishes per round trip. A publish that no
/// instance received went to a device without a socket anywhere: Redis's count of receivers
/// says so exactly, and the device is handed to the hub's waker if the news was durable.
async fn publish(publisher: Link, mut queued: mpsc::Receiver<Outgoing>, hub: Weak<Hub>) {
    while let Some(first) = queued.recv().await {
        let mut batch = vec![first];
        while batch.len() < PUBLISH_BATCH {
            match queued.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let args: Vec<fred::types::Value> =
            batch.iter().flat_map(|(channel, payload, _)| [channel.as_str().into(), payload.as_ref().into()]).collect();
        let sent = publisher
            .tell(|redis| async move {
                PUBLISH_SCRIPT.evalsha_with_reload::<Vec<i64>, _, _>(&redis, Vec::<String>::new(), args).await
            })
            .await;
        let unheard: Vec<DeviceId> = match sent {
            Ok(receivers) => {
                metrics::counter!("roost_bus_published_total").increment(batch.len() as u64);
                // A count missing from the answer: a needless wake-up beats none.
                batch
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| receivers.get(*i).is_none_or(|count| *count == 0))
                    .filter_map(|(_, (_, _, wake))| *wake)
                    .collect()
            }
            Err(err) => {
                metrics::counter!("roost_bus_dropped_total").increment(batch.len() as u64);
                tracing::debug!(error = %err, lost = batch.len(), "publishing live events to Redis failed");
                // Whether anyone holds their sockets is unknown: a needless wake-up beats none.
                batch.iter().filter_map(|(_, _, wake)| *wake).collect()
            }
        };
        if !unheard.is_empty()
            && let Some(hub) = hub.upgrade()
        {
            hub.wake(unheard);
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
                // While the connection is down the reconnect listens again for every device held
                // here (this one is held already), so the socket need not wait for Redis.
                if subscriber.is_connected()
                    && let Err(err) = subscriber.subscribe(local.names.device(&device)).await
                {
                    tracing::warn!(error = %err, "subscribing to a device's channel failed");
                }
                if let Some(bus) = bus.upgrade() {
                    bus.send(&[device], &Wire::Kick { r: Kick::Replaced }, false, None);
                }
                let _ = done.send(());
            }
            Listen::Unwatch(device) => {
                let _ = subscriber.unsubscribe(local.names.device(&device)).await;
            }
            Listen::Again => {
                let (Some(hub), Some(ctx)) = (local.hub.upgrade(), local.ctx.upgrade()) else { return };
                let devices = hub.local_devices();
                let Some(origin) = bus.upgrade().map(|bus| bus.origin) else { return };
                let mut channels = vec![local.names.caches(), local.names.confirmations(origin)];
                channels.extend(devices.iter().map(|device| local.names.device(device)));
                if let Err(err) = subscriber.subscribe(channels).await {
                    tracing::warn!(error = %err, "subscribing again after a reconnect failed; retrying");
                    let Some(bus) = bus.upgrade() else { return };
                    tokio::spawn(async move {
                        tokio::time::sleep(HEARTBEAT).await;
                        let _ = bus.listen.send(Listen::Again);
                    });
                    continue;
                }
                local.away.store(false, Ordering::Relaxed);
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
                    match local.names.channel(&message.channel) {
                        Some(Channel::Caches) => {
                            let Some(ctx) = local.ctx.upgrade() else { return };
                            match serde_json::from_str::<Envelope<Change>>(text) {
                                Ok(Envelope { o, w: Change { f: Forget::Missed, .. } }) => {
                                    metrics::counter!("roost_bus_received_total").increment(1);
                                    if o != origin {
                                        local.catch_up_soon();
                                    }
                                }
                                Ok(Envelope { o, w: Change { i, f } }) => {
                                    metrics::counter!("roost_bus_received_total").increment(1);
                                    if o != origin && let Some(stale) = f.stale() {
                                        ctx.forget(stale);
                                    }
                                    let _ = local.outbox.try_send((local.names.confirmations(o), i.to_string().into(), None));
                                }
                                Err(_) => {}
                            }
                        }
                        Some(Channel::Confirmations) => {
                            if let Ok(id) = text.parse() {
                                local.confirmations.confirm(id);
                            }
                        }
                        Some(Channel::Device(device)) => {
                            let Some(hub) = local.hub.upgrade() else { return };
                            if let Ok(envelope) = serde_json::from_str::<Envelope<Wire>>(text)
                                && envelope.o != origin
                            {
                                metrics::counter!("roost_bus_received_total").increment(1);
                                deliver(&hub, device, envelope.w);
                            }
                        }
                        None => {}
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    let (Some(hub), Some(ctx)) = (local.hub.upgrade(), local.ctx.upgrade()) else { return };
                    caught_up(&hub, &ctx);
                }
                Err(RecvError::Closed) => return,
            },
            error = errors.recv() => match error {
                Ok(_) | Err(RecvError::Lagged(_)) => local.lost_news(),
                Err(RecvError::Closed) => return,
            },
            reconnect = reconnects.recv() => match reconnect {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    local.lost_news();
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
            author: None,
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
