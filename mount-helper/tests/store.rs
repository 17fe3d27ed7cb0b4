//! The store and its commands: every source format, the rootless whiteout format, concurrent
//! and interrupted imports, `ls`, `inspect`, `rmi` and `gc`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// Two layers with a whiteout and an opaque directory, and nothing only root may unpack.
fn small_image(third: Option<&[u8]>) -> TestImage {
    let l1 = LayerTar::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0\n")
        .file("etc/group", b"root:x:0:\n")
        .dir("opq", 0o755)
        .file("opq/below", b"below\n")
        .finish();
    let l2 = LayerTar::new()
        .file("etc/passwd", b"root:x:0:0:l2\n")
        .whiteout("etc/group")
        .dir("opq", 0o755)
        .opaque("opq")
        .file("opq/above", b"above\n")
        .finish();
    let mut layers = vec![Blob::new(l1, Comp::Gzip), Blob::new(l2, Comp::Zstd)];
    if let Some(data) = third {
        layers.push(Blob::new(
            LayerTar::new().file("third", data).finish(),
            Comp::Plain,
        ));
    }
    TestImage::new(layers)
}

fn layer_dirs(h: &Helper) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(h.store.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The layer tree holding `rel`.
fn tree_with(h: &Helper, rel: &str) -> PathBuf {
    layer_dirs(h)
        .into_iter()
        .map(|d| d.join("diff"))
        .find(|d| std::fs::symlink_metadata(d.join(rel)).is_ok())
        .unwrap_or_else(|| panic!("no layer has {rel}"))
}

#[test]
fn every_source_format_gives_the_same_image() {
    let img = small_image(Some(b"3\n"));
    let mut ids = Vec::new();
    for form in ["oci-dir", "oci-archive", "docker-archive"] {
        let h = Helper::new();
        let src = h.path(form);
        match form {
            "oci-dir" => img.write_oci_dir(&src, "small:1"),
            "oci-archive" => img.write_oci_archive(&src, "small:1"),
            _ => img.write_docker_archive(&src, "small:1"),
        }
        let out = h.ok(&["import", src.to_str().unwrap()]);
        assert!(out.trim().ends_with(" as small:1"), "{form}: {out}");
        ids.push(imported_id(&out));
        assert_eq!(layer_dirs(&h).len(), 3, "{form}");
        assert_eq!(
            std::fs::read(tree_with(&h, "opq/above").join("opq/above")).unwrap(),
            b"above\n"
        );
        // The blobs are kept as they came: the digests the manifest named.
        for l in &img.layers {
            let hex = l.digest().trim_start_matches("sha256:").to_string();
            assert!(h.store.join("blobs/sha256").join(hex).is_file(), "{form}");
        }
    }
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one config, one id: {ids:?}"
    );
}

#[test]
fn root_whiteouts_are_kernel_format() {
    if !can_root() {
        return;
    }
    let h = Helper::new();
    let src = h.path("layout");
    small_image(None).write_oci_dir(&src, "small:1");
    h.ok(&["import", src.to_str().unwrap()]);
    let top = tree_with(&h, "opq/above");
    let wh = std::fs::symlink_metadata(top.join("etc/group")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "char 0/0 whiteout"
    );
    assert!(!top.join("etc/.wh.group").exists());
    assert!(!top.join("opq/.wh..wh..opq").exists());
    let mut v = [0u8; 4];
    let n = rustix::fs::lgetxattr(top.join("opq"), "trusted.overlay.opaque", &mut v).unwrap();
    assert_eq!(&v[..n], b"y");
}

