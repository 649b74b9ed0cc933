//! Web Push from the device's side: the keys a subscriber holds (RFC 8291), for apps that
//! receive wake-ups themselves, such as through a UnifiedPush distributor. (A browser or a
//! mobile OS holds these keys itself and hands the app a finished subscription: register that
//! with [`crate::client::Client::subscribe_push`] as it is.)

use roost_proto::bytes;
use roost_proto::push::{PushKeys as WireKeys, PushSubscription};
use web_push_native::p256::SecretKey;
use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint as _;
use zeroize::Zeroizing;

use crate::error::{ClientError, Result};

/// A subscriber's key pair (P-256) and authentication secret.
pub struct PushKeys {
    secret: SecretKey,
    auth: [u8; 16],
}

impl PushKeys {
    /// Fresh random keys.
    pub fn generate() -> Self {
        loop {
            let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
            // A random 32 bytes is a valid scalar but for a chance of about 2^-128.
            if let Ok(secret) = SecretKey::from_slice(bytes.as_slice()) {
                return Self { secret, auth: rand::random() };
            }
        }
    }

    /// Keys saved before (the 32 secret bytes and the 16-byte auth secret).
    pub fn from_parts(secret: &[u8], auth: &[u8]) -> Result<Self> {
        let invalid = || ClientError::Store("the saved push keys are corrupt".into());
        let secret = SecretKey::from_slice(secret).map_err(|_| invalid())?;
        let auth = auth.try_into().map_err(|_| invalid())?;
        Ok(Self { secret, auth })
    }

    /// The secret scalar (to save).
    pub fn secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.secret.to_bytes().to_vec())
    }

    /// The authentication secret (to save).
    pub fn auth(&self) -> [u8; 16] {
        self.auth
    }

    /// The public key, an uncompressed point (65 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        self.secret.public_key().as_affine().to_encoded_point(false).as_bytes().to_vec()
    }

    /// The subscription to register for `endpoint` (the push service's URL for this device).
    pub fn subscription(&self, endpoint: &str) -> PushSubscription {
        PushSubscription {
            endpoint: endpoint.to_owned(),
            keys: WireKeys { p256dh: bytes::encode(&self.public_key()), auth: bytes::encode(&self.auth) },
            expiration_time: None,
        }
    }

    /// Decrypts a push message's body (`Content-Encoding: aes128gcm`): a Roost wake-up is
    /// `{"type":"wake"}`, after which the app syncs.
    pub fn open(&self, body: &[u8]) -> Result<Vec<u8>> {
        let auth = web_push_native::Auth::from(self.auth);
        web_push_native::decrypt(body.to_vec(), &self.secret, &auth)
            .map_err(|err| ClientError::Invalid(format!("not a push message for these keys: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_saving_and_open_what_is_sealed_to_them_only() {
        let keys = PushKeys::generate();
        let again = PushKeys::from_parts(&keys.secret_bytes(), &keys.auth()).unwrap();
        assert_eq!(again.public_key(), keys.public_key());
        assert_eq!(keys.public_key().len(), 65);

        let public = web_push_native::p256::PublicKey::from_sec1_bytes(&keys.public_key()).unwrap();
        let sealed =
            web_push_native::encrypt(b"hello".to_vec(), &public, &web_push_native::Auth::from(keys.auth())).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), b"hello");
        assert!(PushKeys::generate().open(&sealed).is_err(), "other keys cannot open it");
        assert!(keys.open(b"short").is_err());
        assert!(PushKeys::from_parts(&[0; 32], &[0; 16]).is_err(), "zero is no secret key");

        let subscription = keys.subscription("https://push.example.com/x");
        assert_eq!(bytes::decode(&subscription.keys.p256dh).unwrap(), keys.public_key());
    }
}
