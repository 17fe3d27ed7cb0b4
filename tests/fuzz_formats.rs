//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Fuzzing of the readers of on-disk formats a hostile layer controls, with proptest on
//! stable Rust, through the crate's public API:
//! - `.wh.` whiteout names and the opaque marker (`layer::format`);
//! - the overlay-private xattr namespaces and their escaping (`layer::format::XattrNames`);
//! - override_stat values `UID:GID:MODE[:TYPE]` (`overlay::perms::Override`);
//! - POSIX ACL xattr values and their id mapping (`layer::idmap`);
//! - and, through a real mount (root and `/dev/fuse`), upper files carrying random values
//!   in every xattr the daemon reads: the origin inode number, opaque and impure markers,
//!   override_stat.
//!
//! Properties: no panic (no daemon crash through the mount), and valid values round-trip.
//! Cases per property: a CI-sized default, or `STRATAFS_FUZZ_CASES=N` for long runs
//! (`STRATAFS_FUZZ_CASES=1000000 cargo test --release --test fuzz_formats`); the mount
//! property runs a thousandth of that (each case is a mount).

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use proptest::prelude::*;
use proptest::test_runner::Config;

use common::{fuzz_cases, fuzz_config};

use stratafs::config::{IdMapping, MountConfig};
use stratafs::layer::format::{self, XattrNames, XattrTarget};
use stratafs::layer::idmap::{self, IdMap};
use stratafs::overlay::perms::Override;

// ---- override_stat ----

/// Pieces of override_stat values: numbers, colons, type words, NULs, signs, junk.
const OVERRIDE_PIECES: &[&str] = &[
    "0",
    "1",
    "7",
    "8",
    "0755",
    "100644",
    "4294967295",
    "4294967296",
    "+1",
    "-1",
    ":",
    ":",
    ":",
    "char-",
    "block-",
    "pipe",
    "socket",
    "file",
    "-",
    "1-3",
    "\0",
    " ",
    "é",
    "0x1",
    "99999999999999999999",
];

