//! `diff NAME`: what a container changed, from its upper layer, as `docker diff` shows it:
//! `A` added (not in the image), `C` changed (in the image, and copied up or replaced),
//! `D` deleted (a whiteout, or a child of an opaque directory that was not made again).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use stratafs::inode::NodeId;
use stratafs::layer::format::{self, OPAQUE_MARKER};
use stratafs::layer::Layer;
use stratafs::sys::{self, FileKind};

use crate::error::{Error, Result};
use crate::store::{ContainerRecord, Store};
use crate::view::View;

/// One change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Added.
    Added,
    /// Changed.
    Changed,
    /// Deleted.
    Deleted,
}

impl Change {
    /// `A`, `C` or `D`.
    pub fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Changed => 'C',
            Change::Deleted => 'D',
        }
    }
}

/// The layer trees of a container's image, topmost first. A layer the image lists more than
/// once (old docker builds repeat the empty layer) is kept at its topmost place only: what a
/// lower occurrence provides, the topmost one provides above it, so the view is the same.
pub fn lower_trees(store: &Store, ctr: &ContainerRecord) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for d in ctr.layers.iter().rev() {
        if !seen.insert(d.as_str()) {
            continue;
        }
        let dg = crate::digest::parse(d)?;
        let tree = store.layer_tree(&dg);
        if !tree.is_dir() {
            return Err(Error::invalid(format!(
                "container {}: layer {} is missing from the store",
                ctr.name,
                crate::digest::short(&dg)
            )));
        }
        out.push(tree);
    }
    Ok(out)
}

/// The changes of container `name`, by path (`/a/b`).
pub fn changes(store: &Store, name: &str) -> Result<BTreeMap<PathBuf, Change>> {
    let ctr = store.container(name)?;
    let lowers = lower_trees(store, &ctr)?;
    let view = View::open(&lowers)?;
    let upper_path = store.container_dir(name).join("upper");
    let upper = Layer::open(&upper_path, true).map_err(|e| Error::Io {
        what: format!("open {}", upper_path.display()),
        source: e,
    })?;
    let mut out = BTreeMap::new();
    let mut full_layers = vec![upper_path.clone()];
    full_layers.extend(lowers.iter().cloned());
    let w = DiffWalk {
        view: &view,
        upper: &upper,
        full_layers,
        full: std::cell::OnceCell::new(),
    };
    w.dir(upper.root(), Path::new("/"), Some(view.root()), &mut out)?;
    Ok(out)
}

struct DiffWalk<'a> {
    /// The image.
    view: &'a View,
    upper: &'a Layer,
    /// The upper over the image's layers, and their merged view (the container's tree),
    /// opened at the first redirected directory.
    full_layers: Vec<PathBuf>,
    full: std::cell::OnceCell<View>,
}

