//! The high-level client: an account on one server, its conversations, send and sync.

use std::path::{Path, PathBuf};

use openmls::prelude::*;
use roost_proto::api::{HandleRequest, KeyPackageUpload, RegisterRequest};
use roost_proto::conversation::{
    AckRequest, CommitRequest, ConversationAck, ConversationKind, CreateConversationRequest, EntryKind,
    ExternalJoinRequest, QueueKind, SendAccepted, SendRequest,
};
use roost_proto::socket::{ClientFrame, ServerFrame};
use roost_proto::{Base64Bytes, ConversationId, DeviceId, UserId, bytes};
use zeroize::Zeroizing;

use crate::api::Api;
use crate::calls::CallSignal;
use crate::content::{CallAction, Content};
use crate::error::{ClientError, Result};
use crate::keys::KeyPair;
use crate::mls::{self, LeafIdentity, Provider};
use crate::store::{AccountRecord, LocalStore, StoredMessage};

mod attachments;
mod join;
mod linking;
mod live;
mod membership;
mod push;

pub use self::attachments::{FileDetails, MAX_THUMBNAIL_BYTES};
pub use self::live::{next_frame, send_frame};

/// A decrypted message.
pub type Message = StoredMessage;

/// One-time KeyPackages uploaded at registration and on `keys_low`.
const KEY_PACKAGE_BATCH: usize = 20;
/// Attempts at a send or commit that meets `stale_epoch` before giving up.
const EPOCH_RETRIES: usize = 3;

/// Something sync found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message arrived and is stored.
    Message(Message),
    /// This device joined a conversation (from a Welcome whose members all verified).
    Joined(ConversationId),
    /// Membership of a conversation changed (a commit by another member was applied).
    MembersChanged(ConversationId),
    /// This device was removed from a conversation, or its user left.
    Removed(ConversationId),
    /// The server said this device was low on KeyPackages; more were uploaded.
    KeysReplenished(u32),
    /// A member is typing (or stopped), live only.
    Typing {
        /// The conversation.
        conversation_id: ConversationId,
        /// Who.
        user_id: UserId,
        /// Typing now, or stopped.
        active: bool,
    },
    /// A member read up to `seq`, live only.
    ReadReceipt {
        /// The conversation.
        conversation_id: ConversationId,
        /// The reader.
        user_id: UserId,
        /// Their read position.
        seq: u64,
    },
    /// A user sharing a conversation came online or went offline.
    Presence {
        /// The user.
        user_id: UserId,
        /// Online now.
        online: bool,
    },
    /// A call signal from another device (see [`crate::calls`]); live only.
    Call(CallSignal),
    /// The conversations' trees were brought in line with who is really there: this user's new
    /// devices added, revoked devices and departed users' leaves removed.
    DevicesUpdated {
        /// Devices of this user added to conversations.
        added: usize,
        /// Leaves removed.
        removed: usize,
    },
    /// Something could not be accepted (a Welcome or commit with a leaf that does not chain to
    /// its user's identity, or undecryptable ciphertext). It is reported, not applied.
    Rejected {
        /// The conversation, when known.
        conversation_id: Option<ConversationId>,
        /// Why.
        reason: String,
    },
}

impl Event {
    /// The user the event is about or from, if it names one.
    pub fn user(&self) -> Option<UserId> {
        match self {
            Self::Message(message) => Some(message.sender_user),
            Self::Call(signal) => Some(signal.sender_user),
            Self::Typing { user_id, .. } | Self::ReadReceipt { user_id, .. } | Self::Presence { user_id, .. } => {
                Some(*user_id)
            }
            _ => None,
        }
    }
}

/// A client bound to a state directory.
pub struct Client {
    api: Api,
    store: LocalStore,
    provider: Provider,
    device: KeyPair,
    identity: Option<KeyPair>,
    leaf: LeafIdentity,
    home: PathBuf,
    /// A device list changed or a member left since the last [`Client::upkeep`].
    upkeep_due: bool,
    /// What syncs inside other calls (a send or commit catching up on `stale_epoch`) found,
    /// reported by the next [`Client::sync`] or [`Client::on_frame`].
    unreported: Vec<Event>,
}

