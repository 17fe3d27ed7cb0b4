//! Changing a file's data or metadata: open for write, setattr, xattrs, fsync. Each copies the
//! object up first (parents included), as the kernel does.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::OFlags;

use super::copyup::UPPER;
use super::{Attr, Context, Error, Overlay, Result};
use crate::inode::NodeId;
use crate::layer::format::XattrTarget;
use crate::sys::Object;
use crate::sys::{self, FileKind, SetTime};

/// The attribute changes of one `setattr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

impl Overlay {
    /// Opens `id` for writing (`O_WRONLY`/`O_RDWR`/`O_TRUNC`), copying it up first; an
    /// `O_TRUNC` open skips copying the data.
    pub fn open_for_write(&self, id: NodeId, flags: i32) -> Result<OwnedFd> {
        self.writable()?;
        let node = self.named(id)?;
        if node.kind == FileKind::Directory {
            return Err(Error::IsDir);
        }
        let trunc = flags & libc::O_TRUNC != 0;
        self.copy_up(&node, !trunc)?;
        let (dir, name) = self.still_named(&node, self.place_in(&node, UPPER))?;
        let mut of = match flags & libc::O_ACCMODE {
            libc::O_RDONLY => OFlags::RDONLY,
            // The kernel may read pages of a write-only file (page cache, writeback).
            _ => OFlags::RDWR,
        };
        if trunc {
            of |= OFlags::TRUNC;
        }
        if flags & libc::O_DIRECT != 0 {
            of |= OFlags::DIRECT;
        }
        if flags & libc::O_SYNC != 0 {
            of |= OFlags::SYNC;
        }
        let opened = match sys::open_beneath(dir.as_fd(), &name, of) {
            // A daemon without CAP_DAC_OVERRIDE may write but not read a file of mode 0200:
            // then the handle is write-only (a partial-page write through the writeback
            // cache would fail to read it, as on any filesystem that cannot).
            Err(e)
                if e.raw_os_error() == Some(libc::EACCES)
                    && flags & libc::O_ACCMODE == libc::O_WRONLY =>
            {
                sys::open_beneath(dir.as_fd(), &name, (of - OFlags::RDWR) | OFlags::WRONLY)
            }
            r => r,
        };
        self.still_named(&node, opened.map_err(Error::from))
    }

    /// Sets the inode flags of `id` (`FS_IOC_SETFLAGS`, `chattr`), on its upper copy: a
    /// lower object is copied up first, as the kernel's overlayfs does. (The kernel has
    /// checked the caller may: owner or `CAP_FOWNER`, `CAP_LINUX_IMMUTABLE` for `i`/`a`.)
    pub fn set_inode_flags(&self, id: NodeId, flags: u32) -> Result<()> {
        let fd = self.upper_for_ioctl(id)?;
        sys::set_inode_flags(fd.as_fd(), flags).ctx("set inode flags", "")?;
        self.attrs_changed(id);
        Ok(())
    }

    /// Sets the extended inode attributes of `id` (`FS_IOC_FSSETXATTR`) on its upper copy.
    pub fn set_fs_xattr(&self, id: NodeId, attr: [u8; sys::FSXATTR_SIZE]) -> Result<()> {
        let fd = self.upper_for_ioctl(id)?;
        sys::set_fs_xattr(fd.as_fd(), attr).ctx("set fsxattr", "")?;
        self.attrs_changed(id);
        Ok(())
    }

    /// `id`'s upper copy (made now if it has none), opened to take an ioctl.
    fn upper_for_ioctl(&self, id: NodeId) -> Result<OwnedFd> {
        self.writable()?;
        let node = self.named(id)?;
        if !matches!(node.kind, FileKind::Regular | FileKind::Directory) {
            return Err(Error::NoInodeFlags);
        }
        self.copy_up(&node, true)?;
        self.open_for_ioctl(&node, UPPER)
    }

