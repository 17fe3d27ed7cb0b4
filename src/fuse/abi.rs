//! The FUSE wire format (`include/uapi/linux/fuse.h`), for the requests and replies the
//! dispatcher handles: a reader of request arguments and a writer of reply structs. Pure
//! byte work (native endian, as the kernel writes), no I/O and no `unsafe`; any transport
//! (the `/dev/fuse` read loop, an io_uring ring) carries these bytes.
//!
//! fuser 0.18 decodes requests too, but its replies send the node id as `st_ino`
//! (`fuse_entry_out.nodeid = attr.ino`), and a union must keep the two apart: all names of a
//! lower hard link show one `st_ino` while each is its own node.
//!
//! Ids are `u64` here only: the header's node id is decoded as a [`NodeId`] (and the node
//! ids and handles in arguments by [`Args::node`] and [`Args::fh`]), and replies take a
//! [`NodeId`], an [`Ino`] and an [`Fh`] where the kernel gets a number.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime};

use super::Fh;
use crate::inode::NodeId;
use crate::layer::Ino;

/// The node id of an entry reply naming no node: a negative entry, or readdirplus's `.`
/// and `..` (which the kernel links to no inode).
pub const NO_NODE: NodeId = NodeId::from_wire(0);

/// `struct fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// `struct fuse_out_header`.
pub const OUT_HEADER_LEN: usize = crate::sys::FUSE_OUT_HEADER_LEN;

/// Request opcodes (`enum fuse_opcode`).
#[allow(missing_docs)]
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const NOTIFY_REPLY: u32 = 41;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
    pub const STATX: u32 = 52;
}

/// The name of an opcode, for logs.
pub fn op_name(opcode: u32) -> &'static str {
    match opcode {
        op::LOOKUP => "lookup",
        op::FORGET => "forget",
        op::GETATTR => "getattr",
        op::SETATTR => "setattr",
        op::READLINK => "readlink",
        op::SYMLINK => "symlink",
        op::MKNOD => "mknod",
        op::MKDIR => "mkdir",
        op::UNLINK => "unlink",
        op::RMDIR => "rmdir",
        op::RENAME => "rename",
        op::LINK => "link",
        op::OPEN => "open",
        op::READ => "read",
        op::WRITE => "write",
        op::STATFS => "statfs",
        op::RELEASE => "release",
        op::FSYNC => "fsync",
        op::SETXATTR => "setxattr",
        op::GETXATTR => "getxattr",
        op::LISTXATTR => "listxattr",
        op::REMOVEXATTR => "removexattr",
        op::FLUSH => "flush",
        op::INIT => "init",
        op::OPENDIR => "opendir",
        op::READDIR => "readdir",
        op::RELEASEDIR => "releasedir",
        op::FSYNCDIR => "fsyncdir",
        op::GETLK => "getlk",
        op::SETLK => "setlk",
        op::SETLKW => "setlkw",
        op::ACCESS => "access",
        op::CREATE => "create",
        op::INTERRUPT => "interrupt",
        op::BMAP => "bmap",
        op::DESTROY => "destroy",
        op::IOCTL => "ioctl",
        op::POLL => "poll",
        op::NOTIFY_REPLY => "notify_reply",
        op::BATCH_FORGET => "batch_forget",
        op::FALLOCATE => "fallocate",
        op::READDIRPLUS => "readdirplus",
        op::RENAME2 => "rename2",
        op::LSEEK => "lseek",
        op::COPY_FILE_RANGE => "copy_file_range",
        op::SYNCFS => "syncfs",
        op::TMPFILE => "tmpfile",
        op::STATX => "statx",
        _ => "unknown",
    }
}

