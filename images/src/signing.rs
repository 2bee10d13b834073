//! The Ed25519 signing key of the manifest: read from PKCS#8 (DER or PEM, as
//! `openssl genpkey -algorithm ed25519` writes it) or generated once as the
//! development key; the signature is the raw 64 bytes over the manifest file.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the 32-byte
/// key follows.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot read or write the signing key {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not an Ed25519 private key in PKCS#8 (make one with `openssl genpkey -algorithm ed25519 -out KEY.pem`): {why}"
    )]
    BadKey { path: PathBuf, why: String },
    #[error("the system random number generator failed")]
    Random,
}

/// An Ed25519 signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &hex::encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

fn pem_body(text: &str) -> Option<Vec<u8>> {
    let mut inside = false;
    let mut b64 = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line == "-----BEGIN PRIVATE KEY-----" {
            inside = true;
        } else if line == "-----END PRIVATE KEY-----" {
            return base64::engine::general_purpose::STANDARD.decode(b64).ok();
        } else if inside {
            b64.push_str(line);
        }
    }
    None
}

impl SigningKey {
    /// Reads a PKCS#8 key, DER or PEM (`BEGIN PRIVATE KEY`).
    pub fn load(path: &Path) -> Result<SigningKey, SigningError> {
        let bytes = std::fs::read(path).map_err(|source| SigningError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let der = match std::str::from_utf8(&bytes) {
            Ok(text) if text.contains("-----BEGIN") => {
                pem_body(text).ok_or_else(|| SigningError::BadKey {
                    path: path.to_path_buf(),
                    why: "no PEM block \"PRIVATE KEY\"".into(),
                })?
            }
            _ => bytes,
        };
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| SigningError::BadKey {
                path: path.to_path_buf(),
                why: e.to_string(),
            })?;
        Ok(SigningKey { pair })
    }

    /// Reads `path`, or generates a new key there (mode 0600) when it does
    /// not exist: the development key.
    pub fn load_or_generate(path: &Path) -> Result<(SigningKey, bool), SigningError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let io = |source| SigningError::Io {
            path: path.to_path_buf(),
            source,
        };
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| SigningError::Random)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(doc.as_ref()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok((Self::load(path)?, true))
    }

    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The public key as a PEM SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`).
    pub fn public_key_pem(&self) -> String {
        public_key_pem(self.public_key())
    }

    /// The 64-byte Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// PEM SubjectPublicKeyInfo of a raw 32-byte Ed25519 public key.
pub fn public_key_pem(raw: &[u8]) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(raw);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
}

/// Checks `signature` of `message` with a raw 32-byte public key.
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 section 7.1, TEST 1: the empty message.
    #[test]
    fn rfc8032_test_vector_and_spki() {
        // PKCS#8 v1 of the test-1 secret key, as openssl writes it.
        let secret =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap();
        let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
        der.extend_from_slice(&secret);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.der");
        std::fs::write(&path, &der).unwrap();
        let key = SigningKey::load(&path).unwrap();
        assert_eq!(
            hex::encode(key.public_key()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            hex::encode(key.sign(b"")),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        // The same key as PEM loads too.
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        std::fs::write(&path, pem).unwrap();
        let again = SigningKey::load(&path).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        // RFC 8410 section 10.1's public key example.
        assert!(
            public_key_pem(
                &hex::decode("19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1")
                    .unwrap()
            )
            .contains("MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=")
        );
    }

    #[test]
    fn generated_key_is_kept_and_signs_verifiably() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dev.pk8");
        let (key, fresh) = SigningKey::load_or_generate(&path).unwrap();
        assert!(fresh);
        let (again, fresh) = SigningKey::load_or_generate(&path).unwrap();
        assert!(!fresh);
        assert_eq!(key.public_key(), again.public_key());
        let sig = key.sign(b"manifest");
        assert!(verify(key.public_key(), b"manifest", &sig));
        assert!(!verify(key.public_key(), b"manifesT", &sig));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn garbage_key_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.pem");
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = SigningKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("bad.pem"), "{err}");
    }
}
