//! Conversations: the MLS Delivery Service. The server never reads what it relays; it checks
//! membership, epochs, sizes and the user count of each kind, and keeps one ordered log per
//! conversation.

use std::collections::BTreeSet;
use std::sync::Arc;

use roost_proto::conversation::{
    CommitAccepted, CommitRequest, ConversationKind, ConversationList, ConversationSummary, CreateConversationRequest,
    Entry, EntryKind, ExternalJoinRequest, GroupInfoResponse, HistoryResponse, LeaveRequest, Member, QueueKind,
    RetentionPolicy, SendAccepted, SendRequest, Settings, wire_format,
};
use roost_proto::socket::ServerFrame;
use roost_proto::{Base64Bytes, ConversationId, DeviceId};
use roost_store::{CommitWrite, ConversationView, MemberDevice, MemberRef, MessageWrite, NewConversation, QueueWrite};

use super::cache::{Stale, Ticket};
use super::delivery::entry_view;
use super::{Caller, Context};
use crate::error::{Error, Result};
use crate::hub::{EncodedFrame, Hub, LiveEvent, PushedEntry};

/// Rows deleted per transaction when pruning: small enough that sends never wait long behind a
/// pruning transaction, large enough that a backlog goes in few of them.
const PRUNE_BATCH: u32 = 5_000;
const MAX_CLIENT_MESSAGE_ID_CHARS: usize = 64;
const DEFAULT_PAGE: u32 = 50;

/// The conversation service.
#[derive(Clone)]
pub struct Conversations {
    ctx: Arc<Context>,
    hub: Arc<Hub>,
}

impl Conversations {
    pub(crate) fn new(ctx: Arc<Context>, hub: Arc<Hub>) -> Self {
        Self { ctx, hub }
    }

    /// Creates a conversation of the caller's device and the devices it welcomes.
    pub async fn create(&self, caller: &Caller, request: CreateConversationRequest) -> Result<ConversationSummary> {
        let limits = &self.ctx.config.limits;
        check_size("group_info", request.group_info.as_bytes(), limits.max_handshake_bytes)?;
        if let Some(welcome) = &request.welcome {
            check_size("welcome", welcome.as_bytes(), limits.max_handshake_bytes)?;
        }
        let retention = match request.retention {
            Some(policy) => self.check_retention(policy)?,
            None => self.default_retention(),
        };
        let devices = distinct(&request.members, "members")?;
        if devices.contains(&caller.device_id) {
            return Err(Error::invalid("members lists the other devices; the creator's device is implied"));
        }
        require_welcome(!devices.is_empty(), request.welcome.is_some())?;
        let members = self.active_devices(&devices).await?;
        let welcomed: Vec<DeviceId> = members.iter().map(|m| m.device_id).collect();
        let users: BTreeSet<_> = members.iter().map(|m| m.user_id).chain([caller.user_id]).collect();
        let users_allowed = match request.kind {
            ConversationKind::Direct => users.len() == 2,
            ConversationKind::NoteToSelf => users.len() == 1,
            ConversationKind::Group => users.len() <= self.ctx.config.limits.max_group_users as usize,
        };
        if !users_allowed {
            return Err(Error::new(
                roost_proto::ErrorCode::MemberLimitReached,
                "a direct chat holds exactly two users, a note to self one, a group at most the configured maximum",
            ));
        }
        let created = self
            .ctx
            .store
            .create_conversation(NewConversation {
                id: request.conversation_id,
                kind: request.kind,
                epoch: request.epoch,
                group_info: request.group_info.into_vec(),
                retention,
                creator: member_of(caller),
                members,
                welcome: request.welcome.map(Base64Bytes::into_vec),
                created_at: self.ctx.now(),
            })
            .await;
        // A typing frame may have cached "no members" for this id before it existed.
        super::forget_everywhere(&self.ctx, &self.hub, Stale::Members(request.conversation_id)).await;
        created?;
        self.hub.publish(welcomed, LiveEvent::Queued);
        self.summary(caller, &request.conversation_id).await
    }

