//! Data-only lower layers (issue 18 item 4): `lowerdir=l1::d1::d2`, `lowerdir+=`, `datadir+=`.
//! A data-only layer is never part of the tree; a lower metacopy file whose absolute
//! `overlay.redirect` no layer of the tree answers reads its data there, composefs style.
//! The metadata layers here are uppers the kernel made with `metacopy=on` over what then
//! becomes the data-only layer, and every case is compared with the kernel's overlayfs
//! mounted the same way.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::*;

/// The data layer: what the metadata layer's files redirect into, and names nothing
/// redirects to.
fn data_layer(f: &Fixture) -> PathBuf {
    let d = f.path("d");
    fs::write(d.join("big"), vec![7u8; 1 << 20]).unwrap();
    file(&d, "a/f", "f data\n");
    file(&d, "a/g", "g data\n");
    file(&d, "a/h", "h data\n");
    file(&d, "t/3", "three\n");
    file(&d, "t/x/1", "one\n");
    file(&d, "only-data", "never shown\n");
    file(&d, "deep/only/here", "never shown either\n");
    d
}

/// A metadata layer the kernel made as the upper of a `metacopy=on` mount over `d`:
/// metacopy files with absolute redirects (links and renames across directories), one with a
/// relative redirect (`a/g2`) and one with none (`a/h`), which a data-only layer cannot
/// serve.
fn kernel_metadata_layer(f: &Fixture, d: &Path) -> PathBuf {
    kernel_metacopy_upper(
        f,
        d,
        "meta",
        "chown 123:45 big && ln big big.link && chmod 0600 a/f && mkdir b && mv a/f b/f2 \
         && mv a/g a/g2 && chmod 0640 a/h && touch -h -d 2001-02-03 t/3 && mv t/3 t3 \
         && mv t/x/1 one",
    )
}

/// A fixture with a data layer and the servable part of its kernel-made metadata layer.
fn servable_stack() -> (Fixture, PathBuf, PathBuf) {
    let f = Fixture::new();
    let d = data_layer(&f);
    let meta = kernel_metadata_layer(&f, &d);
    let ok = servable(&f, &meta);
    (f, d, ok)
}

/// The metadata layer without the files a data-only layer cannot serve.
fn servable(f: &Fixture, meta: &Path) -> PathBuf {
    let m = f.dir.path().join("meta-ok");
    copy_tree(meta, &m);
    fs::remove_file(m.join("a/g2")).unwrap();
    fs::remove_file(m.join("a/h")).unwrap();
    m
}

const SHOWN: &[&str] = &["big", "big.link", "b/f2", "t3", "one"];
const HIDDEN: &[&str] = &[
    "only-data",
    "deep",
    "deep/only/here",
    "a/f",
    "a/g",
    "t/3",
    "t/x/1",
];

/// A composefs-style stack (a metadata layer over a data-only layer) shows the tree the
/// kernel shows: the metadata layer's names, owners, modes and times with the data layer's
/// contents and `st_blocks`, in each way of naming the layers; nothing of the data layer is
/// reached by its own name.
#[test]
fn metadata_layer_over_a_data_layer_reads_like_the_kernel() {
    if !can_compare() {
        return;
    }
    let (f, d, ok) = servable_stack();
    let (okp, dp) = (ok.display(), d.display());
    let double = format!("lowerdir={okp}::{dp}");
    let plus = format!("lowerdir+={okp},datadir+={dp}");
    let mut paths = SHOWN.to_vec();
    paths.extend_from_slice(HIDDEN);
    for opts in [
        double.clone(),
        format!("{double},metacopy=on"),
        format!("{double},redirect_dir=nofollow"),
        plus.clone(),
    ] {
        let tree = same_as_kernel(&f, &opts, &opts, &paths, &opts);
        let names = paths_of(&tree);
        for h in ["only-data", "deep", "a/f", "t/x/1"] {
            assert!(!names.contains(&h.to_string()), "{opts}: {h} shown");
        }
        let big = tree.get(Path::new("big")).unwrap();
        assert_eq!((big.uid, big.gid, big.size), (123, 45, Some(1 << 20)));
        assert_eq!(
            tree.get(Path::new("b/f2")).unwrap().content.as_deref(),
            Some(&b"f data\n"[..])
        );
        let (m, k) = (f.path("m"), f.path("k"));
        let _s = Mount::new(&opts, &m);
        let _km = KernelMount::new(&opts, &k);
        for p in SHOWN {
            // Before and after the data is read.
            assert_eq!(blocks(&m.join(p)), blocks(&k.join(p)), "{opts}: {p}");
            assert_eq!(fs::read(m.join(p)).unwrap(), fs::read(k.join(p)).unwrap());
            assert_eq!(blocks(&m.join(p)), blocks(&k.join(p)), "{opts}: {p}");
        }
        assert!(
            blocks(&m.join("big")) >= 2048,
            "big shows the data's blocks"
        );
        assert_eq!(dir_names(&m), dir_names(&k), "{opts}: the root's listing");
        assert_eq!(dir_names(&m.join("t")), dir_names(&k.join("t")), "{opts}");
    }
}

