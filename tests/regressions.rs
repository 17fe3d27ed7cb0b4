//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Bugs found by external suites and by hand, each pinned by the test that showed it.

mod common;

use std::fs;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use common::*;

struct Rw {
    _dir: tempfile::TempDir,
    mount: Option<Mount>,
    mnt: PathBuf,
}

fn rw() -> Rw {
    rw_with(|_| {})
}

impl Drop for Rw {
    fn drop(&mut self) {
        self.mount.take();
    }
}

/// pjdfstest unlink::open_file_not_freed: fstat sends no handle, and the name is gone.
#[test]
fn unlinked_open_file_keeps_its_attributes() {
    if !can_mount() {
        return;
    }
    let t = rw();
    let p = t.mnt.join("f");
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    fs::remove_file(&p).unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    f.write_all(b"hello").unwrap();
    f.rewind().unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello");
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o600);
    f.set_len(2).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 2);
}

/// pjdfstest link::remove_link: the node's remembered name was the one unlinked.
#[test]
fn hard_link_outlives_the_name_last_looked_up() {
    if !can_mount() {
        return;
    }
    let t = rw();
    let (f, g) = (t.mnt.join("f"), t.mnt.join("g"));
    fs::write(&f, "data").unwrap();
    fs::hard_link(&f, &g).unwrap();
    // Make the kernel look both names up again, g first, so the node was last seen as f.
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    assert_eq!(fs::metadata(&g).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(&f).unwrap().nlink(), 2);
    fs::remove_file(&f).unwrap();
    let md = fs::metadata(&g).unwrap();
    assert_eq!(md.nlink(), 1);
    assert_eq!(fs::read_to_string(&g).unwrap(), "data");
    // And a rename of the other name keeps the node reachable.
    fs::hard_link(&g, &f).unwrap();
    fs::metadata(&g).unwrap();
    fs::rename(&f, t.mnt.join("h")).unwrap();
    fs::remove_file(&g).unwrap();
    assert_eq!(fs::metadata(t.mnt.join("h")).unwrap().nlink(), 1);
}

