//! The harness: a podman setup per mode, its storage configuration and mount program.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Prog {
    Stratafs,
    FuseOverlayfs,
}

impl Prog {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Prog::Stratafs => "stratafs",
            Prog::FuseOverlayfs => "fuse-overlayfs",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// Root podman, default store options.
    Root,
    /// Root podman with `overlay.force_mask=shared`: containers/storage keeps owners and modes
    /// in `user.containers.override_stat` and passes `xattr_permissions=2`.
    RootForceMask,
    /// Podman run by an unprivileged user with subordinate ids, `--userns=keep-id`.
    Rootless,
}

/// The unprivileged user of the rootless runs.
#[derive(Clone)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// An isolated podman setup whose `mount_program` is the logging wrapper around `real_prog`.
/// Dropping it removes every container, mount, daemon and file it made.
pub(crate) struct Podman {
    pub(crate) mode: Mode,
    pub(crate) prog: Prog,
    /// The program under test (a private copy for stratafs).
    pub(crate) real_prog: PathBuf,
    /// What `mount_program` names: tests/podman/mount-program.sh filled in.
    pub(crate) wrapper: PathBuf,
    pub(crate) argv_log: PathBuf,
    /// The test directory: everything below is this run's, and is removed at the end.
    pub(crate) dir: PathBuf,
    pub(crate) graphroot: PathBuf,
    pub(crate) runroot: PathBuf,
    /// Environment podman runs with (nothing else of the test's environment leaks in).
    pub(crate) env: Vec<(String, String)>,
    /// `--storage-opt` values, repeated on every command line.
    pub(crate) storage_opts: Vec<String>,
    /// Extra `podman run/create` options (rootless: `--userns=keep-id --user 0`).
    pub(crate) run_opts: Vec<String>,
    pub(crate) user: Option<User>,
    /// Hidden names that still resolved by lookup (probe lines), with where they were seen.
    pub(crate) lookups: RefCell<Vec<String>>,
    /// What root podman makes outside the store whatever it is told (containers/image's blob
    /// cache, the network run directory), where it did not exist before: removed at the end.
    pub(crate) host_leftovers: Vec<PathBuf>,
    /// Removes the directory last (unless `STRATAFS_PODMAN_KEEP` is set).
    pub(crate) _tmp: Option<tempfile::TempDir>,
}

