//! The read-path oracle: layer stacks mounted read-only by stratafs are compared with kernel
//! overlayfs mounting the same layers (or, for the formats the kernel does not understand, with
//! an expected merged tree materialised by hand into a plain directory).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Shared helpers; lints there are the shared file's business, not this suite's.
#[allow(clippy::manual_contains)]
mod common;

// Sections 11-15 live in modules of their own.
#[path = "read_oracle/data.rs"]
mod data;
#[path = "read_oracle/formats.rs"]
mod formats;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirEntryExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;
use rustix::fs::{FileType, Mode, SeekFrom, XattrFlags, CWD};
use rustix::io::Errno;

// ---------------------------------------------------------------------------------------------
// Fixture helpers
// ---------------------------------------------------------------------------------------------

/// Creates `n` empty layer directories `l0` (top) .. `l{n-1}` (bottom) under `t`.
fn layers(t: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = t.join(format!("l{i}"));
            fs::create_dir(&p).expect("mkdir layer");
            p
        })
        .collect()
}

/// `lowerdir=TOP:...:BOTTOM`.
fn lowerdir(layers: &[PathBuf]) -> String {
    let parts: Vec<String> = layers.iter().map(|p| p.display().to_string()).collect();
    format!("lowerdir={}", parts.join(":"))
}

/// A fresh (or reused, empty) mount point directory under `t`.
fn mountpoint(t: &Path, name: &str) -> PathBuf {
    let p = t.join(name);
    fs::create_dir_all(&p).expect("mkdir mountpoint");
    p
}

fn parent_of(p: &Path) {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir parents");
    }
}

/// A regular file `rel` under `root` holding `content` (parents created).
fn file(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    parent_of(&p);
    fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// A directory `rel` under `root` (parents created).
fn dir(root: &Path, rel: &str) {
    fs::create_dir_all(root.join(rel)).expect("mkdir");
}

/// A symlink `rel` under `root` pointing at `target`.
fn slink(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    parent_of(&p);
    symlink(target, &p).unwrap_or_else(|e| panic!("symlink {}: {e}", p.display()));
}

/// A device node / FIFO `rel` under `root`.
fn node(root: &Path, rel: &str, ft: FileType, mode: u32, dev: u64) {
    let p = root.join(rel);
    parent_of(&p);
    rustix::fs::mknodat(CWD, &p, ft, Mode::from_raw_mode(mode), dev)
        .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
    // mknod is subject to the umask; make the mode exact.
    rustix::fs::chmod(&p, Mode::from_raw_mode(mode)).expect("chmod node");
}

/// A kernel-format whiteout (char device 0/0) named `rel` under `root`.
fn whiteout(root: &Path, rel: &str) {
    node(root, rel, FileType::CharacterDevice, 0, 0);
}

/// Sets xattr `name=value` on `rel` under `root` (not following symlinks).
fn setx(root: &Path, rel: &str, name: &str, value: &[u8]) {
    let p = root.join(rel);
    rustix::fs::lsetxattr(&p, name, value, XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

fn errno_of(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw_os_error)
}

/// Asserts that `r` failed with `want`.
fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, want: Errno, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {want:?}, but it succeeded ({v:?})"),
        Err(e) => assert_eq!(errno_of(&e), Some(want), "{what}: got {e}"),
    }
}

/// Mounts `layers` with stratafs and with the kernel, asserts both show the same tree, and
/// returns that tree.
fn assert_matches_kernel(t: &Path, layers: &[PathBuf], what: &str) -> TreeSnap {
    let opts = lowerdir(layers);
    let m = mountpoint(t, "m");
    let k = mountpoint(t, "k");
    let ours = Mount::new(&opts, &m);
    let kernel = KernelMount::new(&opts, &k);
    let a = snapshot(&ours.mountpoint);
    let b = snapshot(&kernel.mountpoint);
    assert_same_tree(&a, &b, what);
    a
}

/// Mounts `layers` with stratafs and asserts the tree equals the plain directory `expected`.
fn assert_matches_expected(t: &Path, layers: &[PathBuf], expected: &Path, what: &str) -> TreeSnap {
    let opts = lowerdir(layers);
    let m = mountpoint(t, "m");
    let ours = Mount::new(&opts, &m);
    let a = snapshot(&ours.mountpoint);
    let b = snapshot(expected);
    assert_same_tree(&a, &b, what);
    a
}

