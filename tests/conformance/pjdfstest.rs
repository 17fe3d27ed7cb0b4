//! pjdfstest: the users it switches to, a run on a mount, and its result read from the output.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::*;

#[derive(Debug, Default)]
pub(crate) struct PjdResult {
    pub(crate) failed: usize,
    pub(crate) skipped: usize,
    pub(crate) passed: usize,
    pub(crate) total: usize,
    /// Case name -> "ok", "FAILED", "skipped", ...
    pub(crate) cases: BTreeMap<String, String>,
    /// Case name -> the first line of its failure message.
    pub(crate) messages: BTreeMap<String, String>,
}

impl PjdResult {
    pub(crate) fn with_status(&self, status: &str) -> BTreeSet<String> {
        self.cases
            .iter()
            .filter(|(_, s)| s.as_str() == status)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Parses pjdfstest's per-case lines and its `Summary:` line.
pub(crate) fn parse_pjdfstest(out: &str) -> Option<PjdResult> {
    let out = strip_ansi(out);
    let mut r = PjdResult::default();
    let mut last_failed: Option<String> = None;
    let mut summary = false;
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("Summary:") {
            // "Summary: 41 failed, 16 skipped, 341 passed, 0 expected failures, 398 total"
            for part in rest.split(',') {
                let mut it = part.split_whitespace();
                let (Some(n), Some(what)) = (it.next(), it.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<usize>() else { continue };
                match what {
                    "failed" => r.failed = n,
                    "skipped" => r.skipped = n,
                    "passed" => r.passed = n,
                    "total" => r.total = n,
                    _ => {}
                }
            }
            summary = true;
            continue;
        }
        if let Some(msg) = line.strip_prefix('\t') {
            if let Some(name) = last_failed.take() {
                r.messages.insert(name, msg.trim().to_string());
            }
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            continue;
        }
        let Some((name, status)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let status = status.trim();
        if [
            "ok",
            "FAILED",
            "skipped",
            "failed as expected",
            "PASSED UNEXPECTEDLY",
        ]
        .contains(&status)
            && name.contains("::")
        {
            r.cases.insert(name.to_string(), status.to_string());
            last_failed = (status == "FAILED").then(|| name.to_string());
        }
    }
    summary.then_some(r)
}

pub(crate) fn ensure_pjdfstest_users() -> &'static str {
    let has_user = |u: &str| run(Command::new("id").arg("-u").arg(u)).status.success();
    if !has_user("tests") {
        let out = run(Command::new("useradd").args(["-M", "-U", "tests"]));
        assert!(
            out.status.success(),
            "useradd -M -U tests: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let groups = fs::read_to_string("/etc/group").unwrap_or_default();
    if groups.lines().any(|l| l.starts_with("nogroup:")) {
        "nogroup"
    } else {
        "nobody"
    }
}

pub(crate) fn run_pjdfstest(bin: &Path, config: &Path, mnt: &Path) -> (PjdResult, String, f64) {
    let start = Instant::now();
    let (status, out) = run_timeout(
        Command::new(bin)
            .arg("-c")
            .arg(config)
            .arg("-p")
            .arg(mnt)
            .env("NO_COLOR", "1")
            .env("CLICOLOR", "0")
            .env("RUST_BACKTRACE", "0"),
        Duration::from_secs(600),
    );
    let secs = start.elapsed().as_secs_f64();
    assert!(
        status.is_some(),
        "pjdfstest on {} did not finish in 600 s:\n{}",
        mnt.display(),
        tail(&out, 30)
    );
    let Some(r) = parse_pjdfstest(&out) else {
        panic!(
            "no Summary line from pjdfstest on {} ({status:?}):\n{}",
            mnt.display(),
            tail(&out, 40)
        )
    };
    (r, out, secs)
}
