//! Identifiers at rest: AES-256-GCM for values, HMAC-SHA256 for lookups and de-duplication.
//!
//! A ciphertext is `0xAB 0x01 || key id (4) || nonce (12) || ciphertext || tag`, encrypted
//! with associated data that names its table, column and row ([`Aad`]), so a value copied to
//! another row or column does not decrypt. The key id says which key made it: `pii.key`
//! encrypts, `pii.previous_keys` still decrypt during a rotation (`abha-bulk rekey`).
//! Ciphertexts written before the header existed (`nonce || ciphertext || tag`, no associated
//! data) still decrypt with any configured key until `rekey` rewrites them.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{ExposeSecret, SecretString};

/// First byte of a versioned ciphertext.
const MAGIC: u8 = 0xAB;
/// Header version 1: key id (4 bytes), nonce, ciphertext and tag.
const VERSION: u8 = 0x01;
const HEADER: usize = 2 + 4;
const NONCE: usize = 12;
const TAG: usize = 16;

/// The key is missing or wrong, or a value does not decrypt.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// `pii.key` is not set.
    #[error(
        "configuration key `pii.key` is required: set ABHA_BULK__PII__KEY (or ABHA_BULK__PII__KEY_FILE) to base64 of 32 random bytes, e.g. `openssl rand -base64 32`"
    )]
    MissingKey,
    /// A key is not base64 of 32 bytes.
    #[error("configuration key `{0}`: expected base64 of exactly 32 bytes")]
    BadKey(&'static str),
    /// Ciphertext is corrupt, was made with another key, or belongs to another row or column.
    #[error(
        "stored value does not decrypt with the configured pii.key or pii.previous_keys (was the key changed, or the value moved?)"
    )]
    Decrypt,
    /// The ciphertext names a key that is not configured.
    #[error(
        "stored value was encrypted with key id {0}, which is neither pii.key nor one of pii.previous_keys"
    )]
    UnknownKey(String),
}

/// Where a ciphertext lives: bound into it as associated data.
#[derive(Debug, Clone, Copy)]
pub enum Aad<'a> {
    /// `jobs.payload` of the row with this `dedup_hash` (known before the insert; a keyed
    /// hash of the kind and every field, so two rows sharing it hold the same plaintext).
    JobPayload(&'a [u8]),
    /// `jobs.result` of this job.
    JobResult(i64),
    /// `api_keys.webhook_secret` of this key.
    WebhookSecret(uuid::Uuid),
}

/// Every encrypted column, as `(table, column)`: what `rekey` must rewrite and its test
/// checks (`tests/key_rotation_rekey.rs` fails for a column here that `rekey` leaves behind).
pub const ENCRYPTED_COLUMNS: &[(&str, &str)] = &[
    ("jobs", "payload"),
    ("jobs", "result"),
    ("api_keys", "webhook_secret"),
];

impl Aad<'_> {
    /// The `(table, column)` this associated data names. An exhaustive match: a new variant
    /// does not compile until it names its column, which must then be in
    /// [`ENCRYPTED_COLUMNS`] (a unit test below).
    pub fn column(&self) -> (&'static str, &'static str) {
        match self {
            Self::JobPayload(_) => ("jobs", "payload"),
            Self::JobResult(_) => ("jobs", "result"),
            Self::WebhookSecret(_) => ("api_keys", "webhook_secret"),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::JobPayload(dedup) => {
                let mut v = b"abha-bulk/v1/jobs.payload/".to_vec();
                v.extend_from_slice(dedup);
                v
            }
            Self::JobResult(id) => format!("abha-bulk/v1/jobs.result/{id}").into_bytes(),
            Self::WebhookSecret(key) => {
                format!("abha-bulk/v1/api_keys.webhook_secret/{key}").into_bytes()
            }
        }
    }
}

struct KeySlot {
    id: [u8; 4],
    check: [u8; 16],
    cipher: Aes256Gcm,
}

