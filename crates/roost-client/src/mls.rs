//! MLS through OpenMLS: the provider (RustCrypto + SQLite storage), leaf credentials carrying
//! device certificates, and their verification.

use std::path::Path;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use roost_proto::{DeviceId, UserId};

use crate::error::{ClientError, Result};
use crate::keys::{KeyPair, certificate_chains};

/// The one ciphersuite Roost uses.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;

/// Serializes OpenMLS state for the SQLite storage provider.
#[derive(Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// The OpenMLS provider: RustCrypto for cryptography and randomness, SQLite for group state.
pub struct Provider {
    crypto: RustCrypto,
    storage: SqliteStorageProvider<JsonCodec, rusqlite::Connection>,
}

impl Provider {
    /// Opens (creating) the MLS state database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let connection = rusqlite::Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        let mut storage = SqliteStorageProvider::new(connection);
        storage.run_migrations().map_err(|err| ClientError::Store(format!("MLS storage migrations: {err}")))?;
        Ok(Self { crypto: RustCrypto::default(), storage })
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorageProvider<JsonCodec, rusqlite::Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

/// What a leaf credential says: this device belongs to this user, certified by the user's
/// identity key. Encoded as `user_id (32) || device_id (32) || certificate (64)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafIdentity {
    /// The user.
    pub user_id: UserId,
    /// The device (its key is the leaf's signature key).
    pub device_id: DeviceId,
    /// The identity key's signature over the device certificate statement.
    pub certificate: [u8; 64],
}

impl LeafIdentity {
    fn encode(&self) -> Vec<u8> {
        [self.user_id.as_bytes().as_slice(), self.device_id.as_bytes(), &self.certificate].concat()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 128 {
            return None;
        }
        let (user, rest) = bytes.split_at(32);
        let (device, certificate) = rest.split_at(32);
        Some(Self {
            user_id: UserId::from_slice(user).ok()?,
            device_id: DeviceId::from_slice(device).ok()?,
            certificate: certificate.try_into().ok()?,
        })
    }
}

/// The credential and signature key of this device's leaf.
pub fn credential(identity: &LeafIdentity) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(identity.encode()).into(),
        signature_key: identity.device_id.as_bytes().to_vec().into(),
    }
}

/// Checks a leaf: its credential must be a Roost device certificate that chains to the user's
/// identity key, for the very key the leaf signs with. Returns who the leaf is.
pub fn verify_leaf(credential: &Credential, signature_key: &[u8]) -> Result<LeafIdentity> {
    let basic = BasicCredential::try_from(credential.clone()).map_err(|_| {
        ClientError::Verification("a leaf carries a credential that is not a Roost device certificate".into())
    })?;
    let identity = LeafIdentity::decode(basic.identity())
        .ok_or_else(|| ClientError::Verification("a leaf credential is malformed".into()))?;
    if identity.device_id.as_bytes().as_slice() != signature_key {
        return Err(ClientError::Verification(format!("leaf of device {} signs with another key", identity.device_id)));
    }
    if !certificate_chains(&identity.user_id, &identity.device_id, &identity.certificate) {
        return Err(ClientError::Verification(format!(
            "device {} does not chain to the identity key of user {}",
            identity.device_id, identity.user_id
        )));
    }
    Ok(identity)
}

/// Verifies every member of a group, returning who they are.
pub fn verify_members(group: &MlsGroup) -> Result<Vec<LeafIdentity>> {
    group.members().map(|member| verify_leaf(&member.credential, &member.signature_key)).collect()
}

/// Encoded one-time KeyPackages and, optionally, a last-resort one.
pub type KeyPackageBatch = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// Builds KeyPackages for this device: `count` one-time packages and, if `last_resort`, one
/// last-resort package. Returns their wire encodings.
pub fn key_packages(
    provider: &Provider,
    device: &KeyPair,
    identity: &LeafIdentity,
    count: usize,
    last_resort: bool,
) -> Result<KeyPackageBatch> {
    let build = |resort: bool| -> Result<Vec<u8>> {
        let mut builder = KeyPackage::builder();
        if resort {
            builder = builder.mark_as_last_resort();
        }
        let bundle = builder
            .build(CIPHERSUITE, provider, device, credential(identity))
            .map_err(|err| ClientError::Mls(format!("building a KeyPackage: {err}")))?;
        encode(&MlsMessageOut::from(bundle.key_package().clone()))
    };
    let one_time = (0..count).map(|_| build(false)).collect::<Result<Vec<_>>>()?;
    let resort = if last_resort { Some(build(true)?) } else { None };
    Ok((one_time, resort))
}

/// Parses and verifies a claimed KeyPackage, checking its leaf chains to `user` and is `device`.
pub fn claimed_key_package(provider: &Provider, bytes: &[u8], user: &UserId, device: &DeviceId) -> Result<KeyPackage> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|err| ClientError::Verification(format!("a claimed KeyPackage does not parse: {err}")))?;
    let MlsMessageBodyIn::KeyPackage(package) = message.extract() else {
        return Err(ClientError::Verification("a claimed KeyPackage is something else".into()));
    };
    let package = package
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|err| ClientError::Verification(format!("a claimed KeyPackage is invalid: {err}")))?;
    let leaf = package.leaf_node();
    let identity = verify_leaf(leaf.credential(), leaf.signature_key().as_slice())?;
    if identity.user_id != *user || identity.device_id != *device {
        return Err(ClientError::Verification(format!(
            "the KeyPackage claimed for device {device} belongs to device {}",
            identity.device_id
        )));
    }
    Ok(package)
}

/// The wire encoding of an outgoing MLS message.
pub fn encode(message: &MlsMessageOut) -> Result<Vec<u8>> {
    message.tls_serialize_detached().map_err(|err| ClientError::Mls(format!("encoding: {err}")))
}

/// Parses an incoming MLS message.
pub fn decode(bytes: &[u8]) -> Result<MlsMessageIn> {
    MlsMessageIn::tls_deserialize_exact(bytes).map_err(|err| ClientError::Mls(format!("decoding: {err}")))
}