impl Client {
    /// Creates a new user with this device as its first device, on `server`, keeping state in
    /// `home`: generates the identity and device keys, registers, authenticates and uploads
    /// KeyPackages.
    pub async fn register(home: &Path, server: &str, invite_code: Option<&str>) -> Result<Self> {
        let store = open_home(home)?;
        if store.account()?.is_some() {
            return Err(ClientError::Invalid(format!("{} already holds an account", home.display())));
        }
        let identity = KeyPair::generate();
        let device = KeyPair::generate();
        let certificate = identity.certify(&device.device_id());
        let api = Api::new(server)?;
        let body = RegisterRequest {
            identity_key: identity.user_id(),
            device_id: device.device_id(),
            device_certificate: certificate.to_vec().into(),
            device_name: Some("roost".into()),
            invite_code: invite_code.map(str::to_owned),
        };
        api.register(&body).await?;
        store.save_account(&AccountRecord {
            server: api.base().to_owned(),
            user_id: identity.user_id(),
            device_id: device.device_id(),
            identity_secret: Some(Zeroizing::new(*identity.secret_bytes())),
            device_secret: Zeroizing::new(*device.secret_bytes()),
            certificate,
            token: None,
        })?;
        let mut client = Self::open(home)?;
        client.connect().await?;
        client.upload_key_packages(KEY_PACKAGE_BATCH, true).await?;
        Ok(client)
    }

    /// Opens the account kept in `home`. Call [`Client::connect`] before talking to the server.
    pub fn open(home: &Path) -> Result<Self> {
        let store = open_home(home)?;
        let account = store
            .account()?
            .ok_or_else(|| ClientError::Invalid(format!("no account in {}; run `roost init` first", home.display())))?;
        let device = KeyPair::from_secret(account.device_secret.clone());
        let identity = account.identity_secret.clone().map(KeyPair::from_secret);
        let leaf =
            LeafIdentity { user_id: account.user_id, device_id: account.device_id, certificate: account.certificate };
        let provider = Provider::open(&home.join("mls.db"))?;
        let mut api = Api::new(&account.server)?;
        if let Some(token) = account.token {
            api.set_token(token);
        }
        Ok(Self {
            api,
            store,
            provider,
            device,
            identity,
            leaf,
            home: home.to_path_buf(),
            upkeep_due: false,
            unreported: Vec::new(),
        })
    }

    /// Makes sure the device has a working session, authenticating again if needed.
    pub async fn connect(&mut self) -> Result<()> {
        if self.api.whoami().await.is_ok() {
            return Ok(());
        }
        let device = &self.device;
        let session = self.api.login(&self.leaf.device_id, |statement| device.sign_bytes(statement)).await?;
        self.api.set_token(session.token.clone());
        let mut account = self.store.account()?.ok_or_else(|| ClientError::Store("the account vanished".into()))?;
        account.token = Some(session.token);
        self.store.save_account(&account)
    }

    /// This user.
    pub fn user_id(&self) -> UserId {
        self.leaf.user_id
    }

    /// This device.
    pub fn device_id(&self) -> DeviceId {
        self.leaf.device_id
    }

    /// The state directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The server connection, for calls the high-level API does not cover.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Generates and uploads KeyPackages for this device.
    pub async fn upload_key_packages(&self, count: usize, last_resort: bool) -> Result<u32> {
        let (one_time, resort) = mls::key_packages(&self.provider, &self.device, &self.leaf, count, last_resort)?;
        let body = KeyPackageUpload {
            one_time: one_time.into_iter().map(Base64Bytes::from).collect(),
            last_resort: resort.map(Base64Bytes::from),
        };
        Ok(self.api.upload_key_packages(&body).await?.one_time)
    }

