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
    // (A source refused before the store is opened leaves no store at all.)
    let mut names: Vec<String> = std::fs::read_dir(h.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "store")
        .collect();
    names.sort();
    assert_eq!(names, vec!["layout"], "after {err}");
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

// ---- references (issue 14, item 3) ----

fn tags_json(h: &Helper) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(h.store.join("tags.json")).unwrap()).unwrap()
}

fn container_image(h: &Helper, name: &str) -> String {
    let p = h.store.join("containers").join(name).join("container.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    v["image"].as_str().unwrap().to_string()
}

#[test]
fn hostile_tags_are_refused() {
    let h = Helper::new();
    let trusted = h.path("trusted");
    TestImage::new(vec![good_layer()]).write_oci_dir(&trusted, "trusted:1");
    let id = imported_id(&h.ok(&["import", trusted.to_str().unwrap()]));
    let hex = id.trim_start_matches("sha256:").to_string();
    let evil = with_bad(LayerTar::new().file("evil", b"evil\n").finish());
    let too_long = format!("a{}", "b".repeat(300));
    let bad: Vec<&str> = vec![
        &id,
        &hex,
        "sha256:abcd",
        "../../x",
        ":",
        "x:y:z",
        "/abs:t",
        "Upper:1",
        "a@sha256:0000",
        &too_long,
    ];
    for b in bad {
        // As the archive's RepoTags, as its annotation, and as --tag.
        let archive = h.path("evil.tar");
        evil.write_docker_archive(&archive, b);
        let err = h.fails(&["import", archive.to_str().unwrap()]);
        assert!(
            err.contains("tag ") || err.contains("reference"),
            "{b}: {err}"
        );
        assert!(err.len() < 400, "{b}: a short error line: {err}");
        let layout = h.path("evil-layout");
        let _ = std::fs::remove_dir_all(&layout);
        evil.write_oci_dir(&layout, b);
        let err = h.fails(&["import", layout.to_str().unwrap()]);
        assert!(
            err.contains("tag ") || err.contains("reference"),
            "{b}: {err}"
        );
        let err = h.fails(&["import", trusted.to_str().unwrap(), "--tag", b]);
        assert!(err.contains("tag "), "{b}: {err}");
    }
    // Nothing of the hostile image stayed, and the id still names the trusted image.
    assert_eq!(tags_json(&h), serde_json::json!({"trusted:1": id}));
    assert_eq!(
        std::fs::read_dir(h.store.join("images")).unwrap().count(),
        1
    );
    h.ok(&["create", "web", &id]);
    assert_eq!(container_image(&h, "web"), id);
    // Good references are still taken.
    for good in [
        "alpine",
        "alpine:3.19",
        "docker.io/library/alpine:latest",
        "localhost:5000/a/b_c.d-e:T_1.x",
        "3.19",
    ] {
        let out = h.ok(&["import", trusted.to_str().unwrap(), "--tag", good]);
        assert!(out.trim().ends_with(&format!(" as {good}")), "{out}");
    }
}

#[test]
fn a_full_id_is_never_read_as_a_tag() {
    // A store written before tags were checked may hold a tag spelled like an id: the id
    // still names the image it is the id of.
    let h = Helper::new();
    let trusted = h.path("trusted");
    TestImage::new(vec![good_layer()]).write_oci_dir(&trusted, "trusted:1");
    let id = imported_id(&h.ok(&["import", trusted.to_str().unwrap()]));
    let other = h.path("other");
    with_bad(LayerTar::new().file("evil", b"evil\n").finish()).write_oci_dir(&other, "other:1");
    let evil_id = imported_id(&h.ok(&["import", other.to_str().unwrap()]));
    let hex = id.trim_start_matches("sha256:").to_string();
    let tags = serde_json::json!({
        "trusted:1": id, "other:1": evil_id, id.clone(): evil_id, hex.clone(): evil_id,
    });
    std::fs::write(h.store.join("tags.json"), tags.to_string()).unwrap();
    h.ok(&["create", "a", &id]);
    assert_eq!(container_image(&h, "a"), id);
    h.ok(&["create", "b", &hex]);
    assert_eq!(container_image(&h, "b"), id);
}

// ---- non-regular sources (issue 14, item 6) ----

fn mkfifo(p: &std::path::Path) {
    let _ = std::fs::remove_file(p);
    let o = run(std::process::Command::new("mkfifo").arg(p));
    assert!(o.status.success(), "mkfifo {}", p.display());
}

/// Runs the helper with a deadline: a hang is a failure (and the process is killed).
fn fails_soon(h: &Helper, args: &[&str]) -> String {
    let o = run_timeout(&mut h.cmd(args), std::time::Duration::from_secs(20))
        .unwrap_or_else(|| panic!("stratafs-mount {args:?} hung"));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

/// An OCI layout `layout` of an image whose second layer's blob is a FIFO.
fn layout_with_a_fifo_blob(h: &Helper) -> (TestImage, std::path::PathBuf) {
    let img = with_bad(LayerTar::new().file("f", b"x\n").finish());
    let layout = h.path("layout");
    img.write_oci_dir(&layout, "t");
    let blob = layout
        .join("blobs/sha256")
        .join(img.layers[1].digest().trim_start_matches("sha256:"));
    mkfifo(&blob);
    (img, layout)
}

#[test]
fn fifo_in_place_of_a_blob() {
    let h = Helper::new();
    let (img, layout) = layout_with_a_fifo_blob(&h);
    let err = fails_soon(&h, &["import", layout.to_str().unwrap()]);
    assert!(err.contains("not a regular file"), "{err}");
    assert_eq!(h.leftovers(), Vec::<String>::new());

    // The same for a document (index.json) and for the archive itself.
    let layout2 = h.path("layout2");
    img.write_oci_dir(&layout2, "t");
    mkfifo(&layout2.join("index.json"));
    let err = fails_soon(&h, &["import", layout2.to_str().unwrap()]);
    assert!(err.contains("not a regular file"), "{err}");
    let archive = h.path("fifo.tar");
    mkfifo(&archive);
    let err = fails_soon(&h, &["import", archive.to_str().unwrap()]);
    assert!(err.contains("not a regular file"), "{err}");
    // A device in place of the archive too.
    let err = fails_soon(&h, &["import", "/dev/zero"]);
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_bad_source_is_refused_without_waiting_for_the_store() {
    // The source is read and checked before the store is locked: while another command
    // holds the store, a broken source fails at once rather than queueing behind it.
    let h = Helper::new();
    h.ok(&["gc"]);
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(h.store.join("lock"))
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let (img, layout) = layout_with_a_fifo_blob(&h);
    let err = fails_soon(&h, &["import", layout.to_str().unwrap()]);
    assert!(err.contains("not a regular file"), "{err}");
    let mut bad_tag = img.clone();
    bad_tag.layers.truncate(1);
    bad_tag.diff_ids.truncate(1);
    bad_tag.claims.truncate(1);
    let layout3 = h.path("layout3");
    bad_tag.write_oci_dir(&layout3, "Bad:tag");
    let err = fails_soon(&h, &["import", layout3.to_str().unwrap()]);
    assert!(err.contains("tag "), "{err}");
    drop(lock);
}

// ---- sizes: expansion, free space (issue 14, item 4) ----

/// A layer tar holding one GNU sparse file of `real` bytes: all hole but its last 512.
fn sparse_layer(real: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_path("big").unwrap();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(512);
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].set_offset(real - 512);
        gnu.sparse[0].set_length(512);
        gnu.set_real_size(real);
    }
    h.set_cksum();
    b.append(&h, &[7u8; 512][..]).unwrap();
    b.into_inner().unwrap()
}

/// A helper whose store lies on a small tmpfs: whatever an import writes, it cannot fill
/// the machine's disk (the tests of what an unbounded import would do rely on it).
fn small_store(size: &str) -> Option<(Helper, Tmpfs)> {
    if !can_root() {
        return None;
    }
    let mut h = Helper::new();
    let fs = Tmpfs::new(&h.path("fs"), size);
    h.store = fs.path.join("store");
    Some((h, fs))
}

fn tmpfs_used(fs: &Tmpfs) -> u64 {
    let st = rustix::fs::statvfs(&fs.path).unwrap();
    (st.f_blocks - st.f_bfree) * st.f_frsize
}

#[test]
fn sparse_bomb_is_refused_before_writing() {
    let Some((h, fs)) = small_store("256m") else {
        return;
    };
    // 3 KB of archive declaring a 1 TiB file, with a wrong diff-id: nothing may be written.
    let mut img = with_bad(sparse_layer(1 << 40));
    img.diff_ids[1] = format!("sha256:{}", "0".repeat(64));
    let layout = h.path("layout");
    img.write_oci_dir(&layout, "bomb");
    let start = std::time::Instant::now();
    let err = fails_soon(&h, &["import", layout.to_str().unwrap()]);
    assert!(
        err.contains("entry \"big\" is 1.00 TiB")
            && err.contains("over its size limit of 1.00 GiB"),
        "{err}"
    );
    assert!(err.contains("--max-layer-size"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(15));
    assert_eq!(h.leftovers(), Vec::<String>::new());
    assert!(tmpfs_used(&fs) < 1 << 20, "{} bytes left", tmpfs_used(&fs));
    // Allowed by the limit, it still does not fit.
    let err = fails_soon(
        &h,
        &[
            "import",
            layout.to_str().unwrap(),
            "--max-layer-size",
            "2TiB",
        ],
    );
    assert!(
        err.contains("entry \"big\" is 1.00 TiB") && err.contains("the store's filesystem has"),
        "{err}"
    );
    assert_eq!(h.leftovers(), Vec::<String>::new());
}

#[test]
fn sparse_files_stay_sparse() {
    let h = Helper::new();
    let img = TestImage::new(vec![Blob::new(sparse_layer(64 << 20), Comp::Gzip)]);
    let layout = h.path("layout");
    img.write_oci_dir(&layout, "sparse");
    h.ok(&["import", layout.to_str().unwrap()]);
    let layers: Vec<_> = std::fs::read_dir(h.store.join("layers")).unwrap().collect();
    let f = layers[0].as_ref().unwrap().path().join("diff/big");
    let md = std::fs::metadata(&f).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md.len(), 64 << 20);
    assert!(md.blocks() * 512 < 1 << 20, "{} blocks", md.blocks());
    let data = std::fs::read(&f).unwrap();
    assert!(data[..(64 << 20) - 512].iter().all(|b| *b == 0));
    assert!(data[(64 << 20) - 512..].iter().all(|b| *b == 7));
}

#[test]
fn gzip_bomb_stops_at_the_layer_size_limit() {
    let h = Helper::new();
    let zeros = vec![0u8; 64 << 20];
    // A 64 MiB file in a blob of a few dozen KB.
    let img = with_bad(LayerTar::new().file("zeros", &zeros).finish());
    assert!(img.layers[1].blob.len() < 1 << 20);
    let layout = h.path("layout");
    img.write_oci_dir(&layout, "bomb");
    let err = fails_soon(
        &h,
        &[
            "import",
            layout.to_str().unwrap(),
            "--max-layer-size",
            "16MiB",
        ],
    );
    assert!(
        err.contains("entry \"zeros\" is 64.00 MiB")
            && err.contains("over its size limit of 16.00 MiB (--max-layer-size)"),
        "{err}"
    );
    assert_eq!(h.leftovers(), Vec::<String>::new());
    // Zeros after the end of the archive: the stream itself is stopped at the limit.
    let mut tar = LayerTar::new().file("small", b"x\n").finish();
    tar.extend_from_slice(&zeros);
    let img = with_bad(tar);
    let layout2 = h.path("layout2");
    img.write_oci_dir(&layout2, "bomb");
    let err = fails_soon(
        &h,
        &[
            "import",
            layout2.to_str().unwrap(),
            "--max-layer-size",
            "16MiB",
        ],
    );
    assert!(
        err.contains("its uncompressed tar is over the layer size limit of 16.00 MiB"),
        "{err}"
    );
    assert_eq!(h.leftovers(), Vec::<String>::new());
    // Within the limit, it is imported.
    h.ok(&[
        "import",
        layout.to_str().unwrap(),
        "--max-layer-size",
        "100MiB",
    ]);
    let err = h.run(&[
        "import",
        layout.to_str().unwrap(),
        "--max-layer-size",
        "lots",
    ]);
    assert_eq!(err.status.code(), Some(2));
}

#[test]
fn a_full_store_is_named_as_such() {
    let Some((h, _fs)) = small_store("48m") else {
        return;
    };
    let img = with_bad(
        LayerTar::new()
            .file("zeros", &vec![0u8; 100 << 20])
            .finish(),
    );
    let layout = h.path("layout");
    img.write_oci_dir(&layout, "big");
    let err = fails_soon(&h, &["import", layout.to_str().unwrap()]);
    assert!(
        err.contains("entry \"zeros\" is 100.00 MiB") && err.contains("the store's filesystem has"),
        "{err}"
    );
    assert!(!err.contains("corrupt"), "{err}");
    assert_eq!(h.leftovers(), Vec::<String>::new());
}

// ---- extension headers (issue 14, item 5) ----

/// A layer whose only file is preceded by an extension header of `size` bytes of data:
/// type `x` (a PAX record) or `L` (a GNU long name).
fn extension_layer(kind: u8, size: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(size);
    match kind {
        b'x' => {
            let key = "SCHILY.xattr.user.big=";
            // "LEN KEY=VALUE\n", LEN counting itself.
            let len_digits = size.to_string().len();
            let value = size - len_digits - 1 - key.len() - 1;
            data.extend_from_slice(format!("{size} {key}").as_bytes());
            data.resize(data.len() + value, b'a');
            data.push(b'\n');
            assert_eq!(data.len(), size);
        }
        _ => {
            while data.len() + 2 < size {
                data.extend_from_slice(b"a/");
            }
            data.push(b'f');
        }
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_mode(0o644);
    let mut t = LayerTar::new();
    t.raw(h, "././@LongLink", None, &data);
    t.file("f", b"x\n");
    t.finish()
}

#[test]
fn huge_extension_headers_are_refused_with_little_memory() {
    let h = Helper::new();
    for (kind, what) in [(b'x', "a PAX extended header"), (b'L', "a GNU long name")] {
        let img = with_bad(extension_layer(kind, 64 << 20));
        let mut img = img;
        img.layers[1] = Blob::new(img.layers[1].tar.clone(), Comp::Zstd);
        img.claims[1] = (img.layers[1].digest(), img.layers[1].blob.len() as u64);
        let layout = h.path("layout");
        let _ = std::fs::remove_dir_all(&layout);
        img.write_oci_dir(&layout, "t");
        // 96 MiB of address space in all: the record alone would take 64 MiB, and the tar
        // crate grows its buffer by doubling.
        let out = run_limited(&h.cmd(&["import", layout.to_str().unwrap()]), 96 << 20);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{what}: {}", err.trim_end());
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("{what} of 64.00 MiB"))
                && err.contains("over the limit of 1.00 MiB"),
            "{err}"
        );
        assert!(err.len() < 300, "error line of {} bytes", err.len());
        assert_eq!(h.leftovers(), Vec::<String>::new());
    }
    // Within the limit, the records are used as they are.
    for (kind, size) in [(b'x', 1000), (b'L', 3000)] {
        let img = TestImage::new(vec![Blob::new(extension_layer(kind, size), Comp::Gzip)]);
        let layout = h.path("layout");
        let _ = std::fs::remove_dir_all(&layout);
        img.write_oci_dir(&layout, "t");
        h.ok(&["import", layout.to_str().unwrap()]);
    }
}

