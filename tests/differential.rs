#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Differential testing of the write path: random layer stacks and random operation
//! sequences, run against a stratafs mount and a kernel overlayfs mount over separate,
//! identical copies of the layers. Every call's result (value or errno) must agree, the final
//! trees must agree, and each implementation must read the upper layer the other wrote.
//!
//! Knobs (environment):
//! - `STRATAFS_DIFF_CASES=N`: how many seeds to run (default 300, about 30 s).
//! - `STRATAFS_DIFF_BASE=N`: the first seed (default 1); seeds `BASE..BASE+N` run.
//! - `STRATAFS_DIFF_SEED=N`: replay exactly one seed.
//! - `STRATAFS_DIFF_OPS=N`: operations per case (default 30).
//! - `STRATAFS_DIFF_SHRINK=0`: report failing cases as generated, without minimizing them.
//! - `STRATAFS_DIFF_TRACE=1`: log each operation's outcome (to tune the generator).
//! - `STRATAFS_DIFF_MOUNT_OPTS=a,b`: extra `-o` options for the stratafs mounts (e.g.
//!   `node_limit=16`, so that the pruner runs under every case).
//!
//! Every call's result (value or errno) is compared, then the whole trees; `utimes ...
//! nofollow` times are checked to stick (or not) on both alike; stratafs's `workdir/work` must
//! be empty after unmount; and each implementation then mounts the other's upper layer (fresh
//! workdir) and must show the same tree. Failures are collected per kind over the whole run;
//! the first case of each kind is minimized (operations, layers, entries) before reporting.
//!
//! A failure names its seed and prints the case as a script (layers, then operations) in the
//! format [`Case::parse`] reads, so a minimized case can be pinned as a `regression_*` test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

// ------------------------------------------------------------------------------------------
// A tiny deterministic PRNG (xorshift64*, seeded through splitmix64).

// ------------------------------------------------------------------------------------------
// Layer stacks.

/// One object of a generated layer, created in order (parents before children).
#[derive(Clone, Debug, PartialEq)]
enum Entry {
    Dir {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
        opaque: bool,
        xattr: Option<(String, String)>,
    },
    File {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
        data: String,
        xattr: Option<(String, String)>,
    },
    Symlink {
        path: String,
        target: String,
    },
    Whiteout {
        path: String,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. }
            | Entry::File { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::Whiteout { path } => path,
        }
    }
}

fn word_or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn undash(s: &str) -> String {
    if s == "-" {
        String::new()
    } else {
        s.to_string()
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let xa = |x: &Option<(String, String)>| match x {
            Some((k, v)) => format!(" {k}={v}"),
            None => String::new(),
        };
        match self {
            Entry::Dir {
                path,
                mode,
                uid,
                gid,
                opaque,
                xattr,
            } => write!(
                f,
                "dir {path} {mode:04o} {uid}:{gid}{}{}",
                if *opaque { " opaque" } else { "" },
                xa(xattr)
            ),
            Entry::File {
                path,
                mode,
                uid,
                gid,
                data,
                xattr,
            } => write!(
                f,
                "file {path} {mode:04o} {uid}:{gid} {}{}",
                word_or_dash(data),
                xa(xattr)
            ),
            Entry::Symlink { path, target } => write!(f, "symlink {path} {target}"),
            Entry::Whiteout { path } => write!(f, "whiteout {path}"),
        }
    }
}

/// Names of the generated layers; `c` never appears there, so operations on it create.
const LAYER_NAMES: [&str; 4] = ["a", "b", "d", "e"];
const OP_NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
const IDS: [u32; 4] = [0, 0, 1000, 1001];

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

fn gen_layer(rng: &mut Rng, out: &mut Vec<Entry>, prefix: &str, depth: usize, upperish: bool) {
    for name in LAYER_NAMES {
        let path = join(prefix, name);
        let dirish = name == "d" || name == "e";
        let r = rng.below(100);
        // Cumulative thresholds: dir, file, symlink, whiteout; the rest is absent.
        let (dir, file, sym, wh) = if dirish {
            (45, 55, 60, 68)
        } else {
            (8, 48, 56, 64)
        };
        let xattr = rng
            .pct(20)
            .then(|| (rng.pick(&["user.x", "user.y"]).to_string(), rng.word(1, 6)));
        if r < dir && depth < 3 {
            out.push(Entry::Dir {
                path: path.clone(),
                mode: rng.pick(&[0o755, 0o755, 0o700, 0o775, 0o2755, 0o1777]),
                uid: rng.pick(&IDS),
                gid: rng.pick(&IDS),
                opaque: upperish && rng.pct(20),
                xattr,
            });
            gen_layer(rng, out, &path, depth + 1, upperish);
        } else if r < file {
            out.push(Entry::File {
                path,
                mode: rng.pick(&[0o644, 0o644, 0o600, 0o755, 0o4755, 0o2755, 0o444]),
                uid: rng.pick(&IDS),
                gid: rng.pick(&IDS),
                data: rng.word(0, 12),
                xattr,
            });
        } else if r < sym {
            out.push(Entry::Symlink {
                path,
                target: rng.pick(&["a", "b", "d", "d/a", "nowhere"]).to_string(),
            });
        } else if r < wh && upperish {
            out.push(Entry::Whiteout { path });
        }
    }
}

/// The merge chain (indices into `layers`, topmost first) of directory `path` in the merged
/// view of `layers`, or `None` when `path` is not a visible directory. `""` is the root.
fn dir_chain(layers: &[&[Entry]], path: &str) -> Option<Vec<usize>> {
    let mut chain: Vec<usize> = (0..layers.len()).collect();
    let mut prefix = String::new();
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        prefix = join(&prefix, comp);
        let mut next = Vec::new();
        for &li in &chain {
            match layers[li].iter().find(|e| e.path() == prefix) {
                None => continue,
                Some(Entry::Whiteout { .. }) => break,
                Some(Entry::Dir { opaque, .. }) => {
                    next.push(li);
                    if *opaque {
                        break;
                    }
                }
                Some(_) if next.is_empty() => return None,
                Some(_) => break,
            }
        }
        if next.is_empty() {
            return None;
        }
        chain = next;
    }
    Some(chain)
}

