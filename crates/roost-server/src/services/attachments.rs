//! Attachments: encrypted files a member device uploads for one conversation, which that
//! conversation's member devices download. The server sees ciphertext only; it checks who may
//! write and read, the announced length and SHA-256, the daily quota, and deletes the bytes
//! when retention, the maximum age or the end of the conversation says so.
//!
//! An upload arrives in `PATCH` requests, each continuing at the offset the server holds. The
//! bytes are cut into chunks of the attachment's chunk size; a chunk is stored whole (with the
//! SHA-256 state after it) before the offset moves past it, so a cut connection loses at most
//! the chunk in progress, and the client resumes from the offset the server reports.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use futures::{Stream, StreamExt};
use roost_proto::attachment::{AttachmentUpload, CreateAttachmentRequest, DIGEST_BYTES};
use roost_proto::conversation::RetentionPolicy;
use roost_proto::{AttachmentId, ConversationId, ErrorCode};
use roost_store::{AttachmentRecord, NewAttachment, StoreError, UploadProgress, quota_day};
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest, Sha256};

use super::{Caller, Context, secs_to_ms};
use crate::attachments::{BlobStore, ByteStream};
use crate::error::{Error, Result};

/// Attachments deleted per store query when pruning.
const PRUNE_BATCH: u32 = 100;

/// The attachment service.
#[derive(Clone)]
pub struct Attachments {
    ctx: Arc<Context>,
    blobs: Arc<dyn BlobStore>,
    /// Uploads a request of this instance is writing now: a second request for the same upload
    /// is refused rather than interleaved.
    writing: Arc<Mutex<HashSet<AttachmentId>>>,
}

impl Attachments {
    pub(crate) fn new(ctx: Arc<Context>, blobs: Arc<dyn BlobStore>) -> Self {
        Self { ctx, blobs, writing: Arc::default() }
    }

