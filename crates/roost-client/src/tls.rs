//! TLS for the SDK's connections to `https://` and `wss://` servers: rustls (with ring), trusting
//! the Mozilla root certificates (built in) plus the certificates of the PEM file that
//! `ROOST_CA_FILE` names, if set — for a server whose certificate a private authority or its
//! operator signed — and any given to [`trust`].

use std::sync::{Arc, Mutex, PoisonError};

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{ClientError, Result};

/// The environment variable naming extra trusted certificates (PEM).
pub const CA_FILE_VARIABLE: &str = "ROOST_CA_FILE";

/// Certificates trusted by every connection made after [`trust`] added them.
static EXTRA: Mutex<Vec<CertificateDer<'static>>> = Mutex::new(Vec::new());

/// Trusts the PEM certificates in `pem` (a server's self-signed certificate, or a private
/// authority's) for every connection this process makes from now on; returns how many there were.
pub fn trust(pem: &[u8]) -> Result<usize> {
    let certificates = parse(pem, "the given PEM")?;
    let count = certificates.len();
    EXTRA.lock().unwrap_or_else(PoisonError::into_inner).extend(certificates);
    Ok(count)
}

fn parse(pem: &[u8], source: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ClientError::Invalid(format!("{source}: not PEM certificates ({err})")))?;
    if certificates.is_empty() {
        return Err(ClientError::Invalid(format!("{source} holds no certificate")));
    }
    Ok(certificates)
}

/// The TLS settings of a new connection.
pub(crate) fn client_config() -> Result<rustls::ClientConfig> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let mut extra = EXTRA.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if let Some(path) = std::env::var_os(CA_FILE_VARIABLE) {
        let source = format!("{CA_FILE_VARIABLE}={}", path.to_string_lossy());
        let pem = std::fs::read(&path).map_err(|err| ClientError::Invalid(format!("{source}: {err}")))?;
        extra.extend(parse(&pem, &source)?);
    }
    for certificate in extra {
        roots.add(certificate).map_err(|err| ClientError::Invalid(format!("a trusted certificate: {err}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|err| ClientError::Invalid(format!("TLS: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
