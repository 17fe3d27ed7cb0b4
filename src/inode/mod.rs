//! The node table: FUSE node ids to merged objects, with the kernel's lookup counts.
//!
//! A node id is the object's `st_ino`, except for the names of a lower hard link in a
//! writable union, which are nodes of their own that show the lower file's `st_ino` (see
//! `Overlay::shown_ino`); upper hard links share one node. A node lives while the kernel
//! holds a reference to it and is dropped on the forget that brings its count to zero, so the
//! table's size follows the kernel's dentry cache, not the size of the tree that was walked.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::layer::{Ino, LayerIdx, LayerIno, INDEX_LAYER};
use crate::sys::FileKind;

pub use crate::layer::InoScheme;

/// The id the kernel knows a node by (FUSE's `nodeid`), in requests and entry replies.
///
/// The one rule relating it to the `st_ino` shown ([`Ino`]) lives here: a node's id is the
/// number its object shows ([`NodeId::shown`] and its inverse), except where the node table
/// gives another (an object whose number a node of another object still holds: see
/// [`NodeTable::remember`]); and a node shows its id unless its object shows another number
/// (a lower hard link's name: `Overlay::shown_ino`). Only the wire takes it as a `u64`
/// ([`NodeId::from_wire`], [`NodeId::get`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u64);

impl NodeId {
    /// The root's node id, fixed by FUSE.
    pub const ROOT: NodeId = NodeId(crate::layer::ino::ROOT_INO);

    /// A node id as the kernel sends it (or 0, which names no node).
    pub const fn from_wire(n: u64) -> NodeId {
        NodeId(n)
    }

    /// The id as the wire carries it.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The `st_ino` the node shows unless its object shows another number (see
    /// `Overlay::shown_ino`): its id.
    pub const fn shown(self) -> Ino {
        Ino::from_node_number(self.0)
    }

    /// The id of a node for an object shown as `ino` when no other node holds it: the same
    /// number (the inverse of [`NodeId::shown`]).
    const fn of_shown(ino: Ino) -> NodeId {
        NodeId(ino.get())
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The root's node id, fixed by FUSE.
pub const ROOT: NodeId = NodeId::ROOT;

/// The upper layer's index (layer 0 of a writable union).
pub const UPPER_LAYER: LayerIdx = 0;

/// A name in a directory, held in the node itself up to 16 bytes (most names are shorter),
/// without an allocation of its own. Reads as an `OsStr`.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Name(smallvec::SmallVec<[u8; 16]>);

impl Name {
    /// The name as an `OsString`.
    pub fn to_os_string(&self) -> OsString {
        self.as_os_str().to_os_string()
    }

    /// The name as an `OsStr`.
    pub fn as_os_str(&self) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(&self.0[..])
    }
}

impl std::ops::Deref for Name {
    type Target = std::ffi::OsStr;
    fn deref(&self) -> &std::ffi::OsStr {
        self.as_os_str()
    }
}

impl AsRef<std::ffi::OsStr> for Name {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.as_os_str()
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_os_str().fmt(f)
    }
}

impl From<&std::ffi::OsStr> for Name {
    fn from(s: &std::ffi::OsStr) -> Name {
        Name(smallvec::SmallVec::from_slice(s.as_encoded_bytes()))
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name::from(std::ffi::OsStr::new(s))
    }
}

impl From<OsString> for Name {
    fn from(s: OsString) -> Name {
        Name::from(s.as_os_str())
    }
}

impl PartialEq<std::ffi::OsStr> for Name {
    fn eq(&self, other: &std::ffi::OsStr) -> bool {
        self.as_os_str() == other
    }
}

impl PartialEq<&std::ffi::OsStr> for Name {
    fn eq(&self, other: &&std::ffi::OsStr) -> bool {
        self.as_os_str() == *other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_os_str() == *other
    }
}

/// A node's layers, topmost first: held in the node itself up to eight of them (most
/// nodes have one), without an allocation of their own.
pub type Layers = smallvec::SmallVec<[LayerIdx; 8]>;

/// Where a node is found: its parent, its name there, and the layers that hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The parent directory's node id (the root is its own parent).
    pub parent: NodeId,
    /// The name in the parent (empty for the root).
    pub name: Name,
    /// For a directory, the layers merged into it, topmost first, stopping at an opaque one;
    /// for anything else, the one layer it comes from.
    pub layers: Layers,
    /// Which object the topmost copy (in `layers[0]`) is, when known (see [`ObjectId`]);
    /// for a directory, its bottom copy, whose number the directory shows.
    pub object: Option<ObjectId>,
    /// For a directory, the layers of `layers` where a redirect (`overlay.redirect`) put its
    /// copy elsewhere than under its name in the parent's copy there.
    pub redirects: Option<Arc<[(LayerIdx, LayerPath)]>>,
}

impl Location {
    /// The topmost layer holding the object.
    pub fn top(&self) -> Option<LayerIdx> {
        self.layers.first().copied()
    }

    /// The name the object has in the directory its top copy is in: its name, but for a
    /// file found only in the inodes index, its name there (see [`INDEX_LAYER`]).
    pub fn top_name(&self) -> &std::ffi::OsStr {
        match (self.top(), self.redirect_in(INDEX_LAYER)) {
            (Some(INDEX_LAYER), Some(LayerPath::InParent(n))) => n,
            _ => &self.name,
        }
    }

