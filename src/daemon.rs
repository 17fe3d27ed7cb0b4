//! Mounting and serving: open the layers, mount, detach once the mount is live, serve until
//! unmounted, unmount cleanly on SIGTERM/SIGINT.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use crate::config::{os_error_text, strip_os_error_codes, KernelFlag, MountConfig};
use crate::fuse::dispatch::{Access, Dispatcher};
use crate::fuse::{devfuse, uring, StrataFs};
use crate::layer::LayerStack;
use crate::overlay::{Options, Overlay};
use crate::sys;

/// A failure before the mount is live: one line for stderr, and the exit status.
#[derive(Debug, thiserror::Error)]
#[error("{}", crate::config::one_line(.0))]
pub struct MountError(pub String);

/// Opens the layers of `cfg` into a merged view (no mount).
pub fn open_overlay(cfg: &MountConfig) -> Result<Overlay, MountError> {
    let upper = cfg.upperdir.as_deref().zip(cfg.workdir.as_deref());
    let layers = LayerStack::open_with(
        upper,
        &cfg.lowerdirs,
        &cfg.datadirs,
        cfg.xino,
        cfg.ino32,
        cfg.userxattr,
    )
    .map_err(|e| MountError(strip_os_error_codes(&e.to_string())))?;
    let mut overlay = Overlay::new(layers, Options::from_config(cfg))
        .with_idmap(crate::layer::IdMap::from_config(cfg));
    if cfg.index_on() {
        overlay.enable_index().map_err(MountError)?;
    }
    Ok(overlay)
}

/// How the mount is made: the kernel flags and the FUSE options of `cfg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// Kernel mount flags.
    pub flags: sys::FuseMountFlags,
    /// Who may use the mount.
    pub acl: SessionACL,
    /// Name shown as the mount's source.
    pub source: String,
}

/// Works out the mount flags and access rules for `cfg`.
pub fn mount_plan(cfg: &MountConfig) -> MountPlan {
    let root = sys::euid() == 0;
    // As root, `suid` as on a kernel overlay mount (a container rootfs needs its setuid
    // binaries) but `nodev` unless `dev` is asked for, as libfuse mounts and so
    // fuse-overlayfs: containers/storage drops `nodev` from `mountopt` before it calls a
    // mount program, so a container could otherwise make and use device nodes on its
    // rootfs. Unprivileged FUSE mounts are always nosuid,nodev.
    let mut flags = sys::FuseMountFlags {
        read_only: cfg.upperdir.is_none(),
        nodev: true,
        nosuid: !root,
        ..Default::default()
    };
    for f in &cfg.kernel_flags {
        match f {
            KernelFlag::ReadOnly => flags.read_only = true,
            KernelFlag::ReadWrite => {}
            KernelFlag::Dev => flags.nodev = false,
            KernelFlag::NoDev => flags.nodev = true,
            KernelFlag::Suid => flags.nosuid = false,
            KernelFlag::NoSuid => flags.nosuid = true,
            KernelFlag::Exec => flags.noexec = false,
            KernelFlag::NoExec => flags.noexec = true,
            KernelFlag::Atime => flags.noatime = false,
            KernelFlag::NoAtime => flags.noatime = true,
            KernelFlag::DirSync => flags.dirsync = true,
            KernelFlag::Sync => flags.sync = true,
            KernelFlag::Async => flags.sync = false,
        }
    }
    let acl = if cfg.allow_other || root {
        SessionACL::All
    } else if cfg.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    MountPlan {
        flags,
        acl,
        source: cfg.source.clone().unwrap_or_else(|| "stratafs".into()),
    }
}

/// How often the pruner looks at the node table.
const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Node ids per `FUSE_NOTIFY_PRUNE` message.
const PRUNE_BATCH: usize = 512;

