//! Mounting a container with the stratafs daemon, and unmounting it.
//!
//! The daemon is run as `stratafs -o lowerdir=TOP:...:BOTTOM,upperdir=U,workdir=W TARGET`;
//! it returns once the mount is live and leaves a detached process serving it, whose pid is
//! recorded so that `umount` can wait for it to finish.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::diff::lower_trees;
use crate::error::{Context, Error, Result};
use crate::store::{ContainerRecord, MountState, Store};

/// Finds the daemon: `explicit` (`--daemon`, `STRATAFS_DAEMON`), else `stratafs` next to
/// this executable, else on `PATH`.
pub fn find_daemon(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        return Err(Error::invalid(format!(
            "daemon {}: no such file",
            p.display()
        )));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join("stratafs");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("stratafs");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(Error::invalid(
        "cannot find the stratafs daemon: install it next to stratafs-mount or on PATH, or pass --daemon",
    ))
}

/// A path as a value of a daemon `-o` option (`\`, `:` and `,` escaped).
fn escape_opt(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// True when `target` is a mount point now.
pub fn is_mounted(target: &Path) -> bool {
    stratafs::daemon::mount_device(target).is_some()
}

/// True when the container's recorded mount is still there.
pub fn is_live(ctr: &ContainerRecord) -> bool {
    ctr.mount
        .as_ref()
        .map(|m| is_mounted(&m.target))
        .unwrap_or(false)
}

/// One line about the daemon serving the mount on `target`, from its statistics (what
/// `stratafs stats` shows): its pid, uptime, requests, nodes, open files, copy-ups and
/// memory; or why they cannot be had.
pub fn daemon_line(target: &Path) -> String {
    match stratafs::control::stats(target) {
        Ok(s) => s.one_line(),
        Err(stratafs::control::ControlError::Permission(_)) => {
            "(statistics: permission denied)".to_string()
        }
        Err(stratafs::control::ControlError::Unsupported(_)) => {
            "(no statistics: an older daemon)".to_string()
        }
        Err(stratafs::control::ControlError::Gone(_)) => "(daemon gone)".to_string(),
        Err(_) => "(no statistics)".to_string(),
    }
}

/// The daemon process serving `target`: a process whose command line is the daemon's and
/// names `target`.
fn daemon_pid(daemon: &Path, target: &Path) -> Option<u32> {
    let want = target.as_os_str().as_bytes();
    let daemon_name = daemon.file_name()?.as_bytes().to_vec();
    let mut found = None;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let ours = args
                .first()
                .map(|a| a.ends_with(&daemon_name))
                .unwrap_or(false);
            if ours && args.contains(&want) && alive(pid, target) {
                found = Some(found.map_or(pid, |f: u32| f.max(pid)));
            }
        }
    }
    found
}

/// True while process `pid` runs (not a zombie) and still names `target`.
fn alive(pid: u32, target: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    if stat
        .rsplit(')')
        .next()
        .map(|r| r.trim_start().starts_with('Z'))
        .unwrap_or(true)
    {
        return false;
    }
    let want = target.as_os_str().as_bytes();
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).any(|a| a == want))
        .unwrap_or(false)
}

/// What a container's mount allows beyond the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountFlags {
    /// Setuid and setgid bits (and file capabilities) of the image take effect (`suid`).
    pub suid: bool,
    /// Device nodes of the image and the container may be opened (`dev`).
    pub dev: bool,
    /// Directories of the image are renamed in place (`redirect_dir=on`).
    pub redirect_dir: bool,
    /// Files of the image get their metadata copied up alone (`metacopy=on`).
    pub metacopy: bool,
}

impl MountFlags {
    /// The daemon's mount options for these flags: `nosuid,nodev` unless asked otherwise.
    fn options(self) -> String {
        let mut o = vec![
            if self.suid { "suid" } else { "nosuid" },
            if self.dev { "dev" } else { "nodev" },
        ];
        if self.redirect_dir {
            o.push("redirect_dir=on");
        }
        if self.metacopy {
            o.push("metacopy=on");
        }
        o.join(",")
    }
}

/// `mount NAME [TARGET]`: returns the mount point.
pub fn mount(
    store: &Store,
    name: &str,
    target: Option<&Path>,
    daemon: Option<&Path>,
    flags: MountFlags,
) -> Result<PathBuf> {
    if (flags.suid || flags.dev) && (store.rootless || !rustix::process::geteuid().is_root()) {
        return Err(Error::invalid(
            "--suid and --dev need root: an ordinary user's mounts are always nosuid,nodev",
        ));
    }
    let mut ctr = store.container(name)?;
    if let Some(m) = &ctr.mount {
        if is_mounted(&m.target) {
            return Err(Error::invalid(format!(
                "container {name} is already mounted at {}",
                m.target.display()
            )));
        }
    }
    let dir = store.container_dir(name);
    let target = match target {
        Some(t) => t.to_path_buf(),
        None => dir.join("merged"),
    };
    if !target.is_dir() {
        return Err(Error::invalid(format!(
            "mount point {}: not a directory",
            target.display()
        )));
    }
    let target = std::fs::canonicalize(&target).ctx(|| format!("{}", target.display()))?;
    if is_mounted(&target) {
        return Err(Error::invalid(format!(
            "{} is already a mount point",
            target.display()
        )));
    }
    let lowers = lower_trees(store, &ctr)?;
    if lowers.is_empty() {
        return Err(Error::invalid(format!(
            "container {name}: its image has no layers"
        )));
    }
    let daemon = find_daemon(daemon)?;
    let lowerdir: Vec<String> = lowers.iter().map(|l| escape_opt(l)).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},{}",
        lowerdir.join(":"),
        escape_opt(&dir.join("upper")),
        escape_opt(&dir.join("work")),
        flags.options()
    );
    let out = Command::new(&daemon)
        .arg("-o")
        .arg(&opts)
        .arg(&target)
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("run {}", daemon.display()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let line = msg
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("failed");
        return Err(Error::invalid(format!(
            "daemon {}: {line}",
            daemon.display()
        )));
    }
    ctr.mount = Some(MountState {
        target: target.clone(),
        pid: daemon_pid(&daemon, &target),
    });
    store.put_container(&ctr)?;
    Ok(target)
}

/// Unmounts `target` (fusermount3, else a lazy unmount) and waits for daemon `pid`.
fn unmount_target(target: &Path, pid: Option<u32>) -> Result<()> {
    if is_mounted(target) {
        let ok = Command::new("fusermount3")
            .arg("-u")
            .arg(target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok && is_mounted(target) {
            stratafs::sys::unmount(target).ctx(|| format!("unmount {}", target.display()))?;
        }
    }
    if let Some(pid) = pid {
        let start = Instant::now();
        while alive(pid, target) {
            if start.elapsed() > Duration::from_secs(20) {
                return Err(Error::invalid(format!(
                    "unmounted {}, but its daemon (pid {pid}) did not exit",
                    target.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// `umount NAME`.
pub fn umount(store: &Store, name: &str) -> Result<PathBuf> {
    let mut ctr = store.container(name)?;
    let Some(m) = ctr.mount.clone() else {
        return Err(Error::invalid(format!("container {name} is not mounted")));
    };
    unmount_target(&m.target, m.pid)?;
    ctr.mount = None;
    store.put_container(&ctr)?;
    Ok(m.target)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(escape_opt(Path::new("/a:b,c\\d")), "/a\\:b\\,c\\\\d");
    }
}
