//! Sending files and saving received ones: seal ([`crate::files`]), upload (resuming where the
//! server's offset says after a cut connection), send the pointer inside an MLS message; fetch,
//! check, open.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use roost_proto::attachment::CreateAttachmentRequest;
use roost_proto::{AttachmentId, ConversationId, ErrorCode, bytes};
use sha2::Sha256;

use super::Client;
use crate::content::{Attachment, Content};
use crate::error::{ClientError, Result};
use crate::files::{self, CHUNK, FileKey, Opener, Progress, SEALED_CHUNK};

/// How often an upload or download is resumed after a failure before giving up.
const ATTEMPTS: u32 = 8;

/// What a file is, for the people who receive it; every field is optional (the name defaults
/// to the file's own).
#[derive(Debug, Clone, Default)]
pub struct FileDetails {
    /// The name shown.
    pub name: Option<String>,
    /// The media type (`image/png`).
    pub media_type: Option<String>,
    /// An image's or video's width in pixels.
    pub width: Option<u32>,
    /// An image's or video's height in pixels.
    pub height: Option<u32>,
    /// A voice note's, audio's or video's length in milliseconds.
    pub duration_ms: Option<u64>,
    /// A small preview image, sent inside the message.
    pub thumbnail: Option<Vec<u8>>,
}

/// The largest thumbnail a message carries.
pub const MAX_THUMBNAIL_BYTES: usize = 16 * 1024;

impl Client {
    /// Sends a file: seals it with a fresh key, uploads the ciphertext (resuming after
    /// failures), then sends the `attachment` message. `progress` hears the ciphertext bytes
    /// uploaded. Returns the message's sequence number and what it carries.
    pub async fn send_file(
        &mut self,
        id: &ConversationId,
        path: &Path,
        details: FileDetails,
        progress: Progress,
    ) -> Result<(u64, Attachment)> {
        if details.thumbnail.as_ref().is_some_and(|thumbnail| thumbnail.len() > MAX_THUMBNAIL_BYTES) {
            return Err(ClientError::Invalid(format!("a thumbnail may be at most {MAX_THUMBNAIL_BYTES} bytes")));
        }
        let size = std::fs::metadata(path).map_err(|err| ClientError::Invalid(format!("{}: {err}", path.display())))?;
        if !size.is_file() {
            return Err(ClientError::Invalid(format!("{} is not a file", path.display())));
        }
        let key = FileKey::generate();
        let (length, digest) = files::seal_digest(path, &key).await?;
        let request = CreateAttachmentRequest { length, sha256: digest.to_vec().into() };
        let upload = self.api.create_attachment(id, &request).await?;
        self.upload_sealed(&upload.attachment_id, path, &key, progress).await?;
        let name = details.name.unwrap_or_else(|| {
            path.file_name().map_or_else(|| "file".to_owned(), |name| name.to_string_lossy().into_owned())
        });
        let attachment = Attachment {
            id: upload.attachment_id.to_string(),
            key: bytes::encode(key.as_bytes()),
            digest: bytes::encode(&digest),
            name,
            size: size.len(),
            media_type: details.media_type,
            width: details.width,
            height: details.height,
            duration_ms: details.duration_ms,
            thumbnail: details.thumbnail.map(|thumbnail| bytes::encode(&thumbnail)),
        };
        let seq = self.send(id, &Content::Attachment(attachment.clone())).await?;
        Ok((seq, attachment))
    }

    async fn upload_sealed(&self, id: &AttachmentId, path: &Path, key: &FileKey, progress: Progress) -> Result<()> {
        let mut offset = 0;
        let mut failures = 0;
        loop {
            let stream = files::sealed_stream(path.to_path_buf(), key.clone(), offset, progress.clone());
            let sent = self.api.upload_attachment(id, offset, reqwest::Body::wrap_stream(stream)).await;
            let failure = match sent {
                Ok(upload) if upload.complete => return Ok(()),
                // The server kept what arrived (the body stopped early): go on from there.
                Ok(upload) if upload.offset > offset => {
                    offset = upload.offset;
                    continue;
                }
                Ok(_) => ClientError::Protocol("the upload made no progress".into()),
                Err(err) if resumable(&err) => err,
                Err(err) => return Err(err),
            };
            failures += 1;
            if failures >= ATTEMPTS {
                return Err(failure);
            }
            tokio::time::sleep(backoff(failures)).await;
            let upload = self.api.attachment_upload(id).await?;
            if upload.complete {
                return Ok(());
            }
            offset = upload.offset;
        }
    }

