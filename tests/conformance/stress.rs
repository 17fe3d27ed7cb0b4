//! stress-ng: each stressor's arguments, one run, and a target's results.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::*;

#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Pass,
    Skip(String),
    Fail(String),
}

pub(crate) fn stressor_args(s: &str) -> &'static [&'static str] {
    // Keep the data stressors to sizes the CI disk and the time budget allow.
    match s {
        "hdd" => &["--hdd-bytes", "64M"],
        "fallocate" => &["--fallocate-bytes", "64M"],
        "sync-file" => &["--sync-file-bytes", "64M"],
        "copy-file" => &["--copy-file-bytes", "128M"],
        "seek" => &["--seek-size", "16M"],
        "readahead" => &["--readahead-bytes", "16M"],
        _ => &[],
    }
}

pub(crate) fn run_stressor(bin: &Path, stressor: &str, dir: &Path) -> (Outcome, f64) {
    fs::create_dir_all(dir).unwrap();
    let start = Instant::now();
    let (status, out) = run_timeout(
        Command::new(bin)
            .arg(format!("--{stressor}"))
            .arg("2")
            .args(stressor_args(stressor))
            .arg("-t")
            .arg(format!("{STRESS_SECS}s"))
            .arg("--verify")
            .arg("--metrics-brief")
            .arg("--temp-path")
            .arg(dir),
        Duration::from_secs(120),
    );
    let secs = start.elapsed().as_secs_f64();
    let notes: Vec<&str> = out
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("fail") || l.contains("error") || l.contains("skipping")
        })
        .take(8)
        .collect();
    let outcome = match status {
        None => Outcome::Fail(format!("hung: killed after 120 s\n{}", tail(&out, 10))),
        Some(s) if !s.success() => Outcome::Fail(format!(
            "exit {:?}: {}",
            s.code(),
            if notes.is_empty() {
                tail(&out, 10)
            } else {
                notes.join("\n")
            }
        )),
        Some(_) if out.contains("fail:") || out.contains("unsuccessful run") => {
            Outcome::Fail(notes.join("\n"))
        }
        Some(_) if out.contains("skipping stressor") => Outcome::Skip(notes.join("\n")),
        Some(_) => Outcome::Pass,
    };
    (outcome, secs)
}

/// Each stressor's outcome and run time.
pub(crate) type StressResults = Vec<(&'static str, Outcome, f64)>;

/// Runs every stressor on a fresh mount of `t`, then remounts and checks the tree survived.
pub(crate) fn stress_on(lab: &Lab, t: Target, bin: &Path) -> (StressResults, Vec<String>) {
    lab.reset(t);
    let mnt = lab.mnt(t);
    let guard = lab.mount(t);
    let mut results = Vec::new();
    for s in STRESSORS {
        let (o, secs) = run_stressor(bin, s, &mnt.join("stress").join(s));
        results.push((s, o, secs));
    }
    // The remount: the same tree comes back, with nothing of the on-disk format showing.
    let mut problems = Vec::new();
    let before = snapshot(&mnt);
    drop(guard);
    let guard = lab.mount(t);
    if t == Target::Stratafs {
        let left = dir_names(&lab.work(t).join("work"));
        if !left.is_empty() {
            problems.push(format!("work dir not empty after the remount: {left:?}"));
        }
    }
    let after = snapshot(&mnt);
    if let Some(d) = tree_diff(&after, &before) {
        problems.push(format!("tree changed across the remount:\n{d}"));
    }
    if t != Target::FuseOverlayfs {
        problems.extend(overlay_internals(&mnt));
    }
    drop(guard);
    (results, problems)
}