/// Sorted names of directory `d`.
fn names(d: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = fs::read_dir(d)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display()))
        .map(|e| e.expect("dirent").file_name())
        .collect();
    v.sort();
    v
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

fn paths(snap: &TreeSnap) -> BTreeSet<String> {
    snap.keys().map(|p| p.display().to_string()).collect()
}

/// A deterministic pseudo-random byte stream (the suites' one `Rng`, from state `seed | 1`).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    Rng::from_state(seed | 1).bytes(len)
}

// ---------------------------------------------------------------------------------------------
// 1. Layer counts
// ---------------------------------------------------------------------------------------------

#[test]
fn one_layer_matches_layer_and_kernel() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 1);
    let l0 = &l[0];
    file(l0, "a", "alpha");
    file(l0, "empty", "");
    file(l0, "d/e/f/g", "deep");
    dir(l0, "emptydir");
    slink(l0, "d/link", "e/f/g");
    file(l0, "private", "secret");
    fs::set_permissions(
        l0.join("private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    file(l0, "setuid", "x");
    fs::set_permissions(
        l0.join("setuid"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .expect("chmod");
    file(l0, "owned", "someone else's");
    std::os::unix::fs::lchown(l0.join("owned"), Some(1000), Some(1001)).expect("chown");
    fs::write(l0.join("big"), pattern(200_000, 7)).expect("write");

    // The union of one layer is that layer.
    let opts = lowerdir(&l);
    let m = mountpoint(t.path(), "m");
    {
        let ours = Mount::new(&opts, &m);
        assert_same_tree(
            &snapshot(&ours.mountpoint),
            &snapshot(l0),
            "one layer vs the layer itself",
        );
    }
    // The kernel refuses a single lowerdir; an empty bottom layer gives the same union.
    let empty = t.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    let k = mountpoint(t.path(), "k");
    let ours = Mount::new(&opts, &m);
    let kernel = KernelMount::new(&format!("{opts}:{}", empty.display()), &k);
    assert_same_tree(
        &snapshot(&ours.mountpoint),
        &snapshot(&kernel.mountpoint),
        "one layer vs kernel",
    );
}

#[test]
fn two_layers_merge_like_kernel() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 2);
    let (top, bot) = (&l[0], &l[1]);
    file(bot, "only-bottom", "b");
    file(top, "only-top", "t");
    file(bot, "both", "bottom version, longer");
    file(top, "both", "top");
    fs::set_permissions(
        top.join("both"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .expect("chmod");
    file(bot, "d/b1", "b1");
    file(bot, "d/shared", "from bottom");
    file(top, "d/t1", "t1");
    file(top, "d/shared", "from top");
    file(bot, "d/sub/deep/x", "x");
    file(top, "d/sub/y", "y");
    dir(bot, "d/emptybot");
    dir(top, "d/emptytop");
    file(bot, "lowdir/inner/z", "z");
    file(top, "highdir/inner/z", "z2");
    // Directory modes come from the topmost layer.
    fs::set_permissions(
        top.join("d"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    let snap = assert_matches_kernel(t.path(), &l, "two layers");
    assert_eq!(
        snap[Path::new("both")].content.as_deref(),
        Some(&b"top"[..])
    );
    assert!(snap.contains_key(Path::new("d/sub/deep/x")));
    assert!(snap.contains_key(Path::new("d/sub/y")));
}

#[test]
fn six_layers_merge_like_kernel() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 6);
    for (i, layer) in l.iter().enumerate() {
        file(layer, &format!("only{i}"), &format!("layer {i}"));
        file(layer, &format!("d/f{i}"), &format!("d in layer {i}"));
        file(layer, "d/every", &format!("every from {i}"));
        file(layer, &format!("d/sub/s{i}"), &format!("{i}"));
        if i >= 2 {
            file(layer, "shared", &format!("shared from {i}"));
        }
        if i % 2 == 1 {
            file(layer, "d/odd", &format!("odd from {i}"));
        }
    }
    // Same name overriding at different depths.
    file(&l[5], "deepest", "5");
    file(&l[3], "deepest", "3");
    file(&l[4], "mid", "4");
    file(&l[1], "mid", "1");
    file(&l[5], "d/sub/x/y/z", "bottom");
    file(&l[0], "d/sub/x/y/w", "top");
    let snap = assert_matches_kernel(t.path(), &l, "six layers");
    assert_eq!(
        snap[Path::new("shared")].content.as_deref(),
        Some(&b"shared from 2"[..])
    );
    assert_eq!(
        snap[Path::new("d/odd")].content.as_deref(),
        Some(&b"odd from 1"[..])
    );
    assert_eq!(
        snap[Path::new("d/every")].content.as_deref(),
        Some(&b"every from 0"[..])
    );
    for i in 0..6 {
        assert!(snap.contains_key(&PathBuf::from(format!("d/f{i}"))));
        assert!(snap.contains_key(&PathBuf::from(format!("d/sub/s{i}"))));
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Kernel-format whiteouts
// ---------------------------------------------------------------------------------------------

#[test]
fn chardev_whiteouts_like_kernel() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 3);
    let (top, mid, bot) = (&l[0], &l[1], &l[2]);
    // A whiteout hiding a file.
    file(mid, "f", "hidden");
    whiteout(top, "f");
    // A whiteout hiding a whole directory (in two layers below).
    file(mid, "gone/a", "a");
    file(mid, "gone/sub/b", "b");
    file(bot, "gone/c", "c");
    whiteout(top, "gone");
    // A whiteout in the middle hiding only what is below it; the top re-creates the name.
    file(bot, "again", "bottom");
    whiteout(mid, "again");
    file(top, "again", "top");
    // A whiteout in the middle hiding a dir; the top has a new dir of that name (not merged
    // with the bottom one).
    file(bot, "redir/old", "old");
    whiteout(mid, "redir");
    file(top, "redir/new", "new");
    // Whiteouts inside a merged directory.
    file(bot, "d/x", "x");
    file(bot, "d/keep", "keep");
    file(mid, "d/y", "y");
    whiteout(top, "d/x");
    whiteout(mid, "d/z-nothing-below");
    // Whiteouts in the lowest layer hide only themselves (root and a merged dir).
    whiteout(bot, "lone");
    whiteout(bot, "d/lowwh");
    // A whiteout with an unusual mode is still a whiteout.
    file(bot, "m", "m");
    node(top, "m", FileType::CharacterDevice, 0o644, 0);

    let snap = assert_matches_kernel(t.path(), &l, "char-device whiteouts");
    let want: BTreeSet<String> = ["again", "d", "d/keep", "d/y", "redir", "redir/new"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(paths(&snap), want);

    let m = mountpoint(t.path(), "m");
    let _ours = Mount::new(&lowerdir(&l), &m);
    for hidden in [
        "f",
        "gone",
        "gone/a",
        "lone",
        "d/x",
        "d/lowwh",
        "m",
        "redir/old",
    ] {
        assert_errno(
            fs::symlink_metadata(m.join(hidden)),
            Errno::NOENT,
            &format!("lstat {hidden}"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Opaque directories, kernel form
// ---------------------------------------------------------------------------------------------

#[test]
fn trusted_opaque_like_kernel() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 3);
    let (top, mid, bot) = (&l[0], &l[1], &l[2]);
    // Opaque in the top layer: nothing below shows.
    file(top, "o/a", "a");
    setx(top, "o", "trusted.overlay.opaque", b"y");
    file(mid, "o/b", "b");
    file(mid, "o/sub/x", "x");
    file(bot, "o/c", "c");
    // Opaque in the middle: the top merges with it, the bottom is cut off.
    file(top, "m/a", "a");
    file(mid, "m/b", "b");
    setx(mid, "m", "trusted.overlay.opaque", b"y");
    file(bot, "m/c", "c");
    file(bot, "m/b", "bottom b");
    // Opaque in the lowest layer: no effect.
    file(mid, "low/y", "y");
    file(bot, "low/z", "z");
    setx(bot, "low", "trusted.overlay.opaque", b"y");
    // Empty opaque dir.
    dir(top, "e");
    setx(top, "e", "trusted.overlay.opaque", b"y");
    file(mid, "e/f", "f");
    // A value other than "y" is not opaque.
    file(top, "n/a", "a");
    setx(top, "n", "trusted.overlay.opaque", b"n");
    file(mid, "n/b", "b");
    // Opaque nested inside a merged dir.
    file(top, "p/q/a", "a");
    setx(top, "p/q", "trusted.overlay.opaque", b"y");
    file(mid, "p/q/b", "b");
    file(mid, "p/r", "r");

    let snap = assert_matches_kernel(t.path(), &l, "trusted.overlay.opaque");
    let want: BTreeSet<String> = [
        "o", "o/a", "m", "m/a", "m/b", "low", "low/y", "low/z", "e", "n", "n/a", "n/b", "p", "p/q",
        "p/q/a", "p/r",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(paths(&snap), want);
}

// ---------------------------------------------------------------------------------------------
// 4. Type changes across layers
// ---------------------------------------------------------------------------------------------

#[test]
fn file_over_dir_and_dir_over_file_like_kernel() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 3);
    let (top, mid, bot) = (&l[0], &l[1], &l[2]);
    // File over directory.
    file(top, "fd", "a file now");
    file(mid, "fd/inner", "hidden");
    // Directory over file.
    file(top, "df/inner", "dir now");
    file(mid, "df", "hidden file");
    // Dir over file over dir: only the top dir, nothing merged from the bottom one.
    file(top, "dfd/a", "a");
    file(mid, "dfd", "middle file");
    file(bot, "dfd/b", "b");
    // File over dir over file.
    file(top, "fdf", "top file");
    file(mid, "fdf/x", "x");
    file(bot, "fdf", "bottom file");
    // Symlink over dir, dir over symlink.
    slink(top, "ld", "somewhere");
    file(mid, "ld/x", "x");
    file(top, "dl/y", "y");
    slink(mid, "dl", "elsewhere");
    // Fifo over dir.
    node(top, "pd", FileType::Fifo, 0o644, 0);
    file(bot, "pd/z", "z");
    // Dir, whiteout, dir: the top dir stands alone.
    file(top, "dwd/a", "a");
    whiteout(mid, "dwd");
    file(bot, "dwd/b", "b");
    // Dir over dir over file: the two dirs merge, the file is ignored.
    file(top, "ddf/a", "a");
    file(mid, "ddf/b", "b");
    file(bot, "ddf", "bottom file");

    let snap = assert_matches_kernel(t.path(), &l, "type changes");
    assert_eq!(snap[Path::new("fd")].kind, "file");
    assert_eq!(snap[Path::new("df")].kind, "dir");
    assert!(snap.contains_key(Path::new("dfd/a")));
    assert!(!snap.contains_key(Path::new("dfd/b")));
    assert!(!snap.contains_key(Path::new("dwd/b")));
    assert!(snap.contains_key(Path::new("ddf/b")));
}

// ---------------------------------------------------------------------------------------------
// 5. Symlinks
// ---------------------------------------------------------------------------------------------

#[test]
fn symlinks_like_kernel_and_returned_as_data() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 2);
    let (top, bot) = (&l[0], &l[1]);
    file(top, "target", "the target");
    slink(top, "rel", "target");
    slink(top, "sub/rel-up", "../target");
    slink(top, "abs", "/etc/shadow");
    slink(top, "dangling", "does/not/exist");
    slink(top, "sub/deeper/escape", "../../../../etc/passwd");
    slink(top, "toroot", "/");
    // A symlink to a directory in the upper layer over a real directory below: the link wins.
    slink(top, "linkdir", "realdir");
    file(bot, "linkdir/inner", "must not show");
    file(bot, "linkdir/sub/x", "must not show");
    file(bot, "realdir/r", "r");
    file(top, "realdir/t", "t");
    // A symlink in the lower layer hidden by a file above, and vice versa.
    slink(bot, "was-link", "target");
    file(top, "was-link", "now a file");
    file(bot, "now-link", "was a file");
    slink(top, "now-link", "target");
    // Long target.
    let long = "x/".repeat(1000) + "end";
    slink(bot, "long", &long);

    let snap = assert_matches_kernel(t.path(), &l, "symlinks");
    assert_eq!(snap[Path::new("linkdir")].kind, "symlink");
    assert!(
        !snap
            .keys()
            .any(|p| p.starts_with("linkdir") && p != Path::new("linkdir")),
        "the lower directory under the link is merged in"
    );

    let m = mountpoint(t.path(), "m");
    let _ours = Mount::new(&lowerdir(&l), &m);
    for (name, want) in [
        ("rel", "target"),
        ("sub/rel-up", "../target"),
        ("abs", "/etc/shadow"),
        ("dangling", "does/not/exist"),
        ("sub/deeper/escape", "../../../../etc/passwd"),
        ("toroot", "/"),
        ("linkdir", "realdir"),
        ("now-link", "target"),
        ("long", long.as_str()),
    ] {
        let got = fs::read_link(m.join(name)).unwrap_or_else(|e| panic!("readlink {name}: {e}"));
        assert_eq!(got, PathBuf::from(want), "readlink {name}");
        let raw = rustix::fs::readlink(m.join(name), Vec::new()).expect("readlink");
        assert_eq!(raw.as_bytes(), want.as_bytes(), "raw readlink {name}");
        let md = fs::symlink_metadata(m.join(name)).expect("lstat");
        assert!(md.file_type().is_symlink(), "{name} is a symlink");
        assert_eq!(md.len(), want.len() as u64, "size of {name}");
    }
    // Following happens on the client side: "/" is the host root, not the layer's.
    assert_eq!(names(&m.join("toroot")), names(Path::new("/")));
    assert_ne!(names(&m.join("toroot")), names(top));
    // The link to a dir follows to the merged realdir, not to the lower "linkdir".
    assert_eq!(names(&m.join("linkdir")), vec![os("r"), os("t")]);
    assert_eq!(
        fs::read_to_string(m.join("rel")).expect("read via link"),
        "the target"
    );
    assert_errno(
        fs::metadata(m.join("dangling")),
        Errno::NOENT,
        "stat dangling",
    );
    assert_errno(
        fs::read_link(m.join("target")),
        Errno::INVAL,
        "readlink of a regular file",
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Hard links
// ---------------------------------------------------------------------------------------------

#[test]
fn hard_links_like_kernel() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 2);
    let (top, bot) = (&l[0], &l[1]);
    file(bot, "a", "linked content");
    dir(bot, "sub");
    fs::hard_link(bot.join("a"), bot.join("sub/b")).expect("link");
    file(top, "c", "three names");
    fs::hard_link(top.join("c"), top.join("c2")).expect("link");
    fs::hard_link(top.join("c"), top.join("c3")).expect("link");
    // One name of a lower pair hidden by a whiteout: the other still reports nlink 2.
    file(bot, "h", "half hidden");
    fs::hard_link(bot.join("h"), bot.join("h2")).expect("link");
    whiteout(top, "h2");
    file(top, "sub/other", "o");

    let snap = assert_matches_kernel(t.path(), &l, "hard links");
    assert_eq!(snap[Path::new("a")].nlink, Some(2));
    assert_eq!(snap[Path::new("sub/b")].nlink, Some(2));
    assert_eq!(snap[Path::new("c3")].nlink, Some(3));

    let m = mountpoint(t.path(), "m");
    let _ours = Mount::new(&lowerdir(&l), &m);
    let ino = |p: &str| fs::symlink_metadata(m.join(p)).expect("lstat").ino();
    assert_eq!(ino("a"), ino("sub/b"), "a and sub/b are one inode");
    assert_eq!(ino("c"), ino("c2"));
    assert_eq!(ino("c"), ino("c3"));
    assert_ne!(ino("a"), ino("c"));
    assert_ne!(ino("a"), ino("h"));
    assert_eq!(fs::symlink_metadata(m.join("a")).expect("lstat").nlink(), 2);
}

// ---------------------------------------------------------------------------------------------
// 7. FIFOs and device nodes
// ---------------------------------------------------------------------------------------------

#[test]
fn fifos_and_devices_like_kernel() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 2);
    let (top, bot) = (&l[0], &l[1]);
    node(top, "fifo", FileType::Fifo, 0o644, 0);
    node(
        top,
        "null",
        FileType::CharacterDevice,
        0o666,
        rustix::fs::makedev(1, 3),
    );
    node(
        bot,
        "dev/loop0",
        FileType::BlockDevice,
        0o660,
        rustix::fs::makedev(7, 0),
    );
    node(
        bot,
        "dev/tty5",
        FileType::CharacterDevice,
        0o620,
        rustix::fs::makedev(4, 5),
    );
    // A device in the upper layer over a file below.
    file(bot, "was-file", "x");
    node(
        top,
        "was-file",
        FileType::CharacterDevice,
        0o600,
        rustix::fs::makedev(1, 5),
    );
    // A file over a fifo below.
    node(bot, "was-fifo", FileType::Fifo, 0o600, 0);
    file(top, "was-fifo", "now a file");

    let snap = assert_matches_kernel(t.path(), &l, "fifos and devices");
    assert_eq!(snap[Path::new("fifo")].kind, "fifo");
    assert_eq!(snap[Path::new("null")].kind, "chardev");
    assert_eq!(
        snap[Path::new("null")].rdev,
        Some(rustix::fs::makedev(1, 3))
    );
    assert_eq!(snap[Path::new("dev/loop0")].kind, "blockdev");
    assert_eq!(
        snap[Path::new("dev/loop0")].rdev,
        Some(rustix::fs::makedev(7, 0))
    );
    assert_eq!(snap[Path::new("was-file")].kind, "chardev");
    assert_eq!(snap[Path::new("was-fifo")].kind, "file");
}

// ---------------------------------------------------------------------------------------------
// 8. Long names and deep nesting
// ---------------------------------------------------------------------------------------------

#[test]
fn long_names_and_deep_nesting_like_kernel() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 2);
    let (top, bot) = (&l[0], &l[1]);
    let fname = "f".repeat(255);
    let dname = "d".repeat(255);
    let cname = "c".repeat(255);
    file(bot, &fname, "long file name");
    file(bot, &format!("{dname}/{cname}"), "bottom");
    file(top, &format!("{dname}/{fname}"), "top");
    file(top, &format!("{dname}/{dname}/{cname}"), "nested");
    // A whiteout with a 255-byte name.
    file(bot, &format!("{dname}/{}", "w".repeat(255)), "hidden");
    whiteout(top, &format!("{dname}/{}", "w".repeat(255)));
    // 100 directories deep, merged at every level.
    let deep: Vec<String> = (0..100).map(|i| format!("n{i:02}")).collect();
    let deep_path = deep.join("/");
    file(bot, &format!("{deep_path}/leaf"), "bottom leaf");
    let half = deep[..50].join("/");
    file(top, &format!("{half}/mid"), "top mid");
    file(top, &format!("{deep_path}/top-leaf"), "top leaf");

    let snap = assert_matches_kernel(t.path(), &l, "long names and deep nesting");
    assert!(snap.contains_key(&PathBuf::from(&fname)));
    assert!(snap.contains_key(&PathBuf::from(format!("{dname}/{cname}"))));
    assert!(snap.contains_key(&PathBuf::from(format!("{deep_path}/leaf"))));
    assert!(snap.contains_key(&PathBuf::from(format!("{deep_path}/top-leaf"))));

    let m = mountpoint(t.path(), "m");
    let _ours = Mount::new(&lowerdir(&l), &m);
    assert_eq!(
        fs::read_to_string(m.join(&deep_path).join("leaf")).expect("read deep"),
        "bottom leaf"
    );
    // 256 bytes is too long.
    assert_errno(
        fs::symlink_metadata(m.join("f".repeat(256))),
        Errno::NAMETOOLONG,
        "lstat of a 256-byte name",
    );
}

