//! The exact byte strings that keys sign.
//!
//! Every signed statement starts with its own domain-separation label, so a signature made for
//! one purpose can never be replayed as another. Layouts are fixed; changing one is a protocol
//! version bump.

use sha2::{Digest, Sha256};

use crate::ids::{DeviceId, Handle, UserId};

/// Label of a device certificate: the identity key binds a device key to the user.
pub const DEVICE_CERTIFICATE_LABEL: &[u8] = b"roost/v1/device-certificate\0";
/// Label of an authentication response: the device key signs the server's challenge.
pub const AUTH_LABEL: &[u8] = b"roost/v1/auth\0";
/// Label of a device revocation signed by the identity key.
pub const REVOKE_DEVICE_LABEL: &[u8] = b"roost/v1/revoke-device\0";
/// Label of a handle claim or release signed by the identity key.
pub const HANDLE_LABEL: &[u8] = b"roost/v1/handle\0";
/// Label hashed with a device key to derive its link code.
pub const LINK_CODE_LABEL: &[u8] = b"roost/v1/link-code\0";

/// What the identity key signs to certify a device:
/// `label || user_id (32) || device_id (32)`.
pub fn device_certificate_message(user: &UserId, device: &DeviceId) -> Vec<u8> {
    let mut msg = DEVICE_CERTIFICATE_LABEL.to_vec();
    msg.extend_from_slice(user.as_bytes());
    msg.extend_from_slice(device.as_bytes());
    msg
}

/// What a device signs to authenticate:
/// `label || len(server_name) (u16 BE) || server_name || device_id (32) || challenge`.
pub fn auth_message(server_name: &str, device: &DeviceId, challenge: &[u8]) -> Vec<u8> {
    let mut msg = AUTH_LABEL.to_vec();
    push_str(&mut msg, server_name);
    msg.extend_from_slice(device.as_bytes());
    msg.extend_from_slice(challenge);
    msg
}

/// What the identity key signs to revoke a device: `label || user_id (32) || device_id (32)`.
///
/// Revocation is permanent (a revoked key is never accepted again), so replaying it is harmless.
pub fn revoke_device_message(user: &UserId, device: &DeviceId) -> Vec<u8> {
    let mut msg = REVOKE_DEVICE_LABEL.to_vec();
    msg.extend_from_slice(user.as_bytes());
    msg.extend_from_slice(device.as_bytes());
    msg
}

/// Whether a handle request claims or releases the handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleAction {
    /// Take the handle.
    Claim,
    /// Give the handle up.
    Release,
}

/// What the identity key signs to claim or release a handle:
/// `label || action ("claim" | "release") || 0 || user_id (32) || len(handle) (u16 BE) || handle
/// || timestamp_ms (i64 BE)`.
///
/// The timestamp must be within the server's allowed skew, which bounds replay.
pub fn handle_message(action: HandleAction, user: &UserId, handle: &Handle, timestamp_ms: i64) -> Vec<u8> {
    let mut msg = HANDLE_LABEL.to_vec();
    msg.extend_from_slice(match action {
        HandleAction::Claim => b"claim\0",
        HandleAction::Release => b"release\0",
    });
    msg.extend_from_slice(user.as_bytes());
    push_str(&mut msg, handle.as_str());
    msg.extend_from_slice(&timestamp_ms.to_be_bytes());
    msg
}

/// The short code a new device shows while it waits to be linked, derived from its public key:
/// the first 40 bits of `SHA-256(label || device_id)` in Crockford base32, as `XXXX-XXXX`.
///
/// Because the code commits to the key, the approving device recomputes it from the key the
/// server hands out and so notices if the server swapped the key.
pub fn link_code(device: &DeviceId) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let digest = Sha256::new().chain_update(LINK_CODE_LABEL).chain_update(device.as_bytes()).finalize();
    let bits = digest.iter().take(5).fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let mut code = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            code.push('-');
        }
        let index = (bits >> (35 - 5 * i)) & 0x1f;
        code.push(char::from(ALPHABET[index as usize]));
    }
    code
}

fn push_str(msg: &mut Vec<u8>, text: &str) {
    // Callers pass names and handles far shorter than 64 KiB; the length prefix saturates
    // rather than wraps for anything longer, which only makes such a signature fail.
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    msg.extend_from_slice(&len.to_be_bytes());
    msg.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_codes_are_stable_and_short() {
        let code = link_code(&DeviceId::from_bytes([1; 32]));
        assert_eq!(code.len(), 9);
        assert_eq!(code, link_code(&DeviceId::from_bytes([1; 32])));
        assert_ne!(code, link_code(&DeviceId::from_bytes([2; 32])));
    }

    #[test]
    fn labels_separate_domains() {
        let user = UserId::from_bytes([1; 32]);
        let device = DeviceId::from_bytes([2; 32]);
        assert_ne!(device_certificate_message(&user, &device), revoke_device_message(&user, &device));
    }
}
