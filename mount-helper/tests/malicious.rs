//! Hostile archives: each trick is refused with one error line naming the entry, and the
//! store is left as it was (no layer, no blob, no staging directory, nothing outside).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

fn good_layer() -> Blob {
    Blob::new(
        LayerTar::new()
            .dir("etc", 0o755)
            .file("etc/ok", b"fine\n")
            .finish(),
        Comp::Gzip,
    )
}

/// Imports an image of a good layer and `bad` as an OCI layout; expects a refusal whose
/// message holds every one of `want`, and a clean store.
fn refused(image: TestImage, want: &[&str]) {
    let h = Helper::new();
    let layout = h.path("layout");
    image.write_oci_dir(&layout, "evil");
    let err = h.fails(&["import", layout.to_str().unwrap(), "--tag", "evil"]);
    eprintln!("{}", err.trim_end());
    assert!(err.starts_with("stratafs-mount: import: "), "{err}");
    for w in want {
        assert!(err.contains(w), "error {err:?} should mention {w:?}");
    }
    assert_eq!(h.leftovers(), Vec::<String>::new(), "after {err}");
    // Nothing landed next to the store either.
    let mut names: Vec<String> = std::fs::read_dir(h.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["layout", "store"], "after {err}");
}

fn with_bad(bad: Vec<u8>) -> TestImage {
    TestImage::new(vec![good_layer(), Blob::new(bad, Comp::Gzip)])
}

#[test]
fn dotdot_entry() {
    refused(
        with_bad(LayerTar::new().file("../x", b"out\n").finish()),
        &["entry \"../x\"", "escapes the layer"],
    );
    refused(
        with_bad(
            LayerTar::new()
                .dir("a", 0o755)
                .file("a/../../x", b"out\n")
                .finish(),
        ),
        &["entry \"a/../../x\"", "escapes the layer"],
    );
}

#[test]
fn absolute_entry() {
    refused(
        with_bad(LayerTar::new().file("/etc/passwd", b"root::0:0\n").finish()),
        &["entry \"/etc/passwd\"", "absolute path"],
    );
}

#[test]
fn entry_beneath_a_symlink() {
    refused(
        with_bad(
            LayerTar::new()
                .symlink("etc", "/etc")
                .file("etc/passwd", b"root::0:0\n")
                .finish(),
        ),
        &["entry \"etc/passwd\"", "lies beneath a symlink"],
    );
    // Relative links that stay inside are refused as well: nothing is written through one.
    refused(
        with_bad(
            LayerTar::new()
                .dir("real", 0o755)
                .symlink("alias", "real")
                .file("alias/file", b"x\n")
                .finish(),
        ),
        &["entry \"alias/file\"", "lies beneath a symlink"],
    );
}

#[test]
fn hard_links_leaving_the_layer() {
    refused(
        with_bad(
            LayerTar::new()
                .hardlink("h", "../../../etc/passwd")
                .finish(),
        ),
        &["entry \"h\"", "escapes the layer"],
    );
    refused(
        with_bad(LayerTar::new().hardlink("h", "/etc/passwd").finish()),
        &["entry \"h\"", "absolute path"],
    );
    refused(
        with_bad(LayerTar::new().hardlink("h", "etc/ok").finish()),
        &["entry \"h\"", "not in the layer"],
    );
    refused(
        with_bad(
            LayerTar::new()
                .symlink("d", "/etc")
                .hardlink("h", "d/passwd")
                .finish(),
        ),
        &["entry \"h\"", "beneath a symlink"],
    );
}