/// Drops whiteouts that sit in a directory the merged view does not merge with anything
/// below. Such stacks never come from an overlay (it writes whiteouts only into merged
/// directories), and the kernel lists those whiteouts in `readdir` of an unmerged
/// directory (it reads such a directory straight through) while `lstat` on them fails: a
/// kernel quirk, not a behaviour to compare against.
fn drop_stray_whiteouts(upper: &mut Vec<Entry>, lowers: &mut [Vec<Entry>]) {
    loop {
        let mut all: Vec<Vec<Entry>> = vec![upper.clone()];
        all.extend(lowers.iter().cloned());
        let refs: Vec<&[Entry]> = all.iter().map(|l| l.as_slice()).collect();
        let mut stray: Option<(usize, usize)> = None;
        'find: for (li, l) in all.iter().enumerate() {
            for (i, e) in l.iter().enumerate() {
                if let Entry::Whiteout { path } = e {
                    let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                    let merged =
                        dir_chain(&refs, parent).is_none_or(|c| c.len() > 1 && c.contains(&li));
                    if !merged {
                        stray = Some((li, i));
                        break 'find;
                    }
                }
            }
        }
        match stray {
            None => return,
            Some((0, i)) => {
                upper.remove(i);
            }
            Some((li, i)) => {
                lowers[li - 1].remove(i);
            }
        }
    }
}

fn materialize(entries: &[Entry], dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for e in entries {
        let p = dir.join(e.path());
        match e {
            Entry::Dir {
                mode,
                uid,
                gid,
                opaque,
                xattr,
                ..
            } => {
                std::fs::create_dir(&p).unwrap();
                std::os::unix::fs::lchown(&p, Some(*uid), Some(*gid)).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
                if *opaque {
                    make_opaque(&p).unwrap();
                }
                if let Some((k, v)) = xattr {
                    rustix::fs::lsetxattr(
                        &p,
                        k.as_str(),
                        v.as_bytes(),
                        rustix::fs::XattrFlags::empty(),
                    )
                    .unwrap();
                }
            }
            Entry::File {
                mode,
                uid,
                gid,
                data,
                xattr,
                ..
            } => {
                std::fs::write(&p, data).unwrap();
                std::os::unix::fs::lchown(&p, Some(*uid), Some(*gid)).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
                if let Some((k, v)) = xattr {
                    rustix::fs::lsetxattr(
                        &p,
                        k.as_str(),
                        v.as_bytes(),
                        rustix::fs::XattrFlags::empty(),
                    )
                    .unwrap();
                }
            }
            Entry::Symlink { target, .. } => std::os::unix::fs::symlink(target, &p).unwrap(),
            Entry::Whiteout { .. } => make_whiteout(&p).unwrap(),
        }
    }
    // Fixed times, deepest first, so both copies look alike to anything that reads them.
    for (i, e) in entries.iter().enumerate().rev() {
        let t = rustix::fs::Timespec {
            tv_sec: 1_600_000_000 + i as i64,
            tv_nsec: 0,
        };
        let _ = rustix::fs::utimensat(
            rustix::fs::CWD,
            dir.join(e.path()),
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        );
    }
}

// ------------------------------------------------------------------------------------------
// Operations.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RenameKind {
    Plain,
    NoReplace,
    Exchange,
}

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Create {
        path: String,
        mode: u32,
        excl: bool,
    },
    Write {
        path: String,
        off: u64,
        data: String,
    },
    Append {
        path: String,
        data: String,
    },
    Truncate {
        path: String,
        len: u64,
    },
    OpenTrunc {
        path: String,
    },
    OpenWrite {
        path: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        kind: RenameKind,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        path: String,
        target: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
        nofollow: bool,
    },
    Utimes {
        path: String,
        atime: i64,
        mtime: i64,
        nofollow: bool,
    },
    Touch {
        path: String,
    },
    SetXattr {
        path: String,
        name: String,
        value: String,
        flag: u8,
    },
    GetXattr {
        path: String,
        name: String,
    },
    RmXattr {
        path: String,
        name: String,
    },
    Stat {
        path: String,
    },
    Ls {
        path: String,
    },
    Read {
        path: String,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nf = |b: bool| if b { " nofollow" } else { "" };
        match self {
            Op::Create { path, mode, excl } => write!(
                f,
                "create {path} {mode:04o}{}",
                if *excl { " excl" } else { "" }
            ),
            Op::Write { path, off, data } => write!(f, "write {path} {off} {data}"),
            Op::Append { path, data } => write!(f, "append {path} {data}"),
            Op::Truncate { path, len } => write!(f, "truncate {path} {len}"),
            Op::OpenTrunc { path } => write!(f, "opentrunc {path}"),
            Op::OpenWrite { path } => write!(f, "openwrite {path}"),
            Op::Unlink { path } => write!(f, "unlink {path}"),
            Op::Mkdir { path, mode } => write!(f, "mkdir {path} {mode:04o}"),
            Op::Rmdir { path } => write!(f, "rmdir {path}"),
            Op::Rename { from, to, kind } => write!(
                f,
                "rename {from} {to}{}",
                match kind {
                    RenameKind::Plain => "",
                    RenameKind::NoReplace => " noreplace",
                    RenameKind::Exchange => " exchange",
                }
            ),
            Op::Link { from, to } => write!(f, "link {from} {to}"),
            Op::Symlink { path, target } => write!(f, "symlink {path} {target}"),
            Op::Chmod { path, mode } => write!(f, "chmod {path} {mode:04o}"),
            Op::Chown {
                path,
                uid,
                gid,
                nofollow,
            } => write!(f, "chown {path} {uid}:{gid}{}", nf(*nofollow)),
            Op::Utimes {
                path,
                atime,
                mtime,
                nofollow,
            } => write!(f, "utimes {path} {atime} {mtime}{}", nf(*nofollow)),
            Op::Touch { path } => write!(f, "touch {path}"),
            Op::SetXattr {
                path,
                name,
                value,
                flag,
            } => write!(
                f,
                "setxattr {path} {name} {value}{}",
                match flag {
                    1 => " create",
                    2 => " replace",
                    _ => "",
                }
            ),
            Op::GetXattr { path, name } => write!(f, "getxattr {path} {name}"),
            Op::RmXattr { path, name } => write!(f, "rmxattr {path} {name}"),
            Op::Stat { path } => write!(f, "stat {path}"),
            Op::Ls { path } => write!(f, "ls {path}"),
            Op::Read { path } => write!(f, "read {path}"),
        }
    }
}