    /// Starts an upload for a conversation the caller's device is a member of.
    pub async fn create(
        &self,
        caller: &Caller,
        conversation_id: &ConversationId,
        request: CreateAttachmentRequest,
    ) -> Result<AttachmentUpload> {
        let config = &self.ctx.config.attachments;
        if request.length == 0 {
            return Err(Error::invalid("length must be at least 1"));
        }
        if request.length > config.max_bytes {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!("an attachment may be at most {} bytes", config.max_bytes),
            ));
        }
        if request.sha256.as_bytes().len() != DIGEST_BYTES {
            return Err(Error::invalid("sha256 must be 32 bytes"));
        }
        let now = self.ctx.now();
        let attachment = NewAttachment {
            id: AttachmentId::from_bytes(rand::random()),
            conversation_id: *conversation_id,
            uploader: roost_store::MemberRef { user_id: caller.user_id, device_id: caller.device_id },
            length: request.length,
            sha256: request.sha256.into_vec(),
            chunk_bytes: config.chunk_bytes,
            hash_state: Sha256::new().serialize().to_vec(),
            now,
            daily_quota: config.daily_bytes_per_user,
        };
        let upload = AttachmentUpload {
            attachment_id: attachment.id,
            conversation_id: *conversation_id,
            length: attachment.length,
            offset: 0,
            complete: false,
            expires_at: self.expires_at(now),
        };
        match self.ctx.store.create_attachment(attachment).await {
            Ok(()) => {}
            Err(StoreError::QuotaExceeded) => {
                let next_day = (quota_day(now) + 1) * 86_400_000;
                let wait = Duration::from_millis(u64::try_from(next_day - now).unwrap_or(1));
                return Err(Error { retry_after: Some(wait), ..Error::from(StoreError::QuotaExceeded) });
            }
            Err(StoreError::NotAMember) => return Err(self.not_a_member_or_unknown(conversation_id).await),
            Err(err) => return Err(err.into()),
        }
        ::metrics::counter!("roost_attachment_uploads_started_total").increment(1);
        Ok(upload)
    }

    /// The state of one of the caller device's uploads.
    pub async fn status(&self, caller: &Caller, id: &AttachmentId) -> Result<AttachmentUpload> {
        Ok(self.status_of(&self.uploaded(caller, id).await?))
    }

    /// Appends `body` to one of the caller device's uploads at `offset` (which must be the
    /// offset the server holds). Stores every complete chunk as it arrives and, at the end of the
    /// body (or where the connection was cut), what arrived of the next; checks the digest when
    /// the last byte is in. `reserve` takes the memory for two chunks (one arriving while the one
    /// before is stored) from the server's budget.
    pub async fn upload<S, E>(
        &self,
        caller: &Caller,
        id: &AttachmentId,
        offset: u64,
        mut body: S,
        reserve: impl FnOnce(usize) -> Result<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<AttachmentUpload>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    {
        let record = self.uploaded(caller, id).await?;
        if offset != record.received || record.completed_at.is_some() {
            return Err(Error::from(StoreError::OffsetMismatch { current: record.received }));
        }
        let member = self.ctx.store.member_device(&record.conversation_id, &caller.device_id).await?;
        if !member.is_some_and(|member| member.is_active()) {
            return Err(Error::not_a_member());
        }
        let _writing = self.claim(id)?;
        let chunk_bytes = record.chunk_bytes.max(1);
        let chunk = usize::try_from(chunk_bytes.min(record.length)).unwrap_or(usize::MAX);
        // One chunk arriving while the one before is being stored.
        let _memory = reserve(chunk.saturating_mul(2))?;
        let hasher = SerializedState::<Sha256>::try_from(record.hash_state.as_slice())
            .ok()
            .and_then(|state| Sha256::deserialize(&state).ok())
            .ok_or_else(|| Error::new(ErrorCode::Internal, "the upload's hash state is unreadable"))?;
        let length = record.length;
        let mut start = record.received - record.received % chunk_bytes;
        // A chunk the previous request left part-way is read back and completed.
        let mut buffer = Vec::with_capacity(chunk);
        if start < record.received {
            let mut earlier = self.blobs.read(id, chunk_bytes, start..record.received).await.map_err(blob_error)?;
            while let Some(bytes) = earlier.next().await {
                buffer.extend_from_slice(&bytes.map_err(blob_error)?);
            }
        }
        let mut hashed = buffer.len();
        let mut body = Chunker {
            body: &mut body,
            leftover: Bytes::new(),
            timeout: Duration::from_secs(self.ctx.config.http.body_read_timeout_secs),
            ended: false,
        };
        let mut state = Some(Stored { record, hasher });
        let mut storing: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Result<Stored>> + Send + '_>>> =
            None;
        loop {
            let room = usize::try_from((length - start).min(chunk_bytes)).unwrap_or(usize::MAX);
            let filling = body.fill(&mut buffer, room);
            match storing.take() {
                Some(store) => {
                    let ((), stored) = tokio::join!(filling, store);
                    state = Some(stored?);
                }
                None => filling.await,
            }
            let end = start + buffer.len() as u64;
            if end == length && body.more().await {
                if let Some(state) = &state {
                    self.discard(&state.record).await;
                }
                return Err(Error::new(
                    ErrorCode::PayloadTooLarge,
                    "the bytes go past the length announced; the upload was deleted",
                ));
            }
            let full = buffer.len() == room;
            if (full || body.ended) && buffer.len() > hashed {
                let current = state.take().ok_or_else(|| Error::new(ErrorCode::Internal, "upload state lost"))?;
                let bytes = std::mem::replace(&mut buffer, Vec::with_capacity(chunk));
                storing = Some(Box::pin(self.store_chunk(current, bytes, hashed, start)));
                start = end;
                hashed = 0;
            }
            if body.ended || end == length {
                break;
            }
        }
        if let Some(store) = storing {
            state = Some(store.await?);
        }
        let state = state.ok_or_else(|| Error::new(ErrorCode::Internal, "upload state lost"))?;
        Ok(self.status_of(&state.record))
    }

    /// The bytes in `range` of an attachment [`Attachments::readable`] returned; the range must
    /// lie inside it.
    pub async fn read(&self, caller: &Caller, record: &AttachmentRecord, range: Range<u64>) -> Result<ByteStream> {
        if range.start >= range.end || range.end > record.length {
            return Err(Error::new(ErrorCode::RangeNotSatisfiable, "the range lies outside the attachment"));
        }
        let body = self.blobs.read(&record.id, record.chunk_bytes, range.clone()).await.map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                Error::not_found("no such attachment")
            } else {
                blob_error(err)
            }
        })?;
        if range.end == record.length {
            // Asking for the last byte counts as having fetched the attachment (burn-on-read).
            self.ctx.store.record_fetch(&record.id, &caller.device_id).await?;
        }
        ::metrics::counter!("roost_attachment_download_bytes_total").increment(range.end - range.start);
        Ok(body)
    }

    /// The attachment, if the caller's device may read it now (without reading any bytes).
    pub async fn readable(&self, caller: &Caller, id: &AttachmentId) -> Result<AttachmentRecord> {
        let unknown = || Error::not_found("no such attachment");
        let record = self.ctx.store.attachment(id).await?.ok_or_else(unknown)?;
        let member = self.ctx.store.member_device(&record.conversation_id, &caller.device_id).await?;
        if !member.is_some_and(|member| member.is_active()) {
            return Err(unknown());
        }
        let Some(completed_at) = record.completed_at else {
            return Err(Error::new(ErrorCode::UploadIncomplete, "the attachment's upload has not completed"));
        };
        // Pruning runs periodically; an attachment past its time is gone already for readers.
        let now = self.ctx.now();
        let conversation = self.ctx.store.conversation(&record.conversation_id).await?.ok_or_else(unknown)?;
        let ttl_over = matches!(conversation.retention, RetentionPolicy::Ttl { ttl_secs }
            if completed_at.saturating_add(secs_to_ms(ttl_secs)) <= now);
        let age_over = self.max_age_ms().is_some_and(|age| record.created_at.saturating_add(age) <= now);
        if ttl_over || age_over {
            return Err(unknown());
        }
        Ok(record)
    }

    /// Deletes one of the caller device's uploads or attachments (bytes and record).
    pub async fn delete(&self, caller: &Caller, id: &AttachmentId) -> Result<()> {
        let record = self.uploaded(caller, id).await?;
        let _writing = self.claim(id)?;
        self.remove(&record).await
    }

    /// Deletes the attachments retention, the maximum age, burn-on-read or the end of their
    /// conversation expired, and abandoned uploads: bytes first, then the record, so an
    /// interrupted pass leaves records the next pass finds again. Returns how many went.
    pub async fn prune(&self) -> Result<u64> {
        let now = self.ctx.now();
        let abandoned_before = now.saturating_sub(secs_to_ms(self.ctx.config.attachments.upload_expiry_secs));
        let mut deleted = 0;
        loop {
            let expired =
                self.ctx.store.expired_attachments(now, self.max_age_ms(), abandoned_before, PRUNE_BATCH).await?;
            let mut this_pass = 0;
            for record in &expired {
                // An upload a request here is writing is left for the next interval.
                if !self.is_being_written(&record.id) {
                    self.remove(record).await?;
                    this_pass += 1;
                }
            }
            ::metrics::counter!("roost_attachments_deleted_total").increment(this_pass);
            deleted += this_pass;
            // A short page is the end; so is a page of uploads being written (asking again would
            // return the same ones).
            if expired.len() < PRUNE_BATCH as usize || this_pass == 0 {
                return Ok(deleted);
            }
        }
    }

    /// One of the caller device's uploads; anyone else's is unknown to it.
    async fn uploaded(&self, caller: &Caller, id: &AttachmentId) -> Result<AttachmentRecord> {
        match self.ctx.store.attachment(id).await? {
            Some(record) if record.uploader.device_id == caller.device_id => Ok(record),
            _ => Err(Error::not_found("no such upload of this device")),
        }
    }

    /// Stores `bytes`, the chunk that starts at offset `start` (its first `hashed` bytes were
    /// hashed before), and moves the offset past them; completes the upload (or deletes it, if
    /// the digest does not match) once the last byte is in. Hashing and writing run off the
    /// async threads, while the next chunk arrives.
    async fn store_chunk(&self, stored: Stored, bytes: Vec<u8>, hashed: usize, start: u64) -> Result<Stored> {
        let Stored { mut record, hasher } = stored;
        let chunk_bytes = record.chunk_bytes.max(1);
        let to = start + bytes.len() as u64;
        let complete = to == record.length;
        let bytes = Bytes::from(bytes);
        let (hasher, digest, bytes) = tokio::task::spawn_blocking(move || {
            let mut hasher = hasher;
            hasher.update(&bytes[hashed..]);
            let digest = complete.then(|| hasher.clone().finalize());
            (hasher, digest, bytes)
        })
        .await
        .map_err(|_| Error::new(ErrorCode::Internal, "hashing an upload failed"))?;
        if digest.is_some_and(|digest| digest.as_slice() != record.sha256.as_slice()) {
            self.discard(&record).await;
            return Err(Error::new(
                ErrorCode::DigestMismatch,
                "the bytes do not match the announced sha256; the upload was deleted",
            ));
        }
        self.blobs.put_chunk(&record.id, chunk_bytes, start / chunk_bytes, bytes).await.map_err(blob_error)?;
        let progress = UploadProgress {
            id: record.id,
            from: record.received,
            to,
            hash_state: hasher.serialize().to_vec(),
            completed_at: complete.then(|| self.ctx.now()),
        };
        self.ctx.store.record_upload(progress.clone()).await?;
        ::metrics::counter!("roost_attachment_upload_bytes_total").increment(to - record.received);
        if complete {
            ::metrics::counter!("roost_attachment_uploads_completed_total").increment(1);
        }
        record.received = to;
        record.hash_state = progress.hash_state;
        record.completed_at = progress.completed_at;
        Ok(Stored { record, hasher })
    }

    /// Deletes an upload that can never complete; a failure leaves it to pruning.
    async fn discard(&self, record: &AttachmentRecord) {
        if let Err(err) = self.remove(record).await {
            tracing::warn!(error = %err, "deleting a refused upload failed; pruning will");
        }
    }

    /// Deletes an attachment: its bytes first, then its record, so an interruption leaves a
    /// record that pruning finds again rather than bytes nothing refers to.
    async fn remove(&self, record: &AttachmentRecord) -> Result<()> {
        self.blobs.delete(&record.id, record.chunks()).await.map_err(blob_error)?;
        self.ctx.store.delete_attachment(&record.id, self.ctx.now()).await?;
        Ok(())
    }

    fn status_of(&self, record: &AttachmentRecord) -> AttachmentUpload {
        AttachmentUpload {
            attachment_id: record.id,
            conversation_id: record.conversation_id,
            length: record.length,
            offset: record.received,
            complete: record.completed_at.is_some(),
            expires_at: self.expires_at(record.created_at),
        }
    }

    /// When an upload started at `created_at` is deleted if still incomplete.
    fn expires_at(&self, created_at: i64) -> i64 {
        created_at.saturating_add(secs_to_ms(self.ctx.config.attachments.upload_expiry_secs))
    }

    async fn not_a_member_or_unknown(&self, conversation_id: &ConversationId) -> Error {
        match self.ctx.store.conversation(conversation_id).await {
            Ok(Some(_)) => Error::not_a_member(),
            Ok(None) => Error::not_found("no such conversation"),
            Err(err) => err.into(),
        }
    }

    fn claim(&self, id: &AttachmentId) -> Result<Writing> {
        let mut writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        if !writing.insert(*id) {
            return Err(Error::new(ErrorCode::UploadInProgress, "another request is writing this upload"));
        }
        Ok(Writing { set: self.writing.clone(), id: *id })
    }

    fn is_being_written(&self, id: &AttachmentId) -> bool {
        self.writing.lock().unwrap_or_else(PoisonError::into_inner).contains(id)
    }

    fn max_age_ms(&self) -> Option<i64> {
        Some(self.ctx.config.retention.max_age_secs).filter(|secs| *secs > 0).map(secs_to_ms)
    }
}

