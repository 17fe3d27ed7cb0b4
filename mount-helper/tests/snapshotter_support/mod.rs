//! Support for the stratafs-snapshotter tests: the snapshotter as a child process that is
//! always stopped, a gRPC client on its socket, and a private containerd (own root, state,
//! sockets and config) whose mounts, shims and containers are cleaned up even when a test
//! fails.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use stratafs_mount::snapshotter::api::snapshots::snapshots_client::SnapshotsClient;
use tonic::transport::Channel;

use crate::common::{facility, is_root, run, wait_until};

pub fn snapshotter_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stratafs-snapshotter"))
}

fn connectable(sock: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(sock).is_ok()
}

fn kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Stops a child: SIGTERM, then SIGKILL after `grace`. Returns whether it exited by itself.
fn stop_child(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    kill(child.id(), "TERM");
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A running stratafs-snapshotter; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Snapshotter {
    child: Option<Child>,
    pub root: PathBuf,
    pub sock: PathBuf,
    pub log: PathBuf,
    extra: Vec<String>,
}

impl Snapshotter {
    /// Starts the snapshotter on `root` and `sock` and waits until it serves.
    pub fn start(root: &Path, sock: &Path) -> Snapshotter {
        Snapshotter::start_with(root, sock, &[])
    }

    pub fn start_with(root: &Path, sock: &Path, extra: &[&str]) -> Snapshotter {
        let mut s = Snapshotter {
            child: None,
            root: root.to_path_buf(),
            sock: sock.to_path_buf(),
            log: root.with_extension("log"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.restart();
        s
    }

    fn spawn(&self) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("snapshotter log");
        Command::new(snapshotter_bin())
            .arg("--root")
            .arg(&self.root)
            .arg("--address")
            .arg(&self.sock)
            .args(&self.extra)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start stratafs-snapshotter")
    }

    /// (Re)starts it after [`Snapshotter::stop`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = self.spawn();
        let up = wait_until(Duration::from_secs(20), || {
            connectable(&self.sock) || matches!(child.try_wait(), Ok(Some(_)))
        });
        let alive = matches!(child.try_wait(), Ok(None));
        self.child = Some(child);
        assert!(
            up && alive && connectable(&self.sock),
            "the snapshotter did not come up: {}",
            self.log_text()
        );
    }

    /// Stops it with SIGTERM and returns whether it exited cleanly within 10 s.
    pub fn stop(&mut self) -> bool {
        match self.child.take() {
            Some(mut c) => stop_child(&mut c, Duration::from_secs(10)).is_some_and(|s| s.success()),
            None => true,
        }
    }

    /// Kills it with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client on its socket.
    pub async fn client(&self) -> SnapshotsClient<Channel> {
        client(&self.sock).await
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A gRPC client of the snapshots service on a unix socket.
pub async fn client(sock: &Path) -> SnapshotsClient<Channel> {
    let sock = sock.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://[::1]:1")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(sock).await?,
                ))
            }
        }))
        .await
        .expect("connect to the snapshotter");
    SnapshotsClient::new(channel)
}

// ---- containerd ----

/// What the containerd tests need: root, /dev/fuse, and Debian's containerd (which brings
/// ctr, runc and the runc shim), mount.fuse3 and a static busybox for the image.
pub fn can_run_containerd() -> bool {
    let have = |p: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
    };
    facility(is_root(), "root")
        && facility(crate::common::has_fuse(), "/dev/fuse")
        && facility(
            have("containerd") && have("ctr"),
            "containerd and ctr (package containerd)",
        )
        && facility(
            have("containerd-shim-runc-v2"),
            "containerd-shim-runc-v2 (package containerd)",
        )
        && facility(have("runc"), "runc")
        && facility(have("mount.fuse3"), "mount.fuse3 (package fuse3)")
        && facility(
            Path::new("/bin/busybox").is_file(),
            "/bin/busybox (package busybox-static)",
        )
}