/// What a data-only layer cannot serve fails as on the kernel: a metacopy file whose
/// redirect is relative, or that has none, fails its lookup with `EIO` (`EPERM` without
/// `metacopy=on`, which follows a metacopy file into a data-only layer only); one whose data is
/// missing from the data layer is found (with the kernel's estimate of its blocks) and fails
/// to open with `ENOENT`, the kernel's answer from its lookup of the data at open.
#[test]
fn what_a_data_layer_cannot_serve_fails_like_the_kernel() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let d = data_layer(&f);
    let meta = kernel_metadata_layer(&f, &d);
    fs::remove_file(d.join("t/x/1")).unwrap();
    for extra in ["", ",metacopy=on"] {
        let opts = format!("lowerdir={}::{}{extra}", meta.display(), d.display());
        let (m, k) = (f.path("m"), f.path("k"));
        let _s = Mount::new(&opts, &m);
        let _km = KernelMount::new(&opts, &k);
        let paths = ["a/g2", "a/h", "one", "big", "a/f", "only-data"];
        let ours = lookups(&m, &paths);
        assert_eq!(ours, lookups(&k, &paths), "{opts}");
        // Without metacopy=on only a redirect into a data-only layer is followed.
        let refused = if extra.is_empty() {
            libc::EPERM
        } else {
            libc::EIO
        };
        assert_eq!(ours[0].1, Err(refused), "{opts}: relative redirect");
        assert_eq!(ours[1].1, Err(refused), "{opts}: no redirect");
        assert_eq!(ours[2].1, Ok((libc::S_IFREG, 4)), "{opts}: missing data");
        assert_eq!(ours[4].1, Err(libc::ENOENT), "{opts}: data-only name");
        assert_eq!(blocks(&m.join("one")), blocks(&k.join("one")), "{opts}");
        let open = |p: PathBuf| errno_of(fs::File::open(p)).map(|_| ());
        assert_eq!(open(m.join("one")), Err(libc::ENOENT), "{opts}");
        assert_eq!(open(m.join("one")), open(k.join("one")), "{opts}");
    }
}

/// The layer lists the kernel refuses are refused, each in one line in the kernel's
/// words; the kernel refuses the same lists.
#[test]
fn layer_lists_the_kernel_refuses_are_refused_in_its_words() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let (l, d, e) = (f.path("l"), f.path("d"), f.path("e"));
    let (l, d, e) = (l.display(), d.display(), e.display());
    let m = f.path("m");
    let k = f.path("k");
    let u = f.path("u");
    let w = f.path("w");
    let (u, w) = (u.display(), w.display());
    for (opts, words) in [
        (
            format!("lowerdir={l}:::{d}"),
            "only single ':' or double '::'",
        ),
        (
            format!("lowerdir={l}::{d}:{e}"),
            "regular lower layers cannot follow data",
        ),
        (format!("lowerdir={l}::"), "unescaped trailing colons"),
        (
            format!("lowerdir={l},datadir+={d}"),
            "lowerdir+ and datadir+ cannot follow lowerdir",
        ),
        (
            format!("lowerdir={l},lowerdir+={e}"),
            "lowerdir+ and datadir+ cannot follow lowerdir",
        ),
        (
            format!("datadir+={d},lowerdir+={l}"),
            "regular lower layers cannot follow data layers",
        ),
        (
            format!("datadir+={d},upperdir={u},workdir={w}"),
            "at least one non-data lowerdir is required",
        ),
    ] {
        let kernel = run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&k));
        if kernel.status.success() {
            let _ = Command::new("umount").arg(&k).status();
            panic!("the kernel mounted -o {opts}");
        }
        match Mount::try_new(&opts, &m) {
            Ok(_) => panic!("stratafs mounted -o {opts}"),
            Err(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains(words), "{opts}: {err}");
                assert_eq!(err.trim_end().lines().count(), 1, "{opts}: {err}");
            }
        }
    }
}

