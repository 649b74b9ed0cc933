//! In-process fan-out of live events to connected devices.
//!
//! Durable delivery never depends on this: everything stored is also returned by sync. The hub
//! carries what is only live (ephemeral sends, typing, read receipts, presence) and pushes stored
//! entries to connected devices as they are committed. Nobody listening is normal. A subscriber
//! whose buffer is full is cut off as a slow consumer; it reconnects and catches up from the
//! store, so memory per connection stays bounded.
//!
//! Each subscriber has a mailbox rather than a channel: a bounded queue that holds no memory
//! while empty (a tokio channel allocates a block of slots and padded counters up front, over a
//! kilobyte per idle connection).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use futures::future::BoxFuture;

use roost_proto::socket::ServerFrame;
use roost_proto::{ConversationId, DeviceId, UserId};
use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::services::cache::Stale;

/// A server frame encoded once as JSON text and shared, not copied, by every connection it goes
/// to. (It holds the WebSocket library's text type, so the gateway writes it without a copy or
/// a second UTF-8 check; nothing outside this type and the gateway sees that library.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame(Utf8Bytes);

impl EncodedFrame {
    /// Encodes a frame.
    pub fn encode(frame: &ServerFrame) -> Self {
        // Serializing these plain data types cannot fail; an empty frame would only be ignored.
        Self(serde_json::to_string(frame).unwrap_or_default().into())
    }

    /// A frame already encoded (as it travels between processes).
    pub fn from_text(text: String) -> Self {
        Self(text.into())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The text as the gateway writes it (shared, not copied).
    pub(crate) fn text(&self) -> Utf8Bytes {
        self.0.clone()
    }
}

/// Something a connected device should learn now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LiveEvent {
    /// A conversation entry was committed, encoded once for every recipient. (Behind an `Arc`
    /// so queued events stay small: connection buffers are per device.)
    Entry(Arc<PushedEntry>),
    /// Something was added to the device's queue; fetch it.
    Queued,
    /// Any other server frame, encoded once (ephemeral, typing, read receipt, presence, device
    /// list changes).
    Frame(EncodedFrame),
    /// The session whose token has this hash was logged out: a connection authenticated with it
    /// closes.
    SessionEnded([u8; 32]),
    /// An entry was committed whose frame did not travel with the news (from another instance,
    /// too large for the bus): read it from the store.
    Committed {
        /// The conversation.
        conversation_id: ConversationId,
        /// The entry's sequence number.
        seq: u64,
        /// The devices whose membership ends with this entry (see [`PushedEntry::ends_for`]).
        ends_for: Vec<DeviceId>,
    },
    /// Events from other instances may have been lost (the bus reconnected or fell behind):
    /// read everything missed from the store.
    Resync,
}

/// Where live events for devices whose sockets are held by other instances go: the seam between
/// this instance's mailboxes and the instances sharing its database. Without one (SQLite, or
/// PostgreSQL without Redis) every event stays in this process.
pub trait Bus: Send + Sync + 'static {
    /// Carries `event` to whichever instances hold sockets of `devices` (none of them held here);
    /// with `wake`, for a durable event, hands the devices no instance holds (its author aside)
    /// to [`Hub::wake`].
    fn forward(&self, devices: &[DeviceId], event: &LiveEvent, wake: bool);
    /// Ends the subscription of `device` on whichever instance holds it.
    fn kick(&self, device: DeviceId, reason: CloseReason);
    /// Starts receiving the device's events from other instances, then tells them that this
    /// instance now holds the device's socket (one held elsewhere closes as replaced); completes
    /// once events will arrive (or the bus has given up for now and will catch up when it can).
    fn watch(&self, device: DeviceId) -> BoxFuture<'static, ()>;
    /// Stops receiving the device's events from other instances.
    fn unwatch(&self, device: DeviceId);
    /// Tells every other instance to forget what `stale` makes stale in its caches; completes
    /// once the bus took the news (or failed to).
    fn forget(&self, stale: Stale) -> BoxFuture<'static, ()>;
    /// Counts a connection of `user`'s `device` against the user's cap over all instances
    /// (another connection of the same device does not count: it is being replaced).
    fn take_seat(
        &self,
        user: UserId,
        device: DeviceId,
        max: u32,
    ) -> BoxFuture<'static, Result<Seat, TooManyConnections>>;
    /// Marks a seat's connection visible for presence or not; completes with how many of its
    /// user's connections are visible on any instance after, when the bus could tell.
    fn set_visible(&self, seat: Seat, visible: bool) -> BoxFuture<'static, Option<u32>>;
    /// Gives a seat back; completes with how many of its user's connections are still visible
    /// on any instance, when the bus could tell.
    fn leave_seat(&self, seat: Seat) -> BoxFuture<'static, Option<u32>>;
    /// Claims the device's next wake-up for `hold` (push notifications: one instance wakes a
    /// device); completes with whether this instance got it, when the bus could tell.
    fn claim_wake(&self, device: DeviceId, hold: std::time::Duration) -> BoxFuture<'static, Option<bool>>;
    /// Gives the device's wake-up claim back (it connected or synced).
    fn release_wake(&self, device: DeviceId);
}