    /// The upper directory of `id`'s parent and its name there (after a copy-up).
    fn upper_place(
        &self,
        node: &crate::inode::Node,
    ) -> Result<(std::sync::Arc<OwnedFd>, std::ffi::OsString)> {
        if Overlay::is_root(node) {
            return Ok((self.dir_fd(node, UPPER)?, std::ffi::OsString::new()));
        }
        let parent = self.node(node.parent())?;
        let pfd = self.dir_fd(&parent, UPPER)?;
        Ok((pfd, node.with_location(|l| l.name.to_os_string())))
    }

    /// Changes attributes of `id`. `fd` is an open handle on the file, used when given (the
    /// file may have no name any more).
    pub fn setattr(&self, id: NodeId, set: SetAttr, fd: Option<BorrowedFd<'_>>) -> Result<Attr> {
        self.writable()?;
        let node = self.node(id)?;
        // chown names presented ids; the layers store the mapped ones (an id outside every
        // mapping is refused, as chown to an unmapped id is in a user namespace).
        let (uid, gid) = self.owner_to_disk(set.uid, set.gid, Error::UnmappedOwner)?;
        let set = SetAttr { uid, gid, ..set };
        if let Some(fd) = fd {
            if let Some(size) = set.size {
                sys::truncate(fd, size).ctx("truncate", "")?;
            }
            if self.keeps_perms_in_xattrs() {
                self.set_override(Object::Fd(fd), sys::stat_fd(fd)?, &set)?;
            } else {
                if set.uid.is_some() || set.gid.is_some() {
                    sys::chown_at(fd, OsStr::new(""), set.uid, set.gid).ctx("chown", "")?;
                }
                if let Some(mode) = set.mode {
                    rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(mode & 0o7777))
                        .ctx("chmod", "")?;
                }
            }
            if set.atime.is_some() || set.mtime.is_some() {
                sys::set_times_at(
                    fd,
                    OsStr::new(""),
                    set.atime.unwrap_or(SetTime::Omit),
                    set.mtime.unwrap_or(SetTime::Omit),
                )?;
            }
            let mut st = self.overridden(sys::stat_fd(fd)?, Object::Fd(fd));
            st.nlink = self.indexed_nlink(Object::Fd(fd), &st);
            return Ok(self.attr_from(node.id, node.id.shown(), &st, false));
        }
        if node.is_dead() {
            return Err(Error::NotFound);
        }
        if set.size.is_some() {
            self.copy_up(&node, set.size != Some(0))?;
        } else {
            // Metadata alone changes: with metacopy=on the data stays below.
            self.copy_up_meta(&node)?;
        }
        let (pfd, name) = self.upper_place(&node)?;
        let dir = pfd.as_fd();
        if let Some(size) = set.size {
            if node.kind == FileKind::Directory {
                return Err(Error::IsDir);
            }
            let (dir, name) = self.place_in(&node, UPPER)?;
            let f = sys::open_beneath(dir.as_fd(), &name, OFlags::WRONLY)
                .ctx("open for truncate", OsStr::from_bytes(&name))?;
            sys::truncate(f.as_fd(), size).ctx("truncate", OsStr::from_bytes(&name))?;
        }
        if self.keeps_perms_in_xattrs()
            && (set.uid.is_some() || set.gid.is_some() || set.mode.is_some())
        {
            // (An empty name is the root: `dir` itself.)
            self.set_override(Object::named(dir, &name), sys::stat_at(dir, &name)?, &set)?;
        } else if set.uid.is_some() || set.gid.is_some() {
            sys::chown_at(dir, &name, set.uid, set.gid).ctx("chown", &name)?;
        }
        if let (Some(mode), false) = (set.mode, self.keeps_perms_in_xattrs()) {
            if node.kind != FileKind::Symlink {
                let target = if name.is_empty() {
                    OsStr::new(".")
                } else {
                    &name
                };
                sys::chmod_at(dir, target, mode).ctx("chmod", target)?;
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            sys::set_times_at(
                dir,
                &name,
                set.atime.unwrap_or(SetTime::Omit),
                set.mtime.unwrap_or(SetTime::Omit),
            )?;
        }
        self.getattr(id)
    }

    /// Applies the owner and mode changes of `set` to the override of the object at `at`
    /// (whose own attributes are `st`).
    fn set_override(&self, at: Object<'_>, st: crate::sys::Stat, set: &SetAttr) -> Result<()> {
        let cur = self.overridden(st, at);
        self.write_override(
            at,
            set.uid.unwrap_or(cur.uid),
            set.gid.unwrap_or(cur.gid),
            set.mode.unwrap_or(cur.mode),
        )
    }

