//! fsx: its profiles, runs on a target and on a reference file, and the failure it reports.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::*;

pub(crate) struct FsxProfile {
    pub(crate) name: &'static str,
    pub(crate) config: String,
    /// File name in the mount; `fsx-lower` starts in the bottom lower layer.
    pub(crate) file: &'static str,
    pub(crate) seed: u64,
    pub(crate) ops: u64,
    /// Run in processes of this many operations (see [`FSX_CHUNK`]).
    pub(crate) chunk: Option<u64>,
}

pub(crate) fn fsx_ops() -> u64 {
    std::env::var("STRATAFS_FSX_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FSX_OPS)
}

pub(crate) fn fsx_profiles() -> Vec<FsxProfile> {
    let ops = fsx_ops();
    let seed = std::env::var("STRATAFS_FSX_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_251_122u64);
    vec![
        FsxProfile {
            name: "lower-file",
            config: FSX_FULL.to_string(),
            file: "fsx-lower",
            seed,
            ops,
            chunk: Some(FSX_CHUNK),
        },
        FsxProfile {
            name: "new-file",
            config: FSX_FULL.to_string(),
            file: "fsx-new",
            seed: seed + 1,
            ops,
            chunk: Some(FSX_CHUNK),
        },
        FsxProfile {
            name: "copy-file-range",
            config: fsx_cfr(),
            file: "fsx-cfr",
            seed: seed + 2,
            ops: FSX_CFR_OPS.min(ops),
            chunk: None,
        },
    ]
}

/// Runs fsx over `file`; Err carries the end of its output.
pub(crate) fn run_fsx(
    bin: &Path,
    config: &Path,
    p: &FsxProfile,
    file: &Path,
    artifacts: &Path,
) -> Result<(), String> {
    let ranges: Vec<(u64, u64)> = match p.chunk {
        Some(c) => (0..p.ops.div_ceil(c))
            .map(|i| (i * c + 1, ((i + 1) * c).min(p.ops)))
            .collect(),
        None => vec![(1, p.ops)],
    };
    for (begin, end) in ranges {
        let (status, out) = run_timeout(
            Command::new(bin)
                .arg("-f")
                .arg(config)
                .arg("-S")
                .arg(p.seed.to_string())
                .arg("-b")
                .arg(begin.to_string())
                .arg("-N")
                .arg(end.to_string())
                .arg("-P")
                .arg(artifacts)
                .arg(file)
                .env("RUST_BACKTRACE", "0"),
            Duration::from_secs(900),
        );
        let ok = status.map(|s| s.success()).unwrap_or(false)
            && out.contains("All operations completed A-OK!");
        if !ok {
            return Err(format!(
                "fsx -S {} -b {begin} -N {end} {} ({}): {status:?}\n{}",
                p.seed,
                file.display(),
                p.name,
                fsx_failure(&out)
            ));
        }
    }
    Ok(())
}

/// What fsx said about a failure, without most of its operation log.
pub(crate) fn fsx_failure(out: &str) -> String {
    let is_log = |l: &str| {
        l.strip_prefix("[ERROR fsx]")
            .map(|r| r.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .unwrap_or(false)
    };
    let said: Vec<&str> = out.lines().filter(|l| !is_log(l)).take(30).collect();
    format!(
        "{}\n... last operations:\n{}",
        said.join("\n"),
        tail(out, 12)
    )
}

/// The file fsx expects after `p`, made on a plain directory: for a chunked profile fsx
/// computes it itself (`-b OPS -N OPS` simulates every step but the last and writes its
/// expected image); otherwise the same run on the plain directory.
pub(crate) fn fsx_reference(bin: &Path, config: &Path, p: &FsxProfile, dir: &Path) -> Vec<u8> {
    let file = dir.join(format!("{}.ref", p.name));
    let r = if p.chunk.is_some() {
        let (status, out) = run_timeout(
            Command::new(bin)
                .arg("-f")
                .arg(config)
                .arg("-S")
                .arg(p.seed.to_string())
                .arg("-b")
                .arg(p.ops.to_string())
                .arg("-N")
                .arg(p.ops.to_string())
                .arg("-P")
                .arg(dir)
                .arg(&file),
            Duration::from_secs(300),
        );
        if status.map(|s| s.success()).unwrap_or(false) {
            Ok(())
        } else {
            Err(tail(&out, 20))
        }
    } else {
        run_fsx(bin, config, p, &file, dir)
    };
    if let Err(e) = r {
        panic!("fsx reference run for {} failed: {e}", p.name);
    }
    fs::read(&file).unwrap()
}

pub(crate) struct FsxOutcome {
    pub(crate) profile: &'static str,
    pub(crate) result: Result<(), String>,
    pub(crate) secs: f64,
}

/// Runs every profile on a fresh mount of `t`, remounts, and checks the files against the
/// references.
pub(crate) fn fsx_on(
    lab: &Lab,
    t: Target,
    bin: &Path,
    configs: &BTreeMap<&'static str, PathBuf>,
    refs: &BTreeMap<&'static str, Vec<u8>>,
) -> Vec<FsxOutcome> {
    lab.reset(t);
    let mnt = lab.mnt(t);
    let art = lab.dir.path().join(format!("{}-fsx-artifacts", t.dir()));
    let _ = fs::create_dir(&art);
    let profiles = fsx_profiles();
    let guard = lab.mount(t);
    assert_eq!(
        fs::read(mnt.join("fsx-lower")).unwrap(),
        lower_fsx_content(),
        "{}: the lower file reads wrong before fsx",
        t.name()
    );
    let run_one = |p: &FsxProfile| {
        let start = Instant::now();
        let result = run_fsx(bin, &configs[p.name], p, &mnt.join(p.file), &art);
        FsxOutcome {
            profile: p.name,
            result,
            secs: start.elapsed().as_secs_f64(),
        }
    };
    let (run_one, ps) = (&run_one, &profiles);
    let mut outcomes: Vec<FsxOutcome> = std::thread::scope(|s| {
        // Two lanes for two cores: the lower-file profile then copy_file_range, and the
        // new-file profile.
        let a = s.spawn(move || vec![run_one(&ps[0]), run_one(&ps[2])]);
        let b = s.spawn(move || vec![run_one(&ps[1])]);
        let mut v = a.join().expect("fsx lane");
        v.extend(b.join().expect("fsx lane"));
        v
    });
    // The first open of fsx-lower (O_TRUNC) copied it up; the lower copy is untouched.
    assert!(
        lab.upper(t).join("fsx-lower").is_file(),
        "{}: fsx-lower was not copied up",
        t.name()
    );
    assert_eq!(
        fs::read(lab.lowers[1].join("fsx-lower")).unwrap(),
        lower_fsx_content(),
        "the lower layer changed"
    );
    drop(guard);
    let _guard = lab.mount(t);
    for o in outcomes.iter_mut() {
        if o.result.is_err() {
            continue;
        }
        let p = profiles.iter().find(|p| p.name == o.profile).unwrap();
        let got = fs::read(mnt.join(p.file)).unwrap_or_default();
        let want = &refs[p.name];
        if &got != want {
            let first = got
                .iter()
                .zip(want.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(want.len()));
            o.result = Err(format!(
                "after remount {} differs from fsx's expected image: {} bytes, expected {}; \
                 first difference at {first:#x}",
                p.file,
                got.len(),
                want.len()
            ));
        }
    }
    outcomes
}
