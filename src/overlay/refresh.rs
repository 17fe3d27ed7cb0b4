//! Refresh: after the layers changed behind the mount, forget what the daemon holds about
//! part of the tree (or all of it) and work out what the kernel must be told to forget.
//!
//! For every node in scope: its directory fds go, a directory's shared listing goes and its
//! version moves on (so the names cached as missing, and any listing a handle holds, are out
//! of date), and the node is resolved again at its name, parents first. When the name still
//! holds the node's object the node takes its new layers (a directory may merge other
//! layers now); otherwise the node dies as if its object had been removed through the mount:
//! requests reaching it by name get `ENOENT`, or `ESTALE` when the name now holds another
//! object (the kernel then looks the name up again and gets a new node), and never reach
//! another object. Open files keep the object they opened.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;

use super::Overlay;
use crate::inode::{Node, NodeId, ROOT};

/// What a refresh covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The whole mount.
    All,
    /// These paths (relative to the root, `/`-separated) and everything below them.
    Paths(Vec<OsString>),
}

/// What the kernel must be told after a refresh, and what was found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Refreshed {
    /// The whole mount was refreshed.
    pub all: bool,
    /// The names of the nodes in scope, `(directory node, name)`: the kernel's entries for
    /// them expire (its next use of each looks the name up again).
    pub names: Vec<(NodeId, OsString)>,
    /// Names in scope that no node holds (the kernel may cache them as missing).
    pub missing: Vec<(NodeId, OsString)>,
    /// The directories whose entries are in scope (names the kernel caches as missing in
    /// them are out of date).
    pub dirs: Vec<NodeId>,
    /// Nodes whose cached attributes and data (pages, listing, symlink target) to drop.
    pub nodes: Vec<NodeId>,
    /// Nodes resolved again.
    pub resolved: usize,
    /// Of them, those whose object is gone from their name (now dead).
    pub gone: usize,
}

impl Overlay {
    /// Forgets what the daemon knows about `scope` and resolves its nodes again (see the
    /// module's doc); returns what the kernel must forget.
    pub fn refresh(&self, scope: &Scope) -> Refreshed {
        let nodes = self.nodes.all();
        let mut children: HashMap<NodeId, Vec<Arc<Node>>> = HashMap::new();
        for n in &nodes {
            if n.id != ROOT && !n.is_dead() {
                children.entry(n.parent()).or_default().push(Arc::clone(n));
            }
        }
        let mut out = Refreshed::default();
        // Subtrees to resolve again (their roots included), and directories whose entries
        // alone are refreshed (a name in them was named, or is missing).
        let mut subtrees: Vec<NodeId> = Vec::new();
        let mut dirs: Vec<NodeId> = Vec::new();
        match scope {
            Scope::All => {
                out.all = true;
                subtrees.push(ROOT);
            }
            Scope::Paths(paths) => {
                for p in paths {
                    let comps: Vec<&OsStr> = std::path::Path::new(p)
                        .components()
                        .filter_map(|c| match c {
                            std::path::Component::Normal(n) => Some(n),
                            _ => None,
                        })
                        .collect();
                    // Every live node under each name: one replaced behind the mount and
                    // looked up again lives on beside the new one until the kernel forgets
                    // it, and the kernel may hold names under either.
                    let mut at = vec![ROOT];
                    for c in comps {
                        let mut next = Vec::new();
                        for cur in at {
                            let kids = children.get(&cur).into_iter().flatten();
                            let mut found = kids
                                .filter(|k| k.with_location(|l| l.name == c))
                                .map(|k| k.id)
                                .peekable();
                            if found.peek().is_none() {
                                // Not held by the kernel (a name it caches as missing, or
                                // one it never looked up): that name in its directory.
                                dirs.push(cur);
                                out.missing.push((cur, c.to_os_string()));
                            }
                            next.extend(found);
                        }
                        at = next;
                    }
                    for cur in at {
                        if cur == ROOT {
                            out.all = true;
                            subtrees.push(ROOT);
                        } else {
                            subtrees.push(cur);
                            dirs.push(self.nodes.get(cur).map_or(ROOT, |n| n.parent()));
                        }
                    }
                }
            }
        }
        // The subtrees, parents before children.
        let mut order: Vec<Arc<Node>> = Vec::new();
        let mut seen: HashSet<NodeId> = HashSet::new();
        for root in subtrees {
            let Some(r) = self.nodes.get(root) else {
                continue;
            };
            if !seen.insert(root) {
                continue;
            }
            let start = order.len();
            order.push(r);
            let mut i = start;
            while i < order.len() {
                let id = order[i].id;
                for k in children.get(&id).into_iter().flatten() {
                    if seen.insert(k.id) {
                        order.push(Arc::clone(k));
                    }
                }
                i += 1;
            }
        }
        // First everything cached goes: a directory replaced behind the mount must not be
        // reached through an fd of the old one while its children are resolved.
        let extra: Vec<Arc<Node>> = dirs
            .iter()
            .filter(|d| !seen.contains(d))
            .filter_map(|d| self.nodes.get(*d))
            .collect();
        for n in order.iter().chain(&extra) {
            self.forget_cached(n);
        }
        for n in &order {
            if n.id == ROOT || n.is_dead() {
                continue;
            }
            out.resolved += 1;
            if !self.resolve_again(n) {
                out.gone += 1;
            }
        }
        for n in &order {
            if n.id != ROOT {
                out.names
                    .push(n.with_location(|l| (l.parent, l.name.to_os_string())));
            }
            if n.kind == crate::sys::FileKind::Directory {
                out.dirs.push(n.id);
            }
        }
        out.nodes = order.iter().chain(&extra).map(|n| n.id).collect();
        out
    }