/// Where devices that hold no socket here go when something durable (an entry, a queue item)
/// was committed for them: the push notifier, which finds out whether they hold one elsewhere
/// and wakes those that do not. Must return at once: it is called on the send path.
pub trait Waker: Send + Sync + 'static {
    /// Something was committed for these devices, none of which holds a socket here.
    fn wake(&self, devices: Vec<DeviceId>);
}

impl LiveEvent {
    /// Whether the event announces something stored (what an offline device is woken for).
    pub fn is_durable(&self) -> bool {
        matches!(self, LiveEvent::Entry(_) | LiveEvent::Queued | LiveEvent::Committed { .. })
    }

    /// The device whose action this event announces, if any.
    pub fn author(&self) -> Option<DeviceId> {
        match self {
            LiveEvent::Entry(entry) => entry.author,
            _ => None,
        }
    }
}

/// A connection counted against its user's cap over all instances, until given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    /// The connection's user.
    pub user: UserId,
    /// The bus's name for this connection.
    pub name: String,
}

/// A committed entry as pushed to connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedEntry {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The entry's sequence number.
    pub seq: u64,
    /// The encoded `entry` frame.
    pub frame: EncodedFrame,
    /// The devices whose membership ends with this entry (removed by this commit, or leaving):
    /// a connection of one of them pushes nothing of the conversation after it.
    pub ends_for: Vec<DeviceId>,
    /// The device that sent it, when known here: it is never woken for its own entry.
    pub author: Option<DeviceId>,
}

/// Why the hub ended a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer connection of the same device subscribed.
    Replaced,
    /// The subscriber's buffer was full.
    SlowConsumer,
    /// The device was revoked.
    Revoked,
}

/// Refused: the user already has the maximum number of connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many connections for this user")]
pub struct TooManyConnections;

struct Subscriber {
    id: u64,
    user: UserId,
    mailbox: Arc<Mailbox>,
    /// Opted in to presence.
    visible: bool,
}

/// One subscriber's bounded queue of events.
struct Mailbox {
    inbox: Mutex<Inbox>,
    /// Wakes the one consumer.
    arrived: Notify,
}

struct Inbox {
    events: VecDeque<LiveEvent>,
    capacity: usize,
    /// Set once the hub ends the subscription; queued events are still delivered first.
    closed: Option<CloseReason>,
    /// A `Resync` waits in `events`: it will read the store when taken, which covers any
    /// further resync asked for until then, so those are not queued (a burst of them would
    /// otherwise fill the queue and cut the connection off as slow).
    resync_queued: bool,
}

/// Queues kept after a burst are given back once drained, beyond this many slots.
const KEPT_SLOTS: usize = 16;

impl Inbox {
    /// Takes the oldest event, giving back the room of a burst once the queue is empty.
    fn take(&mut self) -> Option<LiveEvent> {
        let event = self.events.pop_front()?;
        if matches!(event, LiveEvent::Resync) {
            self.resync_queued = false;
        }
        if self.events.is_empty() && self.events.capacity() > KEPT_SLOTS {
            self.events = VecDeque::new();
        }
        Some(event)
    }
}

/// What offering an event to a mailbox did.
enum Offer {
    Taken,
    Full,
    Closed,
}