// ---------------------------------------------------------------------------------------------
// 9. A big directory
// ---------------------------------------------------------------------------------------------

#[test]
fn big_directory_like_kernel() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 3);
    let (top, mid, bot) = (&l[0], &l[1], &l[2]);
    for layer in &l {
        dir(layer, "big");
    }
    let name = |i: usize| format!("big/entry-{i:05}");
    for i in 0..9000 {
        fs::write(bot.join(name(i)), "b").expect("write");
    }
    for i in 7000..16000 {
        fs::write(mid.join(name(i)), "m").expect("write");
    }
    for i in 0..1000 {
        whiteout(mid, &name(i));
    }
    for i in 14000..21500 {
        fs::write(top.join(name(i)), "t").expect("write");
    }
    for i in 8000..8500 {
        whiteout(top, &name(i));
    }
    // Visible: 0..21500 minus 0..1000 minus 8000..8500.
    let expected = 21500 - 1000 - 500;

    let opts = lowerdir(&l);
    let m = mountpoint(t.path(), "m");
    let k = mountpoint(t.path(), "k");
    let ours = Mount::new(&opts, &m);
    let kernel = KernelMount::new(&opts, &k);
    let ours_count = fs::read_dir(ours.mountpoint.join("big"))
        .expect("read_dir")
        .count();
    let kernel_count = fs::read_dir(kernel.mountpoint.join("big"))
        .expect("read_dir")
        .count();
    assert_eq!(kernel_count, expected, "kernel count");
    assert_eq!(ours_count, kernel_count, "stratafs count vs kernel");
    let ours_names = names(&ours.mountpoint.join("big"));
    let mut dedup = ours_names.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), ours_names.len(), "no duplicate names");
    assert_eq!(ours_names, names(&kernel.mountpoint.join("big")));
    let a = snapshot(&ours.mountpoint);
    let b = snapshot(&kernel.mountpoint);
    assert_same_tree(&a, &b, "20,000 entries");
    assert_eq!(
        a[Path::new("big/entry-07500")].content.as_deref(),
        Some(&b"m"[..])
    );
    assert_eq!(
        a[Path::new("big/entry-15000")].content.as_deref(),
        Some(&b"t"[..])
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Extended attributes
// ---------------------------------------------------------------------------------------------

#[test]
fn user_xattrs_topmost_wins_like_kernel() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 3);
    let (top, mid, bot) = (&l[0], &l[1], &l[2]);
    file(bot, "f", "bottom");
    setx(bot, "f", "user.a", b"bottom");
    setx(bot, "f", "user.b", b"bottom only");
    file(mid, "f", "mid");
    setx(mid, "f", "user.a", b"mid");
    file(bot, "lowonly", "x");
    setx(bot, "lowonly", "user.low", b"1");
    setx(bot, "lowonly", "user.empty", b"");
    // Merged dirs: attributes come from the topmost copy only.
    dir(bot, "d");
    setx(bot, "d", "user.d", b"bottom");
    setx(bot, "d", "user.shared", b"bottom");
    file(bot, "d/inner", "i");
    setx(bot, "d/inner", "user.inner", b"deep");
    dir(mid, "d");
    setx(mid, "d", "user.shared", b"mid");
    setx(mid, "d", "user.m", b"mid");
    dir(top, "d");
    // The topmost d has no xattrs at all: nothing is merged from below.
    file(top, "d/t", "t");
    dir(mid, "e");
    setx(mid, "e", "user.e", b"mid");
    file(bot, "e/x", "x");
    // Binary values and a large value.
    file(top, "bin", "b");
    setx(top, "bin", "user.bin", &[0, 1, 2, 255, 0, 10]);
    setx(top, "bin", "user.large", &pattern(3000, 3));
    // A symlink: user.* xattrs are not allowed on it, so it lists none (like the kernel).
    slink(top, "sym", "bin");

    let snap = assert_matches_kernel(t.path(), &l, "user xattrs");
    assert_eq!(
        snap[Path::new("f")].xattrs,
        vec![(os("user.a"), b"mid".to_vec())]
    );
    assert!(snap[Path::new("d")].xattrs.is_empty());
    assert_eq!(
        snap[Path::new("e")].xattrs,
        vec![(os("user.e"), b"mid".to_vec())]
    );

    let m = mountpoint(t.path(), "m");
    let _ours = Mount::new(&lowerdir(&l), &m);
    assert_errno(
        rustix::fs::lgetxattr(m.join("f"), "user.b", &mut [0u8; 64][..]).map_err(io::Error::from),
        Errno::NODATA,
        "user.b of a lower copy must not show",
    );
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(m.join("f"), "user.a", &mut buf[..]).expect("getxattr");
    assert_eq!(&buf[..n], b"mid");
    // A too-small buffer gives ERANGE, a size query gives the size.
    assert_errno(
        rustix::fs::lgetxattr(m.join("f"), "user.a", &mut [0u8; 1][..]).map_err(io::Error::from),
        Errno::RANGE,
        "getxattr into a small buffer",
    );
    assert_eq!(
        rustix::fs::lgetxattr_query(m.join("bin"), "user.large").expect("size query"),
        3000
    );
}