/// Mount points under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// Unmounts everything under `dir` (lazily, deepest first).
pub fn unmount_all_under(dir: &Path) {
    for _ in 0..3 {
        let ms = mounts_under(dir);
        if ms.is_empty() {
            return;
        }
        for m in ms {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&m)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Processes whose command line mentions `needle` (the shims of one containerd name its
/// socket).
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .contains(needle)
            {
                out.push(pid);
            }
        }
    }
    out
}

/// A private containerd in `dir`, with the stratafs snapshotter at `snap_sock` as the proxy
/// plugin `stratafs`. Dropping it stops it and its shims and unmounts everything under
/// `dir`.
pub struct Containerd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// PATH with the stratafs daemon first (containerd and ctr run mount.fuse3, which runs
    /// `stratafs`).
    pub path: std::ffi::OsString,
}

impl Containerd {
    pub fn start(dir: &Path, snap_sock: &Path, daemon_dir: &Path) -> Containerd {
        let sock = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        fs::create_dir_all(dir).expect("containerd's directory");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[proxy_plugins.stratafs]
  type = "snapshot"
  address = "{snap}"
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = sock.display(),
                opt = dir.join("opt").display(),
                snap = snap_sock.display(),
            ),
        )
        .expect("write containerd's config");
        let mut dirs = vec![daemon_dir.to_path_buf()];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let mut c = Containerd {
            child: None,
            dir: dir.to_path_buf(),
            sock,
            config,
            log: dir.join("containerd.log"),
            path: std::env::join_paths(dirs).expect("PATH"),
        };
        c.restart();
        c
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("containerd log");
        let mut child = Command::new("containerd")
            .arg("--config")
            .arg(&self.config)
            .env("PATH", &self.path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let up = wait_until(Duration::from_secs(30), || {
            matches!(child.try_wait(), Ok(Some(_)))
                || (connectable(&self.sock) && self.ctr(&["version"]).status.success())
        });
        let alive = matches!(child.try_wait(), Ok(None));
        self.child = Some(child);
        assert!(
            up && alive,
            "containerd did not come up: {}",
            self.log_text()
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(15));
        }
    }

    pub fn log_text(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        // The end is what matters.
        let start = s.len().saturating_sub(6000);
        s.get(start..).unwrap_or(&s).to_string()
    }

    /// `ctr` against this containerd, namespace `sftest`.
    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.sock)
            .args(["--namespace", "sftest"])
            .args(args)
            .env("PATH", &self.path);
        c
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        run(&mut self.ctr_cmd(args))
    }

    /// Runs `ctr ARGS`, panicking with its output and containerd's log when it fails;
    /// returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log (end):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `ctr ARGS`, which must fail; returns stderr.
    pub fn ctr_fails(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            !out.status.success(),
            "ctr {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers first (their shims name containerd's socket), then containerd.
        let needle = self.sock.display().to_string();
        for pid in pids_mentioning(&needle) {
            if self.child.as_ref().map(Child::id) != Some(pid) {
                kill(pid, "KILL");
            }
        }
        self.stop();
        // Container rootfs mounts sit under its state directory, which is under dir.
        unmount_all_under(&self.dir);
    }
}

/// Kills every process whose command line names `dir` (snapshotters and stratafs daemons
/// started under it) and unmounts everything under it, when dropped.
pub struct ProcessesAndMountsUnder {
    pub dir: PathBuf,
}

impl Drop for ProcessesAndMountsUnder {
    fn drop(&mut self) {
        let needle = self.dir.display().to_string();
        for pid in pids_mentioning(&needle) {
            kill(pid, "TERM");
        }
        unmount_all_under(&self.dir);
        wait_until(Duration::from_secs(5), || {
            pids_mentioning(&needle).is_empty()
        });
        for pid in pids_mentioning(&needle) {
            kill(pid, "KILL");
        }
    }
}
