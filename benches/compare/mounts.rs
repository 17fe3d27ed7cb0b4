//! Mounts: the contenders, how each is mounted as root and rootless, and the daemons' figures
//! from `/proc`.
//!
//! Root: `mount -t overlay` for the kernel, the FUSE daemons started by root.
//! Rootless: the FUSE daemons run as the bench's unprivileged user (`BENCH_USER`, made with
//! `useradd` when missing) and mount through `fusermount3`; the kernel's overlayfs is mounted
//! by the workload process itself, as that user, in a user namespace of its own
//! (`unshare -Urm`, `-o userxattr`), so nothing of it outlives the worker.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::base::{mount_points, wait_until};
use crate::dataset::Size;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Contender {
    Kernel,
    /// fuse-overlayfs of the distribution (`apt-get install fuse-overlayfs`, 1.10 on Debian 12).
    FuseOverlayfs,
    /// fuse-overlayfs 2.0.0 from crates.io (`cargo install fuse-overlayfs@2.0.0`, cached).
    FuseOverlayfs2,
    Stratafs,
}

pub const CONTENDERS: [Contender; 4] = [
    Contender::Kernel,
    Contender::FuseOverlayfs,
    Contender::FuseOverlayfs2,
    Contender::Stratafs,
];

impl Contender {
    pub fn name(self) -> &'static str {
        match self {
            Contender::Kernel => "kernel",
            Contender::FuseOverlayfs => "fuse-overlayfs",
            Contender::FuseOverlayfs2 => "fuse-overlayfs-2",
            Contender::Stratafs => "stratafs",
        }
    }
}

/// Who mounts: root, or an ordinary user (FUSE through `fusermount3`, the kernel in a user
/// namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Config {
    Root,
    Rootless,
}

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::Root => "root",
            Config::Rootless => "rootless",
        }
    }
}

/// The unprivileged user the rootless contenders run as.
pub const BENCH_USER: &str = "stratafs-bench";

/// Uid and gid of `BENCH_USER`, made (`useradd --system`, no home, no login) when missing.
pub fn bench_user() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, BENCH_USER]).output().ok()?;
        if !o.status.success() {
            return None;
        }
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        eprintln!("compare: creating the user {BENCH_USER} (useradd --system)");
        let st = Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group"])
            .args(["--shell", "/usr/sbin/nologin", BENCH_USER])
            .status()
            .map_err(|e| format!("useradd: {e}"))?;
        if !st.success() {
            return Err(format!("useradd {BENCH_USER}: {st}"));
        }
    }
    match (id("-u"), id("-g")) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => Err(format!("no uid/gid for {BENCH_USER}")),
    }
}

pub struct Ctx {
    pub size: Size,
    pub data: PathBuf,
    pub layers: Vec<PathBuf>,
    /// The one layer of `stat-1m` (generated when that workload runs).
    pub million: PathBuf,
    pub tar: PathBuf,
    pub run: PathBuf,
    /// Where the reports go (`target/bench-results`); `stratafs stats` tables of the last
    /// round of each workload in `stats-SIZE/CONFIG-WORKLOAD.txt`.
    pub results: PathBuf,
    pub stratafs: PathBuf,
    /// fuse-overlayfs 2.0.0's binary, when there is one.
    pub fuse_overlayfs2: Option<PathBuf>,
    /// This bench's own binary (copied beside stratafs): the rootless worker.
    pub worker: PathBuf,
    /// Uid and gid of `BENCH_USER` (rootless runs only).
    pub user: Option<(u32, u32)>,
    pub ticks: f64,
}

impl Ctx {
    /// `setpriv` prefix that runs a command as the bench user, no supplementary groups.
    pub fn as_user(&self, program: &Path) -> Result<Command, String> {
        let (uid, gid) = self
            .user
            .ok_or_else(|| "rootless run without a bench user".to_string())?;
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "--"])
            .arg(program);
        Ok(cmd)
    }
}

/// Whether `p` is a mount point, from the mount table alone (see `base::mount_points`).
pub fn is_mounted(p: &Path) -> bool {
    mount_points().iter().any(|m| m == p)
}

