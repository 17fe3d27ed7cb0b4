//! Layer stacks: a description that proptest generates and shrinks, normalized into one tree
//! per layer, and written to temporary directories in the formats an unprivileged daemon
//! reads (`layer/format.rs`): `.wh.NAME` files for whiteouts, `.wh..wh..opq` files and the
//! `user.overlay.opaque` xattr for opaque directories. None of them needs root.
//!
//! Paths and contents are `&'static str` taken from small pools, so that the `Debug` form
//! of a shrunk case is Rust that builds the same case: a failure is pinned by pasting it
//! into a test (see `regressions.rs`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use proptest::prelude::*;

/// Every path a layer or an operation may name: three names, three levels deep.
pub const PATHS: [&str; 39] = [
    "a", "b", "c", "a/a", "a/b", "a/c", "b/a", "b/b", "b/c", "c/a", "c/b", "c/c", "a/a/a", "a/a/b",
    "a/a/c", "a/b/a", "a/b/b", "a/b/c", "a/c/a", "a/c/b", "a/c/c", "b/a/a", "b/a/b", "b/a/c",
    "b/b/a", "b/b/b", "b/b/c", "b/c/a", "b/c/b", "b/c/c", "c/a/a", "c/a/b", "c/a/c", "c/b/a",
    "c/b/b", "c/b/c", "c/c/a", "c/c/b", "c/c/c",
];

/// The names of [`PATHS`], and names the whiteout format reserves (never shown, never
/// creatable): what a listing is checked against.
pub const NAMES: [&str; 5] = ["a", "b", "c", ".wh.a", ".wh..wh..opq"];

/// File contents.
pub const DATA: [&str; 4] = ["", "x", "hello", "0123456789abcdef"];

/// Symlink targets (never followed by anyone here).
pub const TARGETS: [&str; 3] = ["a", "../b/c", "/etc/passwd"];

/// Permission bits of files (the owner may read and write: an unprivileged daemon reads
/// and copies them up).
pub const FILE_MODES: [u32; 4] = [0o644, 0o600, 0o755, 0o640];

/// Permission bits of directories (the owner may do everything).
pub const DIR_MODES: [u32; 3] = [0o755, 0o700, 0o750];

/// Modes a `chmod` sets, on files and directories alike (the owner keeps every right, so
/// that an unprivileged daemon can still walk and copy what it changed).
pub const CHMOD_MODES: [u32; 4] = [0o755, 0o700, 0o750, 0o711];

/// How a directory of one layer hides the layers below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opaque {
    /// It does not: it merges with directories below.
    No,
    /// A `.wh..wh..opq` file inside.
    Marker,
    /// `user.overlay.opaque=y` (the kernel's `userxattr` form).
    Xattr,
}

