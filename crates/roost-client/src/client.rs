//! The high-level client: an account on one server, its conversations, send and sync.

use std::path::{Path, PathBuf};

use openmls::prelude::*;
use roost_proto::conversation::{ConversationKind, EntryKind, QueueKind};
use roost_proto::{ConversationId, DeviceId, UserId, bytes};
use serde_json::json;
use zeroize::Zeroizing;

use crate::api::Api;
use crate::content::Content;
use crate::error::{ClientError, Result};
use crate::keys::KeyPair;
use crate::mls::{self, LeafIdentity, Provider};
use crate::store::{AccountRecord, LocalStore, StoredMessage};

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
    /// Something could not be accepted (a Welcome or commit with a leaf that does not chain to
    /// its user's identity, or undecryptable ciphertext). It is reported, not applied.
    Rejected {
        /// The conversation, when known.
        conversation_id: Option<ConversationId>,
        /// Why.
        reason: String,
    },
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
        let api = Api::new(server);
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
        let mut api = Api::new(&account.server);
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
        let client_message_id = bytes::encode(&rand::random::<[u8; 12]>());
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

    /// The conversations this device is in, with their kinds.
    pub fn conversations(&self) -> Result<Vec<(ConversationId, String)>> {
        self.store.conversations()
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
