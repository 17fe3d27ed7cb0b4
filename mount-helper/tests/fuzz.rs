//! Property-based fuzzing of `import`: random and mutated layer tars (headers, names, links,
//! extension records, sparse maps), docker-archive `manifest.json`s, OCI `index.json`s,
//! manifests and configs, and raw bytes in place of an archive.
//!
//! Whatever the input, the helper must finish (no hang), exit 0 or 1 (never a panic or a
//! signal), print one short error line when it fails, leave nothing half-written in the
//! store, and write nothing outside it.
//!
//! Each property runs `STRATAFS_FUZZ_CASES` cases (default 40, sized for CI); longer runs:
//! `STRATAFS_FUZZ_CASES=5000 cargo test -p stratafs-mount --test fuzz`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

fn config() -> Config {
    Config {
        max_shrink_iters: 200,
        ..fuzz_config(40)
    }
}

/// One fuzz case's world: a store, the source, and a directory outside the store that a
/// hostile archive may aim at (through symlinks and hard links to its absolute path).
struct World {
    h: Helper,
    outside: std::path::PathBuf,
}

impl World {
    fn new() -> World {
        let h = Helper::new();
        let outside = h.path("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"untouched\n").unwrap();
        World { h, outside }
    }

    /// Imports `src` and checks every property of the outcome.
    fn import(&self, src: &Path, extra: &[&str]) -> Result<(), TestCaseError> {
        let mut args = vec!["import", src.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = run_timeout(&mut self.h.cmd(&args), Duration::from_secs(60));
        let Some(out) = out else {
            return Err(TestCaseError::fail("import hung (killed after 60 s)"));
        };
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out.status.code();
        prop_assert!(
            code == Some(0) || code == Some(1),
            "exit status {:?} (a panic is 101, a signal none): {}",
            out.status,
            err
        );
        prop_assert!(!err.contains("panicked"), "{}", err);
        if code == Some(1) {
            prop_assert_eq!(err.lines().count(), 1, "one error line: {}", err);
            prop_assert!(err.starts_with("stratafs-mount: import: "), "{}", err);
            prop_assert!(err.len() <= 1100, "error line of {} bytes", err.len());
            let left = self.h.leftovers();
            prop_assert!(
                left.is_empty(),
                "left after a refusal: {:?} ({})",
                left,
                err
            );
        }
        // Nothing outside the store: the directory next to it is as it was, and nothing
        // new appeared beside it.
        prop_assert_eq!(
            std::fs::read(self.outside.join("victim")).unwrap(),
            b"untouched\n".to_vec()
        );
        let outside: Vec<_> = std::fs::read_dir(&self.outside).unwrap().collect();
        prop_assert_eq!(outside.len(), 1);
        let mut names: Vec<String> = std::fs::read_dir(self.h.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.retain(|n| n != "store" && n != "outside" && n != "src");
        prop_assert!(names.is_empty(), "written beside the store: {:?}", names);
        Ok(())
    }
}

// ---- layer tars ----

/// Names an entry may have: ordinary ones, and every trick the unpacker refuses.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "a",
            "b",
            "a/b",
            "a/b/c",
            "d/",
            ".",
            "./",
            "..",
            "../x",
            "a/../../x",
            "/abs",
            "/",
            ".wh.a",
            "a/.wh.b",
            ".wh..wh..opq",
            "a/.wh..wh..opq",
            ".wh..",
            ".wh.",
            "s/x",
            "l",
            "",
            "a//b",
            "./a/./b",
        ])
        .prop_map(str::to_string),
        "[a-c./]{1,12}",
    ]
}

/// What an entry of a fuzzed layer is.
#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(usize),
    Symlink(String),
    Hard(String),
    Fifo,
    Char(u32, u32),
    /// A GNU long name (`L`) of this many bytes before a file.
    LongName(usize),
    /// A PAX record with this key and value before a file.
    Pax(String, Vec<u8>),
    /// A GNU sparse file: real size, data offset.
    Sparse(u64, u64),
    /// A header of another type byte.
    Other(u8),
}

