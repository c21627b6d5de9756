//! Encryption of identifiers with ABDM's public key.
//!
//! ABDM publishes an RSA public key (base64 DER SubjectPublicKeyInfo) and the cipher name;
//! identifiers are sent as base64(RSA(utf8 plaintext)). The padding is chosen from the cipher
//! name: `RSA/ECB/OAEPWithSHA-1AndMGF1Padding` (OAEP, SHA-1 digest and MGF1-SHA-1, empty label)
//! or `RSA/ECB/PKCS1Padding`. Any other name is a clear error rather than a guess.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pkcs8::DecodePublicKey;
use rsa::PublicKey;
use sha1::Sha1;

/// The cipher name ABDM V3 publishes.
pub const OAEP_SHA1: &str = "RSA/ECB/OAEPWithSHA-1AndMGF1Padding";
/// The cipher name some older specs publish.
pub const PKCS1: &str = "RSA/ECB/PKCS1Padding";

/// The public key could not be read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// `publicKey` is not base64 DER SubjectPublicKeyInfo of an RSA key.
    #[error("the certificate's publicKey is not a base64 DER RSA public key: {0}")]
    BadKey(String),
    /// `encryptionAlgorithm` names a cipher we do not implement.
    #[error("unsupported encryptionAlgorithm {0:?} (supported: {OAEP_SHA1}, {PKCS1})")]
    UnsupportedAlgorithm(String),
    /// The plaintext does not fit the key.
    #[error("encryption failed: {0}")]
    Encrypt(String),
    /// Ciphertext that is not base64 or does not decrypt (the sandbox's `Decryptor`).
    #[error("ciphertext could not be decrypted")]
    Decrypt,
}

/// Padding scheme named by the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// OAEP with SHA-1 and MGF1-SHA-1.
    OaepSha1,
    /// PKCS#1 v1.5.
    Pkcs1v15,
}

impl Padding {
    /// From the certificate's `encryptionAlgorithm`.
    pub fn from_algorithm(name: &str) -> Result<Self, CryptoError> {
        let normalised = name.trim().to_ascii_uppercase();
        match normalised.as_str() {
            "RSA/ECB/OAEPWITHSHA-1ANDMGF1PADDING" | "RSA/ECB/OAEPWITHSHA1ANDMGF1PADDING" => {
                Ok(Self::OaepSha1)
            }
            "RSA/ECB/PKCS1PADDING" => Ok(Self::Pkcs1v15),
            _ => Err(CryptoError::UnsupportedAlgorithm(name.to_string())),
        }
    }
}

/// ABDM's public key with its padding: encrypts identifiers for requests.
pub struct Encryptor {
    key: PublicKey,
    padding: Padding,
    fingerprint: String,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("padding", &self.padding)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl Encryptor {
    /// From the certificate answer's `publicKey` (base64 DER, whitespace allowed) and
    /// `encryptionAlgorithm`.
    pub fn from_certificate(public_key_b64: &str, algorithm: &str) -> Result<Self, CryptoError> {
        let padding = Padding::from_algorithm(algorithm)?;
        let cleaned: String = public_key_b64
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = B64
            .decode(cleaned.as_bytes())
            .map_err(|e| CryptoError::BadKey(e.to_string()))?;
        let key =
            PublicKey::from_public_key_der(&der).map_err(|e| CryptoError::BadKey(e.to_string()))?;
        let fingerprint = {
            use sha2::{Digest, Sha256};
            let digest = Sha256::digest(&der);
            digest[..8].iter().map(|b| format!("{b:02x}")).collect()
        };
        Ok(Self {
            key,
            padding,
            fingerprint,
        })
    }

    /// base64(RSA(utf8 `plaintext`)) with the certificate's padding.
    pub fn encrypt(&self, plaintext: &str) -> Result<String, CryptoError> {
        let bytes = plaintext.as_bytes();
        let ct = match self.padding {
            Padding::OaepSha1 => self.key.oaep_encrypt::<Sha1>(bytes),
            Padding::Pkcs1v15 => self.key.pkcs1v15_encrypt(bytes),
        }
        .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
        Ok(B64.encode(ct))
    }

    /// First 8 bytes of SHA-256 of the DER key, hex: tells keys apart in logs.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The padding in use.
    pub fn padding(&self) -> Padding {
        self.padding
    }
}

#[cfg(test)]
mod tests {
    use rsa::PrivateKey;

    use super::*;

    /// A 2048-bit key generated once with OpenSSL, used only by tests.
    const TEST_KEY_PEM: &str = include_str!("../../tests/fixtures/test-key-2048.pem");

    /// The test key's public half, as ABDM's certificate publishes it. (Decrypting is the
    /// sandbox's business: the round trips are tested in `sandbox::key`.)
    fn encryptor() -> Encryptor {
        Encryptor::from_certificate(&public_key_b64(), OAEP_SHA1).unwrap()
    }

    fn public_key_b64() -> String {
        use pkcs8::{DecodePrivateKey, EncodePublicKey};
        let key = PrivateKey::from_pkcs8_pem(TEST_KEY_PEM).unwrap();
        B64.encode(key.to_public_key().to_public_key_der().unwrap().as_bytes())
    }

    #[test]
    fn unknown_algorithm_and_bad_key_are_clear_errors() {
        let err = Encryptor::from_certificate(&public_key_b64(), "RSA/ECB/NoPadding").unwrap_err();
        assert!(err.to_string().contains("RSA/ECB/NoPadding"), "{err}");
        assert!(matches!(
            Encryptor::from_certificate("AAAA", OAEP_SHA1),
            Err(CryptoError::BadKey(_))
        ));
    }

    /// Interoperability: what we encrypt, OpenSSL decrypts with OAEP/SHA-1/MGF1-SHA-1 (what
    /// Java's `RSA/ECB/OAEPWithSHA-1AndMGF1Padding` means). Skipped, with a message, only
    /// when `openssl` is not installed.
    #[test]
    fn openssl_decrypts_what_we_encrypt() {
        let Ok(version) = std::process::Command::new("openssl")
            .arg("version")
            .output()
        else {
            eprintln!("SKIPPED openssl_decrypts_what_we_encrypt: openssl is not installed");
            return;
        };
        assert!(version.status.success());
        let e = encryptor();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let ct = dir.path().join("ct.bin");
        std::fs::write(&key, TEST_KEY_PEM).unwrap();
        let b64 = e.encrypt("234567890124").unwrap();
        std::fs::write(&ct, B64.decode(b64).unwrap()).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkeyutl", "-decrypt", "-inkey"])
            .arg(&key)
            .arg("-in")
            .arg(&ct)
            .args([
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                "rsa_oaep_md:sha1",
                "-pkeyopt",
                "rsa_mgf1_md:sha1",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "234567890124");
    }
}
