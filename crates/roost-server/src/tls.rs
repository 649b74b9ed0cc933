//! TLS on the listener: the certificate chain and key from PEM files, read again without a
//! restart when either file changes or on SIGHUP.
//!
//! A reload that fails (a half-written file, a key that does not match) keeps the certificate in
//! use and logs why, so renewing a certificate can never take the server off the air.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// How often the files' modification times are compared with the loaded ones.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

/// The certificate the listener presents, replaced in place on reload.
pub struct Certificates {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

/// The files' modification times.
type Stamps = (Option<SystemTime>, Option<SystemTime>);

struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' modification times at the last attempt to read them (successful or not), so a
    /// broken file is tried once per change rather than at every look.
    tried: Stamps,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates").field("cert_path", &self.cert_path).field("key_path", &self.key_path).finish()
    }
}

impl Certificates {
    /// Reads the files; fails if they hold no certificate, no key, or a key of another
    /// certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamps = (modified(cert_path), modified(key_path));
        let key = read_certified_key(cert_path, key_path, &provider)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Loaded { key: Arc::new(key), tried: stamps }),
        }))
    }

    /// An acceptor that presents the current certificate to every new connection.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError(err.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reads the files again and presents what they hold from the next handshake on; on
    /// failure the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = (modified(&self.cert_path), modified(&self.key_path));
        let read = read_certified_key(&self.cert_path, &self.key_path, &self.provider);
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        current.tried = stamps;
        current.key = Arc::new(read?);
        Ok(())
    }

    /// Whether either file's modification time differs from when it was read.
    fn changed_on_disk(&self) -> bool {
        let now = (modified(&self.cert_path), modified(&self.key_path));
        now != self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).tried
    }

    /// Reloads whenever the files change or SIGHUP arrives, until the certificates are dropped.
    pub fn watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut ticks = tokio::time::interval(WATCH_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hangups.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<Option<()>>();
                let asked = tokio::select! {
                    _ = ticks.tick() => false,
                    _ = hangup => true,
                };
                let Some(certificates) = weak.upgrade() else { return };
                if !asked && !certificates.changed_on_disk() {
                    continue;
                }
                match certificates.reload() {
                    Ok(()) => {
                        metrics::counter!("roost_tls_reloads_total", "outcome" => "ok").increment(1);
                        tracing::info!(cert = %certificates.cert_path.display(), "TLS certificate reloaded");
                    }
                    Err(err) => {
                        metrics::counter!("roost_tls_reloads_total", "outcome" => "failed").increment(1);
                        tracing::warn!(error = %err, "TLS certificate not reloaded; the previous one stays in use");
                    }
                }
            }
        });
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).key.clone())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|meta| meta.modified()).ok()
}

fn read_certified_key(cert_path: &Path, key_path: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| TlsError(format!("reading certificates from {}: {err}", cert_path.display())))?;
    if chain.is_empty() {
        return Err(TlsError(format!("{} holds no certificate", cert_path.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|err| TlsError(format!("reading the private key from {}: {err}", key_path.display())))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|err| {
        TlsError(format!("{} and {} do not make a certificate: {err}", cert_path.display(), key_path.display()))
    })
}
