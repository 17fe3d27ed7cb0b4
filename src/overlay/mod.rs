//! The union semantics, with no FUSE types: lookup across layers, merged directory listings,
//! reads, attributes and xattrs. Every method returns `Result<T, Error>`, and an [`Error`]
//! maps to exactly one errno, so the whole logic can be driven and tested without a mount.

mod attr;
mod copyup;
mod dirfd;
mod error;
mod index;
mod lookup;
mod metacopy;
mod namespace;
mod negative;
pub mod perms;
mod read;
mod readdir;
mod redirect;
mod refresh;
mod watch;

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::MountConfig;
use crate::inode::{LayerPath, Location, Node, NodeId, NodeTable, ObjectId, ROOT};
use crate::layer::{Ino, LayerIdx, LayerIno, LayerStack};
use crate::sys::{FileKind, Stat};

pub use attr::SetAttr;
pub use error::{errno_level, Context, Error};
pub use lookup::Provenance;
pub use namespace::{Caller, NewObject, RenameFlag};
pub use readdir::{DirEntry, Listing};
pub use refresh::{Refreshed, Scope};

/// How a request that reads a node's object reaches it (see `Overlay::reach`).
enum Reach {
    /// By the node's recorded name.
    Named(Arc<Node>),
    /// A dead node, through its object as it was when its last name was removed.
    Kept(Arc<Node>, Arc<OwnedFd>),
}

/// An object named by its directory and name in one layer (see `Overlay::object_at`).
#[derive(Debug)]
struct ObjectAt {
    dir: Arc<OwnedFd>,
    name: std::ffi::OsString,
}

impl ObjectAt {
    /// The object, for its xattrs.
    fn object(&self) -> crate::sys::Object<'_> {
        crate::sys::Object::named(self.dir.as_fd(), &self.name)
    }

    /// The object's own attributes.
    fn stat(&self) -> io::Result<crate::sys::Stat> {
        crate::sys::stat_at(self.dir.as_fd(), &self.name)
    }
}

/// Shorthand for overlay results.
pub type Result<T> = std::result::Result<T, Error>;

/// The attributes of a merged object, as shown through the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// The node id the kernel knows the object by.
    pub node: NodeId,
    /// `st_ino` as shown: the node id, except for a name of a lower hard link in a writable
    /// union, which is its own node but shows the lower file's number.
    pub ino: Ino,
    /// File type.
    pub kind: FileKind,
    /// Permission bits.
    pub perm: u16,
    /// Link count (1 for a merged directory, as the kernel reports it).
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Preferred I/O size.
    pub blksize: u32,
    /// Device number of a device node.
    pub rdev: u32,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
}

/// Behaviour switches that come from the mount options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// No upper layer, or mounted `ro`: every write gets EROFS.
    pub read_only: bool,
    /// `static_nlink`: directories always report nlink 1.
    pub static_nlink: bool,
    /// `noxattrs`.
    pub no_xattrs: bool,
    /// How many directory fds to keep open.
    pub dir_fd_cache: usize,
    /// How many entries of merged directory listings to keep cached, over all directories.
    pub listing_cache: usize,
    /// How many names found missing to remember (per directory version).
    pub negative_cache: usize,
    /// How many nodes the daemon keeps before asking the kernel to forget unused ones.
    pub node_limit: usize,
    /// fsync copies and honour fsync requests (`fsync=1` and not `volatile`).
    pub sync_writes: bool,
    /// `xattr_permissions=0|1|2` (0: as the layer roots say, see [`perms::detect`]).
    pub xattr_permissions: u8,
    /// POSIX ACLs are enforced (by the kernel, from the ACL xattrs) and inherited (not
    /// `noacl` or `noxattrs`).
    pub acl: bool,
    /// Which opaque and copy-up markers the upper layer gets (`markers=`).
    pub markers: crate::config::Markers,
    /// `writeback=1`: the kernel's writeback cache, where FUSE passthrough is not used.
    pub writeback: bool,
    /// `passthrough=`: which files are opened in FUSE passthrough where it is allowed.
    pub passthrough: crate::config::Passthrough,
    /// `redirect_dir=` (with `userxattr` resolved): whether redirects are followed.
    pub redirect_dir: crate::config::RedirectDir,
    /// `metacopy=on`: metacopy files are followed to their data, and metadata changes of
    /// lower regular files copy up metadata alone.
    pub metacopy: bool,
    /// `verity=`: whether metacopy files' fs-verity digests are checked and recorded.
    pub verity: crate::config::Verity,
    /// `udba=notify`: watch at most this many layer directories (`udba_watches=`).
    pub udba_watches: Option<usize>,
}

