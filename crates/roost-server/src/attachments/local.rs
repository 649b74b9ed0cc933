//! Attachment bytes in a local directory: one file per attachment, named by its id under a
//! directory of the id's first two characters. A chunk is written at its offset and synced to
//! disk (with the directory entry, for a new file) before `put_chunk` returns.

use std::io::{self, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use async_trait::async_trait;
use axum::body::Bytes;
use futures::StreamExt;
use roost_proto::AttachmentId;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{BlobStore, ByteStream};

/// Bytes read from a file at a time when streaming it out.
const READ_BUFFER: usize = 256 * 1024;

/// A directory of attachment files.
#[derive(Debug, Clone)]
pub struct LocalBlobs {
    dir: PathBuf,
}

impl LocalBlobs {
    /// Uses `dir` (created when the first chunk is written).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, id: &AttachmentId) -> PathBuf {
        let name = id.to_string();
        self.dir.join(&name[..2]).join(name)
    }
}

#[async_trait]
impl BlobStore for LocalBlobs {
    async fn put_chunk(&self, id: &AttachmentId, chunk_bytes: u64, index: u64, bytes: Bytes) -> io::Result<()> {
        let path = self.path(id);
        tokio::task::spawn_blocking(move || {
            let parent = path.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
            let created = !path.exists();
            if created {
                std::fs::create_dir_all(&parent)?;
            }
            let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
            file.write_all_at(&bytes, index.saturating_mul(chunk_bytes))?;
            file.sync_data()?;
            if created {
                // The new file's name must survive a crash too.
                std::fs::File::open(&parent)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn read(&self, id: &AttachmentId, _chunk_bytes: u64, range: Range<u64>) -> io::Result<ByteStream> {
        let mut file = tokio::fs::File::open(self.path(id)).await?;
        file.seek(SeekFrom::Start(range.start)).await?;
        let length = range.end.saturating_sub(range.start);
        Ok(ReaderStream::with_capacity(file.take(length), READ_BUFFER).boxed())
    }

    async fn delete(&self, id: &AttachmentId, _chunks: u64) -> io::Result<()> {
        match tokio::fs::remove_file(self.path(id)).await {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}
