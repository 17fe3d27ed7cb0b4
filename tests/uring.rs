//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! FUSE over io_uring (`-o io_uring`; by default, `io_uring=auto`, where the kernel offers
//! it and passthrough is granted): the same operations through a ring-served mount and
//! through the kernel's overlayfs on the same layers give the same results and the same
//! tree, the rings are really used (their completion counts in `/proc/PID/fdinfo`),
//! `-o io_uring=off`, the default without passthrough and a kernel that does not offer it
//! serve through `/dev/fuse` with one log line saying why (none for `off`), and an
//! unprivileged daemon gets rings when it asks.
//!
//! The kernel offers io_uring only while `/sys/module/fuse/parameters/enable_uring` is Y;
//! these tests turn it on (or off) for their duration and put the previous value back, even
//! when they fail. The parameter is global: mounts made meanwhile by other tests get rings
//! as well.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::*;

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// One test of this file at a time: each sets the global parameter.
static SERIAL: Mutex<()> = Mutex::new(());

/// `enable_uring` set for a test, the previous value restored when dropped (on a panic
/// too).
struct UringParam {
    previous: String,
    _serial: MutexGuard<'static, ()>,
}

impl UringParam {
    /// Sets the parameter to `on`; `None` when the facility is missing (which fails the
    /// test under CI=true).
    fn set(on: bool) -> Option<UringParam> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if !can_mount() {
            return None;
        }
        let previous = fs::read_to_string(ENABLE_URING);
        if !facility(
            previous.is_ok(),
            "FUSE over io_uring (CONFIG_FUSE_IO_URING, Linux 6.14+)",
        ) {
            return None;
        }
        let previous = previous.unwrap().trim().to_string();
        fs::write(ENABLE_URING, if on { "Y" } else { "N" }).expect("set enable_uring");
        Some(UringParam {
            previous,
            _serial: serial,
        })
    }
}

impl Drop for UringParam {
    fn drop(&mut self) {
        let _ = fs::write(ENABLE_URING, &self.previous);
    }
}

