//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Durability (issue 4): the daemon killed (SIGKILL) at random moments during a copy-up, an
//! untar and a storm of renames, unlinks and rmdirs; an upper filesystem that fills up; file
//! descriptors by the ten thousand; sustained mixed load from 8 clients; an unmount while
//! clients are busy.
//!
//! After every crash the same upper and work directories are mounted again and must show a
//! consistent tree: each file in the upper layer absent or complete, nothing of the on-disk
//! format visible, the work directory emptied, data fsync'd before the kill intact, and kernel
//! overlayfs mounting the same layers shows the same tree.
//!
//! The random moments come from a seed printed by each test; `STRATAFS_DURABILITY_SEED`
//! replays one. `STRATAFS_LOAD_SECS` sets the length of the load test (default 20).

mod common;
#[path = "durability/crash.rs"]
mod crash;
#[path = "durability/load.rs"]
mod load;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use crash::*;
use load::*;

// ---- randomness ----

fn seed_for(test: &str) -> u64 {
    let seed = std::env::var("STRATAFS_DURABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                ^ u64::from(std::process::id())
        });
    eprintln!("{test}: seed {seed} (STRATAFS_DURABILITY_SEED={seed} replays it)");
    seed
}

/// `len` pseudo-random bytes from `seed`.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15).bytes(len)
}

// ---- (a) crash during the copy-up of a big lower file ----

const BIG: u64 = 256 << 20;

/// Writes the big lower file: 1 MiB chunks of noise, each tagged with its index.
fn write_big(path: &Path, len: u64) {
    let base = noise(4242, 1 << 20);
    let mut f = fs::File::create(path).unwrap();
    for i in 0..len >> 20 {
        let mut chunk = base.clone();
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&chunk).unwrap();
    }
}

/// A process that opens `path` for appending: the open copies it up.
fn open_for_write(path: &Path) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(": >> \"$1\"")
        .arg("sh")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh")
}

fn add_synced_lower(s: &Stack) {
    fs::write(s.lower.join(SYNCED_LOWER), synced_lower_content()).unwrap();
}

#[test]
fn crash_during_copy_up_of_a_big_file() {
    if !can_compare() {
        return;
    }
    let mut rng = Rng::new(seed_for("crash_during_copy_up_of_a_big_file"));
    let s = Stack::new();
    let big = s.lower.join("big");
    write_big(&big, BIG);
    add_synced_lower(&s);

    // How long an undisturbed copy-up takes here.
    let m = s.mount();
    let start = Instant::now();
    let st = open_for_write(&s.mnt.join("big")).wait().unwrap();
    let took = start.elapsed();
    assert!(st.success(), "copy-up by open failed");
    assert!(same_content(&s.upper.join("big"), &big).unwrap());
    drop(m);
    eprintln!("copy-up of {} MiB: {took:?}", BIG >> 20);

    let valid = |rel: &Path, path: &Path| -> Result<(), String> {
        if let Some(r) = valid_synced(rel, path) {
            return r;
        }
        if rel == Path::new("big") {
            return match same_content(path, &big) {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!(
                    "partial copy-up: {} bytes of {BIG}",
                    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
                )),
                Err(e) => Err(e),
            };
        }
        Err("unexpected file".into())
    };
    let mut stats = CrashStats::default();
    for i in 0..5 {
        s.reset_upper();
        let m = s.mount();
        let client = SyncClient::start(&s.mnt, &format!("a{i}"));
        std::thread::sleep(Duration::from_millis(20));
        let copier = open_for_write(&s.mnt.join("big"));
        std::thread::sleep(rng.between(Duration::ZERO, took + took / 5));
        crash(m);
        let fsynced = client.finish();
        reap(copier, "the copy-up client");
        stats.count(&s);
        check_recovery(&s, &format!("copy-up crash {i}"), &valid, &fsynced);
    }
    eprintln!("{stats:?}");
}

// ---- (b) crash during an untar of 10,000 small files ----

fn untar_content(rel: &str) -> Vec<u8> {
    let n = 40 + (rel.len() * 37) % 300;
    rel.as_bytes().iter().cycle().take(n).copied().collect()
}

