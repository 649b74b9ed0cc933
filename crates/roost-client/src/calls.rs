//! Calls: WebRTC signalling carried end to end encrypted as ephemeral sends
//! ([`Content::Call`](crate::Content::Call)), and the state of each call on this device.
//!
//! The SDK carries signalling only; an app plugs its WebRTC stack in by putting its session
//! descriptions in [`crate::Client::call_signal`]'s `sdp`, its ICE candidates in `candidate`, and
//! feeding those it receives ([`CallUpdate::Answered`], [`CallUpdate::Candidate`]) back to it.
//!
//! How a call goes, for every member's devices alike:
//! - the caller sends `offer`; every connected device of the other members rings;
//! - a callee's device sends `answer`: the caller's call is connected to that device, and the
//!   callee's other devices (which get their own user's ephemeral sends) stop ringing;
//! - a callee's device sends `hangup` while ringing to decline: its other devices stop too;
//! - `busy` from a device already in a call ends the caller's ringing;
//! - `hangup` from either side ends a connected call;
//! - a call not answered within [`RING_MS`] stops ringing everywhere; the caller then sends
//!   `hangup` and leaves a durable [`Content::MissedCall`](crate::Content::MissedCall) in the
//!   conversation, so a callee who was offline sees it too.
//!
//! [`Calls`] is the state machine: it takes what arrives and what the user does, and says what
//! changed; it sends nothing itself.

use std::collections::HashMap;

use roost_proto::{ConversationId, DeviceId, UserId};

use crate::content::CallAction;

/// How long a call rings before it counts as missed, in milliseconds.
pub const RING_MS: i64 = 45_000;

/// A fresh call id: 16 random bytes, unpadded base64url.
pub fn new_call_id() -> String {
    roost_proto::bytes::encode(&rand::random::<[u8; 16]>())
}

/// A call signal as it arrived, from whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSignal {
    /// The conversation it was sent to.
    pub conversation_id: ConversationId,
    /// The sender.
    pub sender_user: UserId,
    /// The sending device.
    pub sender_device: DeviceId,
    /// The call.
    pub call_id: String,
    /// What it does.
    pub action: CallAction,
    /// A session description (offer, answer).
    pub sdp: Option<String>,
    /// An ICE candidate.
    pub candidate: Option<String>,
    /// A video call (offer).
    pub video: bool,
}

/// Which way a call goes, seen from this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// This user called.
    Outgoing,
    /// Another user called.
    Incoming,
}

/// Where a call stands on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// Ringing (an incoming call here; an outgoing one at the callees').
    Ringing,
    /// Connected, with that device of the other side.
    Connected(DeviceId),
    /// Over.
    Ended(EndReason),
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// A connected call was hung up by this user or the other.
    HungUp,
    /// The callee declined (on this device or another of the same user).
    Declined,
    /// The callee was in another call.
    Busy,
    /// Another device of this user answered it.
    AnsweredElsewhere,
    /// Nobody answered in time, or the caller gave up first.
    Missed,
}

/// One call on this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The call.
    pub id: String,
    /// Its conversation.
    pub conversation_id: ConversationId,
    /// Which way it goes.
    pub direction: Direction,
    /// The caller (for an outgoing call, this user).
    pub caller: UserId,
    /// The caller's device.
    pub caller_device: DeviceId,
    /// A video call.
    pub video: bool,
    /// Where it stands.
    pub state: CallState,
    /// When it began ringing (Unix ms).
    pub rang_at: i64,
}

/// What changed with a signal, an action or the passing of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallUpdate {
    /// An incoming call rings on this device.
    Ringing(Call),
    /// The outgoing call was answered by that device, with its session description.
    Answered {
        /// The call.
        call_id: String,
        /// The device that answered.
        device: DeviceId,
        /// Its answer.
        sdp: Option<String>,
    },
    /// An ICE candidate for a call in progress.
    Candidate {
        /// The call.
        call_id: String,
        /// The candidate.
        candidate: String,
    },
    /// The call is over here (ringing stops, media stops).
    Ended {
        /// The call.
        call_id: String,
        /// Why.
        reason: EndReason,
    },
    /// Another user called while this device is in a call: answer them `busy`.
    Busy(CallSignal),
}

