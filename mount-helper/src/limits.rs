//! Bounds on what an untrusted image can make the helper read, hold in memory and write.
//!
//! - [`Bounded`] stops a stream at the first byte past a limit: a blob longer than its
//!   descriptor says, or a layer whose uncompressed tar is larger than the layer size limit
//!   (a gzip or zstd bomb).
//! - [`HeaderGuard`] refuses a tar extension header (PAX record, GNU long name or long link)
//!   larger than [`MAX_EXTENSION`] before the tar crate reads it: the crate reads those whole
//!   into memory before it yields the entry they describe.
//! - [`free_space`] is what the store's filesystem has left, for the checks made before a
//!   blob or a file is written.
//!
//! A refusal travels up as an `io::Error` wrapping [`Refused`] (through the decompressors and
//! the tar crate); [`refusal`] finds it again, so that the message names the cause instead
//! of calling the blob corrupt.

use std::io::{self, Read};
use std::os::fd::AsFd;

/// The largest PAX record, GNU long name or long link accepted (bytes).
pub const MAX_EXTENSION: u64 = 1 << 20;

/// The default layer size limit: 100 times the blob's size, and at least this much.
pub const DEFAULT_LAYER_FLOOR: u64 = 1 << 30;

/// The default layer size limit's multiple of the blob's size.
pub const DEFAULT_LAYER_RATIO: u64 = 100;

/// How much of the store's filesystem an import leaves free: this fraction (1/100) of its
/// size.
pub const RESERVE_DIVISOR: u64 = 100;

/// The limit for a layer whose blob has `blob_size` bytes: `explicit` (`--max-layer-size`),
/// else [`DEFAULT_LAYER_RATIO`] times the blob, at least [`DEFAULT_LAYER_FLOOR`].
pub fn layer_limit(explicit: Option<u64>, blob_size: u64) -> u64 {
    explicit.unwrap_or_else(|| {
        blob_size
            .saturating_mul(DEFAULT_LAYER_RATIO)
            .max(DEFAULT_LAYER_FLOOR)
    })
}

/// A size for messages: `1.00 GiB`.
pub fn human(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Why an untrusted stream was stopped: the whole message, naming the cause.
#[derive(Debug, Clone)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// An `io::Error` carrying a refusal.
pub fn refuse(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Refused(msg))
}

/// The refusal an error carries, however deeply wrapped.
pub fn refusal(e: &io::Error) -> Option<&Refused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> =
        e.get_ref().map(|x| x as &(dyn std::error::Error + 'static));
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(inner) = io.get_ref() {
                cur = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        cur = err.source();
    }
    None
}

/// A reader that fails as soon as its inner reader yields more than `limit` bytes: the byte
/// past the limit is never passed on.
pub struct Bounded<R> {
    inner: R,
    limit: u64,
    count: u64,
    what: Box<dyn Fn(u64) -> String + Send>,
}

impl<R: Read> Bounded<R> {
    /// Wraps `inner`; `what(limit)` is the message when the limit is passed.
    pub fn new(inner: R, limit: u64, what: impl Fn(u64) -> String + Send + 'static) -> Self {
        Bounded {
            inner,
            limit,
            count: 0,
            what: Box::new(what),
        }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Room for one byte more than allowed, to see that there is one.
        let room = self.limit.saturating_sub(self.count).saturating_add(1);
        let want = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(refuse((self.what)(self.limit)));
        }
        Ok(n)
    }
}

const BLOCK: usize = 512;

/// Sits between a tar stream and the tar crate, and refuses an extension header (PAX `x`
/// or `g`, GNU `L` or `K`) whose data is over [`MAX_EXTENSION`] bytes, before the crate
/// reads that data into memory.
///
/// Every header the crate reads starts at a multiple of 512 bytes in the stream, so each
/// 512-byte block is looked at as it passes: one with a valid header checksum, an extension
/// type and a size over the limit is refused. File data that happens to hold such a block
/// (a tar inside the layer, stored at a block boundary, with such a header) is refused too.
pub struct HeaderGuard<R> {
    inner: R,
    block: Box<[u8; BLOCK]>,
    fill: usize,
    failed: Option<String>,
}

