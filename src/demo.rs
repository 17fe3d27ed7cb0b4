//! `stratafs --demo`: mount the sample layer stack shipped with the sources and show it.
//!
//! The demo mounts `examples/sample-stack/layer{1,2,3}` exactly as a user would (by running
//! this same binary with `-o lowerdir=layer1:layer2:layer3 MOUNTPOINT`), walks the merged tree
//! through the mount, and labels every entry with the layers that provide it, asking the
//! library ([`Overlay::provenance`]) rather than guessing. It then lists what the upper layers
//! hide (whiteouts and opaque directories, read from the layer directories themselves) and
//! unmounts. A guard unmounts and removes the temporary mount point on every path out,
//! errors and Ctrl-C included.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::MountConfig;
use crate::layer::format;
use crate::overlay::Overlay;
use crate::sys::FileKind;

/// The layer directories of the sample stack, topmost first.
const LAYERS: [&str; 3] = ["layer1", "layer2", "layer3"];

/// Where the sample stack lives inside a source checkout.
const STACK_IN_SOURCES: &str = "examples/sample-stack";

/// How long the daemon may take to exit once unmounted.
const DAEMON_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the demo.
///
/// # Errors
/// One line saying what went wrong: the sample stack is missing, the mount failed, or the
/// demo was interrupted. The mount is gone by the time this returns, whatever happened.
pub fn run() -> Result<(), String> {
    let stack = find_stack()?;
    let layers: Vec<PathBuf> = LAYERS.iter().map(|l| stack.join(l)).collect();

    // Ctrl-C (or a SIGTERM) must not kill us with the mount still in place: note it instead,
    // stop at the next step and let the guard clean up.
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        let _ = signal_hook::flag::register(sig, Arc::clone(&interrupted));
    }
    let check = || -> Result<(), String> {
        if interrupted.load(Ordering::Relaxed) {
            Err("interrupted".to_string())
        } else {
            Ok(())
        }
    };

    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the stratafs executable: {e}"))?;
    let mut mount = DemoMount::create()?;
    let mnt = mount.dir.clone();

    println!(
        "stratafs demo: the sample layer stack in {}",
        stack.display()
    );
    println!(
        "  layers, top first: {} (no upperdir, so the union is read-only)",
        LAYERS.join(", ")
    );
    println!(
        "  mounting: stratafs -o lowerdir={} {}",
        LAYERS.join(":"),
        mnt.display()
    );
    mount.launch(&exe, &stack)?;
    check()?;

    // The same layers, opened by the library, answer "which layer provides this path?".
    let overlay = crate::daemon::open_overlay(&MountConfig::new(mnt.clone(), layers.clone()))
        .map_err(|e| format!("cannot open the layers: {e}"))?;
    let view = View {
        overlay: &overlay,
        layers: &layers,
        mnt: &mnt,
        interrupted: &interrupted,
    };
    let root_chain: Vec<usize> = (0..layers.len()).collect();
    let mut tree = vec![Row {
        left: "/".to_string(),
        right: view.describe(&root_chain, Path::new("")).0,
    }];
    view.walk(Path::new(""), &root_chain, "", &mut tree)?;
    println!();
    println!("The merged tree, and the layer each entry comes from:");
    print_rows(&tree);

    println!();
    println!("Hidden by the layers above (these names are not in the mount):");
    let mut hidden = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        hidden_in_layer(&layers, i, layer, Path::new(""), &mnt, &mut hidden);
    }
    if hidden.is_empty() {
        println!("  (nothing)");
    } else {
        print_rows(&hidden);
    }

    let os_release = fs::read_to_string(mnt.join("etc/os-release")).unwrap_or_default();
    if let Some(pretty) = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
    {
        println!();
        println!(
            "Reading etc/os-release through the mount gives the top layer's copy: {}",
            pretty.trim_matches('"')
        );
    }
    check()?;
    drop(overlay);

    mount.finish()?;
    println!();
    println!(
        "Unmounted; the daemon has exited. Layers to explore: {}",
        stack.display()
    );
    Ok(())
}

/// Where the Debian package installs the sample stack, under the executable's prefix
/// (`/usr/bin/stratafs` -> `/usr/share/stratafs/examples/sample-stack`).
const STACK_INSTALLED: &str = "share/stratafs";