impl Options {
    /// The options a mount configuration asks for.
    pub fn from_config(cfg: &MountConfig) -> Options {
        Options {
            read_only: cfg.read_only(),
            static_nlink: cfg.static_nlink,
            no_xattrs: cfg.noxattrs,
            dir_fd_cache: 4096,
            listing_cache: 32 * 1024,
            negative_cache: 4096,
            node_limit: cfg.node_limit,
            sync_writes: cfg.fsync && !cfg.volatile,
            xattr_permissions: cfg.xattr_permissions,
            acl: !cfg.noacl && !cfg.noxattrs,
            markers: cfg.markers,
            writeback: cfg.writeback,
            passthrough: cfg.passthrough,
            redirect_dir: cfg.redirect_mode(),
            metacopy: cfg.metacopy_on(),
            verity: cfg.verity,
            udba_watches: (cfg.udba == crate::config::Udba::Notify).then_some(cfg.udba_watches),
        }
    }
}

/// The merged view of a layer stack.
#[derive(Debug)]
pub struct Overlay {
    layers: LayerStack,
    nodes: NodeTable,
    dirfds: Arc<dirfd::DirFdCache>,
    listings: readdir::ListingCache,
    /// Names found missing, per directory version.
    negative: negative::NegativeCache,
    idmap: crate::layer::IdMap,
    /// The xattr owner and mode are kept in (`xattr_permissions`), if any.
    perm_xattr: Option<&'static str>,
    /// Key of the directory offset cookies (random per mount).
    cookie_key: std::collections::hash_map::RandomState,
    opts: Options,
    temp_counter: std::sync::atomic::AtomicU64,
    /// The umask is 0, so new objects get their exact mode at creation.
    exact_modes: bool,
    /// fuse-overlayfs's markers are written too (see [`crate::config::Markers`]).
    fuse_markers: bool,
    /// The FUSE connection, for telling the kernel that a node's attributes changed (see
    /// [`Overlay::set_kernel_connection`]).
    kernel: std::sync::OnceLock<OwnedFd>,
    /// Copy-ups done.
    copy_ups: crate::stats::CopyUps,
    /// `FUSE_NOTIFY_PRUNE` messages sent, and the nodes named in them.
    prune_notices: crate::stats::Counter,
    pruned: crate::stats::Counter,
    /// The root's `st_ino`: the top layer's root directory's number, as the kernel's
    /// overlayfs shows it (the root's node id is fixed at 1 by FUSE).
    root_ino: Ino,
    /// `udba=notify`: the layer directories watched.
    watches: Option<watch::Watches>,
    /// `index=on`: the inodes index (see [`Overlay::enable_index`]).
    index: Option<index::Index>,
}