impl Op {
    /// The paths the operation names.
    fn paths(&self) -> Vec<&str> {
        match self {
            Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
            Op::Create { path, .. }
            | Op::Write { path, .. }
            | Op::Append { path, .. }
            | Op::Truncate { path, .. }
            | Op::OpenTrunc { path }
            | Op::OpenWrite { path }
            | Op::Unlink { path }
            | Op::Mkdir { path, .. }
            | Op::Rmdir { path }
            | Op::Symlink { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Utimes { path, .. }
            | Op::Touch { path }
            | Op::SetXattr { path, .. }
            | Op::GetXattr { path, .. }
            | Op::RmXattr { path, .. }
            | Op::Stat { path }
            | Op::Ls { path }
            | Op::Read { path } => vec![path],
        }
    }
}

/// What the merged view holds right now: every path, and the directories among them.
#[derive(Default)]
struct Live {
    all: Vec<String>,
    dirs: Vec<String>,
}

/// A path for an operation: mostly one that exists in the merged view right now, else one
/// some layer or earlier operation named (`known`, which includes hidden and deleted names),
/// else one from the name pool.
fn pick_path(rng: &mut Rng, live: &Live, known: &[String]) -> String {
    if !live.all.is_empty() && rng.pct(60) {
        return rng.pick(&live.all);
    }
    if !known.is_empty() && rng.pct(40) {
        return rng.pick(known);
    }
    pool_path(rng)
}

/// A path for something the operation creates: mostly a new name in an existing directory.
fn pick_new_path(rng: &mut Rng, live: &Live, known: &[String]) -> String {
    if rng.pct(55) {
        let mut dirs = live.dirs.clone();
        dirs.push(String::new());
        let dir = rng.pick(&dirs);
        return join(&dir, rng.pick(&["c", "f", "g", "a", "b"]));
    }
    pick_path(rng, live, known)
}

/// An existing directory, most of the time.
fn pick_dir(rng: &mut Rng, live: &Live, known: &[String]) -> String {
    if !live.dirs.is_empty() && rng.pct(70) {
        return rng.pick(&live.dirs);
    }
    pick_path(rng, live, known)
}

fn pool_path(rng: &mut Rng) -> String {
    let depth = match rng.below(100) {
        0..=49 => 1,
        50..=84 => 2,
        _ => 3,
    };
    let mut p = String::new();
    for i in 0..depth {
        // Inner components mostly name directories, so fewer paths end in ENOTDIR.
        let name = if i + 1 < depth {
            rng.pick(&["d", "e", "d", "e", "c", "a"])
        } else {
            rng.pick(&OP_NAMES)
        };
        p = join(&p, name);
    }
    p
}

/// The next operation, given the merged view's current paths and the operations so far.
fn gen_op(rng: &mut Rng, live: &Live, known: &mut Vec<String>, ops: &[Op]) -> Op {
    // (weight, kind)
    const W: [(usize, u8); 22] = [
        (8, 0),  // create
        (10, 1), // write
        (5, 2),  // append
        (6, 3),  // truncate
        (3, 4),  // opentrunc
        (4, 5),  // openwrite
        (8, 6),  // unlink
        (7, 7),  // mkdir
        (6, 8),  // rmdir
        (12, 9), // rename
        (5, 10), // link
        (4, 11), // symlink
        (5, 12), // chmod
        (5, 13), // chown
        (5, 14), // utimes
        (2, 15), // touch
        (6, 16), // setxattr
        (3, 17), // getxattr
        (4, 18), // rmxattr
        (3, 19), // stat
        (3, 20), // ls
        (3, 21), // read
    ];
    let total: usize = W.iter().map(|w| w.0).sum();
    const TIMES: [i64; 4] = [1_000_000_000, 1_234_567_890, 1_500_000_000, 2_000_000_000];
    {
        let mut r = rng.below(total);
        let mut kind = 0;
        for (w, k) in W {
            if r < w {
                kind = k;
                break;
            }
            r -= w;
        }
        // create, mkdir, symlink
        let path = match kind {
            // create, mkdir, symlink
            0 | 7 | 11 => pick_new_path(rng, live, known),
            // rmdir, ls
            8 | 20 => pick_dir(rng, live, known),
            _ => pick_path(rng, live, known),
        };
        let op = match kind {
            0 => Op::Create {
                path: path.clone(),
                mode: rng.pick(&[0o644, 0o600, 0o755, 0o4755]),
                excl: rng.pct(30),
            },
            1 => Op::Write {
                path: path.clone(),
                off: rng.below(12) as u64,
                data: rng.word(1, 10),
            },
            2 => Op::Append {
                path: path.clone(),
                data: rng.word(1, 6),
            },
            3 => Op::Truncate {
                path: path.clone(),
                len: rng.pick(&[0, 0, 1, 3, 10, 100, 5000]),
            },
            4 => Op::OpenTrunc { path: path.clone() },
            5 => Op::OpenWrite { path: path.clone() },
            6 => Op::Unlink { path: path.clone() },
            7 => Op::Mkdir {
                path: path.clone(),
                mode: rng.pick(&[0o755, 0o700, 0o2775, 0o1777]),
            },
            8 => Op::Rmdir {
                path: match ops.iter().rev().find_map(|o| match o {
                    Op::Mkdir { path, .. } if rng.pct(50) => Some(path.clone()),
                    _ => None,
                }) {
                    Some(p) => p,
                    None => path.clone(),
                },
            },
            9 => Op::Rename {
                from: path.clone(),
                to: pick_new_path(rng, live, known),
                kind: rng.pick(&[
                    RenameKind::Plain,
                    RenameKind::Plain,
                    RenameKind::NoReplace,
                    RenameKind::Exchange,
                ]),
            },
            10 => Op::Link {
                from: path.clone(),
                to: pick_new_path(rng, live, known),
            },
            11 => Op::Symlink {
                path: path.clone(),
                target: rng
                    .pick(&["a", "b", "c", "d", "d/a", "nowhere"])
                    .to_string(),
            },
            12 => Op::Chmod {
                path: path.clone(),
                mode: rng.pick(&[
                    0o644, 0o600, 0o755, 0o700, 0o4755, 0o2755, 0o1777, 0o000, 0o444,
                ]),
            },
            13 => Op::Chown {
                path: path.clone(),
                uid: rng.pick(&[0, 1000, 1001]),
                gid: rng.pick(&[0, 1000, 1002]),
                nofollow: rng.pct(50),
            },
            14 => Op::Utimes {
                path: path.clone(),
                atime: rng.pick(&TIMES),
                mtime: rng.pick(&TIMES),
                nofollow: rng.pct(60),
            },
            15 => Op::Touch { path: path.clone() },
            16 => Op::SetXattr {
                path: path.clone(),
                name: rng.pick(&["user.x", "user.y", "user.z"]).to_string(),
                value: rng.word(1, 8),
                flag: rng.pick(&[0, 0, 0, 1, 2]),
            },
            17 => Op::GetXattr {
                path: path.clone(),
                name: rng.pick(&["user.x", "user.y", "user.z"]).to_string(),
            },
            18 => Op::RmXattr {
                path: path.clone(),
                name: rng.pick(&["user.x", "user.y", "user.z"]).to_string(),
            },
            19 => Op::Stat { path: path.clone() },
            20 => Op::Ls { path: path.clone() },
            _ => Op::Read { path: path.clone() },
        };
        for p in op.paths() {
            if !known.iter().any(|k| k == p) {
                known.push(p.to_string());
            }
        }
        op
    }
}

/// Every path in the tree under `root` (not following symlinks), sorted.
fn live_paths(root: &Path) -> Live {
    fn walk(root: &Path, rel: &str, out: &mut Live) {
        let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
            return;
        };
        let mut names: Vec<(String, bool)> = rd
            .flatten()
            .map(|e| {
                let dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                (e.file_name().to_string_lossy().into_owned(), dir)
            })
            .collect();
        names.sort();
        for (n, dir) in names {
            let p = join(rel, &n);
            out.all.push(p.clone());
            if dir {
                out.dirs.push(p.clone());
                walk(root, &p, out);
            }
        }
    }
    let mut out = Live::default();
    walk(root, "", &mut out);
    out
}