    /// One conversation as the caller sees it.
    pub async fn summary(&self, caller: &Caller, id: &ConversationId) -> Result<ConversationSummary> {
        let view = self.ctx.store.conversation_view(id, &caller.device_id, &caller.user_id).await?;
        match view {
            Some(view) => Ok(summary_of(view, caller)),
            None => Err(self.absent_or_forbidden(id).await),
        }
    }

    /// A page of the caller device's conversations, by id.
    pub async fn list(&self, caller: &Caller, cursor: Option<&str>, limit: Option<u32>) -> Result<ConversationList> {
        let limit = self.page_size(limit)?;
        let after = cursor
            .map(|text| {
                text.parse::<ConversationId>().map_err(|_| Error::invalid("cursor is not one this server issued"))
            })
            .transpose()?;
        let views = self.ctx.store.conversations_of(&caller.device_id, &caller.user_id, after, limit).await?;
        let cursor = (views.len() == limit as usize).then(|| views.last().map(|v| v.record.id.to_string())).flatten();
        Ok(ConversationList { conversations: views.into_iter().map(|v| summary_of(v, caller)).collect(), cursor })
    }

    /// Applies an MLS commit from a member device, with its membership delta.
    pub async fn commit(&self, caller: &Caller, id: &ConversationId, request: CommitRequest) -> Result<CommitAccepted> {
        let limits = &self.ctx.config.limits;
        check_size("commit", request.commit.as_bytes(), limits.max_handshake_bytes)?;
        check_size("group_info", request.group_info.as_bytes(), limits.max_handshake_bytes)?;
        if let Some(welcome) = &request.welcome {
            check_size("welcome", welcome.as_bytes(), limits.max_handshake_bytes)?;
        }
        // Members process only encrypted handshakes: a PublicMessage commit would be stored, and
        // every member would then refuse it and lose the group.
        require_wire_format(
            request.commit.as_bytes(),
            wire_format::PRIVATE_MESSAGE,
            "a member commit",
            "private_message",
        )?;
        let add = distinct(&request.add, "add")?;
        let remove = distinct(&request.remove, "remove")?;
        if add.iter().any(|d| remove.contains(d)) {
            return Err(Error::invalid("a device cannot be added and removed by the same commit"));
        }
        require_welcome(!add.is_empty(), request.welcome.is_some())?;
        let conversation =
            self.ctx.store.conversation(id).await?.ok_or_else(|| Error::not_found("no such conversation"))?;
        let added = self.active_devices(&add).await?;
        let write = CommitWrite {
            conversation_id: *id,
            epoch: request.epoch,
            sender: member_of(caller),
            external: false,
            commit: request.commit.into_vec(),
            group_info: request.group_info.into_vec(),
            add: added,
            welcome: request.welcome.map(Base64Bytes::into_vec),
            remove: remove.into_iter().collect(),
            max_users: self.max_users(conversation.kind),
            now: self.ctx.now(),
        };
        self.apply_commit(write).await
    }

    /// A new device of a member user joins by an MLS external commit.
    pub async fn external_join(
        &self,
        caller: &Caller,
        id: &ConversationId,
        request: ExternalJoinRequest,
    ) -> Result<CommitAccepted> {
        let limits = &self.ctx.config.limits;
        check_size("commit", request.commit.as_bytes(), limits.max_handshake_bytes)?;
        check_size("group_info", request.group_info.as_bytes(), limits.max_handshake_bytes)?;
        // A device that is not a member yet has no key to encrypt with.
        require_wire_format(
            request.commit.as_bytes(),
            wire_format::PUBLIC_MESSAGE,
            "an external commit",
            "public_message",
        )?;
        let conversation =
            self.ctx.store.conversation(id).await?.ok_or_else(|| Error::not_found("no such conversation"))?;
        let write = CommitWrite {
            conversation_id: *id,
            epoch: request.epoch,
            sender: member_of(caller),
            external: true,
            commit: request.commit.into_vec(),
            group_info: request.group_info.into_vec(),
            add: Vec::new(),
            welcome: None,
            remove: Vec::new(),
            max_users: self.max_users(conversation.kind),
            now: self.ctx.now(),
        };
        self.apply_commit(write).await
    }

