//! Minimizing a failing case: fewer operations, layers and entries, simpler entries, as
//! long as it fails the same way.

use std::time::{Duration, Instant};

use crate::case::*;
use crate::executor::*;

/// Removes entry `i` of a layer and everything below it.
pub(crate) fn without_entry(entries: &[Entry], i: usize) -> Vec<Entry> {
    let gone = format!("{}/", entries[i].path());
    entries
        .iter()
        .enumerate()
        .filter(|(j, e)| *j != i && !e.path().starts_with(&gone))
        .map(|(_, e)| e.clone())
        .collect()
}

/// Smaller variants of `c`, biggest cuts first.
pub(crate) fn candidates(c: &Case) -> Vec<Case> {
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

pub(crate) fn simpler(e: &Entry) -> Option<Entry> {
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
pub(crate) fn shrink(case: &Case, failure: &Failure, budget: Duration) -> (Case, Failure) {
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