/// Keeps the node table bounded: the kernel holds a node for every dentry it caches, and
/// with plenty of memory it caches a whole walked tree. When the table is over its limit,
/// the nodes no request used lately are named to the kernel in `FUSE_NOTIFY_PRUNE`; it drops
/// those it does not use and forgets them. On kernels without the notification the table
/// follows the kernel's cache, as before.
fn spawn_pruner(overlay: Arc<Overlay>, dev: OwnedFd) {
    let spawned = std::thread::Builder::new()
        .name("prune".into())
        .spawn(move || loop {
            std::thread::sleep(PRUNE_INTERVAL);
            for chunk in overlay.prune_candidates().chunks(PRUNE_BATCH) {
                if let Err(e) = sys::fuse_notify_prune(dev.as_fd(), chunk) {
                    // ENODEV: unmounted. EINVAL: the kernel lacks the notification.
                    tracing::debug!(error = %e, "pruning stops");
                    return;
                }
                overlay.pruned(chunk.len());
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no pruner; the node table follows the kernel's");
    }
}

/// Readahead for files read through the daemon, in KiB: one request of the largest size
/// FUSE allows (256 pages). The kernel's default (128 KiB) splits sequential reads into
/// requests an eighth of that size.
const READAHEAD_KIB: u32 = 1024;

/// Raises the readahead of the mount on `mountpoint` (root only; the mount is live). Found
/// through `/proc/self/mountinfo` rather than a stat of the mount point, which would be a
/// request to this very daemon before it serves any.
fn raise_readahead(mountpoint: &std::path::Path) {
    if sys::euid() != 0 {
        return;
    }
    let Ok(want) = std::fs::canonicalize(mountpoint) else {
        return;
    };
    let dev = mount_device(&want);
    if let Some(dev) = dev {
        let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
        if let Err(e) = std::fs::write(&path, READAHEAD_KIB.to_string()) {
            tracing::debug!(error = %e, path, "cannot raise readahead");
        }
    }
}

/// The `MAJ:MIN` of the newest mount on `dir` (a canonical path), from
/// `/proc/self/mountinfo`; `None` when nothing is mounted there.
pub fn mount_device(dir: &std::path::Path) -> Option<String> {
    newest_mount(dir).map(|(dev, _)| dev)
}

/// The filesystem type of the newest mount on `dir` (a canonical path), as mountinfo shows
/// it (`fuse.stratafs`); `None` when nothing is mounted there.
pub fn mount_type(dir: &std::path::Path) -> Option<String> {
    newest_mount(dir).map(|(_, t)| t)
}

/// The `MAJ:MIN` and filesystem type of the newest mount on `dir` (a canonical path).
fn newest_mount(dir: &std::path::Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = dir.as_os_str().as_encoded_bytes();
    // The newest mount on that point is the last line naming it.
    info.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let dev = f.nth(2)?;
        let point = unescape_mountinfo(f.nth(1)?.as_bytes());
        if point.as_slice() != want {
            return None;
        }
        let fstype = f.skip_while(|x| *x != "-").nth(1)?;
        Some((dev.to_string(), fstype.to_string()))
    })
}

