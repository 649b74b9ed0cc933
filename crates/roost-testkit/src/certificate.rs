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

/// `https://localhost:PORT` for a test server's `http://127.0.0.1:PORT`: the name the test
/// certificate is for.
pub fn https_base(base: &str) -> String {
    base.replace("http://127.0.0.1", "https://localhost")
}
