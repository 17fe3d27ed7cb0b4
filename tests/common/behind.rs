//! Layers changed behind a live mount (tests/refresh.rs, tests/udba.rs): two lower layers
//! and an upper compared with the kernel's overlayfs freshly mounted on them, and a race of
//! changes in every layer with reads through the mount that must never reach another
//! object.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::*;

/// Two lower layers, an upper and a work directory, the stratafs mount point and one for the
/// kernel's overlayfs.
pub struct Layers {
    pub dir: tempfile::TempDir,
    pub l1: PathBuf,
    pub l2: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
    pub kmnt: PathBuf,
}

impl Layers {
    pub fn new() -> Layers {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| {
            let d = dir.path().join(n);
            fs::create_dir(&d).unwrap();
            d
        };
        Layers {
            l1: p("l1"),
            l2: p("l2"),
            upper: p("upper"),
            work: p("work"),
            mnt: p("mnt"),
            kmnt: p("kmnt"),
            dir,
        }
    }

    /// The `-o` options of a stratafs mount of these layers, `extra` appended.
    pub fn opts(&self, extra: &str) -> String {
        format!(
            "{}{extra}",
            rw_opts(&[self.l1.clone(), self.l2.clone()], &self.upper, &self.work)
        )
    }

    /// Mounts stratafs on these layers with `extra` options (`""`, `",udba=notify"`).
    pub fn mount(&self, extra: &str) -> Mount {
        Mount::new(&self.opts(extra), &self.mnt)
    }

    /// The kernel's overlayfs on the same layers, read-only (the upper as the top lower
    /// layer: its whiteouts and opaque directories count the same).
    pub fn kernel(&self) -> KernelMount {
        let opts = format!(
            "lowerdir={}:{}:{}",
            self.upper.display(),
            self.l1.display(),
            self.l2.display()
        );
        KernelMount::new(&opts, &self.kmnt)
    }

    /// The stratafs tree equals the kernel's freshly mounted on the same layers.
    pub fn assert_as_the_kernel(&self, what: &str) {
        let k = self.kernel();
        assert_same_tree(&snapshot(&self.mnt), &snapshot(&self.kmnt), what);
        drop(k);
    }

    /// The stratafs tree comes to equal the kernel's within `within`, without a refresh.
    pub fn comes_to_equal_the_kernel(&self, within: Duration, what: &str) {
        let k = self.kernel();
        let theirs = snapshot(&self.kmnt);
        // A walk may meet a name listed and gone before its lstat while the last changes
        // are being refreshed: it is tried again.
        let equal = wait_until(within, || {
            try_snapshot(&self.mnt).is_ok_and(|ours| tree_diff(&ours, &theirs).is_none())
        });
        if !equal {
            let ours = snapshot(&self.mnt);
            if let Some(d) = tree_diff(&ours, &theirs) {
                panic!(
                    "{what}: trees differ:\n{d}\n{}",
                    self.diagnose(&ours, &theirs)
                );
            }
        }
        drop(k);
    }

    /// What the mount shows of the paths two trees disagree on (a name looked up and
    /// listed directly, and after a `stratafs refresh`): tells a change the daemon missed
    /// from one the kernel still caches.
    fn diagnose(&self, ours: &TreeSnap, theirs: &TreeSnap) -> String {
        let mut paths: Vec<&PathBuf> = theirs
            .keys()
            .filter(|p| ours.get(*p) != theirs.get(*p))
            .chain(ours.keys().filter(|p| !theirs.contains_key(*p)))
            .collect();
        paths.truncate(5);
        let mut out = String::new();
        for p in paths {
            let full = self.mnt.join(p);
            let listed = full.parent().and_then(|d| fs::read_dir(d).ok()).map(|rd| {
                rd.flatten()
                    .any(|e| Some(e.file_name().as_os_str()) == p.file_name())
            });
            out += &format!(
                "{}: lstat {:?}, listed {:?}\n",
                p.display(),
                fs::symlink_metadata(&full)
                    .map(|m| m.len())
                    .map_err(|e| e.kind()),
                listed
            );
        }
        let refreshed = std::process::Command::new(stratafs_bin())
            .arg("refresh")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        let after = try_snapshot(&self.mnt).map(|t| tree_diff(&t, theirs));
        out + &format!("after `stratafs refresh` (ran: {refreshed}): {after:?}")
    }

    /// The race's files, each in one of the lower layers, holding their marker.
    pub fn seed_race(&self) {
        for (i, n) in race_names().iter().enumerate() {
            let layer = if i % 2 == 0 { &self.l1 } else { &self.l2 };
            write(&layer.join(n), &marker(n, 0));
        }
    }

