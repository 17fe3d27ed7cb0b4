//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Load tests of concurrent changes and accesses of the same names, compared with the
//! kernel's overlayfs on identical copies of the layers: stratafs must give no errno the
//! kernel does not give. Each side runs for `STRATAFS_RACE_SECS` seconds (3 by default; the
//! races of issue 14 item 10 were first seen in 15-20 s runs).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// (operation, errno) -> count; errno 0 counts every attempt, -1 a wrong result (content
/// or type).
type Counts = BTreeMap<(&'static str, i32), u64>;

/// One step of a load thread, run until the time is up.
type Worker = Box<dyn FnMut(&mut Counts) + Send>;

fn race_secs() -> Duration {
    let secs = std::env::var("STRATAFS_RACE_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

fn count(c: &mut Counts, op: &'static str, r: Result<(), i32>) {
    if let Err(e) = r {
        *c.entry((op, e)).or_default() += 1;
    }
    *c.entry((op, 0)).or_default() += 1;
}

/// Three workers that rename the `FILES` files `fN` between directories `a` and `b` of `m`.
fn add_renamers(m: &Path, workers: &mut Vec<Worker>) {
    for t in 0..3u64 {
        let m = m.to_path_buf();
        let mut rng = Rng::new(t + 1);
        workers.push(Box::new(move |c: &mut Counts| {
            let i = rng.below_u64(FILES);
            let (from, to) = if rng.below_u64(2) == 0 {
                ("a", "b")
            } else {
                ("b", "a")
            };
            let f = format!("f{i}");
            let r = fs::rename(m.join(from).join(&f), m.join(to).join(&f)).map_err(errno);
            count(c, "rename", r);
        }));
    }
}

/// `lstat` of `p`: a regular file, or the errno (-1 for another type: a whiteout shown).
fn stat_file(p: &Path) -> Result<(), i32> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_file() => Ok(()),
        Ok(_) => Err(-1),
        Err(e) => Err(errno(e)),
    }
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// The lower layer, and an upper and work directory, for each side, filled by `fill`.
struct Sides {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Sides {
    fn new(fill: impl Fn(&Path)) -> Sides {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        for side in ["k", "s"] {
            for d in ["l", "u", "w", "m"] {
                fs::create_dir_all(root.join(side).join(d)).unwrap();
            }
            fill(&root.join(side).join("l"));
        }
        Sides { _dir: dir, root }
    }

    fn p(&self, side: &str, d: &str) -> PathBuf {
        self.root.join(side).join(d)
    }

    /// Runs `load` against the kernel's overlayfs, then against stratafs.
    fn run(&self, load: impl Fn(&Path) -> Counts) -> (Counts, Counts) {
        let kernel = {
            let opts = kernel_rw_opts(&[self.p("k", "l")], &self.p("k", "u"), &self.p("k", "w"));
            let _m = KernelMount::new(&opts, &self.p("k", "m"));
            load(&self.p("k", "m"))
        };
        let strata = {
            let opts = rw_opts(&[self.p("s", "l")], &self.p("s", "u"), &self.p("s", "w"));
            let m = self.p("s", "m");
            let _m = Mount::new(&opts, &m);
            // A hung daemon fails the test instead of hanging it.
            let done = Arc::new(AtomicBool::new(false));
            let watchdog = {
                let done = Arc::clone(&done);
                let m = m.clone();
                let limit = race_secs() + Duration::from_secs(120);
                std::thread::spawn(move || {
                    let start = Instant::now();
                    while !done.load(Ordering::Relaxed) {
                        if start.elapsed() > limit {
                            kill_daemons(&m);
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
            };
            let c = load(&m);
            done.store(true, Ordering::Relaxed);
            watchdog.join().unwrap();
            c
        };
        (kernel, strata)
    }
}

/// Runs `workers` threads, each calling `step` until the time is up, and sums their counts.
fn hammer(workers: Vec<Worker>) -> Counts {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(Mutex::new(Counts::new()));
    let handles: Vec<_> = workers
        .into_iter()
        .map(|mut step| {
            let stop = Arc::clone(&stop);
            let total = Arc::clone(&total);
            std::thread::spawn(move || {
                let mut c = Counts::new();
                while !stop.load(Ordering::Relaxed) {
                    step(&mut c);
                }
                let mut t = total.lock().unwrap();
                for (k, v) in c {
                    *t.entry(k).or_default() += v;
                }
            })
        })
        .collect();
    std::thread::sleep(race_secs());
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    Arc::try_unwrap(total).unwrap().into_inner().unwrap()
}

/// Errors stratafs gave that the kernel did not give for the same operation.
fn extra_errors(kernel: &Counts, strata: &Counts) -> Vec<String> {
    strata
        .iter()
        .filter(|((op, e), _)| *e != 0 && !kernel.contains_key(&(*op, *e)))
        .map(|((op, e), n)| {
            let what = if *e == -1 {
                "wrong result".to_string()
            } else {
                std::io::Error::from_raw_os_error(*e).to_string()
            };
            format!("{op}: {what} x{n}")
        })
        .collect()
}

fn report(name: &str, kernel: &Counts, strata: &Counts) {
    eprintln!("{name}: kernel {kernel:?}");
    eprintln!("{name}: stratafs {strata:?}");
}

const FILES: u64 = 10;

/// Issue 14 item 10: 3 threads rename 10 lower files between two directories while 3
/// others stat, open and read them. The kernel gives only ENOENT (a name that moved away);
/// stratafs gave EIO from stat and open (a stat of the whiteout the rename left, which the
/// kernel takes as a change of type) and ENXIO from open (the daemon opened the whiteout).
#[test]
fn renames_racing_stats_and_opens_give_only_kernel_errors() {
    if !can_compare() {
        return;
    }
    let sides = Sides::new(|l| {
        fs::create_dir(l.join("a")).unwrap();
        fs::create_dir(l.join("b")).unwrap();
        for i in 0..FILES {
            fs::write(
                l.join("a").join(format!("f{i}")),
                format!("content of f{i}"),
            )
            .unwrap();
        }
    });
    let (kernel, strata) = sides.run(|m| {
        let mut workers: Vec<Worker> = Vec::new();
        add_renamers(m, &mut workers);
        for t in 0..3u64 {
            let m = m.to_path_buf();
            let mut rng = Rng::new(t + 100);
            workers.push(Box::new(move |c: &mut Counts| {
                let i = rng.below_u64(FILES);
                let d = if rng.below_u64(2) == 0 { "a" } else { "b" };
                let p = m.join(d).join(format!("f{i}"));
                count(c, "stat", stat_file(&p));
                let read = fs::File::open(&p).map_err(errno).and_then(|mut f| {
                    let mut s = String::new();
                    f.read_to_string(&mut s).map_err(errno)?;
                    if s == format!("content of f{i}") {
                        Ok(())
                    } else {
                        Err(-1)
                    }
                });
                count(c, "open+read", read);
            }));
        }
        hammer(workers)
    });
    report("renames", &kernel, &strata);
    let extra = extra_errors(&kernel, &strata);
    assert!(
        extra.is_empty(),
        "stratafs gave errors the kernel did not: {extra:?}"
    );
}

/// The same with writers: 3 threads rename 10 lower files between two directories while 3
/// others open them for appending (a copy-up, then an open by the path) and stat them. An
/// open for writing that raced a rename opened what the old name held by then: the
/// whiteout (ENXIO).
#[test]
fn renames_racing_write_opens_give_only_kernel_errors() {
    if !can_compare() {
        return;
    }
    let sides = Sides::new(|l| {
        fs::create_dir(l.join("a")).unwrap();
        fs::create_dir(l.join("b")).unwrap();
        for i in 0..FILES {
            fs::write(l.join("a").join(format!("f{i}")), format!("f{i}:")).unwrap();
        }
    });
    let (kernel, strata) = sides.run(|m| {
        let mut workers: Vec<Worker> = Vec::new();
        add_renamers(m, &mut workers);
        for t in 0..3u64 {
            let m = m.to_path_buf();
            let mut rng = Rng::new(t + 100);
            workers.push(Box::new(move |c: &mut Counts| {
                let i = rng.below_u64(FILES);
                let d = if rng.below_u64(2) == 0 { "a" } else { "b" };
                let p = m.join(d).join(format!("f{i}"));
                let r = fs::OpenOptions::new()
                    .append(true)
                    .open(&p)
                    .and_then(|mut f| f.write_all(b"+"))
                    .map_err(errno);
                count(c, "open(O_APPEND)+write", r);
                count(c, "stat", stat_file(&p));
            }));
        }
        hammer(workers)
    });
    report("writers", &kernel, &strata);
    let extra = extra_errors(&kernel, &strata);
    assert!(
        extra.is_empty(),
        "stratafs gave errors the kernel did not: {extra:?}"
    );
}

const NAMES: u64 = 4;

/// Issue 14 item 10: 2 threads unlink names that 3 others open with `O_CREAT|O_TRUNC`.
/// An open with `O_CREAT` either finds the file or creates it: the kernel and
/// fuse-overlayfs never fail one with ENOENT; stratafs did, thousands of times (the
/// kernel's positive dentry led to an OPEN of the node the unlink had just removed).
#[test]
fn unlinks_racing_creating_opens_never_give_enoent() {
    if !can_compare() {
        return;
    }
    // Half the names start in the lower layer, so unlinks leave whiteouts too.
    let sides = Sides::new(|l| {
        fs::create_dir(l.join("d")).unwrap();
        for i in 0..NAMES / 2 {
            fs::write(l.join("d").join(format!("n{i}")), "lower").unwrap();
        }
    });
    let (kernel, strata) = sides.run(|m| {
        let mut workers: Vec<Worker> = Vec::new();
        for t in 0..2u64 {
            let d = m.join("d");
            let mut rng = Rng::new(t + 1);
            workers.push(Box::new(move |c: &mut Counts| {
                let p = d.join(format!("n{}", rng.below_u64(NAMES)));
                count(c, "unlink", fs::remove_file(p).map_err(errno));
            }));
        }
        for t in 0..3u64 {
            let d = m.join("d");
            let mut rng = Rng::new(t + 100);
            workers.push(Box::new(move |c: &mut Counts| {
                let p = d.join(format!("n{}", rng.below_u64(NAMES)));
                let r = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&p)
                    .map_err(errno);
                let written = r.and_then(|mut f| f.write_all(b"x").map_err(errno));
                count(c, "open(O_CREAT|O_TRUNC)+write", written);
            }));
        }
        hammer(workers)
    });
    report("creates", &kernel, &strata);
    let enoent = strata
        .get(&("open(O_CREAT|O_TRUNC)+write", libc::ENOENT))
        .copied()
        .unwrap_or(0);
    assert_eq!(enoent, 0, "ENOENT from O_CREAT opens: {strata:?}");
    let extra = extra_errors(&kernel, &strata);
    assert!(
        extra.is_empty(),
        "stratafs gave errors the kernel did not: {extra:?}"
    );
}
