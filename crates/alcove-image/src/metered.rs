//! A cap on what a tar reader may read between two points, for the bytes
//! alcove does not see: tar-rs reads a long name or a PAX record whole into
//! memory before it hands out the entry they describe, and skips the data of
//! entries alcove does not read. Without a cap, a few hundred KB of gzip
//! could make it hold gigabytes.

use std::cell::Cell;
use std::io::{self, Read, Seek, SeekFrom};
use std::rc::Rc;

/// The most bytes read between two entries handed out (headers, long
/// names, PAX records, skipped data), and after the last one.
pub(crate) const MAX_METADATA: u64 = 1 << 20;

/// How many more bytes the reader may pass, shared with whoever resets it.
#[derive(Clone, Default)]
pub(crate) struct Meter {
    left: Rc<Cell<u64>>,
    exhausted: Rc<Cell<bool>>,
}

impl Meter {
    /// Allows `bytes` more from now on.
    pub(crate) fn allow(&self, bytes: u64) {
        self.left.set(bytes);
        self.exhausted.set(false);
    }

    /// Whether a read was refused for going past the allowance.
    pub(crate) fn exhausted(&self) -> bool {
        self.exhausted.get()
    }
}

/// Passes reads through while its [`Meter`] allows them.
pub(crate) struct Metered<R> {
    pub(crate) inner: R,
    pub(crate) meter: Meter,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.meter.left.get();
        if left == 0 && !buf.is_empty() {
            self.meter.exhausted.set(true);
            return Err(io::Error::other(format!(
                "more than {MAX_METADATA} bytes of metadata before one entry"
            )));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.meter.left.set(left - n as u64);
        Ok(n)
    }
}

/// Seeking (tar-rs skipping data it need not read) is not reading: free.
impl<R: Seek> Seek for Metered<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_allowance_until_it_is_renewed() {
        let meter = Meter::default();
        let mut r = Metered {
            inner: &[7u8; 100][..],
            meter: meter.clone(),
        };
        meter.allow(10);
        let mut buf = [0u8; 64];
        assert_eq!(r.read(&mut buf).unwrap(), 10);
        assert!(r.read(&mut buf).is_err());
        assert!(meter.exhausted());
        meter.allow(u64::MAX);
        assert!(!meter.exhausted());
        assert_eq!(r.read(&mut buf).unwrap(), 64);
    }
}
