//! Secrets at rest. Function environment variables are sealed with AES-256-GCM
//! before they are written anywhere (function rows, version snapshots, task
//! parameters), and opened only where they are shown or used.

use aes_gcm::aead::{Aead, Generate, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;

/// Marks a sealed value, with the format version (v1: no associated data).
const PREFIX: &str = "enc:v1:";
/// Marks a value sealed to its place (v2: the place is the associated data).
const PREFIX_BOUND: &str = "enc:v2:";

/// Where a function's environment is sealed to: its function (the function row and
/// its versions' snapshots).
pub fn env_place(function_id: &str) -> String {
    format!("nimbus function env\0{function_id}")
}

/// Seals and opens secrets with one key.
#[derive(Clone)]
pub struct SecretBox {
    /// The AEAD cipher.
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// A box from a 32-byte key written as 64 hex digits.
    pub fn from_hex(key: &str) -> anyhow::Result<Self> {
        let bytes = hex::decode(key.trim())
            .map_err(|_| anyhow::anyhow!("the secrets key must be 64 hex digits"))?;
        anyhow::ensure!(
            bytes.len() == 32,
            "the secrets key must be 32 bytes (64 hex digits)"
        );
        let cipher =
            Aes256Gcm::new_from_slice(&bytes).map_err(|_| anyhow::anyhow!("bad secrets key"))?;
        Ok(SecretBox { cipher })
    }

    /// A fresh random key, as 64 hex digits.
    pub fn generate_key() -> String {
        let mut k = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut k);
        hex::encode(k)
    }

    /// Seals `plain` under `prefix` with associated data `aad`: a random nonce, then
    /// the ciphertext and tag.
    fn seal_with(&self, plain: &str, aad: &[u8], prefix: &str) -> String {
        use aes_gcm::aead::Payload;
        let nonce = Nonce::generate();
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!(
            "{prefix}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)
        )
    }

    /// Opens the base64 part of a sealed value with associated data `aad`.
    fn open_with(&self, b64: &str, aad: &[u8]) -> anyhow::Result<String> {
        use aes_gcm::aead::Payload;
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64)
            .map_err(|_| anyhow::anyhow!("sealed value is not base64"))?;
        anyhow::ensure!(raw.len() > 12, "sealed value is too short");
        let (nonce, ct) = raw.split_at(12);
        let nonce = Nonce::try_from(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let plain = self
            .cipher
            .decrypt(&nonce, Payload { msg: ct, aad })
            .map_err(|_| anyhow::anyhow!("sealed value does not open with this key here"))?;
        Ok(String::from_utf8(plain)?)
    }

    /// Seals `plain` (to no place: see [`SecretBox::seal_for`]).
    pub fn seal(&self, plain: &str) -> String {
        self.seal_with(plain, b"", PREFIX)
    }

    /// Seals `plain` to `place` (e.g. the function it belongs to): it opens only with
    /// the same `place`, so a sealed value copied into another row is refused.
    pub fn seal_for(&self, plain: &str, place: &str) -> String {
        self.seal_with(plain, place.as_bytes(), PREFIX_BOUND)
    }

    /// Opens a value sealed to `place` (or, from older releases, sealed to no place,
    /// or never sealed).
    pub fn open_for(&self, sealed: &str, place: &str) -> anyhow::Result<String> {
        match sealed.strip_prefix(PREFIX_BOUND) {
            Some(b64) => self.open_with(b64, place.as_bytes()),
            None => self.open(sealed),
        }
    }

    /// Opens a value sealed to no place. A value without a prefix was never sealed
    /// and is returned as it is.
    pub fn open(&self, sealed: &str) -> anyhow::Result<String> {
        anyhow::ensure!(
            !sealed.starts_with(PREFIX_BOUND),
            "this value is sealed to a place: open it there"
        );
        match sealed.strip_prefix(PREFIX) {
            Some(b64) => self.open_with(b64, b""),
            None => Ok(sealed.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_tamper() {
        let b = SecretBox::from_hex(&SecretBox::generate_key()).unwrap();
        let s = b.seal("{\"DB_PASSWORD\":\"hunter2\"}");
        assert!(s.starts_with(PREFIX));
        assert!(!s.contains("hunter2"));
        assert_ne!(s, b.seal("{\"DB_PASSWORD\":\"hunter2\"}"), "nonces differ");
        assert_eq!(b.open(&s).unwrap(), "{\"DB_PASSWORD\":\"hunter2\"}");
        let other = SecretBox::from_hex(&SecretBox::generate_key()).unwrap();
        assert!(other.open(&s).is_err());
        let mut t = s.clone();
        t.pop();
        t.push(if s.ends_with('A') { 'B' } else { 'A' });
        assert!(b.open(&t).is_err());
        assert_eq!(b.open("{}").unwrap(), "{}");
        assert!(SecretBox::from_hex("abcd").is_err());
    }

    #[test]
    fn a_value_sealed_to_a_place_opens_only_there() {
        let b = SecretBox::from_hex(&SecretBox::generate_key()).unwrap();
        let s = b.seal_for("{\"K\":\"v\"}", "env:fn-1");
        assert_eq!(b.open_for(&s, "env:fn-1").unwrap(), "{\"K\":\"v\"}");
        assert!(b.open_for(&s, "env:fn-2").is_err(), "moved to another row");
        assert!(b.open(&s).is_err());
        // Older values (no place) still open.
        let old = b.seal("x");
        assert_eq!(b.open_for(&old, "env:fn-1").unwrap(), "x");
    }
}
