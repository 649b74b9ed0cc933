//! Attachment bytes in an S3-compatible object store, through `object_store`: one object per
//! chunk, `{prefix}{attachment id}/{chunk index}`. Every instance of a deployment reaches the
//! same bytes, so uploads resume and downloads work wherever the load balancer sends them.

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use roost_proto::AttachmentId;

use super::{BlobStore, ByteStream, chunks_of};
use crate::config::{ConfigError, S3Config};

/// How long one request to the object store may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A bucket of an S3-compatible store.
#[derive(Debug, Clone)]
pub struct S3Blobs {
    store: Arc<AmazonS3>,
    prefix: String,
}

impl S3Blobs {
    /// A client for the configured bucket (no request is made until it is used).
    pub fn new(config: &S3Config) -> Result<Self, ConfigError> {
        // object_store's HTTPS client uses rustls with the process's default provider; roostd
        // uses ring everywhere. Installing fails only if one is installed already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // `AWS_*` variables (credentials, session token) apply unless the settings name them.
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(config.virtual_hosted_style)
            // Client options carry `allow_http` too: set them together, not one over the other.
            .with_client_options(ClientOptions::new().with_timeout(REQUEST_TIMEOUT).with_allow_http(config.allow_http));
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(key), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder.with_access_key_id(key).with_secret_access_key(secret);
        }
        let store = builder.build().map_err(|err| ConfigError(format!("attachments.s3: {err}")))?;
        Ok(Self { store: Arc::new(store), prefix: config.prefix.clone() })
    }

    fn chunk(&self, id: &AttachmentId, index: u64) -> Path {
        Path::from(format!("{}{id}/{index}", self.prefix))
    }
}

fn io_error(err: object_store::Error) -> io::Error {
    match err {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, err),
        other => io::Error::other(other),
    }
}

#[async_trait]
impl BlobStore for S3Blobs {
    async fn put_chunk(&self, id: &AttachmentId, _chunk_bytes: u64, index: u64, bytes: Bytes) -> io::Result<()> {
        self.store.put(&self.chunk(id, index), PutPayload::from(bytes)).await.map(drop).map_err(io_error)
    }

    async fn read(&self, id: &AttachmentId, chunk_bytes: u64, range: Range<u64>) -> io::Result<ByteStream> {
        let store = self.store.clone();
        let parts: Vec<(Path, Range<u64>)> =
            chunks_of(range, chunk_bytes).map(|(index, within)| (self.chunk(id, index), within)).collect();
        // The first chunk is asked for before answering, so a missing object is a 404 rather
        // than a cut-off body.
        let mut parts = parts.into_iter();
        let Some((path, within)) = parts.next() else { return Ok(futures::stream::empty().boxed()) };
        let first = get(&store, &path, within).await?;
        let rest = futures::stream::iter(parts)
            .then(move |(path, within)| {
                let store = store.clone();
                async move { get(&store, &path, within).await }
            })
            .try_flatten();
        Ok(first.chain(rest).boxed())
    }

    async fn delete(&self, id: &AttachmentId, chunks: u64) -> io::Result<()> {
        for index in 0..chunks {
            match self.store.delete(&self.chunk(id, index)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(io_error(err)),
            }
        }
        Ok(())
    }
}

/// One chunk's part as a stream.
async fn get(store: &AmazonS3, path: &Path, within: Range<u64>) -> io::Result<ByteStream> {
    let options = GetOptions { range: Some(GetRange::Bounded(within)), ..GetOptions::default() };
    let result = store.get_opts(path, options).await.map_err(io_error)?;
    Ok(result.into_stream().map_err(io_error).boxed())
}