/// Detaches a dead FUSE mount from `mountpoint`: one whose daemon is gone (killed, say),
/// so that every access to it fails with `ENOTCONN`. fuse-overlayfs mounts over such a
/// mount; detaching it as well leaves nothing dead behind. Returns the line to tell the
/// user, or `None` when the mount point is not a dead FUSE mount (or could not be
/// detached: validation then reports it).
pub fn clear_dead_mount(mountpoint: &std::path::Path) -> Option<String> {
    let err = std::fs::metadata(mountpoint).err()?;
    if err.raw_os_error() != Some(libc::ENOTCONN) {
        return None;
    }
    // The mount point itself cannot be resolved; its directory can.
    let parent = match mountpoint.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let abs = std::fs::canonicalize(parent)
        .ok()?
        .join(mountpoint.file_name()?);
    let (_, fstype) = newest_mount(&abs)?;
    if fstype != "fuse" && !fstype.starts_with("fuse.") {
        return None;
    }
    let detached = if sys::euid() == 0 {
        sys::unmount_lazy(&abs).is_ok()
    } else {
        std::process::Command::new("fusermount3")
            .args(["-u", "-z", "--"])
            .arg(&abs)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    detached.then(|| {
        format!(
            "mount point '{}' held a dead FUSE mount ({fstype}, its daemon is gone): detached it",
            mountpoint.display()
        )
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mountinfo(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 4 <= s.len() {
            let oct = &s[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// The fuser session configuration for `plan`.
fn session_config(plan: &MountPlan) -> Config {
    let f = &plan.flags;
    let mut opts = vec![
        MountOption::FSName(plan.source.clone()),
        MountOption::Subtype("stratafs".into()),
        MountOption::DefaultPermissions,
        if f.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
        if f.nodev {
            MountOption::NoDev
        } else {
            MountOption::Dev
        },
        if f.nosuid {
            MountOption::NoSuid
        } else {
            MountOption::Suid
        },
    ];
    for (on, o) in [
        (f.noexec, MountOption::NoExec),
        (f.noatime, MountOption::NoAtime),
        (f.dirsync, MountOption::DirSync),
        (f.sync, MountOption::Sync),
    ] {
        if on {
            opts.push(o);
        }
    }
    let mut config = Config::default();
    config.mount_options = opts;
    config.acl = plan.acl;
    config
}

/// How many threads serve requests: one per CPU, at least 2, at most 16.
fn serving_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 16)
}

/// What fuser is given to mount with: it answers the kernel's INIT (negotiating with
/// [`crate::fuse::negotiate`]) and serves nothing else; the dispatcher takes over the
/// connection after.
struct Handshake {
    overlay: Arc<Overlay>,
    /// When to ask for FUSE over io_uring (`Off` where this process cannot set up rings).
    io_uring: crate::config::Uring,
    /// What the kernel granted.
    granted: Arc<std::sync::Mutex<crate::fuse::Granted>>,
}

impl fuser::Filesystem for Handshake {
    fn init(
        &mut self,
        _req: &fuser::Request,
        config: &mut fuser::KernelConfig,
    ) -> std::io::Result<()> {
        let granted = crate::fuse::negotiate(&self.overlay, config, self.io_uring);
        if let Ok(mut g) = self.granted.lock() {
            *g = granted;
        }
        Ok(())
    }
}

/// Mounts as root with the mount(2) call made here, so the type reads `fuse.stratafs`
/// (fuser's own root path mounts plain `fuse`); other users go through fusermount3.
fn start_session(
    fs: Handshake,
    cfg: &MountConfig,
    plan: &MountPlan,
) -> std::io::Result<(fuser::Session<Handshake>, Unmount)> {
    let config = session_config(plan);
    if sys::euid() != 0 {
        let mut session = fuser::Session::new(fs, &cfg.mountpoint, &config)?;
        let u = session.unmount_callable();
        return Ok((session, Unmount::Fusermount(u)));
    }
    let dev = sys::open_fuse_device()?;
    let mut opts = String::from("default_permissions");
    if plan.acl != SessionACL::Owner {
        opts.push_str(",allow_other");
    }
    sys::mount_fuse(
        dev.as_fd(),
        &plan.source,
        &cfg.mountpoint,
        "stratafs",
        &opts,
        plan.flags,
    )?;
    match fuser::Session::from_fd(fs, dev, plan.acl, config) {
        Ok(s) => Ok((s, Unmount::Syscall(cfg.mountpoint.clone()))),
        Err(e) => {
            let _ = sys::unmount_lazy(&cfg.mountpoint);
            Err(e)
        }
    }
}

/// How to take the mount down on a signal.
enum Unmount {
    Fusermount(fuser::SessionUnmounter),
    Syscall(std::path::PathBuf),
}

impl Unmount {
    fn unmount(&mut self) {
        let r = match self {
            Unmount::Fusermount(u) => u.unmount(),
            Unmount::Syscall(p) => sys::unmount(p),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "unmount failed");
        }
    }
}

/// Mounts `cfg` and serves it. Without `-f`, the calling process exits 0 once the mount is
/// live (or prints the error and exits 1) while a detached child keeps serving.
pub fn run(cfg: &MountConfig) -> Result<(), MountError> {
    sys::raise_nofile_limit();
    // New objects are created with the caller's exact mode (the kernel has applied the
    // caller's umask already).
    sys::set_umask(0);
    // Before the work directory is touched: a second daemon on it would clear `work/` under
    // the first one. The locks live as long as this process and the daemon child (which
    // inherits them), so they go with the daemon, however it ends.
    let _in_use = lock_upper_and_work(cfg)?;
    // Every layer is opened here, before the launcher returns: podman detaches idmapped
    // lower mounts right after the mount program exits.
    let overlay = open_overlay(cfg)?;
    if cfg.foreground {
        return serve(cfg, overlay, None);
    }
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| {
        MountError(format!(
            "cannot create a pipe: {}",
            os_error_text(&e.into())
        ))
    })?;
    match sys::fork().map_err(|e| MountError(format!("cannot fork: {}", os_error_text(&e))))? {
        sys::Forked::Parent(_) => {
            drop(wr);
            wait_for_child(rd)
        }
        sys::Forked::Child => {
            drop(rd);
            let _ = sys::setsid();
            let r = serve(cfg, overlay, Some(wr));
            // The parent already got our verdict; exit without running destructors twice.
            std::process::exit(if r.is_ok() { 0 } else { 1 });
        }
    }
}

/// How long a lock on the upper or work directory is waited for: a daemon whose mount was
/// just taken down may still be exiting (podman restarts containers that fast).
const IN_USE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The kernel's words for a directory another mount writes to.
const IN_USE: &str = "in-use as upperdir/workdir of another mount";

/// Takes an exclusive `flock` on the upper and work directories, as the kernel's overlayfs
/// marks them in use: a second stratafs mount on either (or inside either) is refused before
/// it touches anything. A lower layer in use that way gets the kernel's warning. The locks
/// are on directory fds (no lock file: the kernel's overlayfs needs `work/` clearable and
/// the upper's contents are the user's), released when the last process holding them, the
/// daemon, exits.
fn lock_upper_and_work(cfg: &MountConfig) -> Result<Vec<OwnedFd>, MountError> {
    let writable = [("upperdir", &cfg.upperdir), ("workdir", &cfg.workdir)];
    // Inside a directory in use (the kernel walks the ancestors too).
    for (role, dir) in writable.iter().filter_map(|(r, d)| Some((*r, d.as_ref()?))) {
        let canon = std::fs::canonicalize(dir).map_err(|e| {
            MountError(format!("{role} '{}': {}", dir.display(), os_error_text(&e)))
        })?;
        if let Some(outer) = canon.ancestors().skip(1).find(|a| held_by_another_mount(a)) {
            return Err(MountError(format!(
                "{role} '{}' is inside '{}', {IN_USE}",
                dir.display(),
                outer.display()
            )));
        }
    }
    for lower in cfg.lowerdirs.iter().chain(&cfg.datadirs) {
        let Ok(canon) = std::fs::canonicalize(lower) else {
            continue;
        };
        if canon.ancestors().any(held_by_another_mount) {
            eprintln!(
                "stratafs: warning: lowerdir '{}' is {IN_USE}, accessing files from both \
                 mounts will result in undefined behavior",
                crate::config::one_line(&lower.display().to_string())
            );
        }
    }
    let mut held = Vec::with_capacity(2);
    for (role, dir) in writable.iter().filter_map(|(r, d)| Some((*r, d.as_ref()?))) {
        let fd = match open_for_lock(dir) {
            Ok(fd) => fd,
            // A directory the daemon may search but not read cannot be locked; it is used
            // unlocked, as before.
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => continue,
            Err(e) => {
                return Err(MountError(format!(
                    "{role} '{}': {}",
                    dir.display(),
                    os_error_text(&e)
                )))
            }
        };
        let start = std::time::Instant::now();
        loop {
            match rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) if start.elapsed() < IN_USE_GRACE => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(MountError(format!(
                        "{role} '{}' is {IN_USE}",
                        dir.display()
                    )))
                }
                Err(e) => {
                    return Err(MountError(format!(
                        "{role} '{}': cannot lock: {}",
                        dir.display(),
                        os_error_text(&e.into())
                    )))
                }
            }
        }
        held.push(fd);
    }
    Ok(held)
}