/// The io_uring instances the daemon serving `mnt` holds, and how many completions they
/// have had in all (`CqTail` in their fdinfo).
fn rings_of(mnt: &Path) -> (usize, u64) {
    let pids = daemons_for(mnt);
    assert_eq!(pids.len(), 1, "one daemon serves {}", mnt.display());
    let pid = pids[0];
    let mut rings = 0;
    let mut completions = 0;
    for e in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:[io_uring]" {
            continue;
        }
        rings += 1;
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        completions += info
            .lines()
            .find_map(|l| l.strip_prefix("CqTail:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    (rings, completions)
}

/// The number of possible CPUs: one ring per CPU.
fn possible_cpus() -> usize {
    let s = fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    s.trim()
        .split(',')
        .map(|p| match p.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// A pattern that differs at every offset of a big file.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// The lower layer both mounts stack: small files, a directory tree, a big file, a file
/// with user xattrs.
fn make_lower(lower: &Path) {
    fs::create_dir_all(lower.join("d/sub")).unwrap();
    fs::create_dir_all(lower.join("gone/inner")).unwrap();
    fs::write(lower.join("d/f"), "lower f\n").unwrap();
    fs::write(lower.join("d/sub/s"), "sub\n").unwrap();
    fs::write(lower.join("gone/inner/x"), "x\n").unwrap();
    fs::write(lower.join("del"), "delete me\n").unwrap();
    fs::write(lower.join("mv"), "move me\n").unwrap();
    fs::write(lower.join("big"), pattern(9 << 20, 7)).unwrap();
    fs::write(lower.join("x"), "xattrs\n").unwrap();
    rustix::fs::setxattr(
        lower.join("x"),
        "user.lower",
        b"from below",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    for i in 0..50 {
        fs::write(lower.join(format!("d/many{i:02}")), format!("{i}\n")).unwrap();
    }
}

fn errno<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
    }
}

fn sorted_names(p: &Path) -> String {
    dir_names(p).join(",")
}

/// Runs the same operations on a merged tree and records what each gave.
fn exercise(m: &Path) -> Vec<String> {
    let mut log = Vec::new();
    let mut rec = |what: &str, r: String| log.push(format!("{what}: {r}"));
    // Reads: small, big (1 MiB requests), at an odd offset.
    rec("read d/f", fs::read_to_string(m.join("d/f")).unwrap());
    let big = fs::read(m.join("big")).unwrap();
    rec("read big", format!("{}", big == pattern(9 << 20, 7)));
    let mut f = fs::File::open(m.join("big")).unwrap();
    f.seek(SeekFrom::Start((5 << 20) + 12345)).unwrap();
    let mut part = vec![0u8; 300_000];
    f.read_exact(&mut part).unwrap();
    rec(
        "read big at offset",
        format!(
            "{}",
            part[..] == pattern(9 << 20, 7)[(5 << 20) + 12345..][..300_000]
        ),
    );
    // Create and big writes, in 1 MiB and odd-size pieces, then read back.
    let data = pattern((3 << 20) + 4321, 9);
    let mut w = fs::File::create(m.join("new")).unwrap();
    for chunk in data.chunks(1 << 20) {
        w.write_all(chunk).unwrap();
    }
    w.sync_all().unwrap();
    drop(w);
    rec(
        "write new",
        format!("{}", fs::read(m.join("new")).unwrap() == data),
    );
    rec(
        "size new",
        format!("{}", fs::metadata(m.join("new")).unwrap().len()),
    );
    // Overwrite in the middle of a lower file (copy-up), append.
    let mut w = fs::OpenOptions::new()
        .write(true)
        .open(m.join("big"))
        .unwrap();
    w.seek(SeekFrom::Start(1 << 20)).unwrap();
    w.write_all(&pattern(2 << 20, 3)).unwrap();
    drop(w);
    let mut a = fs::OpenOptions::new()
        .append(true)
        .open(m.join("d/f"))
        .unwrap();
    a.write_all(b"appended\n").unwrap();
    drop(a);
    rec(
        "read d/f after append",
        fs::read_to_string(m.join("d/f")).unwrap(),
    );
    // Renames, unlinks, directories, links.
    rec(
        "rename mv",
        errno(fs::rename(m.join("mv"), m.join("d/moved"))),
    );
    rec(
        "rename new",
        errno(fs::rename(m.join("new"), m.join("d/sub/new2"))),
    );
    rec(
        "rename dir (lower)",
        errno(fs::rename(m.join("d/sub"), m.join("sub2"))),
    );
    rec("unlink del", errno(fs::remove_file(m.join("del"))));
    rec("unlink missing", errno(fs::remove_file(m.join("nothere"))));
    rec("rm -r gone", errno(fs::remove_dir_all(m.join("gone"))));
    rec("mkdir e", errno(fs::create_dir(m.join("e"))));
    rec("mkdir e again", errno(fs::create_dir(m.join("e"))));
    rec("rmdir d", errno(fs::remove_dir(m.join("d"))));
    rec(
        "symlink",
        errno(std::os::unix::fs::symlink("d/f", m.join("e/link"))),
    );
    rec(
        "readlink",
        fs::read_link(m.join("e/link"))
            .unwrap()
            .display()
            .to_string(),
    );
    rec(
        "hard link",
        errno(fs::hard_link(m.join("x"), m.join("e/x2"))),
    );
    rec(
        "nlink",
        format!("{}", fs::metadata(m.join("e/x2")).unwrap().nlink()),
    );
    rec(
        "truncate",
        errno(
            fs::OpenOptions::new()
                .write(true)
                .open(m.join("d/sub/s"))
                .and_then(|f| f.set_len(2)),
        ),
    );
    rec(
        "chmod",
        errno(fs::set_permissions(
            m.join("d/moved"),
            fs::Permissions::from_mode(0o600),
        )),
    );
    for i in 0..100 {
        fs::write(m.join(format!("e/n{i:03}")), format!("{i}")).unwrap();
    }
    for i in (0..50).step_by(3) {
        fs::remove_file(m.join(format!("d/many{i:02}"))).unwrap();
    }
    // Listings.
    rec("ls /", sorted_names(m));
    rec("ls d", sorted_names(&m.join("d")));
    rec("ls e", sorted_names(&m.join("e")));
    rec("ls d/sub", sorted_names(&m.join("d/sub")));
    // Xattrs: on a lower file (copy-up), a new one; get, list, remove.
    let x = m.join("x");
    rec(
        "getxattr lower",
        String::from_utf8_lossy(&xattr(&x, "user.lower").unwrap_or_default()).into_owned(),
    );
    rec(
        "setxattr",
        errno(
            rustix::fs::setxattr(&x, "user.new", b"v1", rustix::fs::XattrFlags::empty())
                .map_err(std::io::Error::from),
        ),
    );
    rec(
        "setxattr create existing",
        errno(
            rustix::fs::setxattr(&x, "user.new", b"v2", rustix::fs::XattrFlags::CREATE)
                .map_err(std::io::Error::from),
        ),
    );
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::listxattr(&x, &mut names).unwrap();
    let mut list: Vec<String> = names[..n]
        .split(|b| *b == 0)
        .filter(|s| s.starts_with(b"user."))
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    list.sort();
    rec("listxattr", list.join(","));
    rec(
        "removexattr",
        errno(rustix::fs::removexattr(&x, "user.lower").map_err(std::io::Error::from)),
    );
    rec(
        "getxattr removed",
        errno(xattr(&x, "user.lower").ok_or(std::io::Error::from_raw_os_error(61))),
    );
    let mut small = [0u8; 1];
    rec(
        "getxattr ERANGE",
        errno(rustix::fs::getxattr(&x, "user.new", &mut small[..]).map_err(std::io::Error::from)),
    );
    log
}

/// Two stacks from one lower layer: one under stratafs with `opts`, one under the kernel's
/// overlayfs; runs [`exercise`] on both and compares. Returns what the daemon's rings did
/// (instances, completions) just before unmounting.
fn compare_with_kernel(extra: &str) -> (usize, u64) {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| {
        let d = dir.path().join(n);
        fs::create_dir_all(&d).unwrap();
        d
    };
    let (lower, ours_upper, ours_work, ours_mnt) = (p("lower"), p("u1"), p("w1"), p("m1"));
    let (k_upper, k_work, k_mnt) = (p("u2"), p("w2"), p("m2"));
    make_lower(&lower);
    let lowers = [lower.clone()];
    let m = Mount::new(
        &format!("{}{extra}", rw_opts(&lowers, &ours_upper, &ours_work)),
        &ours_mnt,
    );
    let k = KernelMount::new(&kernel_rw_opts(&lowers, &k_upper, &k_work), &k_mnt);
    let ours = exercise(&ours_mnt);
    let theirs = exercise(&k_mnt);
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(
            a, b,
            "stratafs (io_uring) and the kernel's overlayfs differ"
        );
    }
    assert_eq!(ours.len(), theirs.len());
    assert_same_tree(
        &snapshot(&ours_mnt),
        &snapshot(&k_mnt),
        "after the same operations",
    );
    let rings = rings_of(&ours_mnt);
    drop(k);
    m.unmount();
    rings
}

#[test]
fn operations_through_the_rings_match_the_kernel_overlay() {
    let Some(_param) = UringParam::set(true) else {
        return;
    };
    if !can_compare() {
        return;
    }
    // passthrough=off: reads and writes go through the daemon, so through the rings (taken
    // by asking: by default a mount without passthrough serves /dev/fuse).
    let (rings, completions) = compare_with_kernel(",passthrough=off,io_uring");
    assert_eq!(rings, possible_cpus(), "one ring per possible CPU");
    // Well over a hundred requests: lookups, creates, 1 MiB reads and writes, listings.
    assert!(
        completions >= 150,
        "the rings carried only {completions} requests"
    );
    // The default (passthrough for root): opens, metadata and xattrs on the rings.
    let (rings, completions) = compare_with_kernel("");
    assert_eq!(rings, possible_cpus());
    assert!(
        completions >= 100,
        "only {completions} requests on the rings"
    );
}

/// A foreground daemon with its log captured (RUST_LOG=info); killed if still there.
struct Foreground {
    child: Child,
    log: PathBuf,
    mnt: PathBuf,
}

impl Foreground {
    fn start(opts: &str, mnt: &Path, log: &Path) -> Foreground {
        let f = fs::File::create(log).unwrap();
        let child = Command::new(stable_stratafs_bin())
            .arg("-f")
            .arg("-o")
            .arg(opts)
            .arg(mnt)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        let fg = Foreground {
            child,
            log: log.to_path_buf(),
            mnt: mnt.to_path_buf(),
        };
        assert!(
            wait_until(Duration::from_secs(10), || fs::read_to_string(log)
                .unwrap_or_default()
                .contains("mounted")),
            "the daemon did not mount: {}",
            fs::read_to_string(log).unwrap_or_default()
        );
        fg
    }

    /// Unmounts, waits for the daemon, returns its log.
    fn finish(mut self) -> String {
        unmount_and_wait(&self.mnt);
        let _ = wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            kill_daemons(&self.mnt);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the log says about the transport: the lines naming io_uring.
fn transport_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("io_uring")).collect()
}

#[test]
fn the_transport_is_logged_and_io_uring_off_keeps_dev_fuse() {
    let Some(_param) = UringParam::set(true) else {
        return;
    };
    let s = Stack::new();
    fs::write(s.lower.join("f"), "f\n").unwrap();
    let log = s.dir.path().join("log");
    // On: one line says the rings serve; requests reach them.
    let fg = Foreground::start(&s.rw_opts(), &s.mnt, &log);
    assert_eq!(fs::read_to_string(s.mnt.join("f")).unwrap(), "f\n");
    let (rings, completions) = rings_of(&s.mnt);
    assert_eq!(rings, possible_cpus());
    assert!(completions > 0, "no request went through the rings");
    let text = fg.finish();
    let lines = transport_lines(&text);
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("serving through FUSE over io_uring"),
        "{text}"
    );
    // The default without passthrough: /dev/fuse, and one line says why.
    let fg = Foreground::start(&format!("{},passthrough=off", s.rw_opts()), &s.mnt, &log);
    assert_eq!(fs::read_to_string(s.mnt.join("f")).unwrap(), "f\n");
    assert_eq!(
        rings_of(&s.mnt).0,
        0,
        "rings without passthrough by default"
    );
    let text = fg.finish();
    let lines = transport_lines(&text);
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("serving /dev/fuse: without passthrough"),
        "{text}"
    );
    // io_uring=off: no rings, no line about them.
    let fg = Foreground::start(&format!("{},io_uring=off", s.rw_opts()), &s.mnt, &log);
    assert_eq!(fs::read_to_string(s.mnt.join("f")).unwrap(), "f\n");
    assert_eq!(rings_of(&s.mnt).0, 0, "io_uring=off still set up rings");
    let text = fg.finish();
    assert!(transport_lines(&text).is_empty(), "{text}");
}