/// `fuse_setattr_in.valid` bits.
pub mod fattr {
    /// Mode.
    pub const MODE: u32 = 1 << 0;
    /// Owner.
    pub const UID: u32 = 1 << 1;
    /// Group.
    pub const GID: u32 = 1 << 2;
    /// Size.
    pub const SIZE: u32 = 1 << 3;
    /// Access time.
    pub const ATIME: u32 = 1 << 4;
    /// Modification time.
    pub const MTIME: u32 = 1 << 5;
    /// `fh` is set.
    pub const FH: u32 = 1 << 6;
    /// Access time: now.
    pub const ATIME_NOW: u32 = 1 << 7;
    /// Modification time: now.
    pub const MTIME_NOW: u32 = 1 << 8;
}

/// `fuse_open_out.open_flags`.
pub mod fopen {
    /// Keep the page cache of the file.
    pub const KEEP_CACHE: u32 = 1 << 1;
    /// Cache the directory's listing.
    pub const CACHE_DIR: u32 = 1 << 3;
    /// Reads and writes go to the backing file (`backing_id`).
    pub const PASSTHROUGH: u32 = 1 << 7;
}

/// `fuse_getattr_in.getattr_flags`: `fh` is set.
pub const GETATTR_FH: u32 = 1;

/// `struct fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    /// Length of the whole request.
    pub len: u32,
    /// `enum fuse_opcode`.
    pub opcode: u32,
    /// The request's id, which its reply names.
    pub unique: u64,
    /// The node the request is about.
    pub nodeid: NodeId,
    /// The caller's fs uid.
    pub uid: u32,
    /// The caller's fs gid.
    pub gid: u32,
    /// The caller's thread group id.
    pub pid: u32,
    /// Length of extensions after the arguments, in units of 8 bytes.
    pub total_extlen: u16,
}

/// A request too short for what its opcode says it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Splits a request into its header and its arguments (extensions cut off).
pub fn parse_request(buf: &[u8]) -> Result<(InHeader, Args<'_>), Malformed> {
    let h = parse_header(buf)?;
    let len = h.len as usize;
    if len > buf.len() {
        return Err(Malformed);
    }
    let ext = usize::from(h.total_extlen) * 8;
    let end = len.checked_sub(ext).filter(|e| *e >= IN_HEADER_LEN);
    let end = end.ok_or(Malformed)?;
    Ok((
        h,
        Args {
            buf: &buf[IN_HEADER_LEN..end],
            next: &[],
        },
    ))
}

/// The `fuse_in_header` at the start of `buf` (its `len` at least the header's own).
fn parse_header(buf: &[u8]) -> Result<InHeader, Malformed> {
    let mut a = Args { buf, next: &[] };
    let h = InHeader {
        len: a.u32()?,
        opcode: a.u32()?,
        unique: a.u64()?,
        nodeid: a.node()?,
        uid: a.u32()?,
        gid: a.u32()?,
        pid: a.u32()?,
        total_extlen: {
            let v = a.u32()?;
            (v & 0xffff) as u16
        },
    };
    if (h.len as usize) < IN_HEADER_LEN {
        return Err(Malformed);
    }
    Ok(h)
}

/// A request that arrived in parts, as FUSE over io_uring hands it over: the
/// `fuse_in_header` (`header`), the operation's first argument (`op_in`) and the other
/// arguments (`payload`), read in place without putting them together. The header's `len`
/// must be the sum of the three; extensions are at the end of the payload.
pub fn parse_parts<'a>(
    header: &'a [u8],
    op_in: &'a [u8],
    payload: &'a [u8],
) -> Result<(InHeader, Args<'a>), Malformed> {
    let h = parse_header(header)?;
    if h.len as usize != IN_HEADER_LEN + op_in.len() + payload.len() {
        return Err(Malformed);
    }
    let ext = usize::from(h.total_extlen) * 8;
    let end = payload.len().checked_sub(ext).ok_or(Malformed)?;
    Ok((
        h,
        Args {
            buf: op_in,
            next: &payload[..end],
        },
    ))
}