impl Mailbox {
    fn new(capacity: usize) -> Self {
        Self {
            inbox: Mutex::new(Inbox { events: VecDeque::new(), capacity, closed: None, resync_queued: false }),
            arrived: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn offer(&self, event: &LiveEvent) -> Offer {
        let offer = {
            let mut inbox = self.lock();
            if inbox.closed.is_some() {
                Offer::Closed
            } else if matches!(event, LiveEvent::Resync) && inbox.resync_queued {
                return Offer::Taken;
            } else if inbox.events.len() >= inbox.capacity {
                Offer::Full
            } else {
                inbox.resync_queued |= matches!(event, LiveEvent::Resync);
                inbox.events.push_back(event.clone());
                Offer::Taken
            }
        };
        if matches!(offer, Offer::Taken) {
            self.arrived.notify_one();
        }
        offer
    }

    fn close(&self, reason: CloseReason) {
        self.lock().closed.get_or_insert(reason);
        self.arrived.notify_one();
    }
}

#[derive(Default)]
struct State {
    devices: HashMap<DeviceId, Subscriber>,
    per_user: HashMap<UserId, u32>,
    /// Subscribers here opted in to presence, per user.
    visible_per_user: HashMap<UserId, u32>,
}

impl State {
    fn count_visible(&mut self, user: UserId, visible: bool) {
        let count = self.visible_per_user.entry(user).or_insert(0);
        *count = if visible { *count + 1 } else { count.saturating_sub(1) };
        if *count == 0 {
            self.visible_per_user.remove(&user);
        }
    }
}

/// Subscribers by device. A std mutex is enough: it is held only to look up or swap senders,
/// never across an await.
pub struct Hub {
    state: Mutex<State>,
    next_id: AtomicU64,
    shutdown: watch::Sender<bool>,
    bus: OnceLock<Arc<dyn Bus>>,
    waker: OnceLock<Arc<dyn Waker>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            next_id: AtomicU64::new(0),
            shutdown: watch::Sender::new(false),
            bus: OnceLock::new(),
            waker: OnceLock::new(),
        }
    }
}

/// A device's live subscription; dropping it unsubscribes (unless a newer one replaced it).
pub struct Subscription {
    hub: Arc<Hub>,
    device: DeviceId,
    id: u64,
    mailbox: Arc<Mailbox>,
}

impl Subscription {
    /// The next event for the device; `None` once the hub has ended the subscription and every
    /// event queued before that was taken. Cancel-safe: an event is only taken when returned.
    pub async fn next(&mut self) -> Option<LiveEvent> {
        loop {
            {
                let mut inbox = self.mailbox.lock();
                if let Some(event) = inbox.take() {
                    return Some(event);
                }
                if inbox.closed.is_some() {
                    return None;
                }
            }
            // A notification sent since the check above is kept as a permit, so none is lost.
            self.mailbox.arrived.notified().await;
        }
    }

    /// The next event if one is waiting, without waiting for one. `None` says nothing about
    /// whether the subscription has ended: `next` tells that.
    pub fn try_next(&mut self) -> Option<LiveEvent> {
        self.mailbox.lock().take()
    }

    /// Why the hub ended this subscription, once `next` has returned `None`.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.mailbox.lock().closed
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.device, Some(self.id), None);
    }
}

impl Hub {
    /// Subscribes a device of `user`. A second subscription of the same device replaces the
    /// first (one consumer per device); otherwise the user may hold at most `max_per_user`.
    pub fn subscribe(
        self: &Arc<Self>,
        user: UserId,
        device: DeviceId,
        capacity: usize,
        max_per_user: u32,
    ) -> Result<Subscription, TooManyConnections> {
        let mailbox = Arc::new(Mailbox::new(capacity.max(1)));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        match state.devices.remove(&device) {
            Some(previous) => {
                previous.mailbox.close(CloseReason::Replaced);
                if previous.visible {
                    state.count_visible(previous.user, false);
                }
            }
            None => {
                let count = state.per_user.entry(user).or_insert(0);
                if *count >= max_per_user {
                    return Err(TooManyConnections);
                }
                *count += 1;
            }
        }
        state.devices.insert(device, Subscriber { id, user, mailbox: mailbox.clone(), visible: false });
        metrics::gauge!("roost_gateway_subscriptions").set(state.devices.len() as f64);
        Ok(Subscription { hub: self.clone(), device, id, mailbox })
    }

    /// Tells every connection the server is shutting down.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Completes (`changed()`) when the server starts shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Connects the hub to the other instances. Set once, before serving.
    pub fn set_bus(&self, bus: Arc<dyn Bus>) {
        let _ = self.bus.set(bus);
    }

    /// The bus to the other instances, if any.
    pub fn bus(&self) -> Option<&Arc<dyn Bus>> {
        self.bus.get()
    }

    /// Hands devices without a socket here to `waker` whenever something durable is published
    /// for them. Set once, before serving.
    pub fn set_waker(&self, waker: Arc<dyn Waker>) {
        let _ = self.waker.set(waker);
    }

