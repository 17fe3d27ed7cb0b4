//! Running a case: the layers written twice, a kernel overlayfs and a stratafs mount over
//! the two copies, each operation on both, the trees compared, then the uppers swapped.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use crate::case::*;
use crate::common::*;
use crate::generator::*;

pub(crate) fn materialize(entries: &[Entry], dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for e in entries {
        let p = dir.join(e.path());
        match e {
            Entry::Dir {
                mode,
                uid,
                gid,
                opaque,
                xattr,
                ..
            } => {
                std::fs::create_dir(&p).unwrap();
                std::os::unix::fs::lchown(&p, Some(*uid), Some(*gid)).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
                if *opaque {
                    make_opaque(&p).unwrap();
                }
                if let Some((k, v)) = xattr {
                    rustix::fs::lsetxattr(
                        &p,
                        k.as_str(),
                        v.as_bytes(),
                        rustix::fs::XattrFlags::empty(),
                    )
                    .unwrap();
                }
            }
            Entry::File {
                mode,
                uid,
                gid,
                data,
                xattr,
                ..
            } => {
                std::fs::write(&p, data).unwrap();
                std::os::unix::fs::lchown(&p, Some(*uid), Some(*gid)).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
                if let Some((k, v)) = xattr {
                    rustix::fs::lsetxattr(
                        &p,
                        k.as_str(),
                        v.as_bytes(),
                        rustix::fs::XattrFlags::empty(),
                    )
                    .unwrap();
                }
            }
            Entry::Symlink { target, .. } => std::os::unix::fs::symlink(target, &p).unwrap(),
            Entry::Whiteout { .. } => make_whiteout(&p).unwrap(),
            // Minimizing may have dropped the file (or its directory): no link then.
            Entry::HardLink { target, .. } => {
                if dir.join(target).is_file() && p.parent().is_some_and(Path::is_dir) {
                    std::fs::hard_link(dir.join(target), &p).unwrap();
                }
            }
        }
    }
    // Fixed times, deepest first, so both copies look alike to anything that reads them.
    for (i, e) in entries.iter().enumerate().rev() {
        let t = rustix::fs::Timespec {
            tv_sec: 1_600_000_000 + i as i64,
            tv_nsec: 0,
        };
        let _ = rustix::fs::utimensat(
            rustix::fs::CWD,
            dir.join(e.path()),
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        );
    }
}

pub(crate) fn to_errno(e: rustix::io::Errno) -> i32 {
    e.raw_os_error()
}

pub(crate) fn ts(sec: i64) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: 0,
    }
}

pub(crate) fn nofollow(b: bool) -> rustix::fs::AtFlags {
    if b {
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW
    } else {
        rustix::fs::AtFlags::empty()
    }
}

