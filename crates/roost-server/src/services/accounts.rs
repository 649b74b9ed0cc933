//! Users, devices, device linking and handles.

use std::net::IpAddr;
use std::sync::Arc;

use roost_proto::api::{
    Device, DeviceList, HandleRecord, HandleRequest, LinkApproveRequest, LinkRequest, LinkState, RegisterRequest,
    RegisterResponse,
};
use roost_proto::signing::{self, HandleAction};
use roost_proto::{Base64Bytes, DeviceId, ErrorCode, Handle, UserId};
use roost_store::{DeviceRecord, NewDevice, NewLinkRequest, StoreError};
use sha2::{Digest, Sha256};

use super::cache::Stale;
use super::{Caller, Context, secs_to_ms, signatures};
use crate::config::RegistrationPolicy;
use crate::error::{Error, Result};
use crate::hub::{CloseReason, EncodedFrame, Hub, LiveEvent};

const MAX_DEVICE_NAME_CHARS: usize = 64;

/// The accounts service.
#[derive(Clone)]
pub struct Accounts {
    ctx: Arc<Context>,
    hub: Arc<Hub>,
}

impl Accounts {
    pub(crate) fn new(ctx: Arc<Context>, hub: Arc<Hub>) -> Self {
        Self { ctx, hub }
    }

    /// Registers a user with its first device, after verifying the device certificate.
    pub async fn register(&self, request: RegisterRequest, source: IpAddr) -> Result<RegisterResponse> {
        self.ctx.limits.registrations.check(&source).await?;
        let invite_hash = match (self.ctx.config.registration, request.invite_code.as_deref()) {
            (RegistrationPolicy::Open, _) => None,
            (RegistrationPolicy::InviteOnly, None) => {
                return Err(Error::new(ErrorCode::InviteRequired, "registration on this server needs an invite code"));
            }
            (RegistrationPolicy::InviteOnly, Some(code)) => Some(invite_hash(code)),
        };
        let name = device_name(request.device_name)?;
        let user_id = request.identity_key;
        signatures::check_key(request.device_id.as_bytes(), "device key")?;
        verify_certificate(&user_id, &request.device_id, &request.device_certificate)?;
        let device = NewDevice {
            id: request.device_id,
            user_id,
            certificate: request.device_certificate.into_vec(),
            name,
            created_at: self.ctx.now(),
        };
        self.ctx.store.register_user(device.clone(), invite_hash).await?;
        Ok(RegisterResponse { user_id, device: device_view(&to_record(device), true) })
    }

    /// Creates invite codes (the `roostd admin invite` command). Each admits one registration;
    /// only their hashes are stored.
    pub async fn create_invites(&self, count: usize) -> Result<Vec<String>> {
        let codes: Vec<String> =
            (0..count).map(|_| format!("inv_{}", roost_proto::bytes::encode(&rand::random::<[u8; 16]>()))).collect();
        let hashes: Vec<[u8; 32]> = codes.iter().map(|code| invite_hash(code)).collect();
        self.ctx.store.create_invites(&hashes, self.ctx.now()).await?;
        Ok(codes)
    }

    /// The active devices of a user; device names only for the caller's own user.
    pub async fn devices(&self, caller: &Caller, user_id: &UserId) -> Result<DeviceList> {
        if !self.ctx.store.user_exists(user_id).await? {
            return Err(Error::not_found("no such user"));
        }
        let own = caller.user_id == *user_id;
        let devices = self.ctx.store.active_devices(user_id).await?;
        let handle = self.ctx.store.handle_of(user_id).await?;
        Ok(DeviceList { user_id: *user_id, handle, devices: devices.iter().map(|d| device_view(d, own)).collect() })
    }

    /// Revokes one of the caller's user's devices. The identity key must have signed the
    /// revocation; the device's sessions and KeyPackages go with it.
    pub async fn revoke_device(&self, caller: &Caller, device_id: &DeviceId, signature: &Base64Bytes) -> Result<()> {
        let device = self.ctx.store.device(device_id).await?.ok_or_else(|| Error::not_found("no such device"))?;
        if device.user_id != caller.user_id {
            return Err(Error::new(ErrorCode::Forbidden, "this device belongs to another user"));
        }
        let message = signing::revoke_device_message(&caller.user_id, device_id);
        signatures::verify(
            caller.user_id.as_bytes(),
            "identity key",
            &message,
            signature.as_bytes(),
            ErrorCode::SignatureInvalid,
        )?;
        let revoked = self.ctx.store.revoke_device(&caller.user_id, device_id, self.ctx.now()).await;
        // Its sessions and memberships are gone from the store (or the store failed midway):
        // nothing cached about them may be used again.
        super::forget_everywhere(&self.ctx, &self.hub, Stale::Revoked(*device_id)).await;
        revoked?;
        self.hub.kick(device_id, CloseReason::Revoked);
        self.announce_device_list(&caller.user_id).await;
        Ok(())
    }

