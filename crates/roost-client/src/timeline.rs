//! A conversation as people read it: the stored messages with every edit, deletion, reaction,
//! poll vote and profile applied, by the rules every Roost client follows (docs/protocol.md,
//! "Content"). The server cannot see any of it, so each client computes the same result from
//! the same ordered history:
//!
//! - an edit counts only from the author of the message it edits, and only for text and
//!   replies; the last one wins;
//! - a deletion counts only from the author; a deleted message keeps its place but shows
//!   nothing, and takes its reactions with it;
//! - a reaction is per user and emoji: adding twice is once, `remove` withdraws it;
//! - a poll vote is per user (any of their devices): the last one replaces the earlier, no
//!   choices withdraws it, choices out of range are ignored, a single-choice poll keeps the
//!   first; votes after the author closes the poll do not count;
//! - a profile sets the name its sender is shown by.
//!
//! Whatever refers to a message this device does not have (before it joined, or pruned) is
//! ignored.

use std::collections::{BTreeMap, HashMap};

use roost_proto::{DeviceId, UserId};

use crate::content::{Content, MAX_POLL_OPTIONS};
use crate::store::StoredMessage;

/// One shown message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineItem {
    /// Its sequence number.
    pub seq: u64,
    /// The sender.
    pub sender_user: UserId,
    /// The sending device.
    pub sender_device: DeviceId,
    /// When the server accepted it.
    pub created_at: i64,
    /// What it says now: for an edited text or reply, the last edit's text.
    pub content: Content,
    /// Its author edited it.
    pub edited: bool,
    /// Its author deleted it: show that it was, not what it said.
    pub deleted: bool,
    /// Reactions: each emoji with the users who chose it, in the order they did.
    pub reactions: BTreeMap<String, Vec<UserId>>,
    /// For a reply, the message it answers, as it stands now (if this device has it).
    pub quote: Option<Quote>,
    /// For a poll, its tally.
    pub poll: Option<PollTally>,
}

/// The message a reply answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// Its sequence number.
    pub seq: u64,
    /// Its sender.
    pub sender_user: UserId,
    /// Its text as shown now.
    pub text: String,
}

/// Where a poll stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PollTally {
    /// Votes per option, in the poll's order.
    pub counts: Vec<u32>,
    /// Each voter's current choices.
    pub voters: BTreeMap<UserId, Vec<u32>>,
    /// The author closed it.
    pub closed: bool,
}

/// A conversation's shown messages, and the names its members chose for themselves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Timeline {
    /// The shown messages, in order.
    pub items: Vec<TimelineItem>,
    /// Display names set by [`Content::Profile`], by user.
    pub display_names: HashMap<UserId, String>,
}

impl TimelineItem {
    /// A one-line rendering for people: "(deleted)", or the content with "(edited)" and any
    /// poll tally. A reply is its text alone when its [`quote`](Self::quote) is there to show.
    pub fn text(&self) -> String {
        if self.deleted {
            return "(deleted)".to_owned();
        }
        let mut text = match (&self.content, &self.poll) {
            (Content::Poll { question, options, .. }, Some(poll)) => {
                let tallies: Vec<String> =
                    options.iter().zip(&poll.counts).map(|(option, count)| format!("{option} {count}")).collect();
                let closed = if poll.closed { " (closed)" } else { "" };
                format!("(poll) {question} [{}]{closed}", tallies.join(" / "))
            }
            (Content::Reply { body, .. }, _) if self.quote.is_some() => body.clone(),
            (content, _) => content.display(),
        };
        if self.edited {
            text.push_str(" (edited)");
        }
        text
    }
}