    /// Waits until events for `device` from other instances will reach this instance (at once
    /// without a bus).
    pub async fn watch(&self, device: DeviceId) {
        if let Some(bus) = self.bus.get() {
            bus.watch(device).await;
        }
    }

    /// Tells the other instances, if any, what became stale in their caches; completes once they
    /// were told.
    pub async fn forget_elsewhere(&self, stale: Stale) {
        if let Some(bus) = self.bus.get() {
            bus.forget(stale).await;
        }
    }

    /// Counts a connection against its user's cap over all instances (without a bus there are
    /// none: [`subscribe`](Self::subscribe) counts this instance's connections).
    pub async fn take_seat(
        &self,
        user: UserId,
        device: DeviceId,
        max_per_user: u32,
    ) -> Result<Option<Seat>, TooManyConnections> {
        match self.bus.get() {
            Some(bus) => bus.take_seat(user, device, max_per_user).await.map(Some),
            None => Ok(None),
        }
    }

    /// Gives a seat back (after its subscription ended); returns how many of the user's
    /// connections are still visible for presence, on any instance when the bus could tell,
    /// else here.
    pub async fn leave_seat(&self, user: &UserId, seat: Option<Seat>) -> u32 {
        let anywhere = match (seat, self.bus.get()) {
            (Some(seat), Some(bus)) => bus.leave_seat(seat).await,
            _ => None,
        };
        anywhere.unwrap_or_else(|| self.visible_connections_of(user))
    }

    /// Marks a subscription's connection visible for presence or not; returns how many of its
    /// user's connections are visible after, on any instance when the bus could tell, else here.
    pub async fn set_visible(&self, subscription: &Subscription, seat: Option<&Seat>, visible: bool) -> u32 {
        let user = {
            let mut state = self.lock();
            let Some(subscriber) = state.devices.get_mut(&subscription.device).filter(|s| s.id == subscription.id)
            else {
                // Replaced or cut off: the connection is closing.
                return 0;
            };
            let (user, was) = (subscriber.user, subscriber.visible);
            subscriber.visible = visible;
            if was != visible {
                state.count_visible(user, visible);
            }
            user
        };
        let anywhere = match (seat, self.bus.get()) {
            (Some(seat), Some(bus)) => bus.set_visible(seat.clone(), visible).await,
            _ => None,
        };
        anywhere.unwrap_or_else(|| self.visible_connections_of(&user))
    }

    /// How many of the user's connections here are visible for presence.
    pub fn visible_connections_of(&self, user: &UserId) -> u32 {
        self.lock().visible_per_user.get(user).copied().unwrap_or(0)
    }

    /// Ends a device's subscription (for example because it was revoked), here or on the
    /// instance that holds it.
    pub fn kick(&self, device: &DeviceId, reason: CloseReason) {
        if self.is_online(device) {
            self.remove(device, None, Some(reason));
        } else if let Some(bus) = self.bus.get() {
            bus.kick(*device, reason);
        }
    }

    /// Ends the subscription of a device held here (what a kick from another instance does).
    pub fn kick_local(&self, device: &DeviceId, reason: CloseReason) {
        self.remove(device, None, Some(reason));
    }

    /// The devices subscribed here.
    pub fn local_devices(&self) -> Vec<DeviceId> {
        self.lock().devices.keys().copied().collect()
    }

    /// Whether no device is subscribed here.
    pub fn is_idle(&self) -> bool {
        self.lock().devices.is_empty()
    }

    /// Whether any device anywhere may be listening or be woken: one is subscribed here, other
    /// instances may hold sockets, or offline devices are woken (lets callers skip looking up
    /// recipients when none of these).
    pub fn may_have_listeners(&self) -> bool {
        self.bus.get().is_some() || self.waker.get().is_some() || !self.is_idle()
    }

    /// Whether a device is subscribed.
    pub fn is_online(&self, device: &DeviceId) -> bool {
        self.lock().devices.contains_key(device)
    }

    /// How many devices of the user are subscribed.
    pub fn connections_of(&self, user: &UserId) -> u32 {
        self.lock().per_user.get(user).copied().unwrap_or(0)
    }

    /// Offers `event` to each listed device: to its subscriber here, or through the bus to the
    /// instance that holds it. A durable event for devices with no socket anywhere (other than
    /// its author) goes to the waker: directly without a bus, else once the bus found that no
    /// instance holds them. A subscriber whose buffer is full is cut off as a slow consumer.
    /// Returns how many subscribers here took the event.
    pub fn publish(&self, devices: impl IntoIterator<Item = DeviceId>, event: LiveEvent) -> usize {
        self.publish_with(devices, event, true)
    }

