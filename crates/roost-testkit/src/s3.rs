//! A real S3-compatible server for tests: s3s-fs (an S3 server over a directory) on
//! `127.0.0.1:0`, requiring signed requests, with one bucket. Roost talks to it over HTTP with
//! the same client it uses for Amazon S3.

use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use roost_server::config::S3Config;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

/// The bucket every test server has.
pub const BUCKET: &str = "roost-test";
const ACCESS_KEY: &str = "roost-test-access";
const SECRET_KEY: &str = "roost-test-secret";

/// A running S3 server; it stops with the test's runtime.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server over a fresh directory with the bucket [`BUCKET`].
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir_all(dir.path().join(BUCKET)).expect("bucket directory");
        let filesystem = s3s_fs::FileSystem::new(dir.path()).expect("s3s-fs over the directory");
        let mut builder = S3ServiceBuilder::new(filesystem);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let http = Builder::new(TokioExecutor::new());
            while let Ok((socket, _)) = listener.accept().await {
                let connection = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
        });
        Self { endpoint, dir }
    }

    /// Settings that point roostd at this server.
    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            bucket: BUCKET.to_owned(),
            access_key_id: Some(ACCESS_KEY.to_owned()),
            secret_access_key: Some(SECRET_KEY.to_owned()),
            allow_http: true,
            ..S3Config::default()
        }
    }

    /// The directory holding the bucket's objects (to look for what should or should not be
    /// there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every file under the bucket, recursively (objects, and whatever s3s-fs keeps beside them).
    pub fn objects(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![self.dir.path().join(BUCKET)];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() { pending.push(path) } else { found.push(path) }
            }
        }
        found
    }
}