/// A reader over a request's arguments.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    buf: &'a [u8],
    /// Where the arguments go on once `buf` is used up: the payload of a request that
    /// arrived in parts ([`parse_parts`]). An argument never straddles the two.
    next: &'a [u8],
}

impl<'a> Args<'a> {
    /// Moves on to `next` when `buf` is used up.
    fn advance(&mut self) {
        if self.buf.is_empty() {
            self.buf = std::mem::take(&mut self.next);
        }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n == 0 {
            return Ok(&[]);
        }
        self.advance();
        if self.buf.len() < n {
            return Err(Malformed);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next `u32`.
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.bytes(4)?;
        Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next `u64`.
    pub fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_ne_bytes(a))
    }

    /// The next node id.
    pub fn node(&mut self) -> Result<NodeId, Malformed> {
        self.u64().map(NodeId::from_wire)
    }

    /// The next file handle.
    pub fn fh(&mut self) -> Result<Fh, Malformed> {
        self.u64().map(Fh::from_wire)
    }

    /// The next NUL-terminated name (without its NUL).
    pub fn name(&mut self) -> Result<&'a OsStr, Malformed> {
        self.advance();
        let n = self.buf.iter().position(|b| *b == 0).ok_or(Malformed)?;
        let name = self.bytes(n)?;
        self.bytes(1)?;
        Ok(OsStr::from_bytes(name))
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.advance();
        std::mem::take(&mut self.buf)
    }
}

/// `struct fuse_attr` as sent: what `stat` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WireAttr {
    /// `st_ino`.
    pub ino: Ino,
    /// `st_size`.
    pub size: u64,
    /// `st_blocks`.
    pub blocks: u64,
    /// Access time (seconds, nanoseconds).
    pub atime: (u64, u32),
    /// Modification time.
    pub mtime: (u64, u32),
    /// Status change time.
    pub ctime: (u64, u32),
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    /// `st_nlink`.
    pub nlink: u32,
    /// `st_uid`.
    pub uid: u32,
    /// `st_gid`.
    pub gid: u32,
    /// `st_rdev`.
    pub rdev: u32,
    /// `st_blksize`.
    pub blksize: u32,
}

/// Seconds and nanoseconds of `t` as the kernel takes them (seconds before 1970 negative,
/// in two's complement, with nanoseconds counted forward).
pub fn time_parts(t: SystemTime) -> (u64, u32) {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (secs, nanos) = (d.as_secs() as i64, d.subsec_nanos());
            if nanos == 0 {
                ((-secs) as u64, 0)
            } else {
                ((-secs - 1) as u64, 1_000_000_000 - nanos)
            }
        }
    }
}

/// The time the kernel means by seconds `secs` (signed) and nanoseconds `nsec`.
pub fn time_from_parts(secs: u64, nsec: u32) -> SystemTime {
    let secs = secs as i64;
    let nsec = Duration::from_nanos(u64::from(nsec.min(999_999_999)));
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64) + nsec
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nsec
    }
}

/// A reply body under construction.
#[derive(Debug, Default)]
pub struct Out {
    /// The bytes so far.
    pub buf: Vec<u8>,
}

