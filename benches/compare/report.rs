//! The report: medians and ratios per configuration, as markdown (stdout, `compare.md`) and
//! JSON (`compare.json`, every round's time, checks and failures).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::process::Command;

use serde_json::{json, Value};

use crate::dataset::DATA_VERSION;
use crate::mounts::{Config, Contender, Ctx};
use crate::trace::Traced;
use crate::workloads::{Class, Wl};

#[derive(Debug, Clone)]
pub struct Sample {
    /// CPU busy fraction of the machine just before the sample (see `settle`).
    pub busy: f64,
    pub wall: f64,
    pub cpu: Option<f64>,
    pub rss_kib: Option<u64>,
    pub check: String,
    /// Requests stratafs served during the timed part, per operation.
    pub requests: Option<BTreeMap<String, u64>>,
    /// Requests the kernel sent the FUSE daemon during the timed part (traced rounds only).
    pub traced: Option<Traced>,
}

pub type AllResults = BTreeMap<Config, Results>;

pub type Results = BTreeMap<(Wl, Contender), Vec<Result<Sample, String>>>;

pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[derive(Debug, Clone, Default)]
pub struct Row {
    pub walls: Vec<f64>,
    pub wall: Option<f64>,
    pub cpu: Option<f64>,
    pub rss_mib: Option<f64>,
    pub failures: Vec<String>,
    pub checks: Vec<String>,
    /// Requests served in the round with the fewest (stratafs only; the rounds differ by
    /// a few at most: forgets and releases that land after the timed part).
    pub requests: Option<BTreeMap<String, u64>>,
    /// Requests the kernel sent the daemon, in the traced round.
    pub traced: Option<Traced>,
}

pub fn summarize(results: &Results, w: Wl, c: Contender) -> Option<Row> {
    let samples = results.get(&(w, c))?;
    let mut r = Row::default();
    let mut cpus = Vec::new();
    for s in samples {
        match s {
            Ok(s) => {
                r.walls.push(s.wall);
                if let Some(c) = s.cpu {
                    cpus.push(c);
                }
                if let Some(k) = s.rss_kib {
                    let mib = k as f64 / 1024.0;
                    r.rss_mib = Some(r.rss_mib.map_or(mib, |x: f64| x.max(mib)));
                }
                r.checks.push(s.check.clone());
                if s.traced.is_some() {
                    r.traced = s.traced.clone();
                }
                if let Some(q) = &s.requests {
                    let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
                    if r.requests.as_ref().is_none_or(|old| total(q) < total(old)) {
                        r.requests = Some(q.clone());
                    }
                }
            }
            Err(e) => r.failures.push(e.clone()),
        }
    }
    r.wall = median(&mut r.walls.clone());
    r.cpu = median(&mut cpus);
    Some(r)
}

pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.prec$}"))
}