fn old_content(rel: &str) -> Vec<u8> {
    format!("old lower version of {rel}\n").into_bytes()
}

/// The archive: untar/dNN/fMM, 100 x 100 files. Its first half of directories, and their
/// f00 and `keep` files, are already in the lower layer.
fn make_untar_fixture(s: &Stack) -> PathBuf {
    let src = s.dir.path().join("src");
    for d in 0..100 {
        let dir = src.join(format!("untar/d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let rel = format!("untar/d{d:02}/f{f:02}");
            fs::write(src.join(&rel), untar_content(&rel)).unwrap();
        }
        if d < 50 {
            let ld = s.lower.join(format!("untar/d{d:02}"));
            fs::create_dir_all(&ld).unwrap();
            let rel = format!("untar/d{d:02}/f00");
            fs::write(s.lower.join(&rel), old_content(&rel)).unwrap();
            let keep = format!("untar/d{d:02}/keep");
            fs::write(s.lower.join(&keep), old_content(&keep)).unwrap();
        }
    }
    let tar = s.dir.path().join("t.tar");
    let out = run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg("untar"));
    assert!(
        out.status.success(),
        "tar -c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tar
}

fn untar(tar: &Path, into: &Path) -> Child {
    Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(into)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tar")
}

#[test]
fn crash_during_untar_of_10k_files() {
    if !can_compare() {
        return;
    }
    let mut rng = Rng::new(seed_for("crash_during_untar_of_10k_files"));
    let s = Stack::new();
    let tar = make_untar_fixture(&s);
    add_synced_lower(&s);

    // An undisturbed untar: how long it takes, and that it lands whole.
    let m = s.mount();
    let start = Instant::now();
    let st = untar(&tar, &s.mnt).wait().unwrap();
    let took = start.elapsed();
    assert!(st.success(), "untar failed on stratafs");
    for d in [0, 49, 50, 99] {
        for f in [0, 50, 99] {
            let rel = format!("untar/d{d:02}/f{f:02}");
            assert_eq!(fs::read(s.mnt.join(&rel)).unwrap(), untar_content(&rel));
        }
    }
    assert_eq!(regular_files(&s.mnt.join("untar")).len(), 10_000 + 50);
    drop(m);
    eprintln!("untar of 10,000 files: {took:?}");

    let valid = |rel: &Path, path: &Path| -> Result<(), String> {
        if let Some(r) = valid_synced(rel, path) {
            return r;
        }
        let r = rel.to_string_lossy();
        if !r.starts_with("untar/") {
            return Err("unexpected file".into());
        }
        let got = fs::read(path).map_err(|e| e.to_string())?;
        // A new file is empty until tar's single write; a lower one is copied up whole.
        if got.is_empty() || got == untar_content(&r) || got == old_content(&r) {
            Ok(())
        } else {
            Err(format!("incomplete: {} bytes", got.len()))
        }
    };
    let mut stats = CrashStats::default();
    for i in 0..3 {
        s.reset_upper();
        let m = s.mount();
        let client = SyncClient::start(&s.mnt, &format!("b{i}"));
        let tar_proc = untar(&tar, &s.mnt);
        std::thread::sleep(rng.between(took / 10, took * 9 / 10));
        crash(m);
        let fsynced = client.finish();
        reap(tar_proc, "tar");
        stats.count(&s);
        check_recovery(&s, &format!("untar crash {i}"), &valid, &fsynced);
    }
    eprintln!("{stats:?}");
}

// ---- (c) crash during a storm of renames, unlinks and rmdirs ----

/// Lower files whose bytes name them: `PATH|` repeated, 4 to 64 KiB.
fn storm_content(orig: &str) -> Vec<u8> {
    let len = 4096 + (orig.len() * 7919 + orig.as_bytes()[orig.len() - 1] as usize * 131) % 61_440;
    format!("{orig}|")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(len)
        .collect()
}

fn make_storm_fixture(s: &Stack) {
    for d in 0..16 {
        fs::create_dir_all(s.lower.join(format!("storm/d{d:02}/sub"))).unwrap();
        for f in 0..24 {
            let rel = format!("storm/d{d:02}/f{f:02}");
            fs::write(s.lower.join(&rel), storm_content(&rel)).unwrap();
        }
        let rel = format!("storm/d{d:02}/sub/g");
        fs::write(s.lower.join(&rel), storm_content(&rel)).unwrap();
    }
}

/// Any file of the storm holds exactly the content of the lower file it started as.
fn valid_storm(rel: &Path, path: &Path) -> Result<(), String> {
    if let Some(r) = valid_synced(rel, path) {
        return r;
    }
    let got = fs::read(path).map_err(|e| e.to_string())?;
    let Some(end) = got.iter().position(|b| *b == b'|') else {
        return Err(format!("no origin header in {} bytes", got.len()));
    };
    let orig = String::from_utf8_lossy(&got[..end]).into_owned();
    if !orig.starts_with("storm/") {
        return Err(format!("unknown origin {orig:?}"));
    }
    if got == storm_content(&orig) {
        Ok(())
    } else {
        Err(format!(
            "incomplete copy of {orig}: {} bytes of {}",
            got.len(),
            storm_content(&orig).len()
        ))
    }
}

/// One storm client: random renames, unlinks, rmdirs, mkdirs and copy-ups until told to stop
/// or the daemon is gone.
fn storm_worker(mnt: PathBuf, id: u64, seed: u64, stop: Arc<AtomicBool>, ops: Arc<AtomicU64>) {
    let mut rng = Rng::new(seed ^ (id + 1).wrapping_mul(0x9e37_79b9));
    let root = mnt.join("storm");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let dirs: Vec<PathBuf> = match fs::read_dir(&root) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(e) if is_disconnected(&e) => return,
            Err(_) => continue,
        };
        if dirs.is_empty() {
            let _ = fs::create_dir(root.join(format!("n{id}-{n}")));
            continue;
        }
        let dir = &dirs[rng.below(dirs.len())];
        let entries: Vec<PathBuf> = match fs::read_dir(dir) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(e) if is_disconnected(&e) => return,
            Err(_) => continue,
        };
        let other = &dirs[rng.below(dirs.len())];
        let pick = (!entries.is_empty()).then(|| &entries[rng.below(entries.len())]);
        let r: std::io::Result<()> = match (rng.below_u64(8), pick) {
            (0 | 1, Some(p)) => fs::rename(p, other.join(format!("r{id}-{n}"))),
            (2, Some(p)) => {
                if p.is_dir() {
                    fs::remove_dir(p)
                } else {
                    fs::remove_file(p)
                }
            }
            (3, _) => {
                // Empty a directory, then remove it.
                for e in &entries {
                    let _ = if e.is_dir() {
                        fs::remove_dir_all(e)
                    } else {
                        fs::remove_file(e)
                    };
                }
                fs::remove_dir(dir)
            }
            (4, _) => fs::create_dir(root.join(format!("n{id}-{n}"))),
            (5, _) => fs::rename(dir, root.join(format!("m{id}-{n}"))),
            (6, Some(p)) => fs::set_permissions(p, fs::Permissions::from_mode(0o600)),
            (_, Some(p)) => fs::rename(p, dir.join(format!("s{id}-{n}"))),
            _ => Ok(()),
        };
        if let Err(e) = r {
            if is_disconnected(&e) {
                return;
            }
        }
        ops.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn crash_during_rename_unlink_rmdir_storm() {
    if !can_compare() {
        return;
    }
    let seed = seed_for("crash_during_rename_unlink_rmdir_storm");
    let mut rng = Rng::new(seed);
    let s = Stack::new();
    make_storm_fixture(&s);
    add_synced_lower(&s);
    let mut stats = CrashStats::default();
    for i in 0..6u64 {
        s.reset_upper();
        let m = s.mount();
        let client = SyncClient::start(&s.mnt, &format!("c{i}"));
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (mnt, stop, ops) = (s.mnt.clone(), stop.clone(), ops.clone());
                let seed = seed ^ (i << 32);
                std::thread::spawn(move || storm_worker(mnt, w, seed, stop, ops))
            })
            .collect();
        std::thread::sleep(rng.between(Duration::from_millis(200), Duration::from_millis(2500)));
        crash(m);
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().expect("storm worker");
        }
        let fsynced = client.finish();
        stats.count(&s);
        eprintln!(
            "storm {i}: {} operations before the kill",
            ops.load(Ordering::Relaxed)
        );
        check_recovery(&s, &format!("storm crash {i}"), &valid_storm, &fsynced);
    }
    eprintln!("{stats:?}");
}

