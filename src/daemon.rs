//! Mounting and serving: open the layers, mount, detach once the mount is live, serve until
//! unmounted, unmount cleanly on SIGTERM/SIGINT.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use crate::config::{KernelFlag, MountConfig};
use crate::fuse::StrataFs;
use crate::layer::LayerStack;
use crate::overlay::{Options, Overlay};
use crate::sys;

/// A failure before the mount is live: one line for stderr, and the exit status.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MountError(pub String);

/// Opens the layers of `cfg` into a merged view (no mount).
pub fn open_overlay(cfg: &MountConfig) -> Result<Overlay, MountError> {
    let upper = cfg.upperdir.as_deref().zip(cfg.workdir.as_deref());
    let layers = LayerStack::open(upper, &cfg.lowerdirs, cfg.xino, cfg.ino32)
        .map_err(|e| MountError(e.to_string()))?;
    Ok(Overlay::new(layers, Options::from_config(cfg)))
}

/// The fuser session configuration for `cfg`.
pub fn session_config(cfg: &MountConfig) -> Config {
    let root = sys::euid() == 0;
    let mut opts = vec![
        MountOption::FSName(cfg.source.clone().unwrap_or_else(|| "stratafs".into())),
        MountOption::Subtype("stratafs".into()),
        MountOption::DefaultPermissions,
    ];
    // As root, behave like a kernel overlay mount (a container rootfs needs setuid binaries
    // and device nodes); unprivileged FUSE mounts are always nosuid,nodev.
    let mut dev = root;
    let mut suid = root;
    let mut ro = cfg.upperdir.is_none();
    for f in &cfg.kernel_flags {
        match f {
            KernelFlag::ReadOnly => ro = true,
            KernelFlag::ReadWrite => {}
            KernelFlag::Dev => dev = true,
            KernelFlag::NoDev => dev = false,
            KernelFlag::Suid => suid = true,
            KernelFlag::NoSuid => suid = false,
            KernelFlag::Exec => opts.push(MountOption::Exec),
            KernelFlag::NoExec => opts.push(MountOption::NoExec),
            KernelFlag::Atime => opts.push(MountOption::Atime),
            KernelFlag::NoAtime => opts.push(MountOption::NoAtime),
            KernelFlag::DirSync => opts.push(MountOption::DirSync),
            KernelFlag::Sync => opts.push(MountOption::Sync),
            KernelFlag::Async => opts.push(MountOption::Async),
        }
    }
    opts.push(if ro { MountOption::RO } else { MountOption::RW });
    opts.push(if dev {
        MountOption::Dev
    } else {
        MountOption::NoDev
    });
    opts.push(if suid {
        MountOption::Suid
    } else {
        MountOption::NoSuid
    });
    let mut config = Config::default();
    config.mount_options = opts;
    config.acl = if cfg.allow_other || root {
        SessionACL::All
    } else if cfg.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 16);
    config.n_threads = Some(threads);
    config.clone_fd = true;
    config
}

/// Mounts `cfg` and serves it. Without `-f`, the calling process exits 0 once the mount is
/// live (or prints the error and exits 1) while a detached child keeps serving.
pub fn run(cfg: &MountConfig) -> Result<(), MountError> {
    sys::raise_nofile_limit();
    // Every layer is opened here, before the launcher returns: podman detaches idmapped
    // lower mounts right after the mount program exits.
    let overlay = open_overlay(cfg)?;
    if cfg.foreground {
        return serve(cfg, overlay, None);
    }
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| MountError(format!("cannot create a pipe: {e}")))?;
    match sys::fork().map_err(|e| MountError(format!("cannot fork: {e}")))? {
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
    let fs = StrataFs::new(Arc::clone(&overlay), cfg.timeout);
    let config = session_config(cfg);
    let mut session = match fuser::Session::new(fs, &cfg.mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            let err = MountError(format!(
                "cannot mount on '{}': {e}",
                cfg.mountpoint.display()
            ));
            if let Some(fd) = notify {
                let _ = std::fs::File::from(fd).write_all(err.0.as_bytes());
            }
            return Err(err);
        }
    };
    let mut unmounter = session.unmount_callable();
    let mountpoint = cfg.mountpoint.clone();
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ]);
    match signals {
        Ok(mut signals) => {
            let spawned = std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || {
                    if let Some(sig) = signals.forever().next() {
                        tracing::info!(sig, "signal received, unmounting");
                        if unmounter.unmount().is_err() {
                            let _ = sys::unmount_lazy(&mountpoint);
                        }
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
    tracing::info!(mountpoint = %cfg.mountpoint.display(), "mounted");
    let r = session.run();
    tracing::info!(nodes = overlay.node_count(), "unmounted");
    r.map_err(|e| MountError(format!("FUSE session ended with an error: {e}")))
}
