#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Differential testing of the write path: random layer stacks and random operation
//! sequences, run against a stratafs mount and a kernel overlayfs mount over separate,
//! identical copies of the layers. Every call's result (value or errno) must agree, the final
//! trees must agree, and each implementation must read the upper layer the other wrote.
//!
//! Knobs (environment):
//! - `STRATAFS_DIFF_CASES=N`: how many seeds to run (default 300, about 30 s; 150 for
//!   each run with a feature on, such as `differential_random_redirect_dir` and
//!   `differential_random_metacopy`; 100 for `differential_random_data_only`, whose bottom
//!   lower layer is split into a metadata layer over a data-only layer; 150 for
//!   `differential_random_index`, whose lower layers also hold hard links, and 100 for
//!   `differential_random_index_metacopy`).
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
//!
//! Modules by role: `generator` (layer stacks and operations from a seed), `case` (the
//! script format), `executor` (mounts, calls, comparisons) and `shrinker` (minimizing).

mod case;
#[path = "../common/mod.rs"]
mod common;
mod executor;
mod generator;
mod shrinker;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use case::*;
use common::*;
use executor::*;
use generator::*;
use shrinker::*;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn set_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
}

#[test]
fn differential_random() {
    differential("", 300, "differential_random");
}

/// The same random cases with `redirect_dir=on` on both sides (issue 18): renames of lower
/// and merged directories succeed, and each side reads the redirects the other wrote.
#[test]
fn differential_random_redirect_dir() {
    differential("redirect_dir=on", 150, "differential_random_redirect_dir");
}

/// The same random cases with `metacopy=on,redirect_dir=on` on both sides (issue 18): chmod,
/// chown, utimes, xattrs, links and renames of lower files copy up their metadata alone,
/// writes and truncates their data after, and each side reads the metacopy files and
/// redirects the other wrote.
#[test]
fn differential_random_metacopy() {
    differential(
        "metacopy=on,redirect_dir=on",
        150,
        "differential_random_metacopy",
    );
}

/// The same random cases with the bottom lower layer split composefs style into a metadata
/// layer (sparse metacopy files with absolute redirects) over a data-only layer
/// (`lowerdir=...::DATA`), with `metacopy=on,redirect_dir=on` on both sides (issue 18 item
/// 4): each side reads the data through the redirects, copies it up from the data-only
/// layer, and reads the upper the other wrote.
#[test]
fn differential_random_data_only() {
    differential(
        "metacopy=on,redirect_dir=on,data-only-bottom",
        100,
        "differential_random_data_only",
    );
}

/// The same random cases with `index=on` on both sides (issue 18 item 3), their lower
/// layers holding hard links: every name of a lower file stays one file, with its true link
/// count, after any of them is copied up, linked, unlinked or renamed over; the names of
/// one file are compared too (after the operations and across the swap), and each side
/// reads the index and upper the other wrote.
#[test]
fn differential_random_index() {
    differential("index=on", 150, "differential_random_index");
}

/// `index=on` with `metacopy=on,redirect_dir=on` on both sides: the kernel copies a lower
/// hard link's metadata alone into the index (stratafs copies it whole, docs/SEMANTICS.md
/// row 21), and each side reads the other's index entries, metacopy ones included.
#[test]
fn differential_random_index_metacopy() {
    differential(
        "metacopy=on,redirect_dir=on,index=on",
        100,
        "differential_random_index_metacopy",
    );
}