impl Podman {
    pub(crate) fn new(mode: Mode, prog: Prog, user: Option<User>) -> Podman {
        let tmp = tempfile::Builder::new()
            .prefix("stratafs-podman-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let tmp = if std::env::var_os("STRATAFS_PODMAN_KEEP").is_some() {
            // Debugging: the store and images stay (containers and mounts are still removed).
            eprintln!("STRATAFS_PODMAN_KEEP: {} is kept", dir.display());
            let _ = tmp.keep();
            None
        } else {
            Some(tmp)
        };
        chmod(&dir, 0o755);
        let p = |s: &str| dir.join(s);
        for d in [
            "bin",
            "conf",
            "graph",
            "run",
            "home",
            "xdg",
            "state",
            "state/tmp",
            "work",
        ] {
            mkdir(&p(d), 0o755);
        }
        chmod(&p("xdg"), 0o700);
        let real_prog = match prog {
            Prog::Stratafs => {
                let dst = p("bin/stratafs");
                fs::copy(common::stable_stratafs_bin(), &dst).expect("copy stratafs");
                chmod(&dst, 0o755);
                dst
            }
            Prog::FuseOverlayfs => PathBuf::from(FUSE_OVERLAYFS),
        };
        let argv_log = p("argv.log");
        write(&argv_log, "", 0o666);
        let wrapper = p("bin/mount-program");
        write(
            &wrapper,
            &WRAPPER_SH
                .replace("@LOG@", &argv_log.display().to_string())
                .replace("@PROG@", &real_prog.display().to_string()),
            0o755,
        );
        let (graphroot, runroot, conf_dir) = (p("graph"), p("run"), p("conf"));
        let mut storage_opts = vec![format!("overlay.mount_program={}", wrapper.display())];
        let mut overlay_conf = format!("mount_program = \"{}\"\n", wrapper.display());
        if mode == Mode::Root {
            // The distributions' default; without it (the other setups) containers/storage
            // leaves an empty element in the options (`...,workdir=W,,volatile`).
            storage_opts.push("overlay.mountopt=nodev".to_string());
            overlay_conf.push_str("mountopt = \"nodev\"\n");
        }
        if mode == Mode::RootForceMask {
            storage_opts.push("overlay.force_mask=shared".to_string());
            overlay_conf.push_str("force_mask = \"shared\"\n");
        }
        fs::write(
            conf_dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n\n\
                 [storage.options]\nrootless_storage_path = \"{}\"\n\n\
                 [storage.options.overlay]\n{overlay_conf}",
                graphroot.display(),
                runroot.display(),
                graphroot.display()
            ),
        )
        .expect("storage.conf");
        fs::write(
            conf_dir.join("containers.conf"),
            format!(
                "[containers]\nnetns = \"none\"\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\nevents_logfile_path = \"{state}/events.log\"\n\
                 pull_policy = \"never\"\ntmp_dir = \"{state}/tmp\"\n\
                 image_copy_tmp_dir = \"{state}/tmp\"\n\
                 volume_path = \"{graph}/volumes\"\nstatic_dir = \"{graph}/libpod\"\n\n\
                 [network]\nnetwork_config_dir = \"{state}/net\"\n",
                state = p("state").display(),
                graph = graphroot.display()
            ),
        )
        .expect("containers.conf");
        for f in ["storage.conf", "containers.conf"] {
            chmod(&conf_dir.join(f), 0o644);
        }
        let home = p("home");
        let mut env = vec![
            (
                "PATH".to_string(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ),
            ("HOME".to_string(), home.display().to_string()),
            ("LC_ALL".to_string(), "C".to_string()),
            ("TMPDIR".to_string(), p("state/tmp").display().to_string()),
            (
                "CONTAINERS_STORAGE_CONF".to_string(),
                conf_dir.join("storage.conf").display().to_string(),
            ),
            (
                "CONTAINERS_CONF".to_string(),
                conf_dir.join("containers.conf").display().to_string(),
            ),
        ];
        let mut run_opts = Vec::new();
        if let Some(u) = &user {
            env.push((
                "XDG_RUNTIME_DIR".to_string(),
                p("xdg").display().to_string(),
            ));
            env.push((
                "XDG_CONFIG_HOME".to_string(),
                p("home/.config").display().to_string(),
            ));
            env.push(("USER".to_string(), u.name.clone()));
            for d in [
                "graph",
                "run",
                "home",
                "xdg",
                "state",
                "state/tmp",
                "work",
                "argv.log",
            ] {
                chown(&p(d), u.uid, u.gid);
            }
            run_opts = vec![
                "--userns=keep-id".to_string(),
                "--user".to_string(),
                "0".to_string(),
            ];
        }
        Podman {
            mode,
            prog,
            real_prog,
            wrapper,
            argv_log,
            dir,
            graphroot,
            runroot,
            env,
            storage_opts,
            run_opts,
            user,
            lookups: RefCell::new(Vec::new()),
            host_leftovers: ROOT_PODMAN_LEFTOVERS
                .iter()
                .map(PathBuf::from)
                .filter(|p| p.symlink_metadata().is_err())
                .collect(),
            _tmp: tmp,
        }
    }

