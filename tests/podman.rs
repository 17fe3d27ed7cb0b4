//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! End to end with a real podman (issue 6): stratafs as containers/storage's `mount_program`,
//! for root and rootless podman, with no other change than the path in `storage.conf`.
//!
//! Every run gets an isolated store (its own graphroot, runroot, `storage.conf` and
//! `containers.conf`: runtime runc, cgroupfs, no network, file events, no pulls) whose
//! `mount_program` is a logging wrapper (`tests/podman/mount-program.sh`) around the program
//! under test. The images are made here, with no registry: a busybox rootfs through
//! `podman import`, a hand-made three-layer docker-archive through `podman load` (file and
//! directory whiteouts, an opaque directory, a directory replaced by a file and a file by a
//! directory), and `podman build`s with several RUN and COPY steps.
//!
//! Every setup (root; root with `force_mask`, which makes containers/storage pass
//! `xattr_permissions=2`; rootless with `--userns=keep-id`, which makes it pass
//! `uidmapping=`/`gidmapping=`) runs the same named checks in two tests, one with stratafs
//! and one with `/usr/bin/fuse-overlayfs` as the mount program, so the checks are proven
//! against the program podman was built for: every check must pass with both, except those
//! [`FUSE_OVERLAYFS_KNOWN_BUGS`] names, which fuse-overlayfs fails because of its own bugs
//! (reported as such; stratafs must pass them too). Each test prints the argv podman gave the
//! mount program. `STRATAFS_PODMAN_KEEP=1` keeps the store directory for a look afterwards.
//!
//! Without root, `/dev/fuse`, podman, runc, a static busybox (or, for the rootless and
//! fuse-overlayfs tests, runuser/newuidmap and fuse-overlayfs) a test prints SKIPPED and
//! passes; with `CI=true` it fails. The tests take a process-wide lock: podman runs are heavy,
//! and the rootless test opens `/dev/fuse` to everyone for its duration.

mod common;

use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{facility, DevFuseOpen};

/// The user the rootless runs use (created, with subordinate ids, when missing).
const ROOTLESS_USER: &str = "stratafs-podman";
const FUSE_OVERLAYFS: &str = "/usr/bin/fuse-overlayfs";
/// How long one podman command may take before it is killed and the check fails.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(180);

const BUSYBOX_IMAGE: &str = "localhost/strata-busybox:latest";
const LAYERS_IMAGE: &str = "localhost/strata-layers:latest";
const COMMITTED_IMAGE: &str = "localhost/strata-committed:latest";
const BUILT_IMAGE: &str = "localhost/strata-built:latest";
const RECREATED_IMAGE: &str = "localhost/strata-recreated:latest";

const STATE_SH: &str = include_str!("podman/state.sh");
const WRITES_SH: &str = include_str!("podman/writes.sh");
const WRAPPER_SH: &str = include_str!("podman/mount-program.sh");
const CONTAINERFILE: &str = include_str!("podman/Containerfile");
const CONTAINERFILE_RECREATED: &str = include_str!("podman/Containerfile.recreated");

/// Every podman setup.
const ALL: &[Mode] = &[Mode::Root, Mode::RootForceMask, Mode::Rootless];

/// fuse-overlayfs 1.10 with `xattr_permissions=2`, seen through podman.
const XATTR2_BUG: &str = "with xattr_permissions=2 (force_mask) fuse-overlayfs records the \
    forced on-disk mode as the mode of every file it creates or copies up \
    (user.fuseoverlayfs.override_stat=0:0:100755), so a file made 0644 (or a copied-up 0640 file) \
    shows 0755 and a copied-up directory loses its owner; and the read-only mount podman \
    diffs against shows a copied-up file with the mode and owner of the layer's \
    user.containers.override_stat, so chmod and chown made in the container are lost in the \
    committed image";

/// Checks fuse-overlayfs 1.10 fails because of its own bugs, in which setups, and why. Only
/// these may fail with fuse-overlayfs; with stratafs every check must pass.
const FUSE_OVERLAYFS_KNOWN_BUGS: &[(&[Mode], &str, &str)] = &[
    (
        ALL,
        "lookup_agrees_with_readdir",
        "names hidden by an opaque directory of a lower layer (`.wh..wh..opq`), and names below \
         a whiteout once the directory re-created above it exists in two layers (a copy-up, or \
         a committed layer), are not listed but still resolve by lookup",
    ),
    (
        ALL,
        "copyup_keeps_parent_mtime",
        "a copy-up changes the parent directory's mtime in the upper layer (the kernel restores \
         it), so the committed image carries a new mtime for a directory nobody touched",
    ),
    (
        ALL,
        "recreated_dir",
        "after `rm -r D; mkdir D` the names of the old lower D are no longer listed but still \
         resolve by lookup (stat, open); podman's diff lstats every name of the parent tree \
         inside the container tree, so `podman diff` misses their deletion and the committed \
         image resurrects them",
    ),
    (
        ALL,
        "build_recreated_dir",
        "the same lookup bug in a RUN step: `rm -r D && mkdir D` in one step, and the next \
         layer (and the built image) shows D's old files again",
    ),
    (&[Mode::RootForceMask], "container_writes", XATTR2_BUG),
    (&[Mode::RootForceMask], "diff", XATTR2_BUG),
    (&[Mode::RootForceMask], "restart", XATTR2_BUG),
    (&[Mode::RootForceMask], "commit", XATTR2_BUG),
    (&[Mode::RootForceMask], "export", XATTR2_BUG),
    (&[Mode::RootForceMask], "build", XATTR2_BUG),
];

static SERIAL: Mutex<()> = Mutex::new(());

/// Files and (then empty) directories root podman creates outside the store, innermost first.
const ROOT_PODMAN_LEFTOVERS: &[&str] = &[
    "/var/lib/containers/cache/blob-info-cache-v1.boltdb",
    "/var/lib/containers/cache",
    "/var/lib/containers",
    "/run/containers/networks",
    "/run/containers",
];

// ---------------------------------------------------------------------------------------------
// Expected trees (output of tests/podman/state.sh)
// ---------------------------------------------------------------------------------------------

/// `/data` of the hand-made layered image: a line from every layer, nothing whited out.
const LAYERS_STATE: &str = "\
/data dir 755 0:0
/data/deep dir 755 0:0
/data/deep/a dir 755 0:0
/data/deep/a/b dir 755 0:0
/data/deep/a/b/c.txt file 644 0:0 = deep|
/data/deep/a/b/d.txt file 644 0:0 = d2|
/data/dir_del dir 755 0:0
/data/dir_del/c file 644 0:0 = c|
/data/exec.sh file 755 0:0 = #!/bin/sh|echo exec-ok|
/data/file_to_dir dir 755 0:0
/data/file_to_dir/inner.txt file 644 0:0 = inner|
/data/hard1 file 644 0:0 = hard|
/data/hard2 file 644 0:0 = hard|
/data/keep.txt file 644 0:0 = keep|
/data/l1only.txt file 644 0:0 = l1|
/data/l3.txt file 644 0:0 = l3|
/data/mod.txt file 644 0:0 = v2|
/data/opq dir 755 0:0
/data/opq/new1 file 644 0:0 = new1|
/data/opq/new3 file 644 0:0 = new3|
/data/owned dir 750 1000:1000
/data/owned/f file 640 1000:1000 = owned|
/data/replace_dir file 644 0:0 = nowfile|
/data/suid file 4755 0:0 = suid|
/data/sym_l1 link 0:0 -> l1only.txt
";

