//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! `stratafs refresh`: layers changed behind a live mount (a lower and the upper directory)
//! show after a refresh of the whole mount or of the paths changed, and the tree then equals
//! the kernel's overlayfs freshly mounted on the same layers; open files keep their object
//! and a node whose object vanished answers `ENOENT`; a race of changes, load and refreshes
//! ends in the same comparison. docs/SEMANTICS.md (row 19) has the rules.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::behind::*;
use common::*;

fn refresh(mnt: &Path, paths: &[&str]) {
    let out = run(Command::new(stratafs_bin())
        .arg("refresh")
        .arg(mnt)
        .args(paths));
    assert!(
        out.status.success(),
        "stratafs refresh {paths:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn out_of_band_changes_show_after_a_refresh() {
    if !can_compare() {
        return;
    }
    let s = Layers::new();
    write(&s.l2.join("d/b"), "b in l2\n");
    write(&s.l2.join("d/sub/s"), "s\n");
    write(&s.l2.join("f2"), "f2\n");
    write(&s.l2.join("o/hidden"), "hidden soon\n");
    write(&s.l2.join("gone"), "gone soon\n");
    write(&s.l1.join("a"), "a\n");
    write(&s.l1.join("d/c"), "c in l1\n");
    write(&s.l1.join("t"), "a file, a directory soon\n");
    write(&s.l1.join("open"), "the old object\n");
    write(&s.upper.join("u"), "u\n");
    let m = s.mount("");
    walk(&s.mnt);
    // Names looked up as missing: the kernel caches them so.
    for n in ["new", "d/new_upper", "newdir", "later"] {
        assert_eq!(errno(&s.mnt.join(n)), Some(libc::ENOENT));
    }
    let mut held = fs::File::open(s.mnt.join("open")).unwrap();

    // Behind the mount: in the lower layers...
    write(&s.l1.join("new"), "new in l1\n");
    write(&s.l1.join("newdir/x"), "x\n");
    write(&s.l1.join("a"), "a, changed and longer\n");
    fs::remove_file(s.l1.join("d/c")).unwrap();
    fs::remove_file(s.l2.join("gone")).unwrap();
    write(&s.l2.join("d/sub/s2"), "s2\n");
    fs::remove_file(s.l1.join("t")).unwrap();
    write(&s.l1.join("t/inner"), "now a directory\n");
    fs::remove_file(s.l1.join("open")).unwrap();
    write(&s.l1.join("open"), "a new object\n");
    // ... and in the upper one: a new file, a whiteout, an opaque directory.
    write(&s.upper.join("d/new_upper"), "new in upper\n");
    make_whiteout(&s.upper.join("f2")).unwrap();
    write(&s.upper.join("o/only"), "only this\n");
    make_opaque(&s.upper.join("o")).unwrap();

    // Before: what the kernel cached as missing stays missing.
    assert_eq!(errno(&s.mnt.join("new")), Some(libc::ENOENT));
    assert_eq!(errno(&s.mnt.join("d/new_upper")), Some(libc::ENOENT));

    refresh(&s.mnt, &[]);
    assert_eq!(
        fs::read_to_string(s.mnt.join("new")).unwrap(),
        "new in l1\n"
    );
    assert_eq!(
        fs::read_to_string(s.mnt.join("d/new_upper")).unwrap(),
        "new in upper\n"
    );
    assert_eq!(errno(&s.mnt.join("f2")), Some(libc::ENOENT));
    assert_eq!(
        fs::read_to_string(s.mnt.join("a")).unwrap(),
        "a, changed and longer\n"
    );
    // An open file keeps the object it opened; the name shows the new one.
    let mut old = String::new();
    held.read_to_string(&mut old).unwrap();
    assert_eq!(old, "the old object\n");
    assert_eq!(
        fs::read_to_string(s.mnt.join("open")).unwrap(),
        "a new object\n"
    );
    s.assert_as_the_kernel("after refreshing the whole mount");

    // A refresh of some paths: what they name shows, what was not named stays as cached.
    assert_eq!(errno(&s.mnt.join("later")), Some(libc::ENOENT));
    assert_eq!(errno(&s.mnt.join("d/sub/later")), Some(libc::ENOENT));
    write(&s.l2.join("later"), "later\n");
    write(&s.l2.join("d/sub/later"), "later in d/sub\n");
    fs::remove_file(s.l2.join("d/b")).unwrap();
    refresh(&s.mnt, &["d"]);
    assert_eq!(
        fs::read_to_string(s.mnt.join("d/sub/later")).unwrap(),
        "later in d/sub\n"
    );
    assert_eq!(errno(&s.mnt.join("d/b")), Some(libc::ENOENT));
    assert_eq!(
        errno(&s.mnt.join("later")),
        Some(libc::ENOENT),
        "not refreshed"
    );
    refresh(&s.mnt, &["later"]);
    assert_eq!(fs::read_to_string(s.mnt.join("later")).unwrap(), "later\n");
    s.assert_as_the_kernel("after refreshing paths");
    m.unmount();
}

/// A directory open (a working directory, a held fd) whose object is removed behind the
/// mount: after a refresh its node answers `ENOENT` (or `ESTALE`: its name holds another
/// directory now) by name, and never reaches another object.
#[test]
fn a_node_whose_object_vanished_answers_enoent() {
    if !can_mount() {
        return;
    }
    let s = Layers::new();
    write(&s.l1.join("dir/f"), "f\n");
    let m = s.mount("");
    let dir = fs::File::open(s.mnt.join("dir")).unwrap();
    assert_eq!(fs::read_to_string(s.mnt.join("dir/f")).unwrap(), "f\n");
    fs::remove_dir_all(s.l1.join("dir")).unwrap();
    // Another directory under the same name, with a file of the same name.
    write(&s.l1.join("dir/f"), "another directory's f\n");
    refresh(&s.mnt, &["dir"]);
    let via_old = rustix::fs::statat(&dir, "f", rustix::fs::AtFlags::SYMLINK_NOFOLLOW);
    assert!(
        matches!(
            via_old.err(),
            Some(rustix::io::Errno::NOENT | rustix::io::Errno::STALE)
        ),
        "the old directory's node reached the new object: {via_old:?}"
    );
    let via_fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir));
    let listed: Vec<String> = fs::read_dir(&via_fd)
        .into_iter()
        .flatten()
        .take(100)
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(listed.is_empty(), "the old directory lists {listed:?}");
    assert_eq!(
        fs::read_to_string(s.mnt.join("dir/f")).unwrap(),
        "another directory's f\n"
    );
    drop(dir);
    m.unmount();
}

