//! Generating cases from a seed: layer stacks, and operations picked from the tree the
//! oracle shows while the case runs (mostly paths that exist, or could).

use std::path::Path;

use crate::case::*;
use crate::common::*;

/// Names of the generated layers; `c` never appears there, so operations on it create.
pub(crate) const LAYER_NAMES: [&str; 4] = ["a", "b", "d", "e"];
pub(crate) const OP_NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
pub(crate) const IDS: [u32; 4] = [0, 0, 1000, 1001];

pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

pub(crate) fn gen_layer(
    rng: &mut Rng,
    out: &mut Vec<Entry>,
    prefix: &str,
    depth: usize,
    upperish: bool,
) {
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
pub(crate) fn dir_chain(layers: &[&[Entry]], path: &str) -> Option<Vec<usize>> {
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
pub(crate) fn drop_stray_whiteouts(upper: &mut Vec<Entry>, lowers: &mut [Vec<Entry>]) {
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

/// What the merged view holds right now: every path, and the directories among them.
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) all: Vec<String>,
    pub(crate) dirs: Vec<String>,
}

/// A path for an operation: mostly one that exists in the merged view right now, else one
/// some layer or earlier operation named (`known`, which includes hidden and deleted names),
/// else one from the name pool.
pub(crate) fn pick_path(rng: &mut Rng, live: &Live, known: &[String]) -> String {
    if !live.all.is_empty() && rng.pct(60) {
        return rng.pick(&live.all);
    }
    if !known.is_empty() && rng.pct(40) {
        return rng.pick(known);
    }
    pool_path(rng)
}

/// A path for something the operation creates: mostly a new name in an existing directory.
pub(crate) fn pick_new_path(rng: &mut Rng, live: &Live, known: &[String]) -> String {
    if rng.pct(55) {
        let mut dirs = live.dirs.clone();
        dirs.push(String::new());
        let dir = rng.pick(&dirs);
        return join(&dir, rng.pick(&["c", "f", "g", "a", "b"]));
    }
    pick_path(rng, live, known)
}

/// An existing directory, most of the time.
pub(crate) fn pick_dir(rng: &mut Rng, live: &Live, known: &[String]) -> String {
    if !live.dirs.is_empty() && rng.pct(70) {
        return rng.pick(&live.dirs);
    }
    pick_path(rng, live, known)
}

pub(crate) fn pool_path(rng: &mut Rng) -> String {
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
pub(crate) fn gen_op(rng: &mut Rng, live: &Live, known: &mut Vec<String>, ops: &[Op]) -> Op {
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
pub(crate) fn live_paths(root: &Path) -> Live {
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

/// The layer stack for `seed`, and the generator of its `n_ops` operations.
pub(crate) fn gen_case(seed: u64, n_ops: usize) -> (Case, OpGen) {
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
        features: String::new(),
    };
    (case, OpGen { rng, n: n_ops })
}

/// Adds hard links to the files of the lower layers of `case` (for `index=on`): up to three
/// per layer, each a new name (in the root or a directory of the same layer) of one of its
/// regular files. They are drawn from a random stream of their own, so that the rest of
/// the case is what `seed` gives without them.
pub(crate) fn add_lower_links(case: &mut Case, seed: u64) {
    let mut rng = Rng::new(seed ^ 0x6c69_6e6b_7321);
    for layer in case.lowers.iter_mut() {
        let files: Vec<String> = layer
            .iter()
            .filter_map(|e| match e {
                Entry::File { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect();
        if files.is_empty() {
            continue;
        }
        let dirs: Vec<String> = std::iter::once(String::new())
            .chain(layer.iter().filter_map(|e| match e {
                Entry::Dir { path, .. } => Some(path.clone()),
                _ => None,
            }))
            .collect();
        for _ in 0..rng.below(4) {
            let target = rng.pick(&files);
            let path = join(&rng.pick(&dirs), rng.pick(&LAYER_NAMES));
            if !layer.iter().any(|e| e.path() == path) {
                layer.push(Entry::HardLink { path, target });
            }
        }
    }
    // A link may stop a directory above from merging with one below.
    drop_stray_whiteouts(&mut case.upper, &mut case.lowers);
}

/// Generates a case's operations while it runs, from the oracle's current tree.
pub(crate) struct OpGen {
    pub(crate) rng: Rng,
    pub(crate) n: usize,
}
