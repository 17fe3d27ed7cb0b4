//! What the command-line tests share: a scratch stack, running the launcher and expecting
//! a refusal, the daemon found and signalled, and guards that always clean up.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::common::*;

pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// A scratch directory with `l1`, `l2` (two lower layers with a file each), `u`, `w` and `m`.
pub(crate) struct Scratch {
    pub(crate) tmp: tempfile::TempDir,
}

impl Scratch {
    pub(crate) fn new() -> Scratch {
        let tmp = tempfile::tempdir().expect("tempdir");
        for d in ["l1", "l2", "u", "w", "m"] {
            fs::create_dir(tmp.path().join(d)).expect("mkdir");
        }
        fs::write(tmp.path().join("l1/top"), "from l1\n").expect("write");
        fs::write(tmp.path().join("l2/bottom"), "from l2\n").expect("write");
        fs::write(tmp.path().join("l2/top"), "hidden by l1\n").expect("write");
        Scratch { tmp }
    }

    pub(crate) fn p(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// `-o` value `lowerdir=l1:l2`.
    pub(crate) fn lowers(&self) -> String {
        format!(
            "lowerdir={}:{}",
            self.p("l1").display(),
            self.p("l2").display()
        )
    }

    /// `-o` value `lowerdir=l1:l2,upperdir=u,workdir=w`.
    pub(crate) fn full(&self) -> String {
        format!(
            "{},upperdir={},workdir={}",
            self.lowers(),
            self.p("u").display(),
            self.p("w").display()
        )
    }
}

/// Unmounts `mountpoint` (if anything got mounted there) when dropped, even on panic.
pub(crate) fn guard(mountpoint: &Path) -> Mount {
    Mount {
        mountpoint: mountpoint.to_path_buf(),
    }
}

pub(crate) fn stratafs() -> Command {
    let mut cmd = Command::new(stratafs_bin());
    // A RUST_LOG from the environment would add log lines to stderr.
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    cmd
}

pub(crate) fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Runs stratafs with `args` and checks it refuses: non-zero exit, exactly one stderr line
/// containing every string of `want`, nothing mounted on `mountpoint`, no daemon left.
/// Returns the line and the exit code (2 for a bad command line, 1 for anything else).
pub(crate) fn refused(
    args: &[OsString],
    mountpoint: &Path,
    want: &[&str],
) -> (String, Option<i32>) {
    let _g = guard(mountpoint);
    let out = run(stratafs().args(args));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "stratafs {args:?} succeeded; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stratafs {args:?}: expected one stderr line, got {stderr:?}"
    );
    assert!(
        !lines[0].contains("(os error"),
        "stratafs {args:?}: the error line carries an OS error code: {:?}",
        lines[0]
    );
    for w in want {
        assert!(
            lines[0].contains(w),
            "stratafs {args:?}: stderr {:?} does not mention {w:?}",
            lines[0]
        );
    }
    assert!(
        !is_mounted(mountpoint),
        "stratafs {args:?} mounted {} anyway",
        mountpoint.display()
    );
    assert!(
        daemons_for(mountpoint).is_empty(),
        "stratafs {args:?} left a daemon running"
    );
    (lines[0].to_string(), out.status.code())
}

/// `-o OPTS MOUNTPOINT` refused with a stderr line mentioning `want`.
pub(crate) fn refused_opts(opts: &str, mountpoint: &Path, want: &[&str]) -> String {
    let mut args = os(&["-o", opts]);
    args.push(mountpoint.into());
    let (line, code) = refused(&args, mountpoint, want);
    assert!(code == Some(1) || code == Some(2), "exit code {code:?}");
    line
}

pub(crate) fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Waits for `child` to exit, up to [`TIMEOUT`].
pub(crate) fn wait_exit(child: &mut Child) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(TIMEOUT, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// A spawned process killed (and reaped) when dropped, so a failing test leaves none behind.
pub(crate) struct ChildGuard(pub(crate) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A tmpfs mounted on `path` for one test, unmounted when dropped.
pub(crate) fn tmpfs(path: &Path) -> UmountGuard {
    fs::create_dir_all(path).expect("mkdir");
    let out = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "stratafs-test"])
        .arg(path));
    assert!(
        out.status.success(),
        "mount -t tmpfs {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    UmountGuard {
        path: path.to_path_buf(),
    }
}

/// Sends `sig` to `pid`.
pub(crate) fn send_signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("non-zero pid");
    rustix::process::kill_process(pid, sig).expect("kill");
}

/// The one daemon serving `mountpoint`.
pub(crate) fn the_daemon(mountpoint: &Path) -> u32 {
    let pids = daemons_for(mountpoint);
    assert_eq!(
        pids.len(),
        1,
        "daemons for {}: {pids:?}",
        mountpoint.display()
    );
    pids[0]
}

/// Asserts the daemon of `mountpoint` goes away by itself, with the mount.
pub(crate) fn assert_daemon_exits(mountpoint: &Path, what: &str) {
    assert!(
        wait_until(TIMEOUT, || daemons_for(mountpoint).is_empty()),
        "the daemon is still running 10 s after {what}"
    );
    assert!(
        wait_until(TIMEOUT, || !is_mounted(mountpoint)),
        "still mounted 10 s after {what}"
    );
}