pub fn lazy_unmount(p: &Path) {
    let _ = Command::new("fusermount3")
        .arg("-uz")
        .arg(p)
        .stderr(Stdio::null())
        .status();
    if is_mounted(p) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(p)
            .stderr(Stdio::null())
            .status();
    }
}

/// Leftover mounts under `dir` of an interrupted run, unmounted lazily.
pub fn clear_leftovers(dir: &Path) {
    for m in mount_points() {
        if m.starts_with(dir) {
            eprintln!("compare: unmounting leftover {}", m.display());
            lazy_unmount(&m);
        }
    }
}

pub fn proc_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .map(|i| !s[i + 1..].trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The FUSE daemon serving `mnt`: the process whose command line names the mount point.
pub fn find_daemon(mnt: &Path, c: Contender) -> Option<u32> {
    let me = std::process::id();
    let want = mnt.as_os_str().as_encoded_bytes();
    let exe = match c {
        Contender::Stratafs => "stratafs",
        _ => "fuse-overlayfs",
    };
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let argv0 = args.first().copied().unwrap_or_default();
        let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
        if base == exe.as_bytes() && args.contains(&want) && proc_alive(pid) {
            found.push(pid);
        }
    }
    found.into_iter().max()
}

/// utime + stime of a process (all its threads), in seconds.
/// Requests per operation that the stratafs daemon on `mnt` has served so far, from
/// `stratafs stats --json` (run by the mount's owner: the caller). `None` when the daemon
/// cannot tell (another contender, or a binary without `stats`).
pub fn served_requests(stratafs: &Path, mnt: &Path) -> Option<BTreeMap<String, u64>> {
    let out = Command::new(stratafs)
        .args(["stats", "--json"])
        .arg(mnt)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut m = BTreeMap::new();
    for r in v.get("requests")?.as_array()? {
        let op = r.get("op")?.as_str()?.to_string();
        let n = r.get("count")?.as_u64()?;
        if n > 0 {
            m.insert(op, n);
        }
    }
    Some(m)
}

/// The daemon's statistics as `stratafs stats MNT` prints them (run by the mount's owner:
/// the caller); `None` when the daemon cannot tell.
pub fn stats_table(stratafs: &Path, mnt: &Path) -> Option<String> {
    let out = Command::new(stratafs)
        .arg("stats")
        .arg(mnt)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The requests served between two [`served_requests`] snapshots.
pub fn requests_between(
    before: Option<BTreeMap<String, u64>>,
    after: Option<BTreeMap<String, u64>>,
) -> Option<BTreeMap<String, u64>> {
    let (before, after) = (before?, after?);
    Some(
        after
            .into_iter()
            .map(|(op, n)| {
                let d = n.saturating_sub(before.get(&op).copied().unwrap_or(0));
                (op, d)
            })
            .filter(|(_, n)| *n > 0)
            .collect(),
    )
}

pub fn proc_cpu(pid: u32, ticks: f64) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some((ut + st) as f64 / ticks)
}

/// VmHWM (peak resident set) of a process, in KiB.
pub fn proc_hwm_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// One mount of one contender with its own fresh upper and work directories. Dropping it
/// unmounts (lazily if need be), waits for the daemon and removes the upper and work
/// directories. A rootless kernel mount is only its directories here: the worker mounts it
/// in its own user namespace, where it ends with the worker.
pub struct Mount {
    pub c: Contender,
    pub mnt: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where `upper` and `work` go when the mount is done (see `retire`).
    trash: PathBuf,
    /// The `-o` options every contender is given (rootless kernel: `userxattr` added).
    pub opts: String,
    pub pid: Option<u32>,
    pub live: bool,
}

