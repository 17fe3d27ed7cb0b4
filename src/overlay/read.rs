//! Reading: open for read, readlink, xattrs, statfs.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::OFlags;

use super::{Context, Error, Overlay, Result};
use crate::inode::{Node, NodeId, ObjectId};
use crate::layer::format::XattrTarget;
use crate::layer::{LayerIdx, LayerIno};
use crate::sys::{self, FileKind};

/// An open file on a layer.
#[derive(Debug)]
pub struct OpenedFile {
    /// The layer file, opened for reading.
    pub fd: OwnedFd,
    /// True when the file lives in a read-only lower layer, so its pages can stay cached.
    pub immutable: bool,
    /// Its size, where the open learned it from the check of what it opens (not after a
    /// change raced with the open, nor for a metacopy file's data).
    pub size: Option<u64>,
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
    /// Whether the daemon dealt with the data of regular file `id` at an open (see
    /// [`crate::inode::Node::data_given`]); true for a node no longer held.
    pub fn data_given(&self, id: NodeId) -> bool {
        self.nodes.get(id).is_none_or(|n| n.data_given())
    }

    /// Notes that the daemon dealt with the data of regular file `id` at an open.
    pub fn give_data(&self, id: NodeId) {
        if let Some(n) = self.nodes.get(id) {
            n.give_data();
        }
    }

