//! What travels on the bus: small JSON objects, one per message, locked by a golden test.

use roost_proto::{ConversationId, DeviceId};
use serde::{Deserialize, Serialize};

use crate::services::cache::Stale;

/// A message on the bus: what it says, and the instance that said it (an instance ignores its
/// own messages, such as the kick it sends when it takes a device's socket over).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Envelope<W> {
    pub(super) o: u64,
    #[serde(flatten)]
    pub(super) w: W,
}

/// What travels on the caches channel: an invalidation, numbered by its instance so that each
/// instance that applied it can confirm it (on `roost:ack:<instance>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Change {
    pub(super) i: u64,
    #[serde(flatten)]
    pub(super) f: Forget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(super) enum Forget {
    /// A session ended (hex of its token's hash).
    Session { h: String },
    /// A conversation's members changed.
    Members { c: ConversationId },
    /// A device was revoked.
    Revoked { d: DeviceId },
    /// The sending instance could not publish for a while (Redis did not answer it): live events
    /// and invalidations from it may have been lost. Not confirmed.
    Missed,
}

impl Forget {
    pub(super) fn of(stale: Stale) -> Self {
        match stale {
            Stale::Session(hash) => Self::Session { h: hex(&hash) },
            Stale::Members(c) => Self::Members { c },
            Stale::Revoked(d) => Self::Revoked { d },
        }
    }

    pub(super) fn stale(self) -> Option<Stale> {
        Some(match self {
            Self::Session { h } => Stale::Session(unhex(&h)?),
            Self::Members { c } => Stale::Members(c),
            Self::Revoked { d } => Stale::Revoked(d),
            Self::Missed => return None,
        })
    }
}

/// What travels on a device's channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(super) enum Wire {
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
pub(super) enum Kick {
    Replaced,
    SlowConsumer,
    Revoked,
}

pub(super) fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
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
        let missed = Envelope { o: 7, w: Change { i: 4, f: Forget::Missed } };
        let text = serde_json::to_string(&missed).unwrap_or_default();
        assert_eq!(text, r#"{"o":7,"i":4,"t":"missed"}"#);
        assert_eq!(serde_json::from_str::<Envelope<Change>>(&text).ok(), Some(missed));
        assert_eq!(Forget::Missed.stale(), None);
        for stale in [Stale::Session([5; 32]), Stale::Members(id), Stale::Revoked(DeviceId::from_bytes([1; 32]))] {
            assert_eq!(Forget::of(stale).stale(), Some(stale));
        }
        assert_eq!(unhex(&hex(&[0xab; 32])), Some([0xab; 32]));
        assert_eq!(unhex("zz"), None);
    }
}