#[test]
fn refresh_is_for_the_owner_and_root() {
    if !can_mount() || !facility(is_root(), "root, to run a command as the tests user") {
        return;
    }
    let Some((uid, gid)) = user_ids("tests") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the tests user is missing (.ci/run creates it)"
        );
        return;
    };
    let s = Layers::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let m = s.mount("");
    let out = run(Command::new(stratafs_bin())
        .arg("refresh")
        .arg(&s.mnt)
        .uid(uid)
        .gid(gid));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    let out = run(Command::new(stratafs_bin())
        .arg("refresh")
        .arg(&s.mnt)
        .arg("/elsewhere"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not inside the mount"));
    m.unmount();
}

#[test]
fn a_race_of_changes_load_and_refreshes_ends_as_the_kernel_shows_the_layers() {
    if !can_compare() {
        return;
    }
    let s = Layers::new();
    s.seed_race();
    let m = s.mount("");
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(4);
    let changer = s.spawn_changer(&stop);
    let loaders = s.spawn_loaders(&stop);
    let mut rng = Rng::new(7);
    let mut refreshes = 0;
    while Instant::now() < deadline {
        let names = race_names();
        match rng.below(3) {
            0 => refresh(&s.mnt, &[]),
            1 => refresh(&s.mnt, &[&rng.pick(&names)]),
            _ => refresh(&s.mnt, &[rng.pick(&["d0", "d1", "d0/s"])]),
        }
        refreshes += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    changer.join().unwrap();
    let reads: usize = loaders.into_iter().map(|l| l.join().unwrap()).sum();
    assert!(refreshes > 10, "{refreshes} refreshes");
    assert!(reads > 100, "{reads} reads");
    // Whiteouts in upper directories that merge with no lower one hide nothing; the
    // kernel lists them as names it cannot look up (its readdir of a directory one layer
    // holds is that layer's). Gone, and then the two must agree.
    drop_idle_whiteouts(&s.upper, &[&s.l1, &s.l2]);
    // Quiet now: one refresh, and the tree is what the layers hold.
    refresh(&s.mnt, &[]);
    s.assert_as_the_kernel("after the race and a last refresh");
    m.unmount();
}