    /// The devices that hear about `user`'s presence: the current member devices of every
    /// conversation the user is in, except the user's own.
    pub async fn presence_audience(&self, user: &UserId) -> Result<Vec<DeviceId>> {
        let contacts = self.ctx.store.contact_devices(user).await?;
        let own = self.ctx.store.active_devices(user).await?;
        Ok(contacts.into_iter().filter(|d| !own.iter().any(|o| o.id == *d)).collect())
    }

    /// Tells the user's own connected devices and those of everyone sharing a conversation with
    /// the user that its device list changed. Best effort: clients also fetch device lists.
    async fn announce_device_list(&self, user: &UserId) {
        if !self.hub.may_have_listeners() {
            return;
        }
        let own = self.ctx.store.active_devices(user).await.map(|d| d.into_iter().map(|d| d.id).collect::<Vec<_>>());
        let contacts = self.ctx.store.contact_devices(user).await;
        match (own, contacts) {
            (Ok(mut devices), Ok(contacts)) => {
                devices.extend(contacts);
                devices.sort();
                devices.dedup();
                let frame = EncodedFrame::encode(&roost_proto::socket::ServerFrame::DevicesChanged { user_id: *user });
                self.hub.publish(devices, LiveEvent::Frame(frame));
            }
            (Err(err), _) | (_, Err(err)) => tracing::warn!(error = %err, "could not announce a device list change"),
        }
    }

    /// A new device asks to be linked; it gets the short code to show its user.
    pub async fn start_link(&self, device_id: DeviceId, source: IpAddr) -> Result<LinkRequest> {
        self.ctx.limits.links.check(&source).await?;
        signatures::check_key(device_id.as_bytes(), "device key")?;
        let code = signing::link_code(&device_id);
        let now = self.ctx.now();
        let expires_at = now.saturating_add(secs_to_ms(self.ctx.config.limits.link_ttl_secs));
        let created =
            self.ctx.store.create_link_request(NewLinkRequest { code: code.clone(), device_id, expires_at }, now).await;
        match created {
            Ok(()) => {}
            // Asking again while the first request is pending is harmless: show the same one.
            Err(StoreError::LinkPending) => {}
            Err(err) => return Err(err.into()),
        }
        let link =
            self.ctx.store.link_request(&code, now).await?.ok_or_else(|| Error::not_found("no such link request"))?;
        if link.device_id != device_id {
            return Err(StoreError::LinkPending.into());
        }
        Ok(link_view(link))
    }

    /// Looks a link request up by its code (the approving device and the waiting device both
    /// do this).
    pub async fn link(&self, code: &str, source: IpAddr) -> Result<LinkRequest> {
        self.ctx.limits.links.check(&source).await?;
        let code = normalize_link_code(code)?;
        let link = self
            .ctx
            .store
            .link_request(&code, self.ctx.now())
            .await?
            .ok_or_else(|| Error::not_found("no live link request with this code"))?;
        Ok(link_view(link))
    }

    /// Approves a link request with a certificate from the caller's identity key.
    pub async fn approve_link(&self, caller: &Caller, code: &str, request: LinkApproveRequest) -> Result<Device> {
        let code = normalize_link_code(code)?;
        let now = self.ctx.now();
        let link = self
            .ctx
            .store
            .link_request(&code, now)
            .await?
            .ok_or_else(|| Error::not_found("no live link request with this code"))?;
        if link.approved.is_some() {
            return Err(StoreError::LinkAlreadyApproved.into());
        }
        let name = device_name(request.device_name)?;
        verify_certificate(&caller.user_id, &link.device_id, &request.device_certificate)?;
        let device = NewDevice {
            id: link.device_id,
            user_id: caller.user_id,
            certificate: request.device_certificate.into_vec(),
            name,
            created_at: now,
        };
        self.ctx
            .store
            .approve_link_request(&code, device.clone(), self.ctx.config.limits.max_devices_per_user, now)
            .await?;
        self.announce_device_list(&caller.user_id).await;
        Ok(device_view(&to_record(device), true))
    }