    /// [`publish`](Self::publish) for news no device should be woken for (a read position
    /// synced from another of the user's devices, a low KeyPackage stock): a device learns it
    /// when it next connects.
    pub fn publish_without_waking(&self, devices: impl IntoIterator<Item = DeviceId>, event: LiveEvent) -> usize {
        self.publish_with(devices, event, false)
    }

    fn publish_with(&self, devices: impl IntoIterator<Item = DeviceId>, event: LiveEvent, wake: bool) -> usize {
        let bus = self.bus.get();
        let wake = wake && event.is_durable();
        let waker = self.waker.get().filter(|_| wake);
        let mut elsewhere = Vec::new();
        let delivered = self.offer(devices, &event, |device| {
            if bus.is_some() || waker.is_some() {
                elsewhere.push(device);
            }
        });
        if elsewhere.is_empty() {
            return delivered;
        }
        match bus {
            Some(bus) => bus.forward(&elsewhere, &event, wake),
            None => {
                let author = event.author();
                elsewhere.retain(|device| Some(*device) != author);
                self.wake(elsewhere);
            }
        }
        delivered
    }

    /// Hands devices without a socket anywhere to the waker, if there is one.
    pub fn wake(&self, devices: Vec<DeviceId>) {
        if let Some(waker) = self.waker.get()
            && !devices.is_empty()
        {
            waker.wake(devices);
        }
    }

    /// Offers `event` to the listed devices' subscribers here only (what arrives from other
    /// instances). Returns how many took it.
    pub fn publish_local(&self, devices: impl IntoIterator<Item = DeviceId>, event: LiveEvent) -> usize {
        self.offer(devices, &event, |_| {})
    }

    /// Offers the event to the subscribers here; hands each device without one to `absent`.
    fn offer(
        &self,
        devices: impl IntoIterator<Item = DeviceId>,
        event: &LiveEvent,
        mut absent: impl FnMut(DeviceId),
    ) -> usize {
        let mut slow = Vec::new();
        let mut delivered = 0;
        {
            let state = self.lock();
            for device in devices {
                let Some(subscriber) = state.devices.get(&device) else {
                    absent(device);
                    continue;
                };
                match subscriber.mailbox.offer(event) {
                    Offer::Taken => delivered += 1,
                    Offer::Full => slow.push(device),
                    Offer::Closed => {}
                }
            }
        }
        for device in slow {
            metrics::counter!("roost_gateway_slow_consumers_total").increment(1);
            self.remove(&device, None, Some(CloseReason::SlowConsumer));
        }
        delivered
    }

