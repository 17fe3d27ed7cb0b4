//! The docker run / diff / commit cycle over stratafs: import, create, mount, read every
//! layer through the mount, write and delete, diff, commit, export, import the export again
//! and check with the kernel's overlayfs that the committed layer means the same thing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

/// Three layers (gzip, zstd, plain) exercising owners, modes, setuid, hard links, symlinks,
/// device nodes, fifos, xattrs, whiteouts and opaque directories.
pub fn sample_image() -> TestImage {
    let l1 = LayerTar::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0\n")
        .file("etc/motd", b"welcome\n")
        .dir("usr/", 0o755)
        .dir("usr/bin", 0o755)
        .file_owned("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o4755, 0, 0)
        .dir("usr/lib", 0o755)
        .file_xattr("usr/lib/libc.so", b"ELF", &[("user.note", b"hi")])
        .symlink("lib", "usr/lib")
        .dir("data", 0o750)
        .file_owned("data/a.txt", b"shared data\n", 0o640, 1000, 1000)
        .hardlink("data/a-link", "data/a.txt")
        .dir("dev", 0o755)
        .chardev("dev/null", 1, 3)
        .dir("run", 0o755)
        .fifo("run/fifo")
        .dir("olddir", 0o755)
        .file("olddir/x", b"x\n")
        .file("olddir/y", b"y\n")
        .file("gone.txt", b"soon gone\n")
        .dir("opq", 0o755)
        .file("opq/keep-below", b"hidden by the layer above\n")
        .finish();
    let l2 = LayerTar::new()
        .file("etc/hostname", b"layer2\n")
        .file("etc/passwd", b"root:x:0:0:layer2\n")
        .whiteout("gone.txt")
        .dir("opq", 0o755)
        .opaque("opq")
        .file("opq/new.txt", b"new in layer 2\n")
        .whiteout("olddir/x")
        .finish();
    let l3 = LayerTar::new()
        .dir("app", 0o755)
        .file_owned("app/run.sh", b"#!/bin/sh\nexec tool\n", 0o755, 0, 0)
        .file("etc/issue", b"layer3\n")
        .finish();
    TestImage::new(vec![
        Blob::new(l1, Comp::Gzip),
        Blob::new(l2, Comp::Zstd),
        Blob::new(l3, Comp::Plain),
    ])
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn layer_trees(store: &Path, image_id: &str) -> Vec<PathBuf> {
    let hex = image_id.trim_start_matches("sha256:");
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join(format!("images/{hex}.json"))).unwrap())
            .unwrap();
    rec["layers"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|l| {
            let d = l["diff_id"].as_str().unwrap().trim_start_matches("sha256:");
            store.join("layers").join(d).join("diff")
        })
        .collect()
}

/// The OCI layout `export` (of an image tagged `sample:2`, with `layers` layers), imported
/// into a new store and mounted with the kernel's overlayfs: the store, and the tree shown.
fn export_under_kernel(export: &Path, layers: usize) -> (Helper, TreeSnap) {
    let h2 = Helper::new();
    let out = h2.ok(&["import", export.to_str().unwrap()]);
    assert!(out.trim().ends_with(" as sample:2"), "{out}");
    let trees = layer_trees(&h2.store, &imported_id(&out));
    assert_eq!(trees.len(), layers);
    let kdir = h2.path("kernel");
    std::fs::create_dir(&kdir).unwrap();
    let lower: Vec<String> = trees.iter().map(|t| t.display().to_string()).collect();
    let k = KernelMount::new(
        &format!(
            "lowerdir={},redirect_dir=off,index=off,metacopy=off",
            lower.join(":")
        ),
        &kdir,
    );
    let kernel = snapshot(&kdir);
    drop(k);
    (h2, kernel)
}