/// Names of the layered image that whiteouts, opaque directories and replacements hide.
const LAYERS_GONE: &[&str] = &[
    "/data/del.txt",
    "/data/.wh.del.txt",
    "/data/.wh.dir_del",
    "/data/.wh.l2only.txt",
    "/data/dir_del/a",
    "/data/dir_del/sub",
    "/data/dir_del/sub/b",
    "/data/opq/old1",
    "/data/opq/sub",
    "/data/opq/sub/old3",
    "/data/opq/.wh..wh..opq",
    "/data/replace_dir/x",
    "/data/l2only.txt",
];

/// `/data` after tests/podman/writes.sh, with `/data/stamp` holding `stamp`.
fn written_state(stamp: &str) -> String {
    format!(
        "\
/data dir 755 0:0
/data/dir_del dir 755 0:0
/data/dir_del/c2 file 644 0:0 = x|
/data/exec.sh file 755 1234:5678 = #!/bin/sh|echo exec-ok|
/data/file_to_dir dir 755 0:0
/data/file_to_dir/renamed.txt file 644 0:0 = inner|
/data/hard1 file 644 0:0 = hard|
/data/hard2 file 644 0:0 = hard|
/data/l1hard file 644 0:0 = l1|
/data/l1only.txt file 644 0:0 = l1|
/data/l3moved.txt file 644 0:0 = l3|
/data/mod.txt file 644 0:0 = v2|more|
/data/newdir dir 755 0:0
/data/newdir/sub dir 755 0:0
/data/newdir/sub/n.txt file 644 0:0 = n|
/data/newlink link 0:0 -> mod.txt
/data/opq dir 755 0:0
/data/opq/new1 file 644 0:0 = new1|
/data/opq/new3 file 644 0:0 = new3|
/data/owned dir 750 1000:1000
/data/owned/f file 640 1000:1000 = owned|more|
/data/replace_dir file 600 0:0 = nowfile|
/data/stamp file 644 0:0 = {stamp}
/data/suid file 4755 0:0 = suid|
/data/sym_l1 link 0:0 -> l1only.txt
"
    )
}

/// Names writes.sh removes (on top of [`LAYERS_GONE`]).
const WRITES_GONE: &[&str] = &[
    "/data/keep.txt",
    "/data/deep",
    "/data/deep/a/b/c.txt",
    "/data/deep/a/b/d.txt",
    "/data/file_to_dir/inner.txt",
    "/data/dir_del/c",
    "/data/l3.txt",
];

/// `podman diff` of the container that ran writes.sh, restricted to `/data`.
const WRITES_DIFF: &str = "\
C /data
C /data/mod.txt
D /data/keep.txt
D /data/deep
C /data/replace_dir
C /data/file_to_dir
D /data/file_to_dir/inner.txt
A /data/file_to_dir/renamed.txt
A /data/newlink
A /data/newdir
A /data/newdir/sub
A /data/newdir/sub/n.txt
C /data/dir_del
D /data/dir_del/c
A /data/dir_del/c2
A /data/l1hard
D /data/l3.txt
A /data/l3moved.txt
C /data/exec.sh
C /data/owned
C /data/owned/f
A /data/stamp
";

/// `/app` and `/data` of the image tests/podman/Containerfile builds.
const BUILT_STATE: &str = "\
/app dir 755 0:0
/app/b.sh file 4755 0:0 = b|
/app/b2.sh file 644 1000:1000 = b|
/app/dirlink link 0:0 -> ../data/f2d_moved
/app/link link 0:0 -> /data/mod.txt
/app/secret file 700 0:0 = secret|
/data dir 755 0:0
/data/deep dir 755 0:0
/data/deep/a dir 755 0:0
/data/deep/a/b dir 755 0:0
/data/deep/a/b/c.txt file 644 0:0 = deep|
/data/deep/a/b/d.txt file 644 0:0 = d2|
/data/dir_del dir 755 0:0
/data/dir_del/c file 644 0:0 = c|
/data/exec.sh file 755 0:0 = #!/bin/sh|echo exec-ok|
/data/f2d_moved dir 755 0:0
/data/f2d_moved/inner.txt file 644 0:0 = inner|
/data/hard2 file 644 0:0 = hard|
/data/l1moved.txt file 644 0:0 = l1|
/data/l3.txt file 644 0:0 = l3|
/data/mod.txt file 644 0:0 = v2|v3|
/data/opq dir 755 0:0
/data/opq/new1 file 644 0:0 = new1|
/data/opq/new3 file 644 0:0 = new3|
/data/owned dir 750 1000:1000
/data/owned/f file 600 1000:1000 = owned|
/data/replace_dir file 644 0:0 = nowfile|
/data/suid file 4755 0:0 = suid|
/data/sym_l1 link 0:0 -> l1only.txt
";

const BUILT_GONE: &[&str] = &[
    "/data/keep.txt",
    "/data/l1only.txt",
    "/data/file_to_dir",
    "/data/hard1",
    "/app/a.txt",
    "/app/renamed.txt",
    "/app/tmpdir",
];

// ---------------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------------

/// What a finished (or killed) command left.
struct Out {
    /// Exit code; `None` when it was killed by a signal or the timeout.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    what: String,
}

impl Out {
    fn ok(self) -> Result<String, String> {
        if self.code == Some(0) {
            Ok(self.stdout)
        } else {
            Err(self.failure())
        }
    }

    fn failure(&self) -> String {
        format!(
            "`{}` {}\n--- stdout:\n{}--- stderr:\n{}",
            self.what,
            match self.code {
                Some(c) => format!("exited {c}"),
                None => "was killed (signal or timeout)".to_string(),
            },
            tail(&self.stdout, 40),
            tail(&self.stderr, 40)
        )
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    let start = v.len().saturating_sub(lines);
    let mut out = v[start..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// Runs `cmd` in its own process group with stdout and stderr captured apart (in files, so
/// daemons that inherit them cannot hold the call up), killing the group after `limit`.
fn exec(cmd: &mut Command, what: String, limit: Duration) -> Out {
    use std::io::{Read, Seek};
    let mut o = tempfile::tempfile().expect("tempfile");
    let mut e = tempfile::tempfile().expect("tempfile");
    let spawned = cmd
        .stdin(std::process::Stdio::null())
        .stdout(o.try_clone().expect("dup"))
        .stderr(e.try_clone().expect("dup"))
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(err) => {
            return Out {
                code: None,
                stdout: String::new(),
                stderr: format!("cannot run: {err}"),
                what,
            }
        }
    };
    let start = Instant::now();
    let code = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s.code(),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(format!("-{}", child.id()))
                    .status();
                let _ = child.wait();
                break None;
            }
        }
    };
    let read = |f: &mut fs::File| {
        let mut b = Vec::new();
        let _ = f.rewind();
        let _ = f.read_to_end(&mut b);
        String::from_utf8_lossy(&b).into_owned()
    };
    Out {
        code,
        stdout: read(&mut o),
        stderr: read(&mut e),
        what,
    }
}

fn sh(cmd: &str) -> Result<String, String> {
    exec(
        Command::new("sh").arg("-c").arg(cmd),
        cmd.to_string(),
        PODMAN_TIMEOUT,
    )
    .ok()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// True for an ELF executable without a program interpreter (statically linked).
fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = fs::read(path) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= b.len() && u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) != 3
    })
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn write(path: &Path, content: &str, mode: u32) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chmod(path, mode);
}

