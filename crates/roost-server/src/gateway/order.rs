//! The order a connection pushes a conversation's entries in: each entry once, in sequence.
//!
//! Concurrent sends are committed together and their pushes race, so a later entry often
//! arrives a moment before an earlier one. It is held (briefly, and only a few) for the earlier
//! one to arrive instead of costing a store read; if the earlier one never comes live (a send
//! that failed between its commit and its push), or the conversation is new to the connection,
//! the gap is read from the store. No I/O here: the connection asks what to do and does it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use roost_proto::{ConversationId, DeviceId};
use tokio::time::Instant;

use crate::hub::PushedEntry;

/// Entries that arrived ahead of an earlier one kept waiting for it, at most.
const MAX_HELD: usize = 64;
/// How long an entry waits for an earlier one before the gap is read from the store. Long
/// enough for a push overtaken across instances: the instance that stored the earlier entry may
/// not be scheduled for tens of milliseconds while another pushes the next one, and a store read
/// at that moment would only add to the load that delayed it.
pub(super) const HOLD: Duration = Duration::from_millis(200);

/// Where each conversation stands on one connection.
#[derive(Default)]
pub(super) struct Order {
    /// The last sequence number pushed per conversation.
    pushed: HashMap<ConversationId, u64>,
    /// Conversations the device's membership of ended with the last entry pushed (it was
    /// removed, or left): their live entries are not pushed, only what the store still gives
    /// the device (nothing, unless it was added again). Rarely holds anything.
    ended: Vec<ConversationId>,
    /// Entries that overtook an earlier entry of their conversation.
    held: Vec<Arc<PushedEntry>>,
    /// When the oldest held entry arrived.
    held_since: Option<Instant>,
}

/// What to do with a live entry.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Pushed before (or before the connection started from the store): drop it.
    Skip,
    /// Push these, in this order (the entry, then the held ones it made next in turn).
    Push(Vec<Arc<PushedEntry>>),
    /// Held for an earlier entry.
    Held,
    /// Read the conversation's entries after `after` from the store and push them.
    CatchUp {
        /// The conversation.
        conversation_id: ConversationId,
        /// The last entry pushed (0 for a conversation new to the connection).
        after: u64,
    },
}

impl Order {
    /// Starts each conversation at the device's acknowledged position: its first live entry
    /// with nothing pending is pushed as is.
    pub(super) fn start_from(&mut self, positions: impl IntoIterator<Item = (ConversationId, u64)>) {
        self.pushed.extend(positions);
    }

    /// Records an entry pushed from the store (which gives a device only the entries of its
    /// membership, so one pushed from it means the device is a member again).
    pub(super) fn pushed(&mut self, conversation_id: ConversationId, seq: u64) {
        self.pushed.insert(conversation_id, seq);
        self.ended.retain(|ended| *ended != conversation_id);
    }

    /// Records that the device's membership ended with the entry `seq` (as a store catch-up of
    /// that entry shows).
    pub(super) fn ended(&mut self, conversation_id: ConversationId, seq: u64) {
        self.pushed.insert(conversation_id, seq);
        if !self.ended.contains(&conversation_id) {
            self.ended.push(conversation_id);
        }
    }

    /// The last entry pushed of a conversation (0 if none).
    pub(super) fn last(&self, conversation_id: &ConversationId) -> u64 {
        self.pushed.get(conversation_id).copied().unwrap_or(0)
    }

