#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Directed tests of the write path. Each builds the same layers twice, mounts one copy with
//! stratafs and the other with the kernel's overlayfs, does the same thing through both and
//! expects the same results, the same merged trees and (where the format is the kernel's)
//! the same upper layers.

mod common;
#[path = "write_ops/twin.rs"]
mod twin;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};

use common::*;
use twin::*;
// ------------------------------------------------------------------------------------------
// Copy-up.

/// A lower file two directories down, every level with its own mode, owner, times and xattrs.
fn deep_lower(side: &Side) {
    let l = &side.lowers[0];
    mkdir_owned(&l.join("p"), 0o750, 1000, 1001);
    mkdir_owned(&l.join("p/q"), 0o705, 1001, 1000);
    file_owned(&l.join("p/q/f"), b"hello", 0o640, 1000, 1000);
    file_owned(&l.join("p/q/other"), b"stays below", 0o644, 0, 0);
    set_user_xattr(&l.join("p"), "user.level", "p");
    set_user_xattr(&l.join("p/q/f"), "user.level", "f");
}

fn check_copy_up(what: &str, act: impl Fn(&Path) -> Result<(), i32>, file_mtime_kept: bool) {
    let Some(tw) = twin(1, deep_lower) else {
        return;
    };
    let rels = ["p", "p/q", "p/q/f"];
    // The kernel caches what these stats return...
    for side in [&tw.s, &tw.k] {
        for rel in rels {
            ctime_of(&side.mnt.join(rel));
        }
    }
    tw.ok(what, |m| act(&m.join("p/q/f")));
    // ...and a copy-up changes their ctimes (the copies are new inodes, a placed child
    // changes its directory): the mount must show the upper copies' ctimes, not the
    // cached ones.
    for side in [&tw.s, &tw.k] {
        let stale: Vec<String> = rels
            .iter()
            .filter_map(|rel| {
                let (shown, upper) = (
                    ctime_of(&side.mnt.join(rel)),
                    ctime_of(&side.upper.join(rel)),
                );
                (shown != upper).then(|| format!("{rel}: shown {shown:?}, upper {upper:?}"))
            })
            .collect();
        assert!(
            stale.is_empty(),
            "{what}: ctimes after the copy-up ({}):\n{}",
            side.mnt.display(),
            stale.join("\n")
        );
    }
    // (After: listing a directory refreshes its entries' attributes.)
    tw.same_tree(what);
    tw.same_upper(what);
    // The parents came up with their own metadata, times included.
    for side in [&tw.s, &tw.k] {
        assert!(side.upper.join("p/q/f").exists(), "{what}: no copy-up");
    }
    let mut rels = vec!["p", "p/q"];
    if file_mtime_kept {
        rels.push("p/q/f");
    }
    let wrong: Vec<String> = rels
        .iter()
        .filter_map(|rel| {
            let (a, b) = (
                mtime_of(&tw.s.upper.join(rel)),
                mtime_of(&tw.k.upper.join(rel)),
            );
            (a != b).then(|| format!("{rel}: stratafs {a}, kernel {b}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: mtimes of the copied-up objects differ:\n{}",
        wrong.join("\n")
    );
    // The sibling stays below.
    assert!(!tw.s.upper.join("p/q/other").exists());
}

fn io<T>(r: std::io::Result<T>) -> Result<(), i32> {
    errno_of(r).map(|_| ())
}

#[test]
fn copy_up_on_open_wronly() {
    check_copy_up(
        "open O_WRONLY",
        |p| io(std::fs::OpenOptions::new().write(true).open(p)),
        true,
    );
}

#[test]
fn copy_up_on_open_rdwr() {
    check_copy_up(
        "open O_RDWR",
        |p| io(std::fs::OpenOptions::new().read(true).write(true).open(p)),
        true,
    );
}

#[test]
fn copy_up_on_open_trunc() {
    check_copy_up(
        "open O_TRUNC",
        |p| {
            io(std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(p))
        },
        false,
    );
}

#[test]
fn copy_up_on_chmod() {
    check_copy_up(
        "chmod",
        |p| {
            io(std::fs::set_permissions(
                p,
                std::fs::Permissions::from_mode(0o600),
            ))
        },
        true,
    );
}

#[test]
fn copy_up_on_chown() {
    check_copy_up(
        "chown",
        |p| io(std::os::unix::fs::chown(p, Some(1002), Some(1002))),
        true,
    );
}

#[test]
fn copy_up_on_utimes() {
    check_copy_up(
        "utimes",
        |p| {
            set_times(p, 1_000_000_000, 1_234_567_890);
            Ok(())
        },
        true,
    );
}

#[test]
fn copy_up_on_setxattr() {
    check_copy_up(
        "setxattr",
        |p| {
            rustix::fs::lsetxattr(p, "user.new", b"v", rustix::fs::XattrFlags::empty())
                .map_err(|e| e.raw_os_error())
        },
        true,
    );
}

#[test]
fn sparse_file_stays_sparse() {
    const SIZE: u64 = 64 << 20;
    let Some(tw) = twin(1, |side| {
        let p = side.lower(0, "big");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(SIZE).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", SIZE - 4).unwrap();
    }) else {
        return;
    };
    tw.ok("open for write", |m| {
        io(std::fs::OpenOptions::new().write(true).open(m.join("big")))
    });
    let lower_blocks = std::fs::metadata(tw.s.lower(0, "big")).unwrap().blocks();
    let ours = std::fs::metadata(tw.s.upper.join("big")).unwrap().blocks();
    let kernels = std::fs::metadata(tw.k.upper.join("big")).unwrap().blocks();
    assert!(
        ours <= lower_blocks * 2 + 256,
        "copy-up filled holes: upper has {ours} blocks, lower {lower_blocks} \
         (kernel's copy: {kernels})"
    );
    tw.both("size and ends", |m| {
        let mut f = std::fs::File::open(m.join("big")).unwrap();
        let mut tail = [0u8; 4];
        f.seek(SeekFrom::End(-4)).unwrap();
        f.read_exact(&mut tail).unwrap();
        (f.metadata().unwrap().len(), tail)
    });
}

#[test]
fn st_ino_survives_copy_up_and_remount() {
    let Some(mut tw) = twin(1, |side| {
        std::fs::write(side.lower(0, "f"), "lower").unwrap();
    }) else {
        return;
    };
    let before = std::fs::metadata(tw.s.mnt.join("f")).unwrap().ino();
    std::fs::OpenOptions::new()
        .append(true)
        .open(tw.s.mnt.join("f"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    assert!(tw.s.upper.join("f").exists());
    let after = std::fs::metadata(tw.s.mnt.join("f")).unwrap().ino();
    assert_eq!(before, after, "st_ino changed by copy-up");
    tw.unmount();
    tw.mount();
    let remounted = std::fs::metadata(tw.s.mnt.join("f")).unwrap().ino();
    assert_eq!(before, remounted, "st_ino changed across a remount");
}

#[test]
fn read_only_fd_keeps_working_across_copy_up() {
    let Some(tw) = twin(1, |side| {
        std::fs::write(side.lower(0, "f"), "old contents").unwrap();
    }) else {
        return;
    };
    for m in [&tw.s.mnt, &tw.k.mnt] {
        let mut ro = std::fs::File::open(m.join("f")).unwrap();
        let mut first = String::new();
        ro.read_to_string(&mut first).unwrap();
        assert_eq!(first, "old contents");
        let w = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("f"))
            .unwrap();
        w.write_all_at(b"NEW", 0).unwrap();
        drop(w);
        // The old descriptor still reads (and stats) without error.
        let mut buf = [0u8; 12];
        let n = ro.read_at(&mut buf, 0).unwrap();
        assert_eq!(n, 12);
        ro.metadata().unwrap();
    }
}

/// What an fd opened before the copy-up reads afterwards. The kernel (since 4.19) switches
/// the open file over to the upper copy, so it reads the new data; so does stratafs where
/// lower copies are read through the daemon (`passthrough=upper`). With the default
/// `passthrough=all` the handle keeps reading the lower copy (tests/semantics.rs).
#[test]
fn read_only_fd_sees_copied_up_data_like_kernel() {
    let Some(mut tw) = twin(1, |side| {
        std::fs::write(side.lower(0, "f"), "old contents").unwrap();
    }) else {
        return;
    };
    tw.remount_with(",passthrough=upper");
    tw.both("read through an fd opened before the copy-up", |m| {
        let ro = std::fs::File::open(m.join("f")).unwrap();
        let mut buf = [0u8; 12];
        ro.read_at(&mut buf, 0).unwrap();
        let w = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("f"))
            .unwrap();
        w.write_all_at(b"NEW", 0).unwrap();
        drop(w);
        let n = ro.read_at(&mut buf, 0).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
}

#[test]
fn concurrent_first_writes_copy_up_once() {
    const FILES: usize = 12;
    const THREADS: usize = 8;
    let Some(tw) = twin(1, |side| {
        for i in 0..FILES {
            std::fs::write(side.lower(0, &format!("f{i}")), "........").unwrap();
        }
    }) else {
        return;
    };
    for m in [tw.s.mnt.clone(), tw.k.mnt.clone()] {
        for i in 0..FILES {
            let path = m.join(format!("f{i}"));
            let barrier = Arc::new(Barrier::new(THREADS));
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (path, barrier) = (path.clone(), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                        f.write_all_at(&[b'A' + t as u8], t as u64)?;
                        f.metadata().map(|md| md.ino())
                    })
                })
                .collect();
            let inos: Vec<u64> = handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect();
            assert!(
                inos.iter().all(|i| *i == inos[0]),
                "{}: threads saw different inodes {inos:?}",
                path.display()
            );
            assert_eq!(
                std::fs::read(&path).unwrap(),
                b"ABCDEFGH",
                "{}",
                path.display()
            );
        }
    }
    let mut want: Vec<String> = (0..FILES).map(|i| format!("f{i}")).collect();
    want.sort();
    assert_eq!(dir_names(&tw.s.upper), want, "one copy per file in upper");
    assert_eq!(
        dir_names(&tw.s.work.join("work")),
        Vec::<String>::new(),
        "workdir/work leftovers"
    );
    tw.same_tree("after concurrent first writes");
    tw.same_upper("after concurrent first writes");
}

// ------------------------------------------------------------------------------------------
// Whiteouts, opaque directories, rename.

#[test]
fn unlink_of_lower_file_leaves_whiteout() {
    let Some(tw) = twin(1, |side| {
        std::fs::create_dir(side.lower(0, "d")).unwrap();
        std::fs::write(side.lower(0, "d/a"), "a").unwrap();
        std::fs::write(side.lower(0, "top"), "t").unwrap();
    }) else {
        return;
    };
    tw.ok("unlink d/a", |m| io(std::fs::remove_file(m.join("d/a"))));
    tw.ok("unlink top", |m| io(std::fs::remove_file(m.join("top"))));
    for side in [&tw.s, &tw.k] {
        assert!(is_whiteout(&side.upper.join("d/a")), "no whiteout for d/a");
        assert!(is_whiteout(&side.upper.join("top")), "no whiteout for top");
    }
    assert_eq!(
        tw.both("stat d/a", |m| io(std::fs::symlink_metadata(m.join("d/a")))),
        Err(libc::ENOENT)
    );
    tw.same_tree("after unlinks");
    tw.same_upper("after unlinks");
}

#[test]
fn rmdir_of_merged_dir_is_enotempty_while_anything_shows() {
    let Some(tw) = twin(2, |side| {
        std::fs::create_dir(side.lower(0, "d")).unwrap();
        std::fs::write(side.lower(0, "d/x"), "x").unwrap();
        std::fs::create_dir(side.lower(1, "d")).unwrap();
        std::fs::write(side.lower(1, "d/y"), "y").unwrap();
        std::fs::create_dir(side.lower(1, "d/z")).unwrap();
    }) else {
        return;
    };
    let rmdir = |m: &Path| io(std::fs::remove_dir(m.join("d")));
    assert_eq!(tw.both("rmdir full", rmdir), Err(libc::ENOTEMPTY));
    tw.ok("unlink d/x", |m| io(std::fs::remove_file(m.join("d/x"))));
    assert_eq!(tw.both("rmdir d/{y,z}", rmdir), Err(libc::ENOTEMPTY));
    tw.ok("unlink d/y", |m| io(std::fs::remove_file(m.join("d/y"))));
    assert_eq!(tw.both("rmdir d/{z}", rmdir), Err(libc::ENOTEMPTY));
    tw.ok("rmdir d/z", |m| io(std::fs::remove_dir(m.join("d/z"))));
    assert_eq!(tw.both("rmdir empty", rmdir), Ok(()));
    for side in [&tw.s, &tw.k] {
        assert!(is_whiteout(&side.upper.join("d")));
    }
    tw.same_tree("after rmdir");
    tw.same_upper("after rmdir");
}

#[test]
fn recreated_dir_is_opaque() {
    let Some(tw) = twin(1, |side| {
        std::fs::create_dir(side.lower(0, "d")).unwrap();
        std::fs::write(side.lower(0, "d/old"), "old").unwrap();
        std::fs::create_dir(side.lower(0, "d/sub")).unwrap();
    }) else {
        return;
    };
    tw.ok("empty d and remove it", |m| {
        io(std::fs::remove_file(m.join("d/old"))
            .and_then(|()| std::fs::remove_dir(m.join("d/sub")))
            .and_then(|()| std::fs::remove_dir(m.join("d"))))
    });
    tw.ok("mkdir d", |m| io(std::fs::create_dir(m.join("d"))));
    assert_eq!(
        tw.both("stat d/old", |m| io(std::fs::symlink_metadata(
            m.join("d/old")
        ))),
        Err(libc::ENOENT)
    );
    assert_eq!(
        tw.both("stat d/sub", |m| io(std::fs::symlink_metadata(
            m.join("d/sub")
        ))),
        Err(libc::ENOENT)
    );
    assert_eq!(
        tw.both("readdir d", |m| dir_names(&m.join("d"))),
        Vec::<String>::new()
    );
    std::fs::write(tw.s.mnt.join("d/new"), "n").unwrap();
    std::fs::write(tw.k.mnt.join("d/new"), "n").unwrap();
    assert_eq!(tw.both("readdir d", |m| dir_names(&m.join("d"))), ["new"]);
    for side in [&tw.s, &tw.k] {
        assert_eq!(
            xattr_of(&side.upper.join("d"), "trusted.overlay.opaque"),
            Ok(b"y".to_vec())
        );
    }
    tw.same_tree("recreated dir");
}

#[test]
fn rename_of_lower_or_merged_dir_is_exdev() {
    let Some(tw) = twin(1, |side| {
        std::fs::create_dir(side.lower(0, "lowerdir")).unwrap();
        std::fs::write(side.lower(0, "lowerdir/f"), "f").unwrap();
        std::fs::create_dir(side.lower(0, "merged")).unwrap();
        std::fs::write(side.lower(0, "merged/f"), "f").unwrap();
        std::fs::create_dir(side.upper.join("merged")).unwrap();
        std::fs::write(side.upper.join("merged/g"), "g").unwrap();
        std::fs::create_dir(side.lower(0, "emptylower")).unwrap();
    }) else {
        return;
    };
    let ren = |from: &'static str, to: &'static str| {
        move |m: &Path| io(std::fs::rename(m.join(from), m.join(to)))
    };
    assert_eq!(
        tw.both("rename lower dir", ren("lowerdir", "x")),
        Err(libc::EXDEV)
    );
    assert_eq!(
        tw.both("rename empty lower dir", ren("emptylower", "x")),
        Err(libc::EXDEV)
    );
    assert_eq!(
        tw.both("rename merged dir", ren("merged", "x")),
        Err(libc::EXDEV)
    );
    tw.ok("mkdir upper-only", |m| {
        io(std::fs::create_dir(m.join("fresh"))
            .and_then(|()| std::fs::write(m.join("fresh/f"), "f")))
    });
    assert_eq!(
        tw.both("rename upper-only dir", ren("fresh", "renamed")),
        Ok(())
    );
    assert_eq!(
        tw.both(
            "rename it into a lower dir",
            ren("renamed", "lowerdir/inner")
        ),
        Ok(())
    );
    tw.same_tree("after dir renames");
}

#[test]
fn rename_of_lower_file_leaves_whiteout() {
    let Some(tw) = twin(1, |side| {
        std::fs::create_dir(side.lower(0, "d")).unwrap();
        std::fs::write(side.lower(0, "d/a"), "a").unwrap();
        std::fs::write(side.lower(0, "b"), "b").unwrap();
    }) else {
        return;
    };
    tw.ok("rename d/a c", |m| {
        io(std::fs::rename(m.join("d/a"), m.join("c")))
    });
    tw.ok("rename b to d/x", |m| {
        io(std::fs::rename(m.join("b"), m.join("d/x")))
    });
    for side in [&tw.s, &tw.k] {
        assert!(is_whiteout(&side.upper.join("d/a")));
        assert!(is_whiteout(&side.upper.join("b")));
        assert_eq!(std::fs::read(side.upper.join("c")).unwrap(), b"a");
    }
    tw.same_tree("after file renames");
    tw.same_upper("after file renames");
}

#[test]
fn hard_link_of_lower_file() {
    let Some(tw) = twin(1, |side| {
        std::fs::write(side.lower(0, "f"), "data").unwrap();
    }) else {
        return;
    };
    tw.ok("link f g", |m| {
        io(std::fs::hard_link(m.join("f"), m.join("g")))
    });
    tw.both("names share an inode", |m| {
        let a = std::fs::metadata(m.join("f")).unwrap();
        let b = std::fs::metadata(m.join("g")).unwrap();
        (a.ino() == b.ino(), a.nlink(), b.nlink())
    });
    let st = std::fs::metadata(tw.s.mnt.join("g")).unwrap();
    assert_eq!(st.nlink(), 2);
    tw.both("write through one, read through the other", |m| {
        std::fs::OpenOptions::new()
            .append(true)
            .open(m.join("g"))
            .unwrap()
            .write_all(b"+")
            .unwrap();
        std::fs::read(m.join("f")).unwrap()
    });
    tw.ok("unlink f", |m| io(std::fs::remove_file(m.join("f"))));
    tw.both("g after unlink of f", |m| {
        let md = std::fs::metadata(m.join("g")).unwrap();
        (md.nlink(), std::fs::read(m.join("g")).unwrap())
    });
    tw.same_tree("after links");
}

fn private_xattr_stack(side: &Side) {
    std::fs::create_dir(side.lower(0, "d")).unwrap();
    std::fs::write(side.lower(0, "d/f"), "f").unwrap();
    std::fs::write(side.lower(0, "file"), "f").unwrap();
}

/// One xattr call on a path: the value read (empty for set/remove) or the errno.
type XattrCall<'a> = dyn Fn(&Path) -> Result<Vec<u8>, i32> + 'a;

const PRIVATE: [&str; 2] = ["trusted.overlay.opaque", "trusted.overlay.origin"];

fn try_set(p: &Path, name: &str) -> Result<(), i32> {
    rustix::fs::lsetxattr(p, name, b"y", rustix::fs::XattrFlags::empty())
        .map_err(|e| e.raw_os_error())
}

/// Whatever a caller does with `trusted.overlay.*` names through the mount, it never
/// reaches the overlay's own attributes: the directory stays merged, nothing private shows.
#[test]
fn overlay_private_xattrs_do_not_change_the_merge() {
    let Some(tw) = twin(1, private_xattr_stack) else {
        return;
    };
    for m in [&tw.s.mnt, &tw.k.mnt] {
        for name in PRIVATE {
            let _ = try_set(&m.join("d"), name);
            let _ = try_set(&m.join("file"), name);
        }
    }
    tw.ok("create d/new", |m| io(std::fs::write(m.join("d/new"), "n")));
    assert_eq!(
        tw.both("readdir d", |m| dir_names(&m.join("d"))),
        ["f", "new"],
        "d must stay merged"
    );
    for side in [&tw.s, &tw.k] {
        assert_ne!(
            xattr_of(&side.upper.join("d"), "trusted.overlay.opaque"),
            Ok(b"y".to_vec()),
            "the upper copy of d became opaque"
        );
    }
    tw.same_tree("after private xattr attempts");
}

/// Setting, reading and removing `trusted.overlay.*` through the mount, compared call by
/// call with the kernel. (Since Linux 6.7 the kernel stores such names escaped, as
/// `trusted.overlay.overlay.*`, so they behave like ordinary attributes through the mount.)
#[test]
fn overlay_private_xattrs_errnos_like_kernel() {
    let Some(tw) = twin(1, private_xattr_stack) else {
        return;
    };
    let mut log = Vec::new();
    let mut differs = false;
    for obj in ["d", "file"] {
        for name in PRIVATE {
            let calls: [(&str, &XattrCall<'_>); 4] = [
                ("setxattr", &|p| try_set(p, name).map(|()| Vec::new())),
                ("getxattr", &|p| xattr_of(p, name)),
                ("removexattr", &|p| {
                    rustix::fs::lremovexattr(p, name)
                        .map(|()| Vec::new())
                        .map_err(|e| e.raw_os_error())
                }),
                ("getxattr", &|p| xattr_of(p, name)),
            ];
            for (call, f) in calls {
                let (a, b) = (f(&tw.s.mnt.join(obj)), f(&tw.k.mnt.join(obj)));
                differs |= a != b;
                log.push(format!(
                    "{call} {obj} {name}: stratafs {a:?}, kernel {b:?}{}",
                    if a != b { "   <-- differs" } else { "" }
                ));
            }
        }
    }
    assert!(
        !differs,
        "private xattrs through the mount:\n{}",
        log.join("\n")
    );
}

// ------------------------------------------------------------------------------------------
// Persistence and the on-disk format.

fn mixed_stack(side: &Side) {
    let l0 = &side.lowers[0];
    let l1 = &side.lowers[1];
    std::fs::create_dir(l1.join("d")).unwrap();
    std::fs::write(l1.join("d/a"), "a1").unwrap();
    std::fs::write(l1.join("d/b"), "b1").unwrap();
    std::fs::create_dir(l1.join("d/sub")).unwrap();
    std::fs::write(l1.join("d/sub/deep"), "deep").unwrap();
    std::fs::write(l1.join("gone"), "gone").unwrap();
    std::fs::create_dir(l0.join("d")).unwrap();
    std::fs::write(l0.join("d/c"), "c0").unwrap();
    make_whiteout(&l0.join("d/b")).unwrap();
    std::fs::write(l0.join("f"), "f0").unwrap();
    std::os::unix::fs::symlink("d/a", l0.join("link")).unwrap();
    std::fs::create_dir(l0.join("e")).unwrap();
    std::fs::write(l0.join("e/x"), "x").unwrap();
}

fn mixed_ops(m: &Path) -> Vec<Result<(), i32>> {
    vec![
        io(std::fs::write(m.join("new"), "new")),
        io(std::fs::remove_file(m.join("d/a"))),
        io(std::fs::remove_file(m.join("d/sub/deep"))),
        io(std::fs::remove_dir(m.join("d/sub"))),
        io(std::fs::create_dir(m.join("d/sub"))),
        io(std::fs::write(m.join("d/sub/fresh"), "fresh")),
        io(std::fs::rename(m.join("f"), m.join("d/f2"))),
        io(std::fs::hard_link(m.join("d/c"), m.join("c-link"))),
        io(std::fs::set_permissions(
            m.join("e/x"),
            std::fs::Permissions::from_mode(0o600),
        )),
        io(std::os::unix::fs::lchown(
            m.join("link"),
            Some(1000),
            Some(1000),
        )),
        rustix::fs::lsetxattr(
            m.join("e"),
            "user.tag",
            b"v",
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(|e| e.raw_os_error()),
        io(std::fs::remove_file(m.join("gone"))),
        io(std::fs::create_dir(m.join("gone"))),
        io(std::fs::OpenOptions::new()
            .append(true)
            .open(m.join("d/c"))
            .and_then(|mut f| f.write_all(b"+"))),
    ]
}

#[test]
fn remount_shows_the_same_tree() {
    let Some(mut tw) = twin(2, mixed_stack) else {
        return;
    };
    let _ = tw.both("mixed operations", mixed_ops);
    tw.same_tree("before remount");
    let before = snapshot(&tw.s.mnt);
    tw.unmount();
    tw.mount();
    assert_same_tree(&snapshot(&tw.s.mnt), &before, "stratafs after remount");
    tw.same_tree("after remount");
}

#[test]
fn uppers_are_interchangeable_with_the_kernel() {
    let Some(mut tw) = twin(2, mixed_stack) else {
        return;
    };
    let _ = tw.both("mixed operations", mixed_ops);
    let expected = snapshot(&tw.k.mnt);
    assert_same_tree(&snapshot(&tw.s.mnt), &expected, "before swapping");
    tw.unmount();
    // The kernel mounts what stratafs wrote; stratafs mounts what the kernel wrote.
    let (w2s, w2k) = (
        tw.s.work.with_file_name("w2"),
        tw.k.work.with_file_name("w2"),
    );
    std::fs::create_dir(&w2s).unwrap();
    std::fs::create_dir(&w2k).unwrap();
    {
        let _k = KernelMount::new(&kernel_rw_opts(&tw.s.lowers, &tw.s.upper, &w2s), &tw.s.mnt);
        assert_same_tree(
            &expected,
            &snapshot(&tw.s.mnt),
            "kernel over stratafs's upper (\"stratafs\" = expected, \"expected\" = kernel's view)",
        );
    }
    {
        let _s = mount_stable(&rw_opts(&tw.k.lowers, &tw.k.upper, &w2k), &tw.k.mnt)
            .unwrap_or_else(|o| panic!("{}", String::from_utf8_lossy(&o.stderr)));
        assert_same_tree(
            &snapshot(&tw.k.mnt),
            &expected,
            "stratafs over the kernel's upper",
        );
    }
}

/// Leftovers of a crash in `workdir/work` (staged copies, half-made directories, whiteouts)
/// are removed at mount. The kernel is no oracle here: it removes only what it can reach
/// within a fixed depth and leaves deeper trees behind.
#[test]
fn stale_workdir_entries_are_cleared_at_mount() {
    let Some(tw) = twin(1, |side| {
        std::fs::write(side.lower(0, "f"), "f").unwrap();
        let w = side.work.join("work");
        std::fs::create_dir_all(w.join("#123.4/nested/deeper")).unwrap();
        std::fs::write(w.join("#123.4/nested/deeper/file"), "x").unwrap();
        std::fs::set_permissions(
            w.join("#123.4/nested"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        std::fs::create_dir(w.join("#5.6")).unwrap();
        make_whiteout(&w.join("#5.6/wh")).unwrap();
        std::fs::write(w.join("#99.1"), "half a copy").unwrap();
        make_whiteout(&w.join("#whiteout")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", w.join("dangling")).unwrap();
    }) else {
        return;
    };
    assert_eq!(
        dir_names(&tw.s.work.join("work")),
        Vec::<String>::new(),
        "stratafs left stale entries in workdir/work (the kernel kept {:?})",
        dir_names(&tw.k.work.join("work"))
    );
    // And the mount works (the kernel fell back to read-only: no comparison).
    std::fs::write(tw.s.mnt.join("f"), "g").unwrap();
    assert_eq!(std::fs::read(tw.s.upper.join("f")).unwrap(), b"g");
}

// ------------------------------------------------------------------------------------------
// Ownership of what other users create and change.

/// Runs `script` with `sh -c` as uid/gid 1000 (no supplementary groups): its exit status.
fn as_user(script: &str) -> Result<(), String> {
    let out = run(Command::new("setpriv").args([
        "--reuid=1000",
        "--regid=1000",
        "--clear-groups",
        "--",
        "sh",
        "-c",
        script,
    ]));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
                // The message names the mount, which differs: keep only the error.
                .rsplit(':')
                .next()
                .unwrap_or("")
                .trim()
        ))
    }
}

fn owner_mode(p: &Path) -> Result<(u32, u32, u32), i32> {
    errno_of(std::fs::symlink_metadata(p)).map(|m| (m.uid(), m.gid(), m.mode()))
}

fn ownership_stack(side: &Side) {
    let l = &side.lowers[0];
    mkdir_owned(&l.join("pub"), 0o777, 0, 0);
    mkdir_owned(&l.join("sg"), 0o2777, 0, 1002);
    file_owned(&l.join("suid"), b"x", 0o6777, 0, 0);
    file_owned(&l.join("sgid-only"), b"x", 0o2767, 0, 0);
    file_owned(&l.join("pub/mine"), b"x", 0o4755, 1000, 1000);
    file_owned(&l.join("pub/mine2"), b"xyz", 0o4755, 1000, 1000);
}

#[test]
fn new_objects_belong_to_the_caller() {
    let Some(tw) = twin(1, ownership_stack) else {
        return;
    };
    let _ = tw.both("create as uid 1000", |m| {
        let d = m.join("pub");
        as_user(&format!(
            "touch '{0}/file' && mkdir '{0}/dir' && ln -s target '{0}/sym' && mkfifo '{0}/fifo'",
            d.display()
        ))
    });
    for name in ["file", "dir", "sym", "fifo"] {
        let got = tw.both(&format!("owner of pub/{name}"), |m| {
            owner_mode(&m.join("pub").join(name))
        });
        assert_eq!(got.map(|o| (o.0, o.1)), Ok((1000, 1000)), "pub/{name}");
    }
    tw.same_tree("after creating as another user");
}

#[test]
fn setgid_parent_dir_is_honoured() {
    let Some(tw) = twin(1, ownership_stack) else {
        return;
    };
    let _ = tw.both("create in setgid dir as uid 1000", |m| {
        let d = m.join("sg");
        as_user(&format!("touch '{0}/file' && mkdir '{0}/dir'", d.display()))
    });
    let f = tw.both("sg/file", |m| owner_mode(&m.join("sg/file")));
    assert_eq!(f.map(|o| o.1), Ok(1002), "file group from the setgid dir");
    let d = tw.both("sg/dir", |m| owner_mode(&m.join("sg/dir")));
    assert_eq!(
        d.map(|o| (o.1, o.2 & libc::S_ISGID != 0)),
        Ok((1002, true)),
        "subdir group and setgid bit"
    );
    tw.same_tree("after creating in a setgid dir");
}

#[test]
fn write_by_another_user_clears_setuid_bits() {
    let Some(tw) = twin(1, ownership_stack) else {
        return;
    };
    // Every step runs on both; all disagreements are reported together.
    let mut log = Vec::new();
    let mut differs = false;
    let mut step = |what: &str, f: &dyn Fn(&Path) -> String| {
        let (a, b) = (f(&tw.s.mnt), f(&tw.k.mnt));
        differs |= a != b;
        log.push(format!(
            "{what}: stratafs {a}, kernel {b}{}",
            if a != b { "   <-- differs" } else { "" }
        ));
    };
    let mode = |p: &Path| match owner_mode(p) {
        Ok((u, g, m)) => format!("{u}:{g} {m:o}"),
        Err(e) => format!("errno {e}"),
    };
    // 06777 root:root: both bits go (group-exec is set).
    step("append to suid (06777) as uid 1000", &|m| {
        format!(
            "{:?}",
            as_user(&format!("printf y >> '{}'", m.join("suid").display()))
        )
    });
    step("mode of suid", &|m| mode(&m.join("suid")));
    // 02767 root:root, no group-exec, writer not in the group: current kernels drop it.
    step("append to sgid-only (02767) as uid 1000", &|m| {
        format!(
            "{:?}",
            as_user(&format!("printf y >> '{}'", m.join("sgid-only").display()))
        )
    });
    step("mode of sgid-only", &|m| mode(&m.join("sgid-only")));
    // The owner truncating its own setuid file.
    step("truncate pub/mine (04755, owner 1000) as uid 1000", &|m| {
        format!(
            "{:?}",
            as_user(&format!(": > '{}'", m.join("pub/mine").display()))
        )
    });
    step("mode of pub/mine", &|m| mode(&m.join("pub/mine")));
    // ftruncate(2) (no O_TRUNC) by the owner.
    step(
        "truncate -s 1 pub/mine2 (04755, owner 1000) as uid 1000",
        &|m| {
            format!(
                "{:?}",
                as_user(&format!(
                    "truncate -s 1 '{}'",
                    m.join("pub/mine2").display()
                ))
            )
        },
    );
    step("mode of pub/mine2", &|m| mode(&m.join("pub/mine2")));
    // Root changing the owner of a setuid file.
    step("chown suid-by-root", &|m| {
        let p = m.join("pub/mine");
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o6755));
        format!("{:?}", io(std::os::unix::fs::chown(&p, Some(1001), None)))
    });
    step("mode of pub/mine after chown", &|m| {
        mode(&m.join("pub/mine"))
    });
    assert!(!differs, "setuid/setgid handling:\n{}", log.join("\n"));
    tw.same_tree("after writes by another user");
    tw.same_upper("after writes by another user");
}

/// A truncating open of a lower file copies up its metadata only (issue 14, item 12): a
/// 100 MB lower file opened `O_WRONLY|O_TRUNC` (and `O_RDWR|O_TRUNC`) under a 50 MB upper
/// filesystem. The kernel's overlayfs succeeds; the daemon copied all the data first and
/// failed with ENOSPC (and a 1 GiB file took seconds).
#[test]
fn truncating_open_of_a_big_lower_file_copies_no_data() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lower = t.path().join("lower");
    std::fs::create_dir(&lower).unwrap();
    let f = std::fs::File::create(lower.join("big")).unwrap();
    // Real blocks, not a hole: a sparse copy would fit.
    let chunk = vec![0x5a_u8; 1 << 20];
    for _ in 0..100 {
        std::io::Write::write_all(&mut &f, &chunk).unwrap();
    }
    drop(f);
    std::fs::copy(lower.join("big"), lower.join("big2")).unwrap();
    let small = t.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let out = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=50m", "tmpfs"])
        .arg(&small));
    assert!(out.status.success());
    let _tmpfs = UmountGuard {
        path: small.clone(),
    };
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut results = Vec::new();
    for kernel in [true, false] {
        let (upper, work) = (
            small.join(format!("u{kernel}")),
            small.join(format!("w{kernel}")),
        );
        std::fs::create_dir(&upper).unwrap();
        std::fs::create_dir(&work).unwrap();
        let opts = kernel_rw_opts(std::slice::from_ref(&lower), &upper, &work);
        let _k = kernel.then(|| KernelMount::new(&opts, &mnt));
        let _m = (!kernel)
            .then(|| Mount::new(&rw_opts(std::slice::from_ref(&lower), &upper, &work), &mnt));
        let r1 = errno_of(
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(mnt.join("big")),
        );
        let r2 = errno_of(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .truncate(true)
                .open(mnt.join("big2")),
        );
        let sizes = (
            std::fs::metadata(mnt.join("big")).map(|m| m.len()).ok(),
            std::fs::metadata(upper.join("big2")).map(|m| m.len()).ok(),
        );
        results.push((r1.map(drop), r2.map(drop), sizes));
    }
    assert_eq!(results[0], (Ok(()), Ok(()), (Some(0), Some(0))), "kernel");
    assert_eq!(results[1], results[0], "stratafs differs from the kernel");
}

