//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Each deliberate divergence from kernel overlayfs listed in docs/SEMANTICS.md, pinned.

mod common;

use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::*;

fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn dot_wh_names_are_reserved() {
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    // A .wh. file in the upper layer hides the lower file (in its own layer it would not).
    fs::write(s.lower.join("hidden"), "x").unwrap();
    fs::write(s.upper.join(".wh.hidden"), "").unwrap();
    let m = Mount::new(&s.rw_opts(), &s.mnt);
    assert_eq!(
        errno_of(fs::metadata(m.mountpoint.join("hidden"))),
        Some(libc::ENOENT)
    );
    assert_eq!(
        errno_of(fs::metadata(m.mountpoint.join(".wh.hidden"))),
        Some(libc::ENOENT)
    );
    assert_eq!(
        errno_of(fs::write(m.mountpoint.join(".wh.new"), "")),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(fs::create_dir(m.mountpoint.join(".wh..wh..opq"))),
        Some(libc::EINVAL)
    );
    let names: Vec<_> = fs::read_dir(&m.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

fn xattr_names(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap();
    buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[test]
fn private_xattrs_are_hidden() {
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    let f = s.lower.join("f");
    fs::write(&f, "x").unwrap();
    for (k, v) in [
        ("user.overlay.a", "1"),
        ("user.fuseoverlayfs.b", "2"),
        ("trusted.overlay.c", "3"),
        ("user.kept", "4"),
    ] {
        rustix::fs::lsetxattr(&f, k, v.as_bytes(), rustix::fs::XattrFlags::empty()).unwrap();
    }
    let m = Mount::new(&s.rw_opts(), &s.mnt);
    let mf = m.mountpoint.join("f");
    let names = xattr_names(&mf);
    assert!(names.contains(&"user.kept".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("overlay")), "{names:?}");
    let mut buf = [0u8; 16];
    for k in [
        "user.overlay.a",
        "user.fuseoverlayfs.b",
        "trusted.overlay.c",
    ] {
        let e = rustix::fs::lgetxattr(&mf, k, &mut buf[..]).unwrap_err();
        assert_eq!(e.raw_os_error(), libc::ENODATA, "get {k}");
    }
    for k in ["user.overlay.a", "user.fuseoverlayfs.b"] {
        let e = rustix::fs::lsetxattr(&mf, k, b"v", rustix::fs::XattrFlags::empty()).unwrap_err();
        assert_eq!(e.raw_os_error(), libc::EOPNOTSUPP, "set {k}");
    }
    // The mount's own namespace is usable through it, stored escaped as the kernel does.
    rustix::fs::lsetxattr(
        &mf,
        "trusted.overlay.c",
        b"mine",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let n = rustix::fs::lgetxattr(&mf, "trusted.overlay.c", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"mine");
    assert!(xattr_names(&mf).contains(&"trusted.overlay.c".to_string()));
    let stored = xattr_names(&s.upper.join("f"));
    assert!(
        stored.contains(&"trusted.overlay.overlay.c".to_string()),
        "{stored:?}"
    );
    rustix::fs::lremovexattr(&mf, "trusted.overlay.c").unwrap();
    assert!(!xattr_names(&mf).iter().any(|n| n.contains("overlay")));
}

/// The root's `st_ino`, then `.` of the root's listing and `..` of a subdirectory's.
fn root_numbers(mnt: &Path) -> (u64, u64, u64) {
    let dots = |dir: &Path, name: &str| -> u64 {
        let out = run(Command::new("ls").arg("-ia").arg(dir));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                let ino = it.next()?;
                (it.next()? == name).then(|| ino.parse().unwrap())
            })
            .unwrap_or_else(|| panic!("{name} not listed in {}", dir.display()))
    };
    (
        fs::metadata(mnt).unwrap().ino(),
        dots(mnt, "."),
        dots(&mnt.join("sub"), ".."),
    )
}

#[test]
fn root_inode_is_the_top_layers_like_the_kernels() {
    if !can_compare() {
        return;
    }
    let s = Stack::new();
    fs::create_dir(s.lower.join("sub")).unwrap();
    let upper_root = fs::metadata(&s.upper).unwrap().ino();
    let lowers = std::slice::from_ref(&s.lower);
    // Read-write: the upper root's number.
    let kernel = {
        let _k = KernelMount::new(&kernel_rw_opts(lowers, &s.upper, &s.work), &s.mnt);
        root_numbers(&s.mnt)
    };
    let ours = {
        let _m = Mount::new(&s.rw_opts(), &s.mnt);
        root_numbers(&s.mnt)
    };
    assert_eq!(kernel, (upper_root, upper_root, upper_root));
    assert_eq!(ours, kernel, "read-write root numbers");
    // Read-only (two lowers, as the kernel wants at least two without an upper): the top
    // lower root's number.
    let ro = format!("lowerdir={}:{}", s.upper.display(), s.lower.display());
    let kernel = {
        let _k = KernelMount::new(&ro, &s.mnt);
        root_numbers(&s.mnt)
    };
    let ours = {
        let _m = Mount::new(&ro, &s.mnt);
        root_numbers(&s.mnt)
    };
    assert_eq!(kernel, (upper_root, upper_root, upper_root));
    assert_eq!(ours, kernel, "read-only root numbers");
}

fn dir_ino(dir: &Path, name: &str) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.file_name() == name)
        .map(|e| e.ino())
        .unwrap_or_else(|| panic!("{name} not listed"))
}

