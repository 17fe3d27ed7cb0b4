//! Writes one layer tar into a directory, confined beneath it.
//!
//! Image archives are untrusted. Nothing here resolves a path as a whole: each entry's parent
//! is reached one component at a time from the layer's root fd with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, so an entry beneath a symlink (or a non-directory) is refused, and
//! objects are created with `*at` calls that never follow a final symlink (`O_EXCL |
//! O_NOFOLLOW` for files). `..` components, absolute paths and hard links leaving the layer
//! are refused before anything is touched.
//!
//! OCI whiteouts become the overlay format the daemon writes: as root a char device 0/0 for
//! `.wh.NAME` and `trusted.overlay.opaque=y` for `.wh..wh..opq`; rootless the `.wh.` files
//! are kept as they are (the daemon reads both forms).

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::OFlags;
use stratafs::layer::format::{self, OPAQUE_MARKER, OPAQUE_XATTRS};
use stratafs::layer::WhiteoutFormat;
use stratafs::sys::{self, SetTime};

use crate::error::{cut_bytes, quote_bytes, Error, Result};
use crate::limits::{self, human};

/// What the unpacker may do.
#[derive(Debug, Clone)]
pub struct Options {
    /// How whiteouts and opaque directories are written.
    pub whiteouts: WhiteoutFormat,
    /// Device nodes may be created (root only).
    pub devices: bool,
    /// Ownership is applied (root only); otherwise the unpacking user owns everything.
    pub chown: bool,
    /// The layer's name in messages (a short digest).
    pub layer: String,
    /// The most file data the layer may hold, sparse holes counted (`--max-layer-size`).
    pub max_bytes: u64,
}

impl Options {
    /// The options for the current user: root writes the kernel formats, owners and device
    /// nodes; anyone else (or `rootless`) the `.wh.` format, and refuses device nodes.
    pub fn for_user(rootless: bool, layer: String) -> Options {
        let root = !rootless && rustix::process::geteuid().is_root();
        Options {
            whiteouts: if root {
                WhiteoutFormat::CharDevice
            } else {
                WhiteoutFormat::DotWh
            },
            devices: root,
            chown: root,
            layer,
            max_bytes: u64::MAX,
        }
    }
}

/// What was unpacked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries of the tar.
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// The longest path (and hard link target) an entry may have: what the system can resolve
/// in one call. It also bounds how deep one entry can make the tree, and so the work of
/// reaching its parent one component at a time.
const PATH_MAX: usize = 4096;

/// Why a path of the archive cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadPath {
    /// It starts with `/`.
    Absolute,
    /// A `..` component.
    Escapes,
}