/// A directory fd `flock` works on (not `O_PATH`), closed on exec (fusermount3 must not
/// inherit it).
fn open_for_lock(dir: &std::path::Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// True when another daemon holds `dir` as its upper or work directory: a shared lock
/// cannot be had. Directories that cannot be opened are taken as free.
fn held_by_another_mount(dir: &std::path::Path) -> bool {
    let Ok(fd) = open_for_lock(dir) else {
        return false;
    };
    match rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            let _ = rustix::fs::flock(&fd, rustix::fs::FlockOperation::Unlock);
            false
        }
        Err(e) => e == rustix::io::Errno::WOULDBLOCK,
    }
}

/// The launcher's side: wait for the child's verdict on the pipe.
fn wait_for_child(rd: OwnedFd) -> Result<(), MountError> {
    let mut msg = String::new();
    let mut f = std::fs::File::from(rd);
    let _ = f.read_to_string(&mut msg);
    match msg.strip_prefix("ok") {
        Some(_) => Ok(()),
        None if msg.is_empty() => Err(MountError(
            "the daemon exited before the mount was live".into(),
        )),
        None => Err(MountError(msg.trim_end().to_string())),
    }
}

fn serve(cfg: &MountConfig, overlay: Overlay, notify: Option<OwnedFd>) -> Result<(), MountError> {
    let overlay = Arc::new(overlay);
    let plan = mount_plan(cfg);
    // The rings need io_uring with 128-byte SQEs, which this process may be refused
    // (`kernel.io_uring_disabled`, the locked-memory limit): asked of the kernel only if so.
    let mut uring_refused = None;
    let want_uring = match cfg.io_uring {
        crate::config::Uring::Off => crate::config::Uring::Off,
        wanted => match sys::uring::probe() {
            Ok(()) => wanted,
            Err(e) => {
                uring_refused = Some(e);
                crate::config::Uring::Off
            }
        },
    };
    let granted = Arc::new(std::sync::Mutex::new(crate::fuse::Granted::default()));
    let hs = Handshake {
        overlay: Arc::clone(&overlay),
        io_uring: want_uring,
        granted: Arc::clone(&granted),
    };
    let (session, mut unmounter) = match start_session(hs, cfg, &plan) {
        Ok(s) => s,
        Err(e) => {
            let err = MountError(format!(
                "cannot mount on '{}': {}",
                cfg.mountpoint.display(),
                os_error_text(&e)
            ));
            if let Some(fd) = notify {
                let _ = std::fs::File::from(fd).write_all(err.0.as_bytes());
            }
            return Err(err);
        }
    };
    match session.as_fd().try_clone_to_owned() {
        Ok(dev) => spawn_pruner(Arc::clone(&overlay), dev),
        Err(e) => tracing::warn!(error = %e, "no pruner; the node table follows the kernel's"),
    }
    // Before the session serves requests.
    match session.as_fd().try_clone_to_owned() {
        Ok(dev) => overlay.set_kernel_connection(dev),
        Err(e) => tracing::warn!(error = %e, "no attribute invalidation after copy-ups"),
    }
    let dev = match session.as_fd().try_clone_to_owned() {
        Ok(d) => d,
        Err(e) => {
            unmounter.unmount();
            return Err(MountError(format!(
                "cannot serve the mount: {}",
                os_error_text(&e)
            )));
        }
    };
    let granted = granted.lock().map(|g| *g).unwrap_or_default();
    let backing_dev = if granted.passthrough {
        match dev.try_clone() {
            Ok(d) => Some(Arc::new(d)),
            Err(e) => {
                tracing::warn!(error = %e, "no passthrough: cannot keep the connection");
                None
            }
        }
    } else {
        None
    };
    let fs = StrataFs::new(Arc::clone(&overlay), cfg.timeout, backing_dev);
    let access = match plan.acl {
        SessionACL::All => Access::All,
        SessionACL::RootAndOwner => Access::RootAndOwner,
        SessionACL::Owner => Access::Owner,
    };
    let dispatcher = Arc::new(Dispatcher::new(fs, access, sys::euid()));
    dispatcher.set_mountpoint(&cfg.mountpoint);
    match dev.try_clone() {
        Ok(d) => dispatcher.set_connection(d, granted.kernel_minor, granted.writeback),
        Err(e) => tracing::warn!(error = %e, "refreshes will not reach the kernel's caches"),
    }
    if let Err(e) = dispatcher.start_udba() {
        tracing::warn!(error = %e, "udba=notify: no watch thread; changes to the layers need \
            'stratafs refresh'");
    }
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR1,
    ]);
    match signals {
        Ok(mut signals) => {
            let d = Arc::clone(&dispatcher);
            let spawned = std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || {
                    for sig in signals.forever() {
                        if sig == signal_hook::consts::SIGUSR1 {
                            log_stats(&d);
                            continue;
                        }
                        tracing::info!(sig, "signal received, unmounting");
                        unmounter.unmount();
                        break;
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no signal thread; SIGTERM will not unmount");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot install signal handlers"),
    }
    // The mount is live (the kernel's INIT was answered inside Session::new).
    if let Some(fd) = notify {
        let _ = std::fs::File::from(fd).write_all(b"ok");
        let _ = sys::detach_stdio();
    }
    raise_readahead(&cfg.mountpoint);
    tracing::info!(mountpoint = %cfg.mountpoint.display(), "mounted");
    let r = serve_transport(cfg, dispatcher, dev, &granted, uring_refused);
    drop(session);
    overlay.unmounted();
    tracing::info!(nodes = overlay.node_count(), "unmounted");
    r.map_err(|e| {
        MountError(format!(
            "FUSE session ended with an error: {}",
            os_error_text(&e)
        ))
    })
}

/// The target of the statistics table SIGUSR1 writes to the log: logged at info, which the
/// default filter lets through for this target alone (see [`crate::logging`]).
pub const STATS_TARGET: &str = "stratafs::stats";

/// SIGUSR1: the table `stratafs stats` shows, into the log, a line per event.
fn log_stats(d: &Dispatcher) {
    for line in d.snapshot().table().lines().filter(|l| !l.is_empty()) {
        tracing::info!(target: STATS_TARGET, "{line}");
    }
}

/// Serves the connection `dev` until it is unmounted: through the io_uring rings when the
/// kernel granted them (with one `/dev/fuse` reader beside them, for what the kernel still
/// sends there: interrupts and forgets), else through `/dev/fuse` alone. Where `-o io_uring`
/// is not off but the rings are not used, one line in the log says why.
fn serve_transport(
    cfg: &MountConfig,
    dispatcher: Arc<Dispatcher>,
    dev: OwnedFd,
    granted: &crate::fuse::Granted,
    refused: Option<std::io::Error>,
) -> std::io::Result<()> {
    if cfg.io_uring == crate::config::Uring::Off {
        return devfuse::serve(dispatcher, dev, serving_threads());
    }
    if let Some(e) = refused {
        tracing::info!(error = %e, "no FUSE over io_uring: this process cannot set up rings; serving /dev/fuse");
        return devfuse::serve(dispatcher, dev, serving_threads());
    }
    if !cfg.io_uring.wanted(granted.passthrough) {
        tracing::info!(
            "serving /dev/fuse: without passthrough every byte goes through the daemon, and \
             /dev/fuse serves reads faster than FUSE over io_uring (-o io_uring takes the \
             rings anyway)"
        );
        return devfuse::serve(dispatcher, dev, serving_threads());
    }
    if !granted.io_uring {
        tracing::info!(
            "no FUSE over io_uring: the kernel does not offer it (Linux 6.14+ with \
             /sys/module/fuse/parameters/enable_uring set to Y); serving /dev/fuse"
        );
        return devfuse::serve(dispatcher, dev, serving_threads());
    }
    match uring::start(&dispatcher, &dev) {
        Ok(rings) => {
            dispatcher.set_transport(rings.queues());
            tracing::info!(
                queues = rings.queues(),
                "serving through FUSE over io_uring"
            );
            let r = devfuse::serve(dispatcher, dev, 1);
            rings.join(std::time::Duration::from_secs(2));
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "no FUSE over io_uring: the rings could not be set up; serving /dev/fuse");
            devfuse::serve(dispatcher, dev, serving_threads())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes() {
        assert_eq!(
            super::unescape_mountinfo(br"/a\040b\\c"),
            b"/a b\\\\c".to_vec()
        );
        assert_eq!(super::unescape_mountinfo(br"/x\01"), b"/x\\01".to_vec());
    }
}