    /// Opens node `id` with the `open(2)` flags the caller used.
    ///
    /// What is opened is the node's object, or nothing: a non-directory is checked at its
    /// recorded name before it is opened, and what was opened is checked again when a
    /// change in its directory raced with the open (see [`Overlay::is_its_object`]). A
    /// whiteout or another object found there answers `ESTALE` (the kernel walks the path
    /// again). A dead node whose object was kept opens that (see [`Overlay::reach`]).
    pub fn open(&self, id: NodeId, flags: i32) -> Result<OpenedFile> {
        let node = match self.reach(id)? {
            super::Reach::Kept(node, fd) => return self.open_kept(&node, &fd, flags),
            super::Reach::Named(node) => node,
        };
        if flags & WRITE_FLAGS != 0 {
            if node.kind == FileKind::Directory {
                return Err(Error::IsDir);
            }
            // Opened by its path after the copy-up (made here first, as `open_for_write`
            // would): what the name holds is checked before the open, and what was opened
            // again when a change in the directory (a rename, an unlink) raced with it. So
            // the open itself never truncates: the file is truncated once it is known to be
            // the node's. (A truncating open copies no data up.)
            let trunc = flags & libc::O_TRUNC != 0;
            let kept_or = |e: Error| match self.nodes.kept(&node) {
                Some(fd) => self.open_kept(&node, &fd, flags),
                None => Err(e),
            };
            if let Err(e) = self.copy_up(&node, !trunc) {
                return kept_or(e);
            }
            let name = |l: &crate::inode::Location| (l.parent, l.name.clone());
            let loc = node.location();
            let top = loc.top().ok_or(Error::StaleNode(id))?;
            let parent = self.node(loc.parent)?;
            let pfd = self.dir_fd(&parent, top)?;
            let seen = parent.quiet_version();
            let found = sys::stat_at_born(pfd.as_fd(), loc.top_name()).map_err(Error::from);
            let object = match self.still_named(&node, found) {
                Ok((st, born)) if self.is_its_object(&node, &loc, &st, born, st.kind()) => {
                    ObjectId::new(LayerIno::new(top, st.ino), born)
                }
                Ok(_) => return kept_or(self.not_its_object(&node)),
                Err(e) => return kept_or(e),
            };
            let opened = self.open_for_write(id, flags & !libc::O_TRUNC);
            let now = node.location();
            let moved = name(&now) != name(&loc);
            let changed = moved || seen.is_none_or(|v| parent.dir_version() != v);
            // With udba=notify the layers change behind the mount: what was opened is
            // always checked, as after a change through it.
            let raced = changed || self.layers_change_behind();
            let checked = match opened {
                Ok(fd) if raced => {
                    let (st, born) = sys::stat_at_born(fd.as_fd(), OsStr::new(""))?;
                    // Opened at a name the node left meanwhile: it is the node's object
                    // only if the node's new name holds that very object.
                    let its = self.is_its_object(&node, &now, &st, born, st.kind())
                        && (!moved
                            || self.object_at_name(&now)
                                == Some(ObjectId::new(LayerIno::new(top, st.ino), born)));
                    if its {
                        if !changed {
                            self.nodes.learn_object(id, &now, object);
                        }
                        Ok(fd)
                    } else {
                        Err(self.not_its_object(&node))
                    }
                }
                Ok(fd) => {
                    // Not known since the copy-up, and nothing changed meanwhile: what was
                    // checked is the node's.
                    self.nodes.learn_object(id, &now, object);
                    Ok(fd)
                }
                // Failed where the node no longer is, or on what its name holds instead.
                Err(e)
                    if e.os_error().is_some()
                        && (raced || opened_a_device(&e))
                        && (moved || !self.name_holds_it(&node, &now)) =>
                {
                    Err(self.not_its_object(&node))
                }
                Err(e) => Err(e),
            };
            let checked = match checked {
                Ok(fd) if trunc => sys::truncate(fd.as_fd(), 0)
                    .map(|()| fd)
                    .map_err(Error::from),
                r => r,
            };
            return match checked {
                Err(_) if self.nodes.kept(&node).is_some() => {
                    let fd = self.nodes.kept(&node).ok_or(Error::StaleNode(id))?;
                    self.open_kept(&node, &fd, flags)
                }
                r => r.map(|fd| OpenedFile {
                    fd,
                    immutable: false,
                    size: None,
                }),
            };
        }
        let loc = node.location();
        let top = loc.top().ok_or(Error::StaleNode(id))?;
        let layer = self.layers.get(top).ok_or(Error::StaleNode(id))?;
        let pass = flags & (libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME);
        let oflags = OFlags::RDONLY | OFlags::from_bits_retain(pass as u32);
        if node.kind == FileKind::Directory || node.id == crate::inode::ROOT {
            let (dir, name) = self.still_named(&node, self.place_in(&node, top))?;
            let opened = match sys::open_beneath(dir.as_fd(), &name, oflags) {
                // O_NOATIME is refused on files the daemon does not own; retry without it.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) && pass & libc::O_NOATIME != 0 => {
                    sys::open_beneath(dir.as_fd(), &name, oflags - OFlags::NOATIME)
                }
                r => r,
            };
            let fd = self.still_named(&node, opened.map_err(Error::from))?;
            return Ok(OpenedFile {
                fd,
                immutable: !layer.upper,
                size: None,
            });
        }
        let parent = self.node(loc.parent)?;
        let pfd = self.dir_fd(&parent, top)?;
        let seen = parent.quiet_version();
        let found = sys::stat_at_born(pfd.as_fd(), loc.top_name()).map_err(Error::from);
        let is_its =
            |st: &crate::sys::Stat, born: u64| self.is_its_object(&node, &loc, st, born, st.kind());
        let found = self.still_named(&node, found);
        let checked = match &found {
            Ok((st, born)) if is_its(st, *born) => {
                Some(ObjectId::new(LayerIno::new(top, st.ino), *born))
            }
            _ => None,
        };
        let metacopy = Overlay::is_metacopy_loc(node.kind, &loc);
        let seen_size = found.as_ref().ok().map(|(st, _)| st.size);
        let opened = match found {
            // A metacopy file is read from its data.
            Ok(_) if checked.is_some() && metacopy => self.open_data(&node, &loc, oflags),
            Ok(_) if checked.is_some() => {
                #[cfg(test)]
                tests::BEFORE_OPEN.with(crate::test_hook::Hook::fire);
                match sys::open_beneath(pfd.as_fd(), loc.top_name().as_bytes(), oflags) {
                    Err(e)
                        if e.raw_os_error() == Some(libc::EPERM) && pass & libc::O_NOATIME != 0 =>
                    {
                        sys::open_beneath(
                            pfd.as_fd(),
                            loc.top_name().as_bytes(),
                            oflags - OFlags::NOATIME,
                        )
                    }
                    r => r,
                }
                .map_err(Error::from)
            }
            Ok(_) => Err(self.not_its_object(&node)),
            Err(e) => Err(e),
        };
        // A change in the directory between the check and the open (a rename, an unlink)
        // may have put something else at the name: what was opened is checked again.
        let changed = seen.is_none_or(|v| parent.dir_version() != v);
        if let (Some(object), false, None) = (checked, changed, loc.object) {
            // Nothing changed in the directory meanwhile: what was checked is the node's.
            self.nodes.learn_object(id, &loc, object);
        }
        // With udba=notify the layers change behind the mount, where no version moves:
        // what was opened is always checked again.
        let raced = changed || self.layers_change_behind();
        let opened = match opened {
            Ok(fd) if raced && metacopy => {
                if self.name_holds_it(&node, &loc) {
                    Ok(fd)
                } else {
                    Err(self.not_its_object(&node))
                }
            }
            Ok(fd) if raced => {
                let (st, born) = sys::stat_at_born(fd.as_fd(), OsStr::new(""))?;
                if is_its(&st, born) {
                    Ok(fd)
                } else {
                    Err(self.not_its_object(&node))
                }
            }
            // Something else put at the name behind the mount between the check and the
            // open (a whiteout, a device: ENXIO, ENODEV) is another object too.
            Err(e) if (raced || opened_a_device(&e)) && e.os_error().is_some() => {
                Err(if self.name_holds_it(&node, &loc) {
                    e
                } else {
                    self.not_its_object(&node)
                })
            }
            r => r,
        };
        match opened {
            // Removed while this was on its way: its kept object is what it opens.
            Err(_) if self.nodes.kept(&node).is_some() => {
                let fd = self.nodes.kept(&node).ok_or(Error::StaleNode(id))?;
                self.open_kept(&node, &fd, flags)
            }
            r => r.map(|fd| OpenedFile {
                fd,
                immutable: !layer.upper || metacopy,
                size: seen_size.filter(|_| !raced && !metacopy),
            }),
        }
    }

    /// Which object `loc`'s name holds in `loc`'s top layer now, if any.
    fn object_at_name(&self, loc: &crate::inode::Location) -> Option<ObjectId> {
        let top = loc.top()?;
        let parent = self.nodes.get(loc.parent)?;
        let pfd = self.dir_fd(&parent, top).ok()?;
        let (st, born) = sys::stat_at_born(pfd.as_fd(), loc.top_name()).ok()?;
        Some(ObjectId::new(LayerIno::new(top, st.ino), born))
    }

    /// True when `loc`, a snapshot of `node`'s location, still holds `node`'s object (see
    /// [`Overlay::is_its_object`]): an open there that failed failed on the node's object.
    fn name_holds_it(&self, node: &crate::inode::Node, loc: &crate::inode::Location) -> bool {
        let (Some(top), Some(parent)) = (loc.top(), self.nodes.get(loc.parent)) else {
            return false;
        };
        let Ok(pfd) = self.dir_fd(&parent, top) else {
            return false;
        };
        match sys::stat_at_born(pfd.as_fd(), loc.top_name()) {
            Ok((st, born)) => self.is_its_object(node, loc, &st, born, st.kind()),
            Err(_) => false,
        }
    }

    /// Opens the kept object of dead `node` (see [`Overlay::reach`]) with the caller's
    /// `open(2)` flags: an upper object as it is (it no longer has a name), a lower one
    /// only for reading. A lower object cannot be written: it has no name to be copied up
    /// under. That open answers `ESTALE`, and the kernel walks the path again: an
    /// `O_CREAT` open then creates the name anew, as on the kernel's overlayfs where the
    /// open would find the name gone.
    fn open_kept(
        &self,
        node: &crate::inode::Node,
        kept: &OwnedFd,
        flags: i32,
    ) -> Result<OpenedFile> {
        let upper = node.with_location(|l| l.top() == Some(super::copyup::UPPER))
            && self.layers.upper().is_some()
            && !self.opts.read_only;
        let write = flags & WRITE_FLAGS != 0;
        if write && !upper {
            return Err(Error::StaleNode(node.id));
        }
        let mut of = if write { OFlags::RDWR } else { OFlags::RDONLY };
        of |= OFlags::from_bits_retain((flags & (libc::O_DIRECT | libc::O_SYNC)) as u32);
        let fd = sys::reopen(kept.as_fd(), of)?;
        if flags & libc::O_TRUNC != 0 {
            sys::truncate(fd.as_fd(), 0)?;
        }
        Ok(OpenedFile {
            fd,
            immutable: !upper,
            size: None,
        })
    }

    /// An fd for FUSE passthrough of regular file `id`, and whether it is the upper copy:
    /// the upper copy opened read-write (every open of the node shares it, writers
    /// included), else its topmost copy opened read-only (only readers open a lower copy).
    pub fn backing_fd(&self, id: NodeId) -> Result<(OwnedFd, bool)> {
        let node = match self.reach(id)? {
            super::Reach::Kept(node, fd) => {
                let f = self.open_kept(&node, &fd, libc::O_RDWR);
                let f = match f {
                    Err(_) => self.open_kept(&node, &fd, libc::O_RDONLY)?,
                    Ok(f) => f,
                };
                return Ok((f.fd, !f.immutable));
            }
            super::Reach::Named(node) => node,
        };
        if node.kind != FileKind::Regular {
            return Err(Error::Invalid("only a regular file has a backing file"));
        }
        // Checked at the name before it is opened, and again after when a change in the
        // directory raced with the open, as `open` does.
        let loc = node.location();
        let top = loc.top().ok_or(Error::StaleNode(id))?;
        let layer = self.layers.get(top).ok_or(Error::StaleNode(id))?;
        let parent = self.node(loc.parent)?;
        let dir = self.dir_fd(&parent, top)?;
        let seen = parent.quiet_version();
        let found = sys::stat_at_born(dir.as_fd(), loc.top_name()).map_err(Error::from);
        let (st, born) = self.still_named(&node, found)?;
        if !self.is_its_object(&node, &loc, &st, born, st.kind()) {
            return Err(self.not_its_object(&node));
        }
        if Overlay::is_metacopy_loc(node.kind, &loc) {
            // Read from its data until the data is copied up.
            return Ok((self.open_data(&node, &loc, OFlags::RDONLY)?, false));
        }
        let flags = if layer.upper && !self.opts.read_only {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        let fd = self.still_named(
            &node,
            sys::open_beneath(dir.as_fd(), loc.top_name().as_bytes(), flags).map_err(Error::from),
        )?;
        if seen.is_none_or(|v| parent.dir_version() != v) {
            let (st, born) = sys::stat_at_born(fd.as_fd(), OsStr::new(""))?;
            if !self.is_its_object(&node, &loc, &st, born, st.kind()) {
                return Err(self.not_its_object(&node));
            }
        }
        Ok((fd, layer.upper && !self.opts.read_only))
    }

    /// What `id`'s xattrs are read from: its topmost copy by name, or the object a dead
    /// node kept (see [`Overlay::reach`]).
    fn xattr_holder(&self, id: NodeId) -> Result<XattrHolder> {
        Ok(match self.reach(id)? {
            super::Reach::Kept(_, fd) => XattrHolder::Kept(fd),
            super::Reach::Named(node) => XattrHolder::At(self.object_at(&node)?),
        })
    }

    /// Opens `node`'s copy in `layer` so that it takes ioctls: a regular file read-only
    /// (without blocking or taking a terminal), a directory as a directory. Other kinds
    /// take no inode-flag ioctls (`ENOTTY`, as the kernel answers).
    pub(crate) fn open_for_ioctl(&self, node: &Node, layer: LayerIdx) -> Result<OwnedFd> {
        let flags = match node.kind {
            FileKind::Regular => OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            FileKind::Directory => OFlags::RDONLY | OFlags::DIRECTORY,
            _ => return Err(Error::NoInodeFlags),
        };
        let (dir, name) = self.still_named(node, self.place_in(node, layer))?;
        self.still_named(
            node,
            sys::open_beneath(dir.as_fd(), &name, flags).map_err(Error::from),
        )
    }

    /// The inode flags of `id`'s visible copy (`FS_IOC_GETFLAGS`).
    pub fn inode_flags(&self, id: NodeId) -> Result<u32> {
        let node = self.named(id)?;
        let top = node
            .with_location(|l| l.top())
            .ok_or(Error::StaleNode(id))?;
        let fd = self.open_for_ioctl(&node, top)?;
        Ok(sys::inode_flags(fd.as_fd())?)
    }

    /// The extended inode attributes of `id`'s visible copy (`FS_IOC_FSGETXATTR`).
    pub fn fs_xattr(&self, id: NodeId) -> Result<[u8; sys::FSXATTR_SIZE]> {
        let node = self.named(id)?;
        let top = node
            .with_location(|l| l.top())
            .ok_or(Error::StaleNode(id))?;
        let fd = self.open_for_ioctl(&node, top)?;
        Ok(sys::fs_xattr(fd.as_fd())?)
    }

    /// The target of symlink `id`, as stored in its layer (never followed).
    pub fn readlink(&self, id: NodeId) -> Result<Vec<u8>> {
        let node = match self.reach(id)? {
            super::Reach::Kept(node, fd) if node.kind == FileKind::Symlink => {
                return Ok(sys::read_link_fd(fd.as_fd())?);
            }
            super::Reach::Kept(node, _) | super::Reach::Named(node) => node,
        };
        if node.kind != FileKind::Symlink {
            return Err(Error::NotSymlink);
        }
        // Read at its recorded name: what is there must be the node's symlink (see
        // [`Overlay::is_its_object`]), not one that replaced it.
        let loc = node.location();
        let top = loc.top().ok_or(Error::StaleNode(id))?;
        let parent = self.node(loc.parent)?;
        let pfd = self.dir_fd(&parent, top)?;
        let found = sys::stat_at_born(pfd.as_fd(), loc.top_name()).map_err(Error::from);
        let (st, born) = self.still_named(&node, found)?;
        if !self.is_its_object(&node, &loc, &st, born, st.kind()) {
            return Err(self.not_its_object(&node));
        }
        rustix::fs::readlinkat(pfd.as_fd(), loc.top_name(), Vec::new())
            .map(|c| c.into_bytes())
            .ctx("readlink", &loc.name)
    }

    /// The value of xattr `name` on `id`. Overlay-private attributes do not exist here.
    pub fn getxattr(&self, id: NodeId, name: &OsStr) -> Result<Vec<u8>> {
        if self.opts.no_xattrs || self.acl_refused(name) {
            return Err(Error::XattrUnsupported);
        }
        let XattrTarget::Stored(stored) = self.xattr_names().to_layer(name) else {
            // As the kernel answers for private names: there is no such attribute.
            return Err(Error::NoXattr);
        };
        let held = self.xattr_holder(id)?;
        let object = held.object();
        let mut value = object.get_xattr(&stored)?.ok_or(Error::NoXattr)?;
        if name == crate::layer::idmap::ACCESS_ACL {
            // Where the mode lives in an override, the ACL entries that stand for the
            // permission bits follow it (the layer file's own mode may be anything).
            if let Some(o) = self.read_override(object) {
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

    /// The xattr names of `id` (kernel list format), overlay-private ones left out.
    pub fn listxattr(&self, id: NodeId) -> Result<Vec<u8>> {
        if self.opts.no_xattrs {
            return Err(Error::XattrUnsupported);
        }
        let held = self.xattr_holder(id)?;
        let object = held.object();
        let raw = match object.list_xattr() {
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

    /// Checks that `id` exists (permission checks are the kernel's, `default_permissions`);
    /// write access on a read-only union is refused.
    pub fn access(&self, id: NodeId, mask: i32) -> Result<()> {
        self.node(id)?;
        if mask & libc::W_OK != 0 && self.opts.read_only {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }
}

/// An object whose xattrs are read (see [`Overlay::xattr_holder`]).
enum XattrHolder {
    At(super::ObjectAt),
    Kept(std::sync::Arc<OwnedFd>),
}

impl XattrHolder {
    fn object(&self) -> sys::Object<'_> {
        match self {
            XattrHolder::At(at) => at.object(),
            XattrHolder::Kept(fd) => sys::Object::Fd(fd.as_fd()),
        }
    }
}

/// True when an open failed as the open of a device node does (`ENXIO`, `ENODEV`): for a
/// node that is no device, the name then holds something else than was checked.
fn opened_a_device(e: &Error) -> bool {
    e.os_error()
        .and_then(std::io::Error::raw_os_error)
        .is_some_and(|c| c == libc::ENXIO || c == libc::ENODEV)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use crate::inode::ROOT;
    use crate::test_hook::Hook;

    thread_local! {
        /// Run once by this thread's next open of a lower file, between the check of what
        /// its name holds and the open.
        pub(super) static BEFORE_OPEN: Hook = Hook::default();
    }

    /// A lower file replaced by a whiteout behind the mount between the check and the open
    /// (a refresh race): the open used to open the whiteout and fail with ENXIO; the name
    /// no longer holds the node's object, so it is ESTALE (or ENOENT), as any other object.
    #[test]
    fn a_whiteout_put_at_the_name_before_the_open_is_not_the_nodes() {
        let (t, ov) = super::super::scratch_overlay(|l, _| {
            std::fs::write(l.join("f"), "lower").unwrap();
        });
        let f = ov.lookup(ROOT, OsStr::new("f")).unwrap();
        let path = t.path().join("l/f");
        BEFORE_OPEN.with(|h| {
            h.arm(move || {
                std::fs::remove_file(&path).unwrap();
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .unwrap();
            })
        });
        let r = ov.open(f.node, libc::O_RDONLY);
        assert!(
            matches!(&r, Err(e) if [libc::ESTALE, libc::ENOENT].contains(&e.errno())),
            "{:?}",
            r.map(|_| ())
        );
    }
}