    /// Decides what to do with a live entry for device `me`; a `Push` is recorded as pushed,
    /// and ends at an entry that ends `me`'s membership.
    pub(super) fn offer(&mut self, entry: Arc<PushedEntry>, me: &DeviceId, now: Instant) -> Next {
        let conversation_id = entry.conversation_id;
        match self.pushed.get(&conversation_id).copied() {
            Some(last) if entry.seq <= last => Next::Skip,
            // Membership ended here: only the store says whether the device was added again.
            _ if self.ended.contains(&conversation_id) => {
                Next::CatchUp { conversation_id, after: self.last(&conversation_id) }
            }
            Some(last) if entry.seq == last + 1 => {
                let mut chain = vec![entry];
                while let Some(tail) = chain.last() {
                    if tail.ends_for.contains(me) {
                        self.ended.push(conversation_id);
                        break;
                    }
                    let wanted = tail.seq + 1;
                    let Some(at) =
                        self.held.iter().position(|h| h.conversation_id == conversation_id && h.seq == wanted)
                    else {
                        break;
                    };
                    chain.push(self.held.swap_remove(at));
                }
                if let Some(last) = chain.last() {
                    self.pushed.insert(conversation_id, last.seq);
                }
                self.forget_held(&conversation_id);
                Next::Push(chain)
            }
            Some(_) if self.held.len() < MAX_HELD => {
                self.held_since.get_or_insert(now);
                self.held.push(entry);
                Next::Held
            }
            last => Next::CatchUp { conversation_id, after: last.unwrap_or(0) },
        }
    }

    /// Drops held entries of a conversation that were pushed already (after a catch-up).
    pub(super) fn forget_held(&mut self, conversation_id: &ConversationId) {
        let pushed = self.last(conversation_id);
        let ended = self.ended.contains(conversation_id);
        self.held.retain(|h| h.conversation_id != *conversation_id || (h.seq > pushed && !ended));
        if self.held.is_empty() {
            // Give the room back too: an idle connection should hold nothing here.
            self.held = Vec::new();
            self.held_since = None;
        }
    }

    /// When the oldest held entry will have waited [`HOLD`], if any is held.
    pub(super) fn hold_deadline(&self) -> Option<Instant> {
        self.held_since.map(|since| since + HOLD)
    }