    /// The names live nodes hold now, `(directory node, name)`.
    pub fn held_names(&self) -> HashSet<(NodeId, OsString)> {
        self.nodes
            .all()
            .iter()
            .filter(|n| n.id != ROOT && !n.is_dead())
            .map(|n| n.with_location(|l| (l.parent, l.name.to_os_string())))
            .collect()
    }

    /// Drops node `n`'s directory fds and shared listing, and moves a directory's version
    /// on (names cached as missing from it, and listings handles hold, are out of date).
    ///
    /// The version moves first: a directory fd opened before the drop is then not cached
    /// after it (see `Overlay::cache_dir_fd`).
    fn forget_cached(&self, n: &Node) {
        let moved = (n.kind == crate::sys::FileKind::Directory).then(|| n.lock_dir());
        self.dirfds.drop_node(n.id, self.layers.len());
        if moved.is_some() {
            self.listings.remove(n.id);
        }
        drop(moved);
    }

    /// Resolves node `n` at its name again (its parent is current); false when its object
    /// is gone from there (the node is then dead).
    fn resolve_again(&self, n: &Node) -> bool {
        let parent_id = n.parent();
        let Some(parent) = self.nodes.get(parent_id).filter(|p| !p.is_dead()) else {
            return self.nodes.refresh_location(n, None);
        };
        let _held = parent.hold_dir();
        // Moved through the mount meanwhile: its location is current.
        if n.parent() != parent_id || n.is_dead() {
            return true;
        }
        let name = n.with_location(|l| l.name.clone());
        let chain = parent.with_location(|l| l.layers.clone());
        match self.resolve_in(&parent, &chain, &name, 0) {
            Ok(found) => {
                let found = found.map(|r| (r.ino, r.kind(), r.location(parent_id, &name)));
                self.nodes.refresh_location(n, found)
            }
            Err(e) if e.is_absent() => self.nodes.refresh_location(n, None),
            Err(e) => {
                // Unreadable now (EACCES, EIO): left as it was; its requests will say so.
                tracing::debug!(node = n.id.get(), error = %e, "refresh: not resolved");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::ffi::OsStr;

    use super::*;

    /// A directory replaced behind the mount and looked up again without a refresh (the
    /// kernel's entry expired): the node of its old object lives on under the same name
    /// until the kernel forgets it. A refresh of a path through that name covers every
    /// node under it, the current one included: it used to take the first one it met,
    /// often a stale one, and the current one kept a name cached as missing
    /// (`tests/udba.rs`'s race: a file that showed only after a refresh of the whole mount).
    #[test]
    fn a_refresh_covers_every_node_under_a_name() {
        let (t, ov) = crate::overlay::scratch_overlay(|l, _| {
            std::fs::create_dir(l.join("d")).unwrap();
        });
        let l = t.path().join("l");
        let mut stale = Vec::new();
        for _ in 0..8 {
            stale.push(ov.lookup(ROOT, OsStr::new("d")).unwrap().node);
            // A new directory (a new inode number) renamed over the old one.
            std::fs::create_dir(l.join("d.new")).unwrap();
            std::fs::rename(l.join("d.new"), l.join("d")).unwrap();
        }
        let d = ov.lookup(ROOT, OsStr::new("d")).unwrap().node;
        assert!(!stale.contains(&d));
        assert!(ov.lookup(d, OsStr::new("f")).is_err());
        std::fs::write(l.join("d/f"), "f").unwrap();
        let r = ov.refresh(&Scope::Paths(vec!["d/f".into()]));
        assert!(r.missing.contains(&(d, "f".into())), "{r:?}");
        assert!(
            ov.lookup(d, OsStr::new("f")).is_ok(),
            "f, created in the current d, after a refresh of d/f"
        );
    }

    /// A name cached as missing shows after a refresh; a node whose object went dies and
    /// answers ENOENT; a node whose object stayed keeps its id.
    #[test]
    fn refresh_resolves_nodes_again() {
        let (t, ov) = crate::overlay::scratch_overlay(|l, _| {
            std::fs::create_dir(l.join("d")).unwrap();
            std::fs::write(l.join("d/stays"), "s").unwrap();
            std::fs::write(l.join("d/goes"), "g").unwrap();
        });
        let d = ov.lookup(ROOT, OsStr::new("d")).unwrap();
        let stays = ov.lookup(d.node, OsStr::new("stays")).unwrap();
        let goes = ov.lookup(d.node, OsStr::new("goes")).unwrap();
        assert!(ov.lookup(d.node, OsStr::new("new")).is_err());
        let l = t.path().join("l");
        std::fs::remove_file(l.join("d/goes")).unwrap();
        std::fs::write(l.join("d/new"), "n").unwrap();
        // Cached as missing until the refresh.
        assert!(ov.lookup(d.node, OsStr::new("new")).is_err());
        let r = ov.refresh(&Scope::Paths(vec!["d".into()]));
        assert_eq!((r.resolved, r.gone), (3, 1), "{r:?}");
        assert!(!r.all);
        assert!(r.dirs.contains(&d.node) && !r.dirs.contains(&ROOT));
        assert!(r.names.contains(&(d.node, "goes".into())));
        let new = ov.lookup(d.node, OsStr::new("new")).unwrap();
        assert_ne!(new.node, goes.node);
        assert_eq!(ov.getattr(stays.node).unwrap().node, stays.node);
        assert_eq!(
            ov.getattr(goes.node).unwrap_err().errno(),
            libc::ENOENT,
            "a node whose object vanished"
        );
        // A path the daemon holds no node for: its name, in the directory it reached.
        let r = ov.refresh(&Scope::Paths(vec!["d/nothere/x".into()]));
        assert_eq!(r.missing, vec![(d.node, "nothere".into())]);
        assert_eq!(r.resolved, 0);
        let all = ov.refresh(&Scope::All);
        assert!(all.all && all.nodes.contains(&ROOT));
    }
}