fn mkdir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    chmod(path, mode);
}

/// Compares two line lists as sets of lines, naming what is missing and what is extra.
fn same_lines(what: &str, got: &str, want: &str) -> Result<(), String> {
    let mut g: Vec<&str> = got.lines().collect();
    let mut w: Vec<&str> = want.lines().collect();
    g.sort_unstable();
    w.sort_unstable();
    if g == w {
        return Ok(());
    }
    let show = |v: Vec<&str>| {
        if v.is_empty() {
            "(none)".to_string()
        } else {
            v.join("\n    ")
        }
    };
    let missing = show(w.iter().filter(|l| !g.contains(l)).copied().collect());
    let extra = show(g.iter().filter(|l| !w.contains(l)).copied().collect());
    Err(format!(
        "{what}: output differs from the expected one\n  missing (expected, not seen):\n    {missing}\n  \
         unexpected (seen, not expected):\n    {extra}"
    ))
}

/// A shell snippet printing `still resolves: P` for each path that exists (lookup), so a
/// whited-out name found by stat/open though readdir no longer lists it shows up.
fn probe_gone(paths: &[&str]) -> String {
    let list: Vec<String> = paths.iter().map(|p| format!("'{p}'")).collect();
    format!(
        "for p in {}; do if [ -e \"$p\" ] || [ -L \"$p\" ]; then echo \"still resolves: $p\"; fi; done\n",
        list.join(" ")
    )
}

/// The state script followed by the lookup probe, as one `sh -c` program taking the root
/// and the listed trees as arguments.
fn state_and_probe(gone: &[&str]) -> String {
    format!("{STATE_SH}\n{}", probe_gone(gone))
}

// ---------------------------------------------------------------------------------------------
// Images made by hand
// ---------------------------------------------------------------------------------------------

/// `dir/bin/busybox` (static) and a symlink for every applet, plus the usual top directories.
fn busybox_rootfs(dir: &Path) {
    mkdir(&dir.join("bin"), 0o755);
    fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("copy busybox");
    chmod(&dir.join("bin/busybox"), 0o755);
    let list = sh("/bin/busybox --list").expect("busybox --list");
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet != "busybox" {
            let _ = symlink("busybox", dir.join("bin").join(applet));
        }
    }
    write(
        &dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    );
    write(&dir.join("etc/group"), "root:x:0:\n", 0o644);
    chmod(&dir.join("etc"), 0o755);
    mkdir(&dir.join("tmp"), 0o1777);
    mkdir(&dir.join("root"), 0o700);
}

/// Tars `dir`'s content (names without `./`), owners as they are on disk.
fn tar_dir(dir: &Path, out: &Path) {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("readdir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let o = exec(
        Command::new("tar")
            .args(["--sort=name", "--mtime=@0", "--numeric-owner", "-C"])
            .arg(dir)
            .arg("-cf")
            .arg(out)
            .args(&names),
        format!("tar -C {} -cf {}", dir.display(), out.display()),
        PODMAN_TIMEOUT,
    );
    o.ok().unwrap_or_else(|e| panic!("{e}"));
}

fn sha256(path: &Path) -> String {
    let out = sh(&format!("sha256sum '{}'", path.display())).expect("sha256sum");
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The three layers of the hand-made image, as directories as a layer tar holds them.
fn make_layer_dirs(base: &Path) -> Vec<PathBuf> {
    let (l1, l2, l3) = (base.join("L1"), base.join("L2"), base.join("L3"));
    // Layer 1: busybox and the base /data tree.
    busybox_rootfs(&l1);
    let d = l1.join("data");
    mkdir(&d, 0o755);
    write(&d.join("keep.txt"), "keep\n", 0o644);
    write(&d.join("del.txt"), "del\n", 0o644);
    write(&d.join("dir_del/a"), "a\n", 0o644);
    write(&d.join("dir_del/sub/b"), "b\n", 0o644);
    write(&d.join("opq/old1"), "old1\n", 0o644);
    write(&d.join("opq/sub/old3"), "old3\n", 0o644);
    write(&d.join("replace_dir/x"), "x\n", 0o644);
    write(&d.join("file_to_dir"), "f2d\n", 0o644);
    write(&d.join("mod.txt"), "v1\n", 0o644);
    write(&d.join("l1only.txt"), "l1\n", 0o644);
    write(&d.join("deep/a/b/c.txt"), "deep\n", 0o644);
    write(&d.join("hard1"), "hard\n", 0o644);
    fs::hard_link(d.join("hard1"), d.join("hard2")).expect("link");
    write(&d.join("exec.sh"), "#!/bin/sh\necho exec-ok\n", 0o755);
    write(&d.join("suid"), "suid\n", 0o4755);
    symlink("l1only.txt", d.join("sym_l1")).expect("symlink");
    write(&d.join("owned/f"), "owned\n", 0o640);
    chmod(&d.join("owned"), 0o750);
    chown(&d.join("owned"), 1000, 1000);
    chown(&d.join("owned/f"), 1000, 1000);
    for sub in [
        "dir_del",
        "dir_del/sub",
        "opq",
        "opq/sub",
        "replace_dir",
        "deep",
    ] {
        chmod(&d.join(sub), 0o755);
    }
    for sub in ["deep/a", "deep/a/b"] {
        chmod(&d.join(sub), 0o755);
    }

    // Layer 2: whiteouts of a file and a directory, an opaque directory, a directory
    // replaced by a file, a file replaced by a directory, a changed file, a merged subtree.
    let d = l2.join("data");
    mkdir(&d, 0o755);
    write(&d.join(".wh.del.txt"), "", 0o644);
    write(&d.join(".wh.dir_del"), "", 0o644);
    write(&d.join("opq/.wh..wh..opq"), "", 0o644);
    write(&d.join("opq/new1"), "new1\n", 0o644);
    write(&d.join("replace_dir"), "nowfile\n", 0o644);
    write(&d.join("file_to_dir/inner.txt"), "inner\n", 0o644);
    write(&d.join("mod.txt"), "v2\n", 0o644);
    write(&d.join("l2only.txt"), "l2\n", 0o644);
    write(&d.join("deep/a/b/d.txt"), "d2\n", 0o644);
    for sub in ["opq", "file_to_dir", "deep", "deep/a", "deep/a/b"] {
        chmod(&d.join(sub), 0o755);
    }

    // Layer 3: a directory re-created above its whiteout, a whiteout of a layer-2 file, a
    // file added to the opaque directory.
    let d = l3.join("data");
    mkdir(&d, 0o755);
    write(&d.join("dir_del/c"), "c\n", 0o644);
    chmod(&d.join("dir_del"), 0o755);
    write(&d.join(".wh.l2only.txt"), "", 0o644);
    write(&d.join("l3.txt"), "l3\n", 0o644);
    write(&d.join("opq/new3"), "new3\n", 0o644);
    chmod(&d.join("opq"), 0o755);
    vec![l1, l2, l3]
}

/// A docker-archive (`docker save` format) of the layer directories, tagged `tag`.
fn docker_archive(layers: &[PathBuf], work: &Path, tag: &str, out: &Path) {
    mkdir(work, 0o755);
    let mut names = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for (i, dir) in layers.iter().enumerate() {
        let name = format!("layer{}.tar", i + 1);
        let tarball = work.join(&name);
        tar_dir(dir, &tarball);
        diff_ids.push(format!("\"sha256:{}\"", sha256(&tarball)));
        history.push(format!(
            "{{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"stratafs test layer {}\"}}",
            i + 1
        ));
        names.push(format!("\"{name}\""));
    }
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"1970-01-01T00:00:00Z\",\
         \"config\":{{\"Env\":[\"PATH=/bin\"],\"Cmd\":[\"/bin/sh\"]}},\
         \"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}},\"history\":[{}]}}",
        diff_ids.join(","),
        history.join(",")
    );
    fs::write(work.join("config.json"), &config).expect("config");
    let manifest = format!(
        "[{{\"Config\":\"config.json\",\"RepoTags\":[\"{tag}\"],\"Layers\":[{}]}}]",
        names.join(",")
    );
    fs::write(work.join("manifest.json"), manifest).expect("manifest");
    let mut members = vec!["manifest.json".to_string(), "config.json".to_string()];
    members.extend((1..=layers.len()).map(|i| format!("layer{i}.tar")));
    exec(
        Command::new("tar")
            .arg("-C")
            .arg(work)
            .arg("-cf")
            .arg(out)
            .args(&members),
        "tar docker-archive".into(),
        PODMAN_TIMEOUT,
    )
    .ok()
    .unwrap_or_else(|e| panic!("{e}"));
    chmod(out, 0o644);
}