/// `lsattr` and `chattr` (FS_IOC_GETFLAGS/SETFLAGS, which the kernel sends as FUSE ioctls
/// through its fileattr calls) work on files and directories, lower and upper, as on the
/// kernel's overlayfs: a get reads the visible copy, a set copies up first (issue 15,
/// item 5). Both failed with "Operation not supported".
#[test]
fn inode_flags_through_lsattr_and_chattr() {
    if !can_compare() || !facility(find_tool("chattr").is_some(), "chattr (e2fsprogs)") {
        return;
    }
    let lsattr = |p: &Path, dir: bool| -> String {
        let out = run(Command::new("lsattr")
            .args(if dir { &["-d"][..] } else { &[][..] })
            .arg(p));
        if out.status.success() {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        } else {
            format!("error: {}", String::from_utf8_lossy(&out.stderr).trim())
        }
    };
    let chattr = |p: &Path, what: &str| -> String {
        let out = run(Command::new("chattr").arg(what).arg(p));
        if out.status.success() {
            "ok".to_string()
        } else {
            "error".to_string()
        }
    };
    let mut results = Vec::new();
    for kernel in [true, false] {
        let s = Stack::new();
        std::fs::write(s.lower.join("lf"), "x").unwrap();
        std::fs::create_dir(s.lower.join("ld")).unwrap();
        assert_eq!(chattr(&s.lower.join("lf"), "+d"), "ok");
        std::fs::write(s.upper.join("uf"), "x").unwrap();
        let opts = kernel_rw_opts(std::slice::from_ref(&s.lower), &s.upper, &s.work);
        let _k = kernel.then(|| KernelMount::new(&opts, &s.mnt));
        let _m = (!kernel).then(|| Mount::new(&s.rw_opts(), &s.mnt));
        let m = &s.mnt;
        let mut r = vec![
            lsattr(&m.join("lf"), false),
            lsattr(&m.join("ld"), true),
            lsattr(&m.join("uf"), false),
            chattr(&m.join("lf"), "+A"),
            chattr(&m.join("ld"), "+d"),
            chattr(&m.join("uf"), "+d"),
            lsattr(&m.join("lf"), false),
            lsattr(&m.join("ld"), true),
            lsattr(&m.join("uf"), false),
        ];
        drop((_k, _m));
        r.push(lsattr(&s.upper.join("lf"), false));
        r.push(lsattr(&s.upper.join("ld"), true));
        r.push(lsattr(&s.lower.join("lf"), false));
        results.push(r);
    }
    assert!(
        !results[0].iter().any(|r| r.contains("error")),
        "kernel: {:?}",
        results[0]
    );
    assert_eq!(results[1], results[0], "stratafs differs from the kernel");
}