impl Overlay {
    /// A merged view of `layers`.
    pub fn new(layers: LayerStack, opts: Options) -> Overlay {
        let root_layers = (0..layers.merged_len() as LayerIdx).collect();
        let perm_xattr = perms::override_name(if opts.xattr_permissions > 0 {
            opts.xattr_permissions
        } else {
            let roots: Vec<_> = layers.all().iter().map(|l| l.root()).collect();
            perms::detect(&roots)
        });
        // An upper layer already in the mount-program dialect (`.wh.` whiteouts, owners in
        // xattrs) is one the kernel cannot mount as it is: it gets fuse-overlayfs's markers.
        let fuse_markers = match opts.markers {
            crate::config::Markers::Kernel => false,
            crate::config::Markers::FuseOverlayfs => true,
            crate::config::Markers::Auto => {
                perm_xattr.is_some()
                    || layers
                        .work()
                        .is_some_and(|w| w.whiteout == crate::layer::WhiteoutFormat::DotWh)
            }
        };
        let root_ino = layers
            .get(0)
            .and_then(|top| crate::sys::stat_fd(top.root()).ok())
            .map_or(ROOT.shown(), |st| {
                layers.shown_ino(LayerIno::new(0, st.ino))
            });
        Overlay {
            root_ino,
            nodes: NodeTable::new(root_layers, layers.upper().is_some()),
            dirfds: dirfd::DirFdCache::new(opts.dir_fd_cache),
            listings: readdir::ListingCache::new(opts.listing_cache),
            negative: negative::NegativeCache::new(opts.negative_cache),
            idmap: crate::layer::IdMap::default(),
            cookie_key: std::collections::hash_map::RandomState::new(),
            perm_xattr,
            layers,
            opts,
            temp_counter: std::sync::atomic::AtomicU64::new(0),
            exact_modes: crate::sys::current_umask() == 0,
            fuse_markers,
            kernel: std::sync::OnceLock::new(),
            copy_ups: crate::stats::CopyUps::default(),
            prune_notices: crate::stats::Counter::default(),
            pruned: crate::stats::Counter::default(),
            watches: opts
                .udba_watches
                .and_then(|budget| match watch::Watches::new(budget) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!(error = %e, "udba=notify: no inotify instance; changes to \
                        the layers need 'stratafs refresh'");
                        None
                    }
                }),
            index: None,
        }
    }

    /// Gives the overlay the FUSE connection `dev`, down which the kernel is told that
    /// attributes it may cache changed where no reply of its own requests shows it: a
    /// copy-up replaces a node's inode (a new ctime) and changes the directory it is placed
    /// in. Set once, before requests are served; until then (and in unit tests) nobody is
    /// told.
    pub fn set_kernel_connection(&self, dev: OwnedFd) {
        let _ = self.kernel.set(dev);
    }

    /// The attributes of node `id` changed behind the kernel's back: a copy-up, or the
    /// front end dropping setuid/setgid bits after a write (no reply to a write carries
    /// attributes, so the kernel would keep showing, and executing with, the cached mode).
    pub fn attrs_changed(&self, id: NodeId) {
        if let Some(dev) = self.kernel.get() {
            // ENOENT: the kernel does not hold the node, so caches nothing of it.
            if let Err(e) = crate::sys::fuse_notify_inval_attrs(dev.as_fd(), id.get()) {
                tracing::debug!(ino = id.get(), error = %e, "attribute invalidation not sent");
            }
        }
    }

    /// True when POSIX ACLs are supported (see [`Options::acl`]).
    pub fn acl(&self) -> bool {
        self.opts.acl
    }

    /// True for an ACL xattr on a mount without ACLs (`noacl`): refused as a filesystem
    /// mounted `noacl` refuses it, rather than kept as an ACL nobody enforces.
    fn acl_refused(&self, name: &std::ffi::OsStr) -> bool {
        !self.opts.acl && crate::layer::idmap::is_acl_name(name)
    }

    /// The same view with owners mapped by `idmap` (`uidmapping=`, `squash_*`...).
    pub fn with_idmap(mut self, idmap: crate::layer::IdMap) -> Overlay {
        self.idmap = idmap;
        self
    }

    /// The owner mapping in force.
    pub fn idmap(&self) -> &crate::layer::IdMap {
        &self.idmap
    }

    /// A stored uid/gid pair for a presented one; `unmapped` when an id has no mapping.
    pub(crate) fn owner_to_disk(
        &self,
        uid: Option<u32>,
        gid: Option<u32>,
        unmapped: Error,
    ) -> Result<(Option<u32>, Option<u32>)> {
        let uid = uid.map(|u| self.idmap.uid_to_disk(u));
        let gid = gid.map(|g| self.idmap.gid_to_disk(g));
        if matches!(uid, Some(None)) || matches!(gid, Some(None)) {
            return Err(unmapped);
        }
        Ok((uid.flatten(), gid.flatten()))
    }

    /// How xattr names map between the mount and the layers.
    pub(crate) fn xattr_names(&self) -> crate::layer::format::XattrNames {
        crate::layer::format::XattrNames::new(self.layers.xattrs().prefix())
    }

    /// The layer stack.
    pub fn layers(&self) -> &LayerStack {
        &self.layers
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The mount is gone: leaves the work directory as empty as the kernel would.
    pub fn unmounted(&self) {
        if let Some(w) = self.layers.work() {
            w.remove_shared_whiteout();
        }
    }

    /// Nodes to ask the kernel to prune, when the table is over its limit: cold ones (unused
    /// since the last call), enough to bring it a fifth under the limit. As the
    /// notification's wire format carries them (node ids).
    pub fn prune_candidates(&self) -> Vec<u64> {
        let n = self.nodes.len();
        let want = if n > self.opts.node_limit {
            n - self.opts.node_limit * 8 / 10
        } else {
            0
        };
        self.nodes.cold(want).into_iter().map(NodeId::get).collect()
    }

    /// How many nodes the kernel currently holds.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Counts one `FUSE_NOTIFY_PRUNE` sent, naming `nodes` nodes.
    pub fn pruned(&self, nodes: usize) {
        self.prune_notices.add(1);
        self.pruned.add(nodes as u64);
    }

    /// The node table's size, limit and prunes.
    pub fn node_stats(&self) -> crate::stats::NodeStats {
        crate::stats::NodeStats {
            nodes: self.nodes.len() as u64,
            limit: self.opts.node_limit as u64,
            prune_notices: self.prune_notices.get(),
            pruned: self.pruned.get(),
        }
    }

    /// The caches' sizes and hit counts.
    pub fn cache_stats(&self) -> crate::stats::Caches {
        let (listings, listing_names) = self.listings.stats();
        crate::stats::Caches {
            dir_fds: self.dirfds.stats(),
            listings,
            listing_names,
            negative: self.negative.stats(),
            watches: self.watch_stats(),
        }
    }

    /// Copy-ups done since the mount.
    pub fn copy_up_stats(&self) -> crate::stats::CopyUpStats {
        self.copy_ups.snapshot()
    }

    fn node(&self, id: NodeId) -> Result<Arc<Node>> {
        self.nodes.get(id).ok_or(Error::StaleNode(id))
    }

    /// Node `id` for an operation that reaches its object by name. A node whose object was
    /// removed through the mount (the kernel may still hold it: an `O_PATH` fd, a lookup
    /// racing with the unlink) has no name any more; what its old name holds now (a
    /// whiteout, a new object) is not it. When the name holds another object, the kernel
    /// reached the node through a stale dentry (a readdirplus reply overtaken by a rename,
    /// a node retired by [`Overlay::retire`]): `ESTALE` makes it walk the path again with
    /// a fresh lookup, for every path-based call. Otherwise the answer is `ENOENT`.
    fn named(&self, id: NodeId) -> Result<Arc<Node>> {
        let node = self.node(id)?;
        if node.is_dead() {
            return Err(self.gone(&node));
        }
        Ok(node)
    }

    /// The answer for a request that reached dead `node` by name: `ESTALE` when its name
    /// now holds another object, else `ENOENT`.
    fn gone(&self, node: &Node) -> Error {
        if self.name_taken(node) {
            Error::StaleNode(node.id)
        } else {
            Error::NotFound
        }
    }

    /// Node `id` for a request that reads its object. A dead node whose object was kept
    /// when its last name was removed (see [`crate::inode::NodeTable::mark_dead_keeping`])
    /// comes with that object: the request raced with the removal, and reaches what the
    /// kernel's overlayfs inode would still hold. Other dead nodes answer as
    /// [`Overlay::named`] does.
    fn reach(&self, id: NodeId) -> Result<Reach> {
        let node = self.node(id)?;
        if node.is_dead() {
            return match self.nodes.kept(&node) {
                Some(fd) => Ok(Reach::Kept(node, fd)),
                None => Err(self.gone(&node)),
            };
        }
        Ok(Reach::Named(node))
    }

    /// True when `st` (born `born`, shown as type `shown`), found at `node`'s recorded name
    /// in `loc.top()`, can be `node`'s object: never a whiteout, an object of another type,
    /// or another object than the one recorded for the node (see
    /// [`crate::inode::ObjectId`]).
    fn is_its_object(
        &self,
        node: &Node,
        loc: &Location,
        st: &Stat,
        born: u64,
        shown: Option<FileKind>,
    ) -> bool {
        if crate::layer::format::is_whiteout_stat(st) || shown != Some(node.kind) {
            return false;
        }
        let top = loc.top().unwrap_or(0);
        loc.object
            .is_none_or(|was| was == ObjectId::new(LayerIno::new(top, st.ino), born))
    }

    /// The answer when what `node`'s recorded name holds is not its object: `ESTALE` for a
    /// live node (what the kernel holds is out of date: a rename moved the object while the
    /// request was on its way, or the object was replaced behind the mount; the kernel
    /// walks the path again), what [`Overlay::gone`] says for a dead one.
    fn not_its_object(&self, node: &Node) -> Error {
        if node.is_dead() {
            self.gone(node)
        } else {
            Error::StaleNode(node.id)
        }
    }

    /// The attributes of dead `node`'s kept object (its last name is gone: no links).
    fn kept_attr(&self, node: &Node, fd: &OwnedFd) -> Result<Attr> {
        let st = self.overridden(
            crate::sys::stat_fd(fd.as_fd())?,
            crate::sys::Object::Fd(fd.as_fd()),
        );
        let mut a = self.attr_from(node.id, node.id.shown(), &st, false);
        if node.kind != FileKind::Directory {
            a.nlink = 0;
        }
        Ok(a)
    }

    /// True when the last name of dead `node` now holds another object.
    fn name_taken(&self, node: &Node) -> bool {
        let (parent, name) = node.with_location(|l| (l.parent, l.name.clone()));
        let Some(dir) = self.nodes.get(parent).filter(|d| !d.is_dead()) else {
            return false;
        };
        let chain = dir.with_location(|l| l.layers.clone());
        matches!(self.resolve_in(&dir, &chain, &name, 0), Ok(Some(_)))
    }

    /// Gives node `id` up while the kernel may still hold it (its open files keep working):
    /// requests reaching it by name get `ESTALE`, and the next lookup of its name makes a
    /// new node. Used when an open cannot share the passthrough backing file of the
    /// node's earlier opens (see `fuse::NodeIo`).
    pub fn retire(&self, id: NodeId) {
        self.nodes.mark_dead(id);
    }

    /// `r`, the result of reaching `node` by its recorded name. If the node died meanwhile,
    /// the name may have reached a whiteout or a new object: `ENOENT`, or `ESTALE` when the
    /// name holds another object (see [`Overlay::named`]). If the recorded name of a live
    /// node is missing, what the kernel holds for it is out of date (the object moved or
    /// went without this node being told, or the kernel reached it through a stale dentry):
    /// `ESTALE`, so a path-based call walks again, and the lookup records where the object
    /// is now.
    fn still_named<T>(&self, node: &Node, r: Result<T>) -> Result<T> {
        if node.is_dead() {
            return Err(self.gone(node));
        }
        match r {
            Err(e) if e.os_error().and_then(io::Error::raw_os_error) == Some(libc::ENOENT) => {
                Err(Error::StaleNode(node.id))
            }
            r => r,
        }
    }

    /// The node's path relative to every layer root (`a/b/c`; empty for the root).
    fn rel_path(&self, node: &Node) -> Result<Vec<u8>> {
        let mut names: Vec<crate::inode::Name> = Vec::new();
        let (mut parent, name) = node.with_location(|l| (l.parent, l.name.clone()));
        if node.id != ROOT {
            names.push(name);
        }
        let mut hops = 0usize;
        while parent != ROOT {
            let p = self.node(parent)?;
            let (pp, pname) = p.with_location(|l| (l.parent, l.name.clone()));
            names.push(pname);
            parent = pp;
            hops += 1;
            if hops > 1 << 16 {
                // A cycle can only come from a bug; refuse rather than spin.
                return Err(Error::NodeCycle);
            }
        }
        let mut out = Vec::new();
        for (i, n) in names.iter().rev().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(n.as_bytes());
        }
        Ok(out)
    }

    /// Caches `fd`, directory `node`'s copy in layer `layer` just opened (and watches it
    /// with `udba=notify`), unless the node moved on from `version`, its version read
    /// before the open: a refresh or a forget that ran meanwhile dropped the fds it knew
    /// of, and must not find one it dropped put back after it (a directory replaced behind
    /// the mount would be read from its old copy for good, unwatched).
    fn cache_dir_fd(&self, node: NodeId, version: u64, layer: LayerIdx, fd: &Arc<OwnedFd>) {
        #[cfg(test)]
        tests::BEFORE_DIR_FD_CACHED.with(crate::test_hook::Hook::fire);
        self.watch_dir(node, layer, fd);
        // Versions are unique across nodes: a node that took the id since has another.
        let current = |n: &Node| !n.is_dead() && n.dir_version() == version;
        let cached = self.dirfds.put_if(node, layer, Arc::clone(fd), || {
            self.nodes.get(node).is_some_and(|n| current(&n))
        });
        // A node forgotten or dead meanwhile had its watches dropped before this one was
        // placed: it goes too (a live node's next open places its own).
        if !cached && self.nodes.get(node).is_none_or(|n| n.is_dead()) {
            self.unwatch_dir(node);
        }
    }

    /// An `O_PATH` fd on directory `node` in layer `layer`, from the cache when possible.
    ///
    /// On a miss the directory is opened by its name under its parent's fd, and the parent
    /// the same way, up to the nearest ancestor whose fd is cached (or the layer root):
    /// one `openat2` of one name per step, confined beneath the step's directory, so no
    /// open depends on how deep the directory lies (a whole path from the layer root fails
    /// with `ENAMETOOLONG` from PATH_MAX bytes on, where the kernel's overlayfs, walking
    /// one name at a time, goes on). Every directory opened on the way is cached.
    fn dir_fd(&self, node: &Node, layer: LayerIdx) -> Result<Arc<OwnedFd>> {
        if layer == crate::layer::INDEX_LAYER {
            // Every file found only in the index is in its one directory.
            return self.index_dir();
        }
        if let Some(fd) = self.dirfds.get(node.id, layer) {
            return Ok(fd);
        }
        // A dead directory is not opened again by its name, which may hold another
        // directory by now (one replaced behind the mount: see `Overlay::refresh`).
        if node.is_dead() {
            return Err(self.gone(node));
        }
        let l = self.layers.get(layer).ok_or(Error::StaleNode(node.id))?;
        // (node id, its version, name) from `node` up to the child of the nearest cached
        // ancestor, or of the nearest one a redirect put elsewhere in this layer.
        let mut chain: Vec<(NodeId, u64, crate::inode::Name)> = Vec::new();
        let mut start = None;
        let mut cur = node.id;
        let mut version = node.dir_version();
        let (mut parent, mut name, mut redirect) =
            node.with_location(|l| (l.parent, l.name.clone(), l.redirect_in(layer).cloned()));
        while cur != ROOT {
            if let Some(r) = redirect {
                let fd = Arc::new(match r {
                    LayerPath::InParent(n) => {
                        let pfd = self.dir_fd(&*self.node(parent)?, layer)?;
                        crate::sys::open_dir_path(pfd.as_fd(), n.as_bytes())?
                    }
                    LayerPath::FromRoot(p) => {
                        let path = std::path::PathBuf::from_iter(p);
                        crate::sys::open_dir_path(l.root(), path.as_os_str().as_bytes())?
                    }
                });
                self.cache_dir_fd(cur, version, layer, &fd);
                start = Some(fd);
                break;
            }
            chain.push((cur, version, name));
            if let Some(fd) = self.dirfds.get(parent, layer) {
                start = Some(fd);
                break;
            }
            if chain.len() > 1 << 16 {
                // A cycle can only come from a bug; refuse rather than spin.
                return Err(Error::NodeCycle);
            }
            let p = self.node(parent)?;
            if p.is_dead() {
                return Err(self.gone(&p));
            }
            cur = parent;
            version = p.dir_version();
            (parent, name, redirect) =
                p.with_location(|l| (l.parent, l.name.clone(), l.redirect_in(layer).cloned()));
        }
        let mut fd = match start {
            Some(fd) => fd,
            None => {
                let version = self.node(ROOT)?.dir_version();
                let root = Arc::new(crate::sys::open_dir_path(l.root(), b"")?);
                self.cache_dir_fd(ROOT, version, layer, &root);
                root
            }
        };
        for (id, version, name) in chain.iter().rev() {
            let next = Arc::new(crate::sys::open_dir_path(fd.as_fd(), name.as_bytes())?);
            self.cache_dir_fd(*id, *version, layer, &next);
            fd = next;
        }
        Ok(fd)
    }

    /// True when directory `dir`'s copy in layer `layer`, open as `fd` (from
    /// [`Overlay::dir_fd`]), is marked `overlay.opaque=x`, so that its empty regular files
    /// may be xattr whiteouts: read once per cached directory fd, as lookups of empty files
    /// would otherwise read it each time.
    fn xwhiteouts_dir(&self, dir: &Node, layer: LayerIdx, fd: &Arc<OwnedFd>) -> Result<bool> {
        self.dir_mark(DirMark::XWhiteouts, dir, layer, fd, fd.as_fd(), false)
    }

    /// True when directory `dir`'s copy in layer `layer` (open as `fd`) is marked
    /// `overlay.impure`, read once per cached directory fd.
    fn impure_dir(&self, dir: &Node, layer: LayerIdx, fd: &Arc<OwnedFd>) -> Result<bool> {
        self.dir_mark(DirMark::Impure, dir, layer, fd, fd.as_fd(), false)
    }

    /// Whether directory `dir`'s copy in layer `layer`, cached as `fd`, bears `mark`: known
    /// once per cached fd, read (the first time, or every time when `fresh`) on `open`,
    /// `fd` itself or the same directory open for reading, where an xattr read is one
    /// system call (see [`crate::sys::open_dir_to_list`]). `fresh` is for the upper
    /// layer's impure mark, which copy-ups set behind the cached one
    /// ([`Overlay::mark_impure`]).
    fn dir_mark(
        &self,
        mark: DirMark,
        dir: &Node,
        layer: LayerIdx,
        fd: &Arc<OwnedFd>,
        open: std::os::fd::BorrowedFd<'_>,
        fresh: bool,
    ) -> Result<bool> {
        let known = self.dirfds.fact(dir.id, layer, fd, |f| match mark {
            DirMark::XWhiteouts => f.xwhiteouts,
            DirMark::Impure => f.impure,
        });
        if let (Some(v), false) = (known, fresh) {
            return Ok(v);
        }
        let v = match mark {
            DirMark::XWhiteouts => crate::layer::is_xwhiteouts_dir(open, self.layers.xattrs())?,
            DirMark::Impure => {
                let ns = self.layers.get(layer).map(|l| l.xattrs);
                crate::layer::is_impure_dir(open, ns.unwrap_or(self.layers.xattrs()))?
            }
        };
        self.dirfds.set_fact(dir.id, layer, fd, |f| match mark {
            DirMark::XWhiteouts => f.xwhiteouts = Some(v),
            DirMark::Impure => f.impure = Some(v),
        });
        Ok(v)
    }

    /// Where `node` is in layer `layer`: its parent's directory fd there and its name (the
    /// root: its own fd and an empty name). Opening that name under the fd never depends
    /// on the node's depth (see [`Overlay::dir_fd`]).
    fn place_in(&self, node: &Node, layer: LayerIdx) -> Result<(Arc<OwnedFd>, Vec<u8>)> {
        if node.id == ROOT {
            return Ok((self.dir_fd(node, layer)?, Vec::new()));
        }
        let parent = self.node(node.parent())?;
        let dir = self.dir_fd(&parent, layer)?;
        let name = node.with_location(|l| {
            if l.top() == Some(layer) {
                l.top_name().as_bytes().to_vec()
            } else {
                l.name.as_bytes().to_vec()
            }
        });
        Ok((dir, name))
    }

    /// The topmost copy of `node` as (directory fd in its layer, name): xattr and link calls
    /// then act on one name under a cached directory fd instead of walking its whole path.
    /// The root is its own directory fd with an empty name.
    fn object_at(&self, node: &Node) -> Result<ObjectAt> {
        let top = node
            .with_location(|l| l.top())
            .ok_or(Error::StaleNode(node.id))?;
        if node.id == ROOT {
            return Ok(ObjectAt {
                dir: self.dir_fd(node, top)?,
                name: std::ffi::OsString::new(),
            });
        }
        let parent = self.node(node.parent())?;
        Ok(ObjectAt {
            dir: self.dir_fd(&parent, top)?,
            name: node.with_location(|l| l.top_name().to_os_string()),
        })
    }

    /// The attributes of node `node`, showing `ino`, from `st`.
    /// The `st_ino` node `id` shows when its object shows no other number: its id, but
    /// the top layer's root directory's number for the root.
    pub fn shown_of(&self, id: NodeId) -> Ino {
        if id == ROOT {
            self.root_ino
        } else {
            id.shown()
        }
    }

    fn attr_from(&self, node: NodeId, ino: Ino, st: &Stat, merged_dir: bool) -> Attr {
        let ino = if node == ROOT { self.root_ino } else { ino };
        let kind = st.kind().unwrap_or(FileKind::Regular);
        let nlink = if kind == FileKind::Directory && (merged_dir || self.opts.static_nlink) {
            1
        } else {
            st.nlink
        };
        Attr {
            node,
            ino,
            kind,
            perm: st.perm(),
            nlink,
            uid: self.idmap.uid_to_mount(st.uid),
            gid: self.idmap.gid_to_mount(st.gid),
            size: st.size,
            blocks: st.blocks,
            blksize: st.blksize,
            rdev: st.rdev as u32,
            atime: st.atime,
            mtime: st.mtime,
            ctime: st.ctime,
        }
    }

    /// Checks that a name may be looked up or created: whiteout-format names never exist in
    /// the merged view.
    fn check_name(name: &OsStr) -> Result<()> {
        if crate::layer::format::is_reserved_name(name) {
            Err(Error::NotFound)
        } else {
            Ok(())
        }
    }
}