fn kind(outside: String) -> impl Strategy<Value = Kind> {
    let target = prop_oneof![
        name(),
        Just(outside.clone()),
        Just(format!("{outside}/victim")),
        Just("../../../../etc/passwd".to_string()),
    ];
    prop_oneof![
        3 => Just(Kind::Dir),
        3 => (0usize..3000).prop_map(Kind::File),
        2 => target.clone().prop_map(Kind::Symlink),
        2 => target.prop_map(Kind::Hard),
        1 => Just(Kind::Fifo),
        1 => (0u32..3, 0u32..3).prop_map(|(a, b)| Kind::Char(a, b)),
        1 => (90usize..2000).prop_map(Kind::LongName),
        1 => (
            prop::sample::select(vec![
                "path", "linkpath", "size", "uid", "gid", "mtime",
                "SCHILY.xattr.user.x", "SCHILY.xattr.trusted.overlay.opaque",
                "SCHILY.xattr.security.capability", "GNU.sparse.map", "",
            ]),
            prop::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(k, v)| Kind::Pax(k.to_string(), v)),
        1 => (0u64..(1 << 42), 0u64..(1 << 42)).prop_map(|(r, o)| Kind::Sparse(r, o)),
        1 => any::<u8>().prop_map(Kind::Other),
    ]
}

fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// Writes a GNU header's checksum field over `block`, as tar computes it.
fn fix_checksum(block: &mut [u8]) {
    let sum: u32 = block[..148]
        .iter()
        .chain(&block[156..512])
        .map(|b| u32::from(*b))
        .sum::<u32>()
        + 8 * 32;
    let s = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(s.as_bytes());
}

/// Builds a layer tar of `entries`, then overwrites bytes: `(block, offset, byte)`, the
/// checksum of a touched header block fixed again when `fix` says so.
fn layer_tar(entries: &[(String, Kind)], muts: &[(usize, usize, u8)], fix: bool) -> Vec<u8> {
    use tar::EntryType as T;
    let mut t = LayerTar::new();
    let short = |n: &str| n.chars().take(99).collect::<String>();
    for (n, k) in entries {
        let n = short(n);
        match k {
            Kind::Dir => {
                t.dir(&n, 0o755);
            }
            Kind::File(size) => {
                t.file(&n, &vec![b'x'; *size]);
            }
            Kind::Symlink(target) => {
                t.raw(header(T::Symlink, 0o777), &n, Some(&short(target)), b"");
            }
            Kind::Hard(target) => {
                t.raw(header(T::Link, 0o644), &n, Some(&short(target)), b"");
            }
            Kind::Fifo => {
                t.fifo(&n);
            }
            Kind::Char(a, b) => {
                t.chardev(&n, *a, *b);
            }
            Kind::LongName(len) => {
                let mut long = n.clone().into_bytes();
                while long.len() < *len {
                    long.extend_from_slice(b"/q");
                }
                t.raw(header(T::GNULongName, 0o644), "././@LongLink", None, &long);
                t.file(&n, b"long\n");
            }
            Kind::Pax(key, value) => {
                let mut rec = Vec::new();
                let body_len = key.len() + value.len() + 3;
                let total = body_len + (body_len + 3).to_string().len();
                rec.extend_from_slice(format!("{total} {key}=").as_bytes());
                rec.extend_from_slice(value);
                rec.push(b'\n');
                t.raw(header(T::XHeader, 0o644), "pax", None, &rec);
                t.file(&n, b"pax\n");
            }
            Kind::Sparse(real, off) => {
                let mut h = header(T::GNUSparse, 0o644);
                if let Some(g) = h.as_gnu_mut() {
                    g.sparse[0].set_offset(*off);
                    g.sparse[0].set_length(512);
                    g.set_real_size(*real);
                }
                t.raw(h, &n, None, &[1u8; 512]);
            }
            Kind::Other(b) => {
                t.raw(header(T::new(*b), 0o644), &n, None, b"data");
            }
        }
    }
    let mut tar = t.finish();
    let blocks = tar.len() / 512;
    let mut touched = std::collections::BTreeSet::new();
    for &(block, off, byte) in muts {
        let b = block % blocks.max(1);
        let pos = b * 512 + off % 512;
        if pos < tar.len() {
            tar[pos] = byte;
            touched.insert(b);
        }
    }
    if fix {
        for b in touched {
            let block = &mut tar[b * 512..(b + 1) * 512];
            // Only what looks like a header (the ustar/gnu magic) gets its sum fixed.
            if &block[257..262] == b"ustar" {
                fix_checksum(block);
            }
        }
    }
    tar
}

fn comp() -> impl Strategy<Value = Comp> {
    prop::sample::select(vec![Comp::Plain, Comp::Gzip, Comp::Zstd])
}

