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
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Two lower layers, an upper and a work directory, the stratafs mount point and one for the
/// kernel's overlayfs.
struct Layers {
    dir: tempfile::TempDir,
    l1: PathBuf,
    l2: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    kmnt: PathBuf,
}

impl Layers {
    fn new() -> Layers {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| {
            let d = dir.path().join(n);
            fs::create_dir(&d).unwrap();
            d
        };
        Layers {
            l1: p("l1"),
            l2: p("l2"),
            upper: p("upper"),
            work: p("work"),
            mnt: p("mnt"),
            kmnt: p("kmnt"),
            dir,
        }
    }

    fn mount(&self) -> Mount {
        Mount::new(
            &rw_opts(&[self.l1.clone(), self.l2.clone()], &self.upper, &self.work),
            &self.mnt,
        )
    }

    /// The kernel's overlayfs on the same layers, read-only (the upper as the top lower
    /// layer: its whiteouts and opaque directories count the same).
    fn kernel(&self) -> KernelMount {
        let opts = format!(
            "lowerdir={}:{}:{}",
            self.upper.display(),
            self.l1.display(),
            self.l2.display()
        );
        KernelMount::new(&opts, &self.kmnt)
    }

    /// The stratafs tree equals the kernel's freshly mounted on the same layers.
    fn assert_as_the_kernel(&self, what: &str) {
        let k = self.kernel();
        assert_same_tree(&snapshot(&self.mnt), &snapshot(&self.kmnt), what);
        drop(k);
    }
}

fn write(p: &Path, s: &str) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, s).unwrap();
}

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

fn errno(p: &Path) -> Option<i32> {
    fs::symlink_metadata(p).err().and_then(|e| e.raw_os_error())
}

/// Reads every file and lists every directory: the kernel and the daemon cache it all.
fn walk(p: &Path) {
    for e in fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        let md = fs::symlink_metadata(&path).unwrap();
        if md.is_dir() {
            walk(&path);
        } else if md.is_file() {
            let _ = fs::read(&path);
        }
    }
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
    let m = s.mount();
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
    let m = s.mount();
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
    let m = s.mount();
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

/// The uid and gid of user `name`.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

/// What a file made by the race holds: its own path first, so that a read through a path
/// shows whether it reached that path's object or another one.
fn marker(rel: &str, gen: u64) -> String {
    format!("{rel}#{gen}\n")
}

/// The names the race plays with, relative to the root.
fn race_names() -> Vec<String> {
    let mut v = Vec::new();
    for d in ["", "d0/", "d1/", "d0/s/"] {
        for f in 0..4 {
            v.push(format!("{d}f{f}"));
        }
    }
    v
}

#[test]
fn a_race_of_changes_load_and_refreshes_ends_as_the_kernel_shows_the_layers() {
    if !can_compare() {
        return;
    }
    let s = Layers::new();
    for (i, n) in race_names().iter().enumerate() {
        let layer = if i % 2 == 0 { &s.l1 } else { &s.l2 };
        write(&layer.join(n), &marker(n, 0));
    }
    let m = s.mount();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(4);

    // Changes behind the mount, in every layer.
    let changer = {
        let (l1, l2, upper) = (s.l1.clone(), s.l2.clone(), s.upper.clone());
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut rng = Rng::new(20);
            let names = race_names();
            let mut gen = 1;
            while !stop.load(Ordering::Relaxed) {
                let n = rng.pick(&names);
                let layer = match rng.below(3) {
                    0 => &l1,
                    1 => &l2,
                    _ => &upper,
                };
                let p = layer.join(&n);
                match rng.below(6) {
                    0 | 1 => {
                        // A new object under the name (renamed over it).
                        let _ = fs::remove_dir_all(&p);
                        if let Some(d) = p.parent() {
                            let _ = fs::create_dir_all(d);
                        }
                        let tmp = layer.join(format!(".tmp{gen}"));
                        if fs::write(&tmp, marker(&n, gen)).is_ok() {
                            let _ = fs::rename(&tmp, &p);
                        }
                    }
                    2 => {
                        let _ = fs::remove_file(&p);
                    }
                    3 if layer == &upper => {
                        let _ = fs::remove_file(&p);
                        if let Some(d) = p.parent() {
                            let _ = fs::create_dir_all(d);
                        }
                        let _ = make_whiteout(&p);
                    }
                    4 => {
                        // A whole directory goes, or comes back opaque in the upper layer.
                        let d = layer.join(rng.pick(&["d0", "d1", "d0/s"]));
                        if layer == &upper && rng.pct(50) {
                            let _ = fs::create_dir_all(&d);
                            let _ = make_opaque(&d);
                        } else {
                            let _ = fs::remove_dir_all(&d);
                        }
                    }
                    _ => {
                        if let Some(d) = p.parent() {
                            let _ = fs::create_dir_all(d);
                        }
                        let _ = fs::write(&p, marker(&n, gen));
                    }
                }
                gen += 1;
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    };
    // Load through the mount: every read reaches the object its path names, or fails
    // with an error a vanished object gives.
    let loaders: Vec<_> = (0..2)
        .map(|t| {
            let mnt = s.mnt.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut rng = Rng::new(100 + t);
                let names = race_names();
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    let n = rng.pick(&names);
                    let p = mnt.join(&n);
                    let r = if rng.pct(30) {
                        fs::read_dir(p.parent().unwrap()).map(|rd| {
                            rd.count();
                            Vec::new()
                        })
                    } else {
                        fs::read(&p)
                    };
                    match r {
                        Ok(content) => {
                            let want = format!("{n}#");
                            let text = String::from_utf8_lossy(&content);
                            assert!(
                                content.is_empty()
                                    || text.starts_with(&want)
                                    || want.starts_with(&*text),
                                "{n} read another object's data: {text:?}"
                            );
                            reads += 1;
                        }
                        Err(e) => {
                            let code = e.raw_os_error().unwrap_or(0);
                            assert!(
                                [libc::ENOENT, libc::ESTALE, libc::ENOTDIR, libc::EISDIR]
                                    .contains(&code),
                                "{n}: {e}"
                            );
                        }
                    }
                }
                reads
            })
        })
        .collect();
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

/// Removes the whiteouts under `upper` whose directory merges with no directory of `lowers`
/// (topmost first): its merge chain, the layers holding a directory there down to an
/// opaque one, is the upper alone.
fn drop_idle_whiteouts(upper: &Path, lowers: &[&Path]) {
    use std::os::unix::fs::FileTypeExt;
    fn walk(rel: &Path, chain: &[PathBuf]) {
        let dir = chain[0].join(rel);
        let merged = chain.len() > 1;
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            let r = rel.join(e.file_name());
            if ft.is_dir() {
                // The child's chain: the layers of this one holding a directory there,
                // until an opaque one or anything else under the name.
                let mut sub = Vec::new();
                for l in chain {
                    let p = l.join(&r);
                    match fs::symlink_metadata(&p) {
                        Ok(m) if m.is_dir() => {
                            sub.push(l.clone());
                            if xattr(&p, "trusted.overlay.opaque").is_some() {
                                break;
                            }
                        }
                        Ok(_) => break,
                        Err(_) => {}
                    }
                }
                walk(&r, &sub);
            } else if ft.is_char_device() && !merged {
                fs::remove_file(e.path()).unwrap();
            }
        }
    }
    let mut chain = vec![upper.to_path_buf()];
    chain.extend(lowers.iter().map(|l| l.to_path_buf()));
    walk(Path::new(""), &chain);
}
