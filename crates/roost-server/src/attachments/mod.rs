//! Where attachment bytes live: a [`BlobStore`] holds each attachment as numbered chunks of the
//! attachment's chunk size, written whole and durably one at a time, so an upload can resume at
//! any chunk boundary. A local directory by default ([`local::LocalBlobs`]); any S3-compatible
//! object store for several instances ([`s3::S3Blobs`]).

pub mod local;
pub mod s3;

use std::io;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use futures::stream::BoxStream;
use roost_proto::AttachmentId;

use crate::config::{AttachmentsConfig, ConfigError};

/// A stream of an attachment's bytes.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Storage of attachment bytes.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores chunk `index` (of chunks `chunk_bytes` long) of an attachment, replacing what was
    /// there; durable when it returns.
    async fn put_chunk(&self, id: &AttachmentId, chunk_bytes: u64, index: u64, bytes: Bytes) -> io::Result<()>;

    /// Streams the bytes in `range` of an attachment stored in chunks `chunk_bytes` long.
    async fn read(&self, id: &AttachmentId, chunk_bytes: u64, range: Range<u64>) -> io::Result<ByteStream>;

    /// Deletes an attachment's `chunks` chunks; chunks that are not there are no error.
    async fn delete(&self, id: &AttachmentId, chunks: u64) -> io::Result<()>;
}

/// The store in place of one the configuration named but that could not be built: every use
/// fails.
pub struct Unusable;

#[async_trait]
impl BlobStore for Unusable {
    async fn put_chunk(&self, _: &AttachmentId, _: u64, _: u64, _: Bytes) -> io::Result<()> {
        Err(io::Error::other("attachment storage is not configured correctly"))
    }

    async fn read(&self, _: &AttachmentId, _: u64, _: Range<u64>) -> io::Result<ByteStream> {
        Err(io::Error::other("attachment storage is not configured correctly"))
    }

    async fn delete(&self, _: &AttachmentId, _: u64) -> io::Result<()> {
        Err(io::Error::other("attachment storage is not configured correctly"))
    }
}

/// Opens the store the configuration names: S3 when `attachments.s3` is set, else the
/// directory (`attachments.dir`, or `attachments` under `data_dir`).
pub fn open(config: &AttachmentsConfig, data_dir: &std::path::Path) -> Result<Arc<dyn BlobStore>, ConfigError> {
    match &config.s3 {
        Some(settings) => Ok(Arc::new(s3::S3Blobs::new(settings)?)),
        None => {
            let dir = config.dir.clone().unwrap_or_else(|| data_dir.join("attachments"));
            Ok(Arc::new(local::LocalBlobs::new(dir)))
        }
    }
}

/// The chunks of `chunk_bytes` that `range` touches, each with the part of it inside the chunk.
pub(crate) fn chunks_of(range: Range<u64>, chunk_bytes: u64) -> impl Iterator<Item = (u64, Range<u64>)> {
    let chunk_bytes = chunk_bytes.max(1);
    let first = range.start / chunk_bytes;
    let last = range.end.div_ceil(chunk_bytes);
    (first..last).filter_map(move |index| {
        let start = index * chunk_bytes;
        let from = range.start.max(start) - start;
        let to = range.end.min(start + chunk_bytes) - start;
        (from < to).then_some((index, from..to))
    })
}

#[cfg(test)]
mod tests {
    use super::chunks_of;

    #[test]
    fn ranges_map_onto_chunks() {
        let parts: Vec<_> = chunks_of(3..13, 4).collect();
        assert_eq!(parts, vec![(0, 3..4), (1, 0..4), (2, 0..4), (3, 0..1)]);
        assert_eq!(chunks_of(4..8, 4).collect::<Vec<_>>(), vec![(1, 0..4)]);
        assert_eq!(chunks_of(0..0, 4).count(), 0);
        assert_eq!(chunks_of(0..10, 100).collect::<Vec<_>>(), vec![(0, 0..10)]);
    }
}
