//! A whole-tree snapshot for comparing two mounts (or a mount and a layer tree), shared by
//! the stratafs and stratafs-mount tests (included by path).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What a tree comparison looks at for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySnap {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size for files and symlinks (directory sizes differ between implementations).
    pub size: Option<u64>,
    /// SHA-free content fingerprint: the bytes themselves for small files, else length+sum.
    pub content: Option<Vec<u8>>,
    pub link_target: Option<OsString>,
    pub rdev: Option<u64>,
    /// nlink for non-directories.
    pub nlink: Option<u64>,
    /// user.* xattrs, sorted.
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

/// A whole merged tree, keyed by path relative to the root.
pub type TreeSnap = BTreeMap<PathBuf, EntrySnap>;

fn content_of(path: &Path) -> Vec<u8> {
    match std::fs::read(path) {
        Ok(b) if b.len() <= 64 * 1024 => b,
        Ok(b) => {
            let sum: u64 = b.iter().enumerate().fold(0u64, |a, (i, x)| {
                a.wrapping_mul(31).wrapping_add(u64::from(*x) ^ i as u64)
            });
            format!("len={} sum={sum:x}", b.len()).into_bytes()
        }
        Err(e) => format!("read error: {e}").into_bytes(),
    }
}

fn user_xattrs(path: &Path) -> Vec<(OsString, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let Ok(n) = rustix::fs::llistxattr(path, &mut buf[..]) else {
        return out;
    };
    for name in buf[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !name.starts_with(b"user.") {
            continue;
        }
        let name_os = std::ffi::OsStr::from_bytes(name);
        let mut val = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(path, name_os, &mut val[..]) {
            val.truncate(len);
            out.push((name_os.to_os_string(), val));
        }
    }
    out.sort();
    out
}

/// Walks `root` (never following symlinks) and records every entry.
pub fn snapshot(root: &Path) -> TreeSnap {
    try_snapshot(root).unwrap_or_else(|e| panic!("{e}"))
}

/// [`snapshot`], or the first error met (a tree still changing: a name listed and gone
/// before its `lstat`).
pub fn try_snapshot(root: &Path) -> Result<TreeSnap, String> {
    let mut out = TreeSnap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut TreeSnap) -> Result<(), String> {
    let mut names: Vec<OsString> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("readdir {}: {e}", dir.display()))?,
        Err(e) => return Err(format!("opendir {}: {e}", dir.display())),
    };
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let md = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("lstat {}: {e}", path.display()))?;
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_char_device() {
            "chardev"
        } else {
            "blockdev"
        };
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        out.insert(
            rel,
            EntrySnap {
                kind,
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                size: (!ft.is_dir()).then(|| md.size()),
                content: ft.is_file().then(|| content_of(&path)),
                link_target: ft.is_symlink().then(|| {
                    std::fs::read_link(&path)
                        .map(|p| p.into_os_string())
                        .unwrap_or_default()
                }),
                rdev: (ft.is_char_device() || ft.is_block_device()).then(|| md.rdev()),
                nlink: (!ft.is_dir()).then(|| md.nlink()),
                xattrs: user_xattrs(&path),
            },
        );
        if ft.is_dir() {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}

/// The first differences between two snapshots, or `None` when they are equal.
pub fn tree_diff(ours: &TreeSnap, theirs: &TreeSnap) -> Option<String> {
    if ours == theirs {
        return None;
    }
    let mut report = Vec::new();
    for (p, e) in ours {
        match theirs.get(p) {
            None => report.push(format!("only in stratafs: {}", p.display())),
            Some(t) if t != e => report.push(format!(
                "differs: {}\n  stratafs: {e:?}\n  expected: {t:?}",
                p.display()
            )),
            _ => {}
        }
    }
    for p in theirs.keys() {
        if !ours.contains_key(p) {
            report.push(format!("missing in stratafs: {}", p.display()));
        }
    }
    report.truncate(20);
    Some(report.join("\n"))
}

/// Asserts two snapshots are equal, naming the first differences.
pub fn assert_same_tree(ours: &TreeSnap, theirs: &TreeSnap, what: &str) {
    if let Some(d) = tree_diff(ours, theirs) {
        panic!("{what}: trees differ:\n{d}");
    }
}