pub fn fmt_secs(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

pub struct Meta {
    pub nice: i32,
    pub date: String,
    pub load_start: String,
    pub load_end: String,
    pub machine: Vec<(String, String)>,
    pub dataset: String,
    pub rounds: usize,
    pub elapsed: f64,
    pub command: String,
}

pub fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

pub fn machine(ctx: &Ctx) -> Vec<(String, String)> {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into());
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| format!("{:.1} GiB", k / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let data = ctx.data.display().to_string();
    let fsinfo = sh("findmnt", &["-no", "SOURCE,FSTYPE,OPTIONS", "-T", &data]);
    let root = env!("CARGO_MANIFEST_DIR");
    let rev = sh("git", &["-C", root, "rev-parse", "--short", "HEAD"]);
    let dirty = sh("git", &["-C", root, "status", "--porcelain", "--", "src"]);
    let rev = if dirty.is_empty() || dirty == "?" {
        rev
    } else {
        format!("{rev} + uncommitted changes in src/")
    };
    vec![
        ("CPU".into(), format!("{cpu}, {nproc} cores (nproc)")),
        ("memory".into(), mem),
        (
            "kernel".into(),
            fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        ("layers, upper and work on".into(), fsinfo),
        (
            "fuse-overlayfs".into(),
            format!(
                "{} (Debian package), `fuse-overlayfs`",
                sh("dpkg-query", &["-W", "-f", "${Version}", "fuse-overlayfs"])
            ),
        ),
        (
            "fuse-overlayfs-2".into(),
            match &ctx.fuse_overlayfs2 {
                Some(p) => format!(
                    "{} (crates.io, `cargo install fuse-overlayfs@2.0.0`), {}",
                    sh(&p.display().to_string(), &["--version"])
                        .lines()
                        .next()
                        .unwrap_or("?"),
                    p.display()
                ),
                None => "not measured".into(),
            },
        ),
        (
            "rootless user".into(),
            match ctx.user {
                Some((u, g)) => format!(
                    "{} (uid {u}, gid {g}); FUSE daemons and workloads run with `setpriv`, \
                     the kernel with `unshare -Urm` + `-o userxattr`; /dev/fuse mode {:o}",
                    crate::mounts::BENCH_USER,
                    fs::metadata("/dev/fuse")
                        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
                        .unwrap_or(0)
                ),
                None => "not measured".into(),
            },
        ),
        (
            "fusermount3".into(),
            sh("fusermount3", &["--version"]).replace("fusermount3 version: ", ""),
        ),
        (
            "stratafs".into(),
            format!(
                "release build of git {rev}, copied to {}",
                ctx.stratafs.display()
            ),
        ),
    ]
}

/// A target: at most `max` times `against`'s median.
pub struct Target {
    pub against: Contender,
    pub max: f64,
}

/// The targets of issue 5 (root) and issue 17 (rootless) for stratafs.
pub fn targets(cfg: Config, w: Wl) -> Vec<Target> {
    let t = |against, max| Target { against, max };
    use Contender::{FuseOverlayfs as F1, FuseOverlayfs2 as F2, Kernel as K};
    match cfg {
        Config::Root => match w.class() {
            Class::Metadata => vec![t(K, 1.5), t(F1, 0.6)],
            Class::Data => vec![t(K, 1.1)],
            Class::CopyUp => vec![t(K, 1.2)],
            Class::Other => vec![],
        },
        Config::Rootless => match w {
            Wl::ReadBig => vec![t(K, 2.0), t(F1, 0.5)],
            Wl::ReReadBig => vec![t(K, 1.2)],
            Wl::WriteBig => vec![t(K, 1.5)],
            Wl::ReadSmall | Wl::ReadSmall2 => vec![t(K, 2.5)],
            Wl::StatCold
            | Wl::StatWarm
            | Wl::ListBigdir
            | Wl::Untar
            | Wl::RmRf
            | Wl::MvDir
            | Wl::Walk1 => vec![t(K, 1.5), t(F1, 0.5), t(F2, 0.5)],
            _ => vec![],
        },
    }
}

/// The ratio-to-kernel target drawn in the chart.
pub fn target_for(cfg: Config, w: Wl) -> Option<f64> {
    targets(cfg, w)
        .into_iter()
        .find(|t| t.against == Contender::Kernel)
        .map(|t| t.max)
}

fn kernel_label(cfg: Config) -> &'static str {
    match cfg {
        Config::Root => "kernel",
        Config::Rootless => "kernel (userns)",
    }
}

pub fn markdown(
    ctx: &Ctx,
    all: &AllResults,
    contenders: &[Contender],
    wls: &[Wl],
    meta: &Meta,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Kernel overlayfs vs fuse-overlayfs vs stratafs ({} size)\n",
        ctx.size.name
    );
    let _ = writeln!(
        s,
        "Run started {} with `{}`; {} round(s) per configuration, contender and workload, \
         interleaved; median wall time; whole run {:.1} min.\n",
        meta.date,
        meta.command,
        meta.rounds,
        meta.elapsed / 60.0
    );
    for (k, v) in &meta.machine {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(s, "- {}", meta.dataset.trim());
    let mut busy: Vec<f64> = all
        .values()
        .flat_map(|r| r.values())
        .flatten()
        .filter_map(|r| r.as_ref().ok().map(|s| s.busy))
        .collect();
    let busy_max = busy.iter().copied().fold(0.0, f64::max);
    let _ = writeln!(
        s,
        "- machine load: loadavg {} at the start, {} at the end; CPU busy just before a sample \
         (after waiting up to {} s for < 25%): median {:.0}%, max {:.0}%; the bench, its tools \
         and the daemons ran at nice {}",
        meta.load_start,
        meta.load_end,
        ctx.size.settle.as_secs(),
        median(&mut busy).unwrap_or(0.0) * 100.0,
        busy_max * 100.0,
        meta.nice
    );
    let _ = writeln!(s);
    for (&cfg, results) in all {
        table(&mut s, cfg, results, contenders, wls);
    }
    for (&cfg, results) in all {
        requests_table(&mut s, cfg, results, wls);
    }
    for (&cfg, results) in all {
        traced_table(&mut s, cfg, results, contenders, wls);
    }
    let _ = writeln!(s, "### Workloads\n");
    for &w in wls {
        let _ = writeln!(s, "- **{}**: {}", w.name(), w.describe(&ctx.size));
    }
    let _ = writeln!(s);
    s
}

/// The requests stratafs served per workload in configuration `cfg` (from `stratafs stats`
/// around the timed part), most frequent operations first.
fn requests_table(s: &mut String, cfg: Config, results: &Results, wls: &[Wl]) {
    let rows: Vec<(Wl, BTreeMap<String, u64>)> = wls
        .iter()
        .filter_map(|&w| Some((w, summarize(results, w, Contender::Stratafs)?.requests?)))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "### Requests stratafs served ({}), per workload\n",
        cfg.name()
    );
    let _ = writeln!(s, "| workload | requests | by operation |\n|---|---:|---|");
    for (w, m) in rows {
        let mut ops: Vec<(&String, &u64)> = m.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let by: Vec<String> = ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
        let total: u64 = m.values().sum();
        let _ = writeln!(s, "| {} | {total} | {} |", w.name(), by.join(", "));
    }
    let _ = writeln!(s);
}