/// The names in a tar archive, without `./` and trailing `/`.
fn tar_names(tarball: &Path) -> Result<Vec<String>, String> {
    let out = exec(
        Command::new("tar").arg("-tf").arg(tarball),
        format!("tar -tf {}", tarball.display()),
        PODMAN_TIMEOUT,
    )
    .ok()?;
    Ok(out
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != ".")
        .collect())
}

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Prog {
    Stratafs,
    FuseOverlayfs,
}

impl Prog {
    fn name(self) -> &'static str {
        match self {
            Prog::Stratafs => "stratafs",
            Prog::FuseOverlayfs => "fuse-overlayfs",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
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
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

/// An isolated podman setup whose `mount_program` is the logging wrapper around `real_prog`.
/// Dropping it removes every container, mount, daemon and file it made.
struct Podman {
    mode: Mode,
    prog: Prog,
    /// The program under test (a private copy for stratafs).
    real_prog: PathBuf,
    /// What `mount_program` names: tests/podman/mount-program.sh filled in.
    wrapper: PathBuf,
    argv_log: PathBuf,
    /// The test directory: everything below is this run's, and is removed at the end.
    dir: PathBuf,
    graphroot: PathBuf,
    runroot: PathBuf,
    /// Environment podman runs with (nothing else of the test's environment leaks in).
    env: Vec<(String, String)>,
    /// `--storage-opt` values, repeated on every command line.
    storage_opts: Vec<String>,
    /// Extra `podman run/create` options (rootless: `--userns=keep-id --user 0`).
    run_opts: Vec<String>,
    user: Option<User>,
    /// Hidden names that still resolved by lookup (probe lines), with where they were seen.
    lookups: RefCell<Vec<String>>,
    /// What root podman makes outside the store whatever it is told (containers/image's blob
    /// cache, the network run directory), where it did not exist before: removed at the end.
    host_leftovers: Vec<PathBuf>,
    /// Removes the directory last (unless `STRATAFS_PODMAN_KEEP` is set).
    _tmp: Option<tempfile::TempDir>,
}

impl Podman {
    fn new(mode: Mode, prog: Prog, user: Option<User>) -> Podman {
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
    fn expect(&self, state: &str) -> String {
        match self.mode {
            Mode::RootForceMask => state.replace(" 4755 ", " 755 "),
            _ => state.to_string(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The full podman command line for `args` (run as the rootless user when there is one).
    fn command(&self, args: &[&str]) -> (Command, String) {
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

    fn run(&self, args: &[&str]) -> Out {
        let (mut cmd, what) = self.command(args);
        exec(&mut cmd, what, PODMAN_TIMEOUT)
    }

    /// Runs podman, returning its stdout, or an error naming the command and its output.
    fn ok(&self, args: &[&str]) -> Result<String, String> {
        self.run(args).ok()
    }

    /// `podman run --rm` of `image` with the run options of this mode and `cmd...`.
    fn run_rm(&self, extra: &[&str], image: &str, cmd: &[&str]) -> Result<String, String> {
        let mut a: Vec<&str> = vec!["run", "--rm", "--network", "none", "--pull", "never"];
        a.extend(self.run_opts.iter().map(String::as_str));
        a.extend(extra);
        a.push(image);
        a.extend(cmd);
        self.ok(&a)
    }

    /// The state of `trees` in a fresh container of `image`; the lookup probe of `gone` is
    /// recorded (see [`Podman::keep_lookups`]).
    fn image_state(&self, image: &str, trees: &[&str], gone: &[&str]) -> Result<String, String> {
        let script = state_and_probe(gone);
        let mut cmd = vec!["sh", "-c", script.as_str(), "sh", "/"];
        cmd.extend(trees);
        let out = self.run_rm(&[], image, &cmd)?;
        Ok(self.keep_lookups(image, out))
    }

    /// Takes the probe lines (`still resolves: P`) out of `out` and records them, with
    /// `context`, for the `lookup_agrees_with_readdir` check.
    fn keep_lookups(&self, context: &str, out: String) -> String {
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
    fn live_mounts(&self) -> Result<Vec<String>, String> {
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
    fn merged_dir(&self, name: &str) -> Result<String, String> {
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
    fn live_daemons(&self) -> Vec<u32> {
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
    fn pause_pid(&self) -> Option<u32> {
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
    fn argv_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.argv_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Removes every container, then waits until no mount or daemon of this run is left.
    fn wait_clean(&self, limit: Duration) -> Result<(), String> {
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
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_string)
        .collect()
}

/// Pids of processes whose argv satisfies `f`.
fn procs_matching(f: impl Fn(&[String]) -> bool) -> Vec<u32> {
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
fn kill(pid: u32) {
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
fn rootless_user() -> User {
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

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

enum Outcome {
    Pass,
    Fail(String),
    KnownBug(&'static str, String),
}

struct Report {
    title: String,
    mode: Mode,
    prog: Prog,
    rows: Vec<(&'static str, Duration, Outcome)>,
}

impl Report {
    fn check(&mut self, name: &'static str, f: impl FnOnce() -> Result<(), String>) {
        let start = Instant::now();
        let r = f();
        let took = start.elapsed();
        let known = FUSE_OVERLAYFS_KNOWN_BUGS
            .iter()
            .find(|(modes, n, _)| *n == name && modes.contains(&self.mode))
            .map(|(_, _, why)| *why);
        let outcome = match (r, known) {
            (Ok(()), Some(_)) if self.prog == Prog::FuseOverlayfs => {
                eprintln!(
                    "[{}] note: {name}: the known fuse-overlayfs bug did not show up",
                    self.title
                );
                Outcome::Pass
            }
            (Ok(()), _) => Outcome::Pass,
            (Err(e), Some(why)) if self.prog == Prog::FuseOverlayfs => Outcome::KnownBug(why, e),
            (Err(e), _) => Outcome::Fail(e),
        };
        let tag = match &outcome {
            Outcome::Pass => "PASS".to_string(),
            Outcome::Fail(e) => format!("FAIL\n{e}"),
            Outcome::KnownBug(why, e) => format!("KNOWN FUSE-OVERLAYFS BUG ({why})\n{e}"),
        };
        eprintln!(
            "[{}] {name} ({:.1}s): {tag}",
            self.title,
            took.as_secs_f64()
        );
        self.rows.push((name, took, outcome));
    }

    fn finish(self, pm: &Podman) {
        eprintln!("\n[{}] mount program argv as podman passed it:", self.title);
        for l in pm.argv_lines() {
            eprintln!("  {l}");
        }
        eprintln!("\n[{}] summary:", self.title);
        let mut failed = Vec::new();
        for (name, took, o) in &self.rows {
            let s = match o {
                Outcome::Pass => "pass",
                Outcome::Fail(_) => "FAIL",
                Outcome::KnownBug(..) => "known fuse-overlayfs bug",
            };
            eprintln!("  {name:<28} {s} ({:.1}s)", took.as_secs_f64());
            if let Outcome::Fail(e) = o {
                failed.push(format!("--- {name}:\n{e}"));
            }
        }
        if !failed.is_empty() {
            panic!(
                "[{}] {} check(s) failed:\n{}",
                self.title,
                failed.len(),
                failed.join("\n")
            );
        }
    }
}

/// `PROG --version` exits 0, and podman runs the store with our program.
fn check_program_version(pm: &Podman) -> Result<(), String> {
    exec(
        Command::new(&pm.real_prog).arg("--version"),
        format!("{} --version", pm.real_prog.display()),
        Duration::from_secs(30),
    )
    .ok()?;
    let info = pm.ok(&["info"])?;
    let wrapper = pm.wrapper.display().to_string();
    if !info.contains(&wrapper) {
        return Err(format!(
            "`podman info` does not name {wrapper} as the mount program:\n{}",
            tail(&info, 60)
        ));
    }
    let flag = fs::read_to_string(pm.graphroot.join("overlay/.has-mount-program"))
        .map_err(|e| format!("overlay/.has-mount-program: {e}"))?;
    if flag.trim() != "true" {
        return Err(format!(
            "containers/storage does not run the store with a mount program: .has-mount-program = {flag:?}"
        ));
    }
    Ok(())
}

/// A busybox rootfs through `podman import`, and a container of it.
fn check_import_busybox(pm: &Podman) -> Result<(), String> {
    let root = pm.path("work/busybox-rootfs");
    busybox_rootfs(&root);
    let tarball = pm.path("work/busybox-rootfs.tar");
    tar_dir(&root, &tarball);
    chmod(&tarball, 0o644);
    pm.ok(&[
        "import",
        "--change",
        "CMD=/bin/sh",
        "--change",
        "ENV=PATH=/bin",
        &tarball.display().to_string(),
        BUSYBOX_IMAGE,
    ])?;
    let out = pm.run_rm(
        &[],
        BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "echo hello from busybox; test -x /bin/busybox && ls /bin/sh",
        ],
    )?;
    same_lines(
        "podman run of the imported image",
        &out,
        "hello from busybox\n/bin/sh\n",
    )
}

/// The hand-made three-layer docker-archive through `podman load`.
fn check_load_archive(pm: &Podman) -> Result<(), String> {
    let layers = make_layer_dirs(&pm.path("work/layers"));
    let archive = pm.path("work/layers.tar");
    docker_archive(&layers, &pm.path("work/archive"), LAYERS_IMAGE, &archive);
    pm.ok(&["load", "--input", &archive.display().to_string()])?;
    let n = pm.ok(&[
        "image",
        "inspect",
        "--format",
        "{{len .RootFS.Layers}}",
        LAYERS_IMAGE,
    ])?;
    if n.trim() != "3" {
        return Err(format!("the loaded image has {} layers, not 3", n.trim()));
    }
    Ok(())
}

/// Every layer's files read through the mount, with their owners and modes.
fn check_layer_reads(pm: &Podman) -> Result<(), String> {
    let out = pm.image_state(LAYERS_IMAGE, &["/data"], &[])?;
    same_lines("/data of the layered image", &out, &pm.expect(LAYERS_STATE))?;
    let out = pm.run_rm(&[], LAYERS_IMAGE, &["/data/exec.sh"])?;
    same_lines("running /data/exec.sh of layer 1", &out, "exec-ok\n")
}

/// Whiteouts, opaque directories and replacements hide what they should, by readdir and by
/// lookup; no whiteout name shows through.
fn check_layer_whiteouts(pm: &Podman) -> Result<(), String> {
    let script = format!(
        "for d in /data /data/opq /data/dir_del /data/file_to_dir; do echo \"$d: $(ls -A $d | tr '\\n' ' ')\"; done\n\
         find / -xdev -name '.wh.*' | sed 's/^/whiteout name visible: /'\n\
         cat /data/replace_dir/x 2>/dev/null && echo 'replace_dir/x readable'\n{}",
        probe_gone(LAYERS_GONE)
    );
    let out = pm.run_rm(&[], LAYERS_IMAGE, &["sh", "-c", &script])?;
    let out = pm.keep_lookups("a container of the layered image", out);
    same_lines(
        "listings of directories with hidden names",
        &out,
        "/data: deep dir_del exec.sh file_to_dir hard1 hard2 keep.txt l1only.txt l3.txt mod.txt opq owned replace_dir suid sym_l1 \n\
         /data/opq: new1 new3 \n\
         /data/dir_del: c \n\
         /data/file_to_dir: inner.txt \n",
    )
}

fn writes_script() -> String {
    let mut gone: Vec<&str> = LAYERS_GONE.to_vec();
    gone.extend(WRITES_GONE);
    format!("{WRITES_SH}\n{}", state_and_probe(&gone))
}

/// Writes and deletes inside a container (tests/podman/writes.sh), seen from inside.
fn check_container_writes(pm: &Podman) -> Result<(), String> {
    let script = writes_script();
    let mut a: Vec<&str> = vec!["create", "--name", "strata-w", "--network", "none"];
    a.extend(pm.run_opts.iter().map(String::as_str));
    a.extend([
        LAYERS_IMAGE,
        "sh",
        "-c",
        script.as_str(),
        "sh",
        "/",
        "/data",
    ]);
    pm.ok(&a)?;
    let out = pm.ok(&["start", "--attach", "strata-w"])?;
    let out = pm.keep_lookups("the container after the writes", out);
    same_lines(
        "/data after the writes",
        &out,
        &pm.expect(&written_state("run|")),
    )
}

/// `podman diff` names exactly the changes the container made under /data.
fn check_diff(pm: &Podman) -> Result<(), String> {
    let out = pm.ok(&["diff", "strata-w"])?;
    let data: String = out
        .lines()
        .filter(|l| {
            l.get(2..)
                .is_some_and(|p| p == "/data" || p.starts_with("/data/"))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    same_lines("`podman diff` under /data", &data, WRITES_DIFF)
}

/// Appending to `/data/owned/f` copies `/data/owned` up, which must not change the
/// directory's mtime (the kernel's overlayfs restores the parent's times after a copy-up):
/// the committed image keeps the layer's mtime (0) for it. (`podman diff` lists the directory
/// as changed anyway, as it does every directory with a change inside.)
fn check_copyup_keeps_parent_mtime(pm: &Podman) -> Result<(), String> {
    let out = pm.run_rm(
        &[],
        COMMITTED_IMAGE,
        &[
            "stat",
            "-c",
            "%n %Y",
            "/data/owned",
            "/data/file_to_dir/renamed.txt",
        ],
    )?;
    same_lines(
        "mtimes in the committed image of a copied-up parent and a renamed file",
        &out,
        "/data/owned 0\n/data/file_to_dir/renamed.txt 0\n",
    )
}

/// No hidden name resolved by lookup in any of the containers the other checks ran.
fn check_lookup_agrees_with_readdir(pm: &Podman) -> Result<(), String> {
    let l = pm.lookups.borrow();
    if l.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "names that readdir does not list but lookup finds:\n  {}",
            l.join("\n  ")
        ))
    }
}

/// The stopped container starts again (a new mount of the same upper) and sees its changes;
/// once it stops, its mount and daemon are gone.
fn check_restart(pm: &Podman) -> Result<(), String> {
    let out = pm.ok(&["start", "--attach", "strata-w"])?;
    let out = pm.keep_lookups("the restarted container", out);
    same_lines(
        "/data after a restart",
        &out,
        &pm.expect(&written_state("run|run|")),
    )?;
    let merged = pm.merged_dir("strata-w")?;
    let gone = common::wait_until(Duration::from_secs(10), || {
        pm.live_mounts().is_ok_and(|m| !m.contains(&merged))
    });
    if !gone {
        return Err(format!(
            "{merged} is still mounted after the container stopped"
        ));
    }
    Ok(())
}

/// `podman commit`, then the committed image has every change and no deleted name back.
fn check_commit(pm: &Podman) -> Result<(), String> {
    pm.ok(&["commit", "strata-w", COMMITTED_IMAGE])?;
    let mut gone: Vec<&str> = LAYERS_GONE.to_vec();
    gone.extend(WRITES_GONE);
    let out = pm.image_state(COMMITTED_IMAGE, &["/data"], &gone)?;
    same_lines(
        "/data of the committed image",
        &out,
        &pm.expect(&written_state("run|run|")),
    )
}

/// `podman export` of the container: the merged tree, with no whiteout in it.
fn check_export(pm: &Podman) -> Result<(), String> {
    let tarball = pm.path("work/export.tar");
    let dest = pm.path("work/export");
    mkdir(&dest, 0o755);
    pm.ok(&[
        "export",
        "--output",
        &tarball.display().to_string(),
        "strata-w",
    ])?;
    let names = tar_names(&tarball)?;
    let wh: Vec<&String> = names.iter().filter(|n| n.contains(".wh.")).collect();
    if !wh.is_empty() {
        return Err(format!("whiteout names in the exported tree: {wh:?}"));
    }
    exec(
        Command::new("tar")
            .args(["--numeric-owner", "-xpf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&dest),
        "tar -x export".into(),
        PODMAN_TIMEOUT,
    )
    .ok()?;
    let out = exec(
        Command::new("/bin/busybox")
            .args(["sh", "-c", STATE_SH, "sh"])
            .arg(&dest)
            .arg("/data")
            .env("PATH", "/usr/bin:/bin"),
        "state of the exported tree".into(),
        PODMAN_TIMEOUT,
    )
    .ok()?;
    // Podman archives the container's mount as its own user namespace sees it, without
    // mapping ids back: with keep-id, container root is the namespace's uid 1, and so on.
    let want = match &pm.user {
        Some(u) => keep_id_to_namespace(&written_state("run|run|"), u),
        None => pm.expect(&written_state("run|run|")),
    };
    same_lines("/data of the exported tree", &out, &want)
}

/// A state with its `UID:GID` fields moved from container ids to the ids of rootless
/// podman's user namespace under `--userns=keep-id` (container 0..U-1 -> 1..U, container U
/// -> 0, above U unchanged, U being the user's id).
fn keep_id_to_namespace(state: &str, u: &User) -> String {
    let map = |id: u32, own: u32| {
        if id < own {
            id + 1
        } else if id == own {
            0
        } else {
            id
        }
    };
    state
        .lines()
        .map(|l| {
            let fields: Vec<String> = l
                .split(' ')
                .enumerate()
                .map(|(i, f)| {
                    let ids = f
                        .split_once(':')
                        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
                    match ids {
                        Some((uid, gid)) if (i == 2 || i == 3) => {
                            format!("{}:{}", map(uid, u.uid), map(gid, u.gid))
                        }
                        _ => f.to_string(),
                    }
                })
                .collect();
            fields.join(" ") + "\n"
        })
        .collect()
}

/// `podman save`: the loaded layers keep their whiteouts and opaque marker, and the
/// committed layer records every deletion as a whiteout.
fn check_save_whiteouts(pm: &Podman) -> Result<(), String> {
    let tarball = pm.path("work/save.tar");
    let dest = pm.path("work/save");
    mkdir(&dest, 0o755);
    pm.ok(&[
        "save",
        "--format",
        "docker-archive",
        "--output",
        &tarball.display().to_string(),
        COMMITTED_IMAGE,
    ])?;
    exec(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&dest),
        "tar -x save".into(),
        PODMAN_TIMEOUT,
    )
    .ok()?;
    let manifest = fs::read_to_string(dest.join("manifest.json"))
        .map_err(|e| format!("manifest.json: {e}"))?;
    let layers: Vec<String> = manifest
        .split("\"Layers\":[")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .map(|s| {
            s.split('"')
                .filter(|x| !x.is_empty() && *x != ",")
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if layers.len() != 4 {
        return Err(format!(
            "the committed image should have 4 layers, the archive lists {layers:?}"
        ));
    }
    let names: Vec<Vec<String>> = layers
        .iter()
        .map(|l| tar_names(&dest.join(l)))
        .collect::<Result<_, _>>()?;
    let mut problems = Vec::new();
    let want = |layer: usize, name: &str, problems: &mut Vec<String>| {
        if !names[layer].iter().any(|n| n == name) {
            problems.push(format!("layer {} lacks {name}", layer + 1));
        }
    };
    want(1, "data/.wh.del.txt", &mut problems);
    want(1, "data/.wh.dir_del", &mut problems);
    want(1, "data/opq/.wh..wh..opq", &mut problems);
    want(2, "data/.wh.l2only.txt", &mut problems);
    for wh in [
        "data/.wh.keep.txt",
        "data/.wh.deep",
        "data/file_to_dir/.wh.inner.txt",
        "data/dir_del/.wh.c",
        "data/.wh.l3.txt",
    ] {
        want(3, wh, &mut problems);
    }
    for absent in [
        "data/keep.txt",
        "data/deep",
        "data/l3.txt",
        "data/dir_del/c",
    ] {
        if names[3].iter().any(|n| n == absent) {
            problems.push(format!("the committed layer holds the deleted {absent}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}\n  committed layer: {:?}",
            problems.join("\n"),
            names[3]
                .iter()
                .filter(|n| n.starts_with("data"))
                .collect::<Vec<_>>()
        ))
    }
}

/// `rm -r D; mkdir D` inside a container: D's old names are gone by readdir and lookup, in
/// the container, in `podman diff`, and in the committed image.
fn check_recreated_dir(pm: &Podman) -> Result<(), String> {
    let gone = [
        "/data/opq/new1",
        "/data/opq/new3",
        "/data/opq/old1",
        "/data/dir_del/c",
        "/data/dir_del/a",
        "/data/replace_dir/x",
    ];
    let show = format!(
        "for d in /data/opq /data/dir_del /data/replace_dir; do echo \"$d: $(ls -A $d | tr '\\n' ' ')\"; done\n{}",
        probe_gone(&gone)
    );
    let script = format!(
        "if [ ! -e /data/opq/fresh ]; then rm -r /data/opq /data/dir_del /data/replace_dir && \
         mkdir /data/opq /data/dir_del /data/replace_dir && echo fresh > /data/opq/fresh; fi\n{show}"
    );
    let want = "/data/opq: fresh \n/data/dir_del: \n/data/replace_dir: \n";
    let mut a: Vec<&str> = vec!["create", "--name", "strata-r", "--network", "none"];
    a.extend(pm.run_opts.iter().map(String::as_str));
    a.extend([LAYERS_IMAGE, "sh", "-c", script.as_str()]);
    pm.ok(&a)?;
    let out = pm.ok(&["start", "--attach", "strata-r"])?;
    same_lines("inside the container", &out, want)?;
    check_opaque_markers(pm, "strata-r", "data/opq")?;
    let diff = pm.ok(&["diff", "strata-r"])?;
    let mut problems = Vec::new();
    for d in [
        "D /data/opq/new1",
        "D /data/opq/new3",
        "D /data/dir_del/c",
        "A /data/opq/fresh",
    ] {
        if !diff.lines().any(|l| l == d) {
            problems.push(format!("`podman diff` lacks `{d}`"));
        }
    }
    if !problems.is_empty() {
        return Err(format!("{}\n`podman diff`:\n{diff}", problems.join("\n")));
    }
    pm.ok(&[
        "commit",
        "strata-r",
        "localhost/strata-recreated-commit:latest",
    ])?;
    let out = pm.run_rm(
        &[],
        "localhost/strata-recreated-commit:latest",
        &["sh", "-c", &show],
    )?;
    same_lines("the committed image", &out, want)
}

/// The markers of re-created directory `rel` in container `name`'s upper layer. stratafs
/// writes the kernel's xattr alone where the upper takes the kernel's formats (root, and
/// rootless, where char 0/0 whiteouts are allowed and `user.overlay.opaque` is what the
/// kernel's `userxattr` reads), fuse-overlayfs's `.wh..wh..opq` and
/// `user.fuseoverlayfs.opaque` as well where owners live in xattrs (`force_mask`).
/// fuse-overlayfs always writes `.wh..wh..opq`.
fn check_opaque_markers(pm: &Podman, name: &str, rel: &str) -> Result<(), String> {
    let upper = pm.ok(&[
        "inspect",
        "--format",
        "{{.GraphDriver.Data.UpperDir}}",
        name,
    ])?;
    let dir = Path::new(upper.trim()).join(rel);
    let mut buf = vec![0u8; 64];
    let mut has =
        |x: &str| matches!(rustix::fs::lgetxattr(&dir, x, &mut buf), Ok(1)) && buf[0] == b'y';
    let kernel_xattr = has("trusted.overlay.opaque") || has("user.overlay.opaque");
    let fuse_xattr = has("user.fuseoverlayfs.opaque");
    let opq = dir.join(".wh..wh..opq").exists();
    let kernel_only = pm.prog == Prog::Stratafs && pm.mode != Mode::RootForceMask;
    let ok = if kernel_only {
        kernel_xattr && !fuse_xattr && !opq
    } else {
        // Rootless, trusted.* is refused and fuse-overlayfs writes its own xattr.
        opq && (fuse_xattr || (pm.mode != Mode::Rootless && kernel_xattr))
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{}: kernel opaque xattr {kernel_xattr}, user.fuseoverlayfs.opaque {fuse_xattr}, \
             .wh..wh..opq {opq} ({})",
            dir.display(),
            if kernel_only {
                "want the kernel's xattr alone"
            } else {
                "want fuse-overlayfs's markers"
            }
        ))
    }
}

/// Two running containers of one image do not see each other's changes.
fn check_two_containers(pm: &Podman) -> Result<(), String> {
    for name in ["strata-a", "strata-b"] {
        let mut a: Vec<&str> = vec!["run", "--detach", "--name", name, "--network", "none"];
        a.extend(pm.run_opts.iter().map(String::as_str));
        a.extend([LAYERS_IMAGE, "sleep", "600"]);
        pm.ok(&a)?;
    }
    pm.ok(&[
        "exec",
        "strata-a",
        "sh",
        "-c",
        "echo A > /data/mod.txt && rm /data/l1only.txt && echo a > /data/only-a",
    ])?;
    pm.ok(&[
        "exec",
        "strata-b",
        "sh",
        "-c",
        "echo B > /data/mod.txt && rm /data/keep.txt && echo b > /data/only-b",
    ])?;
    let look = "cat /data/mod.txt; for f in keep.txt l1only.txt only-a only-b; do \
                if [ -e /data/$f ]; then echo has $f; fi; done";
    let a = pm.ok(&["exec", "strata-a", "sh", "-c", look])?;
    same_lines("container a", &a, "A\nhas keep.txt\nhas only-a\n")?;
    let b = pm.ok(&["exec", "strata-b", "sh", "-c", look])?;
    same_lines("container b", &b, "B\nhas l1only.txt\nhas only-b\n")?;
    // Their mounts are live now (which proves the mount check below can see them), and gone
    // once the containers are removed.
    let merged = [pm.merged_dir("strata-a")?, pm.merged_dir("strata-b")?];
    let live = pm.live_mounts()?;
    if let Some(m) = merged.iter().find(|m| !live.contains(m)) {
        return Err(format!(
            "{m} of a running container is not among the mounts {live:?}"
        ));
    }
    pm.ok(&["rm", "--force", "--time", "0", "strata-a", "strata-b"])?;
    let gone = common::wait_until(Duration::from_secs(10), || {
        pm.live_mounts()
            .is_ok_and(|l| !merged.iter().any(|m| l.contains(m)))
    });
    if !gone {
        return Err(format!(
            "mounts of removed containers are left: {:?}",
            pm.live_mounts()
        ));
    }
    Ok(())
}

/// `podman build` with RUN and COPY steps that delete, chmod, rename and symlink across
/// layers; the built image shows exactly the result.
fn check_build(pm: &Podman) -> Result<(), String> {
    let ctx = pm.path("work/build");
    write(&ctx.join("Containerfile"), CONTAINERFILE, 0o644);
    write(&ctx.join("files/a.txt"), "a\n", 0o644);
    write(&ctx.join("files/b.sh"), "b\n", 0o644);
    write(&ctx.join("files/secret"), "secret\n", 0o644);
    chmod(&ctx.join("files"), 0o755);
    pm.ok(&[
        "build",
        "--network",
        "none",
        "--pull=never",
        "--isolation",
        "oci",
        "--tag",
        BUILT_IMAGE,
        &ctx.display().to_string(),
    ])?;
    let out = pm.image_state(BUILT_IMAGE, &["/app", "/data"], BUILT_GONE)?;
    same_lines(
        "/app and /data of the built image",
        &out,
        &pm.expect(BUILT_STATE),
    )
}

/// A build step that removes directories and makes them again: their old content stays gone.
fn check_build_recreated_dir(pm: &Podman) -> Result<(), String> {
    let ctx = pm.path("work/build-recreated");
    write(&ctx.join("Containerfile"), CONTAINERFILE_RECREATED, 0o644);
    pm.ok(&[
        "build",
        "--network",
        "none",
        "--pull=never",
        "--isolation",
        "oci",
        "--tag",
        RECREATED_IMAGE,
        &ctx.display().to_string(),
    ])?;
    let script = format!(
        "for d in /data/opq /data/dir_del /data/replace_dir; do echo \"$d: $(ls -A $d | tr '\\n' ' ')\"; done\n{}",
        probe_gone(&[
            "/data/opq/new1",
            "/data/opq/new3",
            "/data/dir_del/c",
            "/data/replace_dir/x"
        ])
    );
    let out = pm.run_rm(&[], RECREATED_IMAGE, &["sh", "-c", &script])?;
    same_lines(
        "the re-created directories of the built image",
        &out,
        "/data/opq: sub \n/data/dir_del: again \n/data/replace_dir: \n",
    )
}

/// Rootless `--userns=keep-id`: image files keep their owners, the user's new files are the
/// user's, inside the container and in the committed image, with and without keep-id.
fn check_keep_id_owners(pm: &Podman) -> Result<(), String> {
    let u = pm.user.as_ref().ok_or("no rootless user")?;
    let ug = format!("{}:{}", u.uid, u.gid);
    let script = "id -u; id -g; echo mine > /tmp/mine && mkdir /tmp/minedir && \
                  stat -c '%u:%g' /tmp/mine /tmp/minedir /data/keep.txt /data/owned /tmp; \
                  [ -r /data/owned/f ] && echo owned-readable || echo owned-unreadable; \
                  touch /data/new 2>/dev/null && echo data-writable || echo data-read-only";
    pm.ok(&[
        "create",
        "--name",
        "strata-k",
        "--network",
        "none",
        "--userns=keep-id",
        LAYERS_IMAGE,
        "sh",
        "-c",
        script,
    ])?;
    let out = pm.ok(&["start", "--attach", "strata-k"])?;
    same_lines(
        "ids as the keep-id user sees them",
        &out,
        &format!(
            "{}\n{}\n{ug}\n{ug}\n0:0\n1000:1000\n0:0\nowned-unreadable\ndata-read-only\n",
            u.uid, u.gid
        ),
    )?;
    pm.ok(&["commit", "strata-k", "localhost/strata-keepid:latest"])?;
    let stat = "stat -c '%u:%g' /tmp/mine /tmp/minedir /data/keep.txt; cat /tmp/mine";
    let keep = pm.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--userns=keep-id",
        "localhost/strata-keepid:latest",
        "sh",
        "-c",
        stat,
    ])?;
    same_lines(
        "the committed image with keep-id",
        &keep,
        &format!("{ug}\n{ug}\n0:0\nmine\n"),
    )?;
    let plain = pm.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "localhost/strata-keepid:latest",
        "sh",
        "-c",
        stat,
    ])?;
    same_lines(
        "the committed image without keep-id (container root is the user)",
        &plain,
        &format!("{ug}\n{ug}\n0:0\nmine\n"),
    )
}

/// After `podman rm -af`, no mount of the store is left and every daemon exits on its own.
fn check_no_leftovers(pm: &Podman) -> Result<(), String> {
    pm.wait_clean(Duration::from_secs(15))
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// Whether this machine can run podman with `prog`; prints SKIPPED (or fails under CI).
fn facilities(mode: Mode, prog: Prog) -> bool {
    let root = rustix::process::geteuid().is_root();
    let ok = facility(root, "root")
        && facility(
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/fuse")
                .is_ok(),
            "/dev/fuse",
        )
        && facility(which("podman").is_some(), "podman (apt package podman)")
        && facility(which("runc").is_some(), "runc (apt package runc)")
        && facility(which("tar").is_some(), "tar")
        && facility(which("sha256sum").is_some(), "sha256sum")
        && facility(
            which("fusermount3").is_some(),
            "fusermount3 (apt package fuse3)",
        )
        && facility(
            is_static_elf(Path::new("/bin/busybox")),
            "a static /bin/busybox (apt package busybox-static)",
        );
    let ok = ok
        && (prog != Prog::FuseOverlayfs
            || facility(
                Path::new(FUSE_OVERLAYFS).is_file(),
                "/usr/bin/fuse-overlayfs (apt package fuse-overlayfs)",
            ));
    ok && (mode != Mode::Rootless
        || (facility(
            which("newuidmap").is_some() && which("newgidmap").is_some(),
            "newuidmap/newgidmap (apt package uidmap)",
        ) && facility(which("runuser").is_some(), "runuser (util-linux)")
            && facility(which("useradd").is_some(), "useradd (passwd)")))
}

fn run_suite(mode: Mode, prog: Prog) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !facilities(mode, prog) {
        return;
    }
    let title = format!(
        "podman {} with {}",
        match mode {
            Mode::Root => "root",
            Mode::RootForceMask => "root force_mask=shared",
            Mode::Rootless => "rootless keep-id",
        },
        prog.name()
    );
    let (user, _fuse) = match mode {
        Mode::Rootless => (Some(rootless_user()), Some(DevFuseOpen::new())),
        _ => (None, None),
    };
    let pm = Podman::new(mode, prog, user);
    eprintln!("[{title}] store in {}", pm.dir.display());
    let mut rep = Report {
        title,
        mode,
        prog,
        rows: Vec::new(),
    };
    rep.check("program_version", || check_program_version(&pm));
    rep.check("import_busybox", || check_import_busybox(&pm));
    rep.check("load_archive", || check_load_archive(&pm));
    rep.check("layer_reads", || check_layer_reads(&pm));
    rep.check("layer_whiteouts", || check_layer_whiteouts(&pm));
    rep.check("container_writes", || check_container_writes(&pm));
    rep.check("diff", || check_diff(&pm));
    rep.check("restart", || check_restart(&pm));
    rep.check("commit", || check_commit(&pm));
    rep.check("copyup_keeps_parent_mtime", || {
        check_copyup_keeps_parent_mtime(&pm)
    });
    rep.check("export", || check_export(&pm));
    rep.check("save_whiteouts", || check_save_whiteouts(&pm));
    rep.check("two_containers", || check_two_containers(&pm));
    rep.check("build", || check_build(&pm));
    if mode == Mode::Rootless {
        rep.check("keep_id_owners", || check_keep_id_owners(&pm));
    }
    rep.check("recreated_dir", || check_recreated_dir(&pm));
    rep.check("build_recreated_dir", || check_build_recreated_dir(&pm));
    rep.check("lookup_agrees_with_readdir", || {
        check_lookup_agrees_with_readdir(&pm)
    });
    rep.check("no_leftovers", || check_no_leftovers(&pm));
    rep.finish(&pm);
}

#[test]
fn podman_root_stratafs() {
    run_suite(Mode::Root, Prog::Stratafs);
}

#[test]
fn podman_root_fuse_overlayfs() {
    run_suite(Mode::Root, Prog::FuseOverlayfs);
}

#[test]
fn podman_root_force_mask_stratafs() {
    run_suite(Mode::RootForceMask, Prog::Stratafs);
}

#[test]
fn podman_root_force_mask_fuse_overlayfs() {
    run_suite(Mode::RootForceMask, Prog::FuseOverlayfs);
}

#[test]
fn podman_rootless_stratafs() {
    run_suite(Mode::Rootless, Prog::Stratafs);
}

#[test]
fn podman_rootless_fuse_overlayfs() {
    run_suite(Mode::Rootless, Prog::FuseOverlayfs);
}