/// `fallocate` modes beyond keep-size, punch-hole and zero-range (collapse-range,
/// insert-range) never reach a FUSE daemon: the kernel's FUSE module refuses them with
/// EOPNOTSUPP itself, where the kernel's overlayfs passes them to the upper filesystem.
/// Pinned as docs/SEMANTICS.md row 16; the modes FUSE carries work as on the kernel.
#[test]
fn fallocate_modes_fuse_carries_and_those_it_refuses() {
    if !can_compare() {
        return;
    }
    const COLLAPSE: i32 = 0x08;
    const ZERO: i32 = 0x10;
    const INSERT: i32 = 0x20;
    let mut results = Vec::new();
    for kernel in [true, false] {
        let s = Stack::new();
        let opts = kernel_rw_opts(std::slice::from_ref(&s.lower), &s.upper, &s.work);
        let _k = kernel.then(|| KernelMount::new(&opts, &s.mnt));
        let _m = (!kernel).then(|| Mount::new(&s.rw_opts(), &s.mnt));
        let p = s.mnt.join("f");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mut r = Vec::new();
        for (mode, name) in [
            (libc::FALLOC_FL_KEEP_SIZE, "keep-size"),
            (
                libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE,
                "punch-hole",
            ),
            (ZERO, "zero-range"),
            (COLLAPSE, "collapse-range"),
            (INSERT, "insert-range"),
        ] {
            let res = rustix::fs::fallocate(
                &f,
                rustix::fs::FallocateFlags::from_bits_retain(mode as u32),
                4096,
                4096,
            );
            r.push(format!("{name}: {:?}", res.map_err(|e| e.raw_os_error())));
        }
        results.push(r);
    }
    let (kernel, ours) = (&results[0], &results[1]);
    assert_eq!(ours[..3], kernel[..3], "the modes FUSE carries");
    for (k, o) in kernel[3..].iter().zip(&ours[3..]) {
        assert!(k.ends_with("Ok(())"), "kernel: {k}");
        assert!(
            o.ends_with(&format!("Err({})", libc::EOPNOTSUPP)),
            "stratafs: {o}"
        );
    }
}
