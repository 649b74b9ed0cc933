//! Ed25519 verification of signed statements (keys are `ed25519-dalek`; nothing hand-rolled).

use ed25519_dalek::{Signature, VerifyingKey};
use roost_proto::ErrorCode;

use crate::error::{Error, Result};

/// Checks `signature` by the public key `key` over `message`, strictly (no malleable or
/// small-order signatures). A key that is not a valid point is an invalid argument; a signature
/// that does not verify gets `failure`.
pub fn verify(key: &[u8; 32], what: &str, message: &[u8], signature: &[u8], failure: ErrorCode) -> Result<()> {
    let key = VerifyingKey::from_bytes(key)
        .map_err(|_| Error::invalid(format!("{what} is not a valid Ed25519 public key")))?;
    let signature = Signature::from_slice(signature).map_err(|_| Error::new(failure, "a signature is 64 bytes"))?;
    key.verify_strict(message, &signature)
        .map_err(|_| Error::new(failure, format!("the signature does not verify against the {what}")))
}

/// Whether `key` is a valid Ed25519 public key.
pub fn check_key(key: &[u8; 32], what: &str) -> Result<()> {
    VerifyingKey::from_bytes(key)
        .map(|_| ())
        .map_err(|_| Error::invalid(format!("{what} is not a valid Ed25519 public key")))
}
