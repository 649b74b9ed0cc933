//! Delivery: sync pages, acks and device-to-device payloads.

use std::sync::Arc;

use roost_proto::conversation::{AckRequest, Entry, QueueEntry, QueueKind, SyncResponse};
use roost_proto::{ConversationId, DeviceId, bytes};
use roost_store::{EntryRecord, QueueRecord, QueueWrite, SyncCursor, SyncPage};

use super::{Caller, Context};
use crate::error::{Error, Result};
use crate::hub::{Hub, LiveEvent};
use crate::push::Push;

const DEFAULT_PAGE: u32 = 100;

/// The delivery service.
#[derive(Clone)]
pub struct Delivery {
    ctx: Arc<Context>,
    hub: Arc<Hub>,
    push: Arc<Push>,
}

impl Delivery {
    pub(crate) fn new(ctx: Arc<Context>, hub: Arc<Hub>, push: Arc<Push>) -> Self {
        Self { ctx, hub, push }
    }

    /// A page of every conversation entry after the device's acknowledged positions and of its
    /// queue. Pass the returned cursor to continue; acks move the positions themselves.
    pub async fn sync(&self, caller: &Caller, cursor: Option<&str>, limit: Option<u32>) -> Result<SyncResponse> {
        let max = self.ctx.config.limits.max_page_size;
        let limit = match limit {
            None => DEFAULT_PAGE.min(max),
            Some(n) if (1..=max).contains(&n) => n,
            Some(_) => return Err(Error::invalid(format!("limit is 1 to {max}"))),
        };
        let start = cursor.map(decode_cursor).transpose()?.unwrap_or_default();
        let page = self.ctx.store.sync(&caller.device_id, start, limit).await?;
        // Having synced, the device may be woken again by what arrives next.
        self.push.seen(&caller.device_id);
        let full = page.entries.len() == limit as usize || page.queue.len() == limit as usize;
        let next = SyncCursor {
            queue_after: page.queue.last().map_or(start.queue_after, |q| q.id),
            entries_after: page.entries.last().map(|e| (e.conversation_id, e.seq)).or(start.entries_after),
        };
        Ok(SyncResponse {
            entries: page.entries.into_iter().map(entry_view).collect(),
            queue: page.queue.into_iter().map(queue_view).collect(),
            cursor: full.then(|| encode_cursor(&next)),
        })
    }

    /// The caller device's acknowledged position in each conversation it is a member of (where
    /// its live connection starts counting).
    pub async fn positions(&self, caller: &Caller) -> Result<Vec<(ConversationId, u64)>> {
        Ok(self.ctx.store.positions(&caller.device_id).await?)
    }

    /// A page of what is stored for the caller's device and not acknowledged, as records (what a
    /// live connection sends before it pushes).
    pub async fn stored_page(&self, caller: &Caller, cursor: SyncCursor, limit: u32) -> Result<SyncPage> {
        Ok(self.ctx.store.sync(&caller.device_id, cursor, limit).await?)
    }