/// Encrypts and hashes identifiers with keys derived from `pii.key`; decrypts with it and
/// `pii.previous_keys`.
pub struct Vault {
    current: KeySlot,
    previous: Vec<KeySlot>,
    hash_key: [u8; 32],
    /// The lookup-hash keys of `pii.previous_keys`: rows not yet rewritten by `rekey` still
    /// carry hashes under them, and an erasure request must find those rows too.
    previous_hash_keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vault(key id {}, ..)", self.key_id())
    }
}

fn derive(raw: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256>>::new_from_slice(raw).expect("any key length");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

fn parse_key(text: &str, setting: &'static str) -> Result<[u8; 32], VaultError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| VaultError::BadKey(setting))?;
    raw.try_into().map_err(|_| VaultError::BadKey(setting))
}

impl KeySlot {
    fn new(raw: &[u8; 32]) -> Self {
        let enc = derive(raw, b"abha-bulk/aes-256-gcm/v1");
        let id = derive(raw, b"abha-bulk/key-id/v1");
        let check = derive(raw, b"abha-bulk/key-check-value/v1");
        Self {
            id: id[..4].try_into().expect("4 bytes"),
            check: check[..16].try_into().expect("16 bytes"),
            cipher: Aes256Gcm::new(&enc.into()),
        }
    }
}

impl Vault {
    /// From the `pii.key` secret.
    pub fn from_secret(key: &SecretString) -> Result<Self, VaultError> {
        Self::from_secrets(key, &SecretString::default())
    }

    /// From `pii.key` and `pii.previous_keys` (base64 keys separated by commas, spaces or
    /// newlines).
    pub fn from_secrets(key: &SecretString, previous: &SecretString) -> Result<Self, VaultError> {
        let key = key.expose_secret();
        if key.is_empty() {
            return Err(VaultError::MissingKey);
        }
        let mut vault = Self::from_bytes(&parse_key(key, "pii.key")?);
        for text in previous
            .expose_secret()
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
        {
            vault = vault.with_previous(&parse_key(text, "pii.previous_keys")?);
        }
        Ok(vault)
    }

    /// From 32 key bytes: the AES key, the key id, the check value and the HMAC key are
    /// derived separately.
    pub fn from_bytes(raw: &[u8; 32]) -> Self {
        Self {
            current: KeySlot::new(raw),
            previous: Vec::new(),
            hash_key: derive(raw, b"abha-bulk/lookup-hash/v1"),
            previous_hash_keys: Vec::new(),
        }
    }

    /// Adds a previous key that still decrypts (a rotation in progress).
    pub fn with_previous(mut self, raw: &[u8; 32]) -> Self {
        let slot = KeySlot::new(raw);
        if slot.id != self.current.id && !self.previous.iter().any(|p| p.id == slot.id) {
            self.previous.push(slot);
            self.previous_hash_keys
                .push(derive(raw, b"abha-bulk/lookup-hash/v1"));
        }
        self
    }

    /// Hex id of `pii.key` (written in every ciphertext header).
    pub fn key_id(&self) -> String {
        hex(&self.current.id)
    }

    /// Key check value of `pii.key`, stored in the database to refuse a wrong key at start.
    pub fn check_value(&self) -> Vec<u8> {
        self.current.check.to_vec()
    }

    /// True when `check` is the check value of one of `pii.previous_keys`.
    pub fn is_previous_check_value(&self, check: &[u8]) -> bool {
        self.previous.iter().any(|p| p.check[..] == *check)
    }

    /// True when `check` is the check value of `pii.key` or of one of `pii.previous_keys`:
    /// this process can read what that key wrote.
    pub fn holds_check_value(&self, check: &[u8]) -> bool {
        self.current.check[..] == *check || self.is_previous_check_value(check)
    }

    /// Header, key id, nonce, ciphertext and tag.
    pub fn encrypt(&self, plaintext: &[u8], aad: Aad<'_>) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        rand::fill(&mut nonce);
        let ct = self
            .current
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad.bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(HEADER + NONCE + ct.len());
        out.extend_from_slice(&[MAGIC, VERSION]);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Reverses [`Self::encrypt`] (with the same `aad`), and decrypts values written before
    /// the header existed.
    pub fn decrypt(&self, blob: &[u8], aad: Aad<'_>) -> Result<Vec<u8>, VaultError> {
        if blob.len() >= HEADER + NONCE + TAG && blob[0] == MAGIC && blob[1] == VERSION {
            let id = &blob[2..HEADER];
            let slot = std::iter::once(&self.current)
                .chain(&self.previous)
                .find(|s| s.id[..] == *id);
            match slot {
                Some(slot) => {
                    let (nonce, ct) = blob[HEADER..].split_at(NONCE);
                    let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| VaultError::Decrypt)?;
                    let aad = aad.bytes();
                    if let Ok(plain) = slot
                        .cipher
                        .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad: &aad })
                    {
                        return Ok(plain);
                    }
                }
                None => {
                    // A legacy value whose random nonce happens to start like a header is
                    // tried below; anything else names the missing key.
                    return self
                        .decrypt_legacy(blob)
                        .map_err(|_| VaultError::UnknownKey(hex(id)));
                }
            }
        }
        self.decrypt_legacy(blob)
    }

    fn decrypt_legacy(&self, blob: &[u8]) -> Result<Vec<u8>, VaultError> {
        if blob.len() < NONCE + TAG {
            return Err(VaultError::Decrypt);
        }
        let (nonce, ct) = blob.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| VaultError::Decrypt)?;
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find_map(|s| s.cipher.decrypt(&Nonce::from(nonce), ct).ok())
            .ok_or(VaultError::Decrypt)
    }

    /// True when `blob` is already under `pii.key` with a header (nothing for `rekey` to do).
    pub fn is_current(&self, blob: &[u8]) -> bool {
        blob.len() >= HEADER + NONCE + TAG
            && blob[0] == MAGIC
            && blob[1] == VERSION
            && blob[2..HEADER] == self.current.id
    }

    /// Keyed hash for lookups and de-duplication: HMAC-SHA256 truncated to 128 bits (ample
    /// against collisions among billions of rows, and half the index size).
    pub fn hash(&self, value: &str) -> Vec<u8> {
        keyed_hash(&self.hash_key, value)
    }

    /// The lookup hash of `value` under `pii.key` and under each of `pii.previous_keys`:
    /// what an erasure request looks for, so that it finds rows `rekey` has not reached yet.
    pub fn hashes_all_keys(&self, value: &str) -> Vec<Vec<u8>> {
        std::iter::once(&self.hash_key)
            .chain(&self.previous_hash_keys)
            .map(|k| keyed_hash(k, value))
            .collect()
    }

    /// A legacy ciphertext (no header, no associated data), as written before version 1:
    /// for tests of the migration path.
    #[doc(hidden)]
    pub fn encrypt_legacy(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        rand::fill(&mut nonce);
        let ct = self
            .current
            .cipher
            .encrypt(&Nonce::from(nonce), plaintext)
            .expect("in-memory encryption");
        [nonce.as_slice(), &ct].concat()
    }
}

