//! The sandbox's private key: it publishes the public half as ABDM's certificate does, and
//! really decrypts what clients send, so a client that pads or encodes wrongly fails here as
//! it would at ABDM. The client (`abdm::crypto`) only ever holds the public key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pkcs8::EncodePublicKey;
use rsa::traits::PaddingScheme;
use rsa::{Oaep, Pkcs1v15Encrypt, PrivateKey};
use sha1::Sha1;

use crate::abdm::crypto::{CryptoError, Padding};

/// The private side: decrypts what clients send (the sandbox, and tests that play ABDM).
pub struct Decryptor {
    key: PrivateKey,
    public_der_b64: String,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decryptor(..)")
    }
}

impl Decryptor {
    /// Generates a fresh key of `bits` bits.
    pub fn generate(bits: usize) -> Result<Self, CryptoError> {
        let key = PrivateKey::new(&mut rand::rng(), bits)
            .map_err(|e| CryptoError::BadKey(e.to_string()))?;
        Self::from_private(key)
    }

    /// From a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        use pkcs8::DecodePrivateKey;
        let key =
            PrivateKey::from_pkcs8_pem(pem).map_err(|e| CryptoError::BadKey(e.to_string()))?;
        Self::from_private(key)
    }

    fn from_private(key: PrivateKey) -> Result<Self, CryptoError> {
        let der = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| CryptoError::BadKey(e.to_string()))?;
        Ok(Self {
            key,
            public_der_b64: B64.encode(der.as_bytes()),
        })
    }

    /// The public key as ABDM publishes it: base64 DER SubjectPublicKeyInfo.
    pub fn public_key_b64(&self) -> &str {
        &self.public_der_b64
    }

    /// Decrypts base64 ciphertext made with `padding`.
    ///
    /// Unblinded: blinding guards a private key against timing attacks, and this key guards
    /// only test data, while blinding (a modular inverse and a system RNG read per call) made
    /// the sandbox the largest CPU cost of an end-to-end benchmark on the same two cores.
    pub fn decrypt(&self, ciphertext_b64: &str, padding: Padding) -> Result<String, CryptoError> {
        let ct = B64
            .decode(ciphertext_b64.trim().as_bytes())
            .map_err(|_| CryptoError::Decrypt)?;
        let unblinded = Option::<&mut rand::rngs::ThreadRng>::None;
        let pt = match padding {
            Padding::OaepSha1 => Oaep::<Sha1>::new().decrypt(unblinded, &self.key, &ct),
            Padding::Pkcs1v15 => Pkcs1v15Encrypt.decrypt(unblinded, &self.key, &ct),
        }
        .map_err(|_| CryptoError::Decrypt)?;
        String::from_utf8(pt).map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use crate::abdm::crypto::{Encryptor, OAEP_SHA1, PKCS1};

    use super::*;

    /// A 2048-bit key generated once with OpenSSL, used only by tests.
    const TEST_KEY_PEM: &str = include_str!("../../tests/fixtures/test-key-2048.pem");

    fn pair() -> (Decryptor, Encryptor) {
        let d = Decryptor::from_pkcs8_pem(TEST_KEY_PEM).unwrap();
        let e = Encryptor::from_certificate(d.public_key_b64(), OAEP_SHA1).unwrap();
        (d, e)
    }

    #[test]
    fn round_trip_oaep_and_pkcs1() {
        let (d, e) = pair();
        let ct = e.encrypt("91-1234-5678-9012").unwrap();
        assert_ne!(
            ct,
            e.encrypt("91-1234-5678-9012").unwrap(),
            "OAEP is randomised"
        );
        assert_eq!(
            d.decrypt(&ct, Padding::OaepSha1).unwrap(),
            "91-1234-5678-9012"
        );
        let p = Encryptor::from_certificate(d.public_key_b64(), PKCS1).unwrap();
        let ct = p.encrypt("9876543210").unwrap();
        assert_eq!(d.decrypt(&ct, Padding::Pkcs1v15).unwrap(), "9876543210");
        assert_eq!(
            d.decrypt("not base64!", Padding::OaepSha1),
            Err(CryptoError::Decrypt)
        );
    }

    /// And the other way: OpenSSL encrypts with the published key, the sandbox side decrypts.
    #[test]
    fn we_decrypt_what_openssl_encrypts() {
        if std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED we_decrypt_what_openssl_encrypts: openssl is not installed");
            return;
        }
        let (d, _) = pair();
        let dir = tempfile::tempdir().unwrap();
        let pubkey = dir.path().join("pub.der");
        let pt = dir.path().join("pt.txt");
        std::fs::write(&pubkey, B64.decode(d.public_key_b64()).unwrap()).unwrap();
        std::fs::write(&pt, "9876543210").unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey"])
            .arg(&pubkey)
            .arg("-in")
            .arg(&pt)
            .args([
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                "rsa_oaep_md:sha1",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ct = B64.encode(out.stdout);
        assert_eq!(d.decrypt(&ct, Padding::OaepSha1).unwrap(), "9876543210");
    }
}