impl DiffWalk<'_> {
    fn fail(&self, path: &Path, e: impl std::fmt::Display) -> Error {
        Error::invalid(format!("upper layer: {}: {e}", path.display()))
    }

    /// Walks upper directory `dir` (the merged path `path`), whose lower counterpart is the
    /// directory node `lower` (if the image has a directory there).
    fn dir(
        &self,
        dir: BorrowedFd<'_>,
        path: &Path,
        lower: Option<NodeId>,
        out: &mut BTreeMap<PathBuf, Change>,
    ) -> Result<()> {
        let mut names: Vec<OsString> = sys::list_dir(dir)
            .map_err(|e| self.fail(path, e))?
            .into_iter()
            .map(|e| e.name)
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in &names {
            if name.as_bytes() == OPAQUE_MARKER.as_bytes() {
                continue;
            }
            let below = |n: &OsStr| -> Result<Option<stratafs::overlay::Attr>> {
                match lower {
                    Some(l) => self.view.lookup(l, n),
                    None => Ok(None),
                }
            };
            if let Some(target) = format::whiteout_target(name) {
                if below(target)?.is_some() {
                    out.insert(path.join(target), Change::Deleted);
                }
                continue;
            }
            let child = path.join(name);
            let st = sys::stat_at(dir, name).map_err(|e| self.fail(&child, e))?;
            let lower_attr = below(name)?;
            if format::is_whiteout_stat(&st) {
                if lower_attr.is_some() {
                    out.insert(child, Change::Deleted);
                }
                continue;
            }
            let change = if lower_attr.is_some() {
                Change::Changed
            } else {
                Change::Added
            };
            out.insert(child.clone(), change);
            if !st.is_dir() {
                continue;
            }
            let lower_dir = lower_attr
                .filter(|a| a.kind == FileKind::Directory)
                .map(|a| a.node);
            let (_, redirect) = self
                .upper
                .dir_markers(dir, name, false)
                .map_err(|e| self.fail(&child, e))?;
            if redirect.is_some() {
                // A lower directory renamed here (`redirect_dir=on`): what it shows comes
                // from another path below, so compare the container's tree with the image's.
                self.merged(&child, lower_dir, out)?;
                continue;
            }
            let sub = sys::open_dir_path(dir, name.as_bytes()).map_err(|e| self.fail(&child, e))?;
            let opaque = self
                .upper
                .is_opaque(dir, name)
                .map_err(|e| self.fail(&child, e))?;
            if let (true, Some(l)) = (opaque, lower_dir) {
                // Everything the image had here is gone, unless made again.
                for (n, _) in self.view.children(l)? {
                    let present = match sys::stat_at(sub.as_fd(), &n) {
                        Ok(st) => !format::is_whiteout_stat(&st),
                        Err(_) => false,
                    };
                    if !present {
                        out.insert(child.join(&n), Change::Deleted);
                    }
                }
            }
            self.dir(sub.as_fd(), &child, lower_dir, out)?;
        }
        Ok(())
    }
}

impl DiffWalk<'_> {
    /// Records the changes below directory `path` as the container's tree shows it,
    /// against the image's directory node `lower` there (if any): names only the
    /// container has are added, names both have changed, names only the image has deleted.
    fn merged(
        &self,
        path: &Path,
        lower: Option<NodeId>,
        out: &mut BTreeMap<PathBuf, Change>,
    ) -> Result<()> {
        let full = match self.full.get() {
            Some(v) => v,
            None => {
                let v = View::open(&self.full_layers)?;
                self.full.get_or_init(|| v)
            }
        };
        let node = full
            .at(path)?
            .filter(|a| a.kind == FileKind::Directory)
            .ok_or_else(|| self.fail(path, "not a directory in the container's tree"))?;
        self.merged_dir(full, node.node, path, lower, out)
    }

    fn merged_dir(
        &self,
        full: &View,
        node: NodeId,
        path: &Path,
        lower: Option<NodeId>,
        out: &mut BTreeMap<PathBuf, Change>,
    ) -> Result<()> {
        let ours = full.children(node)?;
        if let Some(l) = lower {
            for (n, _) in self.view.children(l)? {
                if !ours.iter().any(|(o, _)| *o == n) {
                    out.insert(path.join(&n), Change::Deleted);
                }
            }
        }
        for (n, kind) in ours {
            let child = path.join(&n);
            let below = match lower {
                Some(l) => self.view.lookup(l, &n)?,
                None => None,
            };
            let change = if below.is_some() {
                Change::Changed
            } else {
                Change::Added
            };
            out.insert(child.clone(), change);
            if kind == FileKind::Directory {
                let sub = full
                    .lookup(node, &n)?
                    .ok_or_else(|| self.fail(&child, "vanished from the container's tree"))?;
                let lower_dir = below
                    .filter(|a| a.kind == FileKind::Directory)
                    .map(|a| a.node);
                self.merged_dir(full, sub.node, &child, lower_dir, out)?;
            }
        }
        Ok(())
    }
}

/// `diff NAME` as lines: `A /path`.
pub fn run(store: &Store, name: &str) -> Result<Vec<String>> {
    Ok(changes(store, name)?
        .into_iter()
        .map(|(p, c)| format!("{} {}", c.letter(), p.display()))
        .collect())
}