/// The requests the kernel sent each FUSE daemon per workload in configuration `cfg` (the
/// fuse tracepoints, in the last round), with the mean time from sending to the answer.
fn traced_table(
    s: &mut String,
    cfg: Config,
    results: &Results,
    contenders: &[Contender],
    wls: &[Wl],
) {
    let mut rows = Vec::new();
    for &w in wls {
        for &c in contenders {
            if let Some(t) = summarize(results, w, c).and_then(|r| r.traced) {
                rows.push((w, c, t));
            }
        }
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "### Requests the kernel sent each FUSE daemon ({}), per workload\n\n\
         Counted by the kernel (`fuse:fuse_request_send` and `fuse:fuse_request_end`) in the \
         timed part of the last round; each operation with its mean time from sending to the \
         answer, µs. FORGET is not traced.\n",
        cfg.name()
    );
    let _ = writeln!(
        s,
        "| workload | contender | requests | mean µs | by operation (count, mean µs) |\n|---|---|---:|---:|---|"
    );
    for (w, c, t) in rows {
        let mut ops: Vec<_> = t.iter().collect();
        ops.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        let by: Vec<String> = ops
            .iter()
            .map(|(op, o)| format!("{op} {} ({:.0})", o.count, o.mean_us()))
            .collect();
        let total: u64 = t.values().map(|o| o.count).sum();
        let us: f64 = t.values().map(|o| o.total_us).sum();
        let mean = if total == 0 { 0.0 } else { us / total as f64 };
        let _ = writeln!(
            s,
            "| {} | {} | {total} | {mean:.0} | {} |",
            w.name(),
            c.name(),
            by.join(", ")
        );
    }
    let _ = writeln!(s);
}