#[test]
fn full_cycle() {
    if !can_compare() {
        return;
    }
    let h = Helper::new();
    let archive = h.path("image.tar");
    sample_image().write_docker_archive(&archive, "sample:1");
    let out = h.ok(&["import", archive.to_str().unwrap()]);
    assert!(
        out.starts_with("imported sha256:") && out.trim().ends_with(" as sample:1"),
        "{out}"
    );
    h.ok(&["create", "c1", "sample:1"]);
    let m = h.mount("c1", None);
    let root = m.target.clone();

    // Every layer's contents, through the mount.
    assert_eq!(read(&root.join("etc/passwd")), "root:x:0:0:layer2\n");
    assert_eq!(read(&root.join("etc/motd")), "welcome\n");
    assert_eq!(read(&root.join("etc/hostname")), "layer2\n");
    assert_eq!(read(&root.join("etc/issue")), "layer3\n");
    assert_eq!(read(&root.join("app/run.sh")), "#!/bin/sh\nexec tool\n");
    assert_eq!(read(&root.join("lib/libc.so")), "ELF");
    assert_eq!(
        std::fs::read_link(root.join("lib")).unwrap(),
        Path::new("usr/lib")
    );
    let tool = std::fs::symlink_metadata(root.join("usr/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid kept");
    let a = std::fs::symlink_metadata(root.join("data/a.txt")).unwrap();
    assert_eq!((a.uid(), a.gid(), a.mode() & 0o7777), (1000, 1000, 0o640));
    // The hard link is one inode in the layer (the daemon numbers each name of a lower
    // hard link apart in a writable union, as a copy-up would break it).
    assert_eq!(a.nlink(), 2);
    let trees = layer_trees(&h.store, &imported_id(&out));
    let la = std::fs::symlink_metadata(trees[2].join("data/a.txt")).unwrap();
    let ll = std::fs::symlink_metadata(trees[2].join("data/a-link")).unwrap();
    assert_eq!(
        (la.ino(), la.nlink()),
        (ll.ino(), 2),
        "hard link kept in the layer"
    );
    let null = std::fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(root.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let mut v = vec![0u8; 16];
    let n = rustix::fs::lgetxattr(root.join("usr/lib/libc.so"), "user.note", &mut v).unwrap();
    assert_eq!(&v[..n], b"hi");
    assert!(!root.join("gone.txt").exists(), "whiteout hides gone.txt");
    assert_eq!(dir_names(&root.join("opq")), vec!["new.txt"], "opaque dir");
    assert_eq!(
        dir_names(&root.join("olddir")),
        vec!["y"],
        "whiteout in a dir"
    );
    assert!(dir_names(&root).iter().all(|n| !n.starts_with(".wh.")));

    // Changes.
    std::fs::write(root.join("etc/motd"), "changed\n").unwrap();
    std::fs::create_dir(root.join("new")).unwrap();
    std::fs::write(root.join("new/file"), "fresh\n").unwrap();
    rustix::fs::lsetxattr(
        root.join("new/file"),
        "user.origin",
        b"commit",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::fs::remove_file(root.join("olddir/y")).unwrap();
    std::fs::remove_file(root.join("data/a.txt")).unwrap();
    std::fs::remove_dir_all(root.join("opq")).unwrap();
    std::fs::create_dir(root.join("opq")).unwrap();
    std::fs::write(root.join("opq/again"), "again\n").unwrap();
    std::fs::set_permissions(
        root.join("app/run.sh"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::os::unix::fs::symlink("../etc/motd", root.join("new/motd-link")).unwrap();
    std::fs::hard_link(root.join("new/file"), root.join("new/file2")).unwrap();

    let diff = h.ok(&["diff", "c1"]);
    let want = "\
C /app
C /app/run.sh
C /data
D /data/a.txt
C /etc
C /etc/motd
A /new
A /new/file
A /new/file2
A /new/motd-link
C /olddir
D /olddir/y
C /opq
A /opq/again
D /opq/new.txt
";
    assert_eq!(diff, want);
    let live = snapshot(&root);
    // A mounted container's upper is not committed.
    let err = h.fails(&["commit", "c1", "--tag", "sample:2"]);
    assert!(err.contains("is mounted"), "{err}");
    m.umount();

    let out = h.ok(&["commit", "c1", "--tag", "sample:2"]);
    assert!(out.starts_with("committed sha256:"), "{out}");
    let export = h.path("export");
    h.ok(&["export", "sample:2", "--oci", export.to_str().unwrap()]);
    assert!(export.join("oci-layout").is_file() && export.join("index.json").is_file());

    // The export, imported into a second store, through the kernel's overlayfs.
    let (h2, kernel) = export_under_kernel(&export, 4);
    assert_same_tree(
        &live,
        &kernel,
        "committed image under kernel overlayfs vs the container",
    );

    // And through stratafs, in a container of the new image.
    h2.ok(&["create", "c2", "sample:2"]);
    let m2 = h2.mount("c2", None);
    let again = snapshot(&m2.target);
    m2.umount();
    assert_same_tree(
        &again,
        &kernel,
        "committed image under stratafs vs kernel overlayfs",
    );

    // podman reads the export (when installed). It names the image after the layout's
    // path, which must then be lowercase.
    if let Some(podman) = find_tool("podman") {
        let base = RemoveOnDrop(
            std::env::temp_dir().join(format!("stratafs-mount-podman-{}", std::process::id())),
        );
        let _ = std::fs::remove_dir_all(&base.0);
        std::fs::create_dir_all(&base.0).unwrap();
        let layout = base.0.join("export");
        h.ok(&["export", "sample:2", "--oci", layout.to_str().unwrap()]);
        let out = run(std::process::Command::new(podman)
            .arg("--root")
            .arg(base.0.join("root"))
            .arg("--runroot")
            .arg(base.0.join("run"))
            .args(["--storage-driver", "vfs", "pull", "-q"])
            .arg(format!("oci:{}", layout.display())));
        assert!(
            out.status.success(),
            "podman pull oci:{}: {}",
            layout.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("SKIPPED (part): podman is not installed, the export was not given to it");
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn find_tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or(None)
}

#[test]
fn two_containers_share_layers_and_are_isolated() {
    if !can_mount() {
        return;
    }
    let h = Helper::new();
    let layout = h.path("layout");
    sample_image().write_oci_dir(&layout, "sample:1");
    h.ok(&["import", layout.to_str().unwrap()]);
    h.ok(&["create", "a", "sample:1"]);
    h.ok(&["create", "b", "sample:1"]);
    let ta = h.path("ta");
    let tb = h.path("tb");
    std::fs::create_dir(&ta).unwrap();
    std::fs::create_dir(&tb).unwrap();
    let ma = h.mount("a", Some(&ta));
    let mb = h.mount("b", Some(&tb));
    // One copy on disk: both mounts show the very same inode for a file of a lower layer.
    let ia = std::fs::metadata(ta.join("etc/issue")).unwrap().ino();
    let ib = std::fs::metadata(tb.join("etc/issue")).unwrap().ino();
    assert_eq!(ia, ib, "shared layer file has one inode");
    let layers = std::fs::read_dir(h.store.join("layers")).unwrap().count();
    assert_eq!(layers, 3, "three layers in the store, not six");

    std::fs::write(ta.join("etc/issue"), "changed in a\n").unwrap();
    std::fs::write(ta.join("only-a"), "a\n").unwrap();
    std::fs::remove_file(tb.join("etc/motd")).unwrap();
    assert_eq!(read(&tb.join("etc/issue")), "layer3\n");
    assert!(!tb.join("only-a").exists());
    assert_eq!(read(&ta.join("etc/motd")), "welcome\n");
    assert_eq!(h.ok(&["diff", "a"]), "C /etc\nC /etc/issue\nA /only-a\n");
    assert_eq!(h.ok(&["diff", "b"]), "C /etc\nD /etc/motd\n");

    let ls = h.ok(&["ls"]);
    assert!(ls.contains("sample:1"), "{ls}");
    let mounted: Vec<&str> = ls
        .lines()
        .filter(|l| l.contains("mounted") && !l.contains("unmounted"))
        .collect();
    assert_eq!(mounted.len(), 2, "{ls}");
    // Each mounted container's daemon in its line, from the daemon's own statistics.
    for line in &mounted {
        assert!(
            line.contains("pid ") && line.contains(" requests, "),
            "{ls}"
        );
    }
    let err = h.fails(&["rm", "a"]);
    assert!(err.contains("is mounted"), "{err}");
    ma.umount();
    mb.umount();
    let ls = h.ok(&["ls"]);
    assert_eq!(
        ls.lines().filter(|l| l.contains("unmounted")).count(),
        2,
        "{ls}"
    );
    h.ok(&["rm", "a"]);
    h.ok(&["rm", "b"]);
    assert!(!h.store.join("containers/a").exists());
}

/// Container `c1` of the sample image, mounted with the option `flag`.
fn sample_container<'a>(h: &'a Helper, flag: &str) -> ContainerMount<'a> {
    let archive = h.path("image.tar");
    sample_image().write_docker_archive(&archive, "sample:1");
    h.ok(&["import", archive.to_str().unwrap()]);
    h.ok(&["create", "c1", "sample:1"]);
    h.mount_with("c1", None, &[flag])
}

/// Commits `c1` (unmounted) as `sample:2`, exports it, and checks that the image under the
/// kernel's overlayfs shows `live`, the container's tree.
fn committed_is_the_container(h: &Helper, live: &TreeSnap) {
    h.ok(&["commit", "c1", "--tag", "sample:2"]);
    let export = h.path("export");
    h.ok(&["export", "sample:2", "--oci", export.to_str().unwrap()]);
    let (_h2, kernel) = export_under_kernel(&export, 4);
    assert_same_tree(
        live,
        &kernel,
        "committed image under kernel overlayfs vs the container",
    );
}

/// `mount --redirect-dir`: directories of the image are renamed in place (the upper holds
/// the renamed directory alone, with a redirect), and `diff` and `commit` show and write
/// what the container shows: the committed image, under the kernel's overlayfs, is the
/// container's tree.
#[test]
fn renamed_image_directories_are_committed_in_full() {
    if !can_compare() {
        return;
    }
    let h = Helper::new();
    let m = sample_container(&h, "--redirect-dir");
    let root = m.target.clone();
    assert!(
        mount_options(&root).iter().any(|o| o == "nosuid"),
        "the other defaults stay"
    );
    // A directory of one layer, renamed within its parent, then its old name made again.
    std::fs::rename(root.join("usr/lib"), root.join("usr/lib2")).unwrap();
    std::fs::create_dir(root.join("usr/lib")).unwrap();
    std::fs::write(root.join("usr/lib/fresh"), "fresh\n").unwrap();
    // A directory two layers merge (one whites out a file in it), moved to the root and
    // changed there.
    std::fs::rename(root.join("olddir"), root.join("moved")).unwrap();
    std::fs::write(root.join("moved/z"), "z\n").unwrap();
    let upper = h.store.join("containers/c1/upper");
    assert!(
        upper.join("usr/lib2").is_dir() && !upper.join("usr/lib2/libc.so").exists(),
        "the renamed directory was moved, not copied"
    );
    assert_eq!(read(&root.join("usr/lib2/libc.so")), "ELF");
    assert_eq!(dir_names(&root.join("moved")), vec!["y", "z"]);

    let diff = h.ok(&["diff", "c1"]);
    let want = "\
A /moved
A /moved/y
A /moved/z
D /olddir
C /usr
C /usr/lib
A /usr/lib/fresh
D /usr/lib/libc.so
A /usr/lib2
A /usr/lib2/libc.so
";
    assert_eq!(diff, want);
    let live = snapshot(&root);
    m.umount();
    committed_is_the_container(&h, &live);
}

/// `mount --metacopy`: a chmod or chown of an image file copies up its metadata alone (a
/// sparse upper file with `overlay.metacopy`), and `commit` writes the file with its data:
/// the committed image, under the kernel's overlayfs, is the container's tree.
#[test]
fn metacopy_files_are_committed_with_their_data() {
    if !can_compare() {
        return;
    }
    let h = Helper::new();
    let m = sample_container(&h, "--metacopy");
    let root = m.target.clone();
    std::fs::set_permissions(
        root.join("data/a.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::lchown(root.join("etc/motd"), Some(1000), Some(1000)).unwrap();
    // Renamed as well: the data is then found through an absolute redirect.
    std::fs::rename(root.join("etc/motd"), root.join("motd")).unwrap();
    let upper = h.store.join("containers/c1/upper");
    for f in ["data/a.txt", "motd"] {
        let mut v = [0u8; 64];
        assert!(
            rustix::fs::lgetxattr(upper.join(f), "trusted.overlay.metacopy", &mut v).is_ok(),
            "{f}: metadata alone in the upper"
        );
    }
    assert_eq!(read(&root.join("data/a.txt")), "shared data\n");
    assert_eq!(read(&root.join("motd")), "welcome\n");

    let diff = h.ok(&["diff", "c1"]);
    let want = "\
C /data
C /data/a.txt
C /etc
D /etc/motd
A /motd
";
    assert_eq!(diff, want);
    let live = snapshot(&root);
    m.umount();
    committed_is_the_container(&h, &live);
}