/// A path of the archive split into components (no `.`, no empty ones).
fn split_path(raw: &[u8]) -> std::result::Result<Vec<Vec<u8>>, BadPath> {
    if raw.first() == Some(&b'/') {
        return Err(BadPath::Absolute);
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(BadPath::Escapes),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// How a parent directory is reached.
#[derive(Debug, Clone, Copy)]
enum Reach<'t> {
    /// For a new entry: missing directories are made.
    Create,
    /// For the target of a hard link: it must all be there.
    LinkTarget(&'t [u8]),
}

fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn mtime_of(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// Unpacks a layer tar into the directory `root`.
pub struct Unpacker<'a> {
    root: BorrowedFd<'a>,
    opts: Options,
    /// The last parent directory opened, by path: consecutive entries share it.
    cache: Option<(Vec<Vec<u8>>, OwnedFd)>,
    /// Directory modes and mtimes, applied once every child is written (a read-only
    /// directory would stop an unprivileged unpacker from filling it).
    dirs: Vec<(Vec<Vec<u8>>, u32, SystemTime)>,
    stats: Stats,
}

/// One entry's metadata, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<'a> Unpacker<'a> {
    /// An unpacker writing beneath `root`.
    pub fn new(root: BorrowedFd<'a>, opts: Options) -> Unpacker<'a> {
        Unpacker {
            root,
            opts,
            cache: None,
            dirs: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn refuse(&self, entry: &[u8], problem: impl Into<String>) -> Error {
        Error::Entry {
            layer: self.opts.layer.clone(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            problem: problem.into(),
        }
    }

    fn corrupt(&self, e: io::Error) -> Error {
        match limits::refusal(&e) {
            Some(r) => Error::invalid(format!("layer {}: {r}", self.opts.layer)),
            None => Error::invalid(format!(
                "layer {}: the blob is corrupt or truncated: {e}",
                self.opts.layer
            )),
        }
    }

    /// Refuses a file of `size` bytes (holes counted) that would take the layer past its
    /// size limit, or not fit in what the store's filesystem has free.
    fn check_room(&self, size: u64, raw: &[u8]) -> Result<()> {
        let total = self.stats.bytes.saturating_add(size);
        if total > self.opts.max_bytes {
            return Err(self.refuse(
                raw,
                format!(
                    "is {} ({size} bytes): the layer would hold {}, over its size limit of {} (--max-layer-size)",
                    human(size),
                    human(total),
                    human(self.opts.max_bytes)
                ),
            ));
        }
        let (free, reserve) = limits::free_space(self.root)
            .map_err(|e| self.refuse(raw, format!("cannot be checked for space: {e}")))?;
        if size > free.saturating_sub(reserve) {
            return Err(self.refuse(
                raw,
                format!(
                    "is {} ({size} bytes): the store's filesystem has {} free and keeps {} of it",
                    human(size),
                    human(free),
                    human(reserve)
                ),
            ));
        }
        Ok(())
    }

    /// Copies an entry's data into `file`: errors reading the archive are the archive's,
    /// errors writing are the store's. A sparse entry's holes stay holes.
    fn copy_data<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut std::fs::File,
        sparse: bool,
        raw: &[u8],
    ) -> Result<u64> {
        use std::io::{Seek, SeekFrom, Write};
        let mut buf = vec![0u8; 64 * 1024];
        let mut got: u64 = 0;
        let mut hole = false;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.corrupt(e)),
            };
            let chunk = &buf[..n];
            let w = if sparse && chunk.iter().all(|b| *b == 0) {
                hole = true;
                file.seek(SeekFrom::Current(n as i64)).map(drop)
            } else {
                hole = false;
                file.write_all(chunk)
            };
            w.map_err(|e| self.write_failed(e, raw))?;
            got += n as u64;
        }
        if hole {
            file.set_len(got).map_err(|e| self.write_failed(e, raw))?;
        }
        Ok(got)
    }

    fn write_failed(&self, e: io::Error, raw: &[u8]) -> Error {
        if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
            self.refuse(raw, "cannot be written: the store's filesystem is full")
        } else {
            self.refuse(raw, format!("cannot be written: {e}"))
        }
    }

    /// Unpacks every entry of `archive`, then restores directory times.
    pub fn run<R: Read>(mut self, archive: &mut tar::Archive<R>) -> Result<Stats> {
        let entries = archive.entries().map_err(|e| self.corrupt(e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.corrupt(e))?;
            self.stats.entries += 1;
            self.entry(&mut entry)?;
        }
        self.finish_dirs()?;
        Ok(self.stats)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        use tar::EntryType as T;
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, T::XGlobalHeader) {
            return Ok(());
        }
        if raw.len() > PATH_MAX {
            return Err(self.refuse(
                &raw,
                format!(
                    "is a path of {} bytes, longer than PATH_MAX ({PATH_MAX})",
                    raw.len()
                ),
            ));
        }
        let comps = split_path(&raw).map_err(|p| {
            self.refuse(
                &raw,
                match p {
                    BadPath::Absolute => "is an absolute path",
                    BadPath::Escapes => "escapes the layer",
                },
            )
        })?;
        let meta = self.meta(entry, &raw)?;
        let Some((name, parents)) = comps.split_last() else {
            // The layer's root itself.
            if kind != T::Directory {
                return Err(self.refuse(&raw, "would replace the layer's root directory"));
            }
            let root = self.root;
            self.apply_meta(root, OsStr::new(""), &meta, Obj::Dir, &raw)?;
            self.dirs.push((Vec::new(), meta.mode, meta.mtime));
            return Ok(());
        };
        let parent = self.open_parent(parents, &raw, Reach::Create)?;
        let pfd = parent.as_fd();
        if name.as_slice() == OPAQUE_MARKER.as_bytes() {
            return self.opaque_marker(pfd, parents, &raw);
        }
        if let Some(target) = format::whiteout_target(os(name)) {
            let target = target.as_bytes().to_vec();
            return self.whiteout(pfd, name, &target, &raw);
        }
        if name.starts_with(format::WHITEOUT_PREFIX) {
            return Err(self.refuse(&raw, "is a whiteout that names nothing"));
        }
        let name_os = os(name);
        match kind {
            T::Directory => {
                let existed = self.clear(pfd, name_os, true, &raw)?;
                if existed != Existing::Dir {
                    sys::mkdir_at(pfd, name_os, 0o700)
                        .map_err(|e| self.refuse(&raw, format!("cannot be created: {e}")))?;
                }
                if existed == Existing::Whiteout || self.dot_whiteout_exists(pfd, name_os)? {
                    // Deleted and made again in this layer: it replaces the directory below.
                    self.mark_opaque(pfd, name_os, &raw)?;
                }
                self.apply_meta(pfd, name_os, &meta, Obj::Dir, &raw)?;
                let mut path = parents.to_vec();
                path.push(name.clone());
                self.dirs.push((path, meta.mode, meta.mtime));
                self.forget_cache_under(parents, name);
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.check_room(entry.size(), &raw)?;
                self.clear(pfd, name_os, false, &raw)?;
                let fd = sys::create_file(pfd, name_os, OFlags::WRONLY, 0o600)
                    .map_err(|e| self.refuse(&raw, format!("cannot be created: {e}")))?;
                let mut file = std::fs::File::from(fd);
                let want = entry.size();
                let got = self.copy_data(entry, &mut file, kind == T::GNUSparse, &raw)?;
                if got != want {
                    return Err(self.refuse(
                        &raw,
                        format!("is truncated: {got} of {want} bytes in the archive"),
                    ));
                }
                self.stats.bytes += got;
                drop(file);
                self.apply_meta(pfd, name_os, &meta, Obj::Other, &raw)?;
                self.set_time(pfd, name_os, meta.mtime, &raw)?;
            }
            T::Symlink => {
                let Some(target) = entry.link_name_bytes().map(|t| t.into_owned()) else {
                    return Err(self.refuse(&raw, "is a symlink without a target"));
                };
                self.clear(pfd, name_os, false, &raw)?;
                sys::symlink_at(os(&target), pfd, name_os)
                    .map_err(|e| self.refuse(&raw, format!("cannot be created: {e}")))?;
                self.apply_meta(pfd, name_os, &meta, Obj::Symlink, &raw)?;
                self.set_time(pfd, name_os, meta.mtime, &raw)?;
            }
            T::Link => {
                let Some(target) = entry.link_name_bytes().map(|t| t.into_owned()) else {
                    return Err(self.refuse(&raw, "is a hard link without a target"));
                };
                self.hard_link(pfd, name, &target, &raw)?;
            }
            T::Char | T::Block | T::Fifo => {
                let ftype = match kind {
                    T::Char => rustix::fs::FileType::CharacterDevice,
                    T::Block => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Fifo,
                };
                let mut rdev = 0;
                if kind != T::Fifo {
                    if !self.opts.devices {
                        return Err(self.refuse(&raw, "is a device node: only root may unpack one"));
                    }
                    let h = entry.header();
                    let major = h.device_major().ok().flatten().unwrap_or(0);
                    let minor = h.device_minor().ok().flatten().unwrap_or(0);
                    rdev = rustix::fs::makedev(major, minor);
                }
                self.clear(pfd, name_os, false, &raw)?;
                sys::mknod_at(pfd, name_os, ftype.as_raw_mode() | 0o600, rdev)
                    .map_err(|e| self.refuse(&raw, format!("cannot be created: {e}")))?;
                self.apply_meta(pfd, name_os, &meta, Obj::Other, &raw)?;
                self.set_time(pfd, name_os, meta.mtime, &raw)?;
            }
            other => {
                return Err(self.refuse(&raw, format!("has an unsupported type ({other:?})")));
            }
        }
        Ok(())
    }

    /// The metadata an entry asks for: header fields, overridden by PAX records.
    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<Meta> {
        let h = entry.header();
        let bad = |what: &str, e: io::Error| self.refuse(raw, format!("has a bad {what}: {e}"));
        let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let mut uid = h.uid().map_err(|e| bad("uid", e))?;
        let mut gid = h.gid().map_err(|e| bad("gid", e))?;
        let mut mtime = mtime_of(h.mtime().map_err(|e| bad("mtime", e))?, 0);
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|e| self.corrupt(e))? {
            for ext in pax {
                let ext = ext.map_err(|e| self.corrupt(e))?;
                let key = ext.key_bytes();
                let val = ext.value_bytes();
                let num = || {
                    std::str::from_utf8(val)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                match key {
                    b"uid" => {
                        uid = num()
                            .ok_or_else(|| bad("PAX uid", io::ErrorKind::InvalidData.into()))?
                    }
                    b"gid" => {
                        gid = num()
                            .ok_or_else(|| bad("PAX gid", io::ErrorKind::InvalidData.into()))?
                    }
                    b"mtime" => {
                        if let Some(t) = parse_pax_time(val) {
                            mtime = t;
                        }
                    }
                    _ => {
                        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                            xattrs.push((name.to_vec(), val.to_vec()));
                        }
                    }
                }
            }
        }
        let id = |v: u64, what: &str| {
            u32::try_from(v)
                .map_err(|_| self.refuse(raw, format!("has a {what} out of range ({v})")))
        };
        Ok(Meta {
            mode,
            uid: id(uid, "uid")?,
            gid: id(gid, "gid")?,
            mtime,
            xattrs,
        })
    }

    /// Owner, mode and xattrs of `name` under `dir` (`""`: `dir` itself), in the order that
    /// keeps them: chown clears setuid bits and capabilities, so it goes first. A
    /// directory's mode waits for [`Unpacker::finish_dirs`]; a symlink has none.
    fn apply_meta(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Meta,
        obj: Obj,
        raw: &[u8],
    ) -> Result<()> {
        let symlink = obj == Obj::Symlink;
        if self.opts.chown {
            sys::chown_at(dir, name, Some(meta.uid), Some(meta.gid))
                .map_err(|e| self.refuse(raw, format!("cannot be given its owner: {e}")))?;
        }
        if obj == Obj::Other {
            sys::chmod_at(dir, name, meta.mode)
                .map_err(|e| self.refuse(raw, format!("cannot be given its mode: {e}")))?;
        }
        for (key, val) in &meta.xattrs {
            let key_os = os(key);
            if format::is_private_xattr(key_os) {
                // Overlay metadata is the store's to write, never an archive's.
                continue;
            }
            if !self.opts.chown && (!key.starts_with(b"user.") || symlink) {
                // An unprivileged user can set only user.* xattrs, and not on symlinks.
                continue;
            }
            let r = if name.is_empty() {
                sys::set_xattr(dir, key_os, val, 0)
            } else {
                sys::set_xattr_at(dir, name, key_os, val, 0)
            };
            match r {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(rustix::io::Errno::NOTSUP.raw_os_error()) => {}
                Err(e) => {
                    return Err(self.refuse(
                        raw,
                        format!("cannot be given xattr {}: {e}", quote_bytes(key)),
                    ))
                }
            }
        }
        Ok(())
    }

    fn set_time(&self, dir: BorrowedFd<'_>, name: &OsStr, t: SystemTime, raw: &[u8]) -> Result<()> {
        sys::set_times_at(dir, name, SetTime::At(t), SetTime::At(t))
            .map_err(|e| self.refuse(raw, format!("cannot be given its mtime: {e}")))
    }

    /// Opens the directory `comps` beneath the root, one component at a time, creating
    /// missing ones (0755) when `create`. A symlink or a non-directory on the way is refused.
    fn open_parent(&mut self, comps: &[Vec<u8>], raw: &[u8], reach: Reach<'_>) -> Result<OwnedFd> {
        if let Some((path, fd)) = &self.cache {
            if path.as_slice() == comps {
                return fd.try_clone().map_err(|e| self.corrupt(e));
            }
        }
        let mut cur: OwnedFd = sys::open_dir_path(self.root, b"")
            .map_err(|e| self.refuse(raw, format!("cannot open the layer: {e}")))?;
        for (i, c) in comps.iter().enumerate() {
            let shown = || cut_bytes(&comps[..=i].join(&b'/'));
            let next = match sys::open_dir_path(cur.as_fd(), c) {
                Ok(fd) => fd,
                Err(e) if errno(&e) == Some(libc_enoent()) && matches!(reach, Reach::Create) => {
                    sys::mkdir_at(cur.as_fd(), os(c), 0o755).map_err(|e| {
                        self.refuse(
                            raw,
                            format!("needs directory {} that cannot be made: {e}", shown()),
                        )
                    })?;
                    sys::chmod_at(cur.as_fd(), os(c), 0o755).map_err(|e| {
                        self.refuse(raw, format!("needs directory {}: {e}", shown()))
                    })?;
                    sys::open_dir_path(cur.as_fd(), c).map_err(|e| {
                        self.refuse(raw, format!("needs directory {}: {e}", shown()))
                    })?
                }
                Err(e) if errno(&e) == Some(libc_enoent()) => {
                    return Err(self.refuse(raw, link_problem(reach, "which is not in the layer")))
                }
                Err(e) => {
                    let what = match sys::stat_at(cur.as_fd(), os(c)) {
                        Ok(st) if st.kind() == Some(sys::FileKind::Symlink) => link_problem(
                            reach,
                            &format!("which lies beneath a symlink ({})", shown()),
                        ),
                        Ok(st) if !st.is_dir() => link_problem(
                            reach,
                            &format!("which lies beneath a non-directory ({})", shown()),
                        ),
                        _ => format!("cannot reach {}: {e}", shown()),
                    };
                    return Err(self.refuse(raw, what));
                }
            };
            cur = next;
        }
        let keep = cur.try_clone().map_err(|e| self.corrupt(e))?;
        self.cache = Some((comps.to_vec(), keep));
        Ok(cur)
    }

    /// Drops the cached parent when it lies at or under `parents/name`, which is being
    /// replaced.
    fn forget_cache_under(&mut self, parents: &[Vec<u8>], name: &[u8]) {
        if let Some((path, _)) = &self.cache {
            let n = parents.len();
            if path.len() > n && &path[..n] == parents && path[n] == name {
                self.cache = None;
            }
        }
    }

    /// Makes room for a new object `name`: an existing directory stays when the new one is a
    /// directory too (tar semantics: the later entry's metadata wins); anything else goes.
    fn clear(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        new_dir: bool,
        raw: &[u8],
    ) -> Result<Existing> {
        let st = match sys::stat_at(dir, name) {
            Ok(st) => st,
            Err(e) if errno(&e) == Some(libc_enoent()) => return Ok(Existing::None),
            Err(e) => return Err(self.refuse(raw, format!("cannot be checked: {e}"))),
        };
        if st.is_dir() && new_dir {
            return Ok(Existing::Dir);
        }
        let whiteout = format::is_whiteout_stat(&st);
        let r = if st.is_dir() {
            self.cache = None;
            crate::tree::remove_tree_at(dir, name)
        } else {
            sys::unlink_at(dir, name, false)
        };
        r.map_err(|e| {
            self.refuse(
                raw,
                format!("cannot replace what an earlier entry made: {e}"),
            )
        })?;
        Ok(if whiteout {
            Existing::Whiteout
        } else {
            Existing::Replaced
        })
    }

    fn dot_whiteout_exists(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
        if self.opts.whiteouts != WhiteoutFormat::DotWh {
            return Ok(false);
        }
        stratafs::layer::dot_whiteout_exists(dir, name)
            .map_err(|e| self.refuse(name.as_bytes(), format!("cannot be checked: {e}")))
    }

    /// `.wh.NAME`: hides NAME in the layers below.
    fn whiteout(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        target: &[u8],
        raw: &[u8],
    ) -> Result<()> {
        if target == b"." || target == b".." {
            return Err(self.refuse(raw, "is a whiteout of . or .."));
        }
        let target_os = os(target);
        match self.opts.whiteouts {
            WhiteoutFormat::DotWh => {
                self.clear(dir, os(name), false, raw)?;
                let fd = sys::create_file(dir, os(name), OFlags::WRONLY, 0o600)
                    .map_err(|e| self.refuse(raw, format!("cannot be created: {e}")))?;
                drop(fd);
                if let Ok(st) = sys::stat_at(dir, target_os) {
                    if st.is_dir() {
                        self.mark_opaque(dir, target_os, raw)?;
                    }
                }
            }
            WhiteoutFormat::CharDevice => match sys::stat_at(dir, target_os) {
                // The object was made in this very layer: it already hides what is below,
                // a directory only once it is opaque.
                Ok(st) if st.is_dir() => self.mark_opaque(dir, target_os, raw)?,
                Ok(_) => {}
                Err(_) => {
                    sys::mknod_at(
                        dir,
                        target_os,
                        rustix::fs::FileType::CharacterDevice.as_raw_mode(),
                        0,
                    )
                    .map_err(|e| self.refuse(raw, format!("cannot be made a whiteout: {e}")))?;
                }
            },
        }
        Ok(())
    }

    /// `.wh..wh..opq`: the directory hides the layers below.
    fn opaque_marker(
        &mut self,
        dir: BorrowedFd<'_>,
        parents: &[Vec<u8>],
        raw: &[u8],
    ) -> Result<()> {
        match self.opts.whiteouts {
            WhiteoutFormat::DotWh => {
                let marker = OsStr::new(OPAQUE_MARKER);
                self.clear(dir, marker, false, raw)?;
                let fd = sys::create_file(dir, marker, OFlags::WRONLY, 0o600)
                    .map_err(|e| self.refuse(raw, format!("cannot be created: {e}")))?;
                drop(fd);
                Ok(())
            }
            WhiteoutFormat::CharDevice => {
                let _ = parents;
                sys::set_xattr(dir, OsStr::new(OPAQUE_XATTRS[0]), b"y", 0)
                    .map_err(|e| self.refuse(raw, format!("cannot mark its directory opaque: {e}")))
            }
        }
    }

    /// Marks directory `name` under `dir` opaque, in this layer's format.
    fn mark_opaque(&mut self, dir: BorrowedFd<'_>, name: &OsStr, raw: &[u8]) -> Result<()> {
        match self.opts.whiteouts {
            WhiteoutFormat::CharDevice => {
                sys::set_xattr_at(dir, name, OsStr::new(OPAQUE_XATTRS[0]), b"y", 0)
                    .map_err(|e| self.refuse(raw, format!("cannot be marked opaque: {e}")))
            }
            WhiteoutFormat::DotWh => {
                let sub = sys::open_dir_path(dir, name.as_bytes())
                    .map_err(|e| self.refuse(raw, format!("cannot be marked opaque: {e}")))?;
                match sys::create_file(
                    sub.as_fd(),
                    OsStr::new(OPAQUE_MARKER),
                    OFlags::WRONLY,
                    0o600,
                ) {
                    Ok(_) => Ok(()),
                    Err(e) if errno(&e) == Some(rustix::io::Errno::EXIST.raw_os_error()) => Ok(()),
                    Err(e) => Err(self.refuse(raw, format!("cannot be marked opaque: {e}"))),
                }
            }
        }
    }

    /// A hard link to an object made earlier in this layer.
    fn hard_link(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        target: &[u8],
        raw: &[u8],
    ) -> Result<()> {
        let reach = Reach::LinkTarget(target);
        if target.len() > PATH_MAX {
            return Err(self.refuse(
                raw,
                format!(
                    "is a hard link to a path of {} bytes, longer than PATH_MAX ({PATH_MAX})",
                    target.len()
                ),
            ));
        }
        let tcomps = split_path(target).map_err(|p| {
            self.refuse(
                raw,
                link_problem(
                    reach,
                    match p {
                        BadPath::Absolute => "an absolute path",
                        BadPath::Escapes => "which escapes the layer",
                    },
                ),
            )
        })?;
        let Some((tname, tparents)) = tcomps.split_last() else {
            return Err(self.refuse(raw, "is a hard link to the layer's root"));
        };
        let tdir = self.open_parent(tparents, raw, reach)?;
        let st = match sys::stat_at(tdir.as_fd(), os(tname)) {
            Ok(st) => st,
            Err(_) => {
                return Err(self.refuse(raw, link_problem(reach, "which is not in the layer")))
            }
        };
        if st.is_dir() {
            return Err(self.refuse(raw, "is a hard link to a directory"));
        }
        if let Ok(existing) = sys::stat_at(dir, os(name)) {
            if existing.ino == st.ino && existing.dev == st.dev {
                return Ok(());
            }
        }
        self.clear(dir, os(name), false, raw)?;
        sys::link_at(tdir.as_fd(), os(tname), dir, os(name))
            .map_err(|e| self.refuse(raw, format!("cannot be linked: {e}")))
    }

    /// Modes and mtimes of directories, deepest (latest) first.
    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        let mut seen = std::collections::HashSet::new();
        for (path, mode, t) in dirs.iter().rev() {
            // A directory named twice takes its later entry's metadata.
            if !seen.insert(path) {
                continue;
            }
            let set = |dir: BorrowedFd<'_>, name: &OsStr| -> io::Result<()> {
                let target = if name.is_empty() {
                    OsStr::new(".")
                } else {
                    name
                };
                sys::chmod_at(dir, target, *mode)?;
                sys::set_times_at(dir, name, SetTime::At(*t), SetTime::At(*t))
            };
            let r = match path.split_last() {
                None => set(self.root, OsStr::new("")),
                Some((name, parents)) => {
                    let joined = parents.join(&b'/');
                    match sys::open_dir_path(self.root, &joined) {
                        // The directory may have been replaced by a later entry.
                        Err(_) => continue,
                        Ok(fd) => match sys::stat_at(fd.as_fd(), os(name)) {
                            Ok(st) if st.is_dir() => set(fd.as_fd(), os(name)),
                            _ => continue,
                        },
                    }
                }
            };
            r.map_err(|e| {
                self.refuse(
                    &path.join(&b'/'),
                    format!("cannot be given its mode and mtime: {e}"),
                )
            })?;
        }
        Ok(())
    }
}

