//! File encryption for attachments: ChaCha20-Poly1305 in the STREAM construction (the `aead`
//! crate's `StreamBE32`), with a fresh 32-byte key per file.
//!
//! The plaintext is cut into chunks of [`CHUNK`] bytes (the last may be shorter, and an empty
//! file is one empty chunk); chunk `i` is sealed with the nonce `7 zero bytes || i as u32
//! big-endian || 1 if it is the last chunk else 0`, without associated data, and the sealed
//! chunks (each [`TAG`] bytes longer) are concatenated. The nonce prefix can be fixed because a
//! key seals one file only. The last-chunk flag makes a truncated file fail to open; the
//! SHA-256 of the whole ciphertext, carried in the MLS message, makes any other change fail
//! before the file is used.
//!
//! Sealing is deterministic for a key, so the ciphertext is produced twice when a file is sent:
//! once for its digest (announced before the upload) and once while uploading, from any offset,
//! which also lets an upload resume without keeping a ciphertext copy on disk.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use futures::Stream;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{ClientError, Result};

/// Plaintext bytes per sealed chunk.
pub const CHUNK: usize = 64 * 1024;
/// Bytes the seal adds to each chunk.
pub const TAG: usize = 16;
/// Ciphertext bytes per sealed chunk (all but the last).
pub const SEALED_CHUNK: usize = CHUNK + TAG;

/// Reports progress: bytes done so far, of the total.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// A file key: 32 random bytes, used for one file only.
#[derive(Clone)]
pub struct FileKey(Zeroizing<[u8; 32]>);

impl FileKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(Zeroizing::new(rand::random()))
    }

    /// A key received in an `attachment` message.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let key: [u8; 32] =
            bytes.try_into().map_err(|_| ClientError::Protocol("an attachment key is 32 bytes".into()))?;
        Ok(Self(Zeroizing::new(key)))
    }

    /// The key's bytes (to put in the message).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn stream(&self) -> StreamBE32<ChaCha20Poly1305> {
        let aead = ChaCha20Poly1305::new(&(*self.0).into());
        // The nonce prefix is all zero: a key seals one file only.
        StreamBE32::from_aead(aead, &Default::default())
    }
}

/// How many chunks a plaintext of `length` bytes is sealed in.
pub fn chunks(length: u64) -> u64 {
    length.div_ceil(CHUNK as u64).max(1)
}

/// The ciphertext length of a plaintext of `length` bytes.
pub fn sealed_length(length: u64) -> u64 {
    length + chunks(length) * TAG as u64
}

/// The plaintext length of a ciphertext of `length` bytes, if one can have that length.
pub fn opened_length(length: u64) -> Option<u64> {
    let sealed_chunks = length.div_ceil(SEALED_CHUNK as u64).max(1);
    let plain = length.checked_sub(sealed_chunks * TAG as u64)?;
    (sealed_length(plain) == length).then_some(plain)
}

fn seal(stream: &StreamBE32<ChaCha20Poly1305>, index: u64, last: bool, plaintext: &[u8]) -> Result<Vec<u8>> {
    let position = u32::try_from(index).map_err(|_| ClientError::Invalid("the file is too large".into()))?;
    stream.encrypt(position, last, plaintext).map_err(|_| ClientError::Invalid("sealing a file chunk failed".into()))
}

fn open(stream: &StreamBE32<ChaCha20Poly1305>, index: u64, last: bool, sealed: &[u8]) -> Result<Vec<u8>> {
    let position = u32::try_from(index).map_err(|_| ClientError::Protocol("the attachment is too large".into()))?;
    stream
        .decrypt(position, last, sealed)
        .map_err(|_| ClientError::Protocol("the attachment does not decrypt with its key: it was altered".into()))
}

/// Reads chunk after chunk of a plaintext file, from chunk `first`.
struct Chunks {
    file: std::fs::File,
    index: u64,
    count: u64,
}

impl Chunks {
    fn open(path: &Path, first: u64) -> Result<(Self, u64)> {
        let mut file = std::fs::File::open(path).map_err(|err| file_error(path, &err))?;
        let length = file.metadata().map_err(|err| file_error(path, &err))?.len();
        file.seek(SeekFrom::Start(first * CHUNK as u64)).map_err(|err| file_error(path, &err))?;
        Ok((Self { file, index: first, count: chunks(length) }, length))
    }

