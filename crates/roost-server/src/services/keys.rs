//! The KeyPackage directory: upload, count and claim.

use std::collections::BTreeSet;
use std::sync::Arc;

use roost_proto::api::{ClaimedKeyPackage, KeyClaimRequest, KeyClaimResponse, KeyPackageCount, KeyPackageUpload};
use roost_proto::conversation::QueueKind;
use roost_proto::{DeviceId, ErrorCode, UserId};
use roost_store::{DeviceRecord, KeyPackageStock, QueueWrite};

use super::{Caller, Context};
use crate::error::{Error, Result};
use crate::hub::{Hub, LiveEvent};

/// The key directory service.
#[derive(Clone)]
pub struct Keys {
    ctx: Arc<Context>,
    hub: Arc<Hub>,
}

impl Keys {
    pub(crate) fn new(ctx: Arc<Context>, hub: Arc<Hub>) -> Self {
        Self { ctx, hub }
    }

    /// Stores the caller device's one-time KeyPackages and, if given, its new last-resort one.
    pub async fn upload(&self, caller: &Caller, upload: KeyPackageUpload) -> Result<KeyPackageCount> {
        let limits = &self.ctx.config.limits;
        if upload.one_time.is_empty() && upload.last_resort.is_none() {
            return Err(Error::invalid("upload at least one KeyPackage"));
        }
        let all = upload.one_time.iter().chain(upload.last_resort.iter());
        for package in all {
            if package.as_bytes().is_empty() {
                return Err(Error::invalid("a KeyPackage must not be empty"));
            }
            if package.as_bytes().len() > limits.max_key_package_bytes {
                return Err(Error::new(
                    ErrorCode::PayloadTooLarge,
                    format!("a KeyPackage may be at most {} bytes", limits.max_key_package_bytes),
                ));
            }
        }
        let one_time = upload.one_time.into_iter().map(|p| p.into_vec()).collect();
        let last_resort = upload.last_resort.map(|p| p.into_vec());
        let stock = self
            .ctx
            .store
            .add_key_packages(
                &caller.device_id,
                one_time,
                last_resort,
                limits.max_one_time_key_packages,
                self.ctx.now(),
            )
            .await?;
        Ok(self.count_view(stock))
    }

    /// How many KeyPackages the caller's device has.
    pub async fn count(&self, caller: &Caller) -> Result<KeyPackageCount> {
        let stock = self.ctx.store.key_package_stock(&caller.device_id).await?;
        Ok(self.count_view(stock))
    }

    /// Claims one KeyPackage for every named device and every active device of every named user
    /// (the caller's own device excluded). Every target is checked before anything is taken.
    pub async fn claim(&self, caller: &Caller, request: KeyClaimRequest) -> Result<KeyClaimResponse> {
        let targets = request.user_ids.len().saturating_add(request.device_ids.len());
        if targets == 0 {
            return Err(Error::invalid("name at least one user or device"));
        }
        if targets > self.ctx.config.limits.max_claim_targets {
            return Err(Error::invalid(format!(
                "a claim may name at most {} users and devices",
                self.ctx.config.limits.max_claim_targets
            )));
        }
        let devices = self.resolve_targets(caller, &request.user_ids, &request.device_ids).await?;

        let limits = &self.ctx.limits;
        limits.claims_by_requester.check(&caller.user_id).await?;
        let target_users: BTreeSet<UserId> = devices.iter().map(|d| d.user_id).collect();
        for target in target_users {
            limits.claims_by_pair.check(&(caller.user_id, target)).await?;
        }

        let mut response = KeyClaimResponse { packages: Vec::new(), missing: Vec::new() };
        for device in devices {
            match self.ctx.store.claim_key_package(&device.id).await? {
                Some(claimed) => {
                    if !claimed.last_resort {
                        self.warn_if_low(&device.id).await?;
                    }
                    response.packages.push(ClaimedKeyPackage {
                        user_id: device.user_id,
                        device_id: device.id,
                        key_package: claimed.data.into(),
                        last_resort: claimed.last_resort,
                    });
                }
                None => response.missing.push(device.id),
            }
        }
        Ok(response)
    }

    /// Queues `keys_low` for a device whose one-time packages just fell below the threshold, and
    /// again when the last one is gone (once per crossing, not on every claim).
    async fn warn_if_low(&self, device: &DeviceId) -> Result<()> {
        let threshold = self.ctx.config.limits.key_packages_low_threshold;
        let left = self.ctx.store.key_package_stock(device).await?.one_time;
        if left.saturating_add(1) != threshold && left != 0 {
            return Ok(());
        }
        let payload = serde_json::to_vec(&serde_json::json!({ "one_time": left })).unwrap_or_default();
        let warning = QueueWrite {
            device_id: *device,
            kind: QueueKind::KeysLow,
            conversation_id: None,
            seq: None,
            sender_device: None,
            payload,
        };
        self.ctx.store.enqueue(vec![warning], self.ctx.now()).await?;
        self.hub.publish_without_waking([*device], LiveEvent::Queued);
        Ok(())
    }

    async fn resolve_targets(
        &self,
        caller: &Caller,
        user_ids: &[UserId],
        device_ids: &[DeviceId],
    ) -> Result<Vec<DeviceRecord>> {
        let store = &self.ctx.store;
        let mut seen = BTreeSet::new();
        let mut devices = Vec::new();
        for user in user_ids {
            if !store.user_exists(user).await? {
                return Err(Error::not_found(format!("no such user: {user}")));
            }
            for device in store.active_devices(user).await? {
                if device.id != caller.device_id && seen.insert(device.id) {
                    devices.push(device);
                }
            }
        }
        for id in device_ids {
            let device = store
                .device(id)
                .await?
                .filter(|d| d.revoked_at.is_none())
                .ok_or_else(|| Error::not_found(format!("no such active device: {id}")))?;
            if seen.insert(device.id) {
                devices.push(device);
            }
        }
        Ok(devices)
    }

    fn count_view(&self, stock: KeyPackageStock) -> KeyPackageCount {
        KeyPackageCount {
            one_time: stock.one_time,
            last_resort: stock.last_resort,
            max_one_time: self.ctx.config.limits.max_one_time_key_packages,
        }
    }
}