fn to_errno(e: rustix::io::Errno) -> i32 {
    e.raw_os_error()
}

fn ts(sec: i64) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: 0,
    }
}

fn nofollow(b: bool) -> rustix::fs::AtFlags {
    if b {
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW
    } else {
        rustix::fs::AtFlags::empty()
    }
}

/// Runs one operation under `root`: `Ok(what it observed)` or `Err(errno)`.
fn exec(root: &Path, op: &Op) -> Result<String, i32> {
    let p = |s: &str| root.join(s);
    let open = |o: &mut std::fs::OpenOptions, s: &str| errno_of(o.open(p(s)));
    let done = |r: std::io::Result<()>| errno_of(r).map(|()| String::new());
    match op {
        Op::Create { path, mode, excl } => {
            let mut o = std::fs::OpenOptions::new();
            o.write(true).mode(*mode);
            if *excl {
                o.create_new(true);
            } else {
                o.create(true);
            }
            open(&mut o, path).map(|_| String::new())
        }
        Op::Write { path, off, data } => {
            let f = open(std::fs::OpenOptions::new().write(true), path)?;
            done(f.write_all_at(data.as_bytes(), *off))
        }
        Op::Append { path, data } => {
            let mut f = open(std::fs::OpenOptions::new().append(true), path)?;
            done(f.write_all(data.as_bytes()))
        }
        Op::Truncate { path, len } => done(truncate_path(&p(path), *len)),
        Op::OpenTrunc { path } => {
            open(std::fs::OpenOptions::new().write(true).truncate(true), path)
                .map(|_| String::new())
        }
        Op::OpenWrite { path } => {
            open(std::fs::OpenOptions::new().read(true).write(true), path).map(|_| String::new())
        }
        Op::Unlink { path } => done(std::fs::remove_file(p(path))),
        Op::Mkdir { path, mode } => done(std::fs::DirBuilder::new().mode(*mode).create(p(path))),
        Op::Rmdir { path } => done(std::fs::remove_dir(p(path))),
        Op::Rename { from, to, kind } => {
            let flags = match kind {
                RenameKind::Plain => rustix::fs::RenameFlags::empty(),
                RenameKind::NoReplace => rustix::fs::RenameFlags::NOREPLACE,
                RenameKind::Exchange => rustix::fs::RenameFlags::EXCHANGE,
            };
            rustix::fs::renameat_with(rustix::fs::CWD, p(from), rustix::fs::CWD, p(to), flags)
                .map(|()| String::new())
                .map_err(to_errno)
        }
        Op::Link { from, to } => done(std::fs::hard_link(p(from), p(to))),
        Op::Symlink { path, target } => done(std::os::unix::fs::symlink(target, p(path))),
        Op::Chmod { path, mode } => done(std::fs::set_permissions(
            p(path),
            std::fs::Permissions::from_mode(*mode),
        )),
        Op::Chown {
            path,
            uid,
            gid,
            nofollow: nf,
        } => {
            if *nf {
                done(std::os::unix::fs::lchown(p(path), Some(*uid), Some(*gid)))
            } else {
                done(std::os::unix::fs::chown(p(path), Some(*uid), Some(*gid)))
            }
        }
        Op::Utimes {
            path,
            atime,
            mtime,
            nofollow: nf,
        } => rustix::fs::utimensat(
            rustix::fs::CWD,
            p(path),
            &rustix::fs::Timestamps {
                last_access: ts(*atime),
                last_modification: ts(*mtime),
            },
            nofollow(*nf),
        )
        .map(|()| String::new())
        .map_err(to_errno),
        Op::Touch { path } => {
            let now = rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                p(path),
                &rustix::fs::Timestamps {
                    last_access: now,
                    last_modification: now,
                },
                rustix::fs::AtFlags::empty(),
            )
            .map(|()| String::new())
            .map_err(to_errno)
        }
        Op::SetXattr {
            path,
            name,
            value,
            flag,
        } => {
            let flags = match flag {
                1 => rustix::fs::XattrFlags::CREATE,
                2 => rustix::fs::XattrFlags::REPLACE,
                _ => rustix::fs::XattrFlags::empty(),
            };
            rustix::fs::lsetxattr(p(path), name.as_str(), value.as_bytes(), flags)
                .map(|()| String::new())
                .map_err(to_errno)
        }
        Op::GetXattr { path, name } => {
            let mut buf = vec![0u8; 4096];
            rustix::fs::lgetxattr(p(path), name.as_str(), &mut buf[..])
                .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
                .map_err(to_errno)
        }
        Op::RmXattr { path, name } => rustix::fs::lremovexattr(p(path), name.as_str())
            .map(|()| String::new())
            .map_err(to_errno),
        Op::Stat { path } => {
            let md = errno_of(std::fs::symlink_metadata(p(path)))?;
            let dir = md.is_dir();
            Ok(format!(
                "mode={:o} owner={}:{} size={} nlink={}",
                md.mode(),
                md.uid(),
                md.gid(),
                if dir { 0 } else { md.size() },
                if dir { 0 } else { md.nlink() }
            ))
        }
        Op::Ls { path } => {
            let rd = errno_of(std::fs::read_dir(p(path)))?;
            let mut names = Vec::new();
            for e in rd {
                names.push(errno_of(e)?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names.join(" "))
        }
        Op::Read { path } => {
            errno_of(std::fs::read(p(path))).map(|b| String::from_utf8_lossy(&b).into_owned())
        }
    }
}

// ------------------------------------------------------------------------------------------
// Cases: a layer stack and an operation sequence, printable and parseable.

#[derive(Clone, Debug, Default, PartialEq)]
struct Case {
    /// Pre-populated upper layer (often empty).
    upper: Vec<Entry>,
    /// Lower layers, topmost first; never empty.
    lowers: Vec<Vec<Entry>>,
    ops: Vec<Op>,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "upper")?;
        for e in &self.upper {
            writeln!(f, "  {e}")?;
        }
        for l in &self.lowers {
            writeln!(f, "lower")?;
            for e in l {
                writeln!(f, "  {e}")?;
            }
        }
        writeln!(f, "ops")?;
        for o in &self.ops {
            writeln!(f, "  {o}")?;
        }
        Ok(())
    }
}

