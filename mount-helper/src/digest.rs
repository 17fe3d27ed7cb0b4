//! SHA-256 digests of blobs and uncompressed layers, and readers/writers that compute them
//! (and count bytes) while data streams through.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::str::FromStr;

use oci_spec::image::{Digest, DigestAlgorithm, Sha256Digest};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// `sha256:HEX` as OCI writes digests.
pub fn full(d: &Sha256Digest) -> String {
    format!("sha256:{}", d.digest())
}

/// `sha256:` and the first 12 hex digits: enough to name a layer in a message.
pub fn short(d: &Sha256Digest) -> String {
    format!("sha256:{}", &d.digest()[..12])
}

/// Parses `sha256:HEX`; any other algorithm or a malformed value is refused.
pub fn parse(s: &str) -> Result<Sha256Digest> {
    let d = Digest::from_str(s).map_err(|e| Error::invalid(format!("digest {s:?}: {e}")))?;
    of(&d)
}

/// True for 64 lowercase hex digits: a whole sha256 value, spelled as image ids are.
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The SHA-256 value of an OCI digest.
pub fn of(d: &Digest) -> Result<Sha256Digest> {
    if *d.algorithm() != DigestAlgorithm::Sha256 {
        return Err(Error::invalid(format!(
            "digest {d}: only sha256 digests are supported"
        )));
    }
    Sha256Digest::from_str(d.digest()).map_err(|e| Error::invalid(format!("digest {d}: {e}")))
}

/// The OCI digest of a SHA-256 value.
pub fn to_oci(d: &Sha256Digest) -> Digest {
    Digest::from(d.clone())
}

fn finish(h: Sha256) -> Sha256Digest {
    let mut hex = String::with_capacity(64);
    for b in h.finalize().iter() {
        let _ = write!(hex, "{b:02x}");
    }
    // 64 lowercase hex digits always parse.
    Sha256Digest::from_str(&hex).unwrap_or_else(|_| unreachable_digest())
}

#[allow(clippy::panic)]
fn unreachable_digest() -> Sha256Digest {
    // Only reachable if sha2 stopped producing 32-byte outputs.
    panic!("sha256 output is not 32 bytes")
}

/// The digest of a byte string.
pub fn of_bytes(b: &[u8]) -> Sha256Digest {
    let mut h = Sha256::new();
    h.update(b);
    finish(h)
}

/// A reader that hashes and counts what passes through it, optionally reporting progress.
pub struct HashReader<R> {
    inner: R,
    hash: Sha256,
    count: u64,
    progress: Option<indicatif::ProgressBar>,
}

impl<R: Read> HashReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, progress: Option<indicatif::ProgressBar>) -> HashReader<R> {
        HashReader {
            inner,
            hash: Sha256::new(),
            count: 0,
            progress,
        }
    }

    /// Reads what is left, so the digest covers the whole stream.
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(drop)
    }

    /// The digest of everything read, the byte count, and the inner reader.
    pub fn finish(self) -> (Sha256Digest, u64, R) {
        if let Some(p) = &self.progress {
            p.finish_and_clear();
        }
        (finish(self.hash), self.count, self.inner)
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        if let Some(p) = &self.progress {
            p.inc(n as u64);
        }
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashWriter<W> {
    inner: W,
    hash: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> HashWriter<W> {
        HashWriter {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// The digest and size of everything written, and the inner writer.
    pub fn finish(self) -> (Sha256Digest, u64, W) {
        (finish(self.hash), self.count, self.inner)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that copies what passes through it into a writer (the blob kept in the store).
pub struct TeeReader<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> TeeReader<R, W> {
    /// Wraps `inner`, copying into `copy`.
    pub fn new(inner: R, copy: W) -> TeeReader<R, W> {
        TeeReader { inner, copy }
    }

    /// The two halves.
    pub fn into_parts(self) -> (R, W) {
        (self.inner, self.copy)
    }
}

impl<R: Read, W: Write> Read for TeeReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn digests() {
        let d = of_bytes(b"");
        assert_eq!(
            full(&d),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(short(&d), "sha256:e3b0c44298fc");
        assert_eq!(parse(&full(&d)).unwrap(), d);
        assert!(parse("sha512:abcd").is_err());
        assert!(parse("sha256:ABCD").is_err());
        let mut r = HashReader::new(&b"abc"[..], None);
        r.drain().unwrap();
        let (d2, n, _) = r.finish();
        assert_eq!(n, 3);
        assert_eq!(d2, of_bytes(b"abc"));
    }
}
