//! sha256 digests: parsing `sha256:<hex>` and hashing what is read.

use crate::ImageError;
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};

/// The hex part of a `sha256:<64 hex>` digest; other algorithms are refused.
pub(crate) fn sha256_hex(digest: &str) -> Result<String, ImageError> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
        ImageError::Format(format!(
            "digest {digest:?}: only sha256 digests are supported"
        ))
    })?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(ImageError::Format(format!(
            "digest {digest:?} is malformed"
        )));
    }
    Ok(hex.to_owned())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A reader that hashes and counts what passes through it.
pub(crate) struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    pub(crate) count: u64,
}

impl<R: Read> Hashing<R> {
    pub(crate) fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads what is left, then returns the hex digest of everything read.
    pub(crate) fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((hex(&self.hasher.finalize()), self.count))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Checks `bytes` against `expected_hex`.
pub(crate) fn verify(what: &str, bytes: &[u8], expected_hex: &str) -> Result<(), ImageError> {
    let actual = sha256_of(bytes);
    if actual != expected_hex {
        return Err(ImageError::Digest {
            what: what.to_owned(),
            expected: expected_hex.to_owned(),
            actual,
        });
    }
    Ok(())
}