// ---- a full upper filesystem ----

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

#[test]
fn full_upper_gives_enospc_and_recovers() {
    if !can_compare() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    fs::create_dir(&small).unwrap();
    let out = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(&small));
    assert!(
        out.status.success(),
        "mount tmpfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _tmpfs = UmountGuard {
        path: small.clone(),
    };
    let (lower, upper, work, mnt) = (
        dir.path().join("lower"),
        small.join("upper"),
        small.join("work"),
        dir.path().join("mnt"),
    );
    for d in [&lower, &upper, &work, &mnt] {
        fs::create_dir(d).unwrap();
    }
    write_big(&lower.join("big80"), 80 << 20);
    write_big(&lower.join("big40"), 40 << 20);
    fs::create_dir(lower.join("sub")).unwrap();
    fs::write(lower.join("sub/small"), noise(5, 4096)).unwrap();
    let opts = format!(
        "{},fsync=1",
        rw_opts(std::slice::from_ref(&lower), &upper, &work)
    );
    let m = mount_stable(&opts, &mnt)
        .unwrap_or_else(|o| panic!("mount: {}", String::from_utf8_lossy(&o.stderr)));
    let nothing_left = |name: &str| {
        assert!(
            fs::symlink_metadata(upper.join(name)).is_err(),
            "a failed copy-up left {name} in upper"
        );
        assert_eq!(
            dir_names(&work.join("work")),
            Vec::<String>::new(),
            "a failed copy-up left its staging copy in the work dir"
        );
    };

    // A copy-up bigger than the whole upper filesystem.
    let e = fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("big80"))
        .expect_err("copy-up of 80 MiB into 64 MiB succeeded");
    assert_eq!(errno(&e), libc::ENOSPC, "copy-up beyond the upper: {e}");
    nothing_left("big80");
    assert!(same_content(&mnt.join("big80"), &lower.join("big80")).unwrap());

    // New data until the upper is full.
    let mut f = fs::File::create(mnt.join("fill")).unwrap();
    let chunk = noise(9, 1 << 20);
    let mut written = 0u64;
    let e = loop {
        match f.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(
            written <= 64 << 20,
            "wrote {written} bytes into a 64 MiB upper"
        );
    };
    assert_eq!(errno(&e), libc::ENOSPC, "write beyond the upper: {e}");
    let e = f.sync_all().err();
    drop(f);
    eprintln!("filled the upper with {} MiB; fsync: {e:?}", written >> 20);

    // Copy-ups into the full upper fail the same way and leave nothing behind.
    let e = fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("big40"))
        .expect_err("copy-up into a full upper succeeded");
    assert_eq!(errno(&e), libc::ENOSPC, "copy-up into a full upper: {e}");
    nothing_left("big40");
    assert!(same_content(&mnt.join("big40"), &lower.join("big40")).unwrap());
    match fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("sub/small"))
    {
        Err(e) => {
            assert_eq!(
                errno(&e),
                libc::ENOSPC,
                "small copy-up into a full upper: {e}"
            );
            nothing_left("sub/small");
        }
        Ok(_) => eprintln!("a 4 KiB copy-up still fit"),
    }
    assert_eq!(fs::read(mnt.join("sub/small")).unwrap(), noise(5, 4096));

    // Space freed: everything works again.
    fs::remove_file(mnt.join("fill")).unwrap();
    let freed = wait_until(Duration::from_secs(10), || {
        rustix::fs::statvfs(&upper)
            .map(|v| v.f_bavail * v.f_frsize >= 60 << 20)
            .unwrap_or(false)
    });
    assert!(
        freed,
        "removing the fill file through the mount freed no space in upper"
    );
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("big40"))
        .expect("copy-up after space was freed");
    f.write_all(b"tail").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut want = fs::read(lower.join("big40")).unwrap();
    want.extend_from_slice(b"tail");
    assert!(
        fs::read(mnt.join("big40")).unwrap() == want,
        "big40 after its copy-up"
    );
    fs::write(mnt.join("new"), &chunk).unwrap();
    assert_eq!(fs::read(mnt.join("new")).unwrap(), chunk);
    fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("sub/small"))
        .unwrap()
        .write_all(b"!")
        .unwrap();

    // And it all survives a remount, the same as the kernel sees it.
    drop(m);
    let m = mount_stable(&opts, &mnt)
        .unwrap_or_else(|o| panic!("remount: {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(overlay_internals(&mnt), Vec::<String>::new());
    assert!(fs::read(mnt.join("big40")).unwrap() == want);
    let ours = digest_tree(&mnt);
    drop(m);
    let _k = KernelMount::new(
        &kernel_rw_opts(std::slice::from_ref(&lower), &upper, &work),
        &mnt,
    );
    if let Some(d) = diff_trees(&ours, &digest_tree(&mnt)) {
        panic!("after ENOSPC and recovery, kernel overlayfs shows another tree:\n{d}");
    }
}

// ---- file descriptors ----

/// Raises this process's soft fd limit to at least `want` (up to the hard limit).
fn raise_nofile(want: u64) -> bool {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.current.unwrap_or(u64::MAX) >= want {
        return true;
    }
    let max = cur.maximum.unwrap_or(u64::MAX);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(max.min(want.max(65_536))),
            maximum: cur.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX) >= want
}

