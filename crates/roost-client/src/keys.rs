//! Identity and device keys. Secrets zeroize on drop and have no `Debug`.

use ed25519_dalek::{Signer as _, SigningKey};
use openmls::prelude::SignatureScheme;
use openmls_traits::signatures::{Signer, SignerError};
use roost_proto::{DeviceId, UserId, signing};
use zeroize::Zeroizing;

/// An Ed25519 key pair: a user's identity key or a device key.
pub struct KeyPair {
    secret: Zeroizing<[u8; 32]>,
    signing: SigningKey,
}

impl KeyPair {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_secret(Zeroizing::new(rand::random()))
    }

    /// A key from its 32-byte secret seed.
    pub fn from_secret(secret: Zeroizing<[u8; 32]>) -> Self {
        let signing = SigningKey::from_bytes(&secret);
        Self { secret, signing }
    }

    /// The secret seed, for the local key store only.
    pub fn secret_bytes(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Signs a message.
    pub fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// This key as a user id.
    pub fn user_id(&self) -> UserId {
        UserId::from_bytes(self.public())
    }

    /// This key as a device id.
    pub fn device_id(&self) -> DeviceId {
        DeviceId::from_bytes(self.public())
    }

    /// The device certificate this identity key issues for `device`.
    pub fn certify(&self, device: &DeviceId) -> [u8; 64] {
        self.sign_bytes(&signing::device_certificate_message(&self.user_id(), device))
    }
}

/// The device key signs MLS messages as the device's leaf.
impl Signer for KeyPair {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.sign_bytes(payload).to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// Verifies a device certificate against the user's identity key.
pub fn certificate_chains(user: &UserId, device: &DeviceId, certificate: &[u8]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(user.as_bytes()) else { return false };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(certificate) else { return false };
    key.verify_strict(&signing::device_certificate_message(user, device), &signature).is_ok()
}

/// The safety number of two users: a fingerprint of both identity keys, the same on both sides,
/// to compare out of band. Twelve groups of five digits.
pub fn safety_number(a: &UserId, b: &UserId) -> String {
    use sha2::{Digest, Sha256};
    let (first, second) = if a.as_bytes() <= b.as_bytes() { (a, b) } else { (b, a) };
    let digest = Sha256::new()
        .chain_update(b"roost/v1/safety-number\0")
        .chain_update(first.as_bytes())
        .chain_update(second.as_bytes())
        .finalize();
    digest
        .chunks(2)
        .take(12)
        .map(|pair| format!("{:05}", (u32::from(pair[0]) << 8 | u32::from(pair[1])) % 100_000))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_chain_only_to_their_identity() {
        let identity = KeyPair::generate();
        let device = KeyPair::generate();
        let certificate = identity.certify(&device.device_id());
        assert!(certificate_chains(&identity.user_id(), &device.device_id(), &certificate));
        assert!(!certificate_chains(&KeyPair::generate().user_id(), &device.device_id(), &certificate));
        assert!(!certificate_chains(&identity.user_id(), &KeyPair::generate().device_id(), &certificate));
    }

    #[test]
    fn safety_numbers_are_symmetric() {
        let (a, b) = (KeyPair::generate().user_id(), KeyPair::generate().user_id());
        assert_eq!(safety_number(&a, &b), safety_number(&b, &a));
        assert_ne!(safety_number(&a, &b), safety_number(&a, &KeyPair::generate().user_id()));
        assert_eq!(safety_number(&a, &b).split(' ').count(), 12);
    }
}