fn parse_mode(s: &str) -> u32 {
    u32::from_str_radix(s, 8).unwrap_or_else(|_| panic!("bad mode {s}"))
}

fn parse_owner(s: &str) -> (u32, u32) {
    let (u, g) = s.split_once(':').unwrap_or_else(|| panic!("bad owner {s}"));
    (u.parse().unwrap(), g.parse().unwrap())
}

fn parse_xattr(s: Option<&&str>) -> Option<(String, String)> {
    s.and_then(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
}

impl Case {
    /// Reads the format [`Case`]'s `Display` writes: `upper`/`lower` sections of entries,
    /// then `ops`. Blank lines and `#` comments are ignored.
    fn parse(text: &str) -> Case {
        enum Sec {
            None,
            Upper,
            Lower,
            Ops,
        }
        let mut c = Case::default();
        let mut sec = Sec::None;
        for raw in text.lines() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let t: Vec<&str> = line.split_whitespace().collect();
            match t[0] {
                "upper" if t.len() == 1 => {
                    sec = Sec::Upper;
                    continue;
                }
                "lower" if t.len() == 1 => {
                    sec = Sec::Lower;
                    c.lowers.push(Vec::new());
                    continue;
                }
                "ops" if t.len() == 1 => {
                    sec = Sec::Ops;
                    continue;
                }
                _ => {}
            }
            match sec {
                Sec::None => panic!("entry before a section: {line}"),
                Sec::Upper | Sec::Lower => {
                    let e = match t[0] {
                        "dir" => {
                            let (uid, gid) = parse_owner(t[3]);
                            let opaque = t.get(4) == Some(&"opaque");
                            Entry::Dir {
                                path: t[1].into(),
                                mode: parse_mode(t[2]),
                                uid,
                                gid,
                                opaque,
                                xattr: parse_xattr(t.get(if opaque { 5 } else { 4 })),
                            }
                        }
                        "file" => {
                            let (uid, gid) = parse_owner(t[3]);
                            Entry::File {
                                path: t[1].into(),
                                mode: parse_mode(t[2]),
                                uid,
                                gid,
                                data: undash(t[4]),
                                xattr: parse_xattr(t.get(5)),
                            }
                        }
                        "symlink" => Entry::Symlink {
                            path: t[1].into(),
                            target: t[2].into(),
                        },
                        "whiteout" => Entry::Whiteout { path: t[1].into() },
                        _ => panic!("bad entry: {line}"),
                    };
                    match sec {
                        Sec::Upper => c.upper.push(e),
                        _ => c.lowers.last_mut().unwrap().push(e),
                    }
                }
                Sec::Ops => c.ops.push(parse_op(&t)),
            }
        }
        if c.lowers.is_empty() {
            c.lowers.push(Vec::new());
        }
        c
    }
}

fn parse_op(t: &[&str]) -> Op {
    let s = |i: usize| t[i].to_string();
    let has = |w: &str| t.iter().skip(1).any(|x| *x == w);
    match t[0] {
        "create" => Op::Create {
            path: s(1),
            mode: parse_mode(t[2]),
            excl: has("excl"),
        },
        "write" => Op::Write {
            path: s(1),
            off: t[2].parse().unwrap(),
            data: s(3),
        },
        "append" => Op::Append {
            path: s(1),
            data: s(2),
        },
        "truncate" => Op::Truncate {
            path: s(1),
            len: t[2].parse().unwrap(),
        },
        "opentrunc" => Op::OpenTrunc { path: s(1) },
        "openwrite" => Op::OpenWrite { path: s(1) },
        "unlink" => Op::Unlink { path: s(1) },
        "mkdir" => Op::Mkdir {
            path: s(1),
            mode: parse_mode(t[2]),
        },
        "rmdir" => Op::Rmdir { path: s(1) },
        "rename" => Op::Rename {
            from: s(1),
            to: s(2),
            kind: if has("noreplace") {
                RenameKind::NoReplace
            } else if has("exchange") {
                RenameKind::Exchange
            } else {
                RenameKind::Plain
            },
        },
        "link" => Op::Link {
            from: s(1),
            to: s(2),
        },
        "symlink" => Op::Symlink {
            path: s(1),
            target: s(2),
        },
        "chmod" => Op::Chmod {
            path: s(1),
            mode: parse_mode(t[2]),
        },
        "chown" => {
            let (uid, gid) = parse_owner(t[2]);
            Op::Chown {
                path: s(1),
                uid,
                gid,
                nofollow: has("nofollow"),
            }
        }
        "utimes" => Op::Utimes {
            path: s(1),
            atime: t[2].parse().unwrap(),
            mtime: t[3].parse().unwrap(),
            nofollow: has("nofollow"),
        },
        "touch" => Op::Touch { path: s(1) },
        "setxattr" => Op::SetXattr {
            path: s(1),
            name: s(2),
            value: s(3),
            flag: if has("create") {
                1
            } else if has("replace") {
                2
            } else {
                0
            },
        },
        "getxattr" => Op::GetXattr {
            path: s(1),
            name: s(2),
        },
        "rmxattr" => Op::RmXattr {
            path: s(1),
            name: s(2),
        },
        "stat" => Op::Stat { path: s(1) },
        "ls" => Op::Ls { path: s(1) },
        "read" => Op::Read { path: s(1) },
        other => panic!("bad op {other}"),
    }
}

/// The layer stack for `seed`, and the generator of its `n_ops` operations.
fn gen_case(seed: u64, n_ops: usize) -> (Case, OpGen) {
    let mut rng = Rng::new(seed);
    let n_lowers = 1 + rng.below(4);
    let mut lowers = Vec::new();
    for i in 0..n_lowers {
        let mut l = Vec::new();
        gen_layer(&mut rng, &mut l, "", 1, i + 1 < n_lowers);
        lowers.push(l);
    }
    let mut upper = Vec::new();
    if rng.pct(25) {
        gen_layer(&mut rng, &mut upper, "", 2, true);
    }
    drop_stray_whiteouts(&mut upper, &mut lowers);
    let case = Case {
        upper,
        lowers,
        ops: Vec::new(),
    };
    (case, OpGen { rng, n: n_ops })
}

/// Generates a case's operations while it runs, from the oracle's current tree.
struct OpGen {
    rng: Rng,
    n: usize,
}

// ------------------------------------------------------------------------------------------
// Running a case on both implementations.

#[derive(Debug, Clone)]
struct Failure {
    /// What kind of disagreement (kept while minimizing, so it does not drift to another).
    category: String,
    detail: String,
}