    /// An expected state as this mode shows it. With `force_mask`, containers/storage itself
    /// records modes in `user.containers.override_stat` without the setuid, setgid and sticky
    /// bits (`0:0:0755` for a 4755 file of a layer it unpacks or commits), so no program can
    /// show them.
    pub(crate) fn expect(&self, state: &str) -> String {
        match self.mode {
            Mode::RootForceMask => state.replace(" 4755 ", " 755 "),
            _ => state.to_string(),
        }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The full podman command line for `args` (run as the rootless user when there is one).
    pub(crate) fn command(&self, args: &[&str]) -> (Command, String) {
        let mut pargs: Vec<String> = vec![
            "--root".into(),
            self.graphroot.display().to_string(),
            "--runroot".into(),
            self.runroot.display().to_string(),
            "--storage-driver".into(),
            "overlay".into(),
        ];
        // With `--root` on the command line podman drops the driver options of storage.conf
        // (the store would silently run without a mount program), so they are repeated here.
        for o in &self.storage_opts {
            pargs.push("--storage-opt".into());
            pargs.push(o.clone());
        }
        pargs
            .extend(["--cgroup-manager", "cgroupfs", "--events-backend", "file"].map(String::from));
        pargs.extend(args.iter().map(|s| s.to_string()));
        let what = format!("podman {}", args.join(" "));
        let mut cmd = match &self.user {
            None => {
                let mut c = Command::new("podman");
                c.env_clear();
                for (k, v) in &self.env {
                    c.env(k, v);
                }
                c.args(&pargs);
                c
            }
            Some(u) => {
                let mut c = Command::new("runuser");
                c.env_clear()
                    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                    .args(["-u", &u.name, "--", "env", "-i"]);
                for (k, v) in &self.env {
                    c.arg(format!("{k}={v}"));
                }
                c.arg("podman").args(&pargs);
                c
            }
        };
        cmd.current_dir(&self.dir);
        (cmd, what)
    }

    pub(crate) fn run(&self, args: &[&str]) -> Out {
        let (mut cmd, what) = self.command(args);
        exec(&mut cmd, what, PODMAN_TIMEOUT)
    }

    /// Runs podman, returning its stdout, or an error naming the command and its output.
    pub(crate) fn ok(&self, args: &[&str]) -> Result<String, String> {
        self.run(args).ok()
    }

    /// `podman run --rm` of `image` with the run options of this mode and `cmd...`.
    pub(crate) fn run_rm(
        &self,
        extra: &[&str],
        image: &str,
        cmd: &[&str],
    ) -> Result<String, String> {
        let mut a: Vec<&str> = vec!["run", "--rm", "--network", "none", "--pull", "never"];
        a.extend(self.run_opts.iter().map(String::as_str));
        a.extend(extra);
        a.push(image);
        a.extend(cmd);
        self.ok(&a)
    }

    /// The state of `trees` in a fresh container of `image`; the lookup probe of `gone` is
    /// recorded (see [`Podman::keep_lookups`]).
    pub(crate) fn image_state(
        &self,
        image: &str,
        trees: &[&str],
        gone: &[&str],
    ) -> Result<String, String> {
        let script = state_and_probe(gone);
        let mut cmd = vec!["sh", "-c", script.as_str(), "sh", "/"];
        cmd.extend(trees);
        let out = self.run_rm(&[], image, &cmd)?;
        Ok(self.keep_lookups(image, out))
    }

    /// Takes the probe lines (`still resolves: P`) out of `out` and records them, with
    /// `context`, for the `lookup_agrees_with_readdir` check.
    pub(crate) fn keep_lookups(&self, context: &str, out: String) -> String {
        let mut rest = String::new();
        for l in out.lines() {
            if l.starts_with("still resolves: ") {
                self.lookups.borrow_mut().push(format!("{context}: {l}"));
            } else {
                rest.push_str(l);
                rest.push('\n');
            }
        }
        rest
    }

    /// Mount points under this run's directory, as the mount program's namespace sees them
    /// (the host's for root podman; the rootless podman's own mount namespace otherwise).
    pub(crate) fn live_mounts(&self) -> Result<Vec<String>, String> {
        let file = match (&self.user, self.pause_pid()) {
            (None, _) => "/proc/self/mountinfo".to_string(),
            (Some(_), Some(pid)) => format!("/proc/{pid}/mountinfo"),
            (Some(_), None) => {
                return Err(
                    "rootless podman's pause process (holder of its mount namespace) \
                            is not running"
                        .to_string(),
                )
            }
        };
        let info = fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?;
        Ok(mounts_under(&info, &self.dir))
    }

    /// The merged directory of container `name`.
    pub(crate) fn merged_dir(&self, name: &str) -> Result<String, String> {
        Ok(self
            .ok(&[
                "inspect",
                "--format",
                "{{.GraphDriver.Data.MergedDir}}",
                name,
            ])?
            .trim()
            .to_string())
    }

    /// Pids of mount-program daemons serving this run's graphroot.
    pub(crate) fn live_daemons(&self) -> Vec<u32> {
        let graph = self.graphroot.display().to_string();
        procs_matching(|args| {
            let first = args.first().map(String::as_str).unwrap_or("");
            !first.ends_with("podman")
                && args
                    .iter()
                    .any(|a| a.contains("lowerdir=") && a.contains(&graph))
        })
    }

    /// The rootless podman's pause process (keeper of its user and mount namespaces).
    pub(crate) fn pause_pid(&self) -> Option<u32> {
        self.user.as_ref()?;
        // In containers.conf's tmp_dir (ours), or under $XDG_RUNTIME_DIR by default.
        ["state/tmp/pause.pid", "xdg/libpod/tmp/pause.pid"]
            .iter()
            .find_map(|f| {
                let pid: u32 = fs::read_to_string(self.path(f)).ok()?.trim().parse().ok()?;
                let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let first = cmd.split(|b| *b == 0).next().unwrap_or_default();
                let name = String::from_utf8_lossy(first);
                (name.contains("catatonit") || name.contains("podman")).then_some(pid)
            })
    }

    /// The argv lines the wrapper logged.
    pub(crate) fn argv_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.argv_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Removes every container, then waits until no mount or daemon of this run is left.
    pub(crate) fn wait_clean(&self, limit: Duration) -> Result<(), String> {
        self.ok(&["rm", "--all", "--force", "--time", "0"])?;
        let left = self.ok(&["ps", "--all", "--quiet"])?;
        if !left.trim().is_empty() {
            return Err(format!("containers left after `podman rm -af`: {left}"));
        }
        let start = Instant::now();
        loop {
            let (m, d) = (self.live_mounts()?, self.live_daemons());
            if m.is_empty() && d.is_empty() {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "{:?} after `podman rm -af`: mounts left {m:?}, daemons still running {d:?}",
                    limit
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first, as podman would clean up; the store is removed with the directory.
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.run(&["umount", "--all", "--force"]);
        let _ = self.run(&["image", "umount", "--all", "--force"]);
        if let Some(pid) = self.pause_pid() {
            kill(pid);
        }
        // Whatever still runs from this directory: mount daemons, conmon, a hung podman.
        let dir = self.dir.display().to_string();
        let me = std::process::id();
        for pid in procs_matching(|args| args.iter().any(|a| a.contains(&dir))) {
            if pid != me {
                kill(pid);
            }
        }
        // The rootless namespace went with its pause process; the host's is what is left.
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts = mounts_under(&info, &self.dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let quiet = || std::process::Stdio::null();
            let ok = Command::new("umount")
                .arg(&m)
                .stderr(quiet())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&m)
                    .stderr(quiet())
                    .status();
            }
        }
        for p in &self.host_leftovers {
            let _ = fs::remove_file(p).or_else(|_| fs::remove_dir(p));
        }
        // Store files belong to subordinate ids and may be read-only: make them removable.
        let _ = Command::new("chmod")
            .args(["-R", "u+rwX"])
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Mount points under `dir` in a mountinfo text.
pub(crate) fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_string)
        .collect()
}

/// Pids of processes whose argv satisfies `f`.
pub(crate) fn procs_matching(f: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.is_empty() && f(&args) {
            out.push(pid);
        }
    }
    out
}

