#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The kernel overlayfs features that read (and write) layers the kernel made with its
//! optional formats (issue 18): xattr whiteouts, `userxattr`, `redirect_dir`. Each case
//! builds layers, mounts them with stratafs and with the kernel's overlayfs the same way, and
//! compares the trees and the lookups of chosen paths; the cases where stratafs deliberately
//! differs (docs/SEMANTICS.md) pin what each side does.

#[path = "../common/mod.rs"]
mod common;
mod dataonly;
mod index;
mod metacopy;
mod redirect;
mod userxattr;
mod verity;
mod xwhiteout;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;

/// Layer directories and mount points in one temporary directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::default()
    }

    /// Directory `name` under the fixture, made empty if it is not there.
    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }
}

fn parents(p: &Path) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
}

/// Regular file `rel` under `root` with `content` (parents made).
pub fn file(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    parents(&p);
    fs::write(&p, content).unwrap();
}

/// Directory `rel` under `root` (parents made).
pub fn dir(root: &Path, rel: &str) {
    fs::create_dir_all(root.join(rel)).unwrap();
}

/// xattr `name=value` on `rel` under `root`.
pub fn setx(root: &Path, rel: &str, name: &str, value: &[u8]) {
    let p = root.join(rel);
    rustix::fs::lsetxattr(&p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

/// `lowerdir=A:B:...`
pub fn lowerdir(layers: &[&Path]) -> String {
    let l: Vec<String> = layers.iter().map(|p| p.display().to_string()).collect();
    format!("lowerdir={}", l.join(":"))
}

/// `lowerdir=...,upperdir=U,workdir=W`
pub fn rw(layers: &[&Path], upper: &Path, work: &Path) -> String {
    format!(
        "{},upperdir={},workdir={}",
        lowerdir(layers),
        upper.display(),
        work.display()
    )
}

/// What a lookup finds: the type bits and size, or the errno.
pub type Found = Result<(u32, u64), i32>;

/// What a lookup of each path finds.
pub fn lookups(root: &Path, paths: &[&str]) -> Vec<(String, Found)> {
    paths
        .iter()
        .map(|p| {
            let r = fs::symlink_metadata(root.join(p))
                .map(|m| (m.mode() & libc::S_IFMT, m.size()))
                .map_err(|e| e.raw_os_error().unwrap_or(-1));
            (p.to_string(), r)
        })
        .collect()
}

/// Mounts with stratafs (`ours`) and the kernel (`kernel`) options on two mount points of
/// `f`, and asserts the same tree and the same lookups of `paths`; returns the tree.
pub fn same_as_kernel(
    f: &Fixture,
    ours: &str,
    kernel: &str,
    paths: &[&str],
    what: &str,
) -> TreeSnap {
    let m = f.path("m");
    let k = f.path("k");
    let s = Mount::new(ours, &m);
    let kmount = KernelMount::new(kernel, &k);
    let a = snapshot(&s.mountpoint);
    let b = snapshot(&kmount.mountpoint);
    assert_same_tree(&a, &b, what);
    assert_eq!(lookups(&m, paths), lookups(&k, paths), "{what}: lookups");
    a
}

/// Mounts with stratafs (`ours`) and the kernel (`kernel`) options on two mount points of
/// `f`, makes the same changes through both with `change`, and asserts the same tree and
/// the same lookups of `paths` afterwards.
pub fn changed_as_kernel(
    f: &Fixture,
    ours: &str,
    kernel: &str,
    change: impl Fn(&Path),
    paths: &[&str],
    what: &str,
) {
    let (m, k) = (f.path("m"), f.path("k"));
    let s = Mount::new(ours, &m);
    let km = KernelMount::new(kernel, &k);
    change(&m);
    change(&k);
    assert_same_tree(&snapshot(&s.mountpoint), &snapshot(&km.mountpoint), what);
    assert_eq!(lookups(&m, paths), lookups(&k, paths), "{what}: lookups");
}

/// Runs shell command `cmd` in `root`.
pub fn sh(root: &Path, cmd: &str) {
    let out = run(std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(root));
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `st_blocks` of `p`.
pub fn blocks(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().blocks()
}

/// The upper layer `name` of `f` as the kernel writes it: `script` run in a
/// `metacopy=on,redirect_dir=on` mount of it over `lower`.
pub fn kernel_metacopy_upper(f: &Fixture, lower: &Path, name: &str, script: &str) -> PathBuf {
    let u = f.path(name);
    let k = f.path("k-session");
    let w = f.path("kw");
    let _m = KernelMount::new(
        &format!(
            "{},metacopy=on,redirect_dir=on,index=off",
            rw(&[lower], &u, &w)
        ),
        &k,
    );
    sh(&k, script);
    u
}

/// The relative paths of a tree.
pub fn paths_of(t: &TreeSnap) -> Vec<String> {
    t.keys().map(|p| p.display().to_string()).collect()
}
