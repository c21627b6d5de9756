//! Identifiers at rest: AES-256-GCM for values, HMAC-SHA256 for lookups and de-duplication.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

/// The key is missing or wrong, or a value does not decrypt.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// `pii.key` is not set.
    #[error(
        "configuration key `pii.key` is required: set ABHA_BULK__PII__KEY (or ABHA_BULK__PII__KEY_FILE) to base64 of 32 random bytes, e.g. `openssl rand -base64 32`"
    )]
    MissingKey,
    /// `pii.key` is not base64 of 32 bytes.
    #[error("configuration key `pii.key`: expected base64 of exactly 32 bytes")]
    BadKey,
    /// Ciphertext is corrupt or was made with another key.
    #[error("stored value does not decrypt with the configured pii.key (was the key changed?)")]
    Decrypt,
}

/// Encrypts and hashes identifiers with keys derived from `pii.key`.
pub struct Vault {
    cipher: Aes256Gcm,
    hash_key: [u8; 32],
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(..)")
    }
}

impl Vault {
    /// From the `pii.key` secret.
    pub fn from_secret(key: &Secret) -> Result<Self, VaultError> {
        if key.is_empty() {
            return Err(VaultError::MissingKey);
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(key.expose().trim())
            .map_err(|_| VaultError::BadKey)?;
        let raw: [u8; 32] = raw.try_into().map_err(|_| VaultError::BadKey)?;
        Ok(Self::from_bytes(&raw))
    }

    /// From 32 key bytes: the AES key and the HMAC key are derived separately.
    pub fn from_bytes(raw: &[u8; 32]) -> Self {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut mac = <Hmac<Sha256>>::new_from_slice(raw).expect("any key length");
            mac.update(label);
            mac.finalize().into_bytes().into()
        };
        let enc = derive(b"abha-bulk/aes-256-gcm/v1");
        Self {
            cipher: Aes256Gcm::new(&enc.into()),
            hash_key: derive(b"abha-bulk/lookup-hash/v1"),
        }
    }

    /// nonce (12 bytes) || ciphertext || tag.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce);
        let ct = self
            .cipher
            .encrypt(&Nonce::from(nonce), plaintext)
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(12 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Reverses [`Self::encrypt`].
    pub fn decrypt(&self, blob: &[u8]) -> Result<Vec<u8>, VaultError> {
        if blob.len() < 12 + 16 {
            return Err(VaultError::Decrypt);
        }
        let (nonce, ct) = blob.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| VaultError::Decrypt)?;
        self.cipher
            .decrypt(&Nonce::from(nonce), ct)
            .map_err(|_| VaultError::Decrypt)
    }

    /// Keyed hash for lookups and de-duplication: HMAC-SHA256 truncated to 128 bits (ample
    /// against collisions among billions of rows, and half the index size).
    pub fn hash(&self, value: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.hash_key).expect("any key length");
        mac.update(value.as_bytes());
        mac.finalize().into_bytes()[..16].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_distinct_nonces() {
        let v = Vault::from_bytes(&[7u8; 32]);
        let a = v.encrypt(b"91-1234-5678-9012");
        let b = v.encrypt(b"91-1234-5678-9012");
        assert_ne!(a, b);
        assert_eq!(v.decrypt(&a).unwrap(), b"91-1234-5678-9012");
        let other = Vault::from_bytes(&[8u8; 32]);
        assert!(other.decrypt(&a).is_err());
        assert_eq!(v.hash("x"), v.hash("x"));
        assert_ne!(v.hash("x"), other.hash("x"));
        assert!(!a.windows(4).any(|w| w == b"1234"));
    }

    #[test]
    fn key_errors_name_the_setting() {
        let e = Vault::from_secret(&Secret::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("pii.key"), "{e}");
        let e = Vault::from_secret(&Secret::new("c2hvcnQ="))
            .unwrap_err()
            .to_string();
        assert!(e.contains("32 bytes"), "{e}");
    }
}