/// Values near the grammar, and raw bytes.
fn override_value() -> impl Strategy<Value = Vec<u8>> {
    let piece = proptest::sample::select(OVERRIDE_PIECES);
    prop_oneof![
        proptest::collection::vec(piece, 0..10).prop_map(|v| v.concat().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

fn override_strategy() -> impl Strategy<Value = Override> {
    let kind = prop_oneof![
        Just(None),
        proptest::sample::select(&["file", "dir", "symlink", "pipe", "socket"][..])
            .prop_map(|k| Some(k.to_string())),
        (any::<u32>(), any::<u32>(), any::<bool>()).prop_map(|(ma, mi, c)| Some(format!(
            "{}-{ma}-{mi}",
            if c { "char" } else { "block" }
        ))),
    ];
    (any::<u32>(), any::<u32>(), 0u32..=0o7777, kind).prop_map(|(uid, gid, perm, kind)| Override {
        uid,
        gid,
        perm,
        kind,
    })
}

// ---- POSIX ACLs ----

const ACL_TAGS: [u16; 7] = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40];

fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// ACL values: well-formed ones with random tags, permissions and ids, truncated or
/// extended ones, and raw bytes.
fn acl_value() -> impl Strategy<Value = Vec<u8>> {
    let entry = (
        prop_oneof![4 => proptest::sample::select(&ACL_TAGS[..]), 1 => any::<u16>()],
        prop_oneof![4 => 0u16..8, 1 => any::<u16>()],
        any::<u32>(),
    );
    let formed = proptest::collection::vec(entry, 0..12).prop_map(|e| acl(&e));
    prop_oneof![
        4 => formed.clone(),
        1 => (formed, any::<usize>(), proptest::collection::vec(any::<u8>(), 0..9)).prop_map(
            |(mut v, cut, tail)| {
                v.truncate(cut % (v.len() + 1));
                v.extend_from_slice(&tail);
                v
            }
        ),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

/// Up to three id ranges, disjoint both as stored and as shown (so the mapping is a
/// bijection between them), built as containers/storage builds them.
fn bijective_maps() -> impl Strategy<Value = Vec<IdMapping>> {
    proptest::collection::vec((1u32..100_000, 0u32..1_000_000, 0u32..1_000_000), 1..4).prop_map(
        |raw| {
            let mut out = Vec::new();
            let (mut c_next, mut h_next) = (0u32, 0u32);
            for (len, c_gap, h_gap) in raw {
                let container = c_next.saturating_add(c_gap);
                let host = h_next.saturating_add(h_gap);
                let room = (u32::MAX - container.max(host)).saturating_add(1);
                let len = len.min(room);
                if len == 0 {
                    break;
                }
                out.push(IdMapping {
                    container,
                    host,
                    len,
                });
                c_next = container.saturating_add(len);
                h_next = host.saturating_add(len);
                if c_next == u32::MAX || h_next == u32::MAX {
                    break;
                }
            }
            out
        },
    )
}

fn idmap(uids: Vec<IdMapping>, gids: Vec<IdMapping>, squash: Option<u32>) -> IdMap {
    let mut cfg = MountConfig::new("/m".into(), vec!["/l".into()]);
    cfg.uid_mappings = uids;
    cfg.gid_mappings = gids;
    cfg.squash_to_uid = squash;
    IdMap::from_config(&cfg)
}

proptest! {
    #![proptest_config(fuzz_config(4000))]

    /// Any bytes: parse, format, special never panic; what parses is sane and survives a
    /// format/parse round trip.
    #[test]
    fn override_any_bytes(v in override_value()) {
        if let Some(o) = Override::parse(&v) {
            prop_assert!(o.perm <= 0o7777);
            let _ = o.special();
            prop_assert_eq!(Override::parse(o.format().as_bytes()), Some(o));
        }
    }

    /// Valid overrides round-trip exactly, and device types decode to their numbers.
    #[test]
    fn override_round_trip(o in override_strategy()) {
        prop_assert_eq!(Override::parse(o.format().as_bytes()), Some(o.clone()));
        // With the NUL terminator some writers add.
        let mut nul = o.format().into_bytes();
        nul.push(0);
        prop_assert_eq!(Override::parse(&nul), Some(o.clone()));
        match o.kind.as_deref() {
            Some(k) if k.starts_with("char-") || k.starts_with("block-") => {
                let k = k.to_string();
                let mut it = k.splitn(3, '-').skip(1).map(|n| n.parse::<u32>().unwrap());
                let dev = libc::makedev(it.next().unwrap(), it.next().unwrap());
                let fmt = if k.starts_with("char-") { libc::S_IFCHR } else { libc::S_IFBLK };
                prop_assert_eq!(o.special(), Some((fmt, dev)));
            }
            Some("pipe") => prop_assert_eq!(o.special(), Some((libc::S_IFIFO, 0))),
            Some("socket") => prop_assert_eq!(o.special(), Some((libc::S_IFSOCK, 0))),
            _ => prop_assert_eq!(o.special(), None),
        }
    }

    /// Whiteout names: any bytes are safe; `.wh.NAME` gives NAME back for every name that
    /// is not itself reserved.
    #[test]
    fn whiteout_names(name in proptest::collection::vec(any::<u8>(), 0..40), tail in "[a-z.]{0,6}") {
        let n = OsStr::from_bytes(&name);
        let _ = format::whiteout_target(n);
        let _ = format::is_reserved_name(n);
        let _ = format::is_private_xattr(n);
        let wh = format::whiteout_name(n);
        prop_assert!(format::is_reserved_name(&wh));
        if !name.is_empty() && !format::is_reserved_name(n) {
            prop_assert_eq!(format::whiteout_target(&wh), Some(n));
        }
        let marker_like = format!(".wh.{tail}");
        let _ = format::whiteout_target(OsStr::new(&marker_like));
        prop_assert!(!format::is_opaque_value(&name) || name == b"y");
    }

    /// Xattr names: what the mount asks for and what is stored map to each other both ways,
    /// and no private name of a layer is ever shown.
    #[test]
    fn xattr_names_both_ways(
        prefix in proptest::sample::select(&["trusted.overlay.", "user.overlay."][..]),
        head in proptest::sample::select(&[
            "", "trusted.overlay.", "user.overlay.", "trusted.overlay.overlay.",
            "user.overlay.overlay.", "user.fuseoverlayfs.", "user.containers.override_stat",
            "security.fuseoverlayfs.", "user.", "security.", "system.posix_acl_access",
        ][..]),
        tail in proptest::collection::vec(any::<u8>(), 0..12),
    ) {
        let names = XattrNames::new(prefix);
        let mut raw = head.as_bytes().to_vec();
        raw.extend_from_slice(&tail);
        let name = OsStr::from_bytes(&raw);
        // As a stored name.
        match names.to_mount(name) {
            Some(shown) => {
                prop_assert_eq!(names.to_layer(&shown), XattrTarget::Stored(name.to_os_string()));
                prop_assert!(names.copied_up(name));
            }
            None => prop_assert!(format::is_private_xattr(name)),
        }
        // As a name given through the mount.
        match names.to_layer(name) {
            XattrTarget::Stored(stored) => {
                let back = names.to_mount(&stored).map(|n| n.into_owned());
                prop_assert_eq!(back, Some(name.to_os_string()));
            }
            XattrTarget::Private => prop_assert!(format::is_private_xattr(name)),
        }
    }

    /// ACL values of any shape: mapping, mode extraction and chmod never panic, keep the
    /// value's length, and leave a value that is not an ACL alone.
    #[test]
    fn acl_any_value(
        v in acl_value(),
        uids in bijective_maps(),
        gids in bijective_maps(),
        squash in proptest::option::of(any::<u32>()),
        mode in any::<u32>(),
    ) {
        let m = idmap(uids, gids, squash);
        let shown = m.acl_to_mount(&v);
        prop_assert_eq!(shown.len(), v.len());
        if let Some(stored) = m.acl_to_disk(&v) {
            prop_assert_eq!(stored.len(), v.len());
        }
        let well_formed = v.len() >= 4 && v[..4] == [2, 0, 0, 0] && (v.len() - 4) % 8 == 0;
        if !well_formed {
            prop_assert_eq!(&shown, &v);
            prop_assert_eq!(idmap::acl_mode(&v), None);
            prop_assert_eq!(idmap::acl_with_mode(&v, mode), None);
        }
        if let Some(changed) = idmap::acl_with_mode(&v, mode) {
            prop_assert_eq!(changed.len(), v.len());
            if let Some(got) = idmap::acl_mode(&changed) {
                prop_assert_eq!(got, mode & 0o777);
            }
        }
    }

    /// Well-formed ACLs whose named ids the mapping covers come back from the mount's view
    /// to the stored value unchanged; ids it does not cover show as the overflow id and
    /// cannot be stored.
    #[test]
    fn acl_ids_round_trip(
        uids in bijective_maps(),
        gids in bijective_maps(),
        picks in proptest::collection::vec((any::<bool>(), any::<u16>(), any::<u32>(), 0u16..8), 0..10),
    ) {
        let m = idmap(uids.clone(), gids.clone(), None);
        let pick = |maps: &[IdMapping], sel: u16, off: u32| {
            let r = &maps[usize::from(sel) % maps.len()];
            r.container + off % r.len
        };
        let mut entries = vec![(0x01, 6, u32::MAX)];
        for (user, sel, off, perm) in picks {
            if user {
                entries.push((0x02, perm, pick(&uids, sel, off)));
            } else {
                entries.push((0x08, perm, pick(&gids, sel, off)));
            }
        }
        entries.push((0x04, 4, u32::MAX));
        entries.push((0x10, 5, u32::MAX));
        entries.push((0x20, 4, u32::MAX));
        let stored = acl(&entries);
        let shown = m.acl_to_mount(&stored);
        prop_assert_eq!(m.acl_to_disk(&shown), Some(stored.clone()));
        prop_assert_eq!(idmap::acl_mode(&stored), Some(0o654));
        // An id no range covers.
        let outside = uids.iter().map(|r| r.container.saturating_add(r.len)).max().unwrap();
        let covered = uids
            .iter()
            .any(|r| outside >= r.container && outside - r.container < r.len);
        if !covered {
            let lone = acl(&[(0x02, 4, outside)]);
            let shown = m.acl_to_mount(&lone);
            prop_assert_eq!(&shown[8..12], &idmap::OVERFLOW_ID.to_le_bytes()[..]);
        }
    }
}

// ---- Hostile xattrs through a real mount ----

/// Random values on every xattr the daemon reads from a layer, on upper files and
/// directories of a live mount (many groups of them per mount, a mount being the costly
/// part): listing and stating them must neither crash nor hang the daemon, every file stays
/// listed, and every file reads its own contents.
#[test]
fn hostile_xattrs_through_a_mount() {
    if !common::can_mount() {
        return;
    }
    let mounts = (fuzz_cases(3000) / 1000).max(1);
    // Each shrinking step is a mount too: a few dozen are enough to name the culprit.
    let mut runner = proptest::test_runner::TestRunner::new(Config {
        cases: mounts,
        max_shrink_iters: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let value = prop_oneof![
        override_value(),
        Just(b"y".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..24),
        any::<u64>().prop_map(|n| n.to_string().into_bytes()),
        (0u64..64).prop_map(|n| n.to_string().into_bytes()),
    ];
    let origin = value.clone();
    let group = proptest::collection::vec((origin, value.clone(), value), 1..8);
    let groups = proptest::collection::vec(group, 1..24);
    let outcome = runner.run(&(groups, any::<bool>()), |(groups, perms)| {
        hostile_mount(&groups, perms);
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

fn set(path: &std::path::Path, name: &str, value: &[u8]) {
    let _ = rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty());
}

type Hostile = (Vec<u8>, Vec<u8>, Vec<u8>);

/// A stack in memory (`/dev/shm`) where there is one: these tests write thousands of files
/// with xattrs, which a busy disk makes slow.
fn shm_stack() -> common::Stack {
    let shm = std::path::Path::new("/dev/shm");
    let Ok(dir) = tempfile::tempdir_in(shm) else {
        return common::Stack::new();
    };
    let p = |n: &str| {
        let d = dir.path().join(n);
        std::fs::create_dir(&d).unwrap();
        d
    };
    common::Stack {
        lower: p("lower"),
        upper: p("upper"),
        work: p("work"),
        mnt: p("mnt"),
        dir,
    }
}

fn hostile_mount(groups: &[Vec<Hostile>], perms: bool) {
    let s = shm_stack();
    for (g, files) in groups.iter().enumerate() {
        let (lower, upper) = (s.lower.join(format!("g{g}")), s.upper.join(format!("g{g}")));
        std::fs::create_dir_all(lower.join("d0")).unwrap();
        std::fs::write(lower.join("f0"), "lower\n").unwrap();
        std::fs::write(lower.join("d0/under"), "under\n").unwrap();
        std::fs::create_dir(&upper).unwrap();
        set(&upper, "trusted.overlay.impure", b"y");
        for (i, (origin, opaque, over)) in files.iter().enumerate() {
            let f = upper.join(format!("f{i}"));
            std::fs::write(&f, format!("g{g}f{i}\n")).unwrap();
            set(&f, "trusted.overlay.stratafs.origin-ino", origin);
            set(&f, "user.containers.override_stat", over);
            set(&f, "security.fuseoverlayfs.override_stat", over);
            let d = upper.join(format!("d{i}"));
            std::fs::create_dir(&d).unwrap();
            set(&d, "trusted.overlay.opaque", opaque);
            set(&d, "user.overlay.opaque", opaque);
            set(&d, "user.fuseoverlayfs.opaque", opaque);
            set(&d, "trusted.overlay.impure", opaque);
            set(&d, "user.containers.override_stat", over);
        }
    }
    let opts = format!(
        "{},xattr_permissions={}",
        s.rw_opts(),
        if perms { 2 } else { 0 }
    );
    let m = common::Mount::new(&opts, &s.mnt);
    for (g, files) in groups.iter().enumerate() {
        let dir = m.mountpoint.join(format!("g{g}"));
        let names = common::dir_names(&dir);
        for (i, _) in files.iter().enumerate() {
            let f = format!("f{i}");
            assert!(names.contains(&f), "g{g}: {f} not listed: {names:?}");
            assert_eq!(
                std::fs::read_to_string(dir.join(&f)).unwrap_or_else(|e| panic!("g{g}/{f}: {e}")),
                format!("g{g}f{i}\n"),
                "g{g}/{f} serves another file's contents"
            );
        }
        for n in &names {
            let p = dir.join(n);
            std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat g{g}/{n}: {e}"));
            let _ = common::dir_names(&p);
        }
        let _ = std::fs::metadata(dir.join("d0/under"));
    }
}

// ---- Pinned cases: what fuzzing found, kept as named regressions. ----

/// Found by `hostile_xattrs_through_a_mount` (minimal input: origin `"0"`): an upper file
/// whose origin xattr (`trusted.overlay.stratafs.origin-ino`, `user.overlay.` for a rootless
/// daemon) reads `0` gets node id 0, which the kernel takes for a negative entry: the file
/// vanishes from listings and `stat`/`open` fail with `ENOENT`. The kernel's overlayfs never
/// uses an inode number 0. `Overlay::origin_ino` now reads 0 (and the root's number) as no
/// origin recorded.
#[test]
fn regression_origin_ino_zero_hides_the_file() {
    if !common::can_mount() {
        return;
    }
    let s = common::Stack::new();
    std::fs::write(s.lower.join("f"), "lower\n").unwrap();
    std::fs::write(s.upper.join("f"), "upper\n").unwrap();
    set(&s.upper, "trusted.overlay.impure", b"y");
    set(
        &s.upper.join("f"),
        "trusted.overlay.stratafs.origin-ino",
        b"0",
    );
    let m = common::Mount::new(&s.rw_opts(), &s.mnt);
    assert_eq!(common::dir_names(&m.mountpoint), ["f"]);
    assert_eq!(
        std::fs::read_to_string(m.mountpoint.join("f")).unwrap(),
        "upper\n"
    );
}

/// Same family, not a failure: an origin equal to the root's node id (1) gets an id of its
/// own, and the file stays reachable.
#[test]
fn regression_origin_ino_of_the_root_stays_apart() {
    if !common::can_mount() {
        return;
    }
    let s = common::Stack::new();
    std::fs::write(s.upper.join("f"), "upper\n").unwrap();
    set(&s.upper, "trusted.overlay.impure", b"y");
    set(
        &s.upper.join("f"),
        "trusted.overlay.stratafs.origin-ino",
        b"1",
    );
    let m = common::Mount::new(&s.rw_opts(), &s.mnt);
    assert_eq!(common::dir_names(&m.mountpoint), ["f"]);
    let f = std::fs::metadata(m.mountpoint.join("f")).unwrap();
    assert!(f.is_file());
    assert_ne!(std::os::unix::fs::MetadataExt::ino(&f), 1);
}