/// A writable overlay of one lower and one upper layer in a temporary directory, for unit
/// tests: `fill` gets the lower and upper directories before the layers are opened.
#[cfg(test)]
pub(crate) fn scratch_overlay(
    fill: impl FnOnce(&std::path::Path, &std::path::Path),
) -> (tempfile::TempDir, Overlay) {
    let t = tempfile::tempdir().unwrap();
    let (l, u, w) = (t.path().join("l"), t.path().join("u"), t.path().join("w"));
    for d in [&l, &u, &w] {
        std::fs::create_dir(d).unwrap();
    }
    fill(&l, &u);
    let stack = LayerStack::open(Some((&u, &w)), &[l], crate::config::Xino::Auto, false).unwrap();
    let mut cfg = crate::config::MountConfig::new(t.path().join("m"), vec![]);
    cfg.upperdir = Some(u);
    cfg.workdir = Some(w);
    let ov = Overlay::new(stack, Options::from_config(&cfg));
    (t, ov)
}

/// A marker xattr of a layer directory that [`Overlay::dir_mark`] keeps per cached fd.
#[derive(Debug, Clone, Copy)]
enum DirMark {
    /// `overlay.opaque=x`: its empty regular files may be xattr whiteouts.
    XWhiteouts,
    /// `overlay.impure`: it holds entries copied up with an origin (metacopy files too).
    Impure,
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::sync::Arc;

