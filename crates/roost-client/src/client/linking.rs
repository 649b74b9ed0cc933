//! Linking a new device to a user.

#[allow(clippy::wildcard_imports)] // The parent's imports: these are its own impl blocks.
use super::*;

/// Device linking.
impl Client {
    /// Approves a link request shown as `code` on the new device: checks that the device key the
    /// server returns hashes to that code, then certifies it with the identity key.
    pub async fn approve_link(&self, code: &str) -> Result<DeviceId> {
        let identity = self.identity_key()?;
        let link = self.api.link(code).await?;
        if roost_proto::signing::link_code(&link.device_id) != code.trim().to_ascii_uppercase() {
            return Err(ClientError::Verification(
                "the server returned a device key that does not match the code; not approving".into(),
            ));
        }
        self.api.approve_link(code, &identity.certify(&link.device_id)).await?;
        Ok(link.device_id)
    }

    /// Starts linking a new device kept in `home` to an existing user: creates the device key
    /// and returns the code to approve on a device holding the identity key.
    pub async fn start_link(home: &Path, server: &str) -> Result<String> {
        let store = open_home(home)?;
        if store.account()?.is_some() {
            return Err(ClientError::Invalid(format!("{} already holds an account", home.display())));
        }
        let device = match store.pending_link()? {
            Some((_, secret)) => KeyPair::from_secret(secret),
            None => KeyPair::generate(),
        };
        let api = Api::new(server)?;
        let link = api.start_link(&device.device_id()).await?;
        store.save_pending_link(api.base(), device.secret_bytes())?;
        Ok(link.link_code)
    }

    /// Finishes linking once approved: verifies the certificate against the approving user's
    /// identity, authenticates and uploads KeyPackages. `Ok(None)` while still pending.
    pub async fn finish_link(home: &Path) -> Result<Option<Self>> {
        let store = open_home(home)?;
        let (server, secret) = store
            .pending_link()?
            .ok_or_else(|| ClientError::Invalid("no link in progress; run `roost link` first".into()))?;
        let device = KeyPair::from_secret(secret);
        let api = Api::new(&server)?;
        let link = api.link(&roost_proto::signing::link_code(&device.device_id())).await?;
        let (Some(user_id), Some(certificate)) = (link.user_id, link.certificate) else { return Ok(None) };
        let certificate: [u8; 64] = certificate
            .as_bytes()
            .try_into()
            .map_err(|_| ClientError::Verification("the certificate is not a signature".into()))?;
        if !crate::keys::certificate_chains(&user_id, &device.device_id(), &certificate) {
            return Err(ClientError::Verification("the certificate does not chain to the approving user".into()));
        }
        store.save_account(&AccountRecord {
            server,
            user_id,
            device_id: device.device_id(),
            identity_secret: None,
            device_secret: Zeroizing::new(*device.secret_bytes()),
            certificate,
            token: None,
        })?;
        store.clear_pending_link()?;
        let mut client = Self::open(home)?;
        client.connect().await?;
        client.upload_key_packages(KEY_PACKAGE_BATCH, true).await?;
        Ok(Some(client))
    }
}
