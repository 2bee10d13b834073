//! Sealing of write-only secret fields at rest: AES-256-GCM (ring) under a
//! key file created with mode 0600 on first start.
//!
//! A sealed value is stored in place of the secret as
//! `{"$sealed": "<base64url(nonce || ciphertext || tag)>"}`; the object's key
//! (`kind/id`) and field name are the associated data, so a sealed value
//! copied to another object or field does not open.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};
use zeroize::Zeroizing;

const KEY_LEN: usize = 32;
const SEALED: &str = "$sealed";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read or create the sealing key file {path}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sealing key file {path} must hold exactly {KEY_LEN} bytes and be mode 0600")]
    BadKeyFile { path: String },
    #[error("the system random generator failed")]
    Random,
    #[error(
        "sealed value of {field} does not open with this agent's key (wrong key file or corrupted store)"
    )]
    Open { field: String },
}

/// Seals and opens secret values. Holds the key; never prints it.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

impl Sealer {
    /// Loads the key at `path`; `Ok(None)` when there is no such file.
    pub fn load(path: &Path) -> Result<Option<Sealer>, SealError> {
        if !path.exists() {
            return Ok(None);
        }
        Self::load_or_create(path).map(Some)
    }

    /// Loads the key at `path`, creating it (0600, random) when absent.
    pub fn load_or_create(path: &Path) -> Result<Sealer, SealError> {
        let display = path.display().to_string();
        let io = |source| SealError::KeyFile {
            path: display.clone(),
            source,
        };
        let rng = SystemRandom::new();
        let bytes = match fs::read(path) {
            Ok(bytes) => {
                let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
                if bytes.len() != KEY_LEN || mode & 0o077 != 0 {
                    return Err(SealError::BadKeyFile { path: display });
                }
                Zeroizing::new(bytes)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new(vec![0u8; KEY_LEN]);
                rng.fill(&mut key).map_err(|_| SealError::Random)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                f.write_all(&key).map_err(io)?;
                f.sync_all().map_err(io)?;
                key
            }
            Err(e) => return Err(io(e)),
        };
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::BadKeyFile {
            path: path.display().to_string(),
        })?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
            rng,
        })
    }

    /// A sealer with a random key that is never written anywhere, for a
    /// read-only view of the store that must not open the real secrets.
    pub fn ephemeral() -> Result<Sealer, SealError> {
        let rng = SystemRandom::new();
        let mut key = Zeroizing::new(vec![0u8; KEY_LEN]);
        rng.fill(&mut key).map_err(|_| SealError::Random)?;
        let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| SealError::Random)?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
            rng,
        })
    }

    /// Seals one secret string for `object` (`kind/id`) and `field`.
    pub fn seal(&self, object: &str, field: &str, secret: &str) -> Result<Value, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut buf = Zeroizing::new(secret.as_bytes().to_vec());
        let aad = format!("{object}#{field}");
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut *buf,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(json!({ SEALED: base64_encode(&out) }))
    }

    /// Opens a value made by [`Sealer::seal`].
    pub fn open(
        &self,
        object: &str,
        field: &str,
        sealed: &Value,
    ) -> Result<Zeroizing<String>, SealError> {
        let err = || SealError::Open {
            field: field.to_string(),
        };
        let text = sealed.get(SEALED).and_then(Value::as_str).ok_or_else(err)?;
        let raw = base64_decode(text).ok_or_else(err)?;
        if raw.len() < NONCE_LEN {
            return Err(err());
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| err())?;
        let mut buf = Zeroizing::new(rest.to_vec());
        let aad = format!("{object}#{field}");
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| err())?;
        let s = std::str::from_utf8(plain).map_err(|_| err())?;
        Ok(Zeroizing::new(s.to_string()))
    }

    pub fn is_sealed(value: &Value) -> bool {
        value.get(SEALED).is_some()
    }
}

fn base64_encode(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        let s = Sealer::load_or_create(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let sealed = s.seal("ipsec-tunnels/t1", "key_in", "00ff").unwrap();
        assert!(!sealed.to_string().contains("00ff"));
        assert_eq!(
            &*s.open("ipsec-tunnels/t1", "key_in", &sealed).unwrap(),
            "00ff"
        );
        // Bound to its object and field.
        assert!(s.open("ipsec-tunnels/t2", "key_in", &sealed).is_err());
        assert!(s.open("ipsec-tunnels/t1", "key_out", &sealed).is_err());
        // The same key file opens it again after a restart.
        let s2 = Sealer::load_or_create(&path).unwrap();
        assert_eq!(
            &*s2.open("ipsec-tunnels/t1", "key_in", &sealed).unwrap(),
            "00ff"
        );
    }

    #[test]
    fn refuses_a_world_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        fs::write(&path, [7u8; KEY_LEN]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Sealer::load_or_create(&path),
            Err(SealError::BadKeyFile { .. })
        ));
    }
}