impl Mount {
    /// Mounts `layers` for contender `c`, with the options `extra` besides the layers.
    pub fn new(
        ctx: &Ctx,
        cfg: Config,
        c: Contender,
        layers: &[PathBuf],
        extra: Option<&str>,
    ) -> Result<Mount, String> {
        let base = ctx.run.join(cfg.name()).join(c.name());
        let mut m = Mount {
            c,
            mnt: base.join("mnt"),
            upper: base.join("upper"),
            work: base.join("work"),
            trash: trash_dir(&ctx.run),
            opts: String::new(),
            pid: None,
            live: false,
        };
        while is_mounted(&m.mnt) {
            lazy_unmount(&m.mnt);
        }
        for d in [&m.upper, &m.work] {
            if d.exists() {
                retire(d, &m.trash).map_err(|e| format!("set aside {}: {e}", d.display()))?;
            }
        }
        for d in [&m.mnt, &m.upper, &m.work] {
            fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        if cfg == Config::Rootless {
            let (uid, gid) = ctx.user.ok_or("rootless run without a bench user")?;
            for d in [&m.mnt, &m.upper, &m.work] {
                rustix::fs::chown(
                    d.as_path(),
                    Some(rustix::process::Uid::from_raw(uid)),
                    Some(rustix::process::Gid::from_raw(gid)),
                )
                .map_err(|e| format!("chown {}: {e}", d.display()))?;
            }
        }
        let lowers: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
        m.opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            m.upper.display(),
            m.work.display()
        );
        if let Some(x) = extra {
            m.opts = format!("{},{x}", m.opts);
        }
        if c == Contender::Kernel && cfg == Config::Rootless {
            m.opts = format!("userxattr,{}", m.opts);
            return Ok(m);
        }
        let program: PathBuf = match c {
            Contender::Kernel => PathBuf::from("mount"),
            Contender::FuseOverlayfs => PathBuf::from("fuse-overlayfs"),
            Contender::FuseOverlayfs2 => ctx
                .fuse_overlayfs2
                .clone()
                .ok_or("fuse-overlayfs 2.0.0 is not installed")?,
            Contender::Stratafs => ctx.stratafs.clone(),
        };
        let mut cmd = match cfg {
            Config::Root => Command::new(&program),
            Config::Rootless => ctx.as_user(&program)?,
        };
        if c == Contender::Kernel {
            cmd.args(["-t", "overlay", "overlay"]);
        }
        let log = base.join("daemon.log");
        cmd.arg("-o").arg(&m.opts).arg(&m.mnt);
        // Not pipes: a daemon that keeps them open would block us for ever.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).map_err(|e| e.to_string())?);
        let st = cmd
            .status()
            .map_err(|e| format!("{}: cannot start: {e}", c.name()))?;
        if !st.success() {
            let msg = fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{}: mount failed ({st}): {}", c.name(), msg.trim()));
        }
        // From here on, Drop cleans up whatever did come up.
        m.live = true;
        if !wait_until(Duration::from_secs(20), || is_mounted(&m.mnt)) {
            return Err(format!("{}: mount did not appear", c.name()));
        }
        if c != Contender::Kernel {
            let t = Instant::now();
            while m.pid.is_none() && t.elapsed() < Duration::from_secs(5) {
                m.pid = find_daemon(&m.mnt, c);
                if m.pid.is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if m.pid.is_none() {
                eprintln!("compare: warning: no daemon found for {}", m.mnt.display());
            }
        }
        Ok(m)
    }

    pub fn cpu(&self, ctx: &Ctx) -> Option<f64> {
        self.pid.and_then(|p| proc_cpu(p, ctx.ticks))
    }

    pub fn unmount(&mut self) -> Result<(), String> {
        if !self.live {
            return Ok(());
        }
        let mut last = String::new();
        for attempt in 0..20u64 {
            let out = match self.c {
                Contender::Kernel => Command::new("umount").arg(&self.mnt).output(),
                _ => Command::new("fusermount3")
                    .arg("-u")
                    .arg(&self.mnt)
                    .output(),
            };
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => last = e.to_string(),
            }
            if !is_mounted(&self.mnt) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
        }
        let busy = is_mounted(&self.mnt);
        if busy {
            lazy_unmount(&self.mnt);
        }
        self.live = false;
        if let Some(pid) = self.pid {
            let t = Instant::now();
            while proc_alive(pid) {
                if t.elapsed() > Duration::from_secs(30) {
                    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                    }
                    return Err(format!(
                        "{}: daemon {pid} still alive 30 s after unmount; killed",
                        self.c.name()
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if busy {
            return Err(format!(
                "{}: unmount failed ({last}); unmounted lazily",
                self.c.name()
            ));
        }
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.live {
            if let Err(e) = self.unmount() {
                eprintln!("compare: {e}");
            }
        }
        if is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
        for d in [&self.upper, &self.work] {
            if let Err(e) = retire(d, &self.trash) {
                eprintln!("compare: set aside {}: {e}", d.display());
            }
        }
    }
}

/// Where the finished samples' upper and work directories wait until the end of the run.
pub fn trash_dir(run: &Path) -> PathBuf {
    run.join("trash")
}

/// Regular files this big are deleted at once rather than kept in the trash: each frees one
/// inode but much space (write-big and the copy-ups of big.bin leave 1 GiB files).
const BIG_FILE: u64 = 1 << 20;

/// Sets a finished sample's directory `dir` aside in `trash` (deleting only its big regular
/// files), to be deleted by `empty_trash` at the end of the run.
///
/// Deleting it at once would slow the samples after it: on ext4 without a journal (this
/// machine's root filesystem) a freed inode is not handed out again for 60 s, or 360 s while
/// its inode table block is dirty (`recently_deleted` in `fs/ext4/ialloc.c`), and every
/// inode allocation in its block group steps past each such inode. With each sample's
/// 10,000-file untar deleted at unmount, the next contenders' untar took up to 15 times as
/// long, by their place in the round (docs/PERFORMANCE.md, "Deleted inodes").
pub fn retire(dir: &Path, trash: &Path) -> std::io::Result<()> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    remove_big_files(dir)?;
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(trash)?;
    let dest = trash.join(format!(
        "{}-{}",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    ));
    fs::rename(dir, dest)
}

fn remove_big_files(dir: &Path) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let md = e.metadata()?;
        if md.is_dir() {
            remove_big_files(&e.path())?;
        } else if md.is_file() && md.size() >= BIG_FILE {
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// When the trash was last emptied (seconds since the epoch), kept beside it.
fn emptied_stamp(trash: &Path) -> PathBuf {
    trash.with_extension("emptied")
}

/// Deletes what `retire` set aside, and notes it (`note_freed_inodes`).
pub fn empty_trash(trash: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(trash) {
        Ok(()) => note_freed_inodes(trash),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes freed inodes' table blocks back (`sync`: a clean block shortens ext4's wait from
/// 360 s to 60 s) and notes the time for `wait_for_freed_inodes`: after `empty_trash`, and
/// after generating a data set (which deletes the tarball's 10,000-file source).
pub fn note_freed_inodes(trash: &Path) -> std::io::Result<()> {
    rustix::fs::sync();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if let Some(parent) = trash.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(emptied_stamp(trash), format!("{now}\n"))
}

/// ext4 without a journal reuses an inode freed from a clean inode table block after 60 s.
const INODE_REUSE: Duration = Duration::from_secs(61);

/// Sleeps until the inodes last freed (`note_freed_inodes`) may be handed out again, so that
/// a run started right after another one, or after generating its data set, times no
/// allocation that steps past them.
pub fn wait_for_freed_inodes(trash: &Path) {
    let Some(at) = fs::read_to_string(emptied_stamp(trash))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        return;
    };
    let emptied = UNIX_EPOCH + Duration::from_secs(at);
    let since = SystemTime::now()
        .duration_since(emptied)
        .unwrap_or_default();
    if let Some(left) = INODE_REUSE.checked_sub(since) {
        eprintln!(
            "compare: waiting {} s until the inodes freed last are reusable \
             (ext4 without a journal skips them for 60 s)",
            left.as_secs() + 1
        );
        std::thread::sleep(left);
    }
}

/// Runs `f`; if it takes longer than `limit`, kills `pids` (the FUSE daemon, which makes every
/// request still waiting on the mount fail, or the rootless worker), so `f` returns.
pub fn guarded<T>(pids: Vec<u32>, limit: Duration, label: &str, f: impl FnOnce() -> T) -> T {
    let (tx, rx) = mpsc::channel::<()>();
    let label = label.to_string();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("compare: {label} took longer than {limit:?}; killing its daemon");
            for pid in pids {
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
        }
    });
    let out = f();
    let _ = tx.send(());
    let _ = watchdog.join();
    out
}