/// The calls of this device.
#[derive(Debug)]
pub struct Calls {
    me: UserId,
    device: DeviceId,
    calls: HashMap<String, Call>,
}

impl Calls {
    /// No calls yet, for `device` of user `me`.
    pub fn new(me: UserId, device: DeviceId) -> Self {
        Self { me, device, calls: HashMap::new() }
    }

    /// A call by id.
    pub fn get(&self, call_id: &str) -> Option<&Call> {
        self.calls.get(call_id)
    }

    /// Whether this device is in a connected call.
    pub fn in_call(&self) -> bool {
        self.calls.values().any(|call| matches!(call.state, CallState::Connected(_)))
    }

    /// Records a call this user places (its `offer` is being sent).
    pub fn place(&mut self, call_id: &str, conversation_id: ConversationId, video: bool, now: i64) {
        let call = Call {
            id: call_id.to_owned(),
            conversation_id,
            direction: Direction::Outgoing,
            caller: self.me,
            caller_device: self.device,
            video,
            state: CallState::Ringing,
            rang_at: now,
        };
        self.calls.insert(call_id.to_owned(), call);
    }

    /// This device answers a ringing incoming call (its `answer` is being sent); `false` if the
    /// call is not ringing here.
    pub fn answer(&mut self, call_id: &str) -> bool {
        match self.calls.get_mut(call_id) {
            Some(call) if call.direction == Direction::Incoming && call.state == CallState::Ringing => {
                call.state = CallState::Connected(call.caller_device);
                true
            }
            _ => false,
        }
    }

    /// This device hangs up, declines or stops ringing (its `hangup` is being sent). Returns
    /// how the call ended, or `None` if it was not going on.
    pub fn hang_up(&mut self, call_id: &str) -> Option<EndReason> {
        let call = self.calls.get_mut(call_id)?;
        let reason = match (call.state, call.direction) {
            (CallState::Ended(_), _) => return None,
            (CallState::Connected(_), _) => EndReason::HungUp,
            (CallState::Ringing, Direction::Incoming) => EndReason::Declined,
            (CallState::Ringing, Direction::Outgoing) => EndReason::Missed,
        };
        call.state = CallState::Ended(reason);
        Some(reason)
    }

    /// Applies a signal that arrived. This device's own signals never arrive (the server does
    /// not echo an ephemeral send to its sender); those of this user's other devices do.
    pub fn receive(&mut self, signal: &CallSignal, now: i64) -> Option<CallUpdate> {
        let own_user = signal.sender_user == self.me;
        let ended = |call: &mut Call, reason| {
            call.state = CallState::Ended(reason);
            Some(CallUpdate::Ended { call_id: call.id.clone(), reason })
        };
        if signal.action == CallAction::Offer {
            if own_user || self.calls.contains_key(&signal.call_id) {
                // Another device of this user calling, or the caller repeating its offer.
                return None;
            }
            if self.in_call() {
                return Some(CallUpdate::Busy(signal.clone()));
            }
            let call = Call {
                id: signal.call_id.clone(),
                conversation_id: signal.conversation_id,
                direction: Direction::Incoming,
                caller: signal.sender_user,
                caller_device: signal.sender_device,
                video: signal.video,
                state: CallState::Ringing,
                rang_at: now,
            };
            self.calls.insert(call.id.clone(), call.clone());
            return Some(CallUpdate::Ringing(call));
        }
        let call = self.calls.get_mut(&signal.call_id)?;
        if call.conversation_id != signal.conversation_id {
            return None;
        }
        match (signal.action, call.direction, call.state) {
            (_, _, CallState::Ended(_)) => None,
            // A callee's device takes the call this user placed.
            (CallAction::Answer, Direction::Outgoing, CallState::Ringing) if !own_user => {
                call.state = CallState::Connected(signal.sender_device);
                Some(CallUpdate::Answered {
                    call_id: call.id.clone(),
                    device: signal.sender_device,
                    sdp: signal.sdp.clone(),
                })
            }
            // Another device of this user answered or declined: stop ringing here.
            (CallAction::Answer, Direction::Incoming, CallState::Ringing) if own_user => {
                ended(call, EndReason::AnsweredElsewhere)
            }
            (CallAction::Hangup, Direction::Incoming, CallState::Ringing) if own_user => {
                ended(call, EndReason::Declined)
            }
            // The caller gave up before anyone answered.
            (CallAction::Hangup, Direction::Incoming, CallState::Ringing) if signal.sender_user == call.caller => {
                ended(call, EndReason::Missed)
            }
            // Every callee declining is for the app to judge in a group; in a direct chat the
            // one callee declining ends it.
            (CallAction::Hangup, Direction::Outgoing, CallState::Ringing) if !own_user => {
                ended(call, EndReason::Declined)
            }
            (CallAction::Busy, Direction::Outgoing, CallState::Ringing) if !own_user => ended(call, EndReason::Busy),
            (CallAction::Hangup, _, CallState::Connected(peer)) if peer == signal.sender_device => {
                ended(call, EndReason::HungUp)
            }
            (CallAction::Ice, _, CallState::Ringing | CallState::Connected(_)) if !own_user => {
                let candidate = signal.candidate.clone()?;
                Some(CallUpdate::Candidate { call_id: call.id.clone(), candidate })
            }
            _ => None,
        }
    }