/// The dynamic loader, which opens a program, maps it and closes the fd.
fn dynamic_loader() -> Option<PathBuf> {
    [
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/ld-linux-aarch64.so.1",
        "/lib/ld-linux-armhf.so.3",
        "/lib/ld-linux-riscv64-lp64d.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// fds the daemon may hold beyond the baseline: cached directory fds of the directories
/// this test creates.
const FD_SLACK: usize = 8;

#[test]
fn ten_thousand_open_files_and_mmaps_leak_no_fds() {
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    fs::create_dir(s.lower.join("fds")).unwrap();
    for i in 0..5000 {
        fs::write(s.lower.join(format!("fds/l{i:04}")), format!("lower {i}\n")).unwrap();
    }
    let m = s.mount();
    let pid = s.daemon();
    if !facility(raise_nofile(10_500), "an fd limit of 10,500 (ulimit -Hn)") {
        return;
    }
    for i in 0..5000 {
        fs::write(s.mnt.join(format!("fds/n{i:04}")), format!("new {i}\n")).unwrap();
    }
    let names: Vec<PathBuf> = (0..5000)
        .flat_map(|i| {
            [
                s.mnt.join(format!("fds/l{i:04}")),
                s.mnt.join(format!("fds/n{i:04}")),
            ]
        })
        .collect();
    // Warm the daemon's caches, then take the baseline.
    for p in &names {
        fs::read(p).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let baseline = fd_count(pid);

    // All 10,000 open at once: the lower ones for reading, the upper ones read-write.
    let start = Instant::now();
    let mut open = Vec::with_capacity(names.len());
    for (i, p) in names.iter().enumerate() {
        let f = if i % 2 == 0 {
            fs::File::open(p)
        } else {
            fs::OpenOptions::new().read(true).write(true).open(p)
        };
        match f {
            Ok(f) => open.push(f),
            Err(e) => panic!(
                "open #{i} {}: {e} (daemon fds: {})",
                p.display(),
                fd_count(pid)
            ),
        }
    }
    let mut b = [0u8; 4];
    for f in open.iter_mut() {
        f.read_exact(&mut b).unwrap();
    }
    let during = fd_count(pid);
    drop(open);
    let back = wait_until(Duration::from_secs(20), || {
        fd_count(pid) <= baseline + FD_SLACK
    });
    let after = fd_count(pid);
    eprintln!(
        "daemon fds: {baseline} before, {during} with 10,000 files open, {after} after \
         ({:?})",
        start.elapsed()
    );
    assert!(
        back,
        "daemon fds: {baseline} before, {after} after closing 10,000 files"
    );

    // Mapped, then closed: the loader maps each program and closes its fd; exec maps it
    // without an fd at all. The file is released only when the mapping goes.
    fs::create_dir(s.mnt.join("exe")).unwrap();
    let exe = fs::read("/bin/true").unwrap();
    for i in 0..200 {
        let p = s.mnt.join(format!("exe/t{i}"));
        fs::write(&p, &exe).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let base2 = fd_count(pid);
    let loader = dynamic_loader();
    for i in 0..200 {
        let p = s.mnt.join(format!("exe/t{i}"));
        let st = run(&mut Command::new(&p));
        assert!(st.status.success(), "exec {}: {:?}", p.display(), st);
        if let Some(ld) = &loader {
            let st = run(Command::new(ld).arg(&p));
            assert!(
                st.status.success(),
                "{} {}: {:?}",
                ld.display(),
                p.display(),
                st
            );
        }
    }
    let back = wait_until(Duration::from_secs(20), || {
        fd_count(pid) <= base2 + FD_SLACK
    });
    let after2 = fd_count(pid);
    eprintln!(
        "daemon fds: {base2} before 400 mapped-then-closed programs, {after2} after (loader: \
         {loader:?})"
    );
    assert!(
        back,
        "daemon fds: {base2} before, {after2} after mapping and closing 200 files"
    );
    assert_eq!(daemons_for(&s.mnt), vec![pid], "the daemon died");
    drop(m);
}

#[test]
fn eight_clients_of_mixed_load() {
    if !can_compare() {
        return;
    }
    let seed = seed_for("eight_clients_of_mixed_load");
    let secs = load_secs();
    let s = Stack::new();
    for d in 0..SHARED_DIRS {
        fs::create_dir_all(s.lower.join(format!("shared/s{d}"))).unwrap();
        for j in 0..LOWER_PER_DIR {
            let rel = format!("shared/s{d}/l{j:02}");
            fs::write(s.lower.join(&rel), lower_load_content(&rel)).unwrap();
        }
    }
    let m = s.mount();
    let pid = s.daemon();
    let progress = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let hung = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(0));
    // The watchdog: no operation completing for 20 s is a hang; the daemon is killed so the
    // clients' calls fail and the test reports instead of hanging.
    let watchdog = {
        let (progress, done, hung, peak) = (
            progress.clone(),
            done.clone(),
            hung.clone(),
            peak_rss.clone(),
        );
        let mnt = s.mnt.clone();
        std::thread::spawn(move || {
            let mut last = (0, Instant::now());
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                if let Some(rss) = proc_status_kib(pid, "VmRSS") {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                let p = progress.load(Ordering::Relaxed);
                if p != last.0 {
                    last = (p, Instant::now());
                } else if last.1.elapsed() > Duration::from_secs(20) {
                    hung.store(true, Ordering::Relaxed);
                    kill_daemons(&mnt);
                    return;
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (mnt, upper, progress) = (s.mnt.clone(), s.upper.clone(), progress.clone());
            std::thread::spawn(move || {
                let mut c = Client::new(id, &mnt, &upper, seed);
                let mut ops = 0u64;
                while Instant::now() < deadline && c.errors.len() < 20 {
                    c.step();
                    ops += 1;
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                let bad = c.verify(&mnt);
                for b in bad {
                    c.fail(format!("at the end: {b}"));
                }
                (c, ops)
            })
        })
        .collect();
    let results: Vec<(Client, u64)> = clients
        .into_iter()
        .map(|h| h.join().expect("load client"))
        .collect();
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    assert!(
        !hung.load(Ordering::Relaxed),
        "no operation completed for 20 s: the daemon hung"
    );
    let hwm = proc_status_kib(pid, "VmHWM").unwrap_or(0);
    let total: u64 = results.iter().map(|(_, n)| n).sum();
    eprintln!(
        "{CLIENTS} clients, {secs} s: {total} operations; daemon peak RSS {} MiB (sampled {} \
         MiB)",
        hwm >> 10,
        peak_rss.load(Ordering::Relaxed) >> 10
    );
    let errors: Vec<String> = results.iter().flat_map(|(c, _)| c.errors.clone()).collect();
    assert!(
        errors.is_empty(),
        "unexpected results under load:\n{}",
        errors.join("\n")
    );
    assert!(
        hwm < RSS_LIMIT_KIB,
        "daemon peak RSS {} MiB exceeds {} MiB",
        hwm >> 10,
        RSS_LIMIT_KIB >> 10
    );

    // The final tree, after a remount and through the kernel: exactly what the clients did.
    drop(m);
    let m = s.mount();
    assert_eq!(dir_names(&s.work.join("work")), Vec::<String>::new());
    assert_eq!(overlay_internals(&s.mnt), Vec::<String>::new());
    let mut bad = Vec::new();
    for (c, _) in &results {
        bad.extend(c.verify(&s.mnt));
    }
    for d in 0..SHARED_DIRS {
        let dir = PathBuf::from(format!("shared/s{d}"));
        let mut want: BTreeSet<String> = BTreeSet::new();
        for (c, _) in &results {
            want.extend(
                c.owned_names_in(&dir)
                    .iter()
                    .map(|p| p.file_name().unwrap().to_string_lossy().into_owned()),
            );
            for (rel, content) in &c.owned_lower {
                if content.is_some() && rel.parent() == Some(dir.as_path()) {
                    want.insert(rel.file_name().unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let seen: BTreeSet<String> = dir_names(&s.mnt.join(&dir)).into_iter().collect();
        if seen != want {
            bad.push(format!(
                "{}: missing {:?}, unexpected {:?}",
                dir.display(),
                want.difference(&seen).collect::<Vec<_>>(),
                seen.difference(&want).collect::<Vec<_>>()
            ));
        }
    }
    assert!(bad.is_empty(), "after a remount:\n{}", bad.join("\n"));
    let ours = digest_tree(&s.mnt);
    drop(m);
    let _k = s.kernel();
    if let Some(d) = diff_trees(&ours, &digest_tree(&s.mnt)) {
        panic!("after the load, kernel overlayfs shows another tree:\n{d}");
    }
}

/// Renames over existing files by 8 clients at once (each on its own files, in shared
/// directories): every name a client holds must stay reachable. Replacing a file frees its
/// inode number for the next create, which is where the daemon's node identity has to hold.
#[test]
fn eight_clients_renaming_over_their_files() {
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    let m = s.mount();
    for d in 0..4 {
        fs::create_dir(s.mnt.join(format!("d{d}"))).unwrap();
    }
    let clients: Vec<_> = (0..8u64)
        .map(|w| {
            let mnt = s.mnt.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(w + 1);
                let mut mine: Vec<PathBuf> = Vec::new();
                let mut errors = Vec::new();
                for i in 0..2000u64 {
                    let r = match rng.below_u64(3) {
                        1 if mine.len() > 1 => {
                            let a = mine.swap_remove(rng.below(mine.len()));
                            let b = mine[rng.below(mine.len())].clone();
                            fs::rename(&a, &b).map_err(|e| format!("rename {a:?} over {b:?}: {e}"))
                        }
                        2 if !mine.is_empty() => {
                            let p = &mine[rng.below(mine.len())];
                            fs::OpenOptions::new()
                                .write(true)
                                .open(p)
                                .and_then(|mut f| f.write_all(b"data"))
                                .map_err(|e| format!("write {p:?}: {e}"))
                        }
                        _ => {
                            let p = mnt.join(format!("d{}/w{w}-{i}", rng.below_u64(4)));
                            let r = fs::OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .open(&p)
                                .map(drop)
                                .map_err(|e| format!("create {p:?}: {e}"));
                            mine.push(p);
                            r
                        }
                    };
                    if let Err(e) = r {
                        errors.push(e);
                    }
                }
                errors
            })
        })
        .collect();
    let errors: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    drop(m);
    assert!(
        errors.is_empty(),
        "{} operations on a client's own files failed (16,000 in all):\n{}",
        errors.len(),
        errors[..errors.len().min(10)].join("\n")
    );
}

// ---- unmount under load ----

/// A shell client working inside the mount (its cwd keeps the mount busy).
fn busy_client(mnt: &Path, i: usize) -> Child {
    Command::new("bash")
        .arg("-c")
        .arg(
            r#"cd "$1" || exit 1
               n=0
               while :; do
                 echo "$n" > "c$2-$n"; cat "c$2-$n" > /dev/null; mkdir -p "d$2/x"
                 mv "c$2-$n" "d$2/x/m" 2>/dev/null; rm -rf "d$2" 2>/dev/null
                 ls lowerdir > /dev/null; n=$((n+1))
               done"#,
        )
        .arg("client")
        .arg(mnt)
        .arg(i.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bash")
}

/// The busy clients; killed when dropped, so a failing test leaves none behind.
struct Clients(Vec<Child>);

impl Clients {
    fn stop(&mut self) {
        for c in self.0.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Processes other than our clients whose command line names `mnt`.
fn processes_naming(mnt: &Path) -> Vec<u32> {
    let want = mnt.to_string_lossy().into_owned();
    let me = std::process::id();
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(c) = fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&c).contains(&want) {
                v.push(pid);
            }
        }
    }
    v
}

#[test]
fn unmount_under_load_is_busy_or_lazy_and_the_daemon_exits() {
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    fs::create_dir(s.lower.join("lowerdir")).unwrap();
    for i in 0..50 {
        fs::write(s.lower.join(format!("lowerdir/f{i}")), "x").unwrap();
    }
    let m = s.mount();
    let pid = s.daemon();
    let mut clients = Clients((0..4).map(|i| busy_client(&s.mnt, i)).collect());
    std::thread::sleep(Duration::from_millis(500));
    // Also a file held open by this process.
    let mut held = fs::File::create(s.mnt.join("held")).unwrap();

    // The polite unmount: refused while busy.
    let out = run(Command::new("fusermount3").arg("-u").arg(&s.mnt));
    let msg = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        eprintln!("fusermount3 -u succeeded under load (the kernel detached it)");
    } else {
        assert!(
            msg.contains("busy"),
            "fusermount3 -u under load failed other than with EBUSY: {msg}"
        );
        assert!(is_mounted(&s.mnt), "the refused unmount unmounted anyway");
        // Lazy: detached at once, served until the last user goes.
        let out = run(Command::new("fusermount3").arg("-u").arg("-z").arg(&s.mnt));
        assert!(
            out.status.success(),
            "fusermount3 -u -z: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!is_mounted(&s.mnt), "still mounted after the unmount");
    // The detached mount still serves its users.
    held.write_all(b"still served").unwrap();
    held.sync_all().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for c in clients.0.iter_mut() {
        assert!(
            c.try_wait().unwrap().is_none(),
            "a client died after the lazy unmount"
        );
    }
    assert_eq!(
        daemons_for(&s.mnt),
        vec![pid],
        "the daemon left before its users"
    );
    drop(held);
    clients.stop();
    let exited = wait_until(Duration::from_secs(15), || {
        fs::metadata(format!("/proc/{pid}")).is_err()
            || fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .map(|r| r.trim_start().starts_with('Z'))
                        == Some(true)
                })
                .unwrap_or(true)
    });
    assert!(exited, "the daemon did not exit once its last user left");
    assert_eq!(
        processes_naming(&s.mnt),
        Vec::<u32>::new(),
        "processes left behind"
    );
    drop(m);
    // The data written through the detached mount reached the upper layer.
    assert_eq!(fs::read(s.upper.join("held")).unwrap(), b"still served");
    assert_eq!(dir_names(&s.work.join("work")), Vec::<String>::new());
}