/// Runs one operation under `root`: `Ok(what it observed)` or `Err(errno)`.
pub(crate) fn exec(root: &Path, op: &Op) -> Result<String, i32> {
    let p = |s: &str| root.join(s);
    let open = |o: &mut std::fs::OpenOptions, s: &str| errno_of(o.open(p(s)));
    let done = |r: std::io::Result<()>| errno_of(r).map(|()| String::new());
    match op {
        Op::Create { path, mode, excl } => {
            let mut o = std::fs::OpenOptions::new();
            o.write(true).mode(*mode);
            if *excl {
                o.create_new(true);
            } else {
                o.create(true);
            }
            open(&mut o, path).map(|_| String::new())
        }
        Op::Write { path, off, data } => {
            let f = open(std::fs::OpenOptions::new().write(true), path)?;
            done(f.write_all_at(data.as_bytes(), *off))
        }
        Op::Append { path, data } => {
            let mut f = open(std::fs::OpenOptions::new().append(true), path)?;
            done(f.write_all(data.as_bytes()))
        }
        Op::Truncate { path, len } => done(truncate_path(&p(path), *len)),
        Op::OpenTrunc { path } => {
            open(std::fs::OpenOptions::new().write(true).truncate(true), path)
                .map(|_| String::new())
        }
        Op::OpenWrite { path } => {
            open(std::fs::OpenOptions::new().read(true).write(true), path).map(|_| String::new())
        }
        Op::Unlink { path } => done(std::fs::remove_file(p(path))),
        Op::Mkdir { path, mode } => done(std::fs::DirBuilder::new().mode(*mode).create(p(path))),
        Op::Rmdir { path } => done(std::fs::remove_dir(p(path))),
        Op::Rename { from, to, kind } => {
            let flags = match kind {
                RenameKind::Plain => rustix::fs::RenameFlags::empty(),
                RenameKind::NoReplace => rustix::fs::RenameFlags::NOREPLACE,
                RenameKind::Exchange => rustix::fs::RenameFlags::EXCHANGE,
            };
            rustix::fs::renameat_with(rustix::fs::CWD, p(from), rustix::fs::CWD, p(to), flags)
                .map(|()| String::new())
                .map_err(to_errno)
        }
        Op::Link { from, to } => done(std::fs::hard_link(p(from), p(to))),
        Op::Symlink { path, target } => done(std::os::unix::fs::symlink(target, p(path))),
        Op::Chmod { path, mode } => done(std::fs::set_permissions(
            p(path),
            std::fs::Permissions::from_mode(*mode),
        )),
        Op::Chown {
            path,
            uid,
            gid,
            nofollow: nf,
        } => {
            if *nf {
                done(std::os::unix::fs::lchown(p(path), Some(*uid), Some(*gid)))
            } else {
                done(std::os::unix::fs::chown(p(path), Some(*uid), Some(*gid)))
            }
        }
        Op::Utimes {
            path,
            atime,
            mtime,
            nofollow: nf,
        } => rustix::fs::utimensat(
            rustix::fs::CWD,
            p(path),
            &rustix::fs::Timestamps {
                last_access: ts(*atime),
                last_modification: ts(*mtime),
            },
            nofollow(*nf),
        )
        .map(|()| String::new())
        .map_err(to_errno),
        Op::Touch { path } => {
            let now = rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                p(path),
                &rustix::fs::Timestamps {
                    last_access: now,
                    last_modification: now,
                },
                rustix::fs::AtFlags::empty(),
            )
            .map(|()| String::new())
            .map_err(to_errno)
        }
        Op::SetXattr {
            path,
            name,
            value,
            flag,
        } => {
            let flags = match flag {
                1 => rustix::fs::XattrFlags::CREATE,
                2 => rustix::fs::XattrFlags::REPLACE,
                _ => rustix::fs::XattrFlags::empty(),
            };
            rustix::fs::lsetxattr(p(path), name.as_str(), value.as_bytes(), flags)
                .map(|()| String::new())
                .map_err(to_errno)
        }
        Op::GetXattr { path, name } => {
            let mut buf = vec![0u8; 4096];
            rustix::fs::lgetxattr(p(path), name.as_str(), &mut buf[..])
                .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
                .map_err(to_errno)
        }
        Op::RmXattr { path, name } => rustix::fs::lremovexattr(p(path), name.as_str())
            .map(|()| String::new())
            .map_err(to_errno),
        Op::Stat { path } => {
            let md = errno_of(std::fs::symlink_metadata(p(path)))?;
            let dir = md.is_dir();
            Ok(format!(
                "mode={:o} owner={}:{} size={} nlink={}",
                md.mode(),
                md.uid(),
                md.gid(),
                if dir { 0 } else { md.size() },
                if dir { 0 } else { md.nlink() }
            ))
        }
        Op::Ls { path } => {
            let rd = errno_of(std::fs::read_dir(p(path)))?;
            let mut names = Vec::new();
            for e in rd {
                names.push(errno_of(e)?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names.join(" "))
        }
        Op::Read { path } => {
            errno_of(std::fs::read(p(path))).map(|b| String::from_utf8_lossy(&b).into_owned())
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// What kind of disagreement (kept while minimizing, so it does not drift to another).
    pub(crate) category: String,
    pub(crate) detail: String,
}

pub(crate) fn fail(category: impl Into<String>, detail: impl Into<String>) -> Failure {
    Failure {
        category: category.into(),
        detail: detail.into(),
    }
}

/// The layer directories of one copy of a case.
pub(crate) struct Side {
    pub(crate) lowers: Vec<PathBuf>,
    pub(crate) upper: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) work2: PathBuf,
    pub(crate) mnt: PathBuf,
    pub(crate) mnt2: PathBuf,
}

impl Side {
    pub(crate) fn build(case: &Case, dir: &Path) -> Side {
        let lowers: Vec<PathBuf> = (0..case.lowers.len())
            .map(|i| dir.join(format!("l{i}")))
            .collect();
        for (l, entries) in lowers.iter().zip(&case.lowers) {
            materialize(entries, l);
        }
        if let (true, Some(bottom)) = (data_only_bottom(&case.features), lowers.last()) {
            // The bottom layer becomes a data-only layer under a metadata layer of it.
            let data = dir.join("data");
            std::fs::rename(bottom, &data).unwrap();
            metadata_layer(&data, bottom);
        }
        let s = Side {
            lowers,
            upper: dir.join("u"),
            work: dir.join("w"),
            work2: dir.join("w2"),
            mnt: dir.join("m"),
            mnt2: dir.join("m2"),
        };
        materialize(&case.upper, &s.upper);
        for d in [&s.work, &s.work2, &s.mnt, &s.mnt2] {
            std::fs::create_dir_all(d).unwrap();
        }
        s
    }
}

pub(crate) fn kernel_mount(opts: &str, mnt: &Path) -> Result<KernelMount, Failure> {
    let out = run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", opts])
        .arg(mnt));
    if out.status.success() {
        Ok(KernelMount {
            mountpoint: mnt.to_path_buf(),
        })
    } else {
        Err(fail(
            "kernel-mount",
            format!(
                "kernel mount -o {opts} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }
}

pub(crate) fn stratafs_mount(opts: &str, mnt: &Path) -> Result<Mount, Failure> {
    let opts = match std::env::var("STRATAFS_DIFF_MOUNT_OPTS") {
        Ok(extra) if !extra.is_empty() => format!("{opts},{extra}"),
        _ => opts.to_string(),
    };
    let opts = opts.as_str();
    mount_stable(opts, mnt).map_err(|o| {
        fail(
            "stratafs-mount",
            format!(
                "stratafs -o {opts} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    })
}

/// `snapshot`, with its panics (an lstat or readdir error) turned into a failure.
pub(crate) fn try_snapshot(root: &Path, what: &str) -> Result<TreeSnap, Failure> {
    std::panic::catch_unwind(|| snapshot(root)).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        fail(format!("snapshot-{what}"), format!("{what}: {msg}"))
    })
}

/// Kills the daemons (and detaches the mounts) if the case runs too long, so a hang in the
/// daemon fails the test instead of hanging it.
pub(crate) struct Watchdog {
    pub(crate) tx: Option<mpsc::Sender<()>>,
    pub(crate) handle: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub(crate) fn new(mounts: Vec<PathBuf>, limit: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("watchdog: case exceeded {limit:?}; killing daemons");
                for m in &mounts {
                    kill_daemons(m);
                }
            }
        });
        Watchdog {
            tx: Some(tx),
            handle: Some(handle),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Runs `case` on both implementations under `base` (an empty directory). With `gen`, the
/// operations are generated as the case runs and recorded in `case.ops`.
pub(crate) fn run_case(
    case: &mut Case,
    mut gen: Option<OpGen>,
    base: &Path,
) -> Result<usize, Failure> {
    let s = Side::build(case, &base.join("s"));
    let k = Side::build(case, &base.join("k"));
    let _dog = Watchdog::new(
        vec![s.mnt.clone(), s.mnt2.clone(), k.mnt.clone(), k.mnt2.clone()],
        Duration::from_secs(120),
    );
    let feat = case.features.clone();
    let ours_opts = |l: &[PathBuf], u: &Path, w: &Path| {
        with_data_layer(&with_features(&rw_opts(l, u, w), &feat), l, &feat)
    };
    let kernel_opts = |l: &[PathBuf], u: &Path, w: &Path| {
        with_data_layer(&with_features(&kernel_rw_opts(l, u, w), &feat), l, &feat)
    };
    let ours = stratafs_mount(&ours_opts(&s.lowers, &s.upper, &s.work), &s.mnt)?;
    let kernel = kernel_mount(&kernel_opts(&k.lowers, &k.upper, &k.work), &k.mnt)?;

    let initial = (
        try_snapshot(&s.mnt, "stratafs-initial")?,
        try_snapshot(&k.mnt, "kernel-initial")?,
    );
    if let Some(d) = tree_diff(&initial.0, &initial.1) {
        return Err(fail("initial-tree", format!("before any operation:\n{d}")));
    }

    // Explicit mtimes set by `utimes ... nofollow`, to check they stick (or not) alike.
    let mut explicit: BTreeMap<String, i64> = BTreeMap::new();
    let mut succeeded = 0;
    let mut known: Vec<String> = Vec::new();
    for e in case.upper.iter().chain(case.lowers.iter().flatten()) {
        if !known.iter().any(|k| k == e.path()) {
            known.push(e.path().to_string());
        }
    }
    let total = gen.as_ref().map_or(case.ops.len(), |g| g.n);
    for i in 0..total {
        if let Some(g) = gen.as_mut() {
            let live = live_paths(&k.mnt);
            let op = gen_op(&mut g.rng, &live, &mut known, &case.ops);
            case.ops.push(op);
        }
        let op = &case.ops[i];
        let rs = exec(&s.mnt, op);
        let rk = exec(&k.mnt, op);
        succeeded += usize::from(rs.is_ok());
        if std::env::var("STRATAFS_DIFF_TRACE").is_ok() {
            eprintln!(
                "trace: {} -> {:?}",
                op.to_string().split(' ').next().unwrap_or(""),
                rs.as_ref().map(|_| ())
            );
        }
        if rs != rk {
            let name = op.to_string();
            let verb = name.split(' ').next().unwrap_or("").to_string();
            let short = |r: &Result<String, i32>| match r {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            };
            return Err(fail(
                format!("op-{verb}:{}/{}", short(&rs), short(&rk)),
                format!("op #{i} `{op}`: stratafs {rs:?}, kernel {rk:?}"),
            ));
        }
        if let (
            Op::Utimes {
                path,
                mtime,
                nofollow: true,
                ..
            },
            Ok(_),
        ) = (op, &rs)
        {
            explicit.insert(path.clone(), *mtime);
        }
    }

    let final_s = try_snapshot(&s.mnt, "stratafs-final")?;
    let final_k = try_snapshot(&k.mnt, "kernel-final")?;
    if let Some(d) = tree_diff(&final_s, &final_k) {
        return Err(fail("final-tree", format!("after the operations:\n{d}")));
    }
    let index = index_on(&feat);
    let final_links = same_files(&k.mnt);
    if index {
        let ours = same_files(&s.mnt);
        if ours != final_links {
            return Err(fail(
                "final-links",
                format!("names of one file: stratafs {ours:?}, kernel {final_links:?}"),
            ));
        }
    }
    // Checked now, reported last: a disagreement on times should not hide one on names.
    let mut mtime_failure = None;
    for (path, mtime) in &explicit {
        let kept = |root: &Path| {
            errno_of(std::fs::symlink_metadata(root.join(path))).map(|m| m.mtime() == *mtime)
        };
        let (ks, kk) = (kept(&s.mnt), kept(&k.mnt));
        if ks != kk && mtime_failure.is_none() {
            mtime_failure = Some(fail(
                "mtime",
                format!(
                    "{path}: explicit mtime {mtime} still there? stratafs {ks:?}, kernel {kk:?}"
                ),
            ));
        }
    }

    drop(ours);
    drop(kernel);
    // With the index, the upper is read with its work directory (the index is there).
    let (s_work2, k_work2) = if index {
        (&s.work, &k.work)
    } else {
        (&s.work2, &k.work2)
    };
    let left = dir_names(&s.work.join("work"));
    if !left.is_empty() {
        return Err(fail(
            "workdir-leftovers",
            format!("stratafs left {left:?} in workdir/work"),
        ));
    }

    // Swap the uppers: each implementation reads what the other wrote.
    {
        let kk = kernel_mount(&kernel_opts(&s.lowers, &s.upper, s_work2), &s.mnt2)?;
        let snap = try_snapshot(&s.mnt2, "kernel-over-stratafs-upper")?;
        let links = same_files(&s.mnt2);
        drop(kk);
        if index && links != final_links {
            return Err(fail(
                "swap-kernel-reads-stratafs-links",
                format!("names of one file: kernel over stratafs's upper {links:?}, expected {final_links:?}"),
            ));
        }
        if let Some(d) = tree_diff(&final_k, &snap) {
            return Err(fail(
                "swap-kernel-reads-stratafs",
                format!(
                    "kernel over stratafs's upper (\"stratafs\" = expected, \
                     \"expected\" = what the kernel shows):\n{d}"
                ),
            ));
        }
    }
    {
        let ss = stratafs_mount(&ours_opts(&k.lowers, &k.upper, k_work2), &k.mnt2)?;
        let snap = try_snapshot(&k.mnt2, "stratafs-over-kernel-upper")?;
        let links = same_files(&k.mnt2);
        drop(ss);
        if index && links != final_links {
            return Err(fail(
                "swap-stratafs-reads-kernel-links",
                format!("names of one file: stratafs over the kernel's upper {links:?}, expected {final_links:?}"),
            ));
        }
        if let Some(d) = tree_diff(&snap, &final_k) {
            return Err(fail(
                "swap-stratafs-reads-kernel",
                format!("stratafs over the kernel's upper:\n{d}"),
            ));
        }
    }
    match mtime_failure {
        Some(f) => Err(f),
        None => Ok(succeeded),
    }
}

/// The names of one file (non-directories of one `st_ino`), for each file of several names
/// in the tree under `root`, sorted.
pub(crate) fn same_files(root: &Path) -> Vec<Vec<String>> {
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for e in rd.flatten() {
            let path = rel.join(e.file_name());
            let Ok(md) = std::fs::symlink_metadata(root.join(&path)) else {
                continue;
            };
            if md.is_dir() {
                stack.push(path);
            } else {
                by_ino
                    .entry(md.ino())
                    .or_default()
                    .push(path.display().to_string());
            }
        }
    }
    let mut out: Vec<Vec<String>> = by_ino
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    out.sort();
    out
}

/// The feature (not a mount option) that makes the case's bottom lower layer a data-only
/// layer under a metadata layer made of it, composefs style (see [`metadata_layer`]).
pub(crate) const DATA_ONLY_BOTTOM: &str = "data-only-bottom";

fn data_only_bottom(features: &str) -> bool {
    features.split(',').any(|f| f == DATA_ONLY_BOTTOM)
}

/// `opts` with the data-only layer beside the bottom of `lowers` added (`lowerdir=...::D`)
/// where `features` ask for one.
fn with_data_layer(opts: &str, lowers: &[PathBuf], features: &str) -> String {
    let data = lowers
        .last()
        .and_then(|l| l.parent())
        .map(|d| d.join("data"));
    match data {
        Some(d) if data_only_bottom(features) => opts
            .split(',')
            .map(|p| match p.strip_prefix("lowerdir=") {
                Some(_) => format!("{p}::{}", d.display()),
                None => p.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        _ => opts.to_string(),
    }
}

/// Makes `meta` a metadata layer of layer `data`, as composefs images are made: a copy of
/// its tree in which every regular file (but whiteouts) is a sparse metacopy file of the
/// same size, metadata and times, with an absolute `overlay.redirect` to its own path, so
/// that its data comes from `data` mounted as a data-only layer.
fn metadata_layer(data: &Path, meta: &Path) {
    copy_tree(data, meta);
    let mut stack = vec![meta.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            if !md.is_file()
                || name.starts_with(".wh.")
                || xattr(&p, "trusted.overlay.whiteout").is_some()
                || xattr(&p, "trusted.overlay.metacopy").is_some()
            {
                continue;
            }
            let rel = p.strip_prefix(meta).unwrap();
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(0).unwrap();
            f.set_len(md.len()).unwrap();
            let times = std::fs::FileTimes::new()
                .set_accessed(md.accessed().unwrap())
                .set_modified(md.modified().unwrap());
            f.set_times(times).unwrap();
            let redirect = format!("/{}", rel.display());
            for (k, v) in [
                ("trusted.overlay.metacopy", &b""[..]),
                ("trusted.overlay.redirect", redirect.as_bytes()),
            ] {
                rustix::fs::lsetxattr(&p, k, v, rustix::fs::XattrFlags::empty()).unwrap();
            }
        }
    }
}

/// `opts` with each `key=value` of `features` in place of the same key's value (or added).
pub(crate) fn with_features(opts: &str, features: &str) -> String {
    let mut parts: Vec<String> = opts.split(',').map(str::to_string).collect();
    for f in features
        .split(',')
        .filter(|f| !f.is_empty() && *f != DATA_ONLY_BOTTOM)
    {
        let key = f.split('=').next().unwrap_or(f);
        match parts.iter_mut().find(|p| p.split('=').next() == Some(key)) {
            Some(p) => *p = f.to_string(),
            None => parts.push(f.to_string()),
        }
    }
    parts.join(",")
}

/// Runs `case` in a fresh temporary directory; returns how many operations succeeded.
pub(crate) fn run_fresh(case: &Case) -> Result<usize, Failure> {
    let t = tempfile::tempdir().expect("tempdir");
    run_case(&mut case.clone(), None, t.path())
}

/// True when `features` turn the inodes index on (`index=on`).
pub(crate) fn index_on(features: &str) -> bool {
    features.split(',').any(|f| f == "index=on")
}

/// Runs the case of `seed` in a fresh temporary directory; returns it with the operations
/// it ran. With `index=on` the lower layers also get hard links.
pub(crate) fn run_seed(seed: u64, n_ops: usize, features: &str) -> (Case, Result<usize, Failure>) {
    let (mut case, gen) = gen_case(seed, n_ops);
    case.features = features.to_string();
    if index_on(features) {
        add_lower_links(&mut case, seed);
    }
    let t = tempfile::tempdir().expect("tempdir");
    let r = run_case(&mut case, Some(gen), t.path());
    (case, r)
}
