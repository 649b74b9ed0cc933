//! The high-level client: an account on one server, its conversations, send and sync.

use std::path::{Path, PathBuf};

use openmls::prelude::*;
use roost_proto::conversation::{ConversationKind, EntryKind, QueueKind};
use roost_proto::{ConversationId, DeviceId, UserId, bytes};
use serde_json::json;
use zeroize::Zeroizing;

use crate::api::Api;
use crate::calls::CallSignal;
use crate::content::CallAction;
use crate::content::Content;
use crate::error::{ClientError, Result};
use crate::keys::KeyPair;
use crate::mls::{self, LeafIdentity, Provider};
use crate::store::{AccountRecord, LocalStore, StoredMessage};
use roost_proto::socket::ServerFrame;

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
        let body = json!({
            "identity_key": identity.user_id(),
            "device_id": device.device_id(),
            "device_certificate": bytes::encode(&certificate),
            "device_name": "roost",
            "invite_code": invite_code,
        });
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
        Ok(Self { api, store, provider, device, identity, leaf, home: home.to_path_buf() })
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
        let body = json!({
            "one_time": one_time.iter().map(|p| bytes::encode(p)).collect::<Vec<_>>(),
            "last_resort": resort.map(|p| bytes::encode(&p)),
        });
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
            welcome = Some(bytes::encode(&mls::encode(&out)?));
        }
        let group_info = group
            .export_group_info(self.provider.crypto(), &self.device, true)
            .map_err(|err| ClientError::Mls(format!("exporting GroupInfo: {err}")))?;
        let body = json!({
            "conversation_id": id,
            "kind": kind,
            "epoch": group.epoch().as_u64(),
            "group_info": bytes::encode(&mls::encode(&group_info)?),
            "members": members,
            "welcome": welcome,
        });
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
        let plaintext = content.encode()?;
        let client_message_id = new_client_message_id(unix_ms());
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut group = self.group(id)?;
            let ciphertext = group
                .create_message(&self.provider, &self.device, &plaintext)
                .map_err(|err| ClientError::Mls(format!("encrypting: {err}")))?;
            let body = json!({
                "client_message_id": client_message_id,
                "epoch": group.epoch().as_u64(),
                "ciphertext": bytes::encode(&mls::encode(&ciphertext)?),
            });
            match self.api.send(id, &body).await {
                Ok(accepted) => {
                    let seq = accepted.seq.ok_or_else(|| ClientError::Protocol("no sequence number".into()))?;
                    self.store.store_own_message(&StoredMessage {
                        conversation_id: *id,
                        seq,
                        sender_user: self.user_id(),
                        sender_device: self.device_id(),
                        created_at: accepted.created_at,
                        content: content.clone(),
                    })?;
                    return Ok(seq);
                }
                Err(err) if Api::stale_epoch(&err).is_some() && attempts < EPOCH_RETRIES => {
                    self.sync().await?;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Encrypts and sends content ephemerally: only to the members' devices connected now, and
    /// never stored (typing, call signalling). Catches up and retries if the epoch moved on.
    pub async fn send_ephemeral(&mut self, id: &ConversationId, content: &Content) -> Result<()> {
        let plaintext = content.encode()?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut group = self.group(id)?;
            let ciphertext = group
                .create_message(&self.provider, &self.device, &plaintext)
                .map_err(|err| ClientError::Mls(format!("encrypting: {err}")))?;
            let body = json!({
                "client_message_id": new_client_message_id(unix_ms()),
                "epoch": group.epoch().as_u64(),
                "ciphertext": bytes::encode(&mls::encode(&ciphertext)?),
                "ephemeral": true,
            });
            match self.api.send(id, &body).await {
                Ok(_) => return Ok(()),
                Err(err) if Api::stale_epoch(&err).is_some() && attempts < EPOCH_RETRIES => {
                    self.sync().await?;
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
        let mut events = Vec::new();
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

/// Membership management, handles and device linking.
impl Client {
    /// Resolves `@handle` or a user id.
    pub async fn resolve(&self, who: &str) -> Result<UserId> {
        if let Some(handle) = who.strip_prefix('@') {
            return match self.api.resolve_handle(handle).await {
                Ok(record) => {
                    self.store.save_handle(&record.user_id, Some(record.handle.as_str()), unix_ms())?;
                    Ok(record.user_id)
                }
                Err(err) if err.code() == Some(roost_proto::ErrorCode::NotFound) => {
                    Err(ClientError::NotFound(format!("nobody holds the handle @{handle}")))
                }
                Err(err) => Err(err),
            };
        }
        who.parse().map_err(|_| ClientError::Invalid(format!("{who:?} is neither @handle nor a user id")))
    }

    /// Claims a handle (signed with the identity key, so only a device holding it can).
    pub async fn claim_handle(&self, handle: &str) -> Result<()> {
        let identity = self.identity_key()?;
        let handle: roost_proto::Handle =
            handle.parse().map_err(|_| ClientError::Invalid(format!("{handle:?} is not a valid handle")))?;
        let now = unix_ms();
        let statement = roost_proto::signing::handle_message(
            roost_proto::signing::HandleAction::Claim,
            &self.user_id(),
            &handle,
            now,
        );
        let body = json!({"timestamp": now, "signature": bytes::encode(&identity.sign_bytes(&statement))});
        self.api.claim_handle(handle.as_str(), &body).await?;
        self.store.save_handle(&self.user_id(), Some(handle.as_str()), now)
    }

    fn identity_key(&self) -> Result<&KeyPair> {
        self.identity.as_ref().ok_or_else(|| {
            ClientError::Invalid("this device does not hold the identity key; use the first device".into())
        })
    }

    /// Adds every device of `users` to a conversation with an MLS commit and Welcome.
    pub async fn add_users(&mut self, id: &ConversationId, users: &[UserId]) -> Result<()> {
        let packages = self.claim_verified(users).await?;
        let packages: Vec<(DeviceId, KeyPackage)> =
            packages.into_iter().filter(|(device, _)| *device != self.device_id()).collect();
        self.add_devices(id, packages).await
    }

    async fn add_devices(&mut self, id: &ConversationId, packages: Vec<(DeviceId, KeyPackage)>) -> Result<()> {
        if packages.is_empty() {
            return Ok(());
        }
        let key_packages: Vec<KeyPackage> = packages.iter().map(|(_, package)| package.clone()).collect();
        let devices: Vec<DeviceId> = packages.iter().map(|(device, _)| *device).collect();
        self.commit_change(id, |client, group| {
            let (commit, welcome, group_info) = group
                .add_members(&client.provider, &client.device, &key_packages)
                .map_err(|err| ClientError::Mls(format!("adding members: {err}")))?;
            Ok((commit, Some(welcome), group_info, devices.clone(), Vec::new()))
        })
        .await
    }

    /// Removes every device of `users` from a conversation with an MLS commit.
    pub async fn remove_users(&mut self, id: &ConversationId, users: &[UserId]) -> Result<()> {
        let users = users.to_vec();
        self.remove_matching(id, move |leaf| users.contains(&leaf.user_id)).await
    }

    /// Removes the leaves matching `gone` (never this device's own) with an MLS commit.
    async fn remove_matching(&mut self, id: &ConversationId, gone: impl Fn(&LeafIdentity) -> bool) -> Result<()> {
        let own = self.device_id();
        self.commit_change(id, |client, group| {
            let mut leaves = Vec::new();
            let mut devices = Vec::new();
            for member in group.members() {
                let leaf = mls::verify_leaf(&member.credential, &member.signature_key)?;
                if leaf.device_id != own && gone(&leaf) {
                    leaves.push(member.index);
                    devices.push(leaf.device_id);
                }
            }
            if leaves.is_empty() {
                return Err(ClientError::NotFound("none of them is a member".into()));
            }
            let (commit, _, group_info) = group
                .remove_members(&client.provider, &client.device, &leaves)
                .map_err(|err| ClientError::Mls(format!("removing members: {err}")))?;
            Ok((commit, None, group_info, Vec::new(), devices))
        })
        .await
    }

    /// Removes, with ordinary commits, the leaves that no longer belong: devices that were
    /// revoked and devices of users who left. Returns how many leaves went. Run after a sync so
    /// a departed device keeps no keys for what is sent next.
    pub async fn remove_departed(&mut self) -> Result<usize> {
        let mut active: std::collections::HashMap<UserId, Vec<DeviceId>> = std::collections::HashMap::new();
        let mut removed = 0;
        for (id, _) in self.conversations()? {
            let Ok(group) = self.group(&id) else { continue };
            if !group.is_active() {
                continue;
            }
            // A conversation this device has left or lost answers not_a_member: nothing to do.
            let Ok(summary) = self.api.conversation(&id).await else { continue };
            let users: Vec<UserId> = summary.members.iter().map(|m| m.user_id).collect();
            let leaves: Vec<LeafIdentity> =
                group.members().filter_map(|m| mls::verify_leaf(&m.credential, &m.signature_key).ok()).collect();
            let mut departed = Vec::new();
            for leaf in leaves {
                let gone = if users.contains(&leaf.user_id) {
                    if let std::collections::hash_map::Entry::Vacant(slot) = active.entry(leaf.user_id) {
                        let list = self.api.devices(&leaf.user_id).await?;
                        let handle = list.handle.as_ref().map(|handle| handle.as_str());
                        self.store.save_handle(&leaf.user_id, handle, unix_ms())?;
                        slot.insert(list.devices.into_iter().map(|d| d.device_id).collect());
                    }
                    !active.get(&leaf.user_id).is_some_and(|devices| devices.contains(&leaf.device_id))
                } else {
                    true
                };
                if gone && leaf.device_id != self.device_id() {
                    departed.push(leaf.device_id);
                }
            }
            if departed.is_empty() {
                continue;
            }
            match self.remove_matching(&id, |leaf| departed.contains(&leaf.device_id)).await {
                Ok(()) => removed += departed.len(),
                // Another member removed them first.
                Err(ClientError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(removed)
    }

    /// Builds a commit with `change` (OpenMLS keeps it pending), submits it with the GroupInfo of
    /// the next epoch, and merges it once the server accepts. On `stale_epoch` the pending
    /// commit is dropped, the client catches up, and the change is rebuilt on the new epoch.
    async fn commit_change<F>(&mut self, id: &ConversationId, change: F) -> Result<()>
    where
        F: Fn(&Self, &mut MlsGroup) -> Result<CommitParts>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut group = self.group(id)?;
            let epoch = group.epoch().as_u64();
            let (commit, welcome, group_info, add, remove) = change(self, &mut group)?;
            let group_info = group_info.ok_or_else(|| ClientError::Mls("the commit produced no GroupInfo".into()))?;
            let welcome = welcome.as_ref().map(mls::encode).transpose()?.map(|w| bytes::encode(&w));
            let body = json!({
                "epoch": epoch,
                "commit": bytes::encode(&mls::encode(&commit)?),
                "group_info": bytes::encode(&mls::encode(&MlsMessageOut::from(group_info))?),
                "add": add,
                "welcome": welcome,
                "remove": remove,
            });
            match self.api.commit(id, &body).await {
                Ok(_) => {
                    return group
                        .merge_pending_commit(&self.provider)
                        .map_err(|err| ClientError::Mls(format!("merging: {err}")));
                }
                Err(err) => {
                    group
                        .clear_pending_commit(self.provider.storage())
                        .map_err(|err| ClientError::Store(format!("dropping the refused commit: {err}")))?;
                    if Api::stale_epoch(&err).is_some() && attempts < EPOCH_RETRIES {
                        self.sync().await?;
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Revokes one of this user's devices (signed with the identity key). Its sessions, queue and
    /// KeyPackages go at once; the remaining members remove its leaves on their next sync.
    pub async fn revoke_device(&self, device: &DeviceId) -> Result<()> {
        let identity = self.identity_key()?;
        let statement = roost_proto::signing::revoke_device_message(&self.user_id(), device);
        self.api.revoke_device(device, &identity.sign_bytes(&statement)).await
    }

    /// Leaves a conversation: every device of this user stops receiving it.
    pub async fn leave(&mut self, id: &ConversationId) -> Result<()> {
        self.api.leave(id).await
    }

    /// Sets a conversation's retention policy.
    pub async fn set_retention(
        &self,
        id: &ConversationId,
        policy: roost_proto::conversation::RetentionPolicy,
    ) -> Result<()> {
        self.api.set_retention(id, &policy).await
    }

    /// This user's devices, each verified against the identity key.
    pub async fn own_devices(&self) -> Result<Vec<roost_proto::api::Device>> {
        let list = self.api.devices(&self.user_id()).await?;
        for device in &list.devices {
            if !crate::keys::certificate_chains(&self.user_id(), &device.device_id, device.certificate.as_bytes()) {
                return Err(ClientError::Verification(format!(
                    "device {} does not chain to this user",
                    device.device_id
                )));
            }
        }
        Ok(list.devices)
    }

    /// Adds this user's other devices to every conversation of this device that lacks them, so
    /// every device of the user gets every new message (a linked device joins this way).
    pub async fn add_missing_own_devices(&mut self) -> Result<usize> {
        let own: Vec<DeviceId> =
            self.own_devices().await?.into_iter().map(|d| d.device_id).filter(|d| *d != self.device_id()).collect();
        let mut added = 0;
        for (id, _) in self.conversations()? {
            let Ok(group) = self.group(&id) else { continue };
            if !group.is_active() {
                continue;
            }
            let present: Vec<DeviceId> = group
                .members()
                .filter_map(|m| mls::verify_leaf(&m.credential, &m.signature_key).ok())
                .map(|leaf| leaf.device_id)
                .collect();
            let missing: Vec<DeviceId> = own.iter().copied().filter(|d| !present.contains(d)).collect();
            if missing.is_empty() {
                continue;
            }
            let claimed = self.api.claim_key_packages(&[], &missing).await?;
            let packages = self.verify_claimed(&claimed)?;
            added += packages.len();
            self.add_devices(&id, packages).await?;
        }
        Ok(added)
    }

    /// Approves a link request shown as `code` on the new device: checks that the device key the
    /// server returns hashes to that code, then certifies it with the identity key.
    pub async fn approve_link(&self, code: &str) -> Result<DeviceId> {
        let identity = self.identity_key()?;
        let link = self.api.link(code).await?;
        if roost_proto::signing::link_code(&link.device_id) != code.trim().to_ascii_uppercase() {
            return Err(ClientError::Verification(
                "the server returned a device key that does not match the code; not approving".into(),
            ));
        }
        self.api.approve_link(code, &identity.certify(&link.device_id)).await?;
        Ok(link.device_id)
    }

    /// Starts linking a new device kept in `home` to an existing user: creates the device key
    /// and returns the code to approve on a device holding the identity key.
    pub async fn start_link(home: &Path, server: &str) -> Result<String> {
        let store = open_home(home)?;
        if store.account()?.is_some() {
            return Err(ClientError::Invalid(format!("{} already holds an account", home.display())));
        }
        let device = match store.pending_link()? {
            Some((_, secret)) => KeyPair::from_secret(secret),
            None => KeyPair::generate(),
        };
        let api = Api::new(server)?;
        let link = api.start_link(&device.device_id()).await?;
        store.save_pending_link(api.base(), device.secret_bytes())?;
        Ok(link.link_code)
    }

    /// Finishes linking once approved: verifies the certificate against the approving user's
    /// identity, authenticates and uploads KeyPackages. `Ok(None)` while still pending.
    pub async fn finish_link(home: &Path) -> Result<Option<Self>> {
        let store = open_home(home)?;
        let (server, secret) = store
            .pending_link()?
            .ok_or_else(|| ClientError::Invalid("no link in progress; run `roost link` first".into()))?;
        let device = KeyPair::from_secret(secret);
        let api = Api::new(&server)?;
        let link = api.link(&roost_proto::signing::link_code(&device.device_id())).await?;
        let (Some(user_id), Some(certificate)) = (link.user_id, link.certificate) else { return Ok(None) };
        let certificate: [u8; 64] = certificate
            .as_bytes()
            .try_into()
            .map_err(|_| ClientError::Verification("the certificate is not a signature".into()))?;
        if !crate::keys::certificate_chains(&user_id, &device.device_id(), &certificate) {
            return Err(ClientError::Verification("the certificate does not chain to the approving user".into()));
        }
        store.save_account(&AccountRecord {
            server,
            user_id,
            device_id: device.device_id(),
            identity_secret: None,
            device_secret: Zeroizing::new(*device.secret_bytes()),
            certificate,
            token: None,
        })?;
        store.clear_pending_link()?;
        let mut client = Self::open(home)?;
        client.connect().await?;
        client.upload_key_packages(KEY_PACKAGE_BATCH, true).await?;
        Ok(Some(client))
    }
}

/// A commit, its Welcome, the next epoch's GroupInfo, and the devices it adds and removes.
type CommitParts = (
    MlsMessageOut,
    Option<MlsMessageOut>,
    Option<openmls::messages::group_info::GroupInfo>,
    Vec<DeviceId>,
    Vec<DeviceId>,
);

/// Live delivery over the WebSocket.
impl Client {
    /// Connects the device's WebSocket and calls `on_event` for everything that happens until
    /// the connection ends: pushed entries and queue items wake a sync (which decrypts, stores,
    /// then acknowledges), live frames become typing, receipt and presence events. Returns when
    /// the server closes the socket; callers reconnect.
    pub async fn listen(&mut self, mut on_event: impl FnMut(Event)) -> Result<()> {
        let mut socket = self.open_socket().await?;
        while let Some(frame) = next_frame(&mut socket).await {
            for event in self.on_frame(frame).await? {
                on_event(event);
            }
        }
        Ok(())
    }

    /// Opens the device's WebSocket and authenticates it, for an app that runs its own loop:
    /// read frames ([`next_frame`]), hand each to [`Client::on_frame`], and call the client
    /// (send, answer a call) between frames.
    pub async fn open_socket(&self) -> Result<crate::api::WebSocket> {
        use futures::SinkExt;
        use tokio_tungstenite::tungstenite::Message as Frame;

        let mut socket = self.api.websocket().await?;
        let token = self.api.token().ok_or_else(|| ClientError::Invalid("not logged in".into()))?.to_owned();
        let auth = json!({"type": "auth", "token": token}).to_string();
        socket.send(Frame::Text(auth.into())).await.map_err(|err| ClientError::Protocol(err.to_string()))?;
        Ok(socket)
    }

    /// Applies one frame from the socket: pushed entries and queue items wake a sync (which
    /// decrypts, stores, then acknowledges), live frames become typing, receipt, presence and
    /// call events. An ephemeral send that cannot be decrypted (sent in another epoch) is
    /// dropped: it was never meant to last.
    pub async fn on_frame(&mut self, frame: ServerFrame) -> Result<Vec<Event>> {
        Ok(match frame {
            // The initial drain and every push lead to the same place: sync, store, ack.
            ServerFrame::QueueEmpty | ServerFrame::Entry(_) | ServerFrame::Queue(_) => self.sync().await?,
            ServerFrame::Typing { conversation_id, user_id, active, .. } => {
                vec![Event::Typing { conversation_id, user_id, active }]
            }
            ServerFrame::ReadReceipt { conversation_id, user_id, seq } => {
                vec![Event::ReadReceipt { conversation_id, user_id, seq }]
            }
            ServerFrame::Presence { user_id, online, .. } => vec![Event::Presence { user_id, online }],
            ServerFrame::Ephemeral { conversation_id, sender_user, sender_device, payload, .. } => {
                let content = self.group(&conversation_id).and_then(|mut group| {
                    let processed = self.process(&mut group, payload.as_bytes())?;
                    match processed.into_content() {
                        ProcessedMessageContent::ApplicationMessage(message) => Content::decode(&message.into_bytes()),
                        _ => Err(ClientError::Protocol("an ephemeral send that is not a message".into())),
                    }
                });
                match content {
                    Ok(Content::Call { call_id, action, sdp, candidate, video }) => vec![Event::Call(CallSignal {
                        conversation_id,
                        sender_user,
                        sender_device,
                        call_id,
                        action,
                        sdp,
                        candidate,
                        video,
                    })],
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        })
    }
}

/// Joining by external commit.
impl Client {
    /// Joins a conversation of this user by an MLS external commit built from the stored
    /// GroupInfo (forward-only: nothing from before the join). Every member's leaf is verified
    /// before the commit is sent.
    pub async fn join_by_external_commit(&mut self, id: &ConversationId) -> Result<()> {
        if self.store.processed_seq(id)?.is_some() {
            return Ok(());
        }
        let info = self.api.group_info(id).await?;
        let MlsMessageBodyIn::GroupInfo(group_info) = mls::decode(info.group_info.as_bytes())?.extract() else {
            return Err(ClientError::Verification("the stored GroupInfo is something else".into()));
        };
        let config = MlsGroupJoinConfig::builder().use_ratchet_tree_extension(true).build();
        let (mut group, bundle) = MlsGroup::external_commit_builder()
            .with_config(config)
            .build_group(&self.provider, group_info, mls::credential(&self.leaf))
            .map_err(|err| ClientError::Mls(format!("external commit: {err}")))?
            .load_psks(self.provider.storage())
            .map_err(|err| ClientError::Mls(format!("external commit: {err:?}")))?
            .build(self.provider.rand(), self.provider.crypto(), &self.device, |_| true)
            .map_err(|err| ClientError::Mls(format!("external commit: {err}")))?
            .finalize(&self.provider)
            .map_err(|err| ClientError::Mls(format!("external commit: {err}")))?;
        if group.group_id().as_slice() != id.as_bytes() {
            return Err(ClientError::Verification("the GroupInfo is for another group".into()));
        }
        if let Err(err) = mls::verify_members(&group) {
            let _ = group.delete(self.provider.storage());
            return Err(err);
        }
        let (commit, _, new_info) = bundle.into_contents();
        let new_info = new_info.ok_or_else(|| ClientError::Mls("the external commit produced no GroupInfo".into()))?;
        let body = json!({
            "epoch": info.epoch,
            "commit": bytes::encode(&mls::encode(&commit)?),
            "group_info": bytes::encode(&mls::encode(&MlsMessageOut::from(new_info))?),
        });
        match self.api.external_join(id, &body).await {
            Ok(accepted) => {
                group
                    .merge_pending_commit(&self.provider)
                    .map_err(|err| ClientError::Mls(format!("merging: {err}")))?;
                let kind = self
                    .api
                    .conversation(id)
                    .await
                    .map(|s| s.kind.as_str().to_owned())
                    .unwrap_or_else(|_| "group".into());
                self.store.add_conversation(id, &kind, accepted.seq)
            }
            Err(err) => {
                let _ = group.delete(self.provider.storage());
                Err(err)
            }
        }
    }
}

/// How long a learned handle is shown before [`Client::learn_names`] looks it up again.
pub const NAME_TTL_MS: i64 = 60 * 60 * 1000;

/// The next frame from the server, or `None` once the socket is closed.
pub async fn next_frame(socket: &mut crate::api::WebSocket) -> Option<ServerFrame> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message as Frame;

    loop {
        match socket.next().await? {
            Ok(Frame::Text(text)) => {
                if let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) {
                    return Some(frame);
                }
            }
            Ok(Frame::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

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