    /// Removes a subscriber: only the one with `id` when given (a replaced connection must not
    /// remove its successor), recording `reason` for its connection to report.
    fn remove(&self, device: &DeviceId, id: Option<u64>, reason: Option<CloseReason>) {
        let mut state = self.lock();
        let matches = state.devices.get(device).is_some_and(|s| id.is_none_or(|id| s.id == id));
        if !matches {
            return;
        }
        if let Some(subscriber) = state.devices.remove(device) {
            if let Some(reason) = reason {
                subscriber.mailbox.close(reason);
            }
            if let Some(bus) = self.bus.get() {
                bus.unwatch(*device);
            }
            if let Some(count) = state.per_user.get_mut(&subscriber.user) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    state.per_user.remove(&subscriber.user);
                }
            }
            if subscriber.visible {
                state.count_visible(subscriber.user, false);
            }
        }
        metrics::gauge!("roost_gateway_subscriptions").set(state.devices.len() as f64);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // matters more than losing live delivery, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u8) -> DeviceId {
        DeviceId::from_bytes([n; 32])
    }

    fn user(n: u8) -> UserId {
        UserId::from_bytes([n; 32])
    }

    #[tokio::test]
    async fn one_consumer_per_device_and_a_cap_per_user() {
        let hub = Arc::new(Hub::default());
        let mut first = hub.subscribe(user(1), device(1), 4, 2).unwrap();
        let _second_device = hub.subscribe(user(1), device(2), 4, 2).unwrap();
        assert!(hub.subscribe(user(1), device(3), 4, 2).is_err(), "the cap counts devices");
        assert_eq!(hub.connections_of(&user(1)), 2);

        let mut replacement = hub.subscribe(user(1), device(1), 4, 2).unwrap();
        assert!(first.next().await.is_none());
        assert_eq!(first.close_reason(), Some(CloseReason::Replaced));
        drop(first);
        assert!(hub.is_online(&device(1)), "dropping the replaced subscription keeps the new one");
        assert_eq!(hub.publish([device(1)], LiveEvent::Queued), 1);
        assert_eq!(replacement.next().await, Some(LiveEvent::Queued));
        drop(replacement);
        assert_eq!(hub.connections_of(&user(1)), 1);
    }

    #[tokio::test]
    async fn resyncs_waiting_in_a_buffer_count_once() {
        let hub = Arc::new(Hub::default());
        let mut subscription = hub.subscribe(user(1), device(1), 2, 5).unwrap();
        assert_eq!(hub.publish_local([device(1)], LiveEvent::Queued), 1);
        // However many are asked for while one waits, one resync is queued: it reads the store
        // when taken, which covers them all, and the buffer does not fill.
        for _ in 0..10 {
            assert_eq!(hub.publish_local([device(1)], LiveEvent::Resync), 1);
        }
        assert!(hub.is_online(&device(1)));
        assert_eq!(subscription.next().await, Some(LiveEvent::Queued));
        assert_eq!(subscription.next().await, Some(LiveEvent::Resync));
        // Once taken, the next one is queued again.
        assert_eq!(hub.publish_local([device(1)], LiveEvent::Resync), 1);
        assert_eq!(subscription.next().await, Some(LiveEvent::Resync));
    }

    #[tokio::test]
    async fn a_full_buffer_cuts_the_subscriber_off() {
        let hub = Arc::new(Hub::default());
        let mut slow = hub.subscribe(user(1), device(1), 1, 5).unwrap();
        assert_eq!(hub.publish([device(1), device(2)], LiveEvent::Queued), 1);
        assert_eq!(hub.publish([device(1)], LiveEvent::Queued), 0);
        assert!(!hub.is_online(&device(1)));
        assert_eq!(slow.next().await, Some(LiveEvent::Queued), "what was buffered still arrives");
        assert!(slow.next().await.is_none());
        assert_eq!(slow.close_reason(), Some(CloseReason::SlowConsumer));
    }

    #[tokio::test]
    async fn a_drained_mailbox_gives_its_memory_back() {
        let hub = Arc::new(Hub::default());
        let mut subscription = hub.subscribe(user(1), device(1), 1000, 5).unwrap();
        assert_eq!(subscription.mailbox.lock().events.capacity(), 0, "nothing is allocated while idle");
        for _ in 0..100 {
            hub.publish([device(1)], LiveEvent::Queued);
        }
        for _ in 0..100 {
            assert_eq!(subscription.next().await, Some(LiveEvent::Queued));
        }
        assert_eq!(subscription.mailbox.lock().events.capacity(), 0);
    }

    #[tokio::test]
    async fn waiting_events_are_taken_in_order_without_waiting() {
        let hub = Arc::new(Hub::default());
        let mut subscription = hub.subscribe(user(1), device(1), 1000, 5).unwrap();
        assert_eq!(subscription.try_next(), None, "nothing waits yet");
        let frames: Vec<LiveEvent> =
            (0..100).map(|n| LiveEvent::Frame(EncodedFrame::from_text(n.to_string()))).collect();
        for frame in &frames {
            hub.publish([device(1)], frame.clone());
        }
        let taken: Vec<LiveEvent> = std::iter::from_fn(|| subscription.try_next()).collect();
        assert_eq!(taken, frames);
        assert_eq!(subscription.mailbox.lock().events.capacity(), 0, "the burst's room is given back");

        hub.publish([device(1)], LiveEvent::Queued);
        hub.kick(&device(1), CloseReason::Revoked);
        assert_eq!(subscription.try_next(), Some(LiveEvent::Queued), "queued before the end, still taken");
        assert_eq!(subscription.try_next(), None);
        assert!(subscription.next().await.is_none(), "next tells that the subscription ended");
    }

    #[tokio::test]
    async fn revoked_devices_are_kicked() {
        let hub = Arc::new(Hub::default());
        let mut subscription = hub.subscribe(user(1), device(1), 1, 5).unwrap();
        hub.kick(&device(1), CloseReason::Revoked);
        assert!(subscription.next().await.is_none());
        assert_eq!(subscription.close_reason(), Some(CloseReason::Revoked));
        assert!(hub.is_idle());
    }
}
