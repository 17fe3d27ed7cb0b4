//! Checks: each compares what a container or image shows with what it should.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::*;

pub(crate) enum Outcome {
    Pass,
    Fail(String),
    KnownBug(&'static str, String),
}

pub(crate) struct Report {
    pub(crate) title: String,
    pub(crate) mode: Mode,
    pub(crate) prog: Prog,
    pub(crate) rows: Vec<(&'static str, Duration, Outcome)>,
}

impl Report {
    pub(crate) fn check(&mut self, name: &'static str, f: impl FnOnce() -> Result<(), String>) {
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

    pub(crate) fn finish(self, pm: &Podman) {
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
pub(crate) fn check_program_version(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_import_busybox(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_load_archive(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_layer_reads(pm: &Podman) -> Result<(), String> {
    let out = pm.image_state(LAYERS_IMAGE, &["/data"], &[])?;
    same_lines("/data of the layered image", &out, &pm.expect(LAYERS_STATE))?;
    let out = pm.run_rm(&[], LAYERS_IMAGE, &["/data/exec.sh"])?;
    same_lines("running /data/exec.sh of layer 1", &out, "exec-ok\n")
}

/// Whiteouts, opaque directories and replacements hide what they should, by readdir and by
/// lookup; no whiteout name shows through.
pub(crate) fn check_layer_whiteouts(pm: &Podman) -> Result<(), String> {
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

pub(crate) fn writes_script() -> String {
    let mut gone: Vec<&str> = LAYERS_GONE.to_vec();
    gone.extend(WRITES_GONE);
    format!("{WRITES_SH}\n{}", state_and_probe(&gone))
}

/// Writes and deletes inside a container (tests/podman/writes.sh), seen from inside.
pub(crate) fn check_container_writes(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_diff(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_copyup_keeps_parent_mtime(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_lookup_agrees_with_readdir(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_restart(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_commit(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_export(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn keep_id_to_namespace(state: &str, u: &User) -> String {
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
pub(crate) fn check_save_whiteouts(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_recreated_dir(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_opaque_markers(pm: &Podman, name: &str, rel: &str) -> Result<(), String> {
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
pub(crate) fn check_two_containers(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_build(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_build_recreated_dir(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_keep_id_owners(pm: &Podman) -> Result<(), String> {
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
pub(crate) fn check_no_leftovers(pm: &Podman) -> Result<(), String> {
    pm.wait_clean(Duration::from_secs(15))
}
