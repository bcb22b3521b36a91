//! Secrets at rest in the shared store: XChaCha20-Poly1305 under a 32-byte
//! key the operator gives every daemon (never stored beside the data).
//!
//! A sealed value is the random 24-byte nonce followed by the ciphertext and
//! its 16-byte tag. The associated data binds a value to where it belongs
//! (function, version and name), so a sealed value copied to another row
//! does not open there.

use crate::EngineError;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use std::fmt;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Seals and opens secret values with the operator's key.
pub(crate) struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox { key: <hidden> }")
    }
}

impl SecretBox {
    /// A box from the key written as 64 hex digits (surrounding whitespace,
    /// such as a file's final newline, is ignored).
    pub(crate) fn from_hex(text: &str) -> Result<Self, EngineError> {
        const HOW: &str = "make one with `openssl rand -hex 32`";
        let text = text.trim();
        if text.len() != 64 {
            return Err(EngineError::Invalid(format!(
                "the secrets key must be 64 hex digits (32 bytes), not {} characters: {HOW}",
                text.chars().count()
            )));
        }
        let mut key = [0u8; 32];
        for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            match (hex_digit(pair[0]), hex_digit(pair[1])) {
                (Some(high), Some(low)) => *byte = high << 4 | low,
                _ => {
                    return Err(EngineError::Invalid(format!(
                        "the secrets key must be 64 hex digits (0-9, a-f), and it has other characters: {HOW}"
                    )))
                }
            }
        }
        Ok(SecretBox {
            cipher: XChaCha20Poly1305::new(&Key::from(key)),
        })
    }

    /// Seals `plain`, bound to `aad`: a fresh random nonce, then the ciphertext.
    ///
    /// Panics only when the operating system's random number generator
    /// fails, where no nonce can be made safely.
    pub(crate) fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce = XNonce::generate();
        let ciphertext = self
            .cipher
            .encrypt(&nonce, Payload { msg: plain, aad })
            .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Opens what [`seal`](Self::seal) made with the same key and `aad`.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, EngineError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(EngineError::Internal(format!(
                "a sealed secret in the shared store is {} bytes, shorter than a nonce and a tag",
                sealed.len()
            )));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| {
            EngineError::Internal("a sealed secret's nonce is not 24 bytes".to_owned())
        })?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| {
                EngineError::Invalid(
                    "a secret in the shared store does not open with this key: the daemons must share the key it was sealed with"
                        .to_owned(),
                )
            })
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const OTHER: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn round_trip() {
        let b = SecretBox::from_hex(&format!("  {KEY}\n")).unwrap();
        let sealed = b.seal(b"f\x001\x00TOKEN", b"hunter2");
        assert_eq!(sealed.len(), NONCE_LEN + 7 + TAG_LEN);
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(b.open(b"f\x001\x00TOKEN", &sealed).unwrap(), b"hunter2");
        // A fresh nonce each time.
        assert_ne!(b.seal(b"a", b"x"), b.seal(b"a", b"x"));
        // Empty values seal too.
        assert_eq!(b.open(b"", &b.seal(b"", b"")).unwrap(), b"");
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = SecretBox::from_hex(KEY).unwrap().seal(b"aad", b"value");
        let err = SecretBox::from_hex(OTHER)
            .unwrap()
            .open(b"aad", &sealed)
            .unwrap_err();
        assert!(
            err.to_string().contains("does not open with this key"),
            "{err}"
        );
    }

    #[test]
    fn tampered_byte_fails() {
        let b = SecretBox::from_hex(KEY).unwrap();
        let sealed = b.seal(b"aad", b"value");
        for i in [0, NONCE_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(b.open(b"aad", &bad).is_err(), "byte {i}");
        }
        assert!(b.open(b"aad", &sealed[..NONCE_LEN + TAG_LEN - 1]).is_err());
        assert!(b.open(b"aad", &[]).is_err());
    }

    #[test]
    fn wrong_aad_fails() {
        let b = SecretBox::from_hex(KEY).unwrap();
        let sealed = b.seal(b"f\x001\x00A", b"value");
        assert!(b.open(b"f\x001\x00B", &sealed).is_err());
        assert!(b.open(b"f\x002\x00A", &sealed).is_err());
    }

    #[test]
    fn bad_hex_is_refused_without_echoing_it() {
        for bad in [
            "",
            "abc",
            &KEY[..62],
            &format!("{KEY}00"),
            &format!("{}zz", &KEY[..62]),
            &format!("{}é", &KEY[..62]),
        ] {
            let err = SecretBox::from_hex(bad).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, EngineError::Invalid(_)), "{bad:?}");
            assert!(text.contains("openssl rand -hex 32"), "{text}");
            assert!(bad.len() < 8 || !text.contains(bad), "{text}");
        }
        let debug = format!("{:?}", SecretBox::from_hex(KEY).unwrap());
        assert!(!debug.contains("0102"), "{debug}");
    }
}
