//! The Roost storage layer: the [`Store`] trait every backend implements (its halves
//! [`AccountStore`] and [`ConversationStore`]), the records it deals in, and [`StoreError`].
//!
//! Rules a backend must keep (the [`conformance`] suite checks them):
//! - every method is one transaction: it either happens completely or not at all;
//! - a one-time KeyPackage is handed out at most once, under any concurrency;
//! - revoking a device removes its sessions, KeyPackages and push subscription in the same
//!   transaction;
//! - a device key, once registered, is never accepted again (even after revocation).
//!
//! Times are Unix milliseconds chosen by the caller, so services can run on an injected clock.
#![deny(missing_docs)]

mod accounts;
mod attachments;
pub mod batch;
pub mod conformance;
mod conversations;
mod error;
mod models;
mod push;
#[cfg(feature = "sqlx")]
pub mod rows;
pub mod sql;
mod timing;

pub use accounts::AccountStore;
use async_trait::async_trait;
pub use attachments::{
    AttachmentRecord, AttachmentStore, NewAttachment, UploadProgress, quota_day, sql as attachment_sql,
};
pub use conversations::*;
pub use error::StoreError;
pub use models::*;
pub use push::{PushStore, PushSubscriptionRecord, sql as push_sql};
pub use timing::timed;

/// A result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Persistent state of a Roost server: accounts and keys in [`AccountStore`], conversations in
/// [`ConversationStore`], attachment records in [`AttachmentStore`], push subscriptions in
/// [`PushStore`].
#[async_trait]
pub trait Store: AccountStore + ConversationStore + AttachmentStore + PushStore {
    /// Checks that the backend answers (used by `/readyz`).
    async fn ping(&self) -> StoreResult<()>;

    /// Whether this process should do the background work (pruning) now. Of the processes
    /// sharing one database, at most one gets `true` at a time, and keeps getting it while it
    /// lives; when it is gone (or its database connection is), the next process to ask gets it.
    /// A store only one process uses always answers `true`.
    async fn lead_background_work(&self) -> StoreResult<bool>;

    /// A random name the database got when it was created, the same for every process that uses
    /// it (it names their shared state elsewhere, such as in Redis). A store only one process
    /// uses shares nothing and answers `"local"`.
    async fn deployment_id(&self) -> StoreResult<String>;
}