fn table(s: &mut String, cfg: Config, results: &Results, contenders: &[Contender], wls: &[Wl]) {
    let _ = writeln!(s, "### {}\n", match cfg {
        Config::Root => "Root: every contender mounted by root (stratafs with passthrough)",
        Config::Rootless => "Rootless: FUSE daemons as an ordinary user through fusermount3, the kernel in a user namespace",
    });
    let _ = writeln!(
        s,
        "| workload | contender | wall s (median) | × kernel | × fuse-overlayfs | × fuse-overlayfs-2 | daemon CPU s | daemon peak RSS MiB | rounds (s) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---|");
    let mut mismatches = Vec::new();
    let mut failures = Vec::new();
    for &w in wls {
        let wall_of = |c| summarize(results, w, c).and_then(|r| r.wall);
        let kw = wall_of(Contender::Kernel);
        let fw = wall_of(Contender::FuseOverlayfs);
        let f2w = wall_of(Contender::FuseOverlayfs2);
        for &c in contenders {
            let Some(r) = summarize(results, w, c) else {
                continue;
            };
            let mut flag = "";
            if let Some(m) = mismatch(results, w, c) {
                flag = " ⚠";
                mismatches.push(format!("- {} on {}: {m}", w.name(), c.name()));
            }
            for e in &r.failures {
                failures.push(format!("- {} on {}: {e}", w.name(), c.name()));
            }
            let wall = match r.wall {
                Some(v) if r.failures.is_empty() => fmt_secs(v),
                Some(v) => format!("{} ({} failed)", fmt_secs(v), r.failures.len()),
                None => "FAILED".into(),
            };
            let rounds: Vec<String> = r.walls.iter().map(|v| fmt_secs(*v)).collect();
            let (cpu, rss) = if c == Contender::Kernel {
                ("(in kernel)".to_string(), "—".to_string())
            } else {
                (fmt_opt(r.cpu, 2), fmt_opt(r.rss_mib, 1))
            };
            let name = if c == Contender::Kernel {
                kernel_label(cfg)
            } else {
                c.name()
            };
            let _ = writeln!(
                s,
                "| {} | {name}{flag} | {wall} | {} | {} | {} | {cpu} | {rss} | {} |",
                w.name(),
                fmt_opt(ratio(r.wall, kw), 2),
                fmt_opt(ratio(r.wall, fw), 2),
                fmt_opt(ratio(r.wall, f2w), 2),
                rounds.join(" ")
            );
        }
    }
    let _ = writeln!(s);
    let issue = match cfg {
        Config::Root => 5,
        Config::Rootless => 17,
    };
    let _ = writeln!(
        s,
        "#### stratafs against the targets of issue {issue} ({})\n",
        cfg.name()
    );
    let _ = writeln!(s, "| workload | target | stratafs | met |");
    let _ = writeln!(s, "|---|---|---:|---|");
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    for &w in wls {
        let sw = summarize(results, w, Contender::Stratafs).and_then(|r| r.wall);
        for t in targets(cfg, w) {
            let ow = summarize(results, w, t.against).and_then(|r| r.wall);
            if let Some(r) = ratio(sw, ow) {
                let against = if t.against == Contender::Kernel {
                    kernel_label(cfg)
                } else {
                    t.against.name()
                };
                let _ = writeln!(
                    s,
                    "| {} | ≤ {}× {against} | {r:.2}× | {} |",
                    w.name(),
                    t.max,
                    yes(r <= t.max)
                );
            }
        }
    }
    if cfg == Config::Root {
        for &c in contenders {
            let one = summarize(results, Wl::Walk1, c).and_then(|r| r.wall);
            let two = summarize(results, Wl::Walk2, c).and_then(|r| r.wall);
            if let Some(r) = ratio(two, one) {
                let _ = writeln!(
                    s,
                    "| walk-2proc / walk-1proc ({}) | well under 2× (≤ 1.5×) | {r:.2}× | {} |",
                    c.name(),
                    if c == Contender::Stratafs {
                        yes(r <= 1.5)
                    } else {
                        "(reference)"
                    }
                );
            }
        }
        for w in [Wl::StatCold, Wl::Stat1M] {
            let Some(r) = summarize(results, w, Contender::Stratafs) else {
                continue;
            };
            let entries: u64 = r
                .checks
                .first()
                .and_then(|c| c.split_whitespace().next())
                .and_then(|e| e.trim_start_matches("entries=").parse().ok())
                .unwrap_or_default();
            let met = match r.rss_mib {
                Some(m) if entries >= 1_000_000 => yes(m <= 64.0),
                Some(_) => "(fewer entries)",
                None => "not measured",
            };
            let _ = writeln!(
                s,
                "| {} daemon peak RSS | ≤ 64 MiB after 1,000,000 entries | {} MiB after {entries} entries | {met} |",
                w.name(),
                fmt_opt(r.rss_mib, 1)
            );
        }
    }
    let _ = writeln!(s);
    if !mismatches.is_empty() {
        let _ = writeln!(
            s,
            "#### Results that differ from the kernel's (⚠, {})\n",
            cfg.name()
        );
        for m in &mismatches {
            let _ = writeln!(s, "{m}");
        }
        let _ = writeln!(s);
    }
    if !failures.is_empty() {
        let _ = writeln!(s, "#### Failures ({})\n", cfg.name());
        for m in &failures {
            let _ = writeln!(s, "{m}");
        }
        let _ = writeln!(s);
    }
}