#[test]
fn inode_survives_copy_up_and_remount() {
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    fs::create_dir(s.lower.join("d")).unwrap();
    fs::write(s.lower.join("d/f"), "lower").unwrap();
    let before;
    {
        let m = Mount::new(&s.rw_opts(), &s.mnt);
        let f = m.mountpoint.join("d/f");
        before = fs::metadata(&f).unwrap().ino();
        let dino = fs::metadata(m.mountpoint.join("d")).unwrap().ino();
        fs::write(&f, "upper").unwrap();
        assert_eq!(fs::metadata(&f).unwrap().ino(), before);
        assert_eq!(fs::metadata(m.mountpoint.join("d")).unwrap().ino(), dino);
        assert_eq!(dir_ino(&m.mountpoint.join("d"), "f"), before);
    }
    assert!(s.upper.join("d/f").exists(), "copy-up happened");
    let m = Mount::new(&s.rw_opts(), &s.mnt);
    assert_eq!(
        fs::metadata(m.mountpoint.join("d/f")).unwrap().ino(),
        before
    );
    assert_eq!(dir_ino(&m.mountpoint.join("d"), "f"), before);
    assert_eq!(
        fs::read_to_string(m.mountpoint.join("d/f")).unwrap(),
        "upper"
    );
}

/// What the names of a lower hard link show before and after one of them is copied up.
#[derive(Debug, PartialEq)]
struct LowerLinks {
    same_ino: bool,
    ino_is_lower: bool,
    nlinks: (u64, u64),
    d_ino_matches: bool,
    after_same_ino: bool,
    b_keeps_ino: bool,
    after_nlinks: (u64, u64),
    contents: (String, String),
}

/// Lower `a` and `b` are one file (nlink 2) and `c` another, in the lower layer of `mnt`.
fn lower_links(lower: &Path, mnt: &Path) -> LowerLinks {
    let (a, b) = (mnt.join("a"), mnt.join("b"));
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    let nlink = |p: &Path| fs::metadata(p).unwrap().nlink();
    let (ia, ib) = (ino(&a), ino(&b));
    let got = (
        ia == ib,
        ia == fs::metadata(lower.join("a")).unwrap().ino(),
        (nlink(&a), nlink(&b)),
        dir_ino(mnt, "a") == ia
            && dir_ino(mnt, "b") == ib
            && dir_ino(mnt, "c") == ino(&mnt.join("c")),
    );
    fs::write(&a, "changed").unwrap();
    LowerLinks {
        same_ino: got.0,
        ino_is_lower: got.1,
        nlinks: got.2,
        d_ino_matches: got.3,
        after_same_ino: ino(&a) == ino(&b),
        b_keeps_ino: ino(&b) == ib,
        after_nlinks: (nlink(&a), nlink(&b)),
        contents: (
            fs::read_to_string(&a).unwrap(),
            fs::read_to_string(&b).unwrap(),
        ),
    }
}

/// The names of a lower hard link report the lower file's `st_ino` and `st_nlink` (readdir's
/// `d_ino` too), as the kernel's overlayfs with `index=off` does, so `tar`, `cp -a` and
/// `podman export` see one file; a copy-up of one name makes it a file of its own and leaves
/// the other name as it was.
#[test]
fn lower_hardlinks_share_identity_until_copy_up() {
    if !can_compare() {
        return;
    }
    let fill = |l: &Path| {
        fs::write(l.join("a"), "same").unwrap();
        fs::hard_link(l.join("a"), l.join("b")).unwrap();
        fs::write(l.join("c"), "other").unwrap();
    };
    let k = Stack::new();
    fill(&k.lower);
    let want = {
        let _m = KernelMount::new(
            &kernel_rw_opts(std::slice::from_ref(&k.lower), &k.upper, &k.work),
            &k.mnt,
        );
        lower_links(&k.lower, &k.mnt)
    };
    assert!(want.same_ino && !want.after_same_ino, "{want:?}");
    let s = Stack::new();
    fill(&s.lower);
    let m = Mount::new(&s.rw_opts(), &s.mnt);
    assert_eq!(lower_links(&s.lower, &m.mountpoint), want);
    // The same after a remount: the copied-up name stays its own file.
    drop(m);
    let m = Mount::new(&s.rw_opts(), &s.mnt);
    let ino = |n: &str| fs::metadata(m.mountpoint.join(n)).unwrap().ino();
    assert_ne!(ino("a"), ino("b"));
    assert_eq!(ino("b"), fs::metadata(s.lower.join("b")).unwrap().ino());
}

