//! Sealing provider secrets: XChaCha20-Poly1305 (an AEAD with random 24-byte nonces) under
//! a 32-byte master key, with the tenant, the credential's name and the key's version as
//! associated data, so a sealed secret moved to another tenant or name does not open.
//!
//! The master key comes from configuration (`gateway.master_key`, `TALLY_MASTER_KEY`), a
//! file (`gateway.master_key_file`), or, when none is given, a key generated on first start
//! into the data dir (`master.key`, owner-only permissions) with a warning: whoever holds
//! the data dir then holds the key, so production deployments should give one.

use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use tally_core::TenantId;

/// The file a generated master key is kept in, inside the data dir.
pub const MASTER_KEY_FILE: &str = "master.key";
const NONCE_LEN: usize = 24;

/// A master key. Its version, stored beside every secret it seals, is the first 4 bytes of
/// its SHA-256: a secret sealed under another key is told apart without trying it.
#[derive(Clone)]
pub struct MasterKey {
    cipher: XChaCha20Poly1305,
    version: u32,
    fingerprint: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("version", &self.version)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the master key must be 32 bytes, base64 or hex encoded: {0}")]
    BadKey(String),
    #[error("the sealed secret does not open with this master key (wrong key, or tampered)")]
    Open,
    #[error("the secret was sealed under another master key (version {0:08x})")]
    OtherKey(u32),
    #[error("master key file {path}: {message}")]
    File { path: String, message: String },
}

impl MasterKey {
    /// From its text form: 32 bytes as base64 (standard or URL-safe) or 64 hex digits.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|e| SecretError::BadKey(e.to_string()))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(t))
                .map_err(|e| SecretError::BadKey(e.to_string()))?
        };
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() != 32 {
            return Err(SecretError::BadKey(format!("got {} bytes", bytes.len())));
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(bytes);
        let fingerprint = hex::encode(&digest[..4]);
        let version = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        Ok(Self {
            cipher: XChaCha20Poly1305::new_from_slice(bytes)
                .map_err(|e| SecretError::BadKey(e.to_string()))?,
            version,
            fingerprint,
        })
    }

    /// A fresh random key, in its text form (base64).
    pub fn generate_text() -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Reads `path`, or creates it with a new key (owner-only) when it does not exist.
    /// Returns the key and whether it was just generated.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), SecretError> {
        let err = |e: std::io::Error| SecretError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((Self::parse(&text)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let text = Self::generate_text();
                write_private(path, &text).map_err(err)?;
                Ok((Self::parse(&text)?, true))
            }
            Err(e) => Err(err(e)),
        }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The first 4 bytes of the key's SHA-256, hex: tells keys apart in logs without
    /// revealing them.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Nonce followed by ciphertext and tag.
    pub fn seal(&self, tenant: TenantId, name: &str, secret: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = associated(tenant, name, self.version);
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: &aad,
                },
            )
            // Encryption fails only for messages past 256 GiB.
            .unwrap_or_default();
        [nonce.as_slice(), &sealed].concat()
    }

    /// Opens what [`seal`](Self::seal) made for the same tenant, name and key version.
    pub fn open(
        &self,
        tenant: TenantId,
        name: &str,
        version: u32,
        sealed: &[u8],
    ) -> Result<String, SecretError> {
        if version != self.version {
            return Err(SecretError::OtherKey(version));
        }
        if sealed.len() < NONCE_LEN {
            return Err(SecretError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SecretError::Open)?;
        let aad = associated(tenant, name, version);
        let plain = self
            .cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Open)?;
        String::from_utf8(plain).map_err(|_| SecretError::Open)
    }
}

fn associated(tenant: TenantId, name: &str, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + name.len() + 8);
    aad.extend_from_slice(tenant.0.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sealed_secrets_open_only_for_their_tenant_name_and_key() {
        let key = MasterKey::parse(&MasterKey::generate_text()).unwrap();
        let (a, b) = (TenantId::generate(), TenantId::generate());
        let sealed = key.seal(a, "openai", "sk-secret-1234");
        assert!(!sealed
            .windows(b"sk-secret".len())
            .any(|w| w == b"sk-secret"));
        let v = key.version();
        assert_eq!(key.open(a, "openai", v, &sealed).unwrap(), "sk-secret-1234");
        assert_eq!(key.open(b, "openai", v, &sealed), Err(SecretError::Open));
        assert_eq!(key.open(a, "other", v, &sealed), Err(SecretError::Open));
        let other = MasterKey::parse(&MasterKey::generate_text()).unwrap();
        assert_eq!(
            other.open(a, "openai", v, &sealed),
            Err(SecretError::OtherKey(v))
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(key.open(a, "openai", v, &tampered), Err(SecretError::Open));
        assert_ne!(
            key.seal(a, "openai", "x"),
            key.seal(a, "openai", "x"),
            "fresh nonces"
        );
    }

    #[test]
    fn keys_parse_from_base64_or_hex_and_refuse_other_lengths() {
        assert!(MasterKey::parse(&"ab".repeat(32)).is_ok());
        assert!(MasterKey::parse("c2hvcnQ=").is_err());
        assert!(MasterKey::parse("not a key!").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_generated_key_file_is_owner_only_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        let (k1, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.fingerprint(), k2.fingerprint());
    }
}
