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
//! directory), and `podman build`s with several RUN and COPY steps. The hard link of a lower
//! layer stays one file through `stat`, `podman export`, a multi-stage `COPY --from` and
//! `podman build --squash-all` (`podman/links.rs`).
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

#[path = "podman/checks.rs"]
mod checks;
#[path = "podman/commands.rs"]
mod commands;
mod common;
#[path = "podman/expected.rs"]
mod expected;
#[path = "podman/harness.rs"]
mod harness;
#[path = "podman/images.rs"]
mod images;
#[path = "podman/links.rs"]
mod links;

use std::fs;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use checks::*;
use commands::*;
use common::{facility, DevFuseOpen};
use expected::*;
use harness::*;
use images::*;
use links::*;

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
    (
        &[Mode::RootForceMask],
        "hard_links",
        "with xattr_permissions=2 (force_mask) fuse-overlayfs refuses a setxattr of \
         user.containers.override_stat through the mount (EPERM), which buildah's COPY makes on \
         every file it writes, so a multi-stage `COPY --from` fails",
    ),
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
    rep.check("hard_links", || check_hard_links(&pm));
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