    /// The next chunk: its index, whether it is the last, and its plaintext.
    fn next(&mut self, buffer: &mut Vec<u8>) -> io::Result<Option<(u64, bool)>> {
        if self.index >= self.count {
            return Ok(None);
        }
        buffer.clear();
        (&mut self.file).take(CHUNK as u64).read_to_end(buffer)?;
        let index = self.index;
        self.index += 1;
        Ok(Some((index, self.index == self.count)))
    }
}

fn file_error(path: &Path, err: &io::Error) -> ClientError {
    ClientError::Invalid(format!("{}: {err}", path.display()))
}

/// A file sealed with `key`, without writing the ciphertext anywhere: its length and SHA-256.
pub async fn seal_digest(path: &Path, key: &FileKey) -> Result<(u64, [u8; 32])> {
    let (path, key) = (path.to_path_buf(), key.clone());
    tokio::task::spawn_blocking(move || {
        let (mut chunks, length) = Chunks::open(&path, 0)?;
        let stream = key.stream();
        let mut hasher = Sha256::new();
        let mut buffer = Vec::with_capacity(CHUNK);
        while let Some((index, last)) = chunks.next(&mut buffer).map_err(|err| file_error(&path, &err))? {
            hasher.update(seal(&stream, index, last, &buffer)?);
        }
        Ok((sealed_length(length), hasher.finalize().into()))
    })
    .await
    .map_err(|err| ClientError::Invalid(format!("sealing the file: {err}")))?
}

/// The ciphertext of the file from byte `from` of the ciphertext on, as a stream to upload;
/// `progress` hears the ciphertext offset reached after each chunk.
pub fn sealed_stream(
    path: PathBuf,
    key: FileKey,
    from: u64,
    progress: Progress,
) -> impl Stream<Item = io::Result<Vec<u8>>> + Send + 'static {
    let first = from / SEALED_CHUNK as u64;
    let skip = usize::try_from(from % SEALED_CHUNK as u64).unwrap_or(0);
    let state = (path, key, first, skip, None::<Chunks>, 0u64);
    futures::stream::try_unfold(state, move |(path, key, first, skip, chunks, total)| {
        let progress = progress.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let (mut chunks, total) = match chunks {
                    Some(chunks) => (chunks, total),
                    None => {
                        let (chunks, length) = Chunks::open(&path, first).map_err(io::Error::other)?;
                        (chunks, sealed_length(length))
                    }
                };
                let mut buffer = Vec::with_capacity(CHUNK);
                let Some((index, last)) = chunks.next(&mut buffer)? else { return Ok(None) };
                let mut sealed = seal(&key.stream(), index, last, &buffer).map_err(io::Error::other)?;
                if index == first && skip > 0 {
                    sealed.drain(..skip.min(sealed.len()));
                }
                let reached = (index * SEALED_CHUNK as u64 + SEALED_CHUNK as u64).min(total);
                progress(reached, total);
                Ok(Some((sealed, (path, key, first, 0, Some(chunks), total))))
            })
            .await
            .map_err(io::Error::other)?
        }
    })
}

/// Opens a downloaded ciphertext as it arrives: checks its SHA-256 and every chunk's seal, and
/// writes the plaintext.
pub struct Opener {
    stream: StreamBE32<ChaCha20Poly1305>,
    hasher: Sha256,
    pending: Vec<u8>,
    next_index: u64,
    chunk_count: u64,
}

impl Opener {
    /// For a ciphertext of `length` bytes sealed with `key`.
    pub fn new(key: &FileKey, length: u64) -> Result<Self> {
        let plain = opened_length(length)
            .ok_or_else(|| ClientError::Protocol("the attachment's length cannot be a sealed file's".into()))?;
        Ok(Self {
            stream: key.stream(),
            hasher: Sha256::new(),
            pending: Vec::with_capacity(SEALED_CHUNK),
            next_index: 0,
            chunk_count: chunks(plain),
        })
    }

    /// Continues after `done` whole chunks that were opened before (an interrupted download);
    /// `sealed_before` is their ciphertext, for the digest.
    pub fn resume(&mut self, done: u64, sealed_before: impl FnOnce(&mut Sha256) -> Result<()>) -> Result<()> {
        sealed_before(&mut self.hasher)?;
        self.next_index = done;
        Ok(())
    }

