//! Test support that needs nothing from a package's build (no `env!` of binaries): facility
//! checks that fail under CI, mount-table queries and the kernel overlayfs mount guard. Shared
//! by the stratafs tests (`tests/common`) and the stratafs-mount tests, which include this
//! file by path.
#![allow(dead_code)]

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Says why a test cannot run. Under `CI=true` that is a failure, never a skip, so a green CI
/// run always means the mounts were exercised. Returns false when the test should skip.
pub fn facility(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if in_ci() {
        panic!("CI=true but {what} is missing: this test must run in CI");
    }
    eprintln!("SKIPPED: {what} is missing");
    false
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn has_fuse() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok()
}

pub fn has_kernel_overlay() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.trim_end().ends_with("\toverlay")))
        .unwrap_or(false)
}

/// `/dev/fuse` opened to every user while an unprivileged daemon runs; the old mode comes
/// back on drop.
pub struct DevFuseOpen {
    mode: u32,
}

impl DevFuseOpen {
    pub fn new() -> DevFuseOpen {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = std::fs::metadata("/dev/fuse").expect("/dev/fuse").mode() & 0o7777;
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666))
            .expect("chmod /dev/fuse");
        DevFuseOpen { mode }
    }
}

impl Drop for DevFuseOpen {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.mode));
    }
}

/// Root and `/dev/fuse`: what a stratafs mount needs here.
pub fn can_mount() -> bool {
    facility(is_root(), "root") && facility(has_fuse(), "/dev/fuse")
}

/// Root, `/dev/fuse` and the kernel's overlay filesystem: what an oracle comparison needs.
pub fn can_compare() -> bool {
    can_mount() && facility(has_kernel_overlay(), "kernel overlayfs")
}

/// Runs a command to completion, capturing its output.
pub fn run(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

/// True when `path` is a mount point right now.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path) else {
        // ENOTCONN on a dead FUSE mount also lands here; treat it as mounted.
        return path.exists() || std::fs::symlink_metadata(path).is_ok();
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = canon.as_os_str().as_bytes();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(|m| unescape_mountinfo(m).as_slice() == want)
            .unwrap_or(false)
    })
}

/// Every mount point as /proc/self/mountinfo lists it (octal escapes decoded), without
/// touching the mounts themselves: a FUSE mount of another user (no `allow_other`) refuses
/// even root's `stat`, so `is_mounted`'s canonicalization cannot see it.
pub fn mount_points() -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(std::ffi::OsString::from_vec(unescape_mountinfo(m))))
        .collect()
}

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Pids of running stratafs daemons whose command line names `mountpoint`.
pub fn daemons_for(mountpoint: &Path) -> Vec<u32> {
    let want = mountpoint.as_os_str().as_bytes();
    let mut pids = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Zombies have exited already.
        if stat
            .rsplit(')')
            .next()
            .map(|r| r.trim_start().starts_with('Z'))
            == Some(true)
        {
            continue;
        }
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_ours = args
            .first()
            .map(|a| a.ends_with(b"stratafs"))
            .unwrap_or(false);
        if is_ours && args.contains(&want) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits until `f` holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A kernel overlayfs mount, unmounted when dropped.
pub struct KernelMount {
    pub mountpoint: PathBuf,
}

impl KernelMount {
    /// `mount -t overlay overlay -o opts mountpoint`.
    pub fn new(opts: &str, mountpoint: &Path) -> KernelMount {
        let out = run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", opts])
            .arg(mountpoint));
        assert!(
            out.status.success(),
            "kernel overlay mount -o {opts} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        KernelMount {
            mountpoint: mountpoint.to_path_buf(),
        }
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mountpoint).status();
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}
