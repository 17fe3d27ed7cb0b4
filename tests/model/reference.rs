//! The reference: a pure, in-memory model of what the merged view shows and of what each
//! operation does to it. It knows nothing of files on disk, copy-up or inode numbers.
//!
//! The merge rules (kernel overlayfs, with the `.wh.` format of OCI layers and
//! fuse-overlayfs): a name is looked up in the parent's layers top-down; the first
//! non-directory wins; a directory merges with the directories of that name below it, until
//! one is opaque or its own layer also holds a `.wh.NAME` file; a whiteout with no object
//! beside it hides the name from the layers below; a non-directory below a directory is
//! hidden. Names of the whiteout format (`.wh.*`) are never shown and cannot be made.
//!
//! Operations then act on the merged tree as POSIX says, with the checks the kernel's VFS
//! makes before it asks a filesystem, and what the union adds: a directory that merges a
//! lower layer cannot be renamed (`EXDEV`, as the kernel without `redirect_dir`); a copy-up
//! keeps an object's identity; hard links made through the union share one object.

use std::collections::BTreeMap;

use crate::ops::{Flag, How, Op, P};
use crate::stack::{name_of, normalize, parent_of, Entry, Layer, Opaque, Stack, PATHS};

/// An object's identity in the model (compared with `st_ino`, see `main.rs`).
pub type Id = u64;

/// What a name of the merged view holds.
#[derive(Debug, Clone)]
enum Node {
    Dir(Dir),
    /// A file or symlink, shared by its hard links.
    Leaf(Id),
}

#[derive(Debug, Clone)]
struct Dir {
    id: Id,
    mode: u32,
    xattrs: Xattrs,
    /// It merges a lower layer's directory (so cannot be renamed).
    lower: bool,
    children: BTreeMap<String, Node>,
}

#[derive(Debug, Clone)]
enum Body {
    File(Vec<u8>),
    Symlink(&'static str),
}

#[derive(Debug, Clone)]
struct Leaf {
    body: Body,
    mode: u32,
    xattrs: Xattrs,
    /// Still the lower layer's file: its link count there (names of a lower hard link share
    /// it, with the lower file's `st_ino`, until each is copied up).
    lower_nlink: Option<u32>,
}

/// Extended attributes as shown: name -> value.
pub type Xattrs = BTreeMap<String, Vec<u8>>;

/// What a path shows, as compared between the model and the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// A directory: permission bits, xattrs.
    Dir(u32, Xattrs),
    /// A regular file: permission bits, data, link count, xattrs.
    File(u32, Vec<u8>, u32, Xattrs),
    /// A symlink: target, link count.
    Symlink(Vec<u8>, u32),
}

/// A whole merged tree: every path, what it shows, and the identity of its object (the
/// model's [`Id`], or the overlay's `st_ino`).
pub type Tree = BTreeMap<String, (Shown, u64)>;