#[test]
fn rootless_whiteouts_are_dot_wh_files() {
    let h = Helper::new();
    let src = h.path("layout");
    small_image(None).write_oci_dir(&src, "small:1");
    h.ok(&["--rootless", "import", src.to_str().unwrap()]);
    let top = tree_with(&h, "opq/above");
    let wh = std::fs::symlink_metadata(top.join("etc/.wh.group")).unwrap();
    assert!(wh.is_file() && wh.len() == 0, ".wh. file kept");
    assert!(std::fs::symlink_metadata(top.join("etc/group")).is_err());
    assert!(top.join("opq/.wh..wh..opq").is_file(), "opaque marker kept");
    let rec = std::fs::read_to_string(top.parent().unwrap().join("layer.json")).unwrap();
    assert!(rec.contains("\"dotwh\""), "{rec}");
    // The daemon reads that format: the merged tree hides what it should.
    if !can_mount() {
        return;
    }
    h.ok(&["create", "c", "small:1"]);
    let m = h.mount("c", None);
    assert_eq!(
        std::fs::read(m.target.join("etc/passwd")).unwrap(),
        b"root:x:0:0:l2\n"
    );
    assert!(!m.target.join("etc/group").exists());
    let mut names: Vec<String> = std::fs::read_dir(m.target.join("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["above"]);
    std::fs::remove_file(m.target.join("etc/passwd")).unwrap();
    assert_eq!(h.ok(&["diff", "c"]), "C /etc\nD /etc/passwd\n");
    m.umount();
}

#[test]
fn concurrent_imports_of_one_image() {
    let h = Helper::new();
    let src = h.path("image.tar");
    small_image(Some(&vec![5u8; 1 << 20])).write_oci_archive(&src, "small:1");
    let children: Vec<_> = (0..4)
        .map(|_| {
            h.cmd(&["import", src.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        ids.push(imported_id(&String::from_utf8_lossy(&o.stdout)));
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(layer_dirs(&h).len(), 3);
    assert_eq!(
        std::fs::read_dir(h.store.join("images")).unwrap().count(),
        1
    );
    assert_eq!(std::fs::read_dir(h.store.join("tmp")).unwrap().count(), 0);
    assert!(!h.store.join("journal.json").exists());
}

#[test]
fn interrupted_import_leaves_nothing() {
    let h = Helper::new();
    let src = h.path("image.tar");
    // A big plain layer, so the import is still running when it is killed.
    let big = LayerTar::new().file("big", &vec![0u8; 96 << 20]).finish();
    TestImage::new(vec![Blob::new(big, Comp::Plain)]).write_docker_archive(&src, "big:1");
    let mut killed = false;
    for _ in 0..5 {
        let mut child = h.cmd(&["import", src.to_str().unwrap()]).spawn().unwrap();
        let staged = wait_until(Duration::from_secs(20), || {
            std::fs::read_dir(h.store.join("tmp"))
                .map(|rd| {
                    rd.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("layer-"))
                })
                .unwrap_or(false)
        });
        let _ = child.kill();
        let status = child.wait().unwrap();
        if staged && !status.success() {
            killed = true;
            break;
        }
        // It finished before the kill landed: start again from an empty store.
        std::fs::remove_dir_all(&h.store).unwrap();
    }
    assert!(killed, "the import was never caught in the middle");
    // The next writer clears what the killed one left.
    h.ok(&["gc"]);
    assert_eq!(h.leftovers(), Vec::<String>::new());
}

#[test]
fn ls_inspect_rmi_gc() {
    let h = Helper::new();
    let a = h.path("a.tar");
    let b = h.path("b");
    small_image(Some(b"a\n")).write_docker_archive(&a, "app:a");
    small_image(Some(b"b\n")).write_oci_dir(&b, "app:b");
    h.ok(&["import", a.to_str().unwrap()]);
    h.ok(&["import", b.to_str().unwrap()]);
    h.ok(&["import", a.to_str().unwrap(), "--tag", "alias"]);
    assert_eq!(layer_dirs(&h).len(), 4, "two layers shared");

    let ls = h.ok(&["ls"]);
    let lines: Vec<&str> = ls.lines().collect();
    assert!(
        lines[0].starts_with("IMAGE") && lines[0].contains("SHARED"),
        "{ls}"
    );
    let row_a = lines.iter().find(|l| l.contains("app:a")).unwrap();
    assert!(row_a.contains("alias,app:a"), "{ls}");
    let row_b = lines.iter().find(|l| l.contains("app:b")).unwrap();
    for row in [row_a, row_b] {
        let f: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(f[2], "3", "three layers: {row}");
        assert_eq!(f[f.len() - 3], "2", "two shared: {row}");
    }
    assert!(ls.contains("CONTAINER"), "{ls}");

    let out = h.ok(&["inspect", "app:a", "/etc/passwd"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("/etc/passwd: regular file from layer 2 sha256:"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("  layer 3 ") && lines[1].ends_with(" -"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("  layer 2 ") && lines[2].ends_with("provides (regular file)"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("  layer 1 ") && lines[3].ends_with("shadowed (regular file)"),
        "{out}"
    );
    let out = h.ok(&["inspect", "app:a", "etc/group"]);
    assert!(
        out.starts_with("/etc/group: not in the merged tree\n"),
        "{out}"
    );
    assert!(
        out.contains("whiteout: hides it in the layers below"),
        "{out}"
    );
    let out = h.ok(&["inspect", "app:a", "/opq/below"]);
    assert!(out.contains("opaque directory /opq"), "{out}");
    assert!(
        out.lines()
            .nth(3)
            .unwrap()
            .ends_with("shadowed (regular file)"),
        "{out}"
    );
    let out = h.ok(&["inspect", "app:a", "/opq"]);
    assert!(out.starts_with("/opq: directory from layer 2 "), "{out}");
    assert!(out.contains("(opaque: hides the layers below)"), "{out}");
    let err = h.fails(&["inspect", "app:a", "../x"]);
    assert!(err.contains("'..' is not allowed"), "{err}");

    h.ok(&["create", "c", "app:a"]);
    let err = h.fails(&["rmi", "app:b2"]);
    assert!(err.contains("no such image"), "{err}");
    assert_eq!(h.ok(&["rmi", "alias"]), "untagged alias\n");
    let err = h.fails(&["rmi", "app:a"]);
    assert!(err.contains("used by container c"), "{err}");
    let out = h.ok(&["rmi", "app:b"]);
    assert!(out.starts_with("removed image sha256:"), "{out}");
    assert_eq!(layer_dirs(&h).len(), 4, "layers stay until gc");
    let out = h.ok(&["gc"]);
    assert!(out.starts_with("removed 1 layers and 3 blobs"), "{out}");
    assert_eq!(layer_dirs(&h).len(), 3);
    h.ok(&["rm", "c"]);
    h.ok(&["rmi", "app:a"]);
    let out = h.ok(&["gc"]);
    assert!(out.starts_with("removed 3 layers and 5 blobs"), "{out}");
    assert_eq!(h.leftovers(), Vec::<String>::new());
}

#[test]
fn container_inspect_and_errors() {
    if !can_mount() {
        return;
    }
    let h = Helper::new();
    let src = h.path("layout");
    small_image(None).write_oci_dir(&src, "small:1");
    h.ok(&["import", src.to_str().unwrap()]);
    h.ok(&["create", "c", "small:1"]);
    let err = h.fails(&["create", "c", "small:1"]);
    assert!(err.contains("exists already"), "{err}");
    let err = h.fails(&["create", "../x", "small:1"]);
    assert!(err.contains("container name"), "{err}");
    let m = h.mount("c", None);
    let err = h.fails(&["mount", "c"]);
    assert!(err.contains("already mounted"), "{err}");
    std::fs::write(m.target.join("etc/passwd"), "new\n").unwrap();
    let out = h.ok(&["inspect", "c", "/etc/passwd"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("/etc/passwd: regular file from upper"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("  upper ") && lines[1].ends_with("provides (regular file)"),
        "{out}"
    );
    assert!(lines[2].ends_with("shadowed (regular file)"), "{out}");
    m.umount();
    let err = h.fails(&["umount", "c"]);
    assert!(err.contains("is not mounted"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let h = Helper::new();
    let o = h.run(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = h.run(&["commit", "c"]);
    assert_eq!(o.status.code(), Some(2), "--tag is required");
    let err = h.fails(&["import", "/nonexistent/image.tar"]);
    assert!(err.contains("/nonexistent/image.tar"), "{err}");
    let not_image = h.path("junk.tar");
    write_tar(&not_image, &[("hello".into(), b"x".to_vec())]);
    let err = h.fails(&["import", not_image.to_str().unwrap()]);
    assert!(err.contains("not an image"), "{err}");
}

#[test]
fn a_layout_with_two_images_needs_ref() {
    let h = Helper::new();
    let dir = h.path("two");
    let read_index = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap()
    };
    small_image(Some(b"a\n")).write_oci_dir(&dir, "a");
    let mut index = read_index();
    small_image(Some(b"b\n")).write_oci_dir(&dir, "b");
    let other = read_index()["manifests"][0].clone();
    index["manifests"].as_array_mut().unwrap().push(other);
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();

    let err = h.fails(&["import", dir.to_str().unwrap()]);
    assert!(
        err.contains("lists 2 images: pick one with --ref (a, b)"),
        "{err}"
    );
    let out = h.ok(&[
        "import",
        dir.to_str().unwrap(),
        "--ref",
        "b",
        "--tag",
        "bee:latest",
    ]);
    assert!(out.trim().ends_with(" as bee:latest"), "{out}");
    // A name without a tag stands for NAME:latest.
    let out = h.ok(&["inspect", "bee", "/third"]);
    assert!(
        out.starts_with("/third: regular file from layer 3 "),
        "{out}"
    );
    h.ok(&["create", "c", "bee"]);
    let err = h.fails(&["import", dir.to_str().unwrap(), "--ref", "nope"]);
    assert!(err.contains("no image named \"nope\""), "{err}");
}

#[test]
fn directory_modes_and_times_come_last() {
    for rootless in [false, true] {
        let h = Helper::new();
        let src = h.path("layout");
        let l = LayerTar::new()
            .dir("ro", 0o700)
            .file("ro/f", b"in a read-only directory\n")
            .dir("ro/sub", 0o500)
            .file("ro/sub/g", b"deeper\n")
            // Named again: the later entry's mode wins.
            .dir("ro", 0o555)
            .finish();
        TestImage::new(vec![Blob::new(l, Comp::Gzip)]).write_oci_dir(&src, "t");
        let mut args = vec!["import", src.to_str().unwrap()];
        if rootless {
            args.insert(0, "--rootless");
        }
        h.ok(&args);
        let tree = tree_with(&h, "ro/f");
        let ro = std::fs::symlink_metadata(tree.join("ro")).unwrap();
        assert_eq!(ro.mode() & 0o7777, 0o555);
        assert_eq!(
            ro.mtime(),
            1_700_000_000,
            "mtime restored after the children"
        );
        let sub = std::fs::symlink_metadata(tree.join("ro/sub")).unwrap();
        assert_eq!(sub.mode() & 0o7777, 0o500);
        assert_eq!(std::fs::read(tree.join("ro/sub/g")).unwrap(), b"deeper\n");
        // And the store can still remove it.
        h.ok(&["rmi", "t"]);
        h.ok(&["gc"]);
        assert_eq!(h.leftovers(), Vec::<String>::new());
    }
}

// ---- an image listing one layer twice (issue 14, item 7) ----

#[test]
fn an_image_listing_a_layer_twice_mounts() {
    // Old docker builds repeat the empty layer; here a whole layer comes back on top.
    let a = Blob::new(
        LayerTar::new()
            .dir("etc", 0o755)
            .file("etc/x", b"A\n")
            .finish(),
        Comp::Gzip,
    );
    let b = Blob::new(
        LayerTar::new()
            .file("etc/x", b"B\n")
            .file("etc/b", b"B\n")
            .finish(),
        Comp::Gzip,
    );
    let img = TestImage::new(vec![a.clone(), b, a]);
    let h = Helper::new();
    let src = h.path("layout");
    img.write_oci_dir(&src, "twice:1");
    h.ok(&["import", src.to_str().unwrap()]);
    assert_eq!(layer_dirs(&h).len(), 2);
    h.ok(&["create", "c", "twice:1"]);
    let out = h.ok(&["inspect", "c", "/etc/x"]);
    assert!(
        out.starts_with("/etc/x: regular file from layer 3 "),
        "{out}"
    );
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("  layer 1 sha256:") && last.ends_with("- (the same layer as layer 3)"),
        "{out}"
    );
    let out = h.ok(&["inspect", "twice:1", "/etc/b"]);
    assert!(
        out.starts_with("/etc/b: regular file from layer 2 "),
        "{out}"
    );
    assert_eq!(h.ok(&["diff", "c"]), "");
    // ls: three layers listed, two unpacked: 2 + 4 bytes of files.
    let ls = h.ok(&["ls"]);
    let line = ls.lines().find(|l| l.contains("twice:1")).unwrap();
    assert!(line.contains(" 3 ") && line.contains(" 6 B "), "{ls}");
    if !can_mount() {
        return;
    }
    let m = h.mount("c", None);
    assert_eq!(std::fs::read(m.target.join("etc/x")).unwrap(), b"A\n");
    assert_eq!(std::fs::read(m.target.join("etc/b")).unwrap(), b"B\n");
    std::fs::write(m.target.join("new"), "n\n").unwrap();
    assert_eq!(h.ok(&["diff", "c"]), "A /new\n");
    m.umount();
    h.ok(&["commit", "c", "--tag", "twice:2"]);
    h.ok(&["create", "d", "twice:2"]);
    let m = h.mount("d", None);
    assert_eq!(std::fs::read(m.target.join("new")).unwrap(), b"n\n");
    assert_eq!(std::fs::read(m.target.join("etc/x")).unwrap(), b"A\n");
    m.umount();
}

// ---- who may reach the store and the mounts (issue 14, item 2) ----

fn mode(p: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// A copy of `id` made setuid root.
fn setuid_image() -> TestImage {
    let id = std::fs::read("/usr/bin/id").unwrap();
    let l = LayerTar::new()
        .dir("bin", 0o755)
        .file_owned("bin/id", &id, 0o4755, 0, 0)
        .finish();
    TestImage::new(vec![Blob::new(l, Comp::Gzip)])
}

#[test]
fn the_store_is_private() {
    let h = Helper::new();
    // An existing store made by an earlier version, open to all.
    for d in [
        "",
        "layers",
        "containers",
        "tmp",
        "blobs",
        "blobs/sha256",
        "images",
    ] {
        std::fs::create_dir_all(h.store.join(d)).unwrap();
        std::fs::set_permissions(
            h.store.join(d),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    let src = h.path("layout");
    small_image(None).write_oci_dir(&src, "small:1");
    h.ok(&["import", src.to_str().unwrap()]);
    h.ok(&["create", "c", "small:1"]);
    let mut private = vec![
        h.store.clone(),
        h.store.join("layers"),
        h.store.join("containers"),
        h.store.join("containers/c"),
        h.store.join("tmp"),
        h.store.join("blobs"),
        h.store.join("blobs/sha256"),
        h.store.join("images"),
    ];
    private.extend(layer_dirs(&h));
    for p in &private {
        assert_eq!(mode(p), 0o700, "{}", p.display());
    }
}

#[test]
fn setuid_files_of_an_image_are_out_of_other_users_reach() {
    if !can_root() {
        return;
    }
    let h = Helper::new();
    // Everything up to the store is open to all: only the store's own modes protect it.
    std::fs::set_permissions(
        h.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let src = h.path("layout");
    setuid_image().write_oci_dir(&src, "suid:1");
    h.ok(&["import", src.to_str().unwrap()]);
    let tree = layer_dirs(&h)[0].join("diff");
    assert_eq!(
        mode(&tree.join("bin/id")),
        0o4755,
        "the image is kept as it is"
    );
    let o = as_nobody(&tree.join("bin/id"), &["-u"]);
    assert!(
        !o.status.success(),
        "a layer's setuid file ran for another user: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    h.ok(&["create", "c", "suid:1"]);
    if !can_mount() {
        return;
    }
    // The default mount point lies in the private store.
    let m = h.mount("c", None);
    let o = as_nobody(&m.target.join("bin/id"), &["-u"]);
    assert!(
        !o.status.success(),
        "reached through the default mount point: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let opts = mount_options(&m.target);
    assert!(opts.contains(&"nodev".to_string()), "{opts:?}");
    assert!(opts.contains(&"nosuid".to_string()), "{opts:?}");
    m.umount();
    // A mount point of the caller's choosing, open to all: setuid bits have no effect.
    let t = h.path("t");
    std::fs::create_dir(&t).unwrap();
    let m = h.mount("c", Some(&t));
    let opts = mount_options(&t);
    assert!(opts.contains(&"nodev".to_string()), "{opts:?}");
    assert!(opts.contains(&"nosuid".to_string()), "{opts:?}");
    let o = as_nobody(&t.join("bin/id"), &["-u"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "65534",
        "setuid took effect: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    m.umount();
    // Asked for, setuid programs work (and device nodes may be opened).
    let m = h.mount_with("c", Some(&t), &["--suid", "--dev"]);
    let opts = mount_options(&t);
    assert!(!opts.contains(&"nosuid".to_string()), "{opts:?}");
    assert!(!opts.contains(&"nodev".to_string()), "{opts:?}");
    let o = as_nobody(&t.join("bin/id"), &["-u"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0");
    m.umount();
}