#[test]
fn symlink_then_write_never_writes_through() {
    // A file entry over a symlink replaces the link; it is never opened through it.
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "untouched\n").unwrap();
    let h = Helper::new();
    let layout = h.path("layout");
    let bad = LayerTar::new()
        .symlink("evil", victim.to_str().unwrap())
        .file("evil", b"overwritten\n")
        .symlink("evil2", victim.to_str().unwrap())
        .hardlink("evil3", "evil2")
        .file("evil3", b"overwritten\n")
        .finish();
    with_bad(bad).write_oci_dir(&layout, "t");
    h.ok(&["import", layout.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    // And a whole directory of writes through a link is refused.
    refused(
        with_bad(
            LayerTar::new()
                .symlink("dir", outside.path().to_str().unwrap())
                .file("dir/victim", b"overwritten\n")
                .finish(),
        ),
        &["entry \"dir/victim\"", "lies beneath a symlink"],
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
}

#[test]
fn device_nodes_only_as_root() {
    let bad = LayerTar::new()
        .dir("dev", 0o755)
        .chardev("dev/mem", 1, 1)
        .finish();
    let h = Helper::new();
    let layout = h.path("layout");
    with_bad(bad).write_oci_dir(&layout, "t");
    let err = h.fails(&["--rootless", "import", layout.to_str().unwrap()]);
    assert!(
        err.contains("entry \"dev/mem\"") && err.contains("device node"),
        "{err}"
    );
    assert_eq!(h.leftovers(), Vec::<String>::new());
}

#[test]
fn bad_whiteouts_and_root_replacement() {
    refused(
        with_bad(
            LayerTar::new()
                .dir("a", 0o755)
                .file("a/.wh..", b"")
                .finish(),
        ),
        &["entry \"a/.wh..\"", "whiteout of . or .."],
    );
    refused(
        with_bad(LayerTar::new().file("./", b"").finish()),
        &["entry \"./\"", "layer's root"],
    );
}

#[test]
fn truncated_gzip() {
    let mut img = with_bad(LayerTar::new().file("big", &vec![7u8; 100_000]).finish());
    // Cut the compressed blob; the manifest describes the cut blob truthfully, so only the
    // decompression can notice.
    let l = &mut img.layers[1];
    l.blob.truncate(l.blob.len() / 2);
    img.claims[1] = (l.digest(), l.blob.len() as u64);
    refused(img, &["corrupt or truncated"]);
}

#[test]
fn truncated_tar_entry() {
    let tar = LayerTar::new().file("f", &vec![1u8; 4096]).finish();
    let cut = tar[..512 + 1000].to_vec();
    let mut img = TestImage::new(vec![good_layer(), Blob::new(cut, Comp::Plain)]);
    img.diff_ids[1] = img.layers[1].diff_id();
    refused(img, &["entry \"f\"", "truncated"]);
}

#[test]
fn wrong_diff_id() {
    let mut img = with_bad(LayerTar::new().file("f", b"data\n").finish());
    img.diff_ids[1] = format!("sha256:{}", "0".repeat(64));
    refused(
        img,
        &["diff-id is sha256:", "the image config says sha256:0000"],
    );
}

#[test]
fn wrong_blob_digest() {
    let mut img = with_bad(LayerTar::new().file("f", b"data\n").finish());
    img.claims[1].0 = format!("sha256:{}", "a".repeat(64));
    refused(
        img,
        &[
            "layer sha256:aaaaaaaaaaaa",
            "digest is sha256:",
            "the manifest says sha256:aaaa",
        ],
    );
}

#[test]
fn size_mismatch() {
    let mut img = with_bad(LayerTar::new().file("f", b"data\n").finish());
    img.claims[1].1 += 10;
    refused(img, &["bytes, the image claims"]);
}

#[test]
fn docker_archive_member_leaving_the_archive() {
    let h = Helper::new();
    let img = with_bad(LayerTar::new().file("f", b"x").finish());
    let config = img.config();
    let config_name = format!("{}.json", sha256_hex(&config));
    let manifest = serde_json::json!([{
        "Config": config_name, "RepoTags": ["x:1"], "Layers": ["a/layer.tar", "../../etc/passwd"],
    }]);
    let archive = h.path("evil.tar");
    write_tar(
        &archive,
        &[
            (config_name, config),
            ("a/layer.tar".into(), img.layers[0].blob.clone()),
            (
                "manifest.json".into(),
                serde_json::to_vec(&manifest).unwrap(),
            ),
        ],
    );
    let err = h.fails(&["import", archive.to_str().unwrap()]);
    assert!(err.contains("leaves the archive"), "{err}");
    assert_eq!(h.leftovers(), Vec::<String>::new());
}

#[test]
fn docker_archive_wrong_diff_id() {
    let h = Helper::new();
    let mut img = with_bad(LayerTar::new().file("f", b"x").finish());
    img.diff_ids[1] = img.diff_ids[0].clone();
    let archive = h.path("evil.tar");
    img.write_docker_archive(&archive, "x:1");
    let err = h.fails(&["import", archive.to_str().unwrap()]);
    assert!(err.contains("diff-id is"), "{err}");
    assert_eq!(h.leftovers(), Vec::<String>::new());
}
