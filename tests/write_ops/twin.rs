//! A twin: the same layers twice, under a stratafs mount and a kernel overlayfs mount, and
//! the helpers the tests use to build layers and look at what the mounts left.

use std::fmt::Debug;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::*;

/// One copy of a stack: layer directories and a mount point.
pub(crate) struct Side {
    pub(crate) lowers: Vec<PathBuf>,
    pub(crate) upper: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) mnt: PathBuf,
}

impl Side {
    pub(crate) fn new(dir: &Path, n_lowers: usize) -> Side {
        let s = Side {
            lowers: (0..n_lowers).map(|i| dir.join(format!("l{i}"))).collect(),
            upper: dir.join("u"),
            work: dir.join("w"),
            mnt: dir.join("m"),
        };
        for d in s.lowers.iter().chain([&s.upper, &s.work, &s.mnt]) {
            std::fs::create_dir_all(d).unwrap();
        }
        s
    }

    pub(crate) fn lower(&self, i: usize, rel: &str) -> PathBuf {
        self.lowers[i].join(rel)
    }
}

/// The same stack twice: `s` served by stratafs, `k` by the kernel.
pub(crate) struct Twin {
    pub(crate) s: Side,
    pub(crate) k: Side,
    /// Extra `-o` options of the stratafs mount (`,key=value...`).
    pub(crate) extra: String,
    pub(crate) ours: Option<Mount>,
    pub(crate) kernel: Option<KernelMount>,
    // Last, so the mounts go before the directories.
    pub(crate) _t: tempfile::TempDir,
}

/// Builds a twin with `n_lowers` lower layers made by `build` (called once per copy), and
/// mounts both. `None` when the facilities are missing (and not in CI).
pub(crate) fn twin(n_lowers: usize, build: impl Fn(&Side)) -> Option<Twin> {
    if !can_compare() {
        return None;
    }
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let t = tempfile::tempdir().unwrap();
    // Other users (setpriv tests) must be able to reach the mounts.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = Side::new(&t.path().join("s"), n_lowers);
    let k = Side::new(&t.path().join("k"), n_lowers);
    for side in [&s, &k] {
        build(side);
        for l in &side.lowers {
            fix_times(l);
        }
        fix_times(&side.upper);
    }
    let mut tw = Twin {
        s,
        k,
        extra: String::new(),
        ours: None,
        kernel: None,
        _t: t,
    };
    tw.mount();
    Some(tw)
}

/// Gives everything under `root` (not the root) the same fixed times, deepest first.
pub(crate) fn fix_times(root: &Path) {
    let mut paths = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                out.push(p.clone());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&p, out);
                }
            }
        }
    }
    walk(root, &mut paths);
    for p in paths.iter().rev() {
        set_times(p, 1_600_000_000, 1_600_000_000);
    }
}

pub(crate) fn set_times(p: &Path, atime: i64, mtime: i64) {
    let ts = |s| rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: ts(atime),
            last_modification: ts(mtime),
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

impl Twin {
    pub(crate) fn mount(&mut self) {
        assert!(self.ours.is_none() && self.kernel.is_none());
        let s = &self.s;
        self.ours = Some(
            mount_stable(
                &format!("{}{}", rw_opts(&s.lowers, &s.upper, &s.work), self.extra),
                &s.mnt,
            )
            .unwrap_or_else(|o| panic!("stratafs mount: {}", String::from_utf8_lossy(&o.stderr))),
        );
        let k = &self.k;
        self.kernel = Some(KernelMount::new(
            &kernel_rw_opts(&k.lowers, &k.upper, &k.work),
            &k.mnt,
        ));
    }

    pub(crate) fn unmount(&mut self) {
        self.ours = None;
        self.kernel = None;
    }

    /// Mounts both again, stratafs with the extra options `extra`.
    pub(crate) fn remount_with(&mut self, extra: &str) {
        self.unmount();
        self.extra = extra.to_string();
        self.mount();
    }

    /// Runs `f` on both mounts; the results must agree. Returns stratafs's.
    pub(crate) fn both<T: PartialEq + Debug>(&self, what: &str, f: impl Fn(&Path) -> T) -> T {
        let a = f(&self.s.mnt);
        let b = f(&self.k.mnt);
        assert_eq!(a, b, "{what}: stratafs (left) and kernel (right) differ");
        a
    }

    /// Runs `f` on both mounts; both must succeed.
    pub(crate) fn ok(&self, what: &str, f: impl Fn(&Path) -> Result<(), i32>) {
        assert_eq!(self.both(what, f), Ok(()), "{what}");
    }

    pub(crate) fn same_tree(&self, what: &str) {
        assert_same_tree(&snapshot(&self.s.mnt), &snapshot(&self.k.mnt), what);
    }

    /// The upper layers as plain directories (whiteouts show as char devices 0/0). The
    /// kernel makes its whiteouts hard links of one shared inode, so their link counts are
    /// left out.
    pub(crate) fn same_upper(&self, what: &str) {
        assert_same_tree(
            &upper_snapshot(&self.s.upper),
            &upper_snapshot(&self.k.upper),
            &format!("{what} (upper layers)"),
        );
    }
}

pub(crate) fn upper_snapshot(upper: &Path) -> TreeSnap {
    let mut snap = snapshot(upper);
    for e in snap.values_mut() {
        if e.kind == "chardev" && e.rdev == Some(0) {
            e.nlink = None;
        }
    }
    snap
}

pub(crate) fn mtime_of(p: &Path) -> i64 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
        .mtime()
}

pub(crate) fn ctime_of(p: &Path) -> (i64, i64) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (m.ctime(), m.ctime_nsec())
}

pub(crate) fn is_whiteout(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

pub(crate) fn mkdir_owned(p: &Path, mode: u32, uid: u32, gid: u32) {
    std::fs::create_dir_all(p).unwrap();
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub(crate) fn file_owned(p: &Path, data: &[u8], mode: u32, uid: u32, gid: u32) {
    std::fs::write(p, data).unwrap();
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub(crate) fn set_user_xattr(p: &Path, name: &str, value: &str) {
    rustix::fs::lsetxattr(p, name, value.as_bytes(), rustix::fs::XattrFlags::empty()).unwrap();
}

pub(crate) fn xattr_of(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; 1024];
    rustix::fs::lgetxattr(p, name, &mut buf[..])
        .map(|n| buf[..n].to_vec())
        .map_err(|e| e.raw_os_error())
}
