//! Certificates generated for tests of TLS.

use std::path::{Path, PathBuf};

/// A self-signed certificate for `localhost`, written as PEM files.
pub struct TestCertificate {
    /// The certificate (PEM), which a client trusts to reach the server.
    pub pem: String,
    /// The certificate file (`cert.pem` in the directory given).
    pub cert_path: PathBuf,
    /// The private key file (`key.pem`).
    pub key_path: PathBuf,
}

impl TestCertificate {
    /// Generates a certificate and its key and writes them into `dir`.
    pub fn write(dir: &Path) -> Self {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, generated.cert.pem()).expect("write the certificate");
        std::fs::write(&key_path, generated.signing_key.serialize_pem()).expect("write the key");
        Self { pem: generated.cert.pem(), cert_path, key_path }
    }
}

/// A server on the SQLite store serving TLS with a certificate generated into `dir`: the
/// server, the certificate (to trust) and the server's `https://localhost:PORT`.
pub async fn tls_server(dir: &Path) -> (crate::TestServer, TestCertificate, String) {
    let certificate = TestCertificate::write(dir);
    let (cert_path, key_path) = (certificate.cert_path.clone(), certificate.key_path.clone());
    let server = crate::TestServer::on(crate::Backend::Sqlite)
        .configure(move |config| {
            config.tls.cert_path = Some(cert_path);
            config.tls.key_path = Some(key_path);
        })
        .start()
        .await
        .expect("SQLite is always there");
    let base = https_base(&server.base);
    (server, certificate, base)
}

/// `https://localhost:PORT` for a test server's `http://127.0.0.1:PORT`: the name the test
/// certificate is for.
fn https_base(base: &str) -> String {
    base.replace("http://127.0.0.1", "https://localhost")
}
