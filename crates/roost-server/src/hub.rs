//! In-process fan-out of live events to connected devices.
//!
//! Durable delivery never depends on this: everything stored is also returned by sync. The hub
//! carries what is live only (ephemeral sends, read receipts) and, for the real-time gateway,
//! wake-ups for stored entries. Nobody listening is normal; a subscriber whose buffer is full
//! misses live events and catches up through sync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use roost_proto::{ConversationId, DeviceId, UserId};
use tokio::sync::mpsc;

/// Something a connected device should learn now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LiveEvent {
    /// An ephemeral send (typing, call signalling): delivered to online devices, never stored.
    Ephemeral {
        /// The conversation.
        conversation_id: ConversationId,
        /// The sending user.
        sender_user: UserId,
        /// The sending device.
        sender_device: DeviceId,
        /// The epoch it was encrypted in.
        epoch: u64,
        /// The ciphertext.
        payload: Vec<u8>,
    },
    /// Another member read up to `seq`.
    ReadReceipt {
        /// The conversation.
        conversation_id: ConversationId,
        /// The reader.
        user_id: UserId,
        /// Their read position.
        seq: u64,
    },
    /// New entries or queue items are stored for the device; fetch them.
    Stored,
}

/// Subscribers by device. A std mutex is enough: it is held only to look up or swap a sender,
/// never across an await.
#[derive(Default)]
pub struct Hub {
    subscribers: Mutex<HashMap<DeviceId, mpsc::Sender<Arc<LiveEvent>>>>,
}

impl Hub {
    /// Subscribes a device, replacing any earlier subscription of the same device (one consumer
    /// per device). The receiver holds at most `capacity` undelivered events.
    pub fn subscribe(&self, device: DeviceId, capacity: usize) -> mpsc::Receiver<Arc<LiveEvent>> {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        if let Ok(mut subscribers) = self.subscribers.lock() {
            subscribers.insert(device, sender);
        }
        receiver
    }

    /// Drops a device's subscription.
    pub fn unsubscribe(&self, device: &DeviceId) {
        if let Ok(mut subscribers) = self.subscribers.lock() {
            subscribers.remove(device);
        }
    }

    /// Whether any device is subscribed (lets callers skip looking up recipients).
    pub fn is_idle(&self) -> bool {
        self.subscribers
            .lock()
            .map_or(true, |subscribers| subscribers.is_empty())
    }

    /// Offers `event` to each listed device that is subscribed. Returns how many took it.
    pub fn publish(&self, devices: impl IntoIterator<Item = DeviceId>, event: LiveEvent) -> usize {
        let event = Arc::new(event);
        let Ok(mut subscribers) = self.subscribers.lock() else {
            return 0;
        };
        let mut delivered = 0;
        for device in devices {
            let Some(sender) = subscribers.get(&device) else {
                continue;
            };
            match sender.try_send(event.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!("roost_live_events_dropped_total").increment(1);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    subscribers.remove(&device);
                }
            }
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u8) -> DeviceId {
        DeviceId::from_bytes([n; 32])
    }

    #[tokio::test]
    async fn events_reach_subscribers_only_and_full_buffers_drop() {
        let hub = Hub::default();
        let mut one = hub.subscribe(device(1), 1);
        assert_eq!(hub.publish([device(1), device(2)], LiveEvent::Stored), 1);
        assert_eq!(hub.publish([device(1)], LiveEvent::Stored), 0, "buffer of one is full");
        assert_eq!(*one.recv().await.unwrap(), LiveEvent::Stored);

        // A second subscription replaces the first.
        let mut two = hub.subscribe(device(1), 4);
        assert!(one.recv().await.is_none());
        assert_eq!(hub.publish([device(1)], LiveEvent::Stored), 1);
        assert_eq!(*two.recv().await.unwrap(), LiveEvent::Stored);
        hub.unsubscribe(&device(1));
        assert_eq!(hub.publish([device(1)], LiveEvent::Stored), 0);
    }
}
