//! Challenge-response authentication and sessions.
//!
//! A device asks for a challenge (32 random bytes, single use, 60 s), signs the domain-separated
//! auth statement containing the server name, its device id and the challenge, and gets a bearer
//! token. Only SHA-256 of the token is stored.

use std::net::IpAddr;
use std::sync::Arc;

use roost_proto::api::{ChallengeResponse, SessionRequest, SessionResponse, WhoAmI};
use roost_proto::{Base64Bytes, DeviceId, ErrorCode, UserId, bytes, signing};
use roost_store::SessionRecord;
use sha2::{Digest, Sha256};

use super::cache::Stale;
use super::{Context, secs_to_ms, signatures};
use crate::error::{Error, Result};
use crate::hub::{Hub, LiveEvent};
use crate::push::Push;

/// How long a challenge is accepted.
pub const CHALLENGE_TTL_MS: i64 = 60_000;
/// How long a used or expired challenge is remembered, so a late replay is still reported as a
/// replay rather than as unknown.
const CHALLENGE_MEMORY_MS: i64 = 10 * 60_000;
const TOKEN_PREFIX: &str = "rst_";

/// The authenticated device behind a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Its user.
    pub user_id: UserId,
    /// The device.
    pub device_id: DeviceId,
    /// When its session ends.
    pub expires_at: i64,
}

/// The authentication service.
#[derive(Clone)]
pub struct Auth {
    ctx: Arc<Context>,
    hub: Arc<Hub>,
    push: Arc<Push>,
}

impl Auth {
    pub(crate) fn new(ctx: Arc<Context>, hub: Arc<Hub>, push: Arc<Push>) -> Self {
        Self { ctx, hub, push }
    }

    /// Issues a challenge to an active device.
    pub async fn challenge(&self, device_id: DeviceId, source: IpAddr) -> Result<ChallengeResponse> {
        self.ctx.limits.challenges.check(&source).await?;
        self.active_device(&device_id).await?;
        let challenge: [u8; 32] = rand::random();
        let expires_at = self.ctx.now() + CHALLENGE_TTL_MS;
        self.ctx.store.insert_challenge(&challenge, &device_id, expires_at).await?;
        Ok(ChallengeResponse {
            challenge: Base64Bytes(challenge.to_vec()),
            server_name: self.ctx.config.server_name.clone(),
            expires_at,
        })
    }

    /// Verifies a signed challenge and opens a session.
    pub async fn open_session(&self, request: SessionRequest) -> Result<SessionResponse> {
        let challenge = request.challenge.as_bytes();
        let record = self
            .ctx
            .store
            .challenge(challenge)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::ChallengeUnknown, "this challenge was never issued"))?;
        if record.device_id != request.device_id {
            return Err(Error::new(ErrorCode::ChallengeForeign, "this challenge was issued to another device"));
        }
        if record.used {
            return Err(Error::new(ErrorCode::ChallengeUsed, "this challenge has already been used"));
        }
        let now = self.ctx.now();
        if record.expires_at <= now {
            return Err(Error::new(ErrorCode::ChallengeExpired, "this challenge has expired; request a new one"));
        }
        let device = self.active_device(&request.device_id).await?;
        let message = signing::auth_message(&self.ctx.config.server_name, &request.device_id, challenge);
        signatures::verify(
            request.device_id.as_bytes(),
            "device key",
            &message,
            request.signature.as_bytes(),
            ErrorCode::AuthSignatureInvalid,
        )?;
        if !self.ctx.store.consume_challenge(challenge, now).await? {
            return Err(Error::new(ErrorCode::ChallengeUsed, "this challenge has already been used"));
        }
        let token = format!("{TOKEN_PREFIX}{}", bytes::encode(&rand::random::<[u8; 32]>()));
        let expires_at = now.saturating_add(secs_to_ms(self.ctx.config.limits.session_ttl_secs));
        self.ctx
            .store
            .create_session(SessionRecord {
                token_hash: token_hash(&token),
                device_id: request.device_id,
                user_id: device.user_id,
                created_at: now,
                expires_at,
            })
            .await?;
        Ok(SessionResponse { token, user_id: device.user_id, device_id: request.device_id, expires_at })
    }

    /// Resolves a bearer token to its caller, through the session cache (HTTP requests repeat
    /// the same token).
    pub async fn authenticate(&self, token: &str) -> Result<Caller> {
        self.resolve(token, true).await
    }

    /// Resolves a bearer token without remembering the session (a WebSocket authenticates once;
    /// caching its session would only cost memory for every open connection).
    pub async fn authenticate_once(&self, token: &str) -> Result<Caller> {
        self.resolve(token, false).await
    }

    async fn resolve(&self, token: &str, remember: bool) -> Result<Caller> {
        let unknown = || Error::new(ErrorCode::Unauthenticated, "the bearer token is not valid");
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
            return Err(unknown());
        }
        let hash = token_hash(token);
        let session = match self.ctx.sessions.get(&hash) {
            Ok(session) => session,
            Err(ticket) => {
                let session = self.ctx.store.session(&hash).await?.ok_or_else(unknown)?;
                if remember {
                    self.ctx.sessions.fill(hash, ticket, session.clone());
                }
                session
            }
        };
        if session.expires_at <= self.ctx.now() {
            return Err(Error::new(ErrorCode::SessionExpired, "the session has expired; authenticate again"));
        }
        Ok(Caller { user_id: session.user_id, device_id: session.device_id, expires_at: session.expires_at })
    }

    /// Whether the session with this token hash still exists, read from the store (a
    /// connection that may have missed the news of its logout asks).
    pub async fn session_lasts(&self, hash: &[u8; 32]) -> Result<bool> {
        Ok(self.ctx.store.session(hash).await?.is_some())
    }

    /// Describes the caller.
    pub async fn whoami(&self, caller: &Caller) -> Result<WhoAmI> {
        let handle = self.ctx.store.handle_of(&caller.user_id).await?;
        Ok(WhoAmI { user_id: caller.user_id, device_id: caller.device_id, handle, expires_at: caller.expires_at })
    }

    /// Ends the session of `token` (logout), and the caller's socket if it authenticated with it;
    /// the device's push subscription goes with it (a logged-out device is not woken).
    pub async fn close_session(&self, caller: &Caller, token: &str) -> Result<()> {
        let hash = token_hash(token);
        let deleted = self.ctx.store.delete_session(&hash).await;
        super::forget_everywhere(&self.ctx, &self.hub, Stale::Session(hash)).await;
        deleted?;
        self.hub.publish([caller.device_id], LiveEvent::SessionEnded(hash));
        self.push.unsubscribe(&caller.device_id).await?;
        Ok(())
    }

    /// Deletes expired challenges, sessions and link requests.
    pub async fn prune(&self) -> Result<u64> {
        Ok(self.ctx.store.prune_expired(self.ctx.now(), CHALLENGE_MEMORY_MS).await?)
    }

    async fn active_device(&self, device_id: &DeviceId) -> Result<roost_store::DeviceRecord> {
        let device = self
            .ctx
            .store
            .device(device_id)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::DeviceUnknown, "this device is not registered"))?;
        if device.revoked_at.is_some() {
            return Err(Error::new(ErrorCode::DeviceRevoked, "this device has been revoked"));
        }
        Ok(device)
    }
}

/// What identifies a session in the store and in [`LiveEvent::SessionEnded`]: the hash of its
/// token (the token itself is never kept).
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