    /// Changes behind the mount, in every layer, until `stop`: new objects renamed over a
    /// name, removals, whiteouts in the upper, whole directories gone or made opaque,
    /// files rewritten in place. Returns how many changes were made.
    pub fn spawn_changer(&self, stop: &Arc<AtomicBool>) -> JoinHandle<u64> {
        let (l1, l2, upper) = (self.l1.clone(), self.l2.clone(), self.upper.clone());
        let stop = Arc::clone(stop);
        std::thread::spawn(move || {
            let mut rng = Rng::new(20);
            let names = race_names();
            let mut gen = 1;
            while !stop.load(Ordering::Relaxed) {
                let n = rng.pick(&names);
                let layer = match rng.below(3) {
                    0 => &l1,
                    1 => &l2,
                    _ => &upper,
                };
                let p = layer.join(&n);
                match rng.below(6) {
                    0 | 1 => {
                        // A new object under the name (renamed over it).
                        let _ = fs::remove_dir_all(&p);
                        if let Some(d) = p.parent() {
                            let _ = fs::create_dir_all(d);
                        }
                        let tmp = layer.join(format!(".tmp{gen}"));
                        if fs::write(&tmp, marker(&n, gen)).is_ok() {
                            let _ = fs::rename(&tmp, &p);
                        }
                    }
                    2 => {
                        let _ = fs::remove_file(&p);
                    }
                    3 if layer == &upper => {
                        let _ = fs::remove_file(&p);
                        if let Some(d) = p.parent() {
                            let _ = fs::create_dir_all(d);
                        }
                        let _ = make_whiteout(&p);
                    }
                    4 => {
                        // A whole directory goes, or comes back opaque in the upper layer.
                        let d = layer.join(rng.pick(&["d0", "d1", "d0/s"]));
                        if layer == &upper && rng.pct(50) {
                            let _ = fs::create_dir_all(&d);
                            let _ = make_opaque(&d);
                        } else {
                            let _ = fs::remove_dir_all(&d);
                        }
                    }
                    _ => {
                        if let Some(d) = p.parent() {
                            let _ = fs::create_dir_all(d);
                        }
                        let _ = fs::write(&p, marker(&n, gen));
                    }
                }
                gen += 1;
                std::thread::sleep(Duration::from_micros(300));
            }
            gen
        })
    }

    /// Two threads reading and listing through the mount until `stop`: every read reaches
    /// the object its path names, or fails with an error a vanished object gives. Each
    /// returns how many reads succeeded.
    pub fn spawn_loaders(&self, stop: &Arc<AtomicBool>) -> Vec<JoinHandle<usize>> {
        (0..2)
            .map(|t| {
                let mnt = self.mnt.clone();
                let stop = Arc::clone(stop);
                std::thread::spawn(move || {
                    let mut rng = Rng::new(100 + t);
                    let names = race_names();
                    let mut reads = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let n = rng.pick(&names);
                        let p = mnt.join(&n);
                        let r = if rng.pct(30) {
                            fs::read_dir(p.parent().unwrap()).map(|rd| {
                                rd.count();
                                Vec::new()
                            })
                        } else {
                            fs::read(&p)
                        };
                        match r {
                            Ok(content) => {
                                let want = format!("{n}#");
                                let text = String::from_utf8_lossy(&content);
                                assert!(
                                    content.is_empty()
                                        || text.starts_with(&want)
                                        || want.starts_with(&*text),
                                    "{n} read another object's data: {text:?}"
                                );
                                reads += 1;
                            }
                            Err(e) => {
                                let code = e.raw_os_error().unwrap_or(0);
                                assert!(
                                    [libc::ENOENT, libc::ESTALE, libc::ENOTDIR, libc::EISDIR]
                                        .contains(&code),
                                    "{n}: {e}"
                                );
                            }
                        }
                    }
                    reads
                })
            })
            .collect()
    }
}

/// Writes `s` to `p`, making its directories first.
pub fn write(p: &Path, s: &str) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, s).unwrap();
}

/// The errno of an lstat of `p`, if it fails.
pub fn errno(p: &Path) -> Option<i32> {
    fs::symlink_metadata(p).err().and_then(|e| e.raw_os_error())
}

/// Reads every file and lists every directory: the kernel and the daemon cache it all.
pub fn walk(p: &Path) {
    for e in fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        let md = fs::symlink_metadata(&path).unwrap();
        if md.is_dir() {
            walk(&path);
        } else if md.is_file() {
            let _ = fs::read(&path);
        }
    }
}

/// What a file made by the race holds: its own path first, so that a read through a path
/// shows whether it reached that path's object or another one.
pub fn marker(rel: &str, gen: u64) -> String {
    format!("{rel}#{gen}\n")
}

/// The names the race plays with, relative to the root.
pub fn race_names() -> Vec<String> {
    let mut v = Vec::new();
    for d in ["", "d0/", "d1/", "d0/s/"] {
        for f in 0..4 {
            v.push(format!("{d}f{f}"));
        }
    }
    v
}

/// Removes the whiteouts under `upper` whose directory merges with no directory of `lowers`
/// (topmost first): its merge chain, the layers holding a directory there down to an
/// opaque one, is the upper alone.
pub fn drop_idle_whiteouts(upper: &Path, lowers: &[&Path]) {
    use std::os::unix::fs::FileTypeExt;
    fn walk(rel: &Path, chain: &[PathBuf]) {
        let dir = chain[0].join(rel);
        let merged = chain.len() > 1;
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            let r = rel.join(e.file_name());
            if ft.is_dir() {
                // The child's chain: the layers of this one holding a directory there,
                // until an opaque one or anything else under the name.
                let mut sub = Vec::new();
                for l in chain {
                    let p = l.join(&r);
                    match fs::symlink_metadata(&p) {
                        Ok(m) if m.is_dir() => {
                            sub.push(l.clone());
                            if xattr(&p, "trusted.overlay.opaque").is_some() {
                                break;
                            }
                        }
                        Ok(_) => break,
                        Err(_) => {}
                    }
                }
                walk(&r, &sub);
            } else if ft.is_char_device() && !merged {
                fs::remove_file(e.path()).unwrap();
            }
        }
    }
    let mut chain = vec![upper.to_path_buf()];
    chain.extend(lowers.iter().map(|l| l.to_path_buf()));
    walk(Path::new(""), &chain);
}