/// pjdfstest *::enametoolong_component: a NAME_MAX name has no room for the `.wh.` prefix,
/// which must not make its creation fail.
#[test]
fn name_max_names_can_be_created() {
    if !can_mount() {
        return;
    }
    let t = rw();
    let long = "n".repeat(255);
    fs::write(t.mnt.join(&long), "x").unwrap();
    fs::create_dir(t.mnt.join(format!("d{}", &long[1..]))).unwrap();
    fs::remove_file(t.mnt.join(&long)).unwrap();
    let too_long = "n".repeat(256);
    let e = fs::write(t.mnt.join(too_long), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The kernel keeps directory listings between opens (FOPEN_CACHE_DIR): every change made
/// through the mount must still show in the next listing.
#[test]
fn cached_listings_follow_changes() {
    if !can_mount() {
        return;
    }
    let t = rw();
    let (a, b) = (t.mnt.join("a"), t.mnt.join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    assert!(names(&a).is_empty());
    fs::write(a.join("f"), "x").unwrap();
    assert_eq!(names(&a), ["f"]);
    fs::rename(a.join("f"), b.join("g")).unwrap();
    assert!(names(&a).is_empty());
    assert_eq!(names(&b), ["g"]);
    fs::hard_link(b.join("g"), a.join("h")).unwrap();
    fs::create_dir(a.join("sub")).unwrap();
    assert_eq!(names(&a), ["h", "sub"]);
    fs::remove_dir(a.join("sub")).unwrap();
    fs::remove_file(a.join("h")).unwrap();
    assert!(names(&a).is_empty());
}

/// stress-ng symlink: a symlink removed while the kernel still held its node, and a new
/// one given the same inode number by the upper filesystem, showed the old target.
#[test]
fn reused_inode_numbers_are_new_objects() {
    if !can_mount() {
        return;
    }
    let t = rw();
    let mut held = Vec::new();
    for i in 0..200 {
        let link = t.mnt.join(format!("l{}", i % 2));
        let target = format!("target-{i}");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(
            fs::read_link(&link).unwrap().to_str(),
            Some(target.as_str())
        );
        // Keep the kernel's node alive past the unlink.
        held.push(
            rustix::fs::open(
                &link,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW,
                rustix::fs::Mode::empty(),
            )
            .unwrap(),
        );
        fs::remove_file(&link).unwrap();
        let f = t.mnt.join(format!("f{}", i % 3));
        fs::write(&f, format!("{i}")).unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), format!("{i}"));
        fs::remove_file(&f).unwrap();
    }
}

/// Passthrough: every open of an upper file shares one backing file, so a handle opened
/// read-only before a writer sees what the writer wrote, and mixed read-only / read-write
/// opens of one node never get EBUSY/EINVAL from the kernel.
#[test]
fn passthrough_opens_share_one_backing_file() {
    if !can_mount() {
        return;
    }
    let t = rw();
    let p = t.mnt.join("f");
    fs::write(&p, "0123456789").unwrap();
    let mut reader = fs::File::open(&p).unwrap();
    let mut writer = fs::OpenOptions::new().write(true).open(&p).unwrap();
    writer.seek(std::io::SeekFrom::Start(2)).unwrap();
    writer.write_all(b"ab").unwrap();
    let mut s = String::new();
    reader.read_to_string(&mut s).unwrap();
    assert_eq!(s, "01ab456789");
    let mut appender = fs::OpenOptions::new().append(true).open(&p).unwrap();
    appender.write_all(b"!").unwrap();
    drop((reader, writer, appender));
    assert_eq!(fs::read_to_string(&p).unwrap(), "01ab456789!");
    assert_eq!(fs::metadata(&p).unwrap().len(), 11);
}

/// A mount whose lower layer `setup` fills first.
fn rw_with(setup: impl FnOnce(&std::path::Path)) -> Rw {
    let dir = tempfile::tempdir().unwrap();
    for d in ["l", "u", "w", "m"] {
        fs::create_dir(dir.path().join(d)).unwrap();
    }
    setup(&dir.path().join("l"));
    let p = |n: &str| dir.path().join(n).display().to_string();
    let opts = format!("lowerdir={},upperdir={},workdir={}", p("l"), p("u"), p("w"));
    let mnt = dir.path().join("m");
    let mount = Some(Mount::new(&opts, &mnt));
    Rw {
        _dir: dir,
        mount,
        mnt,
    }
}

fn drop_kernel_caches() {
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

/// Listings are shared between handles and cached by the kernel (FOPEN_CACHE_DIR): every
/// change through the mount shows in the next listing, from any handle.
#[test]
fn shared_listing_follows_every_change() {
    if !can_mount() {
        return;
    }
    let t = rw_with(|l| {
        fs::create_dir(l.join("d")).unwrap();
        fs::write(l.join("d/a"), "a").unwrap();
        fs::write(l.join("d/b"), "b").unwrap();
    });
    let d = t.mnt.join("d");
    // A handle kept open across the changes, as a long-running reader would.
    let pinned = fs::File::open(&d).unwrap();
    assert_eq!(dir_names(&d), ["a", "b"]);
    assert_eq!(dir_names(&d), ["a", "b"]);
    fs::write(d.join("c"), "c").unwrap();
    assert_eq!(dir_names(&d), ["a", "b", "c"]);
    fs::remove_file(d.join("a")).unwrap();
    assert_eq!(dir_names(&d), ["b", "c"]);
    fs::rename(d.join("b"), d.join("e")).unwrap();
    assert_eq!(dir_names(&d), ["c", "e"]);
    fs::rename(d.join("c"), t.mnt.join("moved")).unwrap();
    assert_eq!(dir_names(&d), ["e"]);
    assert!(dir_names(&t.mnt).contains(&"moved".to_string()));
    fs::create_dir(d.join("sub")).unwrap();
    fs::hard_link(d.join("e"), d.join("e2")).unwrap();
    assert_eq!(dir_names(&d), ["e", "e2", "sub"]);
    drop(pinned);
}

/// A copy-up reorders the merge without the kernel seeing a change to the directory: a
/// listing taken before it must not answer readdirplus with the lower file's attributes.
#[test]
fn shared_listing_is_retaken_after_a_copy_up() {
    if !can_mount() {
        return;
    }
    let t = rw_with(|l| {
        fs::create_dir(l.join("d")).unwrap();
        for n in ["f", "g", "h"] {
            fs::write(l.join("d").join(n), "data").unwrap();
            fs::set_permissions(l.join("d").join(n), fs::Permissions::from_mode(0o644)).unwrap();
        }
    });
    let d = t.mnt.join("d");
    // Keeps the directory's node (and so its cached listing) alive across cache drops.
    let _pinned = fs::File::open(&d).unwrap();
    let modes = |d: &std::path::Path| -> Vec<(String, u32, u64)> {
        let mut v: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    m.mode() & 0o7777,
                    m.len(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(modes(&d)[1], ("g".into(), 0o644, 4));
    fs::set_permissions(d.join("g"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(d.join("h"))
        .unwrap()
        .write_all(b"more")
        .unwrap();
    drop_kernel_caches();
    let now = modes(&d);
    assert_eq!(now[1], ("g".into(), 0o600, 4));
    assert_eq!(now[2], ("h".into(), 0o644, 8));
}

/// Missing names are cached by the kernel as negative entries; every way a name can appear
/// through the mount must replace them.
#[test]
fn negative_entries_give_way_to_new_names() {
    if !can_mount() {
        return;
    }
    let t = rw_with(|l| {
        fs::write(l.join("src"), "s").unwrap();
    });
    let m = &t.mnt;
    let names = [
        "created",
        "made_dir",
        "renamed",
        "linked",
        "symlinked",
        "fifo",
    ];
    for n in names {
        for _ in 0..2 {
            assert_eq!(
                errno_of(fs::symlink_metadata(m.join(n))).err(),
                Some(libc::ENOENT),
                "{n}"
            );
        }
    }
    fs::write(m.join("created"), "c").unwrap();
    fs::create_dir(m.join("made_dir")).unwrap();
    fs::copy(m.join("src"), m.join("tmp")).unwrap();
    fs::rename(m.join("tmp"), m.join("renamed")).unwrap();
    fs::hard_link(m.join("src"), m.join("linked")).unwrap();
    std::os::unix::fs::symlink("src", m.join("symlinked")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        m.join("fifo").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    for n in names {
        assert!(fs::symlink_metadata(m.join(n)).is_ok(), "{n} not visible");
    }
    // And a name removed again is missing again.
    fs::remove_file(m.join("created")).unwrap();
    assert_eq!(
        errno_of(fs::symlink_metadata(m.join("created"))).err(),
        Some(libc::ENOENT)
    );
}

/// An fd of `path` reopened through `/proc/self/fd`: the kernel sends OPEN for the inode it
/// holds, with no lookup of the name.
fn reopen(fd: &impl std::os::fd::AsRawFd) -> std::io::Result<Vec<u8>> {
    fs::read(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The kernel still holds a copied-up file whose name was unlinked (an `O_PATH` fd, or a
/// lookup racing with the unlink): the daemon used to go by the name, where a whiteout now
/// sits. A stat reported a character device (the kernel then marks the inode bad: EIO) and
/// an open opened the whiteout (ENXIO). Under load this was `eight_clients_of_mixed_load`'s
/// "read shared/s2/l12: Input/output error". Then (issue 14 item 10) such requests got
/// ENOENT, which an `O_CREAT` open racing an unlink passed on. Now, as on the kernel's
/// overlayfs, the object lives on while the kernel holds it: it can be stat'ed (no links
/// left), reopened, read and written, and never reaches a new object that took the name.
#[test]
fn unlinked_copied_up_file_lives_on_not_a_whiteout() {
    if !can_mount() {
        return;
    }
    let t = rw_with(|l| {
        fs::write(l.join("f"), "lower").unwrap();
        fs::write(l.join("g"), "lower").unwrap();
    });
    let (f, g) = (t.mnt.join("f"), t.mnt.join("g"));
    for p in [&f, &g] {
        fs::OpenOptions::new()
            .append(true)
            .open(p)
            .unwrap()
            .write_all(b"+up")
            .unwrap();
    }
    let held = rustix::fs::open(&f, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
    assert_eq!(reopen(&held).unwrap(), b"lower+up");
    fs::remove_file(&f).unwrap();
    let st = rustix::fs::fstat(&held).unwrap();
    assert_eq!(
        (st.st_mode & libc::S_IFMT, st.st_nlink),
        (libc::S_IFREG, 0),
        "fstat of the unlinked file"
    );
    assert_eq!(reopen(&held).unwrap(), b"lower+up");
    assert_eq!(
        errno_of(fs::metadata(&f)).err(),
        Some(libc::ENOENT),
        "the name is gone"
    );
    // A new file under the old name is another object: the old fd never opens it.
    let held_g = rustix::fs::open(&g, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
    fs::remove_file(&g).unwrap();
    fs::write(&g, "new").unwrap();
    assert_eq!(reopen(&held_g).unwrap(), b"lower+up");
    fs::OpenOptions::new()
        .write(true)
        .open(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&held_g)
        ))
        .unwrap()
        .write_all(b"X")
        .unwrap();
    assert_eq!(reopen(&held_g).unwrap(), b"Xower+up");
    assert_eq!(fs::read(&g).unwrap(), b"new");
}

/// Issue 14 item 11: a lower file replaced behind the mount, and its inode number reused
/// by another file (ext4 hands a freed number out again at once). The node the kernel
/// holds for `victim` was taken for the new file that got its number (as a hard link is),
/// and `cat m/victim` printed the intruder's secret. Objects are now told apart by their
/// birth time as well: the old node dies, `victim` shows what the name holds now, and no
/// name shows another file's data.
#[test]
fn reused_inode_number_never_serves_another_file() {
    if !can_mount() {
        return;
    }
    let Some(base) = ReusingDir::new() else {
        facility(
            false,
            "a filesystem that reuses freed inode numbers (ext4: a loop-mounted image, or \
             the target or temporary directory)",
        );
        return;
    };
    let dir = base.path().join("t");
    for d in ["l", "u", "w", "m"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let (l, m) = (dir.join("l"), dir.join("m"));
    let _mount = Mount::new(
        &rw_opts(std::slice::from_ref(&l), &dir.join("u"), &dir.join("w")),
        &m,
    );
    // A victim the kernel holds, replaced behind the mount, and new files until one gets
    // its freed number (where the allocator has older holes to fill first, with another
    // victim).
    let mut reused = None;
    for k in 0..8 {
        let victim = format!("victim{k}");
        fs::write(l.join(&victim), "victim's data").unwrap();
        assert_eq!(
            fs::read_to_string(m.join(&victim)).unwrap(),
            "victim's data"
        );
        let old = fs::metadata(l.join(&victim)).unwrap().ino();
        fs::remove_file(l.join(&victim)).unwrap();
        for i in 0..128 {
            let p = l.join(format!("intruder{k}-{i}"));
            fs::write(&p, "intruder's secret").unwrap();
            if fs::metadata(&p).unwrap().ino() == old {
                reused = Some((victim.clone(), format!("intruder{k}-{i}")));
                break;
            }
        }
        fs::write(l.join(&victim), "victim's new data").unwrap();
        if reused.is_some() {
            break;
        }
    }
    if !facility(
        reused.is_some(),
        "an inode number reused in the lower layer's directory",
    ) {
        return;
    }
    let (victim, intruder) = reused.unwrap();
    let check = |when: &str| {
        let v = fs::read_to_string(m.join(&victim)).unwrap();
        assert_ne!(
            v, "intruder's secret",
            "{when}: victim shows the intruder's data"
        );
        assert_eq!(
            fs::read_to_string(m.join(&intruder)).unwrap(),
            "intruder's secret",
            "{when}"
        );
        let v = fs::read_to_string(m.join(&victim)).unwrap();
        assert_ne!(
            v, "intruder's secret",
            "{when}: victim shows the intruder's data"
        );
        let (vi, ii) = (
            fs::metadata(m.join(&victim)).unwrap().ino(),
            fs::metadata(m.join(&intruder)).unwrap().ino(),
        );
        assert_ne!(vi, ii, "{when}: two files with one inode number");
    };
    // Through the dentry the kernel kept for victim, then after a listing (readdirplus
    // looks every entry up), in both orders.
    check("before a listing");
    assert!(names(&m).contains(&intruder));
    for e in fs::read_dir(&m).unwrap() {
        fs::symlink_metadata(e.unwrap().path()).unwrap();
    }
    check("after a listing");
}

/// A directory on a filesystem that hands a freed inode number to the next new file (ext4
/// does; tmpfs and btrfs never do): a loop-mounted ext4 image, or else the target or the
/// temporary directory if theirs does. Unmounted and removed when dropped.
struct ReusingDir {
    _loop: Option<UmountGuard>,
    dir: tempfile::TempDir,
}

impl ReusingDir {
    fn new() -> Option<ReusingDir> {
        ReusingDir::ext4_image().or_else(|| {
            [
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
                std::env::temp_dir(),
            ]
            .into_iter()
            .filter_map(|base| tempfile::tempdir_in(base).ok())
            .find(|dir| reuses_numbers(dir.path()))
            .map(|dir| ReusingDir { _loop: None, dir })
        })
    }

    /// A fresh ext4 filesystem (no older holes for the allocator to fill first).
    fn ext4_image() -> Option<ReusingDir> {
        let dir = tempfile::tempdir().ok()?;
        let (img, mnt) = (dir.path().join("ext4.img"), dir.path().join("ext4"));
        fs::create_dir(&mnt).ok()?;
        fs::File::create(&img).ok()?.set_len(64 << 20).ok()?;
        let made = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .status()
            .ok()?
            .success()
            && std::process::Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&mnt)
                .status()
                .ok()?
                .success();
        if !made {
            return None;
        }
        let guard = UmountGuard { path: mnt.clone() };
        let inner = tempfile::tempdir_in(&mnt).ok()?;
        if !reuses_numbers(inner.path()) {
            return None;
        }
        // The image's directory goes after the mount (fields drop in order).
        std::mem::forget(inner);
        Some(ReusingDir {
            _loop: Some(guard),
            dir,
        })
    }

    fn path(&self) -> PathBuf {
        match &self._loop {
            Some(g) => g.path.clone(),
            None => self.dir.path().to_path_buf(),
        }
    }
}

/// True when a file made in `dir` after one is removed gets the removed one's number.
fn reuses_numbers(dir: &std::path::Path) -> bool {
    let probe = dir.join("probe");
    let Ok(()) = fs::write(&probe, "x") else {
        return false;
    };
    let Ok(old) = fs::metadata(&probe).map(|m| m.ino()) else {
        return false;
    };
    let _ = fs::remove_file(&probe);
    let mut reused = false;
    for i in 0..64 {
        let p = dir.join(format!("probe{i}"));
        if fs::write(&p, "x").is_err() {
            break;
        }
        if fs::metadata(&p).map(|m| m.ino()).ok() == Some(old) {
            reused = true;
            break;
        }
    }
    for i in 0..64 {
        let _ = fs::remove_file(dir.join(format!("probe{i}")));
    }
    reused
}
