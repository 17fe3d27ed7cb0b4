//! What the crash tests share: the stack and its mounts, the kill, tree digests, the
//! recovery check, and a client that fsyncs and records what it got back.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::*;

// ---- a stack, mounts and crashes ----

impl Stack {
    /// Read-write, fsync honoured.
    pub(crate) fn opts(&self) -> String {
        format!("{},fsync=1", self.rw_opts())
    }

    pub(crate) fn mount(&self) -> Mount {
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
    pub(crate) fn reset_upper(&self) {
        for d in [&self.upper, &self.work] {
            let _ = fs::remove_dir_all(d);
            fs::create_dir(d).unwrap();
        }
    }

    pub(crate) fn kernel(&self) -> KernelMount {
        KernelMount::new(
            &kernel_rw_opts(std::slice::from_ref(&self.lower), &self.upper, &self.work),
            &self.mnt,
        )
    }

    pub(crate) fn daemon(&self) -> u32 {
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
pub(crate) fn crash(m: Mount) {
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
pub(crate) fn reap(mut child: Child, what: &str) {
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
pub(crate) fn describe(path: &Path) -> String {
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
pub(crate) fn file_digest(path: &Path) -> String {
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

pub(crate) type Tree = BTreeMap<PathBuf, String>;

pub(crate) fn digest_tree(root: &Path) -> Tree {
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

pub(crate) fn diff_trees(ours: &Tree, kernel: &Tree) -> Option<String> {
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
pub(crate) fn regular_files(root: &Path) -> Vec<PathBuf> {
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
pub(crate) fn same_content(a: &Path, b: &Path) -> Result<bool, String> {
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

pub(crate) fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
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
pub(crate) type Validator<'a> = &'a dyn Fn(&Path, &Path) -> Result<(), String>;

/// What one crash iteration left, seen before the remount cleaned up.
#[derive(Default, Debug)]
pub(crate) struct CrashStats {
    pub(crate) iterations: usize,
    pub(crate) staged_leftovers: usize,
}

impl CrashStats {
    /// Counts one crash of `s`, and whether it left staged copies in the work directory.
    pub(crate) fn count(&mut self, s: &Stack) {
        self.iterations += 1;
        if !dir_names(&s.work.join("work")).is_empty() {
            self.staged_leftovers += 1;
        }
    }
}

/// Remounts the crashed stack and checks everything issue 4 asks of a recovery; panics with
/// every problem found.
pub(crate) fn check_recovery(
    s: &Stack,
    what: &str,
    valid: Validator<'_>,
    fsynced: &[(PathBuf, Vec<u8>)],
) {
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
pub(crate) type Synced = Vec<(PathBuf, Vec<u8>)>;

/// Writes files (and rewrites a lower one) with fsync, recording each that fsync confirmed.
pub(crate) struct SyncClient {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) done: Arc<Mutex<Synced>>,
    pub(crate) handle: Option<std::thread::JoinHandle<()>>,
}

pub(crate) const SYNCED_LOWER: &str = "synced-lower";

pub(crate) fn synced_lower_content() -> Vec<u8> {
    noise(77, 200_000)
}

/// What `synced/TAG-N` holds once complete.
pub(crate) fn synced_content(name: &str) -> Vec<u8> {
    name.as_bytes().repeat(300)
}

pub(crate) fn sync_all_dir(p: &Path) -> std::io::Result<()> {
    fs::File::open(p)?.sync_all()
}

impl SyncClient {
    pub(crate) fn start(mnt: &Path, tag: &str) -> SyncClient {
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
    pub(crate) fn finish(mut self) -> Synced {
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
pub(crate) fn valid_synced(rel: &Path, path: &Path) -> Option<Result<(), String>> {
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

pub(crate) fn is_disconnected(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
    )
}