/// Header fields worth hitting: name, mode, uid, gid, size, mtime, checksum, type, link
/// name, magic, device numbers, prefix; and anywhere at all.
fn mutation() -> impl Strategy<Value = (usize, usize, u8)> {
    let field = prop_oneof![
        0usize..100,
        100usize..124,
        124usize..136,
        136usize..148,
        148usize..157,
        157usize..257,
        257usize..265,
        329usize..345,
        345usize..500,
        0usize..512,
    ];
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(vec![
            0u8, b'0', b'7', b'9', b' ', b'/', b'.', 0x80, 0xff, b'x', b'L', b'K', b'S', b'g',
        ]),
    ];
    (0usize..64, field, byte)
}

proptest! {
    #![proptest_config(config())]

    /// Random layers, their headers then mutated; the config and manifest describe the
    /// mutated tar truthfully, so the unpacker (not a digest check) meets every trick.
    #[test]
    fn fuzz_layer_tars(
        entries in prop::collection::vec((name(), kind("/OUTSIDE".into())), 1..12),
        muts in prop::collection::vec(mutation(), 0..6),
        fix in any::<bool>(),
        comp in comp(),
        rootless in any::<bool>(),
        form in 0u8..3,
    ) {
        let w = World::new();
        let outside = w.outside.to_string_lossy().into_owned();
        let entries: Vec<(String, Kind)> = entries
            .into_iter()
            .map(|(n, k)| {
                let k = match k {
                    Kind::Symlink(t) => Kind::Symlink(t.replace("/OUTSIDE", &outside)),
                    Kind::Hard(t) => Kind::Hard(t.replace("/OUTSIDE", &outside)),
                    k => k,
                };
                (n, k)
            })
            .collect();
        let tar = layer_tar(&entries, &muts, fix);
        let img = TestImage::new(vec![Blob::new(tar, comp)]);
        let src = w.h.path("src");
        match form {
            0 => img.write_oci_dir(&src, "fuzz:1"),
            1 => img.write_oci_archive(&src, "fuzz:1"),
            _ => img.write_docker_archive(&src, "fuzz:1"),
        }
        // --rootless (a global option): the `.wh.` formats, no device nodes, no owners.
        let extra: &[&str] = if rootless { &["--rootless"] } else { &[] };
        w.import(&src, extra)?;
    }

    /// docker-archive `manifest.json`s with random fields: config and layer names that
    /// leave the archive, are missing or repeated, odd tags, wrong JSON types.
    #[test]
    fn fuzz_docker_manifests(
        config_name in prop_oneof![Just(None), name().prop_map(Some)],
        tags in prop::collection::vec(prop_oneof![name(), "[a-zA-Z0-9:/@._-]{0,40}"], 0..3),
        layers in prop::collection::vec(prop_oneof![Just("L".to_string()), name()], 0..4),
        junk in prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z]{0,8}".prop_map(serde_json::Value::from),
        ],
        field in 0usize..5,
        extra_images in 0usize..3,
    ) {
        let w = World::new();
        let layer = Blob::new(LayerTar::new().dir("d", 0o755).file("d/f", b"f\n").finish(), Comp::Gzip);
        let img = TestImage::new(vec![layer.clone()]);
        let config = img.config();
        let config_file = format!("{}.json", sha256_hex(&config));
        let layers: Vec<String> = layers
            .into_iter()
            .map(|l| if l == "L" { "l/layer.tar".to_string() } else { l })
            .collect();
        let mut m = serde_json::json!({
            "Config": config_name.unwrap_or_else(|| config_file.clone()),
            "RepoTags": tags,
            "Layers": layers,
        });
        let keys = ["Config", "RepoTags", "Layers", "Extra", "Config"];
        if field < 4 {
            m[keys[field]] = junk;
        }
        let mut list = vec![m.clone()];
        for _ in 0..extra_images {
            list.push(m.clone());
        }
        let files = vec![
            (config_file, config),
            ("l/layer.tar".to_string(), layer.blob.clone()),
            ("manifest.json".to_string(), serde_json::to_vec(&list).unwrap()),
        ];
        let src = w.h.path("src");
        write_tar(&src, &files);
        w.import(&src, &[])?;
    }

    /// OCI layouts whose index, manifest or config has one field replaced by a random
    /// value; the documents are re-hashed so that the changed one is still the one named.
    #[test]
    fn fuzz_oci_documents(
        doc in 0usize..3,
        path in prop::collection::vec(prop::sample::select(vec![
            "manifests", "layers", "config", "mediaType", "digest", "size", "annotations",
            "platform", "rootfs", "diff_ids", "schemaVersion", "urls",
            "org.opencontainers.image.ref.name", "architecture", "os",
        ]), 1..4),
        index in 0usize..3,
        value in prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            Just(serde_json::json!(-1)),
            Just(serde_json::json!("application/vnd.oci.image.index.v1+json")),
            Just(serde_json::json!("sha256:../../../etc/passwd")),
            Just(serde_json::json!("sha512:00")),
            Just(serde_json::json!(format!("sha256:{}", "0".repeat(64)))),
            "[ -~]{0,30}".prop_map(serde_json::Value::from),
            Just(serde_json::json!([])),
            Just(serde_json::json!({})),
            Just(serde_json::json!([{"mediaType": "x", "digest": "sha256:00", "size": 1}])),
        ],
    ) {
        let w = World::new();
        let layer = Blob::new(LayerTar::new().file("f", b"f\n").finish(), Comp::Gzip);
        let img = TestImage::new(vec![layer.clone(), layer]);
        let src = w.h.path("src");
        img.write_oci_dir(&src, "fuzz:1");
        mutate_oci(&src, doc, &path, index, value);
        w.import(&src, &[])?;
    }

    /// Bytes in place of an archive: random ones, or a valid archive cut or flipped.
    #[test]
    fn fuzz_outer_archives(
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        random in prop::collection::vec(any::<u8>(), 0..2048),
        which in 0u8..3,
    ) {
        let w = World::new();
        let src = w.h.path("src");
        let bytes = match which {
            0 => random,
            _ => {
                let img = TestImage::new(vec![Blob::new(
                    LayerTar::new().file("f", b"f\n").finish(),
                    Comp::Plain,
                )]);
                if which == 1 {
                    img.write_docker_archive(&src, "fuzz:1");
                } else {
                    img.write_oci_archive(&src, "fuzz:1");
                }
                let mut b = std::fs::read(&src).unwrap();
                for (i, v) in &flips {
                    let n = b.len();
                    b[i.index(n)] = *v;
                }
                let keep = cut.index(b.len() + 1);
                if flips.len() % 2 == 0 {
                    b.truncate(keep.max(1));
                }
                b
            }
        };
        std::fs::write(&src, bytes).unwrap();
        w.import(&src, &[])?;
    }
}