    /// Creates a conversation with every device of `users` (and this user's other devices):
    /// claims and verifies their KeyPackages, builds the MLS group and uploads it.
    pub async fn create_conversation(&mut self, kind: ConversationKind, users: &[UserId]) -> Result<ConversationId> {
        let mut targets: Vec<UserId> = users.to_vec();
        if !targets.contains(&self.user_id()) {
            targets.push(self.user_id());
        }
        let packages = self.claim_verified(&targets).await?;
        let id = ConversationId::from_bytes(rand::random());
        let mut group = MlsGroup::builder()
            .with_group_id(GroupId::from_slice(id.as_bytes()))
            .ciphersuite(mls::CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .build(&self.provider, &self.device, mls::credential(&self.leaf))
            .map_err(|err| ClientError::Mls(format!("creating the group: {err}")))?;
        let mut members = Vec::new();
        let mut welcome = None;
        if !packages.is_empty() {
            let key_packages: Vec<KeyPackage> = packages.iter().map(|(_, package)| package.clone()).collect();
            let (_commit, out, _) = group
                .add_members(&self.provider, &self.device, &key_packages)
                .map_err(|err| ClientError::Mls(format!("adding members: {err}")))?;
            group.merge_pending_commit(&self.provider).map_err(|err| ClientError::Mls(format!("merging: {err}")))?;
            members = packages.iter().map(|(device, _)| *device).collect();
            welcome = Some(Base64Bytes::from(mls::encode(&out)?));
        }
        let group_info = group
            .export_group_info(self.provider.crypto(), &self.device, true)
            .map_err(|err| ClientError::Mls(format!("exporting GroupInfo: {err}")))?;
        let body = CreateConversationRequest {
            conversation_id: id,
            kind,
            epoch: group.epoch().as_u64(),
            group_info: mls::encode(&group_info)?.into(),
            members,
            welcome,
            retention: None,
        };
        self.api.create_conversation(&body).await?;
        self.store.add_conversation(&id, kind.as_str(), 0)?;
        Ok(id)
    }

    /// Claims one KeyPackage per device of `users` (this device excluded) and verifies each: the
    /// leaf must chain to its user's identity key and belong to the device it was claimed for.
    async fn claim_verified(&self, users: &[UserId]) -> Result<Vec<(DeviceId, KeyPackage)>> {
        let claimed = self.api.claim_key_packages(users, &[]).await?;
        if let Some(device) = claimed.missing.first() {
            return Err(ClientError::NotFound(format!("device {device} has no KeyPackage to add it with")));
        }
        self.verify_claimed(&claimed)
    }

    /// Parses and verifies every claimed KeyPackage (see [`mls::claimed_key_package`]).
    fn verify_claimed(&self, claimed: &roost_proto::api::KeyClaimResponse) -> Result<Vec<(DeviceId, KeyPackage)>> {
        claimed
            .packages
            .iter()
            .map(|package| {
                let parsed = mls::claimed_key_package(
                    &self.provider,
                    package.key_package.as_bytes(),
                    &package.user_id,
                    &package.device_id,
                )?;
                Ok((package.device_id, parsed))
            })
            .collect()
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, id: &ConversationId, text: &str) -> Result<u64> {
        self.send(id, &Content::Text { body: text.to_owned() }).await
    }

    /// Encrypts and sends content, catching up and retrying if the epoch moved on. The message is
    /// stored locally with the sequence number the server assigned.
    pub async fn send(&mut self, id: &ConversationId, content: &Content) -> Result<u64> {
        let accepted = self.post_message(id, content, false).await?;
        let seq = accepted.seq.ok_or_else(|| ClientError::Protocol("no sequence number".into()))?;
        self.store.store_own_message(&StoredMessage {
            conversation_id: *id,
            seq,
            sender_user: self.user_id(),
            sender_device: self.device_id(),
            created_at: accepted.created_at,
            content: content.clone(),
        })?;
        Ok(seq)
    }

    /// Encrypts and sends content ephemerally: only to the members' devices connected now, and
    /// never stored (typing, call signalling). Catches up and retries if the epoch moved on.
    pub async fn send_ephemeral(&mut self, id: &ConversationId, content: &Content) -> Result<()> {
        self.post_message(id, content, true).await.map(drop)
    }

    /// Encrypts `content` in the group's current epoch and posts it; on `stale_epoch`, syncs and
    /// encrypts again (with the same client message id, so a send that did land is not doubled).
    async fn post_message(&mut self, id: &ConversationId, content: &Content, ephemeral: bool) -> Result<SendAccepted> {
        let plaintext = content.encode()?;
        let client_message_id = new_client_message_id(unix_ms());
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut group = self.group(id)?;
            let ciphertext = group
                .create_message(&self.provider, &self.device, &plaintext)
                .map_err(|err| ClientError::Mls(format!("encrypting: {err}")))?;
            let body = SendRequest {
                client_message_id: client_message_id.clone(),
                epoch: group.epoch().as_u64(),
                ciphertext: mls::encode(&ciphertext)?.into(),
                ephemeral,
            };
            match self.api.send(id, &body).await {
                Ok(accepted) => return Ok(accepted),
                Err(err) if Api::stale_epoch(&err).is_some() && attempts < EPOCH_RETRIES => {
                    self.catch_up().await?;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Sends a call signal (ephemeral): `sdp` with an offer or answer, `candidate` with ice.
    pub async fn call_signal(
        &mut self,
        id: &ConversationId,
        call_id: &str,
        action: CallAction,
        sdp: Option<String>,
        candidate: Option<String>,
        video: bool,
    ) -> Result<()> {
        let content = Content::Call { call_id: call_id.to_owned(), action, sdp, candidate, video };
        self.send_ephemeral(id, &content).await
    }

    /// Fetches everything the server holds for this device, applies it (joins, commits,
    /// messages), stores what it decrypted, then acknowledges it. Returns what happened.
    pub async fn sync(&mut self) -> Result<Vec<Event>> {
        let mut events = std::mem::take(&mut self.unreported);
        loop {
            let page = self.api.sync(None).await?;
            if page.entries.is_empty() && page.queue.is_empty() {
                return Ok(events);
            }
            // Queue first: a Welcome must be processed before the entries that follow it.
            let mut queue_up_to = None;
            for item in &page.queue {
                self.apply_queue_item(item, &mut events).await?;
                queue_up_to = Some(item.id);
            }
            let mut positions: Vec<(ConversationId, u64)> = Vec::new();
            for entry in &page.entries {
                self.apply_entry(entry, &mut events)?;
                match positions.last_mut() {
                    Some((id, seq)) if *id == entry.conversation_id => *seq = entry.seq,
                    _ => positions.push((entry.conversation_id, entry.seq)),
                }
            }
            // Only now, with everything stored, is it acknowledged.
            self.api.ack(&positions, queue_up_to).await?;
        }
    }

    /// Syncs inside another call, keeping what it found for the caller's next sync.
    async fn catch_up(&mut self) -> Result<()> {
        let events = self.sync().await?;
        self.unreported.extend(events);
        Ok(())
    }

    async fn apply_queue_item(
        &mut self,
        item: &roost_proto::conversation::QueueEntry,
        events: &mut Vec<Event>,
    ) -> Result<()> {
        match item.kind {
            QueueKind::Welcome => {
                let (Some(id), Some(seq)) = (item.conversation_id, item.seq) else { return Ok(()) };
                if self.store.processed_seq(&id)?.is_some() {
                    return Ok(());
                }
                match self.join(&id, item.payload.as_bytes()) {
                    Ok(()) => {
                        let kind = match self.api.conversation(&id).await {
                            Ok(summary) => summary.kind.as_str().to_owned(),
                            Err(_) => "group".to_owned(),
                        };
                        self.store.add_conversation(&id, &kind, seq)?;
                        events.push(Event::Joined(id));
                    }
                    Err(err) => events.push(Event::Rejected { conversation_id: Some(id), reason: err.to_string() }),
                }
            }
            QueueKind::KeysLow => {
                let uploaded = self.upload_key_packages(KEY_PACKAGE_BATCH, false).await?;
                events.push(Event::KeysReplenished(uploaded));
            }
            QueueKind::Removed => {
                if let Some(id) = item.conversation_id {
                    events.push(Event::Removed(id));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Joins from a Welcome after verifying every member's leaf.
    fn join(&self, id: &ConversationId, welcome: &[u8]) -> Result<()> {
        let MlsMessageBodyIn::Welcome(welcome) = mls::decode(welcome)?.extract() else {
            return Err(ClientError::Verification("the Welcome is something else".into()));
        };
        let config = MlsGroupJoinConfig::builder().use_ratchet_tree_extension(true).build();
        let staged = StagedWelcome::new_from_welcome(&self.provider, &config, welcome, None)
            .map_err(|err| ClientError::Mls(format!("processing the Welcome: {err}")))?;
        for member in staged.members() {
            mls::verify_leaf(&member.credential, &member.signature_key)?;
        }
        if staged.group_context().group_id().as_slice() != id.as_bytes() {
            return Err(ClientError::Verification("the Welcome is for another group".into()));
        }
        staged.into_group(&self.provider).map_err(|err| ClientError::Mls(format!("joining: {err}")))?;
        Ok(())
    }

    fn apply_entry(&mut self, entry: &roost_proto::conversation::Entry, events: &mut Vec<Event>) -> Result<()> {
        let id = entry.conversation_id;
        let Some(processed) = self.store.processed_seq(&id)? else { return Ok(()) };
        if entry.seq <= processed {
            return Ok(());
        }
        if entry.sender_device == self.device_id() {
            // Our own message (stored when sent) or commit (merged when made).
            return self.store.set_processed_seq(&id, entry.seq);
        }
        let outcome = match entry.kind {
            EntryKind::Message => self.decrypt(entry).map(|message| {
                events.push(Event::Message(message));
            }),
            EntryKind::Commit => self.apply_commit(entry).map(|removed| {
                events.push(if removed { Event::Removed(id) } else { Event::MembersChanged(id) });
            }),
            EntryKind::Leave => {
                self.upkeep_due = true;
                events.push(Event::MembersChanged(id));
                Ok(())
            }
        };
        if let Err(err) = outcome {
            events.push(Event::Rejected { conversation_id: Some(id), reason: err.to_string() });
        }
        self.store.set_processed_seq(&id, entry.seq)
    }

    fn decrypt(&mut self, entry: &roost_proto::conversation::Entry) -> Result<Message> {
        let mut group = self.group(&entry.conversation_id)?;
        let processed = self.process(&mut group, entry.payload.as_bytes())?;
        let ProcessedMessageContent::ApplicationMessage(application) = processed.into_content() else {
            return Err(ClientError::Protocol("a message entry did not carry an application message".into()));
        };
        let message = Message {
            conversation_id: entry.conversation_id,
            seq: entry.seq,
            sender_user: entry.sender_user,
            sender_device: entry.sender_device,
            created_at: entry.created_at,
            content: Content::decode(&application.into_bytes())?,
        };
        self.store.store_message(&message)?;
        Ok(message)
    }

    /// Applies another member's commit after verifying the leaves it adds. Returns whether it
    /// removed this device.
    fn apply_commit(&mut self, entry: &roost_proto::conversation::Entry) -> Result<bool> {
        let mut group = self.group(&entry.conversation_id)?;
        let processed = self.process(&mut group, entry.payload.as_bytes())?;
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(ClientError::Protocol("a commit entry did not carry a commit".into()));
        };
        for add in staged.add_proposals() {
            let leaf = add.add_proposal().key_package().leaf_node();
            mls::verify_leaf(leaf.credential(), leaf.signature_key().as_slice())?;
        }
        // The committer's new leaf: for an external commit, the joining device itself.
        if let Some(leaf) = staged.update_path_leaf_node() {
            mls::verify_leaf(leaf.credential(), leaf.signature_key().as_slice())?;
        }
        let removed = staged.self_removed();
        group
            .merge_staged_commit(&self.provider, *staged)
            .map_err(|err| ClientError::Mls(format!("merging: {err}")))?;
        Ok(removed)
    }

    fn process(&self, group: &mut MlsGroup, payload: &[u8]) -> Result<ProcessedMessage> {
        let message = mls::decode(payload)?
            .try_into_protocol_message()
            .map_err(|err| ClientError::Mls(format!("not a protocol message: {err}")))?;
        group.process_message(&self.provider, message).map_err(|err| ClientError::Mls(format!("processing: {err}")))
    }

    fn group(&self, id: &ConversationId) -> Result<MlsGroup> {
        MlsGroup::load(self.provider.storage(), &GroupId::from_slice(id.as_bytes()))
            .map_err(|err| ClientError::Store(format!("loading the group: {err}")))?
            .ok_or_else(|| ClientError::NotFound(format!("this device is not in conversation {id}")))
    }

    /// The stored messages of a conversation, oldest first.
    pub fn history(&self, id: &ConversationId) -> Result<Vec<Message>> {
        self.store.messages(id)
    }

    /// The conversation as people read it: its messages with edits, deletions, reactions, poll
    /// votes and profiles applied ([`crate::timeline`]).
    pub fn timeline(&self, id: &ConversationId) -> Result<crate::Timeline> {
        Ok(crate::timeline::timeline(&self.history(id)?))
    }

    /// The conversations this device is in, with their kinds.
    pub fn conversations(&self) -> Result<Vec<(ConversationId, String)>> {
        self.store.conversations()
    }

    /// The direct conversation this device has with `user`, if any.
    pub fn direct_with(&self, user: &UserId) -> Result<Option<ConversationId>> {
        for (id, kind) in self.conversations()? {
            if kind != ConversationKind::Direct.as_str() {
                continue;
            }
            let Ok(group) = self.group(&id) else { continue };
            let has_user = group
                .members()
                .filter_map(|m| mls::verify_leaf(&m.credential, &m.signature_key).ok())
                .any(|leaf| leaf.user_id == *user);
            if has_user && group.is_active() {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// The users in a conversation, from its verified MLS leaves.
    pub fn members(&self, id: &ConversationId) -> Result<Vec<UserId>> {
        let group = self.group(id)?;
        let mut users: Vec<UserId> = mls::verify_members(&group)?.into_iter().map(|leaf| leaf.user_id).collect();
        users.sort();
        users.dedup();
        Ok(users)
    }

    /// How `user` is shown: `@handle` once learned (see [`Client::learn_names`]), else the
    /// first characters of the user id. Handles come from the server, which could lie about
    /// them: the safety number is what proves who a user is.
    pub fn name(&self, user: &UserId) -> String {
        match self.store.handle(user) {
            Ok(Some((Some(handle), _))) => format!("@{handle}"),
            _ => user.to_string().chars().take(8).collect(),
        }
    }

    /// Looks up the handles of those of `users` whose handle was never learned or was learned
    /// over [`NAME_TTL_MS`] ago (one request each), and keeps them for [`Client::name`].
    pub async fn learn_names(&self, users: &[UserId]) -> Result<()> {
        let now = unix_ms();
        for user in users {
            let known = self.store.handle(user)?;
            if known.is_some_and(|(_, learned_at)| now.saturating_sub(learned_at) < NAME_TTL_MS) {
                continue;
            }
            let list = self.api.devices(user).await?;
            self.store.save_handle(user, list.handle.as_ref().map(|handle| handle.as_str()), now)?;
        }
        Ok(())
    }

    /// Whether this device holds the identity key (and can link devices or claim handles).
    pub fn holds_identity(&self) -> bool {
        self.identity.is_some()
    }
}

/// Creates the state directory (owner-only: it holds secret keys) and opens the store in it.
fn open_home(home: &Path) -> Result<LocalStore> {
    std::fs::create_dir_all(home).map_err(|err| ClientError::Store(format!("creating {}: {err}", home.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
    }
    LocalStore::open(&home.join("roost.db"))
}

/// How long a learned handle is shown before [`Client::learn_names`] looks it up again.
pub const NAME_TTL_MS: i64 = 60 * 60 * 1000;

/// Milliseconds since the Unix epoch by this device's clock (0 if the clock is before it).
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A fresh client message id: the send time in milliseconds as 12 hex digits, then 12 random
/// bytes. Time first, so a device's ids sort in the order it sends them and the server's
/// idempotency index grows at its end instead of at random pages (docs/benchmark-log.md measured
/// the server's storage ceiling about a third lower with fully random ids).
fn new_client_message_id(now_ms: i64) -> String {
    format!("{:012x}{}", now_ms.max(0), bytes::encode(&rand::random::<[u8; 12]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_message_ids_sort_by_send_time_and_do_not_repeat() {
        let earlier = new_client_message_id(1_800_000_000_000);
        let later = new_client_message_id(1_800_000_000_001);
        assert!(earlier < later, "{earlier} {later}");
        assert_ne!(new_client_message_id(1_800_000_000_000), earlier);
        assert!((1..=64).contains(&earlier.len()));
    }
}
