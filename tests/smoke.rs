//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The smallest end-to-end check: a two-layer stack mounted by stratafs and by the kernel
//! shows the same tree.

mod common;

use common::*;

#[test]
fn two_layers_match_kernel() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let (l1, l2, m, k) = (
        t.path().join("l1"),
        t.path().join("l2"),
        t.path().join("m"),
        t.path().join("k"),
    );
    for d in [&l1, &l2, &m, &k] {
        std::fs::create_dir(d).expect("mkdir");
    }
    std::fs::create_dir(l2.join("d")).expect("mkdir");
    std::fs::write(l2.join("d/base"), "base").expect("write");
    std::fs::write(l2.join("x"), "old").expect("write");
    std::fs::create_dir(l1.join("d")).expect("mkdir");
    std::fs::write(l1.join("d/top"), "top").expect("write");
    std::fs::write(l1.join("x"), "new").expect("write");
    let opts = format!("lowerdir={}:{}", l1.display(), l2.display());
    let ours = Mount::new(&opts, &m);
    let kernel = KernelMount::new(&opts, &k);
    assert_same_tree(
        &snapshot(&ours.mountpoint),
        &snapshot(&kernel.mountpoint),
        "two layers",
    );
}
