//! The services: business rules of Roost, independent of HTTP. The axum handlers and the
//! WebSocket gateway call these, so both paths enforce the same rules.

mod accounts;
mod attachments;
mod auth;
pub mod cache;
mod conversations;
pub(crate) mod delivery;
mod keys;
mod signatures;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub use accounts::Accounts;
pub use attachments::Attachments;
pub use auth::{Auth, Caller, token_hash};
pub use conversations::Conversations;
pub use delivery::Delivery;
pub use keys::Keys;
use roost_store::Store;

use self::cache::{MAX_MEMBER_DEVICES, MAX_SESSIONS, MemberCache, SHARED_TTL, SessionCache, Stale, TTL};
use crate::clock::Clock;
use crate::config::Config;
use crate::hub::Hub;
use crate::push::Push;
use crate::ratelimit::RateLimiters;

/// What every service needs: the store, the clock, the configuration, the rate limiters and the
/// caches of the hot path.
pub struct Context {
    /// Persistent state.
    pub store: Arc<dyn Store>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The effective configuration.
    pub config: Config,
    /// Abuse controls.
    pub limits: RateLimiters,
    /// Sessions read recently.
    pub sessions: SessionCache,
    /// Member devices of conversations read recently.
    pub members: MemberCache,
    /// Whether this instance did the background work (pruning) at its last turn; of the
    /// instances sharing a database, one at a time does.
    pub leads_background_work: AtomicBool,
}

impl Context {
    /// Builds the context.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: Config) -> Self {
        let limits = RateLimiters::new(&config.rate_limits);
        let ttl = if config.redis_url.is_some() { SHARED_TTL } else { TTL };
        Self {
            store,
            clock,
            config,
            limits,
            sessions: SessionCache::new(MAX_SESSIONS).trusting_for(ttl),
            members: MemberCache::weighed(MAX_MEMBER_DEVICES, |members| members.len()).trusting_for(ttl),
            leads_background_work: AtomicBool::new(false),
        }
    }

    /// Forgets what `stale` makes stale in this instance's caches.
    pub fn forget(&self, stale: Stale) {
        match stale {
            Stale::Session(hash) => self.sessions.forget(&hash),
            Stale::Members(conversation) => self.members.forget(&conversation),
            Stale::Revoked(device) => {
                self.sessions.invalidate(|_, session| session.device_id == device);
                self.members.invalidate(|_, _| true);
            }
        }
    }

    /// Empties the caches (invalidations from another instance were lost) and lets them fill
    /// again.
    pub fn forget_everything(&self) {
        self.sessions.invalidate(|_, _| true);
        self.members.invalidate(|_, _| true);
    }

    /// Empties the caches and keeps them empty: invalidations from other instances may be
    /// missed until [`trust_caches`](Self::trust_caches).
    pub fn distrust_caches(&self) {
        self.sessions.distrust();
        self.members.distrust();
    }

    /// Empties the caches (invalidations from other instances may have been missed) and lets
    /// them fill again: called once they arrive again.
    pub fn trust_caches(&self) {
        self.sessions.trust();
        self.members.trust();
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }
}

/// All services, cheap to clone.
#[derive(Clone)]
pub struct Services {
    /// Users, devices, links, handles.
    pub accounts: Accounts,
    /// Challenges and sessions.
    pub auth: Auth,
    /// The KeyPackage directory.
    pub keys: Keys,
    /// Conversations: the MLS Delivery Service.
    pub conversations: Conversations,
    /// Sync, acks and device queues.
    pub delivery: Delivery,
    /// Encrypted files.
    pub attachments: Attachments,
    /// Push subscriptions and wake-ups.
    pub push: Arc<Push>,
    /// Live fan-out to connected devices.
    pub hub: Arc<Hub>,
    /// The shared context.
    pub ctx: Arc<Context>,
}

impl Services {
    /// Builds every service over one context.
    pub fn new(ctx: Context) -> Self {
        let ctx = Arc::new(ctx);
        let hub = Arc::new(Hub::default());
        let blobs = crate::attachments::open(&ctx.config.attachments, &ctx.config.data_dir).unwrap_or_else(|err| {
            // The configuration was checked when it was loaded; a store that cannot be built
            // anyway fails every attachment request rather than the whole server.
            tracing::error!(error = %err, "attachment storage cannot be used");
            Arc::new(crate::attachments::Unusable)
        });
        let push = Push::new(ctx.clone(), hub.clone());
        Self {
            attachments: Attachments::new(ctx.clone(), blobs),
            accounts: Accounts::new(ctx.clone(), hub.clone()),
            auth: Auth::new(ctx.clone(), hub.clone(), push.clone()),
            keys: Keys::new(ctx.clone(), hub.clone()),
            conversations: Conversations::new(ctx.clone(), hub.clone()),
            delivery: Delivery::new(ctx.clone(), hub.clone(), push.clone()),
            push,
            hub,
            ctx,
        }
    }
}

/// Forgets what `stale` makes stale here and on every other instance; completes once the
/// others were told (or telling them failed), so the caller answers only after that.
async fn forget_everywhere(ctx: &Context, hub: &Hub, stale: Stale) {
    ctx.forget(stale);
    hub.forget_elsewhere(stale).await;
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}