/// Finds `examples/sample-stack`: in the source tree this binary was built from, else in a
/// checkout above the executable (`target/release/stratafs`), else where the package put it.
fn find_stack() -> Result<PathBuf, String> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join(STACK_IN_SOURCES);
    if is_stack(&built_from) {
        return Ok(built_from);
    }
    if let Ok(exe) = std::env::current_exe().and_then(fs::canonicalize) {
        for dir in exe.ancestors().skip(1) {
            for candidate in [
                dir.join(STACK_IN_SOURCES),
                dir.join(STACK_INSTALLED).join(STACK_IN_SOURCES),
            ] {
                if is_stack(&candidate) {
                    return Ok(candidate);
                }
            }
        }
    }
    Err(format!(
        "the sample layer stack is missing: expected {} (it ships with the stratafs sources; \
         run the demo from a checkout)",
        built_from.display()
    ))
}

fn is_stack(dir: &Path) -> bool {
    LAYERS.iter().all(|l| dir.join(l).is_dir())
}

/// The temporary mount point and, once launched, the mount on it. Dropping it unmounts,
/// waits for the daemon and removes the directory.
struct DemoMount {
    /// The mount point, canonical (so that it can be found in `/proc/self/mountinfo`).
    dir: PathBuf,
    /// True once the daemon may have mounted something.
    launched: bool,
    /// The daemon's pid, once found.
    daemon: Option<u32>,
    /// True once cleaned up.
    done: bool,
}