    /// Downloads an attachment a message carried into `destination`: checks its digest and every
    /// chunk's seal, writes the plaintext to `destination.part` and renames it when all is
    /// well. An interrupted download resumes from the `.part` file; a file that does not check
    /// out is deleted. `progress` hears the ciphertext bytes received.
    pub async fn save_attachment(&self, attachment: &Attachment, destination: &Path, progress: Progress) -> Result<()> {
        let id: AttachmentId =
            attachment.id.parse().map_err(|_| ClientError::Protocol("an attachment id that does not parse".into()))?;
        let key = FileKey::from_slice(&decode(&attachment.key)?)?;
        let digest = decode(&attachment.digest)?;
        let length = files::sealed_length(attachment.size);
        let part = PathBuf::from(format!("{}.part", destination.display()));
        let mut failures = 0;
        loop {
            match self.download_once(&id, &key, &digest, length, &part, &progress).await {
                Ok(()) => break,
                Err(err) if resumable(&err) && failures + 1 < ATTEMPTS => {
                    failures += 1;
                    tokio::time::sleep(backoff(failures)).await;
                }
                Err(err) => {
                    if !resumable(&err) {
                        // What was written does not check out: nothing of it may be used.
                        let _ = std::fs::remove_file(&part);
                    }
                    return Err(err);
                }
            }
        }
        std::fs::rename(&part, destination)
            .map_err(|err| ClientError::Invalid(format!("{}: {err}", destination.display())))
    }

    /// One attempt: resumes after the whole chunks `part` holds, downloads the rest.
    async fn download_once(
        &self,
        id: &AttachmentId,
        key: &FileKey,
        digest: &[u8],
        length: u64,
        part: &Path,
        progress: &Progress,
    ) -> Result<()> {
        let local = |err: std::io::Error| ClientError::Invalid(format!("{}: {err}", part.display()));
        let mut opener = Opener::new(key, length)?;
        let held = std::fs::metadata(part).map(|meta| meta.len()).unwrap_or(0);
        let chunk_count = files::chunks(files::opened_length(length).unwrap_or(0));
        let done = (held / CHUNK as u64).min(chunk_count.saturating_sub(1));
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(part).map_err(local)?;
        file.set_len(done * CHUNK as u64).map_err(local)?;
        opener.resume(done, |hasher: &mut Sha256| files::reseal_prefix(part, key, done, hasher))?;
        let from = done * SEALED_CHUNK as u64;
        let mut file = std::io::BufWriter::with_capacity(4 * CHUNK, file);
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(local)?;
        let mut response = self.api.download_attachment(id, from).await?;
        let mut received = from;
        let mut plaintext = Vec::with_capacity(2 * CHUNK);
        while let Some(bytes) =
            response.chunk().await.map_err(|err| ClientError::Unreachable(format!("downloading: {err}")))?
        {
            opener.push(&bytes, &mut plaintext)?;
            file.write_all(&plaintext).map_err(local)?;
            plaintext.clear();
            received += bytes.len() as u64;
            progress(received, length);
        }
        opener.finish(digest, &mut plaintext)?;
        file.write_all(&plaintext).map_err(local)?;
        let file = file.into_inner().map_err(|err| local(err.into_error()))?;
        file.sync_all().map_err(local)
    }
}

/// Whether trying again (after asking where things stand) can help.
fn resumable(err: &ClientError) -> bool {
    match err {
        ClientError::Unreachable(_) => true,
        ClientError::Server { code, .. } => {
            matches!(code, ErrorCode::UploadOffsetMismatch | ErrorCode::UploadInProgress | ErrorCode::Unavailable)
        }
        _ => false,
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << failures.min(5)))
}

fn decode(text: &str) -> Result<Vec<u8>> {
    bytes::decode(text).map_err(|_| ClientError::Protocol("an attachment field is not base64url".into()))
}
