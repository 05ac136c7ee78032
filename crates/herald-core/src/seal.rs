//! Envelope encryption for secret values.
//!
//! Each version gets its own random data key; the value is sealed with it
//! (XChaCha20-Poly1305, 192-bit random nonces so no counter state is needed)
//! and the data key is wrapped by the master key. Both bind the record's
//! identity as associated data, so a ciphertext copied to another row fails
//! to open instead of leaking under the wrong name.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::path::Path;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 24;

/// Why sealing or opening a secret value failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The ciphertext does not open: wrong master key, tampered data, or the wrong record.
    #[error("ciphertext does not open under this master key (wrong key or tampered data)")]
    Open,
    /// The master key could not be read, written or parsed.
    #[error("master key: {0}")]
    Key(String),
}

/// The key-encryption key. Never logged; `Debug` is redacted.
#[derive(Clone)]
pub struct MasterKey(XChaCha20Poly1305);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A master key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        if bytes.len() != 32 {
            return Err(SealError::Key(format!(
                "expected 32 bytes, got {}",
                bytes.len()
            )));
        }
        Ok(Self(XChaCha20Poly1305::new(bytes.into())))
    }

    /// Parses the base64 text of `HERALD_MASTER_KEY` or the key file.
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| SealError::Key("not valid base64".into()))?,
        );
        Self::from_bytes(&bytes)
    }

    /// Reads the key file, creating it (mode 0600) with a fresh key if absent.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        if path.exists() {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| SealError::Key(format!("cannot read {}: {e}", path.display())))?,
            );
            return Self::from_base64(&text);
        }
        let key = fresh_key();
        let text = Zeroizing::new(STANDARD.encode(key.as_slice()));
        write_private(path, text.as_bytes())
            .map_err(|e| SealError::Key(format!("cannot write {}: {e}", path.display())))?;
        Self::from_bytes(key.as_slice())
    }

    /// Seals `plain` under a fresh data key; returns (sealed value, wrapped key).
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let data_key = fresh_key();
        let value = seal_with(
            &XChaCha20Poly1305::new(data_key.as_slice().into()),
            plain,
            aad,
        );
        let wrapped = seal_with(&self.0, data_key.as_slice(), aad);
        (value, wrapped)
    }

    /// Opens a value sealed by [`MasterKey::seal`]: unwraps the data key, then the value.
    pub fn open(
        &self,
        value: &[u8],
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let data_key = Zeroizing::new(open_with(&self.0, wrapped, aad)?);
        if data_key.len() != 32 {
            return Err(SealError::Open);
        }
        let cipher = XChaCha20Poly1305::new(data_key.as_slice().into());
        Ok(Zeroizing::new(open_with(&cipher, value, aad)?))
    }

    /// Seals with the master key directly (backups, which are re-keyed on restore).
    pub fn seal_direct(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        seal_with(&self.0, plain, aad)
    }

    /// Opens a value sealed by [`MasterKey::seal_direct`].
    pub fn open_direct(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        Ok(Zeroizing::new(open_with(&self.0, sealed, aad)?))
    }
}

fn fresh_key() -> Zeroizing<[u8; 32]> {
    use rand::RngCore;
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(key.as_mut_slice());
    key
}

fn seal_with(cipher: &XChaCha20Poly1305, plain: &[u8], aad: &[u8]) -> Vec<u8> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let ct = cipher
        .encrypt(&nonce, Payload { msg: plain, aad })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open_with(cipher: &XChaCha20Poly1305, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < NONCE_LEN {
        return Err(SealError::Open);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| SealError::Open)
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let k = MasterKey::from_bytes(&[7u8; 32]).unwrap();
        let (v, w) = k.seal(b"s3cr3t", b"vault/name/ver");
        assert!(!v.windows(6).any(|x| x == b"s3cr3t"));
        assert_eq!(&*k.open(&v, &w, b"vault/name/ver").unwrap(), b"s3cr3t");
        assert!(k.open(&v, &w, b"vault/other/ver").is_err());
        let other = MasterKey::from_bytes(&[8u8; 32]).unwrap();
        assert!(other.open(&v, &w, b"vault/name/ver").is_err());
        assert!(k.open(&v[..10], &w, b"vault/name/ver").is_err());
    }

    #[test]
    fn key_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let a = MasterKey::load_or_create(&path).unwrap();
        let b = MasterKey::load_or_create(&path).unwrap();
        let (v, w) = a.seal(b"x", b"aad");
        assert_eq!(&*b.open(&v, &w, b"aad").unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
