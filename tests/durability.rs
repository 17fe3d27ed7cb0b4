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

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

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
    let mut r = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

// ---- a stack, mounts and crashes ----

impl Stack {
    /// Read-write, fsync honoured.
    fn opts(&self) -> String {
        format!("{},fsync=1", self.rw_opts())
    }

    fn mount(&self) -> Mount {
        match mount_stable(&self.opts(), &self.mnt) {
            Ok(m) => m,
            Err(o) => panic!(
                "stratafs -o {} failed: {}",
                self.opts(),
                String::from_utf8_lossy(&o.stderr)
            ),
        }
    }

    /// A fresh, empty upper and work directory.
    fn reset_upper(&self) {
        for d in [&self.upper, &self.work] {
            let _ = fs::remove_dir_all(d);
            fs::create_dir(d).unwrap();
        }
    }

    fn kernel(&self) -> KernelMount {
        KernelMount::new(
            &kernel_rw_opts(std::slice::from_ref(&self.lower), &self.upper, &self.work),
            &self.mnt,
        )
    }

    fn daemon(&self) -> u32 {
        let pids = daemons_for(&self.mnt);
        assert_eq!(
            pids.len(),
            1,
            "daemons for {}: {pids:?}",
            self.mnt.display()
        );
        pids[0]
    }
}

/// kill -9 of the daemon serving `m`, then a lazy unmount; returns once the daemon is gone.
fn crash(m: Mount) {
    let mnt = m.mountpoint.clone();
    let pids = daemons_for(&mnt);
    assert!(!pids.is_empty(), "no daemon serves {}", mnt.display());
    for p in &pids {
        let _ = Command::new("kill").arg("-9").arg(p.to_string()).status();
    }
    let gone = wait_until(Duration::from_secs(10), || {
        pids.iter().all(|p| !daemons_for(&mnt).contains(p))
    });
    assert!(gone, "the killed daemon did not go away");
    let out = run(Command::new("umount").arg("-l").arg(&mnt));
    assert!(
        out.status.success(),
        "umount -l {}: {}",
        mnt.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // Not mounted any more: dropping the guard finds nothing to do.
    drop(m);
}

/// Waits for a client process, which must finish soon after the daemon died.
fn reap(mut child: Child, what: &str) {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if start.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} still running 30 s after the daemon was killed");
            }
        }
    }
}

// ---- tree digests ----

/// One entry of a tree, as a comparable line.
fn describe(path: &Path) -> String {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = md.file_type();
    let mut s = format!("mode={:o} uid={} gid={}", md.mode(), md.uid(), md.gid());
    if ft.is_dir() {
        s.push_str(" dir");
    } else {
        s.push_str(&format!(" nlink={} size={}", md.nlink(), md.size()));
    }
    if ft.is_file() {
        s.push_str(&format!(" data={}", file_digest(path)));
    } else if ft.is_symlink() {
        s.push_str(&format!(" -> {}", fs::read_link(path).unwrap().display()));
    } else if ft.is_char_device() || ft.is_block_device() {
        s.push_str(&format!(" rdev={:x}", md.rdev()));
    }
    let mut buf = vec![0u8; 65536];
    if let Ok(n) = rustix::fs::llistxattr(path, &mut buf[..]) {
        let mut names: Vec<&[u8]> = buf[..n]
            .split(|b| *b == 0)
            .filter(|x| x.starts_with(b"user."))
            .collect();
        names.sort();
        for name in names {
            let name = String::from_utf8_lossy(name).into_owned();
            let mut v = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(path, name.as_str(), &mut v[..]).unwrap_or(0);
            s.push_str(&format!(" {name}={:?}", String::from_utf8_lossy(&v[..len])));
        }
    }
    s
}

/// Small files by content (FNV-1a), big ones through md5sum.
fn file_digest(path: &Path) -> String {
    let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > (1 << 20) {
        let out = run(Command::new("md5sum").arg(path));
        return String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("unreadable")
            .to_string();
    }
    match fs::read(path) {
        Ok(b) => {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for x in &b {
                h = (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3);
            }
            format!("{h:016x}")
        }
        Err(e) => format!("read error {e}"),
    }
}

type Tree = BTreeMap<PathBuf, String>;

fn digest_tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display())) {
            let path = e.unwrap().path();
            out.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                describe(&path),
            );
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