#[test]
fn long_names_in_errors_are_cut() {
    let long = format!("{}../x", "d/".repeat(200_000));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    let mut t = LayerTar::new();
    let mut name = long.clone().into_bytes();
    name.push(0);
    t.raw(h, "././@LongLink", None, &name);
    t.file("f", b"x\n");
    let img = with_bad(t.finish());
    let h = Helper::new();
    let layout = h.path("layout");
    img.write_oci_dir(&layout, "t");
    let err = h.fails(&["import", layout.to_str().unwrap()]);
    assert!(
        err.contains("longer than PATH_MAX (4096)"),
        "{}",
        &err[..err.len().min(500)]
    );
    assert!(err.len() < 400, "error line of {} bytes", err.len());
    // A path that is fine but for its depth: 4000 directories are not made.
    let deep = format!("{}f", "a/".repeat(4000));
    let mut lh = tar::Header::new_gnu();
    lh.set_entry_type(tar::EntryType::GNULongName);
    let mut t = LayerTar::new();
    t.raw(lh, "././@LongLink", None, deep.as_bytes());
    t.file("f", b"x\n");
    let layout = h.path("layout-deep");
    with_bad(t.finish()).write_oci_dir(&layout, "t");
    let err = h.fails(&["import", layout.to_str().unwrap()]);
    assert!(
        err.contains("is a path of 8001 bytes, longer than PATH_MAX (4096)"),
        "{err}"
    );
    assert!(err.len() < 400, "error line of {} bytes", err.len());
    assert_eq!(h.leftovers(), Vec::<String>::new());
    // A name under PATH_MAX that escapes: quoted, and cut.
    let long = format!("{}../x", "d/".repeat(2000));
    let mut lh = tar::Header::new_gnu();
    lh.set_entry_type(tar::EntryType::GNULongName);
    let mut t = LayerTar::new();
    t.raw(lh, "././@LongLink", None, long.as_bytes());
    t.file("f", b"x\n");
    let layout = h.path("layout2");
    with_bad(t.finish()).write_oci_dir(&layout, "t");
    let err = h.fails(&["import", layout.to_str().unwrap()]);
    assert!(err.contains("escapes the layer"), "{err}");
    assert!(err.contains("... (4004 characters)"), "{err}");
    assert!(err.len() < 400, "error line of {} bytes", err.len());
    // The outer archive's names too.
    let archive = h.path("long.tar");
    let mut lh = tar::Header::new_gnu();
    lh.set_entry_type(tar::EntryType::GNULongName);
    let outer = LayerTar::new()
        .file("manifest.json", b"[]")
        .raw(
            lh,
            "././@LongLink",
            None,
            format!("../{}x", "m/".repeat(100_000)).as_bytes(),
        )
        .file("x", b"x")
        .finish();
    std::fs::write(&archive, outer).unwrap();
    let err = h.fails(&["import", archive.to_str().unwrap()]);
    assert!(err.len() < 400, "error line of {} bytes", err.len());
}