fn fail(category: impl Into<String>, detail: impl Into<String>) -> Failure {
    Failure {
        category: category.into(),
        detail: detail.into(),
    }
}

/// The layer directories of one copy of a case.
struct Side {
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    work2: PathBuf,
    mnt: PathBuf,
    mnt2: PathBuf,
}

impl Side {
    fn build(case: &Case, dir: &Path) -> Side {
        let lowers: Vec<PathBuf> = (0..case.lowers.len())
            .map(|i| dir.join(format!("l{i}")))
            .collect();
        for (l, entries) in lowers.iter().zip(&case.lowers) {
            materialize(entries, l);
        }
        let s = Side {
            lowers,
            upper: dir.join("u"),
            work: dir.join("w"),
            work2: dir.join("w2"),
            mnt: dir.join("m"),
            mnt2: dir.join("m2"),
        };
        materialize(&case.upper, &s.upper);
        for d in [&s.work, &s.work2, &s.mnt, &s.mnt2] {
            std::fs::create_dir_all(d).unwrap();
        }
        s
    }
}

fn kernel_mount(opts: &str, mnt: &Path) -> Result<KernelMount, Failure> {
    let out = run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", opts])
        .arg(mnt));
    if out.status.success() {
        Ok(KernelMount {
            mountpoint: mnt.to_path_buf(),
        })
    } else {
        Err(fail(
            "kernel-mount",
            format!(
                "kernel mount -o {opts} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }
}

fn stratafs_mount(opts: &str, mnt: &Path) -> Result<Mount, Failure> {
    let opts = match std::env::var("STRATAFS_DIFF_MOUNT_OPTS") {
        Ok(extra) if !extra.is_empty() => format!("{opts},{extra}"),
        _ => opts.to_string(),
    };
    let opts = opts.as_str();
    mount_stable(opts, mnt).map_err(|o| {
        fail(
            "stratafs-mount",
            format!(
                "stratafs -o {opts} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    })
}

/// `snapshot`, with its panics (an lstat or readdir error) turned into a failure.
fn try_snapshot(root: &Path, what: &str) -> Result<TreeSnap, Failure> {
    std::panic::catch_unwind(|| snapshot(root)).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        fail(format!("snapshot-{what}"), format!("{what}: {msg}"))
    })
}

/// Kills the daemons (and detaches the mounts) if the case runs too long, so a hang in the
/// daemon fails the test instead of hanging it.
struct Watchdog {
    tx: Option<mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn new(mounts: Vec<PathBuf>, limit: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("watchdog: case exceeded {limit:?}; killing daemons");
                for m in &mounts {
                    kill_daemons(m);
                }
            }
        });
        Watchdog {
            tx: Some(tx),
            handle: Some(handle),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Runs `case` on both implementations under `base` (an empty directory). With `gen`, the
/// operations are generated as the case runs and recorded in `case.ops`.
fn run_case(case: &mut Case, mut gen: Option<OpGen>, base: &Path) -> Result<usize, Failure> {
    let s = Side::build(case, &base.join("s"));
    let k = Side::build(case, &base.join("k"));
    let _dog = Watchdog::new(
        vec![s.mnt.clone(), s.mnt2.clone(), k.mnt.clone(), k.mnt2.clone()],
        Duration::from_secs(120),
    );
    let ours = stratafs_mount(&rw_opts(&s.lowers, &s.upper, &s.work), &s.mnt)?;
    let kernel = kernel_mount(&kernel_rw_opts(&k.lowers, &k.upper, &k.work), &k.mnt)?;

    let initial = (
        try_snapshot(&s.mnt, "stratafs-initial")?,
        try_snapshot(&k.mnt, "kernel-initial")?,
    );
    if let Some(d) = tree_diff(&initial.0, &initial.1) {
        return Err(fail("initial-tree", format!("before any operation:\n{d}")));
    }

    // Explicit mtimes set by `utimes ... nofollow`, to check they stick (or not) alike.
    let mut explicit: BTreeMap<String, i64> = BTreeMap::new();
    let mut succeeded = 0;
    let mut known: Vec<String> = Vec::new();
    for e in case.upper.iter().chain(case.lowers.iter().flatten()) {
        if !known.iter().any(|k| k == e.path()) {
            known.push(e.path().to_string());
        }
    }
    let total = gen.as_ref().map_or(case.ops.len(), |g| g.n);
    for i in 0..total {
        if let Some(g) = gen.as_mut() {
            let live = live_paths(&k.mnt);
            let op = gen_op(&mut g.rng, &live, &mut known, &case.ops);
            case.ops.push(op);
        }
        let op = &case.ops[i];
        let rs = exec(&s.mnt, op);
        let rk = exec(&k.mnt, op);
        succeeded += usize::from(rs.is_ok());
        if std::env::var("STRATAFS_DIFF_TRACE").is_ok() {
            eprintln!(
                "trace: {} -> {:?}",
                op.to_string().split(' ').next().unwrap_or(""),
                rs.as_ref().map(|_| ())
            );
        }
        if rs != rk {
            let name = op.to_string();
            let verb = name.split(' ').next().unwrap_or("").to_string();
            let short = |r: &Result<String, i32>| match r {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            };
            return Err(fail(
                format!("op-{verb}:{}/{}", short(&rs), short(&rk)),
                format!("op #{i} `{op}`: stratafs {rs:?}, kernel {rk:?}"),
            ));
        }
        if let (
            Op::Utimes {
                path,
                mtime,
                nofollow: true,
                ..
            },
            Ok(_),
        ) = (op, &rs)
        {
            explicit.insert(path.clone(), *mtime);
        }
    }

    let final_s = try_snapshot(&s.mnt, "stratafs-final")?;
    let final_k = try_snapshot(&k.mnt, "kernel-final")?;
    if let Some(d) = tree_diff(&final_s, &final_k) {
        return Err(fail("final-tree", format!("after the operations:\n{d}")));
    }
    // Checked now, reported last: a disagreement on times should not hide one on names.
    let mut mtime_failure = None;
    for (path, mtime) in &explicit {
        let kept = |root: &Path| {
            errno_of(std::fs::symlink_metadata(root.join(path))).map(|m| m.mtime() == *mtime)
        };
        let (ks, kk) = (kept(&s.mnt), kept(&k.mnt));
        if ks != kk && mtime_failure.is_none() {
            mtime_failure = Some(fail(
                "mtime",
                format!(
                    "{path}: explicit mtime {mtime} still there? stratafs {ks:?}, kernel {kk:?}"
                ),
            ));
        }
    }

    drop(ours);
    drop(kernel);
    let left = dir_names(&s.work.join("work"));
    if !left.is_empty() {
        return Err(fail(
            "workdir-leftovers",
            format!("stratafs left {left:?} in workdir/work"),
        ));
    }

    // Swap the uppers: each implementation reads what the other wrote.
    {
        let kk = kernel_mount(&kernel_rw_opts(&s.lowers, &s.upper, &s.work2), &s.mnt2)?;
        let snap = try_snapshot(&s.mnt2, "kernel-over-stratafs-upper")?;
        drop(kk);
        if let Some(d) = tree_diff(&final_k, &snap) {
            return Err(fail(
                "swap-kernel-reads-stratafs",
                format!(
                    "kernel over stratafs's upper (\"stratafs\" = expected, \
                     \"expected\" = what the kernel shows):\n{d}"
                ),
            ));
        }
    }
    {
        let ss = stratafs_mount(&rw_opts(&k.lowers, &k.upper, &k.work2), &k.mnt2)?;
        let snap = try_snapshot(&k.mnt2, "stratafs-over-kernel-upper")?;
        drop(ss);
        if let Some(d) = tree_diff(&snap, &final_k) {
            return Err(fail(
                "swap-stratafs-reads-kernel",
                format!("stratafs over the kernel's upper:\n{d}"),
            ));
        }
    }
    match mtime_failure {
        Some(f) => Err(f),
        None => Ok(succeeded),
    }
}

/// Runs `case` in a fresh temporary directory; returns how many operations succeeded.
fn run_fresh(case: &Case) -> Result<usize, Failure> {
    let t = tempfile::tempdir().expect("tempdir");
    run_case(&mut case.clone(), None, t.path())
}

/// Runs the case of `seed` in a fresh temporary directory; returns it with the operations
/// it ran.
fn run_seed(seed: u64, n_ops: usize) -> (Case, Result<usize, Failure>) {
    let (mut case, gen) = gen_case(seed, n_ops);
    let t = tempfile::tempdir().expect("tempdir");
    let r = run_case(&mut case, Some(gen), t.path());
    (case, r)
}

// ------------------------------------------------------------------------------------------
// Minimizing a failing case.

/// Removes entry `i` of a layer and everything below it.
fn without_entry(entries: &[Entry], i: usize) -> Vec<Entry> {
    let gone = format!("{}/", entries[i].path());
    entries
        .iter()
        .enumerate()
        .filter(|(j, e)| *j != i && !e.path().starts_with(&gone))
        .map(|(_, e)| e.clone())
        .collect()
}

/// Smaller variants of `c`, biggest cuts first.
fn candidates(c: &Case) -> Vec<Case> {
    let mut out = Vec::new();
    // Halves of the operation list, then single operations.
    let n = c.ops.len();
    if n >= 4 {
        for (a, b) in [(0, n / 2), (n / 2, n)] {
            let mut d = c.clone();
            d.ops.drain(a..b);
            out.push(d);
        }
    }
    for i in (0..n).rev() {
        let mut d = c.clone();
        d.ops.remove(i);
        out.push(d);
    }
    if c.lowers.len() > 1 {
        for i in 0..c.lowers.len() {
            let mut d = c.clone();
            d.lowers.remove(i);
            out.push(d);
        }
    }
    if !c.upper.is_empty() {
        let mut d = c.clone();
        d.upper.clear();
        out.push(d);
        for i in (0..c.upper.len()).rev() {
            let mut d = c.clone();
            d.upper = without_entry(&c.upper, i);
            out.push(d);
        }
    }
    for (li, l) in c.lowers.iter().enumerate() {
        if !l.is_empty() {
            let mut d = c.clone();
            d.lowers[li].clear();
            out.push(d);
        }
        for i in (0..l.len()).rev() {
            let mut d = c.clone();
            d.lowers[li] = without_entry(l, i);
            out.push(d);
        }
    }
    // Simplify what remains: drop xattrs and opaque flags, plain modes and owners.
    for (li, l) in c.lowers.iter().enumerate() {
        for (i, e) in l.iter().enumerate() {
            if let Some(s) = simpler(e) {
                let mut d = c.clone();
                d.lowers[li][i] = s;
                out.push(d);
            }
        }
    }
    out
}

fn simpler(e: &Entry) -> Option<Entry> {
    match e {
        Entry::Dir {
            path,
            mode,
            uid,
            gid,
            opaque,
            xattr,
        } if *mode != 0o755 || *uid != 0 || *gid != 0 || xattr.is_some() => Some(Entry::Dir {
            path: path.clone(),
            mode: 0o755,
            uid: 0,
            gid: 0,
            opaque: *opaque,
            xattr: None,
        }),
        Entry::File {
            path,
            mode,
            uid,
            gid,
            data,
            xattr,
        } if *mode != 0o644 || *uid != 0 || *gid != 0 || xattr.is_some() => Some(Entry::File {
            path: path.clone(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            data: data.clone(),
            xattr: None,
        }),
        _ => None,
    }
}

/// Greedy minimization of a failing case, keeping the failure's category.
fn shrink(case: &Case, failure: &Failure, budget: Duration) -> (Case, Failure) {
    let start = Instant::now();
    let mut best = case.clone();
    let mut best_f = failure.clone();
    let mut runs = 0usize;
    'outer: loop {
        for cand in candidates(&best) {
            if start.elapsed() > budget {
                eprintln!("shrink: time budget spent after {runs} runs");
                break 'outer;
            }
            runs += 1;
            if let Err(f) = run_fresh(&cand) {
                if f.category == best_f.category {
                    best = cand;
                    best_f = f;
                    continue 'outer;
                }
            }
        }
        break;
    }
    eprintln!(
        "shrink: {runs} runs in {:.1?}: {} ops",
        start.elapsed(),
        best.ops.len()
    );
    (best, best_f)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn set_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
}

#[test]
fn differential_random() {
    if !can_compare() {
        return;
    }
    set_umask();
    let n_ops = env_u64("STRATAFS_DIFF_OPS").unwrap_or(30) as usize;
    let seeds: Vec<u64> = match env_u64("STRATAFS_DIFF_SEED") {
        Some(s) => vec![s],
        None => {
            let base = env_u64("STRATAFS_DIFF_BASE").unwrap_or(1);
            let n = env_u64("STRATAFS_DIFF_CASES").unwrap_or(300);
            (base..base + n).collect()
        }
    };
    let shrink_on = std::env::var("STRATAFS_DIFF_SHRINK").map_or(true, |v| v != "0");
    eprintln!(
        "differential: seeds {}..={} ({} cases, {n_ops} ops each)",
        seeds[0],
        seeds[seeds.len() - 1],
        seeds.len()
    );
    let start = Instant::now();
    // First failure of each category, with its seed.
    let mut failures: BTreeMap<String, (u64, Case, Failure)> = BTreeMap::new();
    let mut failed_seeds = BTreeSet::new();
    let (mut ops_run, mut ops_ok) = (0, 0);
    for &seed in &seeds {
        let (case, r) = run_seed(seed, n_ops);
        if let Ok(n) = r {
            ops_run += case.ops.len();
            ops_ok += n;
        }
        if let Err(f) = r {
            eprintln!("seed {seed}: {}: {}", f.category, f.detail);
            failed_seeds.insert(seed);
            failures
                .entry(f.category.clone())
                .or_insert((seed, case, f));
        }
    }
    eprintln!(
        "differential: {} cases in {:.1?}, {} failed; {ops_ok} of {ops_run} operations in \
         passing cases succeeded",
        seeds.len(),
        start.elapsed(),
        failed_seeds.len()
    );
    if failures.is_empty() {
        return;
    }
    let mut report = format!(
        "stratafs and the kernel disagree; failing seeds {failed_seeds:?}\n\
         replay one with STRATAFS_DIFF_SEED=<seed> cargo test --test differential \
         differential_random\n"
    );
    for (cat, (seed, case, f)) in &failures {
        report.push_str(&format!(
            "\n=== {cat} (seed {seed}) ===\n{}\n--- case ---\n{case}",
            f.detail
        ));
        if shrink_on {
            let (small, sf) = shrink(case, f, Duration::from_secs(180));
            report.push_str(&format!("--- minimized ---\n{}\n{small}", sf.detail));
        }
    }
    panic!("{report}");
}

// ------------------------------------------------------------------------------------------
// Pinned cases.

/// Runs a case written in the script format and panics with the disagreement.
fn check_script(script: &str) {
    if !can_compare() {
        return;
    }
    set_umask();
    let case = Case::parse(script);
    if let Err(f) = run_fresh(&case) {
        panic!("{}: {}\n--- case ---\n{case}", f.category, f.detail);
    }
}

#[test]
fn script_round_trips() {
    for seed in 1..30 {
        let (mut case, mut gen) = gen_case(seed, 0);
        let mut known = vec!["a".to_string(), "d/e".to_string()];
        let live = Live {
            all: vec!["d".to_string(), "b".to_string()],
            dirs: vec!["d".to_string()],
        };
        for _ in 0..60 {
            let op = gen_op(&mut gen.rng, &live, &mut known, &case.ops);
            case.ops.push(op);
        }
        assert_eq!(Case::parse(&case.to_string()), case, "seed {seed}");
    }
}

/// A smoke case that exercises whiteouts, opaque dirs and renames on a fixed stack.
#[test]
fn pinned_basic_stack() {
    check_script(
        "
        upper
        lower
          dir d 0755 0:0 opaque
          file d/a 0644 0:0 top
          whiteout b
          file e 0600 1000:1000 upper
        lower
          dir d 0755 0:0
          file d/b 0644 0:0 hidden
          file b 0644 0:0 gone
          dir e 0755 0:0
          file e/a 0644 0:0 shadowed
        ops
          write d/a 1 xy
          unlink d/a
          mkdir d/a 0755
          rename e c
          link e b
          rmdir d/a
          ls d
          create b 0644
          setxattr e user.x v
          chown e 0:1000 nofollow
          utimes e 1000000000 1234567890 nofollow
        ",
    );
}

// Minimized cases the random run found. Each names what stratafs did wrong.

/// RENAME_EXCHANGE of an upper-only directory with an opaque one whose name a lower layer
/// also holds: the kernel makes the directory that lands on the lower name opaque (as a
/// plain rename does), so `d/a` from below must not show through it.
#[test]
fn regression_exchange_dir_onto_lower_name_is_opaque() {
    check_script(
        "
        upper
          dir b 0755 0:0
          dir d 0755 0:0 opaque
        lower
          dir d 0755 0:0
          file d/a 0644 0:0 below
        ops
          rename d b exchange
          ls d
          stat d/a
        ",
    );
}

/// Same bug with the directory exchanged for an upper file that covers a lower directory.
#[test]
fn regression_exchange_dir_with_file_over_lower_dir() {
    check_script(
        "
        upper
          file b 0644 0:0 qu
          dir e 0700 0:0
        lower
          dir b 0755 0:0
          dir b/b 0755 0:0
        ops
          rename e b exchange
        ",
    );
}

/// Copying a file up must not change its parent directory's times: the kernel restores the
/// parent's timestamps after linking the copy in.
#[test]
fn regression_copy_up_keeps_parent_mtime() {
    check_script(
        "
        upper
        lower
          dir e 0755 0:0
          file e/b 0644 0:0 x
        ops
          utimes e 1500000000 1234567890 nofollow
          write e/b 7 y
        ",
    );
}

/// Same, when the copy-up is of a directory (to hold a whiteout).
#[test]
fn regression_dir_copy_up_keeps_parent_mtime() {
    check_script(
        "
        upper
        lower
          dir b 0755 0:0
          dir b/e 0755 0:0
          file b/e/e 0644 0:0 x
        ops
          utimes b 1500000000 1234567890 nofollow
          unlink b/e/e
        ",
    );
}

/// A lower file hard-linked through the mount, then the new name unlinked: the old name must
/// stay usable (at 53a64fb every later call on `a` failed with ENOENT).
#[test]
fn regression_link_then_unlink_new_name() {
    check_script(
        "
        upper
        lower
          file a 0644 0:0 z1mc
        ops
          link a f
          unlink f
          append a s
          chmod a 0600
          utimes a 1234567890 1234567890 nofollow
          truncate a 1
          read a
        ",
    );
}

/// A rename over one name of a linked file, then a truncating open of the other name: at
/// 53a64fb the open truncated the renamed-in file instead.
#[test]
fn regression_rename_over_link_then_truncating_open() {
    check_script(
        "
        upper
        lower
          file b 0644 0:0 voj4lhv1a2t
          file e 0644 0:0 os
        lower
          dir d 0755 0:0
        ops
          link e d/c
          rename b d/c
          opentrunc e
        ",
    );
}

/// Links of a symlink, renames and unlinks of its names (at 53a64fb: ENOENT, then EIO).
#[test]
fn regression_symlink_links_and_renames() {
    check_script(
        "
        upper
        lower
          dir d 0755 0:0
          dir d/e 0755 0:0 opaque
        lower
          symlink b nowhere
        ops
          link b g
          rename b f
          unlink f
          link g b
          symlink d/e/g d
          link d/e/g c
          unlink c
          stat d/e/g
        ",
    );
}

/// `rename b b` (a no-op) then unlink of `b` with a second link `a` (at 53a64fb: ENXIO on
/// the write through `a`).
#[test]
fn regression_self_rename_then_unlink_other_name() {
    check_script(
        "
        upper
        lower
          file b 0644 0:0 d6w45
        ops
          link b a
          rename b b noreplace
          unlink b
          write a 6 y9
        ",
    );
}
