//! Membership: adding and removing users and devices, handles, retention, and keeping every tree in line with who is really there.

#[allow(clippy::wildcard_imports)] // The parent's imports: these are its own impl blocks.
use super::*;

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
        let body = HandleRequest { timestamp: now, signature: identity.sign_bytes(&statement).to_vec().into() };
        self.api.claim_handle(handle.as_str(), &body).await?;
        self.store.save_handle(&self.user_id(), Some(handle.as_str()), now)
    }

    pub(super) fn identity_key(&self) -> Result<&KeyPair> {
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
            let welcome = welcome.as_ref().map(mls::encode).transpose()?.map(Base64Bytes::from);
            let body = CommitRequest {
                epoch,
                commit: mls::encode(&commit)?.into(),
                group_info: mls::encode(&MlsMessageOut::from(group_info))?.into(),
                add,
                welcome,
                remove,
            };
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
                        self.catch_up().await?;
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
}

/// A commit, its Welcome, the next epoch's GroupInfo, and the devices it adds and removes.
type CommitParts = (
    MlsMessageOut,
    Option<MlsMessageOut>,
    Option<openmls::messages::group_info::GroupInfo>,
    Vec<DeviceId>,
    Vec<DeviceId>,
);
