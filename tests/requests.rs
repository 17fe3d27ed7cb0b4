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

/// Content of `len` bytes that differs at every offset a page boundary could hide.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// Without passthrough (rootless, or `passthrough=off`), a small lower file a reader opens
/// is put in the kernel's page cache before the open is answered, so it is read whole
/// without a READ request; a file larger than the kernel's first read (128 KiB) is read
/// with READs. What is read is the file, from every reader at once and again after it was
/// copied up and changed.
#[test]
fn small_lower_files_are_read_without_read_requests() {
    if !can_mount() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let s = Stack::new();
    let sizes = [0usize, 1, 4095, 4096, 5000, 128 * 1024, 128 * 1024 + 1];
    for (i, &n) in sizes.iter().enumerate() {
        fs::write(s.lower.join(format!("f{i}")), pattern(i as u8, n)).unwrap();
    }
    for i in 0..40u8 {
        fs::write(
            s.lower.join(format!("many{i}")),
            pattern(i, 3000 + i as usize),
        )
        .unwrap();
    }
    let log = s.dir.path().join("log");
    let m = Logged::start(&format!("{},passthrough=off", s.rw_opts()), &s.mnt, &log);
    for (i, &n) in sizes.iter().enumerate() {
        let p = s.mnt.join(format!("f{i}"));
        assert_eq!(
            fs::read(&p).unwrap(),
            pattern(i as u8, n),
            "f{i}: {n} bytes"
        );
        // Read again through a new open: still the file, still no READ for a small one.
        assert_eq!(fs::read(&p).unwrap(), pattern(i as u8, n), "f{i} again");
        let reads = served(&log, "read", fs::metadata(&p).unwrap().ino());
        if n <= 128 * 1024 {
            assert_eq!(reads, 0, "f{i}: {n} bytes read with {reads} READ(s)");
        } else {
            assert!(reads > 0, "f{i}: {n} bytes read with no READ");
        }
    }
    // Many readers of the same files at once, each in its own order: every one gets the
    // files whole, and none waits for ever on a store.
    let (tx, rx) = std::sync::mpsc::channel();
    for t in 0..8u8 {
        let (mnt, tx) = (s.mnt.clone(), tx.clone());
        std::thread::spawn(move || {
            for k in 0..40u8 {
                let i = (k + t * 5) % 40;
                let got = fs::read(mnt.join(format!("many{i}"))).unwrap();
                assert_eq!(got, pattern(i, 3000 + i as usize), "many{i} in reader {t}");
            }
            let _ = tx.send(t);
        });
    }
    drop(tx);
    for _ in 0..8 {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("a reader did not finish within 60 s");
    }
    // Copied up and changed: readers see the change, not the pages stored of the lower file.
    use std::io::Write;
    let p = s.mnt.join("f4");
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"tail").unwrap();
    drop(f);
    let mut want = pattern(4, 5000);
    want.extend_from_slice(b"tail");
    assert_eq!(fs::read(&p).unwrap(), want);
    drop(m);
}