// ---- deep trees (found while measuring item 5) ----

/// A layer making a directory chain `depth` deep (a path just under PATH_MAX), then
/// replacing its top with a file.
fn deep_layer(depth: usize, replace_top: bool) -> Vec<u8> {
    let deep = format!("{}f", "a/".repeat(depth));
    let mut lh = tar::Header::new_gnu();
    lh.set_entry_type(tar::EntryType::GNULongName);
    let mut t = LayerTar::new();
    t.raw(lh, "././@LongLink", None, deep.as_bytes());
    t.file("f", b"deep\n");
    if replace_top {
        t.file("a", b"replaced\n");
    }
    t.finish()
}

#[test]
fn deep_trees_are_removed_under_a_low_descriptor_limit() {
    // 2040 levels fit in PATH_MAX; a removal holding one descriptor per level fails under
    // a limit of 256, and a staging directory left behind stops every later writer.
    let h = Helper::new();
    let mut img = with_bad(deep_layer(2040, false));
    img.diff_ids[1] = format!("sha256:{}", "0".repeat(64));
    let layout = h.path("layout");
    img.write_oci_dir(&layout, "t");
    let out = run_prlimit(
        &h.cmd(&["import", layout.to_str().unwrap()]),
        &["--nofile=256"],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the image config says sha256:0000"), "{err}");
    assert_eq!(h.leftovers(), Vec::<String>::new(), "{err}");
    // A deep directory replaced by a file in the same layer.
    let img = with_bad(deep_layer(2040, true));
    let layout2 = h.path("layout2");
    img.write_oci_dir(&layout2, "deep:1");
    let out = run_prlimit(
        &h.cmd(&["import", layout2.to_str().unwrap()]),
        &["--nofile=256"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And a layer holding the chain is collected.
    let img = with_bad(deep_layer(2040, false));
    let layout3 = h.path("layout3");
    img.write_oci_dir(&layout3, "deep:2");
    h.ok(&["import", layout3.to_str().unwrap()]);
    h.ok(&["rmi", "deep:1"]);
    h.ok(&["rmi", "deep:2"]);
    let out = run_prlimit(&h.cmd(&["gc"]), &["--nofile=256"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(h.leftovers(), Vec::<String>::new());
}
