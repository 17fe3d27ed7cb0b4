//! Reading: open for read, readlink, xattrs, statfs.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;

use rustix::fs::OFlags;

use super::{Error, Overlay, Result};
use crate::layer::format::XattrTarget;
use crate::sys::{self, FileKind};

/// An open file on a layer.
#[derive(Debug)]
pub struct OpenedFile {
    /// The layer file, opened for reading.
    pub fd: OwnedFd,
    /// True when the file lives in a read-only lower layer, so its pages can stay cached.
    pub immutable: bool,
}

/// Filesystem statistics for `statfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

const WRITE_FLAGS: i32 = libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND;

impl Overlay {
    /// Opens node `ino` with the `open(2)` flags the caller used.
    pub fn open(&self, ino: u64, flags: i32) -> Result<OpenedFile> {
        let node = self.named(ino)?;
        if flags & WRITE_FLAGS != 0 {
            if node.kind == FileKind::Directory {
                return Err(Error::IsDir);
            }
            return Ok(OpenedFile {
                fd: self.open_for_write(ino, flags)?,
                immutable: false,
            });
        }
        let top = node
            .with_location(|l| l.top())
            .ok_or(Error::StaleNode(ino))?;
        let layer = self.layers.get(top).ok_or(Error::StaleNode(ino))?;
        let path = self.rel_path(&node)?;
        let pass = flags & (libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME);
        let oflags = OFlags::RDONLY | OFlags::from_bits_retain(pass as u32);
        let opened = match sys::open_beneath(layer.root(), &path, oflags) {
            // O_NOATIME is refused on files the daemon does not own; retry without it.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && pass & libc::O_NOATIME != 0 => {
                sys::open_beneath(layer.root(), &path, oflags - OFlags::NOATIME)
            }
            r => r,
        };
        let fd = self.still_named(&node, opened.map_err(Error::from))?;
        Ok(OpenedFile {
            fd,
            immutable: !layer.upper,
        })
    }

    /// An fd for FUSE passthrough of regular file `ino`, and whether it is the upper copy:
    /// the upper copy opened read-write (every open of the node shares it, writers
    /// included), else its topmost copy opened read-only (only readers open a lower copy).
    pub fn backing_fd(&self, ino: u64) -> Result<(OwnedFd, bool)> {
        let node = self.named(ino)?;
        if node.kind != FileKind::Regular {
            return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let top = node
            .with_location(|l| l.top())
            .ok_or(Error::StaleNode(ino))?;
        let layer = self.layers.get(top).ok_or(Error::StaleNode(ino))?;
        let path = self.rel_path(&node)?;
        let flags = if layer.upper && !self.opts.read_only {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        let fd = self.still_named(
            &node,
            sys::open_beneath(layer.root(), &path, flags).map_err(Error::from),
        )?;
        Ok((fd, layer.upper && !self.opts.read_only))
    }

    /// The target of symlink `ino`, as stored in its layer (never followed).
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.named(ino)?;
        if node.kind != FileKind::Symlink {
            return Err(Error::NotSymlink);
        }
        Ok(self.object_at(&node)?.read_link()?)
    }

    /// The value of xattr `name` on `ino`. Overlay-private attributes do not exist here.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        if self.opts.no_xattrs || self.acl_refused(name) {
            return Err(Error::XattrUnsupported);
        }
        let XattrTarget::Stored(stored) = self.xattr_names().to_layer(name) else {
            // As the kernel answers for private names: there is no such attribute.
            return Err(Error::NoXattr);
        };
        let node = self.named(ino)?;
        let at = self.object_at(&node)?;
        let mut value = at.object().get_xattr(&stored)?.ok_or(Error::NoXattr)?;
        if name == crate::layer::idmap::ACCESS_ACL {
            // Where the mode lives in an override, the ACL entries that stand for the
            // permission bits follow it (the layer file's own mode may be anything).
            if let Some(o) = self.read_override(at.object()) {
                if let Some(v) = crate::layer::idmap::acl_with_mode(&value, o.perm) {
                    value = v;
                }
            }
        }
        if crate::layer::idmap::is_acl_name(name) && !self.idmap.is_identity() {
            return Ok(self.idmap.acl_to_mount(&value));
        }
        Ok(value)
    }

    /// The xattr names of `ino` (kernel list format), overlay-private ones left out.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        if self.opts.no_xattrs {
            return Err(Error::XattrUnsupported);
        }
        let node = self.named(ino)?;
        let raw = match self.object_at(&node)?.object().list_xattr() {
            Ok(r) => r,
            Err(e) if crate::layer::is_unsupported(&e) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let names = self.xattr_names();
        let mut out = Vec::with_capacity(raw.len());
        for name in sys::split_xattr_list(&raw) {
            if self.acl_refused(name) {
                continue;
            }
            if let Some(shown) = names.to_mount(name) {
                out.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(&*shown));
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Statistics of the filesystem writes go to (the upper layer's, else the top lower's).
    pub fn statfs(&self) -> Result<StatFs> {
        let layer = self.layers.all().first().ok_or(Error::NotFound)?;
        let s = sys::statvfs(layer.root())?;
        Ok(StatFs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        })
    }

    /// Checks that `ino` exists (permission checks are the kernel's, `default_permissions`);
    /// write access on a read-only union is refused.
    pub fn access(&self, ino: u64, mask: i32) -> Result<()> {
        self.node(ino)?;
        if mask & libc::W_OK != 0 && self.opts.read_only {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }
}
