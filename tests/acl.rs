//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! POSIX ACLs (issue 6): enforced by the kernel from the ACL xattrs the daemon serves,
//! inherited from default ACLs (the umask applies only without one), kept by copy-up, and
//! changed through the mount. Every case is run on kernel overlayfs too: modes, ACL values
//! and who may read what must come out the same. `noacl` turns them off.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

const ACCESS: &str = "system.posix_acl_access";
const DEFAULT: &str = "system.posix_acl_default";
const UNDEF: u32 = u32::MAX;
/// The user the ACLs name; it exists nowhere but in them.
const READER: u32 = 4321;

/// An ACL xattr value: (tag, perm, id) entries, sorted as the kernel wants them.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// `user::rwx, user:READER:r-x, group::r-x, mask::rwx, other::---`.
fn reader_acl() -> Vec<u8> {
    acl(&[
        (0x01, 7, UNDEF),
        (0x02, 5, READER),
        (0x04, 5, UNDEF),
        (0x10, 7, UNDEF),
        (0x20, 0, UNDEF),
    ])
}

fn set(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} {}: {e}", path.display()));
}

fn get(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; 1024];
    rustix::fs::lgetxattr(path, name, &mut buf[..])
        .map(|n| buf[..n].to_vec())
        .map_err(|e| e.raw_os_error())
}