impl Out {
    /// An empty body with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Out {
        Out {
            buf: Vec::with_capacity(n),
        }
    }

    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Out {
        self.buf.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Out {
        self.buf.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// Appends `struct fuse_attr`.
    pub fn attr(&mut self, a: &WireAttr) -> &mut Out {
        self.u64(a.ino.get()).u64(a.size).u64(a.blocks);
        self.u64(a.atime.0).u64(a.mtime.0).u64(a.ctime.0);
        self.u32(a.atime.1).u32(a.mtime.1).u32(a.ctime.1);
        self.u32(a.mode)
            .u32(a.nlink)
            .u32(a.uid)
            .u32(a.gid)
            .u32(a.rdev);
        self.u32(a.blksize).u32(0)
    }

    /// Appends `struct fuse_entry_out`: node `nodeid`, cached for `ttl`, showing `attr`.
    pub fn entry(&mut self, nodeid: NodeId, ttl: Duration, attr: &WireAttr) -> &mut Out {
        self.u64(nodeid.get()).u64(0);
        self.u64(ttl.as_secs()).u64(ttl.as_secs());
        self.u32(ttl.subsec_nanos()).u32(ttl.subsec_nanos());
        self.attr(attr)
    }

    /// Appends `struct fuse_attr_out`.
    pub fn attr_out(&mut self, ttl: Duration, attr: &WireAttr) -> &mut Out {
        self.u64(ttl.as_secs()).u32(ttl.subsec_nanos()).u32(0);
        self.attr(attr)
    }

    /// Appends `struct fuse_open_out`.
    pub fn open(&mut self, fh: Fh, flags: u32, backing_id: u32) -> &mut Out {
        self.u64(fh.get()).u32(flags).u32(backing_id)
    }
}

/// Size of `struct fuse_entry_out`.
pub const ENTRY_OUT_LEN: usize = 128;
/// Size of `struct fuse_dirent` without its name.
const DIRENT_LEN: usize = 24;

/// Directory entries for a READDIR or READDIRPLUS reply, at most `max` bytes.
#[derive(Debug)]
pub struct DirBuf {
    out: Out,
    max: usize,
}

impl DirBuf {
    /// An empty listing reply of at most `max` bytes.
    pub fn new(max: usize) -> DirBuf {
        DirBuf {
            out: Out::with_capacity(max.min(64 * 1024)),
            max,
        }
    }

    /// Appends `struct fuse_dirent` (`d_ino`, the offset of the next entry, the type from
    /// `mode`, the name); false (and nothing added) when it does not fit.
    pub fn push(&mut self, ino: Ino, next: u64, mode: u32, name: &OsStr) -> bool {
        let name = name.as_bytes();
        let len = (DIRENT_LEN + name.len()).next_multiple_of(8);
        if self.out.buf.len() + len > self.max {
            return false;
        }
        self.dirent(ino, next, mode, name);
        true
    }

    /// Appends `struct fuse_direntplus`: the entry of node `nodeid` (a lookup the kernel
    /// counts when `nodeid` is not 0), then the dirent; false when it does not fit.
    pub fn push_plus(
        &mut self,
        nodeid: NodeId,
        ttl: Duration,
        attr: &WireAttr,
        next: u64,
        name: &OsStr,
    ) -> bool {
        let name = name.as_bytes();
        let len = (ENTRY_OUT_LEN + DIRENT_LEN + name.len()).next_multiple_of(8);
        if self.out.buf.len() + len > self.max {
            return false;
        }
        self.out.entry(nodeid, ttl, attr);
        self.dirent(attr.ino, next, attr.mode, name);
        true
    }

    fn dirent(&mut self, ino: Ino, next: u64, mode: u32, name: &[u8]) {
        let start = self.out.buf.len();
        self.out.u64(ino.get()).u64(next);
        self.out
            .u32(name.len() as u32)
            .u32((mode & libc::S_IFMT) >> 12);
        self.out.buf.extend_from_slice(name);
        let padded = (DIRENT_LEN + name.len()).next_multiple_of(8);
        self.out.buf.resize(start + padded, 0);
    }

    /// The reply body.
    pub fn into_bytes(self) -> Vec<u8> {
        self.out.buf
    }
}

/// The reply header for request `unique` (`struct fuse_out_header`, encoded in `sys`, which
/// writes notifications with it too).
pub use crate::sys::fuse_out_header as out_header;

#[cfg(test)]
mod tests {
    use super::*;

    fn request(opcode: u32, nodeid: u64, args: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((IN_HEADER_LEN + args.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&opcode.to_ne_bytes());
        b.extend_from_slice(&7u64.to_ne_bytes());
        b.extend_from_slice(&nodeid.to_ne_bytes());
        for v in [1000u32, 100, 42, 0] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(args);
        b
    }

    #[test]
    fn header_and_names_parse() {
        let buf = request(op::RENAME, 5, b"\x09\0\0\0\0\0\0\0old\0new\0");
        let (h, mut a) = parse_request(&buf).unwrap();
        assert_eq!((h.opcode, h.unique, h.nodeid.get()), (op::RENAME, 7, 5));
        assert_eq!((h.uid, h.gid, h.pid), (1000, 100, 42));
        assert_eq!(a.u64().unwrap(), 9);
        assert_eq!(a.name().unwrap(), "old");
        assert_eq!(a.name().unwrap(), "new");
        assert_eq!(a.name(), Err(Malformed));
    }

    #[test]
    fn short_or_lying_requests_are_malformed() {
        assert_eq!(parse_request(&[0u8; 20]).map(|_| ()), Err(Malformed));
        let mut buf = request(op::LOOKUP, 1, b"x\0");
        buf[0] = 200; // longer than what was read
        assert_eq!(parse_request(&buf).map(|_| ()), Err(Malformed));
        let buf = request(op::LOOKUP, 1, b"x");
        assert_eq!(parse_request(&buf).unwrap().1.name(), Err(Malformed));
    }

    #[test]
    fn extensions_are_cut_off() {
        let mut args = b"name\0\0\0\0".to_vec();
        args.extend_from_slice(&[0xAA; 8]);
        let mut buf = request(op::MKDIR, 1, &args);
        buf[36] = 1; // total_extlen: one 8-byte unit
        let (_, mut a) = parse_request(&buf).unwrap();
        assert_eq!(a.rest(), b"name\0\0\0\0");
    }

    #[test]
    fn entry_keeps_node_and_st_ino_apart() {
        let attr = WireAttr {
            ino: Ino::from_node_number(77),
            mode: libc::S_IFREG | 0o644,
            nlink: 2,
            ..WireAttr::default()
        };
        let mut o = Out::default();
        o.entry(NodeId::from_wire(5), Duration::from_millis(1500), &attr);
        assert_eq!(o.buf.len(), ENTRY_OUT_LEN);
        assert_eq!(&o.buf[0..8], &5u64.to_ne_bytes());
        assert_eq!(&o.buf[16..24], &1u64.to_ne_bytes());
        assert_eq!(&o.buf[32..36], &500_000_000u32.to_ne_bytes());
        assert_eq!(&o.buf[40..48], &77u64.to_ne_bytes());
    }

    #[test]
    fn dirents_are_padded_and_bounded() {
        let mut d = DirBuf::new(80);
        let ino = Ino::from_node_number;
        assert!(d.push(ino(3), 1, libc::S_IFDIR, OsStr::new(".")));
        assert!(d.push(ino(4), 2, libc::S_IFREG, OsStr::new("abcdefghi")));
        assert!(!d.push(ino(5), 3, libc::S_IFREG, OsStr::new("x")));
        let b = d.into_bytes();
        assert_eq!(b.len(), 32 + 40);
        assert_eq!(&b[16..20], &1u32.to_ne_bytes());
        assert_eq!(&b[20..24], &4u32.to_ne_bytes());
        assert_eq!(&b[48..52], &9u32.to_ne_bytes());
        assert_eq!(&b[52..56], &8u32.to_ne_bytes());
    }

    #[test]
    fn times_before_1970_round_trip() {
        for t in [
            SystemTime::UNIX_EPOCH + Duration::new(5, 7),
            SystemTime::UNIX_EPOCH - Duration::new(5, 7),
            SystemTime::UNIX_EPOCH - Duration::new(5, 0),
        ] {
            let (s, n) = time_parts(t);
            assert_eq!(time_from_parts(s, n), t);
        }
        assert_eq!(
            time_parts(SystemTime::UNIX_EPOCH - Duration::new(1, 250_000_000)),
            ((-2i64) as u64, 750_000_000)
        );
    }
}