#[test]
fn without_the_kernel_facility_one_line_says_why() {
    let Some(_param) = UringParam::set(false) else {
        return;
    };
    let s = Stack::new();
    fs::write(s.lower.join("f"), "f\n").unwrap();
    let log = s.dir.path().join("log");
    let fg = Foreground::start(&format!("{},io_uring", s.rw_opts()), &s.mnt, &log);
    fs::write(s.mnt.join("g"), "g\n").unwrap();
    assert_eq!(fs::read_to_string(s.mnt.join("f")).unwrap(), "f\n");
    assert_eq!(rings_of(&s.mnt).0, 0);
    let text = fg.finish();
    let lines = transport_lines(&text);
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("the kernel does not offer it") && lines[0].contains("/dev/fuse"),
        "{text}"
    );
}

#[test]
fn a_rootless_daemon_serves_through_rings_when_it_asks() {
    let Some(_param) = UringParam::set(true) else {
        return;
    };
    if !facility(find_tool("fusermount3").is_some(), "fusermount3")
        || !facility(find_tool("setpriv").is_some(), "setpriv")
    {
        return;
    }
    let _dev = DevFuseOpen::new();
    let s = Stack::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(s.lower.join("big"), pattern(4 << 20, 5)).unwrap();
    fs::write(s.lower.join("f"), "f\n").unwrap();
    give_to_nobody(s.dir.path());
    // By default an unprivileged daemon (no passthrough) serves /dev/fuse.
    let m = mount_as_nobody(&s.rw_opts(), &s.mnt);
    let (status, output) = run_timeout(
        as_nobody(Path::new("/bin/cat")).arg(s.mnt.join("f")),
        Duration::from_secs(30),
    );
    assert!(status.is_some_and(|s| s.success()), "{output}");
    assert_eq!(
        rings_of(&s.mnt).0,
        0,
        "rings for a rootless daemon by default"
    );
    m.unmount();
    let m = mount_as_nobody(&format!("{},io_uring", s.rw_opts()), &s.mnt);
    // Root may not enter a user's FUSE mount: the work runs as nobody.
    let script = "set -e\n\
        cmp big \"$L/big\"\n\
        head -c 3000000 big > new\n\
        cmp -n 3000000 new big\n\
        mv new renamed\n\
        echo more >> f\n\
        cat f\n\
        mkdir dir && touch dir/a dir/b && ls dir\n\
        rm renamed && ls\n";
    let (status, output) = run_timeout(
        as_nobody(Path::new("/bin/sh"))
            .arg("-c")
            .arg(format!("cd \"$M\" || exit 1\n{script}"))
            .env("M", &s.mnt)
            .env("L", &s.lower),
        Duration::from_secs(60),
    );
    assert!(status.is_some_and(|s| s.success()), "{output}");
    assert_eq!(output, "f\nmore\na\nb\nbig\ndir\nf\n");
    let (rings, completions) = rings_of(&s.mnt);
    assert_eq!(rings, possible_cpus(), "the rootless daemon has no rings");
    assert!(
        completions >= 10,
        "only {completions} requests on the rings"
    );
    m.unmount();
    assert_eq!(
        fs::read_to_string(s.upper.join("f")).unwrap(),
        "f\nmore\n",
        "the upper layer after the rootless mount"
    );
}

/// `stratafs stats` counts what the rings serve as it counts `/dev/fuse` requests (the one
/// dispatcher counts both), and says which transport serves.
#[test]
fn stats_count_requests_served_through_the_rings() {
    let Some(_param) = UringParam::set(true) else {
        return;
    };
    let s = Stack::new();
    let m = Mount::new(&format!("{},passthrough=off,io_uring", s.rw_opts()), &s.mnt);
    const N: usize = 20;
    for i in 0..N {
        fs::write(s.mnt.join(format!("f{i}")), "x").unwrap();
    }
    let out = run(Command::new(stratafs_bin())
        .args(["stats", "--json"])
        .arg(&s.mnt));
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["transport"], "io_uring");
    assert_eq!(
        v["uring_queues"].as_u64().unwrap() as usize,
        possible_cpus()
    );
    let count = |op: &str| {
        v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["op"] == op)
            .map_or(0, |o| o["count"].as_u64().unwrap())
    };
    assert!(count("create") >= N as u64, "{v}");
    assert!(count("write") >= N as u64, "{v}");
    let (_, completions) = rings_of(&s.mnt);
    assert!(completions >= 2 * N as u64);
    m.unmount();
}