    /// Claims a handle for the caller's user with a request signed by the identity key.
    pub async fn claim_handle(&self, caller: &Caller, handle: Handle, request: &HandleRequest) -> Result<HandleRecord> {
        self.verify_handle_request(caller, &handle, request, HandleAction::Claim)?;
        self.ctx.store.claim_handle(&caller.user_id, &handle, self.ctx.now()).await?;
        Ok(HandleRecord { handle, user_id: caller.user_id })
    }

    /// Releases the caller's user's handle with a request signed by the identity key.
    pub async fn release_handle(&self, caller: &Caller, handle: Handle, request: &HandleRequest) -> Result<()> {
        self.verify_handle_request(caller, &handle, request, HandleAction::Release)?;
        if self.ctx.store.release_handle(&caller.user_id, &handle).await? {
            Ok(())
        } else {
            Err(Error::not_found("this user does not hold that handle"))
        }
    }

    /// Resolves a handle to its user.
    pub async fn resolve_handle(&self, handle: Handle) -> Result<HandleRecord> {
        let user_id =
            self.ctx.store.resolve_handle(&handle).await?.ok_or_else(|| Error::not_found("no such handle"))?;
        Ok(HandleRecord { handle, user_id })
    }

    fn verify_handle_request(
        &self,
        caller: &Caller,
        handle: &Handle,
        request: &HandleRequest,
        action: HandleAction,
    ) -> Result<()> {
        let skew = secs_to_ms(self.ctx.config.limits.signed_request_skew_secs);
        if request.timestamp.abs_diff(self.ctx.now()) > skew.unsigned_abs() {
            return Err(Error::new(
                ErrorCode::TimestampOutOfRange,
                "the request's timestamp is too far from the server's clock",
            ));
        }
        let message = signing::handle_message(action, &caller.user_id, handle, request.timestamp);
        signatures::verify(
            caller.user_id.as_bytes(),
            "identity key",
            &message,
            request.signature.as_bytes(),
            ErrorCode::SignatureInvalid,
        )
    }
}

fn verify_certificate(user: &UserId, device: &DeviceId, certificate: &Base64Bytes) -> Result<()> {
    let message = signing::device_certificate_message(user, device);
    signatures::verify(user.as_bytes(), "identity key", &message, certificate.as_bytes(), ErrorCode::SignatureInvalid)
}

fn device_name(name: Option<String>) -> Result<Option<String>> {
    match name {
        Some(name) if name.chars().count() > MAX_DEVICE_NAME_CHARS || name.chars().any(char::is_control) => {
            Err(Error::invalid("device_name is at most 64 characters without control characters"))
        }
        Some(name) if name.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

fn normalize_link_code(code: &str) -> Result<String> {
    let code = code.trim().to_ascii_uppercase();
    let well_formed =
        code.len() == 9 && code.char_indices().all(|(i, c)| if i == 4 { c == '-' } else { c.is_ascii_alphanumeric() });
    if well_formed { Ok(code) } else { Err(Error::invalid("a link code looks like ABCD-EFGH")) }
}

fn invite_hash(code: &str) -> [u8; 32] {
    Sha256::new().chain_update(b"roost/v1/invite\0").chain_update(code.trim().as_bytes()).finalize().into()
}

fn to_record(device: NewDevice) -> DeviceRecord {
    DeviceRecord {
        id: device.id,
        user_id: device.user_id,
        certificate: device.certificate,
        name: device.name,
        created_at: device.created_at,
        revoked_at: None,
    }
}

fn device_view(device: &DeviceRecord, own: bool) -> Device {
    Device {
        device_id: device.id,
        user_id: device.user_id,
        certificate: Base64Bytes(device.certificate.clone()),
        name: if own { device.name.clone() } else { None },
        created_at: device.created_at,
    }
}

fn link_view(link: roost_store::LinkRecord) -> LinkRequest {
    let (user_id, certificate) = match link.approved {
        Some((user, certificate)) => (Some(user), Some(Base64Bytes(certificate))),
        None => (None, None),
    };
    LinkRequest {
        link_code: link.code,
        device_id: link.device_id,
        state: if user_id.is_some() { LinkState::Approved } else { LinkState::Pending },
        user_id,
        certificate,
        expires_at: link.expires_at,
    }
}