    /// The caller device's unacknowledged entries of one conversation after `after`, in order
    /// (what a live connection reads when it missed a push).
    pub async fn entries_after(
        &self,
        caller: &Caller,
        conversation: &ConversationId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<EntryRecord>> {
        Ok(self.ctx.store.entries_for_device(&caller.device_id, conversation, after, limit).await?)
    }

    /// The caller device's queue entries after `after`, oldest first.
    pub async fn queue_after(&self, caller: &Caller, after: u64, limit: u32) -> Result<Vec<QueueRecord>> {
        Ok(self.ctx.store.queue_for_device(&caller.device_id, after, limit).await?)
    }

    /// Acknowledges entries (cumulative per conversation) and queue entries (up to an id). Only
    /// the caller's own device's positions move.
    pub async fn ack(&self, caller: &Caller, request: &AckRequest) -> Result<()> {
        if request.conversations.is_empty() && request.queue_up_to.is_none() {
            return Err(Error::invalid("acknowledge at least one conversation or queue position"));
        }
        if request.conversations.len() > self.ctx.config.limits.max_page_size as usize {
            return Err(Error::invalid("too many conversations in one ack"));
        }
        let positions: Vec<(ConversationId, u64)> =
            request.conversations.iter().map(|ack| (ack.conversation_id, ack.seq)).collect();
        self.ctx.store.ack(&caller.device_id, &positions, request.queue_up_to).await?;
        Ok(())
    }

    /// Queues an opaque payload for one device of the caller's own user or of a user it shares a
    /// conversation with.
    pub async fn send_to_device(&self, caller: &Caller, target: &DeviceId, payload: Vec<u8>) -> Result<u64> {
        self.ctx.limits.sends.check(&caller.device_id).await?;
        if payload.is_empty() {
            return Err(Error::invalid("payload must not be empty"));
        }
        let limit = self.ctx.config.limits.max_message_bytes;
        if payload.len() > limit {
            return Err(Error::too_large("payload", limit));
        }
        let device = self.ctx.store.device(target).await?.filter(|d| d.revoked_at.is_none());
        let device = device.ok_or_else(|| Error::not_found("no such active device"))?;
        if device.user_id != caller.user_id
            && !self.ctx.store.share_conversation(&caller.user_id, &device.user_id).await?
        {
            return Err(Error::new(
                roost_proto::ErrorCode::Forbidden,
                "devices of users you share no conversation with cannot be messaged",
            ));
        }
        let entry = QueueWrite {
            device_id: *target,
            kind: QueueKind::DeviceMessage,
            conversation_id: None,
            seq: None,
            sender_device: Some(caller.device_id),
            payload,
        };
        let ids = self.ctx.store.enqueue(vec![entry], self.ctx.now()).await?;
        self.hub.publish([*target], LiveEvent::Queued);
        ids.first().copied().ok_or_else(|| Error::new(roost_proto::ErrorCode::Internal, "queue entry not created"))
    }
}

/// A stored entry in its wire form.
pub fn entry_view(entry: EntryRecord) -> Entry {
    Entry {
        conversation_id: entry.conversation_id,
        seq: entry.seq,
        kind: entry.kind,
        sender_user: entry.sender.user_id,
        sender_device: entry.sender.device_id,
        epoch: entry.epoch,
        payload: entry.payload.into(),
        created_at: entry.created_at,
    }
}

/// A stored queue entry in its wire form.
pub fn queue_view(entry: QueueRecord) -> QueueEntry {
    QueueEntry {
        id: entry.id,
        kind: entry.kind,
        conversation_id: entry.conversation_id,
        seq: entry.seq,
        sender_device: entry.sender_device,
        payload: entry.payload.into(),
        created_at: entry.created_at,
    }
}

/// Cursors are opaque to clients: `base64url("v1.<queue id>.<conversation id or ->.<seq>")`.
fn encode_cursor(cursor: &SyncCursor) -> String {
    let (conversation, seq) = match cursor.entries_after {
        Some((id, seq)) => (id.to_string(), seq),
        None => ("-".to_owned(), 0),
    };
    bytes::encode(format!("v1.{}.{conversation}.{seq}", cursor.queue_after).as_bytes())
}

fn decode_cursor(text: &str) -> Result<SyncCursor> {
    let invalid = || Error::invalid("cursor is not one this server issued");
    let raw = bytes::decode(text).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let mut parts = raw.split('.');
    let (Some("v1"), Some(queue), Some(conversation), Some(seq), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let queue_after = queue.parse().map_err(|_| invalid())?;
    let entries_after = match conversation {
        "-" => None,
        id => Some((id.parse().map_err(|_| invalid())?, seq.parse().map_err(|_| invalid())?)),
    };
    let cursor = SyncCursor { queue_after, entries_after };
    // Only the text this server issues: numbers spelled another way (`+5`, `05`) or a sequence
    // number beside `-` would otherwise make several texts one cursor.
    if encode_cursor(&cursor) != text {
        return Err(invalid());
    }
    Ok(cursor)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn a_cursor_is_accepted_only_as_issued(
            text in prop_oneof![
                any::<String>(),
                "v1\\.[+0-9]{1,4}\\.(-|[A-Za-z0-9_-]{22})\\.[+0-9]{1,4}".prop_map(|raw| bytes::encode(raw.as_bytes())),
            ],
        ) {
            if let Ok(cursor) = decode_cursor(&text) {
                prop_assert_eq!(encode_cursor(&cursor), text);
            }
        }

        #[test]
        fn every_cursor_survives_its_text(queue_after in any::<u64>(), conversation in any::<Option<([u8; 16], u64)>>()) {
            let entries_after = conversation.map(|(id, seq)| (ConversationId::from_bytes(id), seq));
            let cursor = SyncCursor { queue_after, entries_after };
            prop_assert_eq!(decode_cursor(&encode_cursor(&cursor)), Ok(cursor));
        }
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = SyncCursor { queue_after: 42, entries_after: Some((ConversationId::from_bytes([7; 16]), 9)) };
        assert_eq!(decode_cursor(&encode_cursor(&cursor)), Ok(cursor));
        let empty = SyncCursor::default();
        assert_eq!(decode_cursor(&encode_cursor(&empty)), Ok(empty));
        for bad in ["", "!!", &bytes::encode(b"v2.1.-.0"), &bytes::encode(b"v1.x.-.0"), &bytes::encode(b"v1.1.-.0.9")] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}