/// Applies every message of `messages` (in sequence order) to the ones they refer to.
pub fn timeline(messages: &[StoredMessage]) -> Timeline {
    let mut shown = Timeline::default();
    let mut at: HashMap<u64, usize> = HashMap::new();
    for message in messages {
        let target = |seq: &u64| at.get(seq).copied();
        match &message.content {
            Content::Reaction { to_seq, emoji, remove } => {
                let Some(item) = target(to_seq).map(|index| &mut shown.items[index]) else { continue };
                if item.deleted {
                    continue;
                }
                let users = item.reactions.entry(emoji.clone()).or_default();
                users.retain(|user| *user != message.sender_user);
                if !remove {
                    users.push(message.sender_user);
                }
                item.reactions.retain(|_, users| !users.is_empty());
            }
            Content::Edit { to_seq, body } => {
                let Some(item) = target(to_seq).map(|index| &mut shown.items[index]) else { continue };
                if item.sender_user != message.sender_user || item.deleted {
                    continue;
                }
                if let Content::Text { body: shown_body } | Content::Reply { body: shown_body, .. } = &mut item.content
                {
                    shown_body.clone_from(body);
                    item.edited = true;
                }
            }
            Content::Delete { to_seq } => {
                let Some(item) = target(to_seq).map(|index| &mut shown.items[index]) else { continue };
                if item.sender_user == message.sender_user {
                    item.deleted = true;
                    item.reactions.clear();
                }
            }
            Content::PollVote { to_seq, choices } => {
                let Some(item) = target(to_seq).map(|index| &mut shown.items[index]) else { continue };
                let (Content::Poll { options, multiple, .. }, Some(poll)) = (&item.content, &mut item.poll) else {
                    continue;
                };
                if poll.closed || item.deleted {
                    continue;
                }
                let mut valid: Vec<u32> =
                    choices.iter().copied().filter(|choice| (*choice as usize) < options.len()).collect();
                if *multiple {
                    valid.sort_unstable();
                    valid.dedup();
                } else {
                    valid.truncate(1);
                }
                if valid.is_empty() {
                    poll.voters.remove(&message.sender_user);
                } else {
                    poll.voters.insert(message.sender_user, valid);
                }
            }
            Content::PollClose { to_seq } => {
                let Some(item) = target(to_seq).map(|index| &mut shown.items[index]) else { continue };
                if let (true, Some(poll)) = (item.sender_user == message.sender_user, &mut item.poll) {
                    poll.closed = true;
                }
            }
            // Signalling travels ephemerally; one stored by mistake is nothing to show.
            Content::Call { .. } => {}
            Content::Profile { display_name } => match display_name {
                Some(name) => {
                    shown.display_names.insert(message.sender_user, name.clone());
                }
                None => {
                    shown.display_names.remove(&message.sender_user);
                }
            },
            content => {
                let poll = match content {
                    Content::Poll { options, .. } if (2..=MAX_POLL_OPTIONS).contains(&options.len()) => {
                        Some(PollTally::default())
                    }
                    _ => None,
                };
                at.insert(message.seq, shown.items.len());
                shown.items.push(TimelineItem {
                    seq: message.seq,
                    sender_user: message.sender_user,
                    sender_device: message.sender_device,
                    created_at: message.created_at,
                    content: content.clone(),
                    edited: false,
                    deleted: false,
                    reactions: BTreeMap::new(),
                    quote: None,
                    poll,
                });
            }
        }
    }
    // Tallies and quotes once everything is applied, so they show messages as they stand.
    let texts: HashMap<u64, (UserId, String)> =
        shown.items.iter().map(|item| (item.seq, (item.sender_user, item.text()))).collect();
    for item in &mut shown.items {
        if let (Content::Poll { options, .. }, Some(poll)) = (&item.content, &mut item.poll) {
            poll.counts = vec![0; options.len()];
            for choice in poll.voters.values().flatten() {
                poll.counts[*choice as usize] += 1;
            }
        }
        if let Content::Reply { to_seq, .. } = &item.content {
            item.quote = texts.get(to_seq).map(|(sender_user, text)| Quote {
                seq: *to_seq,
                sender_user: *sender_user,
                text: text.clone(),
            });
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use roost_proto::ConversationId;

    use super::*;

    struct History {
        messages: Vec<StoredMessage>,
    }

    impl History {
        fn new() -> Self {
            Self { messages: Vec::new() }
        }

        fn add(&mut self, sender: u8, content: Content) -> u64 {
            let seq = self.messages.len() as u64 + 1;
            self.messages.push(StoredMessage {
                conversation_id: ConversationId::from_bytes([1; 16]),
                seq,
                sender_user: user(sender),
                sender_device: DeviceId::from_bytes([sender; 32]),
                created_at: 1_000 * seq as i64,
                content,
            });
            seq
        }
    }

    fn user(n: u8) -> UserId {
        UserId::from_bytes([n; 32])
    }

    fn text(body: &str) -> Content {
        Content::Text { body: body.into() }
    }

    #[test]
    fn only_the_author_edits_and_deletes_and_the_last_edit_counts() {
        let mut history = History::new();
        let hello = history.add(1, text("helo"));
        history.add(2, Content::Edit { to_seq: hello, body: "hijacked".into() });
        history.add(1, Content::Edit { to_seq: hello, body: "hello".into() });
        history.add(1, Content::Edit { to_seq: hello, body: "hello!".into() });
        let other = history.add(2, text("mine"));
        history.add(1, Content::Delete { to_seq: other });
        history.add(2, Content::Edit { to_seq: 99, body: "before I joined".into() });
        let shown = timeline(&history.messages);
        assert_eq!(shown.items.len(), 2, "edits and deletes are not shown themselves");
        assert_eq!((shown.items[0].text(), shown.items[0].edited), ("hello! (edited)".to_owned(), true));
        assert_eq!(shown.items[1].text(), "mine", "another user's delete does not count");

        history.add(2, Content::Delete { to_seq: other });
        history.add(2, Content::Edit { to_seq: other, body: "back".into() });
        let shown = timeline(&history.messages);
        assert_eq!(shown.items[1].text(), "(deleted)", "an edit does not bring a deleted message back");
    }

    #[test]
    fn reactions_are_per_user_and_emoji_and_can_be_withdrawn() {
        let mut history = History::new();
        let hello = history.add(1, text("hello"));
        let react = |emoji: &str, remove| Content::Reaction { to_seq: hello, emoji: emoji.into(), remove };
        history.add(2, react("👍", false));
        history.add(2, react("👍", false));
        history.add(3, react("👍", false));
        history.add(3, react("🎉", false));
        history.add(3, react("🎉", true));
        let shown = timeline(&history.messages);
        let reactions = &shown.items[0].reactions;
        assert_eq!(reactions.len(), 1, "{reactions:?}");
        assert_eq!(reactions["👍"], vec![user(2), user(3)]);
    }

    #[test]
    fn replies_quote_the_message_as_it_stands() {
        let mut history = History::new();
        let question = history.add(1, text("lunch at 12?"));
        let reply = Content::Reply { to_seq: question, body: "yes".into() };
        history.add(2, reply);
        history.add(1, Content::Edit { to_seq: question, body: "lunch at 1?".into() });
        history.add(2, Content::Reply { to_seq: 77, body: "to something I never had".into() });
        let shown = timeline(&history.messages);
        let quote = shown.items[1].quote.clone().expect("a quote");
        assert_eq!((quote.seq, quote.sender_user, quote.text.as_str()), (1, user(1), "lunch at 1? (edited)"));
        assert_eq!(shown.items[2].quote, None);
    }

    #[test]
    fn polls_count_each_users_last_vote_until_the_author_closes_them() {
        let mut history = History::new();
        let options = vec!["pizza".to_owned(), "sushi".to_owned(), "salad".to_owned()];
        let single =
            history.add(1, Content::Poll { question: "lunch?".into(), options: options.clone(), multiple: false });
        let vote = |poll, choices: &[u32]| Content::PollVote { to_seq: poll, choices: choices.to_vec() };
        history.add(2, vote(single, &[0]));
        history.add(2, vote(single, &[1])); // changes the vote
        history.add(3, vote(single, &[1, 2])); // single choice: the first counts
        history.add(4, vote(single, &[9])); // out of range: nothing
        history.add(5, vote(single, &[0]));
        history.add(5, vote(single, &[])); // withdrawn
        history.add(2, Content::PollClose { to_seq: single }); // not the author: ignored
        history.add(6, vote(single, &[2]));
        history.add(1, Content::PollClose { to_seq: single });
        history.add(7, vote(single, &[0])); // after closing
        let multiple = history.add(2, Content::Poll { question: "drinks?".into(), options, multiple: true });
        history.add(3, vote(multiple, &[0, 2, 2]));
        let shown = timeline(&history.messages);
        let poll = shown.items[0].poll.clone().expect("a tally");
        assert_eq!((poll.counts, poll.closed), (vec![0, 2, 1], true));
        assert_eq!(shown.items[0].text(), "(poll) lunch? [pizza 0 / sushi 2 / salad 1] (closed)");
        assert_eq!(shown.items[1].poll.as_ref().map(|poll| poll.counts.clone()), Some(vec![1, 0, 1]));
    }

    #[test]
    fn profiles_name_their_senders() {
        let mut history = History::new();
        history.add(1, Content::Profile { display_name: Some("Alice L.".into()) });
        history.add(2, Content::Profile { display_name: Some("Bob".into()) });
        history.add(2, Content::Profile { display_name: None });
        let shown = timeline(&history.messages);
        assert!(shown.items.is_empty());
        assert_eq!(shown.display_names, HashMap::from([(user(1), "Alice L.".to_owned())]));
    }
}