/// How contender `c`'s checks of workload `w` differ from the kernel's, if they do.
fn mismatch(results: &Results, w: Wl, c: Contender) -> Option<String> {
    let kc = summarize(results, w, Contender::Kernel)?
        .checks
        .first()
        .cloned()?;
    let r = summarize(results, w, c)?;
    let chk = r.checks.iter().find(|chk| **chk != kc)?;
    Some(format!("got `{chk}`, kernel `{kc}`"))
}

/// What makes the run fail: a sample of stratafs or the kernel that failed, and a stratafs
/// result that differs from the kernel's. (The peers' are reported, not judged.)
pub fn problems(all: &AllResults, wls: &[Wl]) -> Vec<String> {
    let mut out = Vec::new();
    for (&cfg, results) in all {
        for &w in wls {
            for c in [Contender::Kernel, Contender::Stratafs] {
                let Some(r) = summarize(results, w, c) else {
                    continue;
                };
                for e in &r.failures {
                    out.push(format!(
                        "{} on {} ({}): {e}",
                        w.name(),
                        c.name(),
                        cfg.name()
                    ));
                }
                if c == Contender::Stratafs {
                    if let Some(m) = mismatch(results, w, c) {
                        out.push(format!(
                            "{} on {} ({}): {m}",
                            w.name(),
                            c.name(),
                            cfg.name()
                        ));
                    }
                }
            }
        }
    }
    out
}

pub fn json(
    ctx: &Ctx,
    all: &AllResults,
    contenders: &[Contender],
    wls: &[Wl],
    meta: &Meta,
) -> String {
    let mut rows: Vec<Value> = Vec::new();
    for (&cfg, results) in all {
        for &w in wls {
            let wall_of = |c| summarize(results, w, c).and_then(|r| r.wall);
            let kw = wall_of(Contender::Kernel);
            let fw = wall_of(Contender::FuseOverlayfs);
            let f2w = wall_of(Contender::FuseOverlayfs2);
            for &c in contenders {
                let Some(r) = summarize(results, w, c) else {
                    continue;
                };
                let busy: Vec<f64> = results[&(w, c)]
                    .iter()
                    .filter_map(|r| r.as_ref().ok().map(|s| s.busy))
                    .collect();
                rows.push(json!({
                    "config": cfg.name(),
                    "workload": w.name(),
                    "contender": c.name(),
                    "wall_s": r.walls,
                    "busy_before": busy,
                    "median_s": r.wall,
                    "ratio_kernel": ratio(r.wall, kw),
                    "ratio_fuse_overlayfs": ratio(r.wall, fw),
                    "ratio_fuse_overlayfs_2": ratio(r.wall, f2w),
                    "daemon_cpu_s": r.cpu,
                    "daemon_peak_rss_mib": r.rss_mib,
                    "checks": r.checks,
                    "failures": r.failures,
                    "requests": r.requests,
                    "traced": r.traced,
                }));
            }
        }
    }
    let machine: serde_json::Map<String, Value> = meta
        .machine
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let doc = json!({
        "data_version": DATA_VERSION,
        "size": ctx.size.name,
        "date": meta.date,
        "command": meta.command,
        "rounds": meta.rounds,
        "elapsed_s": meta.elapsed,
        "loadavg_start": meta.load_start,
        "loadavg_end": meta.load_end,
        "dataset": meta.dataset.trim(),
        "machine": machine,
        "results": rows,
    });
    let mut out = serde_json::to_string_pretty(&doc).expect("serialize the report");
    out.push('\n');
    out
}