fn diff_trees(ours: &Tree, kernel: &Tree) -> Option<String> {
    let mut d = Vec::new();
    for (p, v) in ours {
        match kernel.get(p) {
            None => d.push(format!("only through stratafs: {} {v}", p.display())),
            Some(k) if k != v => d.push(format!(
                "differs: {}\n  stratafs: {v}\n  kernel:   {k}",
                p.display()
            )),
            _ => {}
        }
    }
    for (p, v) in kernel {
        if !ours.contains_key(p) {
            d.push(format!("only through the kernel: {} {v}", p.display()));
        }
    }
    d.truncate(20);
    (!d.is_empty()).then(|| d.join("\n"))
}

/// Regular files under `root`, relative, never following symlinks.
fn regular_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let path = e.path();
            let Ok(md) = fs::symlink_metadata(&path) else {
                continue;
            };
            if md.is_dir() {
                stack.push(path);
            } else if md.is_file() {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// True when files `a` and `b` hold the same bytes.
fn same_content(a: &Path, b: &Path) -> Result<bool, String> {
    let open = |p: &Path| fs::File::open(p).map_err(|e| format!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (la, lb) = (
        fa.metadata().map_err(|e| e.to_string())?.len(),
        fb.metadata().map_err(|e| e.to_string())?.len(),
    );
    if la != lb {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(|e| format!("read {}: {e}", a.display()))?;
        let m = read_full(&mut fb, &mut bb).map_err(|e| format!("read {}: {e}", b.display()))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Decides whether a file found after a crash (relative path, where it is) is acceptable.
type Validator<'a> = &'a dyn Fn(&Path, &Path) -> Result<(), String>;

/// What one crash iteration left, seen before the remount cleaned up.
#[derive(Default, Debug)]
struct CrashStats {
    iterations: usize,
    staged_leftovers: usize,
}

impl CrashStats {
    /// Counts one crash of `s`, and whether it left staged copies in the work directory.
    fn count(&mut self, s: &Stack) {
        self.iterations += 1;
        if !dir_names(&s.work.join("work")).is_empty() {
            self.staged_leftovers += 1;
        }
    }
}

/// Remounts the crashed stack and checks everything issue 4 asks of a recovery; panics with
/// every problem found.
fn check_recovery(s: &Stack, what: &str, valid: Validator<'_>, fsynced: &[(PathBuf, Vec<u8>)]) {
    let mut problems = Vec::new();
    let m = s.mount();
    let left = dir_names(&s.work.join("work"));
    if !left.is_empty() {
        problems.push(format!("work dir not emptied by the mount: {left:?}"));
    }
    problems.extend(overlay_internals(&s.mnt));
    for rel in regular_files(&s.upper) {
        if let Err(e) = valid(&rel, &s.upper.join(&rel)) {
            problems.push(format!("in upper: {}: {e}", rel.display()));
        }
    }
    for rel in regular_files(&s.mnt) {
        if let Err(e) = valid(&rel, &s.mnt.join(&rel)) {
            problems.push(format!("through the mount: {}: {e}", rel.display()));
        }
    }
    for (rel, want) in fsynced {
        match fs::read(s.mnt.join(rel)) {
            Ok(got) if &got == want => {}
            Ok(got) => problems.push(format!(
                "fsync'd {} lost data: {} bytes, expected {}",
                rel.display(),
                got.len(),
                want.len()
            )),
            Err(e) => problems.push(format!("fsync'd {} is gone: {e}", rel.display())),
        }
    }
    let ours = digest_tree(&s.mnt);
    drop(m);
    {
        let _k = s.kernel();
        let theirs = digest_tree(&s.mnt);
        if let Some(d) = diff_trees(&ours, &theirs) {
            problems.push(format!("kernel overlayfs shows another tree:\n{d}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{what}: after the crash and a remount:\n{}",
        problems.join("\n")
    );
}

// ---- a client that fsyncs, and what it got back ----

/// Files (relative path) and the content fsync confirmed for them.
type Synced = Vec<(PathBuf, Vec<u8>)>;

/// Writes files (and rewrites a lower one) with fsync, recording each that fsync confirmed.
struct SyncClient {
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Synced>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

const SYNCED_LOWER: &str = "synced-lower";

fn synced_lower_content() -> Vec<u8> {
    noise(77, 200_000)
}

/// What `synced/TAG-N` holds once complete.
fn synced_content(name: &str) -> Vec<u8> {
    name.as_bytes().repeat(300)
}

fn sync_all_dir(p: &Path) -> std::io::Result<()> {
    fs::File::open(p)?.sync_all()
}

impl SyncClient {
    fn start(mnt: &Path, tag: &str) -> SyncClient {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let (mnt, tag) = (mnt.to_path_buf(), tag.to_string());
        let (st, dn) = (stop.clone(), done.clone());
        let handle = std::thread::spawn(move || {
            // A lower file rewritten in place: a copy-up, then data, then fsync.
            let lower_rw = (|| -> std::io::Result<Vec<u8>> {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .open(mnt.join(SYNCED_LOWER))?;
                f.write_all(b"DURABLE")?;
                f.sync_all()?;
                let mut want = synced_lower_content();
                want[..7].copy_from_slice(b"DURABLE");
                Ok(want)
            })();
            if let Ok(want) = lower_rw {
                dn.lock().unwrap().push((PathBuf::from(SYNCED_LOWER), want));
            }
            let dir = mnt.join("synced");
            if fs::create_dir(&dir).is_err() && !dir.is_dir() {
                return;
            }
            for i in 0.. {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let name = format!("{tag}-{i}");
                let content = synced_content(&name);
                let r = (|| -> std::io::Result<()> {
                    let mut f = fs::File::create(dir.join(&name))?;
                    f.write_all(&content)?;
                    f.sync_all()?;
                    sync_all_dir(&dir)
                })();
                if r.is_err() {
                    break;
                }
                dn.lock()
                    .unwrap()
                    .push((Path::new("synced").join(&name), content));
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        SyncClient {
            stop,
            done,
            handle: Some(handle),
        }
    }

    /// Stops the client and returns what it fsync'd.
    fn finish(mut self) -> Synced {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("sync client");
        }
        std::mem::take(&mut *self.done.lock().unwrap())
    }
}

impl Drop for SyncClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Accepts the sync client's files: complete or, if fsync had not returned, a prefix of new
/// data; the rewritten lower file complete before or after its rewrite.
fn valid_synced(rel: &Path, path: &Path) -> Option<Result<(), String>> {
    if rel == Path::new(SYNCED_LOWER) {
        let got = fs::read(path).map_err(|e| e.to_string());
        let before = synced_lower_content();
        let mut after = before.clone();
        after[..7].copy_from_slice(b"DURABLE");
        return Some(got.and_then(|g| {
            if g == before || g == after {
                Ok(())
            } else {
                Err(format!("partial copy-up: {} bytes", g.len()))
            }
        }));
    }
    if rel.parent() == Some(Path::new("synced")) {
        let name = rel.file_name()?.to_string_lossy().into_owned();
        let want = synced_content(&name);
        return Some(match fs::read(path) {
            Ok(g) if want.starts_with(&g) => Ok(()),
            Ok(g) => Err(format!(
                "not a prefix of what was written ({} bytes)",
                g.len()
            )),
            Err(e) => Err(e.to_string()),
        });
    }
    None
}

fn is_disconnected(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
    )
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

// ---- load ----

fn load_secs() -> u64 {
    std::env::var("STRATAFS_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

const SHARED_DIRS: u64 = 4;
const LOWER_PER_DIR: u64 = 16;
const CLIENTS: u64 = 8;

/// Daemon memory bound, in KiB (peak resident set; about 6 MiB is typical).
const RSS_LIMIT_KIB: u64 = 128 * 1024;

fn lower_load_content(rel: &str) -> Vec<u8> {
    rel.as_bytes().repeat(64)
}

/// After a rename of `rel`: an error if the mount still shows the old name.
fn left_behind(mnt: &Path, rel: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(mnt.join(rel)) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) => Err(std::io::Error::other(format!(
            "the old name is still there (ino {})",
            m.ino()
        ))),
    }
}

/// One load client. It owns the names `w{id}-*` in the shared directories and the lower files
/// `lJJ` with `JJ % CLIENTS == id` (which it may append to or delete); it reads everything
/// else. Every operation on what it owns must succeed and show what it did.
struct Client {
    id: u64,
    mnt: PathBuf,
    /// The upper layer, looked at directly to explain a listing that is wrong.
    upper: PathBuf,
    rng: Rng,
    n: u64,
    /// Own regular files: relative path -> content.
    files: BTreeMap<PathBuf, Vec<u8>>,
    dirs: BTreeSet<PathBuf>,
    links: BTreeMap<PathBuf, String>,
    /// Owned lower files: relative path -> expected content (None once deleted).
    owned_lower: BTreeMap<PathBuf, Option<Vec<u8>>>,
    errors: Vec<String>,
}

impl Client {
    fn new(id: u64, mnt: &Path, upper: &Path, seed: u64) -> Client {
        let mut owned_lower = BTreeMap::new();
        for d in 0..SHARED_DIRS {
            for j in (0..LOWER_PER_DIR).filter(|j| j % CLIENTS == id) {
                let rel = PathBuf::from(format!("shared/s{d}/l{j:02}"));
                let c = lower_load_content(&rel.to_string_lossy());
                owned_lower.insert(rel, Some(c));
            }
        }
        Client {
            id,
            mnt: mnt.to_path_buf(),
            upper: upper.to_path_buf(),
            rng: Rng::new(seed ^ (id + 7).wrapping_mul(0x5851_f42d)),
            n: 0,
            files: BTreeMap::new(),
            dirs: BTreeSet::new(),
            links: BTreeMap::new(),
            owned_lower,
            errors: Vec::new(),
        }
    }

    fn fail(&mut self, what: String) {
        if self.errors.len() < 20 {
            self.errors.push(format!("client {}: {what}", self.id));
        }
    }

    fn new_name(&mut self, kind: &str) -> PathBuf {
        self.n += 1;
        let d = self.rng.below_u64(SHARED_DIRS);
        PathBuf::from(format!("shared/s{d}/w{}-{kind}{}", self.id, self.n))
    }

    fn pick<T: Clone>(&mut self, keys: Vec<T>) -> Option<T> {
        (!keys.is_empty()).then(|| keys[self.rng.below(keys.len())].clone())
    }

    fn check(&mut self, what: &str, r: std::io::Result<()>) {
        if let Err(e) = r {
            self.fail(format!("{what}: {e}"));
        }
    }

    /// One random operation.
    fn step(&mut self) {
        let m = self.mnt.clone();
        let own_file = self.pick(self.files.keys().cloned().collect());
        match self.rng.below_u64(20) {
            0..=2 => {
                let rel = self.new_name("f");
                let len = self.rng.below_u64(16 << 10) as usize;
                let c = noise(self.rng.next(), len);
                let r = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(m.join(&rel))
                    .and_then(|mut f| f.write_all(&c));
                self.check(&format!("create {}", rel.display()), r);
                self.files.insert(rel, c);
            }
            3 | 4 => {
                let Some(rel) = own_file else { return };
                let off = self.rng.below_u64(20_000);
                let data = noise(self.rng.next(), self.rng.below_u64(8192) as usize + 1);
                let r = fs::OpenOptions::new()
                    .write(true)
                    .open(m.join(&rel))
                    .and_then(|mut f| {
                        f.seek(SeekFrom::Start(off))?;
                        f.write_all(&data)?;
                        if off % 4 == 0 {
                            f.sync_data()?;
                        }
                        Ok(())
                    });
                self.check(&format!("write {}", rel.display()), r);
                let c = self.files.get_mut(&rel).unwrap();
                let end = off as usize + data.len();
                if c.len() < end {
                    c.resize(end, 0);
                }
                c[off as usize..end].copy_from_slice(&data);
            }
            5 => {
                let Some(rel) = own_file else { return };
                let len = self.rng.below_u64(10_000);
                let r = fs::OpenOptions::new()
                    .write(true)
                    .open(m.join(&rel))
                    .and_then(|f| f.set_len(len));
                self.check(&format!("truncate {}", rel.display()), r);
                self.files.get_mut(&rel).unwrap().resize(len as usize, 0);
            }
            6 => {
                let Some(rel) = own_file else { return };
                let to = self.new_name("f");
                let r = fs::rename(m.join(&rel), m.join(&to)).and_then(|()| left_behind(&m, &rel));
                self.check(&format!("rename {} {}", rel.display(), to.display()), r);
                let c = self.files.remove(&rel).unwrap();
                self.files.insert(to, c);
            }
            7 => {
                let Some(to) = self.pick(self.files.keys().cloned().collect()) else {
                    return;
                };
                let Some(rel) = own_file else { return };
                if rel == to {
                    return;
                }
                let r = fs::rename(m.join(&rel), m.join(&to)).and_then(|()| left_behind(&m, &rel));
                self.check(
                    &format!("rename over {} {}", rel.display(), to.display()),
                    r,
                );
                let c = self.files.remove(&rel).unwrap();
                self.files.insert(to, c);
            }
            8 => {
                let Some(rel) = own_file else { return };
                let r = fs::remove_file(m.join(&rel));
                self.check(&format!("unlink {}", rel.display()), r);
                self.files.remove(&rel);
            }
            9 => {
                if self.dirs.len() > 8 {
                    let d = self.pick(self.dirs.iter().cloned().collect()).unwrap();
                    let r = fs::remove_dir(m.join(&d));
                    self.check(&format!("rmdir {}", d.display()), r);
                    self.dirs.remove(&d);
                } else {
                    let d = self.new_name("d");
                    let r = fs::create_dir(m.join(&d));
                    self.check(&format!("mkdir {}", d.display()), r);
                    self.dirs.insert(d);
                }
            }
            10 => {
                let rel = self.new_name("s");
                let target = format!("target-{}", self.n);
                let r = std::os::unix::fs::symlink(&target, m.join(&rel));
                self.check(&format!("symlink {}", rel.display()), r);
                match fs::read_link(m.join(&rel)) {
                    Ok(t) if t == Path::new(&target) => {}
                    other => self.fail(format!("readlink {}: {other:?}", rel.display())),
                }
                self.links.insert(rel, target);
            }
            11 => {
                let Some(rel) = own_file else { return };
                let link = self.new_name("h");
                let r = fs::hard_link(m.join(&rel), m.join(&link)).and_then(|()| {
                    let n = fs::metadata(m.join(&link))?.nlink();
                    if n != 2 {
                        return Err(std::io::Error::other(format!("nlink {n}, expected 2")));
                    }
                    fs::remove_file(m.join(&link))
                });
                self.check(&format!("link {}", rel.display()), r);
            }
            12 | 13 => {
                let Some(rel) = own_file else { return };
                match fs::read(m.join(&rel)) {
                    Ok(c) if c == self.files[&rel] => {}
                    Ok(c) => self.fail(format!(
                        "read {}: {} bytes, not what was written ({} bytes)",
                        rel.display(),
                        c.len(),
                        self.files[&rel].len()
                    )),
                    Err(e) => self.fail(format!("read {}: {e}", rel.display())),
                }
            }
            14 => {
                let d = self.rng.below_u64(SHARED_DIRS);
                let dir = PathBuf::from(format!("shared/s{d}"));
                let prefix = format!("w{}-", self.id);
                match fs::read_dir(m.join(&dir)) {
                    Ok(rd) => {
                        let seen: BTreeSet<PathBuf> = rd
                            .flatten()
                            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                            .map(|e| dir.join(e.file_name()))
                            .collect();
                        let want: BTreeSet<PathBuf> = self.owned_names_in(&dir);
                        if seen != want {
                            let odd: Vec<&PathBuf> = want.symmetric_difference(&seen).collect();
                            let why = self.explain(&dir, &odd);
                            self.fail(format!(
                                "listing of {}: {:?} missing, {:?} unexpected ({why})",
                                dir.display(),
                                want.difference(&seen).collect::<Vec<_>>(),
                                seen.difference(&want).collect::<Vec<_>>()
                            ));
                        }
                    }
                    Err(e) => self.fail(format!("readdir {}: {e}", dir.display())),
                }
            }
            15 => {
                let Some(rel) = own_file else { return };
                let v = format!("v{}", self.n);
                let r = rustix::fs::setxattr(
                    m.join(&rel).as_path(),
                    "user.load",
                    v.as_bytes(),
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(std::io::Error::from)
                .and_then(|()| {
                    let mut b = [0u8; 64];
                    let n = rustix::fs::getxattr(m.join(&rel).as_path(), "user.load", &mut b[..])?;
                    if &b[..n] != v.as_bytes() {
                        return Err(std::io::Error::other("xattr reads back differently"));
                    }
                    Ok(())
                });
                self.check(&format!("xattr {}", rel.display()), r);
            }
            16 => {
                // Someone's lower file: present with its content (plus appends), or deleted.
                let d = self.rng.below_u64(SHARED_DIRS);
                let j = self.rng.below_u64(LOWER_PER_DIR);
                let rel = format!("shared/s{d}/l{j:02}");
                let base = lower_load_content(&rel);
                match fs::read(m.join(&rel)) {
                    Ok(c) if c.starts_with(&base) => {}
                    Ok(c) => {
                        self.fail(format!("read {rel}: {} bytes, not the lower data", c.len()))
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => self.fail(format!("read {rel}: {e}")),
                }
            }
            17 | 18 => {
                // Append to an owned lower file: the first one copies it up.
                let live: Vec<PathBuf> = self
                    .owned_lower
                    .iter()
                    .filter(|(_, c)| c.is_some())
                    .map(|(p, _)| p.clone())
                    .collect();
                let Some(rel) = self.pick(live) else { return };
                let data = format!("+{}", self.n).into_bytes();
                let r = fs::OpenOptions::new()
                    .append(true)
                    .open(m.join(&rel))
                    .and_then(|mut f| f.write_all(&data));
                self.check(&format!("append {}", rel.display()), r);
                if let Some(Some(c)) = self.owned_lower.get_mut(&rel) {
                    c.extend_from_slice(&data);
                }
            }
            _ => {
                let live: Vec<PathBuf> = self
                    .owned_lower
                    .iter()
                    .filter(|(_, c)| c.is_some())
                    .map(|(p, _)| p.clone())
                    .collect();
                if live.len() < 3 {
                    return;
                }
                let Some(rel) = self.pick(live) else { return };
                let r = fs::remove_file(m.join(&rel));
                self.check(&format!("unlink lower {}", rel.display()), r);
                self.owned_lower.insert(rel, None);
            }
        }
    }

    /// What the mount and the upper layer say of `names` of `dir` now, and whether a second
    /// listing agrees with the first: tells a stale listing from a wrong model.
    fn explain(&self, dir: &Path, names: &[&PathBuf]) -> String {
        let again: BTreeSet<PathBuf> = fs::read_dir(self.mnt.join(dir))
            .map(|rd| rd.flatten().map(|e| dir.join(e.file_name())).collect())
            .unwrap_or_default();
        names
            .iter()
            .map(|n| {
                let through = fs::symlink_metadata(self.mnt.join(n)).map(|m| m.ino());
                let on_disk = fs::symlink_metadata(self.upper.join(n)).map(|m| m.ino());
                format!(
                    "{}: lstat {:?}, upper {:?}, listed again {}",
                    n.display(),
                    through.map_err(|e| e.kind()),
                    on_disk.map_err(|e| e.kind()),
                    again.contains(*n)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn owned_names_in(&self, dir: &Path) -> BTreeSet<PathBuf> {
        self.files
            .keys()
            .chain(self.dirs.iter())
            .chain(self.links.keys())
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect()
    }

    /// Checks through `root` that everything this client owns is as it left it.
    fn verify(&self, root: &Path) -> Vec<String> {
        let mut bad = Vec::new();
        for (rel, c) in &self.files {
            match fs::read(root.join(rel)) {
                Ok(got) if &got == c => {}
                Ok(got) => bad.push(format!(
                    "{}: {} bytes, expected {}",
                    rel.display(),
                    got.len(),
                    c.len()
                )),
                Err(e) => bad.push(format!("{}: {e}", rel.display())),
            }
        }
        for d in &self.dirs {
            if !root.join(d).is_dir() {
                bad.push(format!("{}: directory missing", d.display()));
            }
        }
        for (rel, t) in &self.links {
            match fs::read_link(root.join(rel)) {
                Ok(got) if got == Path::new(t) => {}
                other => bad.push(format!("{}: {other:?}", rel.display())),
            }
        }
        for (rel, c) in &self.owned_lower {
            match (fs::read(root.join(rel)), c) {
                (Ok(got), Some(c)) if &got == c => {}
                (Err(e), None) if e.raw_os_error() == Some(libc::ENOENT) => {}
                (got, c) => bad.push(format!(
                    "{}: {:?} bytes, expected {:?}",
                    rel.display(),
                    got.map(|g| g.len()),
                    c.as_ref().map(|c| c.len())
                )),
            }
        }
        bad
    }
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