/// One entry of a layer description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A regular file.
    File(&'static str, u32),
    /// A directory.
    Dir(u32, Opaque),
    /// A symlink.
    SymlinkTo(&'static str),
    /// A `.wh.NAME` file: hides the name in the layers below (and only there: an object of
    /// the same name in the same layer is shown).
    Whiteout,
    /// A hard link to the file or symlink at this path of the same layer (dropped where
    /// there is none).
    HardLink(&'static str),
}

/// One layer as generated: entries in any order; [`normalize`] makes a tree of it.
pub type LayerSpec = Vec<(&'static str, Entry)>;

/// A stack: the upper layer (its initial contents) and the lower layers, topmost first.
#[derive(Debug, Clone)]
pub struct Stack {
    /// The writable layer as the case starts.
    pub upper: LayerSpec,
    /// The read-only layers, topmost first (at least one).
    pub lowers: Vec<LayerSpec>,
}

/// What one layer holds at one path: an object, a whiteout file, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slot {
    /// The object (a file, directory or symlink), if any.
    pub object: Option<Entry>,
    /// A `.wh.NAME` file sits beside it.
    pub whiteout: bool,
}

/// One layer as a tree: every path's slot, parents before children (`BTreeMap` order sorts
/// `a` before `a/b`). An entry whose parent the layer holds as a non-directory is dropped;
/// a missing parent becomes a plain directory (mode 0755).
pub type Layer = BTreeMap<&'static str, Slot>;

/// The directory part of `path` (`""` for a top-level name).
pub fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// The last component of `path`.
pub fn name_of(path: &str) -> &str {
    path.rfind('/').map_or(path, |i| &path[i + 1..])
}

/// `path`'s proper ancestors, outermost first.
fn ancestors(path: &'static str) -> Vec<&'static str> {
    path.match_indices('/').map(|(i, _)| &path[..i]).collect()
}

/// The tree of layer description `spec`.
pub fn normalize(spec: &LayerSpec) -> Layer {
    let mut layer = Layer::new();
    'entries: for &(path, entry) in spec {
        for a in ancestors(path) {
            let slot = layer.entry(a).or_default();
            match slot.object {
                None => slot.object = Some(Entry::Dir(0o755, Opaque::No)),
                Some(Entry::Dir(..)) => {}
                Some(_) => continue 'entries,
            }
        }
        // A hard link names its first name's path, which holds a file or a symlink.
        let entry = match entry {
            Entry::HardLink(target) => match layer.get(target).and_then(|s| s.object) {
                Some(Entry::File(..) | Entry::SymlinkTo(_)) if target != path => {
                    Entry::HardLink(target)
                }
                Some(Entry::HardLink(first)) if first != path => Entry::HardLink(first),
                _ => continue 'entries,
            },
            e => e,
        };
        let slot = layer.entry(path).or_default();
        match entry {
            Entry::Whiteout => slot.whiteout = true,
            e if slot.object.is_none() => slot.object = Some(e),
            _ => {}
        }
    }
    layer
}

/// Writes `layer` into the empty directory `root`.
pub fn materialize(layer: &Layer, root: &Path) {
    for (path, slot) in layer {
        let at = root.join(path);
        let dir = root.join(parent_of(path));
        if slot.whiteout {
            std::fs::write(dir.join(format!(".wh.{}", name_of(path))), "").unwrap();
        }
        match slot.object {
            None => {}
            Some(Entry::File(data, mode)) => {
                std::fs::write(&at, data).unwrap();
                std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            Some(Entry::SymlinkTo(target)) => std::os::unix::fs::symlink(target, &at).unwrap(),
            Some(Entry::Dir(_, opaque)) => {
                std::fs::create_dir(&at).unwrap();
                match opaque {
                    Opaque::No => {}
                    Opaque::Marker => std::fs::write(at.join(".wh..wh..opq"), "").unwrap(),
                    Opaque::Xattr => {
                        rustix::fs::setxattr(
                            &at,
                            "user.overlay.opaque",
                            b"y",
                            rustix::fs::XattrFlags::empty(),
                        )
                        .unwrap();
                    }
                }
            }
            // Once every first name exists (it may sort after its link).
            Some(Entry::HardLink(_)) => {}
            Some(Entry::Whiteout) => unreachable!("a whiteout is a flag of its slot"),
        }
    }
    for (path, slot) in layer {
        if let Some(Entry::HardLink(first)) = slot.object {
            std::fs::hard_link(root.join(first), root.join(path)).unwrap();
        }
    }
    // Modes last, deepest first: a directory's mode never stands in the way of its children.
    for (path, slot) in layer.iter().rev() {
        if let Some(Entry::Dir(mode, _)) = slot.object {
            std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
    }
}

/// A path of [`PATHS`] no deeper than `depth` components.
pub fn path_up_to(depth: usize) -> impl Strategy<Value = &'static str> {
    let n = match depth {
        0 | 1 => 3,
        2 => 12,
        _ => PATHS.len(),
    };
    (0..n).prop_map(|i| PATHS[i])
}

/// A path of [`PATHS`], shallow ones far more often than their share (a random pick of
/// the 39 would mostly name a third level that nothing holds).
pub fn any_path() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        4 => (0..3usize).prop_map(|i| PATHS[i]),
        4 => (3..12usize).prop_map(|i| PATHS[i]),
        2 => (12..PATHS.len()).prop_map(|i| PATHS[i]),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        3 => (0..DATA.len(), 0..FILE_MODES.len())
            .prop_map(|(d, m)| Entry::File(DATA[d], FILE_MODES[m])),
        3 => (0..DIR_MODES.len(), prop_oneof![
                4 => Just(Opaque::No),
                1 => Just(Opaque::Marker),
                1 => Just(Opaque::Xattr),
            ])
            .prop_map(|(m, o)| Entry::Dir(DIR_MODES[m], o)),
        1 => (0..TARGETS.len()).prop_map(|t| Entry::SymlinkTo(TARGETS[t])),
        2 => Just(Entry::Whiteout),
        1 => any_path().prop_map(Entry::HardLink),
    ]
}

fn layer(max: usize) -> impl Strategy<Value = LayerSpec> {
    proptest::collection::vec((any_path(), entry()), 0..max)
}

/// A stack of one to three lower layers under an upper layer that may hold entries (and
/// whiteouts) already.
pub fn stack() -> impl Strategy<Value = Stack> {
    (layer(8), proptest::collection::vec(layer(12), 1..=3))
        .prop_map(|(upper, lowers)| Stack { upper, lowers })
}