    /// Takes ciphertext bytes; returns the plaintext of the chunks they complete.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.hasher.update(bytes);
        while !bytes.is_empty() {
            let take = (SEALED_CHUNK - self.pending.len()).min(bytes.len());
            if take == 0 {
                return Err(ClientError::Protocol("the attachment is longer than its message says".into()));
            }
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() == SEALED_CHUNK && self.next_index + 1 < self.chunk_count {
                out.extend_from_slice(&open(&self.stream, self.next_index, false, &self.pending)?);
                self.pending.clear();
                self.next_index += 1;
            }
        }
        Ok(())
    }

    /// Ends the ciphertext: opens the last chunk and checks the digest.
    pub fn finish(mut self, digest: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self.next_index + 1 != self.chunk_count {
            return Err(ClientError::Protocol("the attachment ended early".into()));
        }
        if self.hasher.finalize().as_slice() != digest {
            return Err(ClientError::Protocol("the attachment's digest does not match its message".into()));
        }
        out.extend_from_slice(&open(&self.stream, self.next_index, true, &self.pending)?);
        self.pending.clear();
        Ok(())
    }

    /// The chunks opened so far.
    pub fn chunks_opened(&self) -> u64 {
        self.next_index
    }
}

/// The ciphertext of a file's first `count` chunks (to rebuild the digest of a download that
/// resumes after them).
pub fn reseal_prefix(path: &Path, key: &FileKey, count: u64, hasher: &mut Sha256) -> Result<()> {
    let (mut chunks, _) = Chunks::open(path, 0)?;
    // The partial file's chunks are full and none of them is the file's last.
    chunks.count = count;
    let stream = key.stream();
    let mut buffer = Vec::with_capacity(CHUNK);
    while let Some((index, _)) = chunks.next(&mut buffer).map_err(|err| file_error(path, &err))? {
        if buffer.len() != CHUNK {
            return Err(ClientError::Invalid("a partial download is shorter than it says".into()));
        }
        hasher.update(seal(&stream, index, false, &buffer)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip() {
        for plain in [0, 1, CHUNK as u64 - 1, CHUNK as u64, CHUNK as u64 + 1, 3 * CHUNK as u64, 10_000_000] {
            assert_eq!(opened_length(sealed_length(plain)), Some(plain), "{plain}");
        }
        assert_eq!(sealed_length(0), TAG as u64, "an empty file is one empty chunk");
        assert_eq!(opened_length(5), None);
        assert_eq!(opened_length(SEALED_CHUNK as u64 + 3), None, "a last chunk shorter than its tag");
    }

    /// The stream an upload resumes with is the rest of the very same ciphertext.
    #[tokio::test]
    async fn a_stream_from_any_offset_continues_the_same_ciphertext() {
        use futures::TryStreamExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, (0..2 * CHUNK + 77).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
        let key = FileKey::generate();
        let collect = |from| {
            let stream = sealed_stream(path.clone(), key.clone(), from, Arc::new(|_, _| {}));
            async move { stream.try_concat().await.unwrap() }
        };
        let whole = collect(0).await;
        let (length, digest) = seal_digest(&path, &key).await.unwrap();
        assert_eq!(whole.len() as u64, length);
        assert_eq!(<[u8; 32]>::from(Sha256::digest(&whole)), digest);
        for from in [1, SEALED_CHUNK as u64 - 1, SEALED_CHUNK as u64, SEALED_CHUNK as u64 + 5, length - 1] {
            assert_eq!(collect(from).await, whole[from as usize..], "from {from}");
        }
        let mut opener = Opener::new(&key, length).unwrap();
        let mut plain = Vec::new();
        opener.push(&whole, &mut plain).unwrap();
        opener.finish(&digest, &mut plain).unwrap();
        assert_eq!(plain, std::fs::read(&path).unwrap());
    }

    #[test]
    fn sealed_chunks_open_only_in_place() {
        let key = FileKey::generate();
        let stream = key.stream();
        let sealed = seal(&stream, 3, false, b"chunk").unwrap();
        assert_eq!(open(&stream, 3, false, &sealed).unwrap(), b"chunk");
        assert!(open(&stream, 4, false, &sealed).is_err(), "another position");
        assert!(open(&stream, 3, true, &sealed).is_err(), "claimed as the last chunk");
        assert!(open(&FileKey::generate().stream(), 3, false, &sealed).is_err(), "another key");
    }
}