    /// Stores a commit, then pushes it to connected member devices (the removed ones included:
    /// they learn of their removal from it) and wakes the devices that got queue entries.
    async fn apply_commit(&self, write: CommitWrite) -> Result<CommitAccepted> {
        // The pushed frame needs the commit bytes the store consumes. They are kept whether or
        // not a device is connected now: one that connects while the commit is under way may
        // have read the store before it, and then only the push brings it this entry.
        let pushed = write.clone();
        let id = write.conversation_id;
        let changes_members = !write.add.is_empty() || !write.remove.is_empty();
        let outcome = self.ctx.store.commit(write).await;
        if changes_members {
            super::forget_everywhere(&self.ctx, &self.hub, Stale::Members(id)).await;
        } else {
            self.ctx.members.forget(&id);
        }
        let outcome = outcome?;
        {
            let write = pushed;
            let entry = Entry {
                conversation_id: write.conversation_id,
                seq: outcome.seq,
                kind: EntryKind::Commit,
                sender_user: write.sender.user_id,
                sender_device: write.sender.device_id,
                epoch: write.epoch,
                payload: write.commit.into(),
                created_at: write.now,
            };
            self.push_entry(entry, &write.remove).await;
            let queued = write.add.iter().map(|m| m.device_id).chain(write.remove.iter().copied());
            self.hub.publish(queued, LiveEvent::Queued);
        }
        Ok(CommitAccepted { seq: outcome.seq, epoch: outcome.epoch })
    }

    /// The current GroupInfo, for member devices and for new devices of member users (external
    /// joins).
    pub async fn group_info(&self, caller: &Caller, id: &ConversationId) -> Result<GroupInfoResponse> {
        let conversation =
            self.ctx.store.conversation(id).await?.ok_or_else(|| Error::not_found("no such conversation"))?;
        if !self.ctx.store.is_member_user(id, &caller.user_id).await? {
            return Err(Error::not_a_member());
        }
        Ok(GroupInfoResponse { epoch: conversation.epoch, group_info: conversation.group_info.into() })
    }

    /// Sends an application message (stored and sequenced) or an ephemeral one (pushed to
    /// online member devices only).
    pub async fn send(&self, caller: &Caller, id: &ConversationId, request: SendRequest) -> Result<SendAccepted> {
        self.ctx.limits.sends.check(&caller.device_id).await?;
        let chars = request.client_message_id.chars().count();
        if chars == 0 || chars > MAX_CLIENT_MESSAGE_ID_CHARS || request.client_message_id.chars().any(char::is_control)
        {
            return Err(Error::invalid("client_message_id is 1 to 64 characters without control characters"));
        }
        if request.ciphertext.as_bytes().is_empty() {
            return Err(Error::invalid("ciphertext must not be empty"));
        }
        check_size("ciphertext", request.ciphertext.as_bytes(), self.ctx.config.limits.max_message_bytes)?;
        let now = self.ctx.now();
        if request.ephemeral {
            return self.send_ephemeral(caller, id, request, now).await;
        }
        let write = MessageWrite {
            conversation_id: *id,
            sender: member_of(caller),
            client_message_id: request.client_message_id,
            epoch: request.epoch,
            payload: request.ciphertext.into_vec(),
            now,
        };
        // The pushed frame needs the ciphertext the store consumes. It is kept whether or not a
        // device is connected now: one that connects while the commit is under way may have
        // read the store before the commit, and then only the push brings it this entry.
        let payload = write.payload.clone();
        let appended = self.ctx.store.append_message(write).await?;
        if !appended.duplicate {
            let entry = Entry {
                conversation_id: *id,
                seq: appended.seq,
                kind: EntryKind::Message,
                sender_user: caller.user_id,
                sender_device: caller.device_id,
                epoch: request.epoch,
                payload: payload.into(),
                created_at: appended.created_at,
            };
            self.push_entry(entry, &[]).await;
        }
        Ok(SendAccepted { seq: Some(appended.seq), created_at: appended.created_at, duplicate: appended.duplicate })
    }