/// An upload as stored, with the SHA-256 state after its stored bytes.
struct Stored {
    record: AttachmentRecord,
    hasher: Sha256,
}

/// A request body cut at chunk boundaries.
struct Chunker<'a, S> {
    body: &'a mut S,
    /// What arrived beyond the last chunk filled.
    leftover: Bytes,
    /// How long the body may stay silent.
    timeout: Duration,
    /// The body ended, was cut, or went silent: what arrived is all there is.
    ended: bool,
}

impl<S, E> Chunker<'_, S>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
{
    /// Appends to `buffer` until it holds `room` bytes or the body ends.
    async fn fill(&mut self, buffer: &mut Vec<u8>, room: usize) {
        while buffer.len() < room {
            if self.leftover.is_empty() && !self.next().await {
                return;
            }
            let take = (room - buffer.len()).min(self.leftover.len());
            buffer.extend_from_slice(&self.leftover.split_to(take));
        }
    }

    /// Whether any byte follows.
    async fn more(&mut self) -> bool {
        !self.leftover.is_empty() || self.next().await
    }

    /// Reads the next frame into `leftover`; false once the body ended.
    async fn next(&mut self) -> bool {
        while !self.ended && self.leftover.is_empty() {
            match tokio::time::timeout(self.timeout, self.body.next()).await {
                Ok(Some(Ok(frame))) => self.leftover = frame,
                // The end of the body, or a connection that was cut or went silent: keep what
                // arrived.
                Ok(None | Some(Err(_))) | Err(_) => self.ended = true,
            }
        }
        !self.leftover.is_empty()
    }
}

/// Marks an upload as being written while it lives.
struct Writing {
    set: Arc<Mutex<HashSet<AttachmentId>>>,
    id: AttachmentId,
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

fn blob_error(err: std::io::Error) -> Error {
    tracing::error!(error = %err, "attachment storage failed");
    Error {
        retry_after: Some(crate::error::STORAGE_RETRY_AFTER),
        ..Error::new(ErrorCode::Unavailable, "attachment storage is unavailable; try again later")
    }
}