/// SIGTERM, then SIGKILL if it is still there a moment later.
pub(crate) fn kill(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let gone = common::wait_until(Duration::from_secs(3), || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true)
    });
    if !gone {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
}

/// The rootless user, created with subordinate uid and gid ranges when missing.
pub(crate) fn rootless_user() -> User {
    let id = |flag: &str| -> Option<u32> {
        sh(&format!("id {flag} {ROOTLESS_USER} 2>/dev/null"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    if id("-u").is_none() {
        sh(&format!(
            "useradd --no-create-home --user-group --home-dir /nonexistent \
             --shell /usr/sbin/nologin {ROOTLESS_USER}"
        ))
        .unwrap_or_else(|e| panic!("cannot create the rootless user: {e}"));
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = fs::read_to_string(file).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.split(':').next() == Some(ROOTLESS_USER))
        {
            continue;
        }
        // A free range of 65536 ids above every range already given out.
        let start = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some(f.get(1)?.parse::<u64>().ok()? + f.get(2)?.parse::<u64>().ok()?)
            })
            .max()
            .unwrap_or(100_000)
            .max(200_000);
        let line = format!("{ROOTLESS_USER}:{start}:65536\n");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(file)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        std::io::Write::write_all(&mut f, line.as_bytes()).expect("write subid");
    }
    User {
        name: ROOTLESS_USER.to_string(),
        uid: id("-u").expect("uid"),
        gid: id("-g").expect("gid"),
    }
}