    use crate::inode::ROOT;
    use crate::test_hook::Hook;

    thread_local! {
        /// Run once by this thread's next caching of a directory fd, between its open and
        /// the cache.
        pub(super) static BEFORE_DIR_FD_CACHED: Hook = Hook::default();
    }

    /// The upper copy of a merged directory replaced behind the mount, and refreshed, while
    /// a lookup in it had opened the old copy but not cached it yet: the old fd used to be
    /// cached after the refresh had dropped what it knew, so the new copy's names never
    /// showed (the race `tests/udba.rs` met under load).
    #[test]
    fn a_directory_fd_opened_before_a_refresh_is_not_cached_after_it() {
        let (t, ov) = super::scratch_overlay(|l, u| {
            std::fs::create_dir(l.join("d")).unwrap();
            std::fs::write(l.join("d/a"), "a").unwrap();
            std::fs::create_dir(u.join("d")).unwrap();
        });
        let ov = Arc::new(ov);
        let d = ov.lookup(ROOT, OsStr::new("d")).unwrap().node;
        let upper_d = t.path().join("u/d");
        let (ov2, upper_d2) = (Arc::clone(&ov), upper_d.clone());
        BEFORE_DIR_FD_CACHED.with(|h| {
            h.arm(move || {
                std::fs::remove_dir(&upper_d2).unwrap();
                std::fs::create_dir(&upper_d2).unwrap();
                std::fs::write(upper_d2.join("b"), "b").unwrap();
                ov2.refresh(&super::refresh::Scope::Paths(vec!["d".into()]));
            })
        });
        // Opens d's copies (the hook fires at the first) and finds a in the lower one.
        assert!(ov.lookup(d, OsStr::new("a")).is_ok());
        let b = ov.lookup(d, OsStr::new("b"));
        assert!(b.is_ok(), "b, in the new upper copy: {:?}", b.map(|_| ()));
        drop(t);
    }
}