/// What a read-only fd opened on a lower file before a copy-up, and the name after it, show.
#[derive(Debug, PartialEq)]
struct CopyUpUnderReader {
    old_fd_reads: String,
    path_reads: String,
    truncated_reads: String,
}

/// Lower file `f` is opened read-only (in FUSE passthrough on stratafs, as root), then
/// opened for append by path and appended to, then truncated by path after a chmod.
fn copy_up_under_reader(mnt: &Path) -> (CopyUpUnderReader, u64, u64) {
    use std::io::{Read, Seek, Write};
    let f = mnt.join("f");
    let mut r = fs::File::open(&f).unwrap();
    let mut first = String::new();
    r.read_to_string(&mut first).unwrap();
    assert_eq!(first, "lower data\n");
    let mut w = fs::OpenOptions::new().append(true).open(&f).unwrap();
    w.write_all(b"more\n").unwrap();
    drop(w);
    let mut old = String::new();
    r.rewind().unwrap();
    r.read_to_string(&mut old).unwrap();
    let path_reads = fs::read_to_string(&f).unwrap();
    let old_ino = r.metadata().unwrap().ino();
    let new_ino = fs::metadata(&f).unwrap().ino();
    // A second file: copied up by a chmod (no open), then truncated and read by path.
    let g = mnt.join("g");
    let r2 = fs::File::open(&g).unwrap();
    fs::set_permissions(&g, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    truncate_path(&g, 3).unwrap();
    let truncated_reads = fs::read_to_string(&g).unwrap();
    drop(r2);
    (
        CopyUpUnderReader {
            old_fd_reads: old,
            path_reads,
            truncated_reads,
        },
        old_ino,
        new_ino,
    )
}

/// The policy for a copy-up while the lower copy is open in FUSE passthrough (docs/SEMANTICS.md
/// row 13): handles opened before the copy-up keep reading the lower copy (the kernel's
/// overlayfs moves them to the copy, since Linux 4.19); what the name shows, and every open
/// after the copy-up, is the kernel's; the lower layer is never written; the name shows a
/// new inode number while an old handle is open, and the original again after a remount.
#[test]
fn copy_up_while_lower_open_in_passthrough() {
    if !can_compare() {
        return;
    }
    let fill = |l: &Path| {
        fs::write(l.join("f"), "lower data\n").unwrap();
        fs::write(l.join("g"), "lower g\n").unwrap();
    };
    let k = Stack::new();
    fill(&k.lower);
    let (want, k_old, k_new) = {
        let _m = KernelMount::new(
            &kernel_rw_opts(std::slice::from_ref(&k.lower), &k.upper, &k.work),
            &k.mnt,
        );
        copy_up_under_reader(&k.mnt)
    };
    assert_eq!(k_old, k_new, "the kernel keeps the inode number");
    let s = Stack::new();
    fill(&s.lower);
    let m = Mount::new(&s.rw_opts(), &s.mnt);
    let before = fs::metadata(s.mnt.join("f")).unwrap().ino();
    let (got, old, new) = copy_up_under_reader(&s.mnt);
    assert_eq!(
        want.old_fd_reads, "lower data\nmore\n",
        "the kernel's old handle"
    );
    assert_eq!(
        got,
        CopyUpUnderReader {
            old_fd_reads: "lower data\n".into(),
            ..want
        }
    );
    assert_eq!(old, before);
    assert_ne!(
        new, old,
        "the name got a new node while the old handle was open"
    );
    assert_eq!(
        fs::read_to_string(s.lower.join("f")).unwrap(),
        "lower data\n"
    );
    assert_eq!(fs::read_to_string(s.lower.join("g")).unwrap(), "lower g\n");
    assert_eq!(
        fs::read_to_string(s.upper.join("f")).unwrap(),
        "lower data\nmore\n"
    );
    drop(m);
    let m = Mount::new(&s.rw_opts(), &s.mnt);
    assert_eq!(fs::metadata(m.mountpoint.join("f")).unwrap().ino(), before);
}