    async fn send_ephemeral(
        &self,
        caller: &Caller,
        id: &ConversationId,
        request: SendRequest,
        now: i64,
    ) -> Result<SendAccepted> {
        let conversation =
            self.ctx.store.conversation(id).await?.ok_or_else(|| Error::not_found("no such conversation"))?;
        let members = self.members(id).await?;
        if !members.iter().any(|m| m.device_id == caller.device_id) {
            return Err(Error::not_a_member());
        }
        if conversation.epoch != request.epoch {
            return Err(roost_store::StoreError::StaleEpoch { current: conversation.epoch }.into());
        }
        let others = members.iter().map(|m| m.device_id).filter(|d| *d != caller.device_id);
        let frame = ServerFrame::Ephemeral {
            conversation_id: *id,
            sender_user: caller.user_id,
            sender_device: caller.device_id,
            epoch: request.epoch,
            payload: request.ciphertext,
        };
        self.hub.publish(others, LiveEvent::Frame(EncodedFrame::encode(&frame)));
        Ok(SendAccepted { seq: None, created_at: now, duplicate: false })
    }

    /// Takes every device of the caller's user out of the conversation.
    pub async fn leave(&self, caller: &Caller, id: &ConversationId, request: LeaveRequest) -> Result<u64> {
        let payload = request.payload.map(Base64Bytes::into_vec).unwrap_or_default();
        check_size("payload", &payload, self.ctx.config.limits.max_handshake_bytes)?;
        let now = self.ctx.now();
        // The leaving user's devices get the leave entry too (and nothing after it): look the
        // members up first. Looked up whether or not a device is connected now, since one may
        // connect while the leave is stored.
        let members = match self.members(id).await {
            Ok(members) => members,
            Err(err) => {
                tracing::warn!(error = %err, "could not list members to push to");
                Arc::from([])
            }
        };
        let recipients: Vec<DeviceId> = members.iter().map(|m| m.device_id).collect();
        let leaving: Vec<DeviceId> =
            members.iter().filter(|m| m.user_id == caller.user_id).map(|m| m.device_id).collect();
        let seq = self.ctx.store.leave(id, member_of(caller), payload.clone(), now).await;
        super::forget_everywhere(&self.ctx, &self.hub, Stale::Members(*id)).await;
        let seq = seq?;
        let conversation = self.ctx.store.conversation(id).await?;
        let entry = Entry {
            conversation_id: *id,
            seq,
            kind: EntryKind::Leave,
            sender_user: caller.user_id,
            sender_device: caller.device_id,
            epoch: conversation.map_or(0, |c| c.epoch),
            payload: payload.into(),
            created_at: now,
        };
        self.publish_entry(entry, recipients, leaving.clone());
        // Their `removed` notices.
        self.hub.publish(leaving, LiveEvent::Queued);
        Ok(seq)
    }

    /// Sets the retention policy, within the server's limits.
    pub async fn set_retention(&self, caller: &Caller, id: &ConversationId, policy: RetentionPolicy) -> Result<()> {
        let policy = self.check_retention(policy)?;
        self.require_active_member(caller, id).await?;
        Ok(self.ctx.store.set_retention(id, policy).await?)
    }