fn xattr_names(p: &Path) -> Vec<OsString> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..])
        .unwrap_or_else(|e| panic!("listxattr {}: {e}", p.display()));
    let mut v: Vec<OsString> = buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsStr::from_bytes(s).to_os_string())
        .collect();
    v.sort();
    v
}

#[test]
fn overlay_private_xattrs_are_hidden() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 2);
    let (top, bot) = (&l[0], &l[1]);
    let private = [
        "trusted.overlay.opaque",
        "trusted.overlay.origin",
        "user.overlay.foo",
        "user.overlay.opaque",
        "user.fuseoverlayfs.bar",
    ];
    file(top, "f", "f");
    file(bot, "lower", "l");
    dir(top, "d");
    file(bot, "d/x", "x");
    dir(bot, "lowdir");
    for target in ["f", "lower", "lowdir"] {
        let layer = if target == "f" { top } else { bot };
        for name in private {
            // "n": present but not an opaque marker, so the fixture's layout is unaffected.
            setx(layer, target, name, b"n");
        }
        setx(layer, target, "user.visible", b"ok");
        setx(layer, target, "user.overlayish", b"not private");
    }
    // The top "d" carries private xattrs with non-opaque values too.
    setx(top, "d", "user.overlay.foo", b"1");
    setx(top, "d", "user.fuseoverlayfs.bar", b"2");
    setx(top, "d", "trusted.overlay.opaque", b"n");
    setx(top, "d", "user.visible", b"ok");
    setx(top, "d", "user.overlayish", b"not private");

    let opts = lowerdir(&l);
    let m = mountpoint(t.path(), "m");
    let k = mountpoint(t.path(), "k");
    let _ours = Mount::new(&opts, &m);
    let _kernel = KernelMount::new(&opts, &k);
    let mut failures = Vec::new();
    for target in ["f", "lower", "lowdir", "d"] {
        let p = m.join(target);
        let listed = xattr_names(&p);
        let kernel_listed = xattr_names(&k.join(target));
        for name in private {
            if listed.contains(&os(name)) {
                failures.push(format!("listxattr {target} shows {name}: {listed:?}"));
            }
            let got = rustix::fs::lgetxattr(&p, name, &mut [0u8; 64][..]);
            if got != Err(Errno::NODATA) {
                failures.push(format!(
                    "getxattr {name} on {target}: {got:?}, want ENODATA"
                ));
            }
            // The kernel (a non-userxattr mount) hides its own trusted.overlay.* the same way.
            if name.starts_with("trusted.overlay.") {
                assert!(!kernel_listed.contains(&os(name)), "kernel lists {name}");
                assert_eq!(
                    rustix::fs::lgetxattr(k.join(target), name, &mut [0u8; 64][..]),
                    Err(Errno::NODATA),
                    "kernel getxattr {name} on {target}"
                );
            }
        }
        assert!(listed.contains(&os("user.visible")), "{target}: {listed:?}");
        assert!(
            listed.contains(&os("user.overlayish")),
            "{target}: {listed:?}"
        );
        let mut buf = [0u8; 64];
        let n = rustix::fs::lgetxattr(&p, "user.visible", &mut buf[..]).expect("getxattr");
        assert_eq!(&buf[..n], b"ok");
    }
    assert!(
        failures.is_empty(),
        "overlay-private xattrs leak through the mount:\n{}",
        failures.join("\n")
    );
    // The private values did not change the layout: d is merged.
    assert_eq!(names(&m.join("d")), vec![os("x")]);
}