/// Replaces the value at `path` (object keys, and `index` into arrays) in document `doc` of
/// an OCI layout (0 index.json, 1 the manifest, 2 the config), then re-hashes: the changed
/// blob is stored under its new digest and the documents above name it.
fn mutate_oci(dir: &Path, doc: usize, path: &[&str], index: usize, value: serde_json::Value) {
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let mut index_doc = read(&dir.join("index.json"));
    let mdigest = index_doc["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manifest = read(&blob(&mdigest));
    let cdigest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config = read(&blob(&cdigest));
    let target = match doc {
        0 => &mut index_doc,
        1 => &mut manifest,
        _ => &mut config,
    };
    set_at(target, path, index, value);
    let write_blob = |v: &serde_json::Value| -> (String, usize) {
        let b = serde_json::to_vec(v).unwrap();
        let d = format!("sha256:{}", sha256_hex(&b));
        std::fs::write(blob(&d), &b).unwrap();
        (d, b.len())
    };
    if doc >= 2 {
        let (d, n) = write_blob(&config);
        if manifest["config"].is_object() {
            manifest["config"]["digest"] = d.into();
            manifest["config"]["size"] = n.into();
        }
    }
    if doc >= 1 {
        let (d, n) = write_blob(&manifest);
        if index_doc["manifests"][0].is_object() {
            index_doc["manifests"][0]["digest"] = d.into();
            index_doc["manifests"][0]["size"] = n.into();
        }
    }
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index_doc).unwrap(),
    )
    .unwrap();
}

/// Walks `path` down `v` (arrays by `index`, clamped) and sets the last key to `value`.
fn set_at(v: &mut serde_json::Value, path: &[&str], index: usize, value: serde_json::Value) {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        if cur.is_array() {
            let n = cur.as_array().map(Vec::len).unwrap_or(0);
            if n == 0 {
                return;
            }
            cur = &mut cur[index % n];
        }
        let Some(o) = cur.as_object_mut() else {
            return;
        };
        if i + 1 == path.len() {
            o.insert(key.to_string(), value);
            return;
        }
        cur = o.entry(key.to_string()).or_insert(serde_json::json!({}));
    }
}