/// HMAC-SHA256 truncated to 128 bits.
fn keyed_hash(key: &[u8; 32], value: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("any key length");
    mac.update(value.as_bytes());
    mac.finalize().into_bytes()[..16].to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEDUP: &[u8] = &[1; 16];

    #[test]
    fn round_trip_and_distinct_nonces() {
        let v = Vault::from_bytes(&[7u8; 32]);
        let a = v.encrypt(b"91-1234-5678-9012", Aad::JobPayload(DEDUP));
        let b = v.encrypt(b"91-1234-5678-9012", Aad::JobPayload(DEDUP));
        assert_ne!(a, b);
        assert_eq!(
            v.decrypt(&a, Aad::JobPayload(DEDUP)).unwrap(),
            b"91-1234-5678-9012"
        );
        let other = Vault::from_bytes(&[8u8; 32]);
        assert!(other.decrypt(&a, Aad::JobPayload(DEDUP)).is_err());
        assert_eq!(v.hash("x"), v.hash("x"));
        assert_ne!(v.hash("x"), other.hash("x"));
        assert!(!a.windows(4).any(|w| w == b"1234"));
        assert!(v.is_current(&a) && !other.is_current(&a));
    }

    #[test]
    fn every_associated_data_names_an_encrypted_column() {
        let uuid = uuid::Uuid::nil();
        let all = [
            Aad::JobPayload(DEDUP),
            Aad::JobResult(1),
            Aad::WebhookSecret(uuid),
        ];
        for aad in &all {
            // Exhaustive: a new variant does not compile here until it is listed above.
            match aad {
                Aad::JobPayload(_) | Aad::JobResult(_) | Aad::WebhookSecret(_) => {}
            }
        }
        assert_eq!(all.len(), ENCRYPTED_COLUMNS.len(), "one column per variant");
        for aad in all {
            let (table, column) = aad.column();
            assert!(
                ENCRYPTED_COLUMNS.contains(&(table, column)),
                "{table}.{column} is missing from ENCRYPTED_COLUMNS"
            );
            let bytes = String::from_utf8(aad.bytes()).unwrap();
            assert!(bytes.contains(&format!("{table}.{column}")), "{bytes}");
        }
    }

    #[test]
    fn a_value_moved_to_another_row_or_column_does_not_decrypt() {
        let v = Vault::from_bytes(&[7u8; 32]);
        let payload = v.encrypt(b"secret", Aad::JobPayload(DEDUP));
        assert!(v.decrypt(&payload, Aad::JobPayload(&[2; 16])).is_err());
        assert!(v.decrypt(&payload, Aad::JobResult(1)).is_err());
        let result = v.encrypt(b"secret", Aad::JobResult(1));
        assert!(v.decrypt(&result, Aad::JobResult(2)).is_err());
        assert_eq!(v.decrypt(&result, Aad::JobResult(1)).unwrap(), b"secret");
    }

    #[test]
    fn previous_keys_decrypt_and_legacy_values_still_read() {
        let old = Vault::from_bytes(&[7u8; 32]);
        let legacy = old.encrypt_legacy(b"legacy");
        let before = old.encrypt(b"v1", Aad::JobResult(5));
        let rotated = Vault::from_bytes(&[9u8; 32]).with_previous(&[7u8; 32]);
        assert_eq!(
            rotated.decrypt(&legacy, Aad::JobResult(5)).unwrap(),
            b"legacy"
        );
        assert_eq!(rotated.decrypt(&before, Aad::JobResult(5)).unwrap(), b"v1");
        assert!(!rotated.is_current(&before));
        assert!(rotated.is_previous_check_value(&old.check_value()));
        assert_eq!(
            rotated.hashes_all_keys("x"),
            vec![Vault::from_bytes(&[9u8; 32]).hash("x"), old.hash("x")]
        );
        assert_ne!(rotated.check_value(), old.check_value());
        let without = Vault::from_bytes(&[9u8; 32]);
        let e = without
            .decrypt(&before, Aad::JobResult(5))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&old.key_id()) && e.contains("pii.previous_keys"),
            "{e}"
        );
    }

    #[test]
    fn key_errors_name_the_setting() {
        let e = Vault::from_secret(&SecretString::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("pii.key"), "{e}");
        let e = Vault::from_secret(&SecretString::from("c2hvcnQ="))
            .unwrap_err()
            .to_string();
        assert!(e.contains("32 bytes"), "{e}");
        let good = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        let e = Vault::from_secrets(
            &SecretString::from(good.as_str()),
            &SecretString::from("nope"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pii.previous_keys"), "{e}");
        let two = format!(
            "{good},\n{}",
            base64::engine::general_purpose::STANDARD.encode([2u8; 32])
        );
        let v = Vault::from_secrets(
            &SecretString::from(good.as_str()),
            &SecretString::from(two.as_str()),
        )
        .unwrap();
        assert_eq!(
            v.previous.len(),
            1,
            "the current key is not also a previous one"
        );
    }
}
