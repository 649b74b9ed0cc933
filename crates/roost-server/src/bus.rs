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
//! Redis is a wake-up path, never the record: everything an event announces is stored first.
//! When the subscriber connection comes back after a loss, or falls behind, every local
//! connection reads what it missed from the store ([`LiveEvent::Resync`]). An entry's frame
//! travels with the news when small; a large one travels as a wake-up and the receiving
//! connection reads it from the store.

use std::sync::{Arc, Weak};
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::{Builder, Config as RedisConfig, ReconnectPolicy};
use futures::future::BoxFuture;
use roost_proto::{ConversationId, DeviceId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::hub::{Bus, CloseReason, EncodedFrame, Hub, LiveEvent, PushedEntry};

/// Events waiting to be published before new ones are dropped (and counted).
const OUTBOX: usize = 65_536;
/// Publishes sent to Redis in one pipeline, at most.
const PIPELINE: usize = 512;
/// Entry frames up to this size travel on the bus; larger ones travel as a wake-up.
const MAX_FRAME_ON_BUS: usize = 8 * 1024;
/// How long a Redis command may take before it fails (while Redis is away, commands fail
/// rather than wait).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
#[error("connecting to Redis: {0}")]
pub struct BusError(String);

/// A message on a device's channel: what it says, and the instance that said it (an instance
/// ignores its own messages, such as the kick it sends when it takes a device's socket over).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Envelope {
    o: u64,
    #[serde(flatten)]
    w: Wire,
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
    /// After a reconnect: listen again for every device held here.
    Again(Vec<DeviceId>),
}

/// The Redis side of the hub.
pub struct RedisBus {
    /// This instance on the bus (random per start).
    origin: u64,
    outbox: mpsc::Sender<(String, Arc<str>)>,
    listen: mpsc::UnboundedSender<Listen>,
    publisher: Client,
    subscriber: SubscriberClient,
}

impl RedisBus {
    /// Connects to Redis at `url` and starts carrying `hub`'s events to and from the other
    /// instances.
    pub async fn connect(url: &str, hub: &Arc<Hub>) -> Result<Arc<Self>, BusError> {
        let config = RedisConfig::from_url(url).map_err(|err| BusError(err.to_string()))?;
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|performance| performance.default_command_timeout = COMMAND_TIMEOUT)
            .with_connection_config(|connection| connection.connection_timeout = COMMAND_TIMEOUT)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let publisher = builder.build().map_err(|err| BusError(err.to_string()))?;
        let subscriber = builder.build_subscriber_client().map_err(|err| BusError(err.to_string()))?;
        publisher.init().await.map_err(|err| BusError(err.to_string()))?;
        subscriber.init().await.map_err(|err| BusError(err.to_string()))?;

        let origin = rand::random();
        let (outbox, queued) = mpsc::channel(OUTBOX);
        let (listen, changes) = mpsc::unbounded_channel();
        tokio::spawn(publish(publisher.clone(), queued));
        let bus = Arc::new(Self { origin, outbox, listen: listen.clone(), publisher, subscriber: subscriber.clone() });
        tokio::spawn(manage(subscriber.clone(), changes, Arc::downgrade(&bus)));
        tokio::spawn(receive(subscriber, Arc::downgrade(hub), listen, origin));
        Ok(bus)
    }

    /// Closes both connections.
    pub async fn close(&self) {
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
/// listened on, is told that this instance holds its socket now.
async fn manage(subscriber: SubscriberClient, mut changes: mpsc::UnboundedReceiver<Listen>, bus: Weak<RedisBus>) {
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
            Listen::Again(devices) => {
                let channels: Vec<String> = devices.iter().map(channel).collect();
                if !channels.is_empty()
                    && let Err(err) = subscriber.subscribe(channels).await
                {
                    tracing::warn!(error = %err, "subscribing again after a reconnect failed");
                }
            }
        }
    }
}

/// Delivers what other instances publish for the devices held here; after a reconnect or a
/// fall behind, listens again and makes every local connection resync.
async fn receive(subscriber: SubscriberClient, hub: Weak<Hub>, listen: mpsc::UnboundedSender<Listen>, origin: u64) {
    use tokio::sync::broadcast::error::RecvError;

    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    loop {
        let missed = tokio::select! {
            message = messages.recv() => match message {
                Ok(message) => {
                    let Some(hub) = hub.upgrade() else { return };
                    let device = message.channel.strip_prefix("roost:dev:").and_then(|id| id.parse::<DeviceId>().ok());
                    let envelope = message.value.as_str().and_then(|text| serde_json::from_str::<Envelope>(&text).ok());
                    if let (Some(device), Some(envelope)) = (device, envelope)
                        && envelope.o != origin
                    {
                        metrics::counter!("roost_bus_received_total").increment(1);
                        deliver(&hub, device, envelope.w);
                    }
                    false
                }
                Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return,
            },
            reconnect = reconnects.recv() => match reconnect {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    let Some(hub) = hub.upgrade() else { return };
                    let _ = listen.send(Listen::Again(hub.local_devices()));
                    true
                }
                Err(RecvError::Closed) => return,
            },
        };
        if missed {
            let Some(hub) = hub.upgrade() else { return };
            metrics::counter!("roost_bus_resyncs_total").increment(1);
            tracing::info!("live events from other instances may have been missed; connections read the store");
            hub.publish_local(hub.local_devices(), LiveEvent::Resync);
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
            assert_eq!(serde_json::from_str::<Envelope>(&text).ok(), Some(Envelope { o: 7, w }));
        }
        assert_eq!(unhex(&hex(&[0xab; 32])), Some([0xab; 32]));
        assert_eq!(unhex("zz"), None);
    }
}
