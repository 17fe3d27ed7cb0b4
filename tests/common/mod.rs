//! Shared test support: facility checks that fail under CI, mount guards that always unmount,
//! and a whole-tree snapshot for comparing a stratafs mount with kernel overlayfs.
#![allow(dead_code)]

mod base;
pub use base::*;
mod fuzz;
#[allow(unused_imports)]
pub use fuzz::{fuzz_cases, fuzz_config};
pub mod behind;
mod rng;
#[allow(unused_imports)]
pub use rng::Rng;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The daemon binary built for these tests.
pub fn stratafs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stratafs"))
}

/// A live stratafs mount; unmounted (and its daemon waited for) when dropped, even when the
/// test fails.
pub struct Mount {
    pub mountpoint: PathBuf,
}

impl Mount {
    /// Mounts with `-o opts` on `mountpoint` through the launcher (which returns once the mount
    /// is live). Panics with the launcher's stderr if it fails.
    pub fn new(opts: &str, mountpoint: &Path) -> Mount {
        match Mount::try_new(opts, mountpoint) {
            Ok(m) => m,
            Err(o) => panic!(
                "stratafs -o {opts} {} failed ({}): {}",
                mountpoint.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
        }
    }

    /// Like [`Mount::new`], but returns the launcher's output on failure.
    pub fn try_new(opts: &str, mountpoint: &Path) -> Result<Mount, Output> {
        Mount::with_binary(&stratafs_bin(), opts, mountpoint)
    }

    /// Mounts with the daemon binary `bin`.
    pub fn with_binary(bin: &Path, opts: &str, mountpoint: &Path) -> Result<Mount, Output> {
        let out = run(Command::new(bin).arg("-o").arg(opts).arg(mountpoint));
        if out.status.success() {
            Ok(Mount {
                mountpoint: mountpoint.to_path_buf(),
            })
        } else {
            Err(out)
        }
    }

    /// Unmounts now and waits for the daemon to exit.
    pub fn unmount(self) {
        drop(self)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        unmount_and_wait(&self.mountpoint);
    }
}

/// The value of xattr `name` of `p` itself (a symlink is not followed), if it has one.
pub fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::lgetxattr(p, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Unmounts a FUSE mount (politely, then lazily) and waits for its daemon to exit.
pub fn unmount_and_wait(mountpoint: &Path) {
    let pids = daemons_for(mountpoint);
    let ok = Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok && is_mounted(mountpoint) {
        let _ = Command::new("umount").arg("-l").arg(mountpoint).status();
    }
    let gone = wait_until(Duration::from_secs(10), || {
        pids.iter().all(|p| !daemons_for(mountpoint).contains(p))
    });
    if !gone {
        for p in daemons_for(mountpoint) {
            let _ = Command::new("kill").arg("-9").arg(p.to_string()).status();
        }
    }
}

// The tree snapshot is shared with the stratafs-mount tests.
#[path = "snap.rs"]
mod snap;
#[allow(unused_imports)]
pub use snap::*;

// ---- Helpers for the write-path comparisons (differential.rs, write_ops.rs) ----

/// The errno of a failed call, so results of the same call on two mounts can be compared.
pub fn errno_of<T>(r: std::io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// `truncate(2)` on a path: a setattr without an open file (which `File::set_len` is not).
pub fn truncate_path(path: &Path, len: u64) -> std::io::Result<()> {
    stratafs::sys::truncate_path(path, len)
}

/// Makes a kernel-format whiteout (char device 0/0) at `path`.
pub fn make_whiteout(path: &Path) -> std::io::Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )?;
    Ok(())
}

/// Marks directory `path` opaque the way the kernel does (`trusted.overlay.opaque=y`).
pub fn make_opaque(path: &Path) -> std::io::Result<()> {
    rustix::fs::lsetxattr(
        path,
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )?;
    Ok(())
}

/// `-o` options for a read-write stack (lowers topmost first).
pub fn rw_opts(lowers: &[PathBuf], upper: &Path, work: &Path) -> String {
    let l: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        l.join(":"),
        upper.display(),
        work.display()
    )
}

/// One lower layer, an upper and a work directory and a mount point, in a fresh temporary
/// directory (removed when dropped).
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Stack {
    pub fn new() -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| {
            let d = dir.path().join(n);
            std::fs::create_dir(&d).unwrap();
            d
        };
        Stack {
            lower: p("lower"),
            upper: p("upper"),
            work: p("work"),
            mnt: p("mnt"),
            dir,
        }
    }

    /// `-o` options for a read-write stratafs mount of this stack.
    pub fn rw_opts(&self) -> String {
        rw_opts(std::slice::from_ref(&self.lower), &self.upper, &self.work)
    }
}

/// `-o` options for the kernel's overlayfs with the features stratafs implements pinned
/// (no redirects, no index, no metacopy), whatever the module defaults are.
pub fn kernel_rw_opts(lowers: &[PathBuf], upper: &Path, work: &Path) -> String {
    format!(
        "{},redirect_dir=off,index=off,metacopy=off",
        rw_opts(lowers, upper, work)
    )
}

