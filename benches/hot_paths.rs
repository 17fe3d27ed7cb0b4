//! In-process micro benchmarks of stratafs's hot paths, without FUSE or a mount (issue 5):
//! name resolution across 1, 4 and 16 layers, whiteout checks, and the merged listing of a
//! directory over 3 layers.
//!
//! ```sh
//! cargo bench --bench hot_paths
//! ```
//!
//! The layer stacks are generated in a temporary directory on every run (a few seconds) and
//! opened read-only, as a union without an upper layer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsStr;
use std::fs::{self, File};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use stratafs::config::Xino;
use stratafs::inode::NodeId;
use stratafs::layer::LayerStack;
use stratafs::overlay::{Options, Overlay};

/// The root directory's node id.
const ROOT: NodeId = stratafs::inode::ROOT;

/// Files in every layer's root, so that no directory is trivially small.
const FILLER: usize = 1_000;

fn whiteout(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        rustix::fs::makedev(0, 0),
    )
    .expect("mknod whiteout (needs root)");
}

fn touch(p: &Path) {
    File::create(p).unwrap();
}

/// A read-only overlay of `lowers`; `negative_cache` 0 probes the layers for every missing
/// name, as the first lookup of a name does.
fn open(lowers: &[PathBuf], negative_cache: usize) -> Overlay {
    let stack = LayerStack::open(None, lowers, Xino::Auto, false).expect("open layers");
    Overlay::new(
        stack,
        Options {
            read_only: true,
            static_nlink: false,
            no_xattrs: false,
            dir_fd_cache: 4096,
            listing_cache: 64 * 1024,
            negative_cache,
            node_limit: 100_000,
            sync_writes: false,
            xattr_permissions: 0,
            acl: true,
            markers: stratafs::config::Markers::Auto,
            writeback: false,
            passthrough: stratafs::config::Passthrough::All,
            redirect_dir: stratafs::config::RedirectDir::Off,
            metacopy: false,
            verity: stratafs::config::Verity::Off,
            udba_watches: None,
        },
    )
}

/// A stack of `n` layers, topmost first: `top` in the topmost, `bottom` in the lowest, and
/// `wh` and `dotwh` in the lowest hidden by a char 0/0 whiteout and a `.wh.` file in the
/// middle layer (with one layer both sit in it, alone).
fn name_stack(dir: &Path, n: usize) -> Vec<PathBuf> {
    let layers: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("l{i}"))).collect();
    for (i, l) in layers.iter().enumerate() {
        fs::create_dir_all(l).unwrap();
        for f in 0..FILLER {
            touch(&l.join(format!("x{i}_{f}")));
        }
    }
    let mid = &layers[n / 2];
    let low = &layers[n - 1];
    touch(&layers[0].join("top"));
    touch(&low.join("bottom"));
    whiteout(&mid.join("wh"));
    touch(&mid.join(".wh.dotwh"));
    if n > 1 {
        touch(&low.join("wh"));
        touch(&low.join("dotwh"));
    }
    layers
}

/// Three layers with `dir/` merged over all of them, `total` names listed in all: 60% in the
/// base, 30% new in the middle (plus 10% of the base's names again and whiteouts for 3% of
/// them), 10% new in the top (plus `.wh.` files for 2% of the base's names).
fn listing_stack(dir: &Path, total: usize) -> Vec<PathBuf> {
    let layers: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("l{i}/dir"))).collect();
    for l in &layers {
        fs::create_dir_all(l).unwrap();
    }
    let (n2, n1, n0) = (total * 6 / 10, total * 3 / 10, total / 10);
    for i in 0..n2 {
        touch(&layers[2].join(format!("e{i:06}")));
    }
    for i in n2..n2 + n1 {
        touch(&layers[1].join(format!("e{i:06}")));
    }
    for i in 0..n2 / 10 {
        touch(&layers[1].join(format!("e{i:06}")));
    }
    for i in n2 / 2..n2 / 2 + total * 3 / 100 {
        whiteout(&layers[1].join(format!("e{i:06}")));
    }
    for i in n2 + n1..n2 + n1 + n0 {
        touch(&layers[0].join(format!("e{i:06}")));
    }
    for i in n2 / 4..n2 / 4 + total * 2 / 100 {
        touch(&layers[0].join(format!(".wh.e{i:06}")));
    }
    (0..3).map(|i| dir.join(format!("l{i}"))).collect()
}

fn lookup_forget(ov: &Overlay, name: &OsStr) -> bool {
    match ov.lookup(ROOT, name) {
        Ok(a) => {
            ov.forget(a.node, 1);
            true
        }
        Err(_) => false,
    }
}

fn benches(c: &mut Criterion) {
    if !rustix::process::geteuid().is_root() {
        eprintln!("hot_paths: SKIPPED: whiteouts (char 0/0 devices) need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();

    let mut g = c.benchmark_group("lookup");
    for n in [1usize, 4, 16] {
        let lowers = name_stack(&tmp.path().join(format!("names{n}")), n);
        let ov = open(&lowers, 0);
        for (what, name, found) in [
            ("top", "top", true),
            ("bottom", "bottom", true),
            ("miss", "nothing-here", false),
        ] {
            assert_eq!(lookup_forget(&ov, OsStr::new(name)), found, "{what} at {n}");
            g.bench_with_input(BenchmarkId::new(what, n), &n, |b, _| {
                b.iter(|| lookup_forget(&ov, black_box(OsStr::new(name))))
            });
        }
        // A name looked up again while missing: answered from the negative cache.
        let ov = open(&lowers, 4096);
        assert!(!lookup_forget(&ov, OsStr::new("nothing-here")));
        g.bench_with_input(BenchmarkId::new("miss-again", n), &n, |b, _| {
            b.iter(|| lookup_forget(&ov, black_box(OsStr::new("nothing-here"))))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("whiteout");
    for n in [1usize, 4, 16] {
        let lowers = name_stack(&tmp.path().join(format!("wh{n}")), n);
        let ov = open(&lowers, 0);
        for (what, name) in [("chardev", "wh"), ("dot-wh", "dotwh")] {
            assert!(!lookup_forget(&ov, OsStr::new(name)), "{what} at {n}");
            g.bench_with_input(BenchmarkId::new(what, n), &n, |b, _| {
                b.iter(|| lookup_forget(&ov, black_box(OsStr::new(name))))
            });
        }
        // The per-layer check itself: one layer's probe of a name.
        let layers = ov.layers();
        let mid = layers.get((n / 2) as u16).unwrap();
        for (what, name) in [
            ("probe-chardev", "wh"),
            ("probe-dot-wh", "dotwh"),
            ("probe-missing", "nothing-here"),
        ] {
            g.bench_with_input(BenchmarkId::new(what, n), &n, |b, _| {
                b.iter(|| mid.probe(mid.root(), black_box(OsStr::new(name))).unwrap())
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("readdir-3-layers");
    for total in [1_000usize, 10_000] {
        let lowers = listing_stack(&tmp.path().join(format!("list{total}")), total);
        let ov = open(&lowers, 0);
        let dir = ov.lookup(ROOT, OsStr::new("dir")).unwrap();
        let expect = total - total * 3 / 100 - total * 2 / 100;
        assert_eq!(ov.read_dir(dir.node).unwrap().len(), expect);
        g.bench_with_input(BenchmarkId::from_parameter(total), &total, |b, _| {
            b.iter(|| ov.read_dir(black_box(dir.node)).unwrap().len())
        });
    }
    g.finish();
}

criterion_group! {
    name = hot_paths;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(hot_paths);