/// Runs the random cases with `features` (`-o` options for both implementations),
/// `default_cases` of them unless the environment says otherwise.
fn differential(features: &str, default_cases: u64, test: &str) {
    if !can_compare() {
        return;
    }
    set_umask();
    let n_ops = env_u64("STRATAFS_DIFF_OPS").unwrap_or(30) as usize;
    let seeds: Vec<u64> = match env_u64("STRATAFS_DIFF_SEED") {
        Some(s) => vec![s],
        None => {
            let base = env_u64("STRATAFS_DIFF_BASE").unwrap_or(1);
            let n = env_u64("STRATAFS_DIFF_CASES").unwrap_or(default_cases);
            (base..base + n).collect()
        }
    };
    let shrink_on = std::env::var("STRATAFS_DIFF_SHRINK").map_or(true, |v| v != "0");
    eprintln!(
        "differential{}: seeds {}..={} ({} cases, {n_ops} ops each)",
        if features.is_empty() {
            String::new()
        } else {
            format!(" with {features}")
        },
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
        let (case, r) = run_seed(seed, n_ops, features);
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
         {test} -- --exact\n"
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
/// With `redirect_dir=on` a lower directory and a merged one are renamed, not refused with
/// EXDEV, on both sides; a new directory then takes the old name, and each side reads the
/// other's redirects (the upper swap).
#[test]
fn pinned_redirect_dir_renames() {
    if !can_compare() {
        return;
    }
    set_umask();
    let case = Case::parse(
        "
        features redirect_dir=on
        upper
          dir m 0755 0:0
          file m/up 0644 0:0 upper
        lower
          dir d 0755 0:0
          file d/a 0644 0:0 x
          dir d/sub 0755 0:0
          file d/sub/s 0644 0:0 deep
          dir m 0755 0:0
          file m/low 0644 0:0 lower
        ops
          rename d e
          ls e
          rename m e/m2
          ls e/m2
          mkdir d 0755
          create d/b 0644
          rename e/sub s
          ls s
          ls d
        ",
    );
    match run_fresh(&case) {
        // Every operation succeeded on both sides: no EXDEV.
        Ok(n) => assert_eq!(n, case.ops.len(), "some operations failed on both sides"),
        Err(f) => panic!("{}: {}\n--- case ---\n{case}", f.category, f.detail),
    }
}

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

/// With `metacopy=on` a utimes of a lower file copies its metadata alone; the next open for
/// writing copies the data, which is a write on the kernel: the explicit mtime goes (stratafs
/// put it back, seed 193 of `differential_random_metacopy`).
#[test]
fn regression_metacopy_data_copy_up_takes_the_time_of_the_copy() {
    check_script(
        "
        features metacopy=on,redirect_dir=on
        upper
        lower
          dir d 0755 0:0
          file d/d 0644 0:0 nd0ee
        ops
          utimes d/d 1500000000 1000000000 nofollow
          create d/d 4755
        ",
    );
}

/// With `index=on`, an open for writing of a name the kernel held since before another name
/// of its file was linked up and renamed away: the node, left at the lower name found in the
/// index, was linked up again under the renamed name (EEXIST; seed 8 of
/// `differential_random_index`, before the first landing).
#[test]
fn regression_index_open_after_a_linked_up_name_moved() {
    check_script(
        "
        features index=on
        upper
        lower
          file b 2755 0:1000 sj
          link d b
        ops
          chmod d 0444
          chmod e 0444
          rename b f
          create d 0644
        ",
    );
}

/// With `index=on`, the unlink of a lower hard link whose directory had no upper copy:
/// the copy-up before the unlink copies the directory too, and the name was then resolved
/// in the directory's layers as they were before it (EEXIST; seed 72).
#[test]
fn regression_index_unlink_in_a_lower_directory() {
    check_script(
        "
        features index=on
        upper
        lower
          dir d 0755 0:0
          file d/a 0644 0:0 i5
          dir d/d 0755 0:0
          link d/d/d d/a
        ops
          unlink d/d/d
        ",
    );
}

/// With `index=on`, a name of a file removed (renamed over, unlinked) while the kernel
/// knew another name of it: the node moved to that name, which is found in the index, not
/// in the upper layer (ENOENT; seeds 97, 89 and 142).
#[test]
fn regression_index_other_name_after_a_removal() {
    check_script(
        "
        features index=on
        upper
          file d 2755 0:0 84k99a39z
        lower
          file a 0644 1001:0 6mqywz3
          link e a
        ops
          setxattr a user.x 7nq9m
          rename d a
          read e
        ",
    );
    check_script(
        "
        features index=on
        upper
        lower
          dir d 0755 0:0
          file d/e 0644 0:0 79gvshquig
          link d/d d/e
        ops
          rename d/e f
          unlink f
          utimes d/d 1500000000 2000000000 nofollow
        ",
    );
}