/// The merged view of a stack, and the changes made to it since.
#[derive(Debug, Clone)]
pub struct Model {
    /// The leaf of each first name of a layer's file (layer, path), while merging.
    inodes: BTreeMap<(usize, &'static str), Id>,
    root: Dir,
    leaves: BTreeMap<Id, Leaf>,
    next: Id,
}

/// True for names of the whiteout format.
pub fn reserved(name: &str) -> bool {
    name.starts_with(".wh.")
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn components(path: &str) -> (Vec<&str>, &str) {
    let dir = parent_of(path);
    let parents = if dir.is_empty() {
        Vec::new()
    } else {
        dir.split('/').collect()
    };
    (parents, name_of(path))
}

/// True when `inner` lies strictly below `outer`.
fn below(inner: &str, outer: &str) -> bool {
    inner.len() > outer.len() && inner.starts_with(outer) && inner.as_bytes()[outer.len()] == b'/'
}

impl Model {
    /// The merged view of `stack`.
    pub fn new(stack: &Stack) -> Model {
        let layers: Vec<Layer> = std::iter::once(&stack.upper)
            .chain(&stack.lowers)
            .map(normalize)
            .collect();
        let mut m = Model {
            inodes: BTreeMap::new(),
            root: Dir {
                id: 0,
                mode: 0o755,
                xattrs: Xattrs::new(),
                lower: true,
                children: BTreeMap::new(),
            },
            leaves: BTreeMap::new(),
            next: 1,
        };
        let chain: Vec<usize> = (0..layers.len()).collect();
        m.root.children = m.merge(&layers, "", &chain);
        m
    }

    fn fresh(&mut self) -> Id {
        self.next += 1;
        self.next
    }

    /// The children of directory `dir`, whose merge chain is `chain` (layer indices, 0 the
    /// upper layer).
    fn merge(&mut self, layers: &[Layer], dir: &str, chain: &[usize]) -> BTreeMap<String, Node> {
        let mut names: Vec<&str> = chain
            .iter()
            .flat_map(|&li| layers[li].keys())
            .filter(|p| parent_of(p) == dir)
            .map(|p| name_of(p))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut out = BTreeMap::new();
        for name in names {
            let path = join(dir, name);
            let mut top: Option<(Entry, usize)> = None;
            let mut sub: Vec<usize> = Vec::new();
            for &li in chain {
                let Some(slot) = layers[li].get(path.as_str()) else {
                    continue;
                };
                match slot.object {
                    Some(Entry::Dir(mode, opaque)) => {
                        if top.is_none() {
                            top = Some((Entry::Dir(mode, opaque), li));
                        }
                        sub.push(li);
                        if opaque != Opaque::No || slot.whiteout {
                            break;
                        }
                    }
                    Some(e) => {
                        if top.is_none() {
                            top = Some((e, li));
                        }
                        break;
                    }
                    None if slot.whiteout => break,
                    None => {}
                }
            }
            let node = match top {
                None | Some((Entry::Whiteout, _)) => continue,
                Some((Entry::Dir(mode, _), _)) => {
                    let id = self.fresh();
                    let children = self.merge(layers, &path, &sub);
                    Node::Dir(Dir {
                        id,
                        mode,
                        xattrs: Xattrs::new(),
                        lower: sub.iter().any(|&li| li > 0),
                        children,
                    })
                }
                Some((e, li)) => self.layer_leaf(&layers[li], li, &path, e),
            };
            out.insert(name.to_string(), node);
        }
        out
    }

    /// The leaf of non-directory `e` at `path` of layer `li`: one per inode of the layer, so
    /// that the names of a hard link share it.
    fn layer_leaf(&mut self, layer: &Layer, li: usize, path: &str, e: Entry) -> Node {
        let first = match e {
            Entry::HardLink(first) => first,
            _ => layer
                .keys()
                .copied()
                .find(|p| *p == path)
                .unwrap_or_else(|| unreachable!("the path is the layer's")),
        };
        if let Some(id) = self.inodes.get(&(li, first)) {
            return Node::Leaf(*id);
        }
        let names = 1 + layer
            .values()
            .filter(|s| s.object == Some(Entry::HardLink(first)))
            .count() as u32;
        let node = match layer[first].object {
            Some(Entry::File(data, mode)) => self.leaf(Body::File(data.as_bytes().to_vec()), mode),
            Some(Entry::SymlinkTo(target)) => self.leaf(Body::Symlink(target), 0o777),
            _ => unreachable!("normalize() links only to files and symlinks"),
        };
        if let Node::Leaf(id) = node {
            self.inodes.insert((li, first), id);
            if li > 0 {
                if let Some(l) = self.leaves.get_mut(&id) {
                    l.lower_nlink = Some(names);
                }
            }
        }
        node
    }

    /// `path`'s leaf as a change copies it up: a name of a lower hard link becomes an
    /// object of its own (the others keep the lower file); any other keeps its identity.
    fn copy_up(&mut self, path: &str) {
        let Ok(Node::Leaf(id)) = self.lookup(path) else {
            return;
        };
        let id = *id;
        let Some(leaf) = self.leaves.get_mut(&id) else {
            return;
        };
        match leaf.lower_nlink.take() {
            Some(n) if n > 1 => {
                leaf.lower_nlink = Some(n);
                let mut copy = leaf.clone();
                copy.lower_nlink = None;
                let new = self.fresh();
                self.leaves.insert(new, copy);
                let name = name_of(path).to_string();
                self.parent_mut(path).children.insert(name, Node::Leaf(new));
            }
            _ => {}
        }
    }

    fn leaf(&mut self, body: Body, mode: u32) -> Node {
        let id = self.fresh();
        self.leaves.insert(
            id,
            Leaf {
                body,
                mode,
                xattrs: Xattrs::new(),
                lower_nlink: None,
            },
        );
        Node::Leaf(id)
    }

    fn is_symlink(&self, n: &Node) -> bool {
        matches!(n, Node::Leaf(id) if matches!(self.leaves[id].body, Body::Symlink(_)))
    }

    /// The directory holding `path`'s last component, walked one name at a time.
    fn parent(&self, path: &str) -> Result<&Dir, i32> {
        let mut cur = &self.root;
        for c in components(path).0 {
            if reserved(c) {
                return Err(libc::ENOENT);
            }
            match cur.children.get(c) {
                None => return Err(libc::ENOENT),
                Some(Node::Dir(d)) => cur = d,
                Some(n) if self.is_symlink(n) => return Err(libc::ELOOP),
                Some(_) => return Err(libc::ENOTDIR),
            }
        }
        Ok(cur)
    }

    fn parent_mut(&mut self, path: &str) -> &mut Dir {
        let mut cur = &mut self.root;
        for c in components(path).0 {
            cur = match cur.children.get_mut(c) {
                Some(Node::Dir(d)) => d,
                _ => unreachable!("parent() was checked first"),
            };
        }
        cur
    }

    /// What `path` holds.
    fn lookup(&self, path: &str) -> Result<&Node, i32> {
        let dir = self.parent(path)?;
        let name = name_of(path);
        if reserved(name) {
            return Err(libc::ENOENT);
        }
        dir.children.get(name).ok_or(libc::ENOENT)
    }

    /// The checks of a call that makes `path`: its directory, then the name.
    fn creatable(&self, path: &str) -> Result<(), i32> {
        if self.parent(path)?.children.contains_key(name_of(path)) {
            return Err(libc::EEXIST);
        }
        if reserved(name_of(path)) {
            return Err(libc::EINVAL);
        }
        Ok(())
    }

    fn insert(&mut self, path: &str, node: Node) {
        self.parent_mut(path)
            .children
            .insert(name_of(path).to_string(), node);
    }

    /// Takes `path`'s node out of its directory (a leaf left without names stays in the
    /// arena unseen: a rename may put it back).
    fn remove(&mut self, path: &str) -> Node {
        let node = self.parent_mut(path).children.remove(name_of(path));
        node.unwrap_or_else(|| unreachable!("lookup() was checked first"))
    }

    fn links(&self, id: Id) -> u32 {
        fn count(d: &Dir, id: Id) -> u32 {
            d.children
                .values()
                .map(|n| match n {
                    Node::Dir(d) => count(d, id),
                    Node::Leaf(x) => u32::from(*x == id),
                })
                .sum()
        }
        count(&self.root, id)
    }

    /// The data of file `path`, copied up.
    fn file_data(&mut self, path: &str) -> Result<&mut Vec<u8>, i32> {
        match self.lookup(path)? {
            Node::Dir(_) => return Err(libc::EISDIR),
            n if self.is_symlink(n) => return Err(libc::ELOOP),
            Node::Leaf(_) => {}
        }
        self.copy_up(path);
        let Ok(Node::Leaf(id)) = self.lookup(path) else {
            unreachable!("a file was found there");
        };
        let id = *id;
        match &mut self
            .leaves
            .get_mut(&id)
            .unwrap_or_else(|| unreachable!())
            .body
        {
            Body::File(data) => Ok(data),
            Body::Symlink(_) => Err(libc::ELOOP),
        }
    }

    /// `op` with its paths picked from what the model shows now (see [`P`]).
    pub fn pick(&self, op: &Op) -> Op {
        op.picked(|p| {
            let fits = |path: &&str| match p {
                P::Existing(_) => self.lookup(path).is_ok(),
                _ => matches!(self.lookup(path), Err(libc::ENOENT)) && self.parent(path).is_ok(),
            };
            match p {
                P::At(path) => path,
                P::Existing(n) | P::Missing(n) => {
                    let fit: Vec<&'static str> = PATHS.iter().copied().filter(fits).collect();
                    if fit.is_empty() {
                        PATHS[n % PATHS.len()]
                    } else {
                        fit[n % fit.len()]
                    }
                }
            }
        })
    }

    /// Applies `op` (its paths picked): its result, and the change it makes.
    pub fn apply(&mut self, op: &Op) -> Result<(), i32> {
        match op.picked(|p| p.at()) {
            Op::Create(P::At(path), data, mode) => {
                self.creatable(path)?;
                let node = self.leaf(Body::File(data.as_bytes().to_vec()), mode);
                self.insert(path, node);
            }
            Op::Mkdir(P::At(path), mode) => {
                self.creatable(path)?;
                let id = self.fresh();
                let dir = Dir {
                    id,
                    mode,
                    xattrs: Xattrs::new(),
                    lower: false,
                    children: BTreeMap::new(),
                };
                self.insert(path, Node::Dir(dir));
            }
            Op::Symlink(P::At(path), target) => {
                self.creatable(path)?;
                let node = self.leaf(Body::Symlink(target), 0o777);
                self.insert(path, node);
            }
            Op::Unlink(P::At(path)) => {
                if let Node::Dir(_) = self.lookup(path)? {
                    return Err(libc::EISDIR);
                }
                self.remove(path);
            }
            Op::Rmdir(P::At(path)) => match self.lookup(path)? {
                Node::Leaf(_) => return Err(libc::ENOTDIR),
                Node::Dir(d) if !d.children.is_empty() => return Err(libc::ENOTEMPTY),
                Node::Dir(_) => {
                    self.remove(path);
                }
            },
            Op::Link(P::At(from), P::At(to)) => {
                let src = self.lookup(from)?;
                let id = match src {
                    Node::Leaf(id) => Some(*id),
                    Node::Dir(_) => None,
                };
                if self.parent(to)?.children.contains_key(name_of(to)) {
                    return Err(libc::EEXIST);
                }
                id.ok_or(libc::EPERM)?;
                if reserved(name_of(to)) {
                    return Err(libc::EINVAL);
                }
                self.copy_up(from);
                let Ok(Node::Leaf(id)) = self.lookup(from) else {
                    unreachable!("a leaf was found there");
                };
                let id = *id;
                self.insert(to, Node::Leaf(id));
            }
            Op::Rename(P::At(from), P::At(to), flag) => self.rename(from, to, flag)?,
            Op::Write(P::At(path), data, how) => {
                let file = self.file_data(path)?;
                match how {
                    How::Trunc => *file = data.as_bytes().to_vec(),
                    How::Append => file.extend_from_slice(data.as_bytes()),
                    How::AtZero => {
                        let d = data.as_bytes();
                        if file.len() < d.len() {
                            file.resize(d.len(), 0);
                        }
                        file[..d.len()].copy_from_slice(d);
                    }
                }
            }
            Op::Truncate(P::At(path), size) => {
                let file = self.file_data(path)?;
                file.resize(size as usize, 0);
            }
            Op::Chmod(P::At(path), mode) => {
                let leaf = match self.lookup(path)? {
                    n if self.is_symlink(n) => return Err(libc::ELOOP),
                    Node::Leaf(id) => Some(*id),
                    Node::Dir(_) => None,
                };
                match leaf {
                    Some(_) => {
                        self.copy_up(path);
                        if let Ok(Node::Leaf(id)) = self.lookup(path) {
                            let id = *id;
                            if let Some(l) = self.leaves.get_mut(&id) {
                                l.mode = mode;
                            }
                        }
                    }
                    None => {
                        let name = name_of(path).to_string();
                        if let Some(Node::Dir(d)) = self.parent_mut(path).children.get_mut(&name) {
                            d.mode = mode;
                        }
                    }
                }
            }
            Op::SetXattr(P::At(path), name, value) => {
                self.xattrs(path, name)?;
                self.copy_up(path);
                *self
                    .xattrs(path, name)?
                    .entry(name.to_string())
                    .or_default() = value.as_bytes().to_vec();
            }
            Op::RmXattr(P::At(path), name) => {
                // Removing what is not there copies nothing up.
                if !self.xattrs(path, name)?.contains_key(name) {
                    return Err(libc::ENODATA);
                }
                self.copy_up(path);
                self.xattrs(path, name)?.remove(name);
            }
            Op::Remount => {}
            _ => unreachable!("paths are picked before an operation runs"),
        }
        Ok(())
    }

    /// The xattrs of `path` for a call on `name`: a symlink is not followed (`ELOOP`), and
    /// the `user.overlay.` namespace is the mount's own only where the daemon is not root
    /// (stored escaped; as root it is private: `ENOTSUP`).
    fn xattrs(&mut self, path: &str, name: &str) -> Result<&mut Xattrs, i32> {
        let leaf = match self.lookup(path)? {
            n if self.is_symlink(n) => return Err(libc::ELOOP),
            Node::Leaf(id) => Some(*id),
            Node::Dir(_) => None,
        };
        if name.starts_with("user.overlay.") && stratafs::sys::euid() == 0 {
            return Err(libc::ENOTSUP);
        }
        Ok(match leaf {
            Some(id) => {
                &mut self
                    .leaves
                    .get_mut(&id)
                    .unwrap_or_else(|| unreachable!())
                    .xattrs
            }
            None => {
                let n = name_of(path).to_string();
                match self.parent_mut(path).children.get_mut(&n) {
                    Some(Node::Dir(d)) => &mut d.xattrs,
                    _ => unreachable!("lookup() found a directory"),
                }
            }
        })
    }

    /// `renameat2`: the VFS's checks (`do_renameat2`, `vfs_rename`), then the union's.
    fn rename(&mut self, from: &str, to: &str, flag: Flag) -> Result<(), i32> {
        self.parent(from)?;
        let dst_dir = self.parent(to)?;
        let dst = if reserved(name_of(to)) {
            None
        } else {
            dst_dir.children.get(name_of(to))
        };
        let src = self.lookup(from)?;
        match (flag, dst) {
            (Flag::NoReplace, Some(_)) => return Err(libc::EEXIST),
            (Flag::Exchange, None) => return Err(libc::ENOENT),
            _ => {}
        }
        if from == to {
            return Ok(());
        }
        if below(to, from) {
            return Err(libc::EINVAL);
        }
        if below(from, to) {
            return Err(if flag == Flag::Exchange {
                libc::EINVAL
            } else {
                libc::ENOTEMPTY
            });
        }
        match (src, dst) {
            // One object (names of a lower hard link are not: each is its own node).
            (Node::Leaf(a), Some(Node::Leaf(b)))
                if a == b && self.leaves[a].lower_nlink.is_none() =>
            {
                return Ok(())
            }
            (Node::Dir(_), Some(Node::Leaf(_))) if flag != Flag::Exchange => {
                return Err(libc::ENOTDIR)
            }
            (Node::Leaf(_), Some(Node::Dir(_))) if flag != Flag::Exchange => {
                return Err(libc::EISDIR)
            }
            _ => {}
        }
        if reserved(name_of(to)) {
            return Err(libc::EINVAL);
        }
        if matches!(src, Node::Dir(d) if d.lower) {
            return Err(libc::EXDEV);
        }
        match (flag, dst) {
            (Flag::Exchange, Some(Node::Dir(d))) if d.lower => return Err(libc::EXDEV),
            (Flag::Exchange, _) => {}
            (_, Some(Node::Dir(d))) if !d.children.is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        let has_dst = dst.is_some();
        self.copy_up(from);
        if flag == Flag::Exchange {
            self.copy_up(to);
        }
        if flag == Flag::Exchange {
            let a = self.remove(from);
            let b = self.remove(to);
            self.insert(from, b);
            self.insert(to, a);
        } else {
            let a = self.remove(from);
            if has_dst {
                self.remove(to);
            }
            self.insert(to, a);
        }
        Ok(())
    }

    /// The whole merged tree.
    pub fn tree(&self) -> Tree {
        let mut out = Tree::new();
        self.walk(&self.root, "", &mut out);
        out
    }

    fn walk(&self, dir: &Dir, path: &str, out: &mut Tree) {
        for (name, node) in &dir.children {
            let p = join(path, name);
            match node {
                Node::Dir(d) => {
                    out.insert(p.clone(), (Shown::Dir(d.mode, d.xattrs.clone()), d.id));
                    self.walk(d, &p, out);
                }
                Node::Leaf(id) => {
                    let leaf = &self.leaves[id];
                    let n = leaf.lower_nlink.unwrap_or_else(|| self.links(*id));
                    let shown = match &leaf.body {
                        Body::File(data) => {
                            Shown::File(leaf.mode, data.clone(), n, leaf.xattrs.clone())
                        }
                        Body::Symlink(t) => Shown::Symlink(t.as_bytes().to_vec(), n),
                    };
                    out.insert(p, (shown, *id));
                }
            }
        }
    }
}