impl<R: Read> HeaderGuard<R> {
    /// Wraps the start of a tar stream.
    pub fn new(inner: R) -> Self {
        HeaderGuard {
            inner,
            block: Box::new([0; BLOCK]),
            fill: 0,
            failed: None,
        }
    }

    /// Checks a whole block.
    fn check(&self) -> Option<String> {
        let kind = self.block[156];
        let what = match kind {
            b'x' => "a PAX extended header",
            b'g' => "a PAX global header",
            b'L' => "a GNU long name",
            b'K' => "a GNU long link name",
            _ => return None,
        };
        let h = tar::Header::from_byte_slice(&self.block[..]);
        let sum: u32 = self.block[..148]
            .iter()
            .chain(&self.block[156..])
            .map(|b| u32::from(*b))
            .sum::<u32>()
            + 8 * 32;
        if h.cksum().ok() != Some(sum) {
            return None;
        }
        let size = h.entry_size().ok()?;
        (size > MAX_EXTENSION).then(|| {
            format!(
                "{what} of {} ({size} bytes), over the limit of {}",
                human(size),
                human(MAX_EXTENSION)
            )
        })
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(msg) = &self.failed {
            return Err(refuse(msg.clone()));
        }
        let n = self.inner.read(buf)?;
        let mut off = 0;
        while off < n {
            let take = (BLOCK - self.fill).min(n - off);
            self.block[self.fill..self.fill + take].copy_from_slice(&buf[off..off + take]);
            self.fill += take;
            off += take;
            if self.fill == BLOCK {
                self.fill = 0;
                if let Some(msg) = self.check() {
                    self.failed = Some(msg.clone());
                    return Err(refuse(msg));
                }
            }
        }
        Ok(n)
    }
}

/// Bytes free for an unprivileged user on the filesystem of `fd`, and the reserve an import
/// leaves there (1/[`RESERVE_DIVISOR`] of its size).
pub fn free_space(fd: impl AsFd) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstatvfs(fd)?;
    let unit = if st.f_frsize > 0 {
        st.f_frsize
    } else {
        st.f_bsize
    };
    let free = st.f_bavail.saturating_mul(unit);
    let total = st.f_blocks.saturating_mul(unit);
    Ok((free, total / RESERVE_DIVISOR))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn bounded_stops_at_the_first_byte_past() {
        let data = [1u8; 100];
        let mut r = Bounded::new(&data[..], 100, |l| format!("over {l}"));
        assert_eq!(io::copy(&mut r, &mut io::sink()).unwrap(), 100);
        let mut r = Bounded::new(&data[..], 99, |l| format!("over {l}"));
        let e = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert_eq!(refusal(&e).unwrap().0, "over 99");
    }

    #[test]
    fn refusals_are_found_through_wrappers() {
        let inner = refuse("why".into());
        let wrapped = io::Error::other(inner);
        assert_eq!(refusal(&wrapped).unwrap().0, "why");
        assert!(refusal(&io::Error::other("x")).is_none());
    }

    fn tar_with_long_name(len: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        let name = "a/".repeat(len / 2) + "f";
        b.append_data(&mut h, &name, &b"x"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn guard_passes_small_headers_and_refuses_big_ones() {
        let ok = tar_with_long_name(4000);
        let mut ar = tar::Archive::new(HeaderGuard::new(&ok[..]));
        assert_eq!(ar.entries().unwrap().count(), 1);
        let big = tar_with_long_name(MAX_EXTENSION as usize + 10);
        let mut ar = tar::Archive::new(HeaderGuard::new(&big[..]));
        let e = ar.entries().unwrap().next().unwrap().err().unwrap();
        let r = refusal(&e).unwrap();
        assert!(r.0.starts_with("a GNU long name of 1.00 MiB"), "{r}");
    }
}