/// What metadata is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Obj {
    /// A directory: its mode is applied at the end.
    Dir,
    /// A symlink: no mode.
    Symlink,
    /// Anything else.
    Other,
}

/// What a new entry found at its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    None,
    Dir,
    Whiteout,
    Replaced,
}

/// The problem of an entry whose hard link target (or the target's path) is bad; for a
/// new entry, the problem itself.
fn link_problem(reach: Reach<'_>, problem: &str) -> String {
    match reach {
        Reach::Create => problem.trim_start_matches("which ").to_string(),
        Reach::LinkTarget(t) => format!("is a hard link to {}, {problem}", quote_bytes(t)),
    }
}

fn libc_enoent() -> i32 {
    rustix::io::Errno::NOENT.raw_os_error()
}

/// A PAX time: seconds with an optional fraction.
fn parse_pax_time(v: &[u8]) -> Option<SystemTime> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let secs: u64 = secs.parse().ok()?;
    let mut nanos: u32 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        let n: u32 = digits.parse().ok()?;
        nanos = n * 10u32.pow(9 - digits.len() as u32);
    }
    Some(mtime_of(secs, nanos))
}

/// Opens a fresh, empty layer directory for unpacking.
pub fn open_root(path: &std::path::Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::Io {
        what: format!("open {}", path.display()),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            split_path(b"./a//b/./c/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(split_path(b"/etc/passwd"), Err(BadPath::Absolute));
        assert_eq!(split_path(b"a/../../x"), Err(BadPath::Escapes));
        assert!(split_path(b"./").unwrap().is_empty());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"12.5"), Some(mtime_of(12, 500_000_000)));
        assert_eq!(parse_pax_time(b"7"), Some(mtime_of(7, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