    /// True when the top copy is in the upper layer, or in the inodes index (on the upper
    /// layer's filesystem too: the same object once a name of it is linked up).
    pub fn upper_side(&self) -> bool {
        matches!(self.top(), Some(0) | Some(INDEX_LAYER))
    }

    /// Where a redirect put the directory's copy in layer `layer`, if one did.
    pub fn redirect_in(&self, layer: LayerIdx) -> Option<&LayerPath> {
        self.redirects
            .as_deref()?
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, p)| p)
    }
}

/// Where a directory's copy is in a layer where a redirect put it (the kernel's
/// `overlay.redirect`, followed as `redirect_dir=follow` does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerPath {
    /// Under this name in the parent's copy in that layer (a relative redirect).
    InParent(OsString),
    /// At this path from the layer's root, one component each (an absolute redirect).
    FromRoot(Vec<OsString>),
}

/// One object of one layer: a fingerprint of its inode number there and its birth time
/// (8 bytes per node). The number alone names an object only until the object is freed: a
/// filesystem hands freed numbers to new objects (ext4 at once), so an object replaced
/// behind the mount could be taken for the one the kernel looked up, and serve another
/// file's data. The birth time tells them apart (where the filesystem keeps none, the
/// number alone decides, as before). A non-directory's copies in different layers are
/// the same object across a copy-up (the upper copy keeps the lower one's number), and the
/// lower copy a resolution that raced a copy-up saw is the same object too; otherwise one
/// number with two fingerprints is a number reused by another object (on the same
/// filesystem, in whichever layer). A directory's number and fingerprint both come from
/// its bottom copy, which a copy-up leaves alone: two fingerprints are two objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectId(std::num::NonZeroU64);

impl ObjectId {
    /// Layer object `obj` born at `born` (nanoseconds since the epoch; 0 where the
    /// filesystem keeps no birth time). The layer is not in the fingerprint: only copies in
    /// one layer are compared.
    pub fn new(obj: LayerIno, born: u64) -> ObjectId {
        let h = obj.ino.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ born.rotate_left(29).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        ObjectId(std::num::NonZeroU64::new(h).unwrap_or(std::num::NonZeroU64::MIN))
    }
}

/// Source of directory versions, unique for the life of the daemon. They are even; a
/// directory's version is odd while its mutation lock is held (see [`Node::lock_dir`]).
static VERSIONS: AtomicU64 = AtomicU64::new(2);

fn next_version() -> u64 {
    VERSIONS.fetch_add(2, Ordering::Relaxed)
}

/// A directory's mutation lock. Taking it makes the directory's version odd, releasing it
/// moves it on to a new even one: a version read before and after a resolution in the
/// directory, even and unchanged, means no change touched it meanwhile (a seqlock).
#[derive(Debug)]
pub struct DirGuard<'a> {
    node: &'a Node,
    _lock: parking_lot::MutexGuard<'a, ()>,
    before: u64,
}

impl DirGuard<'_> {
    /// The directory's version when the lock was taken: what was found of it at that
    /// version (a name missing) holds until the change the guard is for.
    pub fn before(&self) -> u64 {
        self.before
    }
}

impl Drop for DirGuard<'_> {
    fn drop(&mut self) {
        // Runs before the lock is released: whoever builds a listing after seeing this
        // version also sees the change.
        self.node.version.store(next_version(), Ordering::Release);
    }
}

/// One merged object the kernel knows about.
#[derive(Debug)]
pub struct Node {
    /// Node id (shown as `st_ino`, but for a lower hard link's names: `Overlay::shown_ino`).
    pub id: NodeId,
    /// File type; fixed for the life of the node.
    pub kind: FileKind,
    lookups: AtomicU64,
    loc: RwLock<Location>,
    /// Serialises the copy-up of this node (one copy, however many first writers race).
    pub copy_lock: Mutex<()>,
    /// Serialises changes to the entries of this directory (see [`Node::lock_dir`]).
    dir_lock: Mutex<()>,
    /// Changes whenever the entries of this directory change (unique across all nodes, so a
    /// listing tagged with it can never be taken for another node's).
    version: AtomicU64,
    /// A directory: the version of the first listing of it handed out from offset 0. A
    /// regular file: 1 once the daemon dealt with its data at an open (see
    /// [`Node::data_given`]).
    listed: AtomicU64,
    /// The table's epoch when a request last used this node (see [`NodeTable::cold`]).
    touched: AtomicU32,
    /// The number this node's object was looked up by (its id, unless that had to differ).
    looked_up: Ino,
    /// The object is gone from every layer (its last name removed through the mount) while
    /// the kernel still holds the node: its inode number may be reused by a new object.
    dead: AtomicBool,
}

impl Node {
    fn new(id: NodeId, looked_up: Ino, kind: FileKind, loc: Location) -> Node {
        Node {
            id,
            looked_up,
            dead: AtomicBool::new(false),
            kind,
            lookups: AtomicU64::new(1),
            loc: RwLock::new(loc),
            copy_lock: Mutex::new(()),
            dir_lock: Mutex::new(()),
            version: AtomicU64::new(next_version()),
            listed: AtomicU64::new(0),
            touched: AtomicU32::new(0),
        }
    }

