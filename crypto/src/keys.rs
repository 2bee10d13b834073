//! Key material: zeroizing buffers with redacted `Debug`, and the parsing of
//! the API's hex form (AES key followed by the 4-byte GCM salt, RFC 4106).
//! A key lives here only while programming needs it; nothing in this module
//! ever formats key bytes, and errors say what is wrong without the value.

use zeroize::Zeroizing;

use crate::model::Cipher;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key is not hex (expected {expected} hex digits: key then 4-byte salt)")]
    NotHex { expected: usize },
    #[error("the key has {got} bytes; {cipher} needs {expected} (key then 4-byte salt)")]
    WrongLength {
        cipher: &'static str,
        got: usize,
        expected: usize,
    },
}

/// An AEAD key as the kernel takes it for `rfc4106(gcm(aes))`: the AES key
/// followed by the 4-byte salt. Zeroized on drop; `Debug` shows only its
/// length.
#[derive(Clone, PartialEq, Eq)]
pub struct SaKey(Zeroizing<Vec<u8>>);

impl SaKey {
    /// Parses `hex` (key + salt) for `cipher`.
    pub fn from_hex(hex_text: &str, cipher: Cipher) -> Result<SaKey, KeyError> {
        let expected = cipher.key_len() + 4;
        let text = hex_text.trim();
        let text = text.strip_prefix("0x").unwrap_or(text);
        if !text.len().is_multiple_of(2) {
            return Err(KeyError::NotHex {
                expected: expected * 2,
            });
        }
        let mut bytes = Zeroizing::new(vec![0u8; text.len() / 2]);
        hex::decode_to_slice(text, &mut bytes[..]).map_err(|_| KeyError::NotHex {
            expected: expected * 2,
        })?;
        if bytes.len() != expected {
            return Err(KeyError::WrongLength {
                cipher: cipher.name(),
                got: bytes.len(),
                expected,
            });
        }
        Ok(SaKey(bytes))
    }

    /// Wraps bytes read back from the kernel (any length).
    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> SaKey {
        SaKey(bytes)
    }

    /// Key and salt, as `XFRMA_ALG_AEAD` carries them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Equality in time independent of where the keys differ.
    pub fn ct_eq(&self, other: &SaKey) -> bool {
        if self.0.len() != other.0.len() {
            return false;
        }
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for SaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SaKey(<{} bytes redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K128: &str = "00112233445566778899aabbccddeeff01020304";

    #[test]
    fn parses_key_and_salt() {
        let k = SaKey::from_hex(K128, Cipher::AesGcm128).unwrap();
        assert_eq!(k.len(), 20);
        assert_eq!(&k.as_bytes()[16..], &[1, 2, 3, 4]);
    }

    #[test]
    fn wrong_length_names_the_cipher_not_the_key() {
        let e = SaKey::from_hex(K128, Cipher::AesGcm256).unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(text.contains("aes-gcm-256"), "{text}");
        assert!(!text.contains("0011"), "{text}");
    }

    #[test]
    fn not_hex_does_not_echo_the_input() {
        let e = SaKey::from_hex(
            "zz112233445566778899aabbccddeeff01020304",
            Cipher::AesGcm128,
        )
        .unwrap_err();
        assert!(!format!("{e} {e:?}").contains("112233"));
    }

    #[test]
    fn debug_is_redacted() {
        let k = SaKey::from_hex(K128, Cipher::AesGcm128).unwrap();
        let d = format!("{k:?}");
        assert!(!d.contains("0011") && !d.contains("17, 34"), "{d}");
    }

    #[test]
    fn ct_eq_compares() {
        let a = SaKey::from_hex(K128, Cipher::AesGcm128).unwrap();
        let b = SaKey::from_hex(
            "ff112233445566778899aabbccddeeff01020304",
            Cipher::AesGcm128,
        )
        .unwrap();
        assert!(a.ct_eq(&a.clone()));
        assert!(!a.ct_eq(&b));
    }
}
