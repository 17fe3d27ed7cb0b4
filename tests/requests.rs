//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Round trips the daemon saves: requests counted from its `-d` log (one `request` line per
//! request it serves, in a span naming the operation and the node).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// A daemon in the foreground with `-d`, its log in a file; killed (and its mount
/// detached) when dropped, even when the test fails.
struct Logged {
    child: Child,
    mnt: std::path::PathBuf,
}

impl Logged {
    fn start(opts: &str, mnt: &Path, log: &Path) -> Logged {
        let log = fs::File::create(log).unwrap();
        let child = Command::new(stratafs_bin())
            .args(["-f", "-d", "-o", opts])
            .arg(mnt)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let l = Logged {
            child,
            mnt: mnt.to_path_buf(),
        };
        assert!(
            wait_until(Duration::from_secs(10), || is_mounted(mnt)),
            "stratafs -f -d did not mount"
        );
        l
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        unmount_and_wait(&self.mnt);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many requests of operation `op` on node `node` the log shows.
fn served(log: &Path, op: &str, node: u64) -> usize {
    let needle = format!("op=\"{op}\" node={node} ");
    fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle) && l.contains(": request"))
        .count()
}

/// A name found nowhere is a negative entry the kernel caches (as fuse-overlayfs gives
/// it): probing it again costs no round trip, and creating it through the mount makes it
/// appear at once.
#[test]
fn missing_names_are_asked_about_once() {
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    fs::write(s.lower.join("there"), "x").unwrap();
    let log = s.dir.path().join("log");
    let m = Logged::start(&s.rw_opts(), &s.mnt, &log);
    let missing = s.mnt.join("nothere");
    for _ in 0..200 {
        assert!(fs::symlink_metadata(&missing).is_err());
    }
    assert!(fs::symlink_metadata(s.mnt.join("there")).is_ok());
    let lookups = served(&log, "lookup", 1);
    assert!(
        (1..=3).contains(&lookups),
        "{lookups} lookups in the root for 200 probes of a missing name and one of a file"
    );
    // Made through the mount: the cached negative entry is replaced.
    fs::write(&missing, "now").unwrap();
    assert_eq!(fs::read_to_string(&missing).unwrap(), "now");
    fs::remove_file(&missing).unwrap();
    assert!(fs::symlink_metadata(&missing).is_err());
    fs::create_dir(&missing).unwrap();
    assert!(fs::metadata(&missing).unwrap().is_dir());
    fs::rename(&missing, s.mnt.join("moved")).unwrap();
    assert!(fs::symlink_metadata(&missing).is_err());
    fs::rename(s.mnt.join("moved"), &missing).unwrap();
    assert!(fs::metadata(&missing).unwrap().is_dir());
    drop(m);
}
