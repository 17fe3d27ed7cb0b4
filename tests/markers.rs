//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The markers an upper layer gets (`markers=`): the kernel's alone where the upper takes the
//! kernel's formats, fuse-overlayfs's as well where it is in the mount-program dialect, and
//! fuse-overlayfs reads what stratafs wrote.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::*;

/// A lower layer with a file to copy up and a directory to delete and make again.
fn stack() -> Stack {
    let s = Stack::new();
    fs::create_dir_all(s.lower.join("d/sub")).unwrap();
    fs::write(s.lower.join("d/f"), "lower\n").unwrap();
    fs::write(s.lower.join("d/sub/old"), "old\n").unwrap();
    s
}

/// Through the mount: append to `d/f` (a copy-up) and replace `d/sub` by a new directory
/// holding `new` (an opaque directory).
fn change(mnt: &Path) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("d/f"))
        .unwrap();
    f.write_all(b"more\n").unwrap();
    drop(f);
    fs::remove_dir_all(mnt.join("d/sub")).unwrap();
    fs::create_dir(mnt.join("d/sub")).unwrap();
    fs::write(mnt.join("d/sub/new"), "new\n").unwrap();
    assert_eq!(dir_names(&mnt.join("d/sub")), ["new"], "the mount's d/sub");
}

/// What the upper layer holds for the two changes.
#[derive(Debug, PartialEq)]
struct Markers {
    kernel_opaque: bool,
    fuse_opaque: bool,
    opq_file: bool,
    origin: Option<Vec<u8>>,
}

fn markers(upper: &Path) -> Markers {
    let sub = upper.join("d/sub");
    Markers {
        kernel_opaque: xattr(&sub, "trusted.overlay.opaque").as_deref() == Some(b"y"),
        fuse_opaque: xattr(&sub, "user.fuseoverlayfs.opaque").as_deref() == Some(b"y"),
        opq_file: sub.join(".wh..wh..opq").exists(),
        origin: xattr(&upper.join("d/f"), "user.fuseoverlayfs.origin"),
    }
}

fn fuse_overlayfs_markers() -> Markers {
    Markers {
        kernel_opaque: true,
        fuse_opaque: true,
        opq_file: true,
        origin: Some(b"d/f\0".to_vec()),
    }
}

fn expect_view(mnt: &Path, who: &str) {
    assert_eq!(dir_names(&mnt.join("d")), ["f", "sub"], "{who}: d");
    assert_eq!(dir_names(&mnt.join("d/sub")), ["new"], "{who}: d/sub");
    assert_eq!(
        fs::read_to_string(mnt.join("d/f")).unwrap(),
        "lower\nmore\n",
        "{who}: d/f"
    );
}

/// `markers=fuse-overlayfs`: an opaque directory gets the kernel's xattr,
/// `user.fuseoverlayfs.opaque` and a `.wh..wh..opq` file, a copied-up file its path in
/// `user.fuseoverlayfs.origin`, as fuse-overlayfs writes them; neither shows through the
/// mount, and fuse-overlayfs mounting the layers shows the same tree.
#[test]
fn fuse_overlayfs_markers_are_written_and_understood() {
    if !can_mount() {
        return;
    }
    let s = stack();
    let opts = format!("{},markers=fuse-overlayfs", s.rw_opts());
    let m = Mount::new(&opts, &s.mnt);
    change(&s.mnt);
    assert!(
        overlay_internals(&s.mnt).is_empty(),
        "the mount shows overlay internals: {:?}",
        overlay_internals(&s.mnt)
    );
    m.unmount();
    assert_eq!(markers(&s.upper), fuse_overlayfs_markers());

    let m = Mount::new(&opts, &s.mnt);
    expect_view(&s.mnt, "stratafs remounted");
    m.unmount();

    let Some(peer) = find_tool("fuse-overlayfs") else {
        facility(false, "fuse-overlayfs");
        return;
    };
    let out = run(Command::new(&peer).arg("-o").arg(s.rw_opts()).arg(&s.mnt));
    assert!(
        out.status.success(),
        "fuse-overlayfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _g = UmountGuard {
        path: s.mnt.clone(),
    };
    expect_view(&s.mnt, "fuse-overlayfs over stratafs's upper");
}

/// By default, as root on a filesystem that takes char 0/0 whiteouts, only the kernel's
/// markers are written: the upper stays one the kernel's overlayfs mounts as it is.
#[test]
fn kernel_format_upper_gets_only_the_kernels_markers() {
    if !can_compare() {
        return;
    }
    let s = stack();
    let m = Mount::new(&s.rw_opts(), &s.mnt);
    change(&s.mnt);
    m.unmount();
    assert_eq!(
        markers(&s.upper),
        Markers {
            kernel_opaque: true,
            fuse_opaque: false,
            opq_file: false,
            origin: None,
        }
    );
    let _k = KernelMount::new(
        &kernel_rw_opts(std::slice::from_ref(&s.lower), &s.upper, &s.work),
        &s.mnt,
    );
    expect_view(&s.mnt, "the kernel over stratafs's upper");
}

/// Owners kept in xattrs (`xattr_permissions=2`, as containers/storage mounts with
/// `force_mask`) make an upper the kernel cannot use as it is: it gets fuse-overlayfs's
/// markers without being asked.
#[test]
fn mount_program_dialect_gets_fuse_overlayfs_markers() {
    if !can_mount() {
        return;
    }
    let s = stack();
    let opts = format!("{},xattr_permissions=2", s.rw_opts());
    let m = Mount::new(&opts, &s.mnt);
    change(&s.mnt);
    m.unmount();
    assert_eq!(markers(&s.upper), fuse_overlayfs_markers());
    // `markers=kernel` keeps the kernel's alone even then.
    let t = stack();
    let opts = format!("{},xattr_permissions=2,markers=kernel", t.rw_opts());
    let m = Mount::new(&opts, &t.mnt);
    change(&t.mnt);
    m.unmount();
    let got = markers(&t.upper);
    assert!(got.kernel_opaque && !got.fuse_opaque && !got.opq_file && got.origin.is_none());
}
