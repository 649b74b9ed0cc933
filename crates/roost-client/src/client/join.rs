//! Joining a conversation by external commit.

#[allow(clippy::wildcard_imports)] // The parent's imports: these are its own impl blocks.
use super::*;

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
        let body = ExternalJoinRequest {
            epoch: info.epoch,
            commit: mls::encode(&commit)?.into(),
            group_info: mls::encode(&MlsMessageOut::from(new_info))?.into(),
        };
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