    /// Ends every call that has rung for [`RING_MS`] unanswered, as missed. For an outgoing one
    /// the caller then sends `hangup` and leaves a missed-call message.
    pub fn expire(&mut self, now: i64) -> Vec<CallUpdate> {
        self.calls
            .values_mut()
            .filter(|call| call.state == CallState::Ringing && now.saturating_sub(call.rang_at) >= RING_MS)
            .map(|call| {
                call.state = CallState::Ended(EndReason::Missed);
                CallUpdate::Ended { call_id: call.id.clone(), reason: EndReason::Missed }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: u8 = 1;
    const BOB: u8 = 2;
    const CAROL: u8 = 3;

    fn user(n: u8) -> UserId {
        UserId::from_bytes([n; 32])
    }

    fn device(n: u8, which: u8) -> DeviceId {
        DeviceId::from_bytes([n * 10 + which; 32])
    }

    fn signal(from: u8, which: u8, action: CallAction) -> CallSignal {
        CallSignal {
            conversation_id: ConversationId::from_bytes([9; 16]),
            sender_user: user(from),
            sender_device: device(from, which),
            call_id: "c1".into(),
            action,
            sdp: Some(format!("sdp from {from}/{which}")),
            candidate: Some("candidate:1".into()),
            video: false,
        }
    }

    #[test]
    fn a_call_rings_on_every_device_and_answering_on_one_stops_the_others() {
        let mut alice = Calls::new(user(ALICE), device(ALICE, 1));
        alice.place("c1", ConversationId::from_bytes([9; 16]), false, 0);
        let (mut phone, mut laptop) = (Calls::new(user(BOB), device(BOB, 1)), Calls::new(user(BOB), device(BOB, 1)));
        for bob in [&mut phone, &mut laptop] {
            let Some(CallUpdate::Ringing(call)) = bob.receive(&signal(ALICE, 1, CallAction::Offer), 10) else {
                unreachable!("rings")
            };
            assert_eq!((call.caller, call.direction), (user(ALICE), Direction::Incoming));
            assert_eq!(bob.receive(&signal(ALICE, 1, CallAction::Offer), 20), None, "a repeated offer rings once");
        }
        assert!(phone.answer("c1"));
        let answer = signal(BOB, 1, CallAction::Answer);
        assert_eq!(
            laptop.receive(&answer, 30),
            Some(CallUpdate::Ended { call_id: "c1".into(), reason: EndReason::AnsweredElsewhere })
        );
        let Some(CallUpdate::Answered { device: by, sdp, .. }) = alice.receive(&answer, 30) else {
            unreachable!("answered")
        };
        assert_eq!((by, sdp.as_deref()), (device(BOB, 1), Some("sdp from 2/1")));
        assert_eq!(alice.get("c1").map(|call| call.state), Some(CallState::Connected(device(BOB, 1))));

        // Candidates flow; only the connected device's hangup ends the call for the caller.
        let Some(CallUpdate::Candidate { .. }) = alice.receive(&signal(BOB, 1, CallAction::Ice), 40) else {
            unreachable!("a candidate")
        };
        assert_eq!(alice.receive(&signal(BOB, 2, CallAction::Hangup), 50), None);
        assert_eq!(
            alice.receive(&signal(BOB, 1, CallAction::Hangup), 60),
            Some(CallUpdate::Ended { call_id: "c1".into(), reason: EndReason::HungUp })
        );
        assert_eq!(phone.hang_up("c1"), Some(EndReason::HungUp));
        assert_eq!(phone.hang_up("c1"), None, "over");
    }

    #[test]
    fn declining_busy_and_unanswered_calls_end_as_such() {
        // Declined on one device: the others stop, the caller hears it.
        let mut alice = Calls::new(user(ALICE), device(ALICE, 1));
        alice.place("c1", ConversationId::from_bytes([9; 16]), false, 0);
        let (mut phone, mut laptop) = (Calls::new(user(BOB), device(BOB, 1)), Calls::new(user(BOB), device(BOB, 1)));
        phone.receive(&signal(ALICE, 1, CallAction::Offer), 0);
        laptop.receive(&signal(ALICE, 1, CallAction::Offer), 0);
        assert_eq!(phone.hang_up("c1"), Some(EndReason::Declined));
        let decline = signal(BOB, 1, CallAction::Hangup);
        assert_eq!(
            laptop.receive(&decline, 5),
            Some(CallUpdate::Ended { call_id: "c1".into(), reason: EndReason::Declined })
        );
        assert_eq!(
            alice.receive(&decline, 5),
            Some(CallUpdate::Ended { call_id: "c1".into(), reason: EndReason::Declined })
        );

        // A device in a call is busy for another caller.
        let mut carol = Calls::new(user(CAROL), device(CAROL, 1));
        carol.receive(&signal(ALICE, 1, CallAction::Offer), 0);
        assert!(carol.answer("c1"));
        let mut other = signal(BOB, 1, CallAction::Offer);
        other.call_id = "c2".into();
        assert_eq!(carol.receive(&other, 1), Some(CallUpdate::Busy(other.clone())));
        let mut bob = Calls::new(user(BOB), device(BOB, 1));
        bob.place("c2", other.conversation_id, false, 0);
        let mut busy = signal(CAROL, 1, CallAction::Busy);
        busy.call_id = "c2".into();
        assert_eq!(bob.receive(&busy, 2), Some(CallUpdate::Ended { call_id: "c2".into(), reason: EndReason::Busy }));

        // Nobody answers: missed on both sides, once.
        let mut alice = Calls::new(user(ALICE), device(ALICE, 1));
        alice.place("c3", ConversationId::from_bytes([9; 16]), true, 0);
        let mut bob = Calls::new(user(BOB), device(BOB, 1));
        let mut offer = signal(ALICE, 1, CallAction::Offer);
        offer.call_id = "c3".into();
        bob.receive(&offer, 100);
        assert!(alice.expire(RING_MS - 1).is_empty());
        assert_eq!(alice.expire(RING_MS), vec![CallUpdate::Ended { call_id: "c3".into(), reason: EndReason::Missed }]);
        assert!(alice.expire(RING_MS * 2).is_empty());
        let mut gave_up = signal(ALICE, 1, CallAction::Hangup);
        gave_up.call_id = "c3".into();
        assert_eq!(
            bob.receive(&gave_up, 200),
            Some(CallUpdate::Ended { call_id: "c3".into(), reason: EndReason::Missed })
        );
    }

    #[test]
    fn signals_for_unknown_calls_or_other_conversations_change_nothing() {
        let mut bob = Calls::new(user(BOB), device(BOB, 1));
        assert_eq!(bob.receive(&signal(ALICE, 1, CallAction::Answer), 0), None);
        bob.receive(&signal(ALICE, 1, CallAction::Offer), 0);
        let mut elsewhere = signal(ALICE, 1, CallAction::Hangup);
        elsewhere.conversation_id = ConversationId::from_bytes([8; 16]);
        assert_eq!(bob.receive(&elsewhere, 1), None);
        assert_eq!(bob.get("c1").map(|call| call.state), Some(CallState::Ringing));
        // Its own user's offer (another device calling) does not ring here.
        let mut mine = Calls::new(user(ALICE), device(ALICE, 1));
        assert_eq!(mine.receive(&signal(ALICE, 2, CallAction::Offer), 0), None);
    }
}
