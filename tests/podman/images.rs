//! Images made by hand: layers with whiteouts and opaque directories, loaded into podman.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::*;

/// `dir/bin/busybox` (static) and a symlink for every applet, plus the usual top directories.
pub(crate) fn busybox_rootfs(dir: &Path) {
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
pub(crate) fn tar_dir(dir: &Path, out: &Path) {
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

pub(crate) fn sha256(path: &Path) -> String {
    let out = sh(&format!("sha256sum '{}'", path.display())).expect("sha256sum");
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The three layers of the hand-made image, as directories as a layer tar holds them.
pub(crate) fn make_layer_dirs(base: &Path) -> Vec<PathBuf> {
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
pub(crate) fn docker_archive(layers: &[PathBuf], work: &Path, tag: &str, out: &Path) {
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
pub(crate) fn tar_names(tarball: &Path) -> Result<Vec<String>, String> {
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