    /// Gives up waiting: drops every held entry and returns each conversation with the last
    /// entry pushed, whose gap is to be read from the store.
    pub(super) fn release_held(&mut self) -> Vec<(ConversationId, u64)> {
        let held = std::mem::take(&mut self.held);
        self.held_since = None;
        let mut conversations: Vec<ConversationId> = held.iter().map(|h| h.conversation_id).collect();
        conversations.sort_unstable();
        conversations.dedup();
        conversations.into_iter().map(|id| (id, self.last(&id))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::EncodedFrame;

    fn conversation(n: u8) -> ConversationId {
        ConversationId::from_bytes([n; 16])
    }

    fn entry(n: u8, seq: u64) -> Arc<PushedEntry> {
        Arc::new(PushedEntry {
            conversation_id: conversation(n),
            seq,
            frame: EncodedFrame::from_text(format!("{n}:{seq}")),
            ends_for: Vec::new(),
            author: None,
        })
    }

    const ME: DeviceId = DeviceId::from_bytes([1; 32]);

    impl Order {
        fn offer_for(&mut self, entry: Arc<PushedEntry>, now: Instant) -> Next {
            self.offer(entry, &ME, now)
        }
    }

    fn seqs(next: &Next) -> Vec<u64> {
        match next {
            Next::Push(chain) => chain.iter().map(|e| e.seq).collect(),
            other => panic!("expected a push, got {other:?}"),
        }
    }

    #[test]
    fn entries_in_order_are_pushed_and_repeats_dropped() {
        let now = Instant::now();
        let mut order = Order::default();
        order.start_from([(conversation(1), 4)]);
        assert_eq!(seqs(&order.offer_for(entry(1, 5), now)), [5]);
        assert_eq!(seqs(&order.offer_for(entry(1, 6), now)), [6]);
        assert_eq!(order.offer_for(entry(1, 6), now), Next::Skip);
        assert_eq!(order.offer_for(entry(1, 2), now), Next::Skip, "older than the acknowledged position");
        assert_eq!(order.last(&conversation(1)), 6);
    }

    #[test]
    fn an_entry_that_overtook_waits_and_goes_out_right_after_the_earlier_one() {
        let now = Instant::now();
        let mut order = Order::default();
        order.start_from([(conversation(1), 0), (conversation(2), 0)]);
        assert_eq!(order.offer_for(entry(1, 3), now), Next::Held);
        assert_eq!(order.offer_for(entry(1, 2), now), Next::Held);
        assert_eq!(order.offer_for(entry(2, 2), now), Next::Held, "another conversation's too");
        assert_eq!(order.hold_deadline(), Some(now + HOLD));
        assert_eq!(seqs(&order.offer_for(entry(1, 1), now)), [1, 2, 3]);
        assert_eq!(order.hold_deadline(), Some(now + HOLD), "conversation 2's entry still waits");
        assert_eq!(seqs(&order.offer_for(entry(2, 1), now)), [1, 2]);
        assert_eq!(order.hold_deadline(), None, "nothing held, and no room kept");
        assert_eq!(order.held.capacity(), 0);
    }

    #[test]
    fn a_gap_that_never_fills_is_read_from_the_store() {
        let now = Instant::now();
        let mut order = Order::default();
        order.start_from([(conversation(1), 1)]);
        assert_eq!(order.offer_for(entry(1, 3), now), Next::Held);
        assert_eq!(order.release_held(), [(conversation(1), 1)]);
        // The catch-up pushed 2 and 3 from the store; a late live 3 is then a repeat.
        order.pushed(conversation(1), 3);
        assert_eq!(order.offer_for(entry(1, 3), now), Next::Skip);
        assert_eq!(order.hold_deadline(), None);
    }

    #[test]
    fn a_new_conversation_or_a_full_hold_reads_from_the_store() {
        let now = Instant::now();
        let mut order = Order::default();
        assert_eq!(order.offer_for(entry(9, 1), now), Next::CatchUp { conversation_id: conversation(9), after: 0 });
        order.start_from([(conversation(1), 0)]);
        for seq in 2..(2 + MAX_HELD as u64) {
            assert_eq!(order.offer_for(entry(1, seq), now), Next::Held);
        }
        let overflow = order.offer_for(entry(1, 100), now);
        assert_eq!(overflow, Next::CatchUp { conversation_id: conversation(1), after: 0 });
        order.pushed(conversation(1), 100);
        order.forget_held(&conversation(1));
        assert_eq!(order.hold_deadline(), None, "the catch-up covered every held entry");
    }

    #[test]
    fn nothing_of_a_conversation_is_pushed_after_the_entry_that_ended_the_membership() {
        let now = Instant::now();
        let removal = Arc::new(PushedEntry { ends_for: vec![ME], ..(*entry(1, 2)).clone() });
        // A later entry (sent through an instance that did not know of the removal yet) arrives
        // first and waits; the removal goes out, the later one does not.
        let mut order = Order::default();
        order.start_from([(conversation(1), 1)]);
        assert_eq!(order.offer_for(entry(1, 3), now), Next::Held);
        assert_eq!(seqs(&order.offer(removal, &ME, now)), [2], "the removal, and not what it held");
        assert_eq!(order.hold_deadline(), None);
        // Later live entries go to the store, which gives a removed device nothing...
        assert_eq!(order.offer_for(entry(1, 4), now), Next::CatchUp { conversation_id: conversation(1), after: 2 });
        // ...and entries again once it was added back.
        order.pushed(conversation(1), 9);
        assert_eq!(seqs(&order.offer_for(entry(1, 10), now)), [10]);
        // Another device's removal changes nothing for this one.
        let theirs = Arc::new(PushedEntry { ends_for: vec![DeviceId::from_bytes([2; 32])], ..(*entry(1, 11)).clone() });
        assert_eq!(seqs(&order.offer(theirs, &ME, now)), [11]);
        assert_eq!(seqs(&order.offer_for(entry(1, 12), now)), [12]);
    }
}
