//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Owner mapping through a real mount: `uidmapping=`/`gidmapping=` (stored ids shown mapped,
//! written back mapped, unmapped ids shown as 65534) and the `squash_*` options.

mod common;

use std::fs;
use std::os::unix::fs::{chown, lchown, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

struct Setup {
    _dir: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

/// A lower layer with files owned by host ids inside and outside the mapped ranges.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    for d in ["l", "u", "w", "m"] {
        fs::create_dir(p(d)).unwrap();
    }
    let l = p("l");
    fs::create_dir(l.join("d")).unwrap();
    for (name, uid, gid) in [
        ("d/root", 100_000, 200_000),
        ("d/user", 101_000, 201_000),
        ("d/outside", 0, 0),
    ] {
        fs::write(l.join(name), name).unwrap();
        lchown(l.join(name), Some(uid), Some(gid)).unwrap();
    }
    std::os::unix::fs::symlink("root", l.join("d/link")).unwrap();
    lchown(l.join("d/link"), Some(101_000), Some(201_000)).unwrap();
    chown(l.join("d"), Some(100_000), Some(200_000)).unwrap();
    Setup {
        lower: l,
        upper: p("u"),
        work: p("w"),
        mnt: p("m"),
        _dir: dir,
    }
}

fn owner(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

// As containers/storage writes them: stored (container) ids first, shown ids second.
const MAPS: &str = "uidmapping=100000:0:65536,gidmapping=200000:0:65536";

#[test]
fn mapped_ids_both_ways() {
    if !can_mount() {
        return;
    }
    let s = setup();
    let opts = format!(
        "{},{MAPS}",
        rw_opts(std::slice::from_ref(&s.lower), &s.upper, &s.work)
    );
    let m = Mount::new(&opts, &s.mnt);
    let d = m.mountpoint.join("d");
    assert_eq!(owner(&d), (0, 0));
    assert_eq!(owner(&d.join("root")), (0, 0));
    assert_eq!(owner(&d.join("user")), (1000, 1000));
    assert_eq!(owner(&d.join("link")), (1000, 1000));
    assert_eq!(owner(&d.join("outside")), (65534, 65534));
    // Listings (readdirplus) show the same owners as lookups.
    for e in fs::read_dir(&d).unwrap() {
        let e = e.unwrap();
        let via_dir = e.metadata().unwrap();
        assert_eq!(
            (via_dir.uid(), via_dir.gid()),
            owner(&e.path()),
            "{:?}",
            e.file_name()
        );
    }

    // A new object is owned by the caller (root, shown as 0) and stored as its host id.
    fs::write(d.join("new"), "x").unwrap();
    fs::create_dir(d.join("newdir")).unwrap();
    assert_eq!(owner(&d.join("new")), (0, 0));
    assert_eq!(owner(&s.upper.join("d/new")), (100_000, 200_000));
    assert_eq!(owner(&s.upper.join("d/newdir")), (100_000, 200_000));

    // chown names container ids; the layer stores host ids (also across a copy-up).
    chown(d.join("user"), Some(5), Some(6)).unwrap();
    assert_eq!(owner(&d.join("user")), (5, 6));
    assert_eq!(owner(&s.upper.join("d/user")), (100_005, 200_006));
    lchown(d.join("link"), Some(7), None).unwrap();
    assert_eq!(owner(&s.upper.join("d/link")), (100_007, 201_000));
    // The copy-up itself keeps the stored owner: the parent directory still shows root.
    assert_eq!(owner(&s.upper.join("d")), (100_000, 200_000));

    // An id outside every range cannot be given.
    let e = chown(d.join("new"), Some(70_000), None).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    assert_eq!(owner(&d.join("new")), (0, 0));
    drop(m);

    // The kernel's overlayfs, which maps nothing, sees the host ids that were written.
    if can_compare() {
        let k = KernelMount::new(
            &kernel_rw_opts(std::slice::from_ref(&s.lower), &s.upper, &s.work),
            &s.mnt,
        );
        assert_eq!(owner(&k.mountpoint.join("d/user")), (100_005, 200_006));
        assert_eq!(owner(&k.mountpoint.join("d/new")), (100_000, 200_000));
    }
}

#[test]
fn squash_options_replace_shown_owners() {
    if !can_mount() {
        return;
    }
    let s = setup();
    let lowers = std::slice::from_ref(&s.lower);
    for (extra, want_root, want_user) in [
        ("squash_to_root", (0, 0), (0, 0)),
        ("squash_to_uid=7,squash_to_gid=8", (7, 8), (7, 8)),
        ("squash_to_uid=7", (7, 200_000), (7, 201_000)),
        // Mappings and squashing together: squash wins for what is shown.
        (
            &format!("{MAPS},squash_to_gid=3") as &str,
            (0, 3),
            (1000, 3),
        ),
    ] {
        let m = Mount::new(&format!("lowerdir={},{extra}", s.lower.display()), &s.mnt);
        assert_eq!(owner(&m.mountpoint.join("d/root")), want_root, "{extra}");
        assert_eq!(owner(&m.mountpoint.join("d/user")), want_user, "{extra}");
        drop(m);
    }
    // Squashing shows, it does not store: a file written under squash_to_root keeps the
    // caller's own stored owner.
    let m = Mount::new(
        &format!("{},squash_to_uid=9", rw_opts(lowers, &s.upper, &s.work)),
        &s.mnt,
    );
    fs::write(m.mountpoint.join("f"), "x").unwrap();
    assert_eq!(owner(&m.mountpoint.join("f")).0, 9);
    assert_eq!(owner(&s.upper.join("f")), (0, 0));
}

fn set_override(p: &Path, v: &str) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    rustix::fs::lsetxattr(
        c.as_c_str(),
        "user.containers.override_stat",
        v.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

fn get_override(p: &Path) -> Option<String> {
    let mut buf = vec![0u8; 256];
    rustix::fs::lgetxattr(p, "user.containers.override_stat", &mut buf)
        .ok()
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// `xattr_permissions=2` (podman's `force_mask`): owner and mode come from
/// `user.containers.override_stat`, changes are written there, the layer files keep their own.
#[test]
fn xattr_permissions_keep_owner_and_mode_in_xattrs() {
    if !can_mount() {
        return;
    }
    let s = setup();
    let l = &s.lower;
    fs::create_dir(l.join("o")).unwrap();
    fs::write(l.join("o/f"), "f").unwrap();
    fs::set_permissions(l.join("o/f"), fs::Permissions::from_mode(0o755)).unwrap();
    set_override(&l.join("o/f"), "1000:1001:0640");
    set_override(&l.join("o"), "1000:1001:0750");
    fs::write(l.join("o/plain"), "p").unwrap();
    let lowers = std::slice::from_ref(&s.lower);
    for (opts, detected) in [
        (
            format!("{},xattr_permissions=2", rw_opts(lowers, &s.upper, &s.work)),
            false,
        ),
        // No option, but a layer root carries an override: detected, as fuse-overlayfs does.
        (rw_opts(lowers, &s.upper, &s.work), true),
    ] {
        fs::remove_dir_all(&s.upper).unwrap();
        fs::create_dir(&s.upper).unwrap();
        if detected {
            set_override(&s.lower, "0:0:0755");
        }
        let m = Mount::new(&opts, &s.mnt);
        let o = m.mountpoint.join("o");
        assert_eq!(owner(&o.join("f")), (1000, 1001), "{opts}");
        assert_eq!(mode(&o.join("f")), 0o640);
        assert_eq!((owner(&o), mode(&o)), ((1000, 1001), 0o750));
        // Without an override the file's own owner and mode show.
        assert_eq!(owner(&o.join("plain")), (0, 0));
        // The override is not an xattr of the merged view.
        let names = rustix::fs::llistxattr(o.join("f").as_path(), &mut [0u8; 1024][..]).unwrap();
        assert_eq!(names, 0, "override listed");

        fs::set_permissions(o.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
        chown(o.join("f"), Some(5), None).unwrap();
        assert_eq!(
            (owner(&o.join("f")), mode(&o.join("f"))),
            ((5, 1001), 0o600)
        );
        let up = s.upper.join("o/f");
        assert_eq!(get_override(&up).as_deref(), Some("5:1001:0600"));
        // The copy keeps its own owner and mode; the parent's override was copied up too.
        assert_eq!((owner(&up), mode(&up)), ((0, 0), 0o755));
        assert_eq!(
            get_override(&s.upper.join("o")).as_deref(),
            Some("1000:1001:0750")
        );

        // A new file records its creator and mode in the override.
        fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o604)
            .open(o.join("new"))
            .unwrap();
        assert_eq!(
            get_override(&s.upper.join("o/new")).as_deref(),
            Some("0:0:0604")
        );
        assert_eq!(mode(&o.join("new")), 0o604);
        drop(m);
    }
}

/// Special files containers/storage stored as empty regular files under `force_mask` (their
/// TYPE in the override) show as what they were in the image, and keep their TYPE through a
/// copy-up.
#[test]
fn override_type_shows_special_files() {
    use std::os::unix::fs::FileTypeExt;
    if !can_mount() {
        return;
    }
    let s = setup();
    let l = &s.lower;
    fs::create_dir(l.join("dev")).unwrap();
    for (name, v) in [
        ("null", "0:0:0666:char-1-3"),
        ("sda", "0:6:0660:block-8-0"),
        ("fifo", "0:0:0644:pipe"),
        ("sock", "0:0:0755:socket"),
        ("file", "0:0:0644:file"),
    ] {
        fs::write(l.join("dev").join(name), "").unwrap();
        set_override(&l.join("dev").join(name), v);
    }
    // A TYPE on a file with data is not believed: the data would be lost.
    fs::write(l.join("dev/data"), "data").unwrap();
    set_override(&l.join("dev/data"), "0:0:0644:char-1-5");
    let opts = format!(
        "{},xattr_permissions=2",
        rw_opts(std::slice::from_ref(&s.lower), &s.upper, &s.work)
    );
    let m = Mount::new(&opts, &s.mnt);
    let d = m.mountpoint.join("dev");
    let md = |n: &str| fs::symlink_metadata(d.join(n)).unwrap();
    assert!(md("null").file_type().is_char_device());
    assert_eq!(md("null").rdev(), libc_makedev(1, 3));
    assert_eq!(md("null").mode() & 0o7777, 0o666);
    assert!(md("sda").file_type().is_block_device());
    assert_eq!(md("sda").rdev(), libc_makedev(8, 0));
    assert_eq!(md("sda").gid(), 6);
    assert!(md("fifo").file_type().is_fifo());
    assert!(md("sock").file_type().is_socket());
    assert!(md("file").file_type().is_file());
    assert!(md("data").file_type().is_file());
    // Listings agree with stat.
    let types: Vec<(String, bool)> = fs::read_dir(&d)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            (n, e.file_type().unwrap().is_char_device())
        })
        .filter(|(n, _)| n == "null")
        .collect();
    assert_eq!(types, [("null".to_string(), true)]);

    fs::set_permissions(d.join("null"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        get_override(&s.upper.join("dev/null")).as_deref(),
        Some("0:0:0600:char-1-3")
    );
    assert!(md("null").file_type().is_char_device());
    assert_eq!(md("null").mode() & 0o7777, 0o600);
    drop(m);
    let m = Mount::new(&opts, &s.mnt);
    let got = fs::symlink_metadata(m.mountpoint.join("dev/null")).unwrap();
    assert!(got.file_type().is_char_device() && got.rdev() == libc_makedev(1, 3));
}

/// The kernel's encoding of a device number (as `st_rdev` shows it).
fn libc_makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfffff000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffffff00) << 12)
        | (minor & 0xff)
}