    /// The upper copy of `id`, copying it up first (its metadata alone with `metacopy=on`).
    fn upper_object(&self, id: NodeId) -> Result<super::ObjectAt> {
        let node = self.named(id)?;
        self.copy_up_meta(&node)?;
        self.object_at(&node)
    }

    /// Sets xattr `name` on `id` (copying it up). Overlay-private names are refused.
    pub fn setxattr(&self, id: NodeId, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        if self.opts.no_xattrs || self.acl_refused(name) {
            return Err(Error::XattrUnsupported);
        }
        let XattrTarget::Stored(stored) = self.xattr_names().to_layer(name) else {
            return Err(Error::XattrUnsupported);
        };
        self.writable()?;
        // The named users and groups of an ACL are stored as the layers keep ids.
        let mapped;
        let value = if crate::layer::idmap::is_acl_name(name) && !self.idmap.is_identity() {
            mapped = self.idmap.acl_to_disk(value).ok_or(Error::UnmappedOwner)?;
            &mapped[..]
        } else {
            value
        };
        let at = self.upper_object(id)?;
        at.object().set_xattr(&stored, value, flags)?;
        self.default_acl_changed(id, name);
        if name == crate::layer::idmap::ACCESS_ACL && self.keeps_perms_in_xattrs() {
            // Setting an access ACL sets the permission bits it stands for; here they
            // live in the override.
            if let Some(bits) = crate::layer::idmap::acl_mode(value) {
                let cur = match self.read_override(at.object()) {
                    Some(o) => o,
                    None => {
                        let st = at.stat()?;
                        super::perms::Override {
                            uid: st.uid,
                            gid: st.gid,
                            perm: st.mode & 0o7777,
                            kind: None,
                        }
                    }
                };
                let perm = (cur.perm & 0o7000) | bits;
                self.write_raw_override(at.object(), &super::perms::Override { perm, ..cur })?;
            }
        }
        Ok(())
    }

    /// Removes xattr `name` from `id` (copying it up). Overlay-private names are refused.
    pub fn removexattr(&self, id: NodeId, name: &OsStr) -> Result<()> {
        if self.opts.no_xattrs || self.acl_refused(name) {
            return Err(Error::XattrUnsupported);
        }
        let XattrTarget::Stored(stored) = self.xattr_names().to_layer(name) else {
            return Err(Error::XattrUnsupported);
        };
        self.writable()?;
        // Removing what is not there must not copy anything up.
        self.getxattr(id, name)?;
        self.upper_object(id)?.object().remove_xattr(&stored)?;
        self.default_acl_changed(id, name);
        Ok(())
    }

    /// After xattr `name` of node `id` was set or removed: a directory's default ACL, which
    /// creations in it read from its cached fd ([`Overlay::default_acl`]), is read again.
    fn default_acl_changed(&self, id: NodeId, name: &OsStr) {
        if name == crate::layer::idmap::DEFAULT_ACL {
            self.dirfds.drop_node(id, self.layers.len());
        }
    }

    /// `fsync` of an open file, unless the mount skips syncs (`fsync=0`, `volatile`).
    pub fn fsync(&self, fd: BorrowedFd<'_>, data_only: bool) -> Result<()> {
        if self.opts.sync_writes {
            sys::sync(fd, data_only).ctx("fsync", "")?;
        }
        Ok(())
    }

    /// `fsync` of a directory's upper copy, if it has one.
    pub fn fsyncdir(&self, id: NodeId) -> Result<()> {
        let node = self.node(id)?;
        if self.opts.sync_writes && Overlay::in_upper(&node) {
            let fd = self.dir_fd(&node, UPPER)?;
            let rd = sys::open_beneath(fd.as_fd(), b".", OFlags::RDONLY | OFlags::DIRECTORY)
                .ctx("open for fsync", "")?;
            sys::sync(rd.as_fd(), false).ctx("fsync", "")?;
        }
        Ok(())
    }
}