/// The lower layer: `inh` with a default ACL (and a file to delete and re-create), `acl/f`
/// readable by READER through its ACL, `acl/g` without one, `plain/` with neither.
fn lower(l: &Path) {
    for d in ["inh", "acl", "plain", "sgid"] {
        fs::create_dir(l.join(d)).unwrap();
        fs::set_permissions(l.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
    set(&l.join("inh"), DEFAULT, &reader_acl());
    fs::write(l.join("inh/gone"), "old").unwrap();
    for f in ["acl/f", "acl/g", "plain/h"] {
        fs::write(l.join(f), "secret").unwrap();
        fs::set_permissions(l.join(f), fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Owned by READER, setgid, in a group READER is not in: READER setting an ACL on it
    // drops the setgid bit, as a chmod by READER would.
    fs::write(l.join("sgid/f"), "x").unwrap();
    std::os::unix::fs::chown(l.join("sgid/f"), Some(READER), Some(0)).unwrap();
    fs::set_permissions(l.join("sgid/f"), fs::Permissions::from_mode(0o2770)).unwrap();
    set(
        &l.join("acl/f"),
        ACCESS,
        &acl(&[
            (0x01, 6, UNDEF),
            (0x02, 4, READER),
            (0x04, 0, UNDEF),
            (0x10, 4, UNDEF),
            (0x20, 0, UNDEF),
        ]),
    );
}

/// The same changes on either mount, through a shell whose umask is 077 (or 027 where the
/// directory has no default ACL): what the umask does, and what a default ACL overrides.
fn changes(m: &Path) {
    let script = r#"set -e
        cd "$1"
        umask 027; : > plain/new; mkdir plain/newdir
        umask 077; : > inh/new; mkdir inh/newdir; : > inh/newdir/deeper
        rm inh/gone; : > inh/gone
        chmod 0640 acl/f
    "#;
    let out = run(Command::new("sh").arg("-c").arg(script).arg("sh").arg(m));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    set(&m.join("plain/h"), ACCESS, &reader_acl());
    // A default ACL given to a directory that creations have been made in, then taken
    // away: the creations after each see it (the daemon reads it once per cached
    // directory, so a change through the mount must make it read again).
    set(&m.join("plain"), DEFAULT, &reader_acl());
    let out = run(Command::new("sh")
        .arg("-c")
        .arg(r#"set -e; umask 077; : > "$1/plain/after-default"; mkdir "$1/plain/d""#)
        .arg("sh")
        .arg(m));
    assert!(out.status.success(), "{out:?}");
    let rm = run(Command::new("setfattr")
        .args(["-x", DEFAULT])
        .arg(m.join("plain")));
    assert!(rm.status.success(), "{rm:?}");
    let out = run(Command::new("sh")
        .arg("-c")
        .arg(r#"set -e; umask 077; : > "$1/plain/after-removal""#)
        .arg("sh")
        .arg(m));
    assert!(out.status.success(), "{out:?}");
    let hex: String = reader_acl().iter().map(|b| format!("{b:02x}")).collect();
    let out = run(Command::new("setpriv")
        .args([
            &format!("--reuid={READER}"),
            &format!("--regid={READER}"),
            "--clear-groups",
            "setfattr",
            "-n",
            ACCESS,
            "-v",
            &format!("0x{hex}"),
        ])
        .arg(m.join("sgid/f")));
    assert!(
        out.status.success(),
        "setfattr as READER: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether READER can read `path` (a child with that uid and no groups).
fn reader_can_read(path: &Path) -> bool {
    Command::new("setpriv")
        .args([
            &format!("--reuid={READER}"),
            &format!("--regid={READER}"),
            "--clear-groups",
            "cat",
        ])
        .arg(path)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Mode, ACLs and READER's access of each path that the cases touch.
fn observe(m: &Path) -> Vec<String> {
    [
        "inh",
        "inh/new",
        "inh/newdir",
        "inh/newdir/deeper",
        "inh/gone",
        "plain/new",
        "plain/newdir",
        "plain/h",
        "plain",
        "plain/after-default",
        "plain/d",
        "plain/after-removal",
        "acl/f",
        "acl/g",
        "sgid/f",
    ]
    .iter()
    .map(|p| {
        let path = m.join(p);
        let mode = fs::symlink_metadata(&path)
            .map(|md| format!("{:o}", md.permissions().mode() & 0o7777))
            .unwrap_or_else(|e| e.to_string());
        let readable = path.is_dir() || reader_can_read(&path);
        format!(
            "{p}: mode {mode}, access {:?}, default {:?}, READER reads: {readable}",
            get(&path, ACCESS),
            get(&path, DEFAULT)
        )
    })
    .collect()
}

/// What the cases give on kernel overlayfs, and its stack (for its upper layer).
fn kernel_result() -> (Stack, Vec<String>) {
    let theirs = Stack::new();
    lower(&theirs.lower);
    let got = {
        let _k = KernelMount::new(
            &kernel_rw_opts(
                std::slice::from_ref(&theirs.lower),
                &theirs.upper,
                &theirs.work,
            ),
            &theirs.mnt,
        );
        changes(&theirs.mnt);
        observe(&theirs.mnt)
    };
    (theirs, got)
}

/// The cases on stratafs with `extra` options, checked against the kernel's result.
fn compare(ours: &Stack, extra: &str) -> Stack {
    let (theirs, want) = kernel_result();
    let m = Mount::new(&format!("{}{extra}", ours.rw_opts()), &ours.mnt);
    changes(&m.mountpoint);
    let got = observe(&m.mountpoint);
    assert_eq!(got, want, "options: {extra}");
    // The cases did what they are about (so agreeing is not agreeing on nothing).
    let line = |p: &str| {
        got.iter()
            .find(|l| l.starts_with(&format!("{p}:")))
            .unwrap()
    };
    assert!(line("acl/f").ends_with("READER reads: true"), "{got:#?}");
    assert!(line("acl/g").ends_with("READER reads: false"), "{got:#?}");
    assert!(line("plain/h").ends_with("READER reads: true"), "{got:#?}");
    assert!(line("plain/new").contains("mode 640"), "{got:#?}");
    assert!(line("inh/gone").contains("READER reads: true"), "{got:#?}");
    assert!(!line("inh/newdir").contains("default Err"), "{got:#?}");
    assert!(line("sgid/f").contains("mode 770,"), "{got:#?}");
    theirs
}

#[test]
fn acls_match_kernel_overlayfs() {
    if !can_compare() {
        return;
    }
    let ours = Stack::new();
    lower(&ours.lower);
    let theirs = compare(&ours, "");
    // Both uppers hold the same ACLs: kernel overlayfs can mount ours.
    assert_eq!(
        get(&ours.upper.join("inh/new"), ACCESS),
        get(&theirs.upper.join("inh/new"), ACCESS)
    );
}

/// Every object of `dir` (and below) gets its owner and mode recorded in
/// `user.containers.override_stat` and its own mode forced to 0700, as containers/storage
/// unpacks layers with `force_mask` (a chmod rewrites an ACL's entries too).
fn force_mask(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let md = fs::symlink_metadata(&p).unwrap();
        let v = format!("{}:{}:0{:o}", md.uid(), md.gid(), md.mode() & 0o7777);
        set(&p, "user.containers.override_stat", v.as_bytes());
        if md.is_dir() {
            force_mask(&p);
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
    }
}

/// Owners and modes in override xattrs (`xattr_permissions=2`, podman's `force_mask`): the
/// ACL entries that stand for the permission bits follow the override, setting an ACL sets
/// the override's bits, and new objects under a default ACL record the derived bits.
#[test]
fn acls_follow_owner_overrides() {
    if !can_compare() {
        return;
    }
    let ours = Stack::new();
    lower(&ours.lower);
    force_mask(&ours.lower);
    compare(&ours, ",xattr_permissions=2");
}

#[test]
fn noacl_turns_acls_off() {
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    lower(&s.lower);
    let m = Mount::new(&format!("{},noacl", s.rw_opts()), &s.mnt);
    let f = m.mountpoint.join("acl/f");
    assert_eq!(get(&f, ACCESS), Err(libc::EOPNOTSUPP));
    assert!(!reader_can_read(&f));
    let e = rustix::fs::lsetxattr(
        m.mountpoint.join("plain/h"),
        ACCESS,
        &reader_acl(),
        rustix::fs::XattrFlags::empty(),
    );
    assert_eq!(e.map_err(|e| e.raw_os_error()), Err(libc::EOPNOTSUPP));
}