impl DemoMount {
    /// Creates `<tmp>/stratafs-demo-<pid>` (with a suffix if that name is taken).
    fn create() -> Result<DemoMount, String> {
        let tmp = std::env::temp_dir();
        let base = format!("stratafs-demo-{}", std::process::id());
        let mut last_err = None;
        for n in 0..100u32 {
            let name = if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            };
            let dir = tmp.join(name);
            match fs::create_dir(&dir) {
                Ok(()) => {
                    let dir = fs::canonicalize(&dir).unwrap_or(dir);
                    return Ok(DemoMount {
                        dir,
                        launched: false,
                        daemon: None,
                        done: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => {
                    return Err(format!(
                        "cannot create a mount point in {}: {e}",
                        tmp.display()
                    ))
                }
            }
        }
        Err(format!(
            "cannot create a mount point in {}: {}",
            tmp.display(),
            last_err.map(|e| e.to_string()).unwrap_or_default()
        ))
    }

    /// Runs `stratafs -o lowerdir=layer1:layer2:layer3 MOUNTPOINT` in the stack directory.
    /// The launcher returns once the mount is live, leaving the daemon running.
    fn launch(&mut self, exe: &Path, stack: &Path) -> Result<(), String> {
        self.launched = true;
        let status = Command::new(exe)
            .current_dir(stack)
            .arg("-o")
            .arg(format!("lowerdir={}", LAYERS.join(":")))
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        if !status.success() {
            return Err(format!(
                "mounting the sample stack failed ({status}); a FUSE mount needs root, or \
                 fusermount3 (apt-get install fuse3) and access to /dev/fuse"
            ));
        }
        if !is_mounted(&self.dir) {
            return Err("the daemon reported success but nothing is mounted".to_string());
        }
        self.daemon = daemon_pid(exe, &self.dir);
        Ok(())
    }

    /// Unmounts, waits for the daemon to exit and removes the mount point.
    fn finish(&mut self) -> Result<(), String> {
        self.done = true;
        let mut problems = Vec::new();
        if self.launched {
            if let Err(e) = unmount(&self.dir) {
                problems.push(e);
            }
            if let Some(pid) = self.daemon {
                let deadline = Instant::now() + DAEMON_EXIT_TIMEOUT;
                while process_alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if process_alive(pid) {
                    problems.push(format!(
                        "the daemon (pid {pid}) is still running {}s after the unmount",
                        DAEMON_EXIT_TIMEOUT.as_secs()
                    ));
                }
            }
        }
        if !is_mounted(&self.dir) {
            if let Err(e) = fs::remove_dir(&self.dir) {
                problems.push(format!("cannot remove {}: {e}", self.dir.display()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Drop for DemoMount {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.finish() {
                eprintln!("stratafs: demo: cleaning up: {e}");
            }
        }
    }
}

/// Unmounts a FUSE mount: `fusermount3 -u`, then lazily (`umount -l`, `fusermount3 -uz`,
/// then the system call directly) if it is still there.
fn unmount(dir: &Path) -> Result<(), String> {
    if !is_mounted(dir) {
        return Ok(());
    }
    let quiet = |cmd: &str, args: &[&str]| {
        let _ = Command::new(cmd)
            .args(args)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        !is_mounted(dir)
    };
    if quiet("fusermount3", &["-u"])
        || quiet("umount", &["-l"])
        || quiet("fusermount3", &["-u", "-z"])
    {
        return Ok(());
    }
    let _ = crate::sys::unmount_lazy(dir);
    if is_mounted(dir) {
        Err(format!(
            "{} is still mounted; unmount it with 'fusermount3 -u {}'",
            dir.display(),
            dir.display()
        ))
    } else {
        Ok(())
    }
}

/// True when `dir` (canonical) is a mount point, according to `/proc/self/mountinfo`.
fn is_mounted(dir: &Path) -> bool {
    crate::daemon::mount_device(dir).is_some()
}

/// The pid of the daemon serving `mountpoint`: a process running `exe` with `mountpoint` as
/// an argument (the launcher forked it and exited).
fn daemon_pid(exe: &Path, mountpoint: &Path) -> Option<u32> {
    let exe_name = exe.file_name()?.as_bytes().to_vec();
    let want = mountpoint.as_os_str().as_bytes();
    let me = std::process::id();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let runs_exe = args.first().is_some_and(|a| a.ends_with(&exe_name));
        if runs_exe && args.contains(&want) && process_alive(pid) {
            return Some(pid);
        }
    }
    None
}

/// True while `pid` exists and has not exited (a zombie has).
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// One output line: the tree (or path) on the left, the explanation on the right.
struct Row {
    left: String,
    right: String,
}

fn print_rows(rows: &[Row]) {
    let width = rows
        .iter()
        .map(|r| r.left.chars().count())
        .max()
        .unwrap_or(0);
    for r in rows {
        let pad = width - r.left.chars().count();
        if r.right.is_empty() {
            println!("  {}", r.left);
        } else {
            println!("  {}{}   {}", r.left, " ".repeat(pad), r.right);
        }
    }
}

/// The mounted view and the library's view of the same layers.
struct View<'a> {
    overlay: &'a Overlay,
    /// The layer directories, topmost first.
    layers: &'a [PathBuf],
    /// The mount point.
    mnt: &'a Path,
    /// Set by SIGINT / SIGTERM / SIGHUP.
    interrupted: &'a AtomicBool,
}

impl View<'_> {
    /// Walks directory `rel` of the mount (sorted, `tree`-style), adding one row per entry.
    /// `chain` is the merge chain of `rel`.
    fn walk(
        &self,
        rel: &Path,
        chain: &[usize],
        prefix: &str,
        rows: &mut Vec<Row>,
    ) -> Result<(), String> {
        if self.interrupted.load(Ordering::Relaxed) {
            return Err("interrupted".to_string());
        }
        let dir = self.mnt.join(rel);
        let mut names: Vec<OsString> = fs::read_dir(&dir)
            .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
            .map_err(|e| format!("cannot list {} through the mount: {e}", dir.display()))?;
        names.sort();
        let count = names.len();
        for (n, name) in names.into_iter().enumerate() {
            let last = n + 1 == count;
            let path = rel.join(&name);
            let full = self.mnt.join(&path);
            let meta = fs::symlink_metadata(&full)
                .map_err(|e| format!("cannot stat {} through the mount: {e}", path.display()))?;
            let mut left = format!(
                "{prefix}{}{}",
                if last { "└── " } else { "├── " },
                name.to_string_lossy()
            );
            if meta.is_dir() {
                left.push('/');
            } else if meta.file_type().is_symlink() {
                if let Ok(target) = fs::read_link(&full) {
                    let _ = write!(left, " -> {}", target.display());
                }
            }
            let (right, sub_chain) = self.describe(chain, &path);
            rows.push(Row { left, right });
            if meta.is_dir() {
                let sub_prefix = format!("{prefix}{}", if last { "    " } else { "│   " });
                self.walk(&path, &sub_chain, &sub_prefix, rows)?;
            }
        }
        Ok(())
    }

    /// Says where `rel` comes from, and returns its merge chain (the layers whose copies of
    /// a directory are merged), for describing its children. `parent_chain` is the merge
    /// chain of the directory holding `rel`: the only layers whose copies `rel` can override.
    fn describe(&self, parent_chain: &[usize], rel: &Path) -> (String, Vec<usize>) {
        let prov = match self.overlay.provenance(rel.as_os_str()) {
            Ok(p) => p,
            Err(e) => return (format!("? ({e})"), Vec::new()),
        };
        let chain: Vec<usize> = prov.layers.iter().map(|&l| usize::from(l)).collect();
        let Some(&top) = chain.first() else {
            return ("?".to_string(), chain);
        };
        let mut text = if prov.kind == FileKind::Directory && chain.len() > 1 {
            let names: Vec<&str> = chain.iter().map(|&i| layer_name(i)).collect();
            format!("merged: {}", names.join(" + "))
        } else {
            layer_name(top).to_string()
        };
        if prov.kind == FileKind::Directory {
            if prov.opaque {
                text.push_str(" (opaque: hides the layers below)");
            }
        } else {
            let overridden: Vec<&str> = parent_chain
                .iter()
                .filter(|&&j| j > top)
                .filter(|&&j| {
                    self.layers
                        .get(j)
                        .is_some_and(|l| fs::symlink_metadata(l.join(rel)).is_ok())
                })
                .map(|&j| layer_name(j))
                .collect();
            if !overridden.is_empty() {
                let _ = write!(text, " (overrides {})", overridden.join(", "));
            }
        }
        (text, chain)
    }
}

/// The name of layer `i` of the sample stack.
fn layer_name(i: usize) -> &'static str {
    LAYERS.get(i).copied().unwrap_or("?")
}

/// Finds the whiteouts and opaque markers in directory `rel` of layer `i` (recursively) and
/// adds a row for each, naming what it hides in the layers below.
fn hidden_in_layer(
    layers: &[PathBuf],
    i: usize,
    layer: &Path,
    rel: &Path,
    mnt: &Path,
    rows: &mut Vec<Row>,
) {
    let Ok(rd) = fs::read_dir(layer.join(rel)) else {
        return;
    };
    let mut names: Vec<OsString> = rd.flatten().map(|e| e.file_name()).collect();
    names.sort();
    let this = layer_name(i);
    let below = layers.iter().enumerate().skip(i + 1);
    for name in names {
        let path = rel.join(&name);
        if name.as_bytes() == format::OPAQUE_MARKER.as_bytes() {
            let mut hidden = Vec::new();
            for (j, lower) in below.clone() {
                let Ok(rd) = fs::read_dir(lower.join(rel)) else {
                    continue;
                };
                let mut lower_names: Vec<OsString> = rd
                    .flatten()
                    .map(|e| e.file_name())
                    .filter(|n| !format::is_reserved_name(n))
                    .collect();
                lower_names.sort();
                for n in lower_names {
                    let shown = n.to_string_lossy().into_owned();
                    hidden.push(format!("{shown} ({})", layer_name(j)));
                }
            }
            let what = if hidden.is_empty() {
                "nothing below".to_string()
            } else {
                hidden.join(", ")
            };
            rows.push(Row {
                left: format!("{}/", rel.display()),
                right: format!("opaque in {this} ({}): hides {what}", format::OPAQUE_MARKER),
            });
        } else if let Some(target) = format::whiteout_target(&name) {
            let hidden_path = rel.join(target);
            let mut copies = Vec::new();
            let mut is_dir = false;
            for (j, lower) in below.clone() {
                if let Ok(m) = fs::symlink_metadata(lower.join(&hidden_path)) {
                    is_dir |= m.is_dir();
                    copies.push(layer_name(j));
                }
            }
            let mut left = hidden_path.display().to_string();
            if is_dir {
                left.push('/');
            }
            let what = if copies.is_empty() {
                "nothing below".to_string()
            } else {
                format!("it in {}", copies.join(", "))
            };
            let mut right = format!(
                "deleted by {this} ({}): hides {what}",
                OsStr::new(&name).to_string_lossy()
            );
            if fs::symlink_metadata(mnt.join(&hidden_path)).is_ok() {
                right.push_str(" -- but it is visible in the mount!");
            }
            rows.push(Row { left, right });
        } else if fs::symlink_metadata(layer.join(&path)).is_ok_and(|m| m.is_dir()) {
            hidden_in_layer(layers, i, layer, &path, mnt, rows);
        }
    }
}