    /// A page of retained entries before `before`, newest first, never from before the caller's
    /// device joined.
    pub async fn history(
        &self,
        caller: &Caller,
        id: &ConversationId,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<HistoryResponse> {
        let limit = self.page_size(limit)?;
        let membership = self.require_active_member(caller, id).await?;
        let before = before.unwrap_or(u64::MAX);
        let entries = self.ctx.store.history(id, membership.joined_seq, before, limit).await?;
        let next = match entries.last() {
            Some(last) if entries.len() == limit as usize && last.seq > membership.joined_seq + 1 => Some(last.seq),
            _ => None,
        };
        Ok(HistoryResponse { entries: entries.into_iter().map(entry_view).collect(), before: next })
    }

    /// Moves the caller's user's read position forward; syncs it to the user's other devices and
    /// announces it to the other members unless the user turned read receipts off.
    pub async fn mark_read(&self, caller: &Caller, id: &ConversationId, seq: u64) -> Result<u64> {
        self.require_active_member(caller, id).await?;
        let store = &self.ctx.store;
        let Some(read_seq) = store.advance_read_marker(id, &caller.user_id, seq).await? else {
            let view = store.conversation_view(id, &caller.device_id, &caller.user_id).await?;
            let current = view.and_then(|v| v.members.iter().find(|m| m.user_id == caller.user_id).map(|m| m.read_seq));
            return Ok(current.unwrap_or(0));
        };
        let devices = self.members(id).await?;
        let (own, others): (Vec<MemberRef>, Vec<MemberRef>) = devices.iter().partition(|m| m.user_id == caller.user_id);
        let payload = serde_json::to_vec(&serde_json::json!({ "seq": read_seq })).unwrap_or_default();
        let sync_to_own: Vec<QueueWrite> = own
            .iter()
            .filter(|m| m.device_id != caller.device_id)
            .map(|m| QueueWrite {
                device_id: m.device_id,
                kind: QueueKind::ReadMarker,
                conversation_id: Some(*id),
                seq: Some(read_seq),
                sender_device: Some(caller.device_id),
                payload: payload.clone(),
            })
            .collect();
        if !sync_to_own.is_empty() {
            store.enqueue(sync_to_own, self.ctx.now()).await?;
            self.hub.publish_without_waking(own.iter().map(|m| m.device_id), LiveEvent::Queued);
        }
        if store.read_receipts(&caller.user_id).await? {
            let receipt = ServerFrame::ReadReceipt { conversation_id: *id, user_id: caller.user_id, seq: read_seq };
            self.hub.publish(others.iter().map(|m| m.device_id), LiveEvent::Frame(EncodedFrame::encode(&receipt)));
        }
        Ok(read_seq)
    }

    /// Tells the other connected member devices that the caller is typing (or stopped). Never
    /// stored.
    pub async fn typing(&self, caller: &Caller, id: &ConversationId, active: bool) -> Result<()> {
        let members = self.members(id).await?;
        if !members.iter().any(|m| m.device_id == caller.device_id) {
            return Err(self.absent_or_forbidden(id).await);
        }
        let frame =
            ServerFrame::Typing { conversation_id: *id, user_id: caller.user_id, device_id: caller.device_id, active };
        let others = members.iter().map(|m| m.device_id).filter(|d| *d != caller.device_id);
        self.hub.publish(others, LiveEvent::Frame(EncodedFrame::encode(&frame)));
        Ok(())
    }

    /// Deletes entries past their conversation's TTL or the server's maximum age, and expired
    /// queue entries (the pruning worker calls this on its interval).
    pub async fn prune(&self) -> Result<u64> {
        let max_age_ms = self.max_age_secs().map(super::secs_to_ms);
        Ok(self.ctx.store.prune_retention(self.ctx.now(), max_age_ms, PRUNE_BATCH).await?)
    }

    /// The caller's user's settings.
    pub async fn settings(&self, caller: &Caller) -> Result<Settings> {
        Ok(Settings { read_receipts: self.ctx.store.read_receipts(&caller.user_id).await? })
    }

    /// Changes the caller's user's settings.
    pub async fn set_settings(&self, caller: &Caller, settings: Settings) -> Result<Settings> {
        self.ctx.store.set_read_receipts(&caller.user_id, settings.read_receipts).await?;
        Ok(settings)
    }

    async fn require_active_member(&self, caller: &Caller, id: &ConversationId) -> Result<MemberDevice> {
        match self.ctx.store.member_device(id, &caller.device_id).await? {
            Some(membership) if membership.is_active() => Ok(membership),
            _ => Err(self.absent_or_forbidden(id).await),
        }
    }

    async fn absent_or_forbidden(&self, id: &ConversationId) -> Error {
        match self.ctx.store.conversation(id).await {
            Ok(Some(_)) => Error::not_a_member(),
            Ok(None) => Error::not_found("no such conversation"),
            Err(err) => err.into(),
        }
    }

    /// Resolves device ids to active registered devices (and their users).
    async fn active_devices(&self, devices: &BTreeSet<DeviceId>) -> Result<Vec<MemberRef>> {
        let mut members = Vec::with_capacity(devices.len());
        for id in devices {
            let device = self.ctx.store.device(id).await?.filter(|d| d.revoked_at.is_none());
            let device = device.ok_or_else(|| Error::not_found(format!("no such active device: {id}")))?;
            members.push(MemberRef { user_id: device.user_id, device_id: device.id });
        }
        Ok(members)
    }

    /// Pushes a stored entry to every connected member device and to `removed` (devices this
    /// entry removed, which still receive it and nothing after). The frame is encoded once.
    async fn push_entry(&self, entry: Entry, removed: &[DeviceId]) {
        let mut recipients = self.live_recipients(&entry.conversation_id).await;
        recipients.extend_from_slice(removed);
        self.publish_entry(entry, recipients, removed.to_vec());
    }

    fn publish_entry(&self, entry: Entry, recipients: Vec<DeviceId>, ends_for: Vec<DeviceId>) {
        let (conversation_id, seq, author) = (entry.conversation_id, entry.seq, Some(entry.sender_device));
        let frame = EncodedFrame::encode(&ServerFrame::Entry(entry));
        let pushed = PushedEntry { conversation_id, seq, frame, ends_for, author };
        self.hub.publish(recipients, LiveEvent::Entry(Arc::new(pushed)));
    }

    /// The current member devices, when any device at all is connected (a lost push only delays
    /// delivery: the next sync or reconnect returns the entry).
    async fn live_recipients(&self, id: &ConversationId) -> Vec<DeviceId> {
        if !self.hub.may_have_listeners() {
            return Vec::new();
        }
        match self.members(id).await {
            Ok(devices) => devices.iter().map(|m| m.device_id).collect(),
            Err(err) => {
                tracing::warn!(error = %err, "could not list members to push to");
                Vec::new()
            }
        }
    }

    /// The conversation's current member devices, through the member cache (read on every send
    /// to find whom to push to).
    ///
    /// A busy conversation's list is read again in the background before it lapses. Were a
    /// send to read it itself, that send would publish its entry after the sends behind it
    /// that found the list cached, and the receivers would wait for the gap.
    async fn members(&self, id: &ConversationId) -> Result<Arc<[MemberRef]>> {
        match self.ctx.members.get_refreshing(id) {
            Ok((members, refresh)) => {
                if let Some(ticket) = refresh {
                    let (ctx, id) = (self.ctx.clone(), *id);
                    tokio::spawn(async move {
                        // A failed refresh leaves the list to lapse: the next send reads it.
                        let _ = read_members(&ctx, &id, ticket).await;
                    });
                }
                Ok(members)
            }
            Err(ticket) => read_members(&self.ctx, id, ticket).await,
        }
    }

    fn max_users(&self, kind: ConversationKind) -> u32 {
        match kind {
            ConversationKind::Direct => 2,
            ConversationKind::NoteToSelf => 1,
            ConversationKind::Group => self.ctx.config.limits.max_group_users,
        }
    }

    fn page_size(&self, limit: Option<u32>) -> Result<u32> {
        let max = self.ctx.config.limits.max_page_size;
        match limit {
            None => Ok(DEFAULT_PAGE.min(max)),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(_) => Err(Error::invalid(format!("limit is 1 to {max}"))),
        }
    }

    fn max_age_secs(&self) -> Option<u64> {
        Some(self.ctx.config.retention.max_age_secs).filter(|secs| *secs > 0)
    }

    fn default_retention(&self) -> RetentionPolicy {
        match self.max_age_secs() {
            Some(ttl_secs) => RetentionPolicy::Ttl { ttl_secs },
            None => RetentionPolicy::Permanent,
        }
    }

    fn check_retention(&self, policy: RetentionPolicy) -> Result<RetentionPolicy> {
        match (policy, self.max_age_secs()) {
            (RetentionPolicy::BurnOnRead, _) => Ok(policy),
            (RetentionPolicy::Ttl { ttl_secs: 0 }, _) => Err(Error::invalid("ttl_secs must be at least 1")),
            (RetentionPolicy::Ttl { ttl_secs }, Some(max)) if ttl_secs > max => {
                Err(Error::invalid(format!("ttl_secs may be at most this server's maximum age, {max} seconds")))
            }
            (RetentionPolicy::Ttl { .. }, _) => Ok(policy),
            (RetentionPolicy::Permanent, None) if self.ctx.config.retention.allow_permanent => Ok(policy),
            (RetentionPolicy::Permanent, _) => {
                Err(Error::invalid("permanent retention is not available on this server"))
            }
        }
    }
}

fn member_of(caller: &Caller) -> MemberRef {
    MemberRef { user_id: caller.user_id, device_id: caller.device_id }
}

fn summary_of(view: ConversationView, caller: &Caller) -> ConversationSummary {
    let read_seq = view.members.iter().find(|m| m.user_id == caller.user_id).map_or(0, |m| m.read_seq);
    let members = view
        .members
        .iter()
        .map(|m| Member {
            user_id: m.user_id,
            read_seq: (m.user_id == caller.user_id || m.read_receipts).then_some(m.read_seq),
        })
        .collect();
    ConversationSummary {
        conversation_id: view.record.id,
        kind: view.record.kind,
        epoch: view.record.epoch,
        members,
        last_seq: view.record.last_seq,
        read_seq,
        unread: view.unread,
        retention: view.record.retention,
        joined_seq: view.joined_seq,
    }
}

/// Refuses MLS bytes of another wire format than `expected`.
fn require_wire_format(bytes: &[u8], expected: u16, what: &str, name: &str) -> Result<()> {
    if wire_format::of(bytes) == Some(expected) {
        Ok(())
    } else {
        Err(Error::invalid(format!("{what} must be a TLS-serialised MLSMessage (mls10) of wire format {name}")))
    }
}

fn check_size(what: &str, bytes: &[u8], limit: usize) -> Result<()> {
    if bytes.len() > limit { Err(Error::too_large(what, limit)) } else { Ok(()) }
}

fn distinct(devices: &[DeviceId], field: &str) -> Result<BTreeSet<DeviceId>> {
    let set: BTreeSet<DeviceId> = devices.iter().copied().collect();
    if set.len() == devices.len() { Ok(set) } else { Err(Error::invalid(format!("{field} names a device twice"))) }
}

fn require_welcome(adds_devices: bool, has_welcome: bool) -> Result<()> {
    match (adds_devices, has_welcome) {
        (true, false) => Err(Error::invalid("a welcome is required when devices are added")),
        (false, true) => Err(Error::invalid("a welcome is only sent when devices are added")),
        _ => Ok(()),
    }
}

/// Reads a conversation's member devices from the store into the member cache under `ticket`.
async fn read_members(ctx: &Context, id: &ConversationId, ticket: Ticket) -> Result<Arc<[MemberRef]>> {
    let devices = ctx.store.active_member_devices(id).await?;
    let members: Arc<[MemberRef]> = devices.into_iter().map(|m| m.member).collect();
    ctx.members.fill(*id, ticket, members.clone());
    Ok(members)
}