    /// Takes this directory's mutation lock; when the guard is dropped (after the change) the
    /// directory's version moves on, so listings taken before the change are stale.
    pub fn lock_dir(&self) -> DirGuard<'_> {
        let lock = self.dir_lock.lock();
        // Before any change is made: a resolution running now sees the version move.
        let before = self.version.swap(next_version() | 1, Ordering::SeqCst);
        DirGuard {
            node: self,
            _lock: lock,
            before,
        }
    }

    /// Holds this directory's mutation lock without counting as a change: resolutions made
    /// meanwhile cannot race with one.
    pub fn hold_dir(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.dir_lock.lock()
    }

    /// The layers merged into this directory changed: listings positions index the old chain.
    fn layers_changed(&self) {
        // A new version, odd still if the directory's lock is held.
        let _ = self
            .version
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(next_version() | (v & 1))
            });
    }

    /// Records that a request used this node in `epoch`. Written only when it changes: nodes
    /// such as the root are used by every request, and a store per use would bounce their
    /// cache line between CPUs.
    fn touch(&self, epoch: u32) {
        if self.touched.load(Ordering::Relaxed) != epoch {
            self.touched.store(epoch, Ordering::Relaxed);
        }
    }

    /// The directory's current version (see [`Node::lock_dir`]).
    pub fn dir_version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The directory's version when no change is under way in it (none when one is).
    pub fn quiet_version(&self) -> Option<u64> {
        let v = self.version.load(Ordering::SeqCst);
        (v & 1 == 0).then_some(v)
    }

    /// Records that a listing of `version` was handed to a reader starting at offset 0.
    /// Only the first one is kept: see [`Node::listed_is_current`].
    pub fn set_listed(&self, version: u64) {
        let _ = self
            .listed
            .compare_exchange(0, version, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Whether the daemon dealt with this regular file's data at an open since the node was
    /// made: stored it unasked in the kernel's page cache, or found it too big to
    /// ([`Node::give_data`]); always true for anything else. The kernel keeps a lower
    /// file's pages while it holds the node, so storing them once is enough (pages it drops
    /// under memory pressure are read again with READ).
    pub fn data_given(&self) -> bool {
        self.kind != FileKind::Regular || self.listed.load(Ordering::Relaxed) != 0
    }

    /// Notes that the daemon dealt with this regular file's data (see [`Node::data_given`]).
    pub fn give_data(&self) {
        if self.kind == FileKind::Regular {
            self.listed.store(1, Ordering::Relaxed);
        }
    }

    /// True when the directory has not changed since its first listing was handed out, so
    /// every listing the kernel may have cached from is of the current version. (The last
    /// one handed out being current is not enough: the kernel's readdir cache can be
    /// filled by a reader whose listing was taken before a change and stamped with the
    /// directory's state after it, when another reader starts at offset 0 while that
    /// reply is in flight; a directory changed once it was listed never has its cache
    /// kept across opens again.)
    pub fn listed_is_current(&self) -> bool {
        self.listed.load(Ordering::Acquire) == self.dir_version()
    }

    /// The object was removed from every layer through the mount (see [`NodeTable::mark_dead`]).
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// A snapshot of where the node is now.
    pub fn location(&self) -> Location {
        self.loc.read().clone()
    }

    /// The parent's node id.
    pub fn parent(&self) -> NodeId {
        self.loc.read().parent
    }

    /// Runs `f` on the location without copying it.
    pub fn with_location<R>(&self, f: impl FnOnce(&Location) -> R) -> R {
        f(&self.loc.read())
    }
}

/// All nodes the kernel holds, sharded (no global lock).
#[derive(Debug)]
pub struct NodeTable {
    /// The nodes, each its own key (found by id): one pointer per node in the table.
    map: DashMap<Held, ()>,
    /// Numbers shown whose node had to take another id (see [`NodeTable::remember`]).
    remap: DashMap<Ino, NodeId>,
    /// Dead nodes' objects as they were when their last name was removed (`O_PATH` fds),
    /// kept while the kernel holds the nodes: requests that raced with the removal (an open
    /// through a dentry the kernel found before the unlink) reach them, as they would reach
    /// the kernel's overlayfs inode, which lives on while it is referenced. (Beside the
    /// nodes, not in them: few nodes are dead at a time.)
    kept: DashMap<NodeId, Arc<OwnedFd>>,
    /// Other names a non-directory node was seen under (hard links): when the name in its
    /// location goes away, the node is still reachable through one of these. (Beside the
    /// nodes, not in them: few nodes have other names, and every node would pay for the
    /// room. Locked after the node's location, never before.)
    aliases: DashMap<NodeId, Vec<(NodeId, Name)>>,
    next_synthetic: AtomicU64,
    /// Advanced by each [`NodeTable::cold`]; nodes record it when used.
    epoch: AtomicU32,
    /// Layer 0 is a writable upper layer.
    upper: bool,
}

/// A node as the key of the table's entry for it: hashed and compared by its id, so an
/// entry is one pointer (the id is read from the node, not stored beside it).
#[derive(Debug)]
struct Held(Arc<Node>);

impl PartialEq for Held {
    fn eq(&self, other: &Held) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Held {}

impl std::hash::Hash for Held {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `NodeId` hashes: the table is searched by id (`Borrow`).
        self.0.id.hash(state);
    }
}

impl std::borrow::Borrow<NodeId> for Held {
    fn borrow(&self) -> &NodeId {
        &self.0.id
    }
}

/// Node ids handed out when two distinct objects would share an inode number (possible only
/// when one layer directory is nested inside another on the same filesystem).
const SYNTHETIC_BASE: u64 = 0xfff0_0000_0000_0000;

/// How many other names a node keeps (hard links seen through the mount).
const MAX_ALIASES: usize = 64;

impl NodeTable {
    /// A table holding only the root, whose merged layers are `root_layers`.
    pub fn new(root_layers: Layers, upper: bool) -> NodeTable {
        let map = DashMap::new();
        map.insert(
            Held(Arc::new(Node::new(
                ROOT,
                ROOT.shown(),
                FileKind::Directory,
                Location {
                    parent: ROOT,
                    name: Name::default(),
                    layers: root_layers,
                    object: None,
                    redirects: None,
                },
            ))),
            (),
        );
        NodeTable {
            map,
            remap: DashMap::new(),
            kept: DashMap::new(),
            aliases: DashMap::new(),
            next_synthetic: AtomicU64::new(SYNTHETIC_BASE),
            epoch: AtomicU32::new(1),
            upper,
        }
    }

    /// The node with id `id`, if the kernel holds it.
    pub fn get(&self, id: NodeId) -> Option<Arc<Node>> {
        let node = self.map.get(&id).map(|n| Arc::clone(&n.key().0))?;
        node.touch(self.epoch.load(Ordering::Relaxed));
        Some(node)
    }

    /// Up to `want` nodes no request has used since the previous call (never the root), and
    /// starts a new epoch. Asking the kernel to prune these keeps the table near a size
    /// without dropping what is in use: the kernel forgets only inodes it does not use.
    pub fn cold(&self, want: usize) -> Vec<NodeId> {
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        if want == 0 {
            return out;
        }
        for e in self.map.iter() {
            let n = &e.key().0;
            if n.id != ROOT && n.touched.load(Ordering::Relaxed) < epoch {
                out.push(n.id);
                if out.len() >= want {
                    break;
                }
            }
        }
        out
    }

    /// Records one kernel lookup of an object shown as `ino` at `loc`, creating the node or
    /// updating where it was last seen (a hard link's other name, or a move). Returns the
    /// node. Its id is the one `ino` stands for ([`NodeId::shown`]) unless that id is held by another object the kernel still
    /// knows: one of another type, a lower file whose hard link a copy-up broke, or a deleted
    /// object whose inode number the filesystem reused. Such an object gets an id of its own,
    /// remembered so that later lookups (and listings, through [`NodeTable::visible_id`])
    /// agree on it.
    pub fn remember(&self, ino: Ino, kind: FileKind, loc: Location) -> Arc<Node> {
        let mut loc = loc;
        loop {
            match self.remember_if(ino, kind, loc, || true) {
                Ok(node) => return node,
                Err(back) => loc = back,
            }
        }
    }

    /// [`NodeTable::remember`], unless `valid` (asked while the node cannot change) says
    /// the resolution that produced `loc` is out of date: then nothing is recorded and `loc`
    /// comes back.
    pub fn remember_if(
        &self,
        ino: Ino,
        kind: FileKind,
        loc: Location,
        valid: impl Fn() -> bool,
    ) -> Result<Arc<Node>, Location> {
        let own = NodeId::of_shown(ino);
        let first = self.remap.get(&ino).map(|v| *v).unwrap_or(own);
        let mut id = first;
        let mut loc = loc;
        loop {
            // Held for writing while the node is updated, as `forget` holds it to drop one.
            if let Some(o) = self.map.get_mut(&id) {
                {
                    let node = &o.key().0;
                    let mut cur = node.loc.write();
                    let was_upper = cur.upper_side();
                    let same_name = cur.parent == loc.parent && cur.name == loc.name;
                    // A non-directory copied up is a different object from a lower file that
                    // shared its inode through a hard link the copy-up broke; under the same
                    // name it is the same object, seen by a resolution that raced with its
                    // copy-up.
                    let same_side = kind == FileKind::Directory
                        || same_name
                        || was_upper == loc.upper_side()
                        || !self.upper;
                    // Another object under the number the node's object had in the same
                    // layer: the node's object is gone (removed behind the mount, its
                    // number reused). The node dies, as if removed through the mount, so
                    // that no request reaches the new object through it.
                    // (Only on a resolution that is still current.)
                    if id != ROOT && self.replaced(kind, &cur, &loc) {
                        if !valid() {
                            return Err(loc);
                        }
                        node.dead.store(true, Ordering::Release);
                    }
                    if node.kind == kind
                        && id != ROOT
                        && same_side
                        && !node.dead.load(Ordering::Acquire)
                    {
                        if !valid() {
                            return Err(loc);
                        }
                        node.lookups.fetch_add(1, Ordering::Relaxed);
                        node.touch(self.epoch.load(Ordering::Relaxed));
                        // A resolution taken before a copy-up finished never moves the node
                        // back to the lower copy.
                        let stale = kind != FileKind::Directory
                            && self.upper
                            && was_upper
                            && !loc.upper_side()
                            && same_name;
                        let mut loc = loc;
                        if loc.object.is_none() && cur.layers == loc.layers {
                            // A resolution that did not say which object it found (a new
                            // name of the same object) keeps what is known.
                            loc.object = cur.object;
                        }
                        if *cur != loc && !stale {
                            if cur.layers != loc.layers {
                                node.layers_changed();
                            }
                            if kind != FileKind::Directory && !same_name {
                                let mut al = self.aliases.entry(id).or_default();
                                let old = (cur.parent, cur.name.clone());
                                if !al.contains(&old) && al.len() < MAX_ALIASES {
                                    al.push(old);
                                }
                                al.retain(|(p, n)| !(*p == loc.parent && *n == loc.name));
                            }
                            *cur = loc;
                        }
                        drop(cur);
                        return Ok(Arc::clone(node));
                    }
                }
            } else {
                if !valid() {
                    return Err(loc);
                }
                let node = Arc::new(Node::new(id, ino, kind, loc));
                match self.map.entry(Held(Arc::clone(&node))) {
                    Entry::Vacant(v) => {
                        self.aliases.remove(&id);
                        node.touch(self.epoch.load(Ordering::Relaxed));
                        // The number is mapped while the new entry is held (lock order:
                        // node entry, then mapping), as `forget` unmaps it.
                        let _held = v.insert(());
                        if id != own {
                            self.remap.insert(ino, id);
                        } else {
                            // The number is the object's own again: an older mapping is
                            // stale.
                            self.remap.remove(&ino);
                        }
                        return Ok(node);
                    }
                    Entry::Occupied(o) => {
                        // Another lookup made a node of this id meanwhile: look again.
                        drop(o);
                        loc = match Arc::try_unwrap(node) {
                            Ok(n) => n.loc.into_inner(),
                            Err(n) => n.location(),
                        };
                        continue;
                    }
                }
            }
            id = if id == first && first != own {
                own
            } else {
                NodeId(self.next_synthetic.fetch_add(1, Ordering::Relaxed))
            };
        }
    }

    /// The id of the node a lookup of an object shown as `ino` gives (what a listing
    /// reports, through [`NodeId::shown`]).
    pub fn visible_id(&self, ino: Ino) -> NodeId {
        if self.remap.is_empty() {
            return NodeId::of_shown(ino);
        }
        self.remap
            .get(&ino)
            .map(|v| *v)
            .unwrap_or(NodeId::of_shown(ino))
    }

    /// Undoes [`NodeTable::mark_dead`] when the removal it announced failed.
    pub fn revive(&self, id: NodeId) {
        if let Some(n) = self.map.get(&id) {
            self.kept.remove(&id);
            n.key().0.dead.store(false, Ordering::Release);
        }
    }

    /// [`NodeTable::mark_dead`], keeping `object` (the node's object as it was, an
    /// `O_PATH` fd) for the requests that raced with its removal, until the kernel
    /// forgets the node. The filesystem cannot reuse its inode number meanwhile.
    pub fn mark_dead_keeping(&self, id: NodeId, object: Option<OwnedFd>) {
        // Recorded while the node's entry is held, as `forget` drops it.
        if let Some(n) = self.map.get(&id) {
            match object {
                Some(fd) => self.kept.insert(id, Arc::new(fd)),
                None => self.kept.remove(&id).map(|(_, fd)| fd),
            };
            n.key().0.dead.store(true, Ordering::Release);
        }
    }

    /// Dead `node`'s object as it was when its last name was removed, if it was kept (see
    /// [`NodeTable::mark_dead_keeping`]).
    pub fn kept(&self, node: &Node) -> Option<Arc<OwnedFd>> {
        if !node.is_dead() {
            return None;
        }
        self.kept.get(&node.id).map(|fd| Arc::clone(fd.value()))
    }

    /// Node `id`'s object was removed from every layer: its inode number is free for reuse.
    pub fn mark_dead(&self, id: NodeId) {
        if let Some(n) = self.get(id) {
            n.dead.store(true, Ordering::Release);
        }
    }

    /// Drops `n` kernel references; removes the node when none are left. Returns true when
    /// the node was removed.
    pub fn forget(&self, id: NodeId, n: u64) -> bool {
        if id == ROOT {
            return false;
        }
        // Decided while the node's entry is held for writing: a lookup of it either came
        // before (and its reference is counted) or waits and makes the node anew.
        let removed = self.map.remove_if(&id, |held, ()| {
            let node = &held.0;
            let left = node
                .lookups
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                    Some(c.saturating_sub(n))
                })
                .map(|prev| prev.saturating_sub(n))
                .unwrap_or(0);
            if left != 0 {
                return false;
            }
            // The number's mapping goes while the entry is still held: a lookup that makes
            // the node again (it waits for the entry) maps the number anew.
            if NodeId::of_shown(node.looked_up) != node.id {
                self.remap.remove_if(&node.looked_up, |_, v| *v == node.id);
            }
            self.kept.remove(&id);
            self.aliases.remove(&id);
            true
        });
        #[cfg(test)]
        if removed.is_some() {
            tests::AFTER_FORGET.with(crate::test_hook::Hook::fire);
        }
        removed.is_some()
    }

    /// Moves name `from` of a node to `(parent, name)` (after a rename through the mount).
    pub fn relocate(
        &self,
        id: NodeId,
        from: (NodeId, &std::ffi::OsStr),
        parent: NodeId,
        name: OsString,
    ) {
        if let Some(node) = self.get(id) {
            let mut loc = node.loc.write();
            if !(loc.parent == from.0 && loc.name == from.1) {
                let mut al = self.aliases.entry(id).or_default();
                al.retain(|(p, n)| !(*p == from.0 && n == from.1));
                let cur = (loc.parent, loc.name.clone());
                if !al.contains(&cur) && al.len() < MAX_ALIASES {
                    al.push(cur);
                }
            } else if let Some(mut al) = self.aliases.get_mut(&id) {
                al.retain(|(p, n)| !(*p == from.0 && n == from.1));
            }
            loc.parent = parent;
            loc.name = Name::from(name);
        }
    }

    /// Name `(parent, name)` of a node is gone (unlinked, or replaced by a rename): when it
    /// was the node's current name, another known name takes its place.
    pub fn drop_name(&self, id: NodeId, parent: NodeId, name: &std::ffi::OsStr) {
        if let Some(node) = self.get(id) {
            let mut loc = node.loc.write();
            let Some(mut al) = self.aliases.get_mut(&id) else {
                return;
            };
            al.retain(|(p, n)| !(*p == parent && n == name));
            if loc.parent == parent && loc.name == name {
                if let Some((p, n)) = al.pop() {
                    loc.parent = p;
                    loc.name = n;
                }
            }
            if al.is_empty() {
                drop(al);
                self.aliases.remove_if(&id, |_, al| al.is_empty());
            }
        }
    }

    /// Records which object node `id`'s topmost copy is, where nothing is known yet (after
    /// a copy-up) and the node is still where `seen` says it was when `object` was found.
    pub fn learn_object(&self, id: NodeId, seen: &Location, object: ObjectId) {
        if let Some(node) = self.get(id) {
            let mut loc = node.loc.write();
            if loc.object.is_none()
                && loc.parent == seen.parent
                && loc.name == seen.name
                && loc.layers == seen.layers
            {
                loc.object = Some(object);
            }
        }
    }

    /// Records where node `id` is found now, at the name it is at (resolved again).
    pub fn set_location(&self, id: NodeId, found: Location) {
        if let Some(node) = self.get(id) {
            let mut loc = node.loc.write();
            if loc.parent == found.parent && loc.name == found.name && *loc != found {
                if loc.layers != found.layers {
                    node.layers_changed();
                }
                *loc = found;
            }
        }
    }

    /// [`NodeTable::set_layers`], if node `id` is still at `name` in `parent` (another name
    /// of the same file was linked up).
    pub fn set_layers_at(
        &self,
        id: NodeId,
        (parent, name): (NodeId, &std::ffi::OsStr),
        layers: Layers,
    ) {
        let here = self
            .get(id)
            .is_some_and(|n| n.with_location(|l| l.parent == parent && l.name == name));
        if here {
            self.set_layers(id, layers);
        }
    }

    /// Replaces the layers of a node (after a copy-up or a change of merge). Which object
    /// the new topmost copy is becomes known at the next lookup.
    pub fn set_layers(&self, id: NodeId, layers: Layers) {
        if let Some(node) = self.get(id) {
            let mut loc = node.loc.write();
            if loc.layers != layers {
                node.layers_changed();
                if loc.top() != layers.first().copied() {
                    loc.object = None;
                }
                if loc.top() == Some(INDEX_LAYER) {
                    // Where the index put it: no longer where it is.
                    loc.redirects = None;
                }
            }
            loc.layers = layers;
        }
    }

    /// Replaces the layers of directory node `id` and where redirects put it in them (after
    /// a rename that gave it a redirect).
    pub fn set_merge(
        &self,
        id: NodeId,
        layers: Layers,
        redirects: Option<Arc<[(LayerIdx, LayerPath)]>>,
    ) {
        self.set_layers(id, layers);
        if let Some(node) = self.get(id) {
            node.loc.write().redirects = redirects;
        }
    }

    /// Every node the table holds now.
    pub fn all(&self) -> Vec<Arc<Node>> {
        self.map.iter().map(|e| Arc::clone(&e.key().0)).collect()
    }

    /// A refresh found `node`'s name holding an object shown as `ino` of kind `kind`, at
    /// `loc` (or nothing: `None`). When that is the node's object (the id a lookup of it
    /// would give, the same kind, and not another object under the number it had in the
    /// same layer), the node takes the new layers and returns true. Otherwise the node's
    /// object is gone from its name: the node dies (as if removed through the mount) and
    /// false comes back.
    pub fn refresh_location(&self, node: &Node, found: Option<(Ino, FileKind, Location)>) -> bool {
        if node.id == ROOT {
            return true;
        }
        if let Some((ino, kind, loc)) = found {
            let mut cur = node.loc.write();
            let replaced = self.replaced(kind, &cur, &loc);
            if self.visible_id(ino) == node.id && kind == node.kind && !replaced {
                if cur.layers != loc.layers {
                    node.layers_changed();
                }
                cur.layers = loc.layers;
                cur.redirects = loc.redirects;
                if loc.object.is_some() {
                    cur.object = loc.object;
                }
                return true;
            }
        }
        node.dead.store(true, Ordering::Release);
        false
    }

    /// True when `loc`, a resolution of an object of kind `kind` under the number of the
    /// node at `cur`, found another object than the node's (see [`ObjectId`]): its
    /// number was reused. A non-directory recorded in the upper layer and seen in a lower
    /// one is the lower copy of a resolution that raced its copy-up, not another object.
    fn replaced(&self, kind: FileKind, cur: &Location, loc: &Location) -> bool {
        let (Some(was), Some(now)) = (cur.object, loc.object) else {
            return false;
        };
        let stale_view = self.upper && cur.upper_side() && !loc.upper_side();
        was != now && (cur.top() == loc.top() || kind == FileKind::Directory || !stale_view)
    }

    /// How many nodes the kernel holds (the root included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Never true: the root is always there.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_hook::Hook;

    thread_local! {
        /// Run once by this thread's next forget that removes a node, right after.
        pub(super) static AFTER_FORGET: Hook = Hook::default();
    }

    /// The kernel forgets a node with a synthetic id while a lookup of its object comes in:
    /// the lookup makes a node again, and the object's inode number must map to it. (The
    /// forget used to drop that mapping after the lookup had made it; the node then stood
    /// for an object no lookup found, a rename over the object killed another node, and
    /// this one kept a name the object no longer had.)
    #[test]
    fn forget_racing_a_lookup_keeps_the_number_mapped() {
        let t = std::sync::Arc::new(NodeTable::new(smallvec::smallvec![0], true));
        // A dead node holds number 50, so the object now numbered 50 gets a synthetic id.
        t.remember(ino(50), FileKind::Regular, loc(ROOT, "old"));
        t.mark_dead(id(50));
        let s = t.remember(ino(50), FileKind::Regular, loc(ROOT, "b"));
        assert_ne!(s.id, id(50));
        assert!(t.forget(id(50), 1));
        let t2 = std::sync::Arc::clone(&t);
        let again = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = std::sync::Arc::clone(&again);
        AFTER_FORGET.with(|b| {
            b.arm(move || {
                let n = t2.remember(ino(50), FileKind::Regular, loc(ROOT, "b"));
                *seen.lock().unwrap() = Some(n.id);
            })
        });
        assert!(t.forget(s.id, 1));
        let id = again.lock().unwrap().expect("the lookup ran");
        assert!(t.get(id).is_some_and(|n| !n.is_dead()));
        assert_eq!(
            t.visible_id(ino(50)),
            id,
            "number 50 must lead to the live node"
        );
    }

    /// The table keeps `node_limit` nodes (160,000 by default): each byte of a node is
    /// 160 KB of the daemon's memory on a big walk. A node's name and layers live in it
    /// (no allocation of their own while short), its other names beside it.
    #[test]
    fn a_node_stays_small() {
        assert!(
            std::mem::size_of::<Node>() <= 136,
            "Node is {} bytes",
            std::mem::size_of::<Node>()
        );
        let l = loc(ROOT, "libc.so.6");
        assert!(!l.name.0.spilled() && !l.layers.spilled());
    }

    #[test]
    fn names_of_any_length_and_bytes_are_kept_whole() {
        use std::os::unix::ffi::OsStrExt;
        for raw in [
            &b""[..],
            b"a",
            b"exactly-16-bytes",
            b"seventeen-bytes.x",
            b"\xff\xfe not utf-8 \x80",
            &[b'n'; 255],
        ] {
            let os = std::ffi::OsStr::from_bytes(raw);
            let n = Name::from(os);
            assert_eq!(n.as_os_str().as_bytes(), raw);
            assert_eq!(n, os);
            assert_eq!(n.to_os_string(), os.to_os_string());
        }
    }

    /// A hard link's other names are kept beside the node: when the name it is at goes, it
    /// moves to another; a forgotten node takes none of them to a node made later with its id.
    #[test]
    fn a_hard_links_other_names_follow_it_and_go_with_it() {
        let t = NodeTable::new(smallvec::smallvec![0], true);
        let lower = |name: &str| Location {
            layers: smallvec::smallvec![1],
            ..loc(ROOT, name)
        };
        t.remember(ino(60), FileKind::Regular, lower("a"));
        let n = t.remember(ino(60), FileKind::Regular, lower("b"));
        assert_eq!(n.location().name, "b");
        t.drop_name(n.id, ROOT, std::ffi::OsStr::new("b"));
        assert_eq!(n.location().name, "a", "the other name takes its place");
        t.relocate(n.id, (ROOT, std::ffi::OsStr::new("a")), ROOT, "c".into());
        assert_eq!(n.location().name, "c");
        t.drop_name(n.id, ROOT, std::ffi::OsStr::new("c"));
        assert_eq!(n.location().name, "c", "no other name is left");
        // Seen under two names again, then forgotten with a name still kept beside it.
        t.remember(ino(60), FileKind::Regular, lower("g"));
        assert_eq!(n.location().name, "g");
        assert!(t.forget(n.id, 3));
        let fresh = t.remember(ino(60), FileKind::Regular, lower("f"));
        assert_eq!(fresh.id, n.id, "the object's own number again");
        t.drop_name(fresh.id, ROOT, std::ffi::OsStr::new("f"));
        assert_eq!(
            fresh.location().name,
            "f",
            "the forgotten node's names are gone"
        );
    }

    fn ino(n: u64) -> Ino {
        Ino::from_node_number(n)
    }

    fn id(n: u64) -> NodeId {
        NodeId::from_wire(n)
    }

    fn loc(parent: NodeId, name: &str) -> Location {
        Location {
            parent,
            name: name.into(),
            layers: smallvec::smallvec![0],
            object: None,
            redirects: None,
        }
    }

    /// A readdirplus resolution taken before a copy-up placed the upper copy arrives after
    /// it: same object (same name), and the node stays on the upper copy. (It used to get a
    /// synthetic id of its own, as a broken lower hard link does, and the next write
    /// copied it up again: EEXIST under load.)
    #[test]
    fn stale_lower_resolution_keeps_the_copied_up_node() {
        let t = NodeTable::new(smallvec::smallvec![0, 1], true);
        let mut lower = loc(ROOT, "f");
        lower.layers = smallvec::smallvec![1];
        let n = t.remember(ino(77), FileKind::Regular, lower.clone());
        assert_eq!(n.id, id(77));
        // The copy-up moves it up.
        t.set_layers(id(77), smallvec::smallvec![0]);
        let again = t.remember(ino(77), FileKind::Regular, lower);
        assert_eq!(again.id, id(77));
        assert_eq!(again.location().layers.to_vec(), vec![0]);
        // Under another name, a lower object with that number is another object (a lower
        // hard link the copy-up broke).
        let mut other = loc(ROOT, "g");
        other.layers = smallvec::smallvec![1];
        assert_ne!(t.remember(ino(77), FileKind::Regular, other).id, id(77));
    }

    /// Issue 14 item 11, with the reuse faked: an object found under a live node's number in
    /// the same layer, born at another time, is another object (its number freed and
    /// reused behind the mount). The node dies and the object gets an id of its own; the
    /// same object under another name (a hard link) is still the same node.
    #[test]
    fn reused_number_with_another_birth_is_another_object() {
        let t = NodeTable::new(smallvec::smallvec![0, 1], true);
        let at = |name: &str, layer: LayerIdx, born: u64| Location {
            parent: ROOT,
            name: name.into(),
            layers: smallvec::smallvec![layer],
            object: Some(ObjectId::new(LayerIno::new(layer, 50), born)),
            redirects: None,
        };
        let victim = t.remember(ino(50), FileKind::Regular, at("victim", 1, 100));
        assert_eq!(victim.id, id(50));
        let link = t.remember(ino(50), FileKind::Regular, at("link", 1, 100));
        assert_eq!(link.id, id(50), "a hard link is the same object");
        let intruder = t.remember(ino(50), FileKind::Regular, at("intruder", 1, 200));
        assert_ne!(intruder.id, id(50));
        assert!(victim.is_dead(), "the old object is gone");
        assert_eq!(t.visible_id(ino(50)), intruder.id);
        // In another layer it is another copy of the same object (a copy-up, or a lower
        // copy seen by a resolution that raced it).
        t.set_layers(intruder.id, smallvec::smallvec![0]);
        let up = t.remember(ino(50), FileKind::Regular, at("intruder", 0, 300));
        assert_eq!(up.id, intruder.id);
        assert!(!up.is_dead());
        let lower = t.remember(ino(50), FileKind::Regular, at("intruder", 1, 200));
        assert_eq!(lower.id, intruder.id);
        assert!(!lower.is_dead());
        assert_eq!(
            lower.location().layers.to_vec(),
            vec![0],
            "never moved back down"
        );
    }

    #[test]
    fn lookups_and_forgets_balance() {
        let t = NodeTable::new(smallvec::smallvec![0], false);
        let a = t.remember(ino(10), FileKind::Regular, loc(ROOT, "a"));
        assert_eq!(a.id, id(10));
        t.remember(ino(10), FileKind::Regular, loc(ROOT, "b"));
        assert_eq!(t.get(id(10)).map(|n| n.location().name), Some("b".into()));
        assert!(!t.forget(id(10), 1));
        assert!(t.forget(id(10), 1));
        assert!(t.get(id(10)).is_none());
        assert!(!t.forget(ROOT, 100));
        assert!(t.get(ROOT).is_some());
    }

    #[test]
    fn type_clash_gets_its_own_id() {
        let t = NodeTable::new(smallvec::smallvec![0], false);
        let f = t.remember(ino(7), FileKind::Regular, loc(ROOT, "f"));
        let d = t.remember(ino(7), FileKind::Directory, loc(ROOT, "d"));
        assert_eq!(f.id, id(7));
        assert_ne!(d.id, id(7));
        assert_eq!(t.len(), 3);
        let r = t.remember(Ino::ROOT, FileKind::Directory, loc(ROOT, "x"));
        assert_ne!(r.id, ROOT);
    }

    #[test]
    fn reused_numbers_get_new_nodes_and_mappings_stay_current() {
        let t = NodeTable::new(smallvec::smallvec![0], true);
        let up = |name: &str| Location {
            parent: ROOT,
            name: name.into(),
            layers: smallvec::smallvec![0],
            object: None,
            redirects: None,
        };
        let f = t.remember(ino(50), FileKind::Regular, up("f"));
        t.mark_dead(f.id);
        let s = t.remember(ino(50), FileKind::Symlink, up("s"));
        assert_ne!(s.id, id(50));
        assert_eq!(t.visible_id(ino(50)), s.id);
        t.mark_dead(s.id);
        assert!(t.forget(id(50), 1));
        // The number is free again: the next object takes it, and listings follow.
        let n = t.remember(ino(50), FileKind::Symlink, up("n"));
        assert_eq!(n.id, id(50));
        assert_eq!(t.visible_id(ino(50)), id(50));
        t.mark_dead(t.visible_id(ino(50)));
        let m = t.remember(ino(50), FileKind::Symlink, up("m"));
        assert_ne!(m.id, id(50), "a dead node must never be handed out again");
    }
}