/// With an upper layer over a metadata layer and a data-only layer, metadata changes copy
/// up metadata alone (`metacopy=on`) or everything (`metacopy=off`), and the uppers each
/// side writes mount the same under the other.
#[test]
fn an_upper_over_a_data_layer_is_written_like_the_kernels() {
    if !can_compare() {
        return;
    }
    let (f, d, ok) = servable_stack();
    for extra in [",metacopy=on", ""] {
        let (us, uk) = (f.dir.path().join("us"), f.dir.path().join("uk"));
        let _ = fs::remove_dir_all(&us);
        let _ = fs::remove_dir_all(&uk);
        let (us, uk, ws, wk) = (f.path("us"), f.path("uk"), f.path("ws"), f.path("wk"));
        let lower = format!("lowerdir={}::{}", ok.display(), d.display());
        let with = |u: &Path, w: &Path| {
            format!(
                "{lower},upperdir={},workdir={}{extra}",
                u.display(),
                w.display()
            )
        };
        let script = "chmod 0604 big && chown 7:8 b/f2 && mv t3 t4 && echo more >> one";
        {
            let (m, k) = (f.path("m"), f.path("k"));
            let _s = Mount::new(&with(&us, &ws), &m);
            let _km = KernelMount::new(&format!("{},index=off", with(&uk, &wk)), &k);
            sh(&m, script);
            sh(&k, script);
            assert_same_tree(&snapshot(&m), &snapshot(&k), extra);
            for p in ["big", "b/f2", "t4", "one"] {
                assert_eq!(blocks(&m.join(p)), blocks(&k.join(p)), "{extra}: {p}");
            }
        }
        // Each upper under the other implementation.
        let (ws2, wk2) = (f.path("ws2"), f.path("wk2"));
        let _ = fs::remove_dir_all(&ws2);
        let _ = fs::remove_dir_all(&wk2);
        let (ws2, wk2) = (f.path("ws2"), f.path("wk2"));
        let (m, k) = (f.path("m"), f.path("k"));
        let _s = Mount::new(&with(&uk, &ws2), &m);
        let _km = KernelMount::new(&format!("{},index=off", with(&us, &wk2)), &k);
        assert_same_tree(&snapshot(&m), &snapshot(&k), &format!("{extra}: swapped"));
    }
}

/// Divergence (docs/SEMANTICS.md row 7): the kernel looks a data-only layer's file up only
/// when the metacopy file is first opened, and until then shows `st_blocks` estimated from
/// the size; stratafs finds the data at lookup and shows its blocks at once. They agree
/// after the first open, and before it wherever the data is not sparse.
#[test]
fn sparse_data_shows_its_blocks_before_the_first_open() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let d = f.path("d");
    fs::File::create(d.join("sparse"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let u = kernel_metacopy_upper(&f, &d, "meta", "ln sparse sparse.link");
    let opts = format!("lowerdir={}::{}", u.display(), d.display());
    let (m, k) = (f.path("m"), f.path("k"));
    let _s = Mount::new(&opts, &m);
    let _km = KernelMount::new(&opts, &k);
    assert_eq!(blocks(&k.join("sparse")), 2048, "the kernel's estimate");
    assert_eq!(blocks(&m.join("sparse")), 0, "the data's blocks");
    fs::read(k.join("sparse")).unwrap();
    assert_eq!(
        blocks(&k.join("sparse")),
        0,
        "the kernel, once it opened the data"
    );
}

/// A copy-up of a metacopy file whose data a data-only layer was to have and has not fails
/// with `ENOENT` (the kernel looks the data up before any copy-up), metadata copy-ups
/// included; a found one copies up. (A metadata copy-up used to succeed here.)
#[test]
fn copy_up_of_a_file_whose_data_is_missing_fails_like_the_kernel() {
    if !can_compare() {
        return;
    }
    let (f, d, ok) = servable_stack();
    fs::remove_file(d.join("t/x/1")).unwrap();
    let (us, uk, ws, wk) = (f.path("us"), f.path("uk"), f.path("ws"), f.path("wk"));
    let with = |u: &Path, w: &Path| {
        format!(
            "lowerdir={}::{},upperdir={},workdir={},metacopy=on",
            ok.display(),
            d.display(),
            u.display(),
            w.display()
        )
    };
    let (m, k) = (f.path("m"), f.path("k"));
    let _s = Mount::new(&with(&us, &ws), &m);
    let _km = KernelMount::new(&format!("{},index=off", with(&uk, &wk)), &k);
    for (what, p) in [("missing data", "one"), ("found data", "t3")] {
        let chmod = |root: &Path| {
            errno_of(fs::set_permissions(
                root.join(p),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            ))
        };
        let link = |root: &Path| errno_of(fs::hard_link(root.join(p), root.join("l")));
        let rename = |root: &Path| errno_of(fs::rename(root.join(p), root.join("b/r")));
        let ours = (chmod(&m), link(&m), rename(&m));
        assert_eq!(ours, (chmod(&k), link(&k), rename(&k)), "{what}");
        if p == "one" {
            assert_eq!(ours.0, Err(libc::ENOENT), "{what}");
        }
        let _ = fs::remove_file(m.join("l"));
        let _ = fs::remove_file(k.join("l"));
    }
    assert_same_tree(&snapshot(&m), &snapshot(&k), "after the copy-ups");
}
