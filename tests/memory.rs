//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Bounded daemon memory: the kernel keeps a node for every dentry it caches, and with
//! plenty of memory it caches everything a walk touched. Over `node_limit` the daemon names
//! its unused nodes in `FUSE_NOTIFY_PRUNE`, and its memory stops following the tree size.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

const DIRS: usize = 100;
const FILES: usize = 600;

fn make_tree(root: &Path) {
    for d in 0..DIRS {
        let dir = root.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..FILES {
            fs::File::create(dir.join(format!("f{f:04}"))).unwrap();
        }
    }
}

/// Walks the whole mount, stat-ing every entry; returns how many entries it saw.
fn walk(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            n += 1;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    n
}

/// Peak resident memory of the daemon serving `mnt` after two walks of it, in KiB.
fn peak_after_walks(lower: &Path, mnt: &Path, extra: &str) -> u64 {
    let m = Mount::new(&format!("lowerdir={}{extra}", lower.display()), mnt);
    let pid = *daemons_for(mnt).first().expect("daemon pid");
    for _ in 0..2 {
        assert_eq!(walk(&m.mountpoint), DIRS * (FILES + 1));
        // Let the pruner catch up with the walk.
        std::thread::sleep(Duration::from_millis(400));
    }
    let peak = proc_status_kib(pid, "VmHWM").unwrap();
    drop(m);
    peak
}

#[test]
fn node_table_stays_bounded_on_a_big_walk() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (lower, mnt) = (dir.path().join("l"), dir.path().join("m"));
    fs::create_dir(&mnt).unwrap();
    make_tree(&lower);
    let bounded = peak_after_walks(&lower, &mnt, ",node_limit=2000");
    // The same walk with the default limit (far above 60k entries) keeps every node.
    let unbounded = peak_after_walks(&lower, &mnt, "");
    eprintln!("daemon peak RSS: {bounded} KiB with node_limit=2000, {unbounded} KiB without");
    assert!(
        bounded + 8 * 1024 < unbounded,
        "pruning saved less than 8 MiB: {bounded} KiB vs {unbounded} KiB"
    );
}