/// `cp -a` of a whole tree (modes, owners, times, xattrs incl. `trusted.*`, device nodes).
pub fn copy_tree(src: &Path, dst: &Path) {
    let out = run(Command::new("cp")
        .arg("-a")
        .arg("--preserve=all")
        .arg(src)
        .arg(dst));
    assert!(
        out.status.success(),
        "cp -a {} {}: {}",
        src.display(),
        dst.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The names in a directory, sorted (empty when it cannot be read).
pub fn dir_names(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Kills (SIGKILL) the stratafs daemons serving `mountpoint` and detaches the mount: used by
/// watchdogs so a hung daemon fails a test instead of hanging it.
pub fn kill_daemons(mountpoint: &Path) {
    for p in daemons_for(mountpoint) {
        let _ = Command::new("kill").arg("-9").arg(p.to_string()).status();
    }
    let _ = Command::new("umount").arg("-l").arg(mountpoint).status();
}

/// A private copy of the daemon binary, taken once per test process, so that a concurrent
/// `cargo build` replacing `target/debug/stratafs` cannot break mounts half-way through a
/// run. Copies left by earlier processes that have exited are removed.
pub fn stable_stratafs_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let tmp = std::env::temp_dir();
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("stratafs-test-bin-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = tmp.join(format!("stratafs-test-bin-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let dst = dir.join("stratafs");
        let ok = wait_until(Duration::from_secs(120), || {
            std::fs::copy(stratafs_bin(), &dst).is_ok()
        });
        assert!(ok, "cannot copy {}", stratafs_bin().display());
        dst
    })
    .clone()
}

/// Like [`Mount::try_new`], through [`stable_stratafs_bin`].
pub fn mount_stable(opts: &str, mountpoint: &Path) -> Result<Mount, Output> {
    Mount::with_binary(&stable_stratafs_bin(), opts, mountpoint)
}

// ---- Helpers for the external suites and durability tests (conformance.rs, durability.rs) ----

/// An external tool: from `PATH`, else `$CARGO_HOME/bin`, else `~/.cargo/bin` (where
/// `cargo install` puts pjdfstest and fsx).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(h).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.push(PathBuf::from("/root/.cargo/bin"));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Something mounted with mount(8) or a FUSE daemon other than ours (a tmpfs, a
/// fuse-overlayfs mount): unmounted when dropped, lazily if it is busy.
pub struct UmountGuard {
    pub path: PathBuf,
}

impl Drop for UmountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(&self.path)
            .stderr(std::process::Stdio::null())
            .status();
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// What of the overlay's on-disk format shows through a mount: `.wh.` names, char 0/0
/// whiteouts, and xattrs of the private namespaces. Empty when nothing does.
pub fn overlay_internals(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            found.push(format!("cannot list {}", dir.display()));
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            let name = e.file_name();
            if name.as_bytes().starts_with(b".wh.") {
                found.push(format!("whiteout name {}", path.display()));
            }
            let Ok(md) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if md.file_type().is_char_device() && md.rdev() == 0 {
                found.push(format!("char 0/0 whiteout {}", path.display()));
            }
            let mut buf = vec![0u8; 65536];
            if let Ok(n) = rustix::fs::llistxattr(&path, &mut buf[..]) {
                for x in buf[..n].split(|b| *b == 0).filter(|x| !x.is_empty()) {
                    if x.starts_with(b"trusted.overlay.")
                        || x.starts_with(b"user.overlay.")
                        || x.starts_with(b"user.fuseoverlayfs.")
                    {
                        found.push(format!(
                            "private xattr {} on {}",
                            String::from_utf8_lossy(x),
                            path.display()
                        ));
                    }
                }
            }
            if md.is_dir() {
                stack.push(path);
            }
        }
    }
    found
}

/// Number of open fds of process `pid` (0 when it is gone).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

/// A `/proc/PID/status` field in KiB (`VmHWM`, `VmRSS`).
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Runs `cmd` with stdout and stderr captured together, killing it after `limit`. Returns
/// the exit status (None on timeout) and the output.
pub fn run_timeout(
    cmd: &mut Command,
    limit: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    use std::io::{Read, Seek};
    let mut out = match tempfile::tempfile() {
        Ok(f) => f,
        Err(e) => panic!("tempfile: {e}"),
    };
    let (o, e) = match (out.try_clone(), out.try_clone()) {
        (Ok(o), Ok(e)) => (o, e),
        _ => panic!("cannot clone the output file"),
    };
    let mut child = match cmd
        .stdin(std::process::Stdio::null())
        .stdout(o)
        .stderr(e)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    };
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut text = String::new();
    let _ = out.rewind();
    let mut bytes = Vec::new();
    let _ = out.read_to_end(&mut bytes);
    text.push_str(&String::from_utf8_lossy(&bytes));
    (status, text)
}

// ---- Rootless: work done as nobody (rootless.rs, uring.rs, udba.rs) ----

/// The unprivileged user the rootless tests run daemons and commands as.
pub const NOBODY: u32 = 65534;

/// `prog` run as nobody, with no supplementary groups (`setpriv`).
pub fn as_nobody(prog: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(prog);
    c
}

/// Gives `dir` and everything below it to nobody.
pub fn give_to_nobody(dir: &Path) {
    let out = run(Command::new("chown")
        .arg("-R")
        .arg(format!("{NOBODY}:{NOBODY}"))
        .arg(dir));
    assert!(out.status.success(), "chown -R nobody {}", dir.display());
}

/// The stratafs daemon started by nobody with `opts` on `mnt` (through fusermount3); the
/// guard unmounts it.
pub fn mount_as_nobody(opts: &str, mnt: &Path) -> Mount {
    let out = run(as_nobody(&stable_stratafs_bin())
        .arg("-o")
        .arg(opts)
        .arg(mnt));
    assert!(
        out.status.success(),
        "stratafs as nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Mount {
        mountpoint: mnt.to_path_buf(),
    }
}

/// The uid and gid of user `name` (from /etc/passwd).
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}
