//! Side-by-side benchmark of the kernel's overlayfs, fuse-overlayfs (1.10 from the
//! distribution, 2.0.0 from crates.io) and stratafs, as root and rootless (issues 5 and 17).
//!
//! ```sh
//! cargo bench --bench compare              # full size, root and rootless, 3 interleaved rounds
//! cargo bench --bench compare -- --quick   # CI-sized smoke run
//! ```
//!
//! Needs root (kernel overlayfs mounts, `drop_caches`, the bench user), `/dev/fuse`,
//! `fusermount3`, `setpriv`, `unshare`, `find`, `tar`, `rm` and `mv`; `fuse-overlayfs` is
//! measured when it is installed, fuse-overlayfs 2.0.0 when `FUSE_OVERLAYFS2_BIN` names it or
//! `cargo install` can put it under `target/bench-tools/` (once). Rootless, the FUSE daemons
//! and the workloads run as the user `stratafs-bench` (made with `useradd` when missing) and
//! the kernel's overlayfs is mounted in that user's own user namespace with `userxattr`.
//! The data set is generated once under `target/bench-data/` and reused; each workload runs
//! on a fresh mount with a fresh upper and work directory. The report goes to stdout and to
//! `target/bench-results/compare{,-quick}.{md,json}`; a full run also renders
//! `docs/perf-compare.png` (a quick one `target/bench-results/perf-compare-quick.png`).
//! `docs/PERFORMANCE.md` explains the workloads and how to read the numbers.
//!
//! Modules: `dataset` (the layers), `mounts` (contenders, mounting as root and rootless),
//! `workloads` (what is timed and checked), `worker` (the rootless side), `report` (markdown
//! and JSON), `trace` (the requests the kernel sends each FUSE daemon, from its FUSE
//! tracepoints, in the last round), `chart`. Mount-table helpers come from
//! `tests/common/base.rs`.
//!
//! The run fails (exit 1) when a sample of stratafs or the kernel failed or stratafs's result
//! differs from the kernel's; under `CI=true` a missing facility (root, `/dev/fuse`) fails it
//! too.
//!
//! Extra flags (after `--`): `--rounds N`, `--only w1,w2,...` (workload names),
//! `--contenders kernel,fuse-overlayfs,fuse-overlayfs-2,stratafs`, `--configs root,rootless`,
//! `--no-chart`, `--nice N` (default -15: the bench, its tools and the daemons run ahead of
//! other work on the machine; 0 leaves it). `STRATAFS_BIN` overrides the stratafs binary
//! (default: the one cargo built for this bench).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/common/base.rs"]
mod base;
mod chart;
mod dataset;
mod mounts;
mod report;
mod trace;
mod worker;
mod workloads;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use dataset::{ensure_owner, generate, million_layer, DATA_VERSION, FULL, LAYERS, QUICK};
use mounts::{
    bench_user, clear_leftovers, empty_trash, guarded, note_freed_inodes, proc_hwm_kib,
    requests_between, served_requests, stats_table, trash_dir, wait_for_freed_inodes, Config,
    Contender, Ctx, Mount, CONTENDERS,
};
use report::{fmt_opt, machine, sh, AllResults, Meta, Sample};
use trace::Tracer;
use workloads::{loadavg, prepare_host, prepare_mount, settle, timed, verify, Job, Wl, WORKLOADS};

/// One sample: a fresh mount, the host prepared, the workload timed and checked, unmounted.
/// With `tracer`, the requests the kernel sends a FUSE daemon in the timed part are traced.
fn run_one(
    ctx: &Ctx,
    cfg: Config,
    w: Wl,
    c: Contender,
    tracer: Option<&Tracer>,
) -> Result<Sample, String> {
    let errlog = ctx.run.join(cfg.name()).join(c.name()).join("workload.err");
    let layers = if w == Wl::Stat1M {
        std::slice::from_ref(&ctx.million)
    } else {
        &ctx.layers[..]
    };
    let mut m = Mount::new(ctx, cfg, c, layers, w.feature_opts(cfg, c))?;
    prepare_host(ctx, w)?;
    let job = Job::new(ctx, w, &m.mnt, &m.upper);
    let label = format!("{} on {} ({})", w.name(), c.name(), cfg.name());
    let stats = (c == Contender::Stratafs).then_some(ctx.stratafs.as_path());
    let served = || stats.and_then(|b| served_requests(b, &m.mnt));
    // The tracer and the mount's FUSE connection (the kernel's overlayfs sends no FUSE
    // requests).
    let tracing = match tracer.filter(|_| c != Contender::Kernel) {
        Some(t) => Some((
            t,
            trace::connection(&m.mnt)
                .ok_or_else(|| format!("{label}: no FUSE connection in the mount table"))?,
        )),
        None => None,
    };
    let arm = || tracing.map_or(Ok(()), |(t, conn)| t.arm(conn));
    let (busy, wall, cpu, check, more, requests, stats_text, window) = match cfg {
        Config::Root => {
            prepare_mount(&job, &errlog)?;
            let busy = settle(ctx.size.settle);
            let req0 = served();
            let cpu0 = m.cpu(ctx);
            arm()?;
            let t = Instant::now();
            let t0 = trace::mono_now();
            let pids = m.pid.into_iter().collect();
            let check = guarded(pids, ctx.size.limit, &label, || timed(&job, &errlog))?;
            let wall = t.elapsed().as_secs_f64();
            let t1 = trace::mono_now();
            let cpu1 = m.cpu(ctx);
            let requests = requests_between(req0, served());
            let stats_text = stats.and_then(|b| stats_table(b, &m.mnt));
            let more = verify(&job)?;
            let cpu = match (cpu0, cpu1) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            (busy, wall, cpu, check, more, requests, stats_text, (t0, t1))
        }
        Config::Rootless => {
            let busy = settle(ctx.size.settle);
            // (The worker's preparation is traced too, and left out by the times it reports.)
            arm()?;
            let child = worker::spawn(ctx, &m, &job)?;
            let mut pids: Vec<u32> = m.pid.into_iter().collect();
            pids.push(child.id());
            let r = guarded(pids, ctx.size.limit, &label, || worker::collect(child))?;
            let window = (r.t0, r.t1);
            (
                busy, r.wall, r.cpu, r.check, r.more, r.requests, r.stats, window,
            )
        }
    };
    let traced = tracing
        .map(|(t, _)| t.collect(window.0, window.1))
        .transpose()
        .map_err(|e| format!("{label}: tracing its requests: {e}"))?;
    if let Some(text) = stats_text {
        // The last round's table stays: what `stratafs stats` showed after the workload.
        let dir = ctx.results.join(format!("stats-{}", ctx.size.name));
        let _ = fs::create_dir_all(&dir);
        let _ = fs::write(dir.join(format!("{}-{}.txt", cfg.name(), w.name())), text);
    }
    // Read just before unmounting: the whole life of the mount.
    let rss_kib = m.pid.and_then(proc_hwm_kib);
    m.unmount()?;
    drop(m);
    let check = [check, more]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Sample {
        busy,
        wall,
        cpu,
        rss_kib,
        check,
        requests,
        traced,
    })
}

/// fuse-overlayfs 2.0.0: `FUSE_OVERLAYFS2_BIN`, else `target/bench-tools/`, installed there
/// with `cargo install fuse-overlayfs@2.0.0` the first time.
fn fuse_overlayfs2(target: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FUSE_OVERLAYFS2_BIN") {
        return Some(PathBuf::from(p));
    }
    let root = target.join("bench-tools/fuse-overlayfs-2.0.0");
    let bin = root.join("bin/fuse-overlayfs");
    if bin.exists() {
        return Some(bin);
    }
    eprintln!(
        "compare: installing fuse-overlayfs 2.0.0 into {} (once)",
        root.display()
    );
    let st = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", "--quiet", "--root"])
        .arg(&root)
        .arg("fuse-overlayfs@2.0.0")
        .env("CARGO_TARGET_DIR", target.join("bench-tools/build"))
        .status();
    match st {
        Ok(s) if s.success() && bin.exists() => Some(bin),
        other => {
            eprintln!(
                "compare: cannot install fuse-overlayfs 2.0.0 ({other:?}); measuring without it"
            );
            None
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--worker") {
        worker::main(args.get(i + 1).map(String::as_str).unwrap_or_default());
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches` runs bench targets without --bench: nothing to test here.
        println!("compare: not run (run it with `cargo bench --bench compare`)");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let mut size = if quick { QUICK } else { FULL };
    let mut only: Option<Vec<String>> = None;
    let mut contenders: Vec<Contender> = CONTENDERS.to_vec();
    let mut configs = vec![Config::Root, Config::Rootless];
    let mut chart = true;
    let mut nice = -15;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => size.rounds = it.next().and_then(|n| n.parse().ok()).expect("--rounds N"),
            "--only" => {
                only = Some(
                    it.next()
                        .expect("--only LIST")
                        .split(',')
                        .map(str::to_string)
                        .collect(),
                )
            }
            "--contenders" => {
                let want: Vec<String> = it
                    .next()
                    .expect("--contenders LIST")
                    .split(',')
                    .map(str::to_string)
                    .collect();
                contenders.retain(|c| want.iter().any(|w| w == c.name()));
            }
            "--configs" => {
                let want: Vec<String> = it
                    .next()
                    .expect("--configs LIST")
                    .split(',')
                    .map(str::to_string)
                    .collect();
                configs.retain(|c| want.iter().any(|w| w == c.name()));
            }
            "--no-chart" => chart = false,
            "--nice" => nice = it.next().and_then(|n| n.parse().ok()).expect("--nice N"),
            _ => {}
        }
    }
    let wls: Vec<Wl> = WORKLOADS
        .iter()
        .copied()
        .filter(|w| {
            only.as_ref()
                .is_none_or(|o| o.iter().any(|n| n == w.name()))
        })
        .collect();

    // Under CI=true a missing facility fails the run (`base::facility`).
    if !base::facility(
        rustix::process::geteuid().is_root(),
        "root (kernel overlayfs mounts, drop_caches)",
    ) || !base::facility(base::has_fuse(), "/dev/fuse")
    {
        println!("compare: SKIPPED");
        return;
    }
    if contenders.contains(&Contender::FuseOverlayfs)
        && Command::new("fuse-overlayfs")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("compare: fuse-overlayfs is not installed; measuring without it");
        contenders.retain(|c| *c != Contender::FuseOverlayfs);
    }
    // Other work on a shared machine is the main source of noise: run the contenders, the
    // tools and the daemons (which inherit it) at a higher priority than the rest.
    if nice != 0 {
        if let Err(e) = rustix::process::setpriority_process(None, nice) {
            eprintln!("compare: cannot set nice {nice}: {e}");
        }
    }
    let nice_now = rustix::process::getpriority_process(None).unwrap_or(0);
    let user = if configs.contains(&Config::Rootless) {
        match bench_user() {
            Ok(u) => Some(u),
            Err(e) => {
                eprintln!("compare: {e}; measuring root only");
                configs.retain(|c| *c != Config::Rootless);
                None
            }
        }
    } else {
        None
    };
    // The rootless daemons open /dev/fuse themselves: open to every user (as distributions
    // ship it) while the run goes on, as the tests do.
    let fuse_open = configs
        .contains(&Config::Rootless)
        .then(base::DevFuseOpen::new);
    let started = Instant::now();
    let load_start = loadavg();

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    let data = target.join("bench-data").join(format!(
        "compare-{DATA_VERSION}-{}-{:08x}",
        size.name,
        size.shape_hash()
    ));
    if !data.join("COMPLETE").exists() {
        // Data sets of an older version or shape of this size are stale.
        for e in fs::read_dir(target.join("bench-data"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            let same_size =
                n.starts_with("compare-") && n.split(['-', '.']).any(|p| p == size.name);
            if same_size && e.path() != data {
                eprintln!("compare: removing stale data set {}", e.path().display());
                let _ = fs::remove_dir_all(e.path());
            }
        }
        eprintln!(
            "compare: generating the {} data set in {} (once)",
            size.name,
            data.display()
        );
        fs::create_dir_all(data.parent().unwrap()).unwrap();
        generate(&data, &size).expect("generating the data set");
        // (It deleted the tarball's source: see `wait_for_freed_inodes` below.)
        note_freed_inodes(&trash_dir(&target.join("bench-run"))).expect("sync");
    }
    if let Some((uid, gid)) = user {
        // The rootless contenders read every layer file, mode 0600 ones included.
        ensure_owner(&data.join("layers"), uid, gid).expect("chown the data set");
    }
    let dataset = fs::read_to_string(data.join("COMPLETE")).unwrap_or_default();
    eprintln!("compare: {}", dataset.trim());

    let run = target.join("bench-run");
    // Leftovers of an interrupted run.
    clear_leftovers(&run);
    let trash = trash_dir(&run);
    empty_trash(&trash).expect("empty the trash of an interrupted run");
    wait_for_freed_inodes(&trash);
    fs::create_dir_all(run.join("bin")).unwrap();
    // The rootless worker is this binary, copied for the same reason as stratafs below.
    let worker = run.join("bin/compare-worker");
    let _ = fs::remove_file(&worker);
    fs::copy(std::env::current_exe().expect("current exe"), &worker).expect("copy the bench");
    let fuse_overlayfs2 = if contenders.contains(&Contender::FuseOverlayfs2) {
        fuse_overlayfs2(&target)
    } else {
        None
    };
    if fuse_overlayfs2.is_none() {
        contenders.retain(|c| *c != Contender::FuseOverlayfs2);
    }
    // A private copy, so that a rebuild during the run cannot swap the binary under us.
    let built = std::env::var_os("STRATAFS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_stratafs")));
    let stratafs = run.join("bin/stratafs");
    if contenders.contains(&Contender::Stratafs) {
        let _ = fs::remove_file(&stratafs);
        fs::copy(&built, &stratafs)
            .unwrap_or_else(|e| panic!("copy {} (cargo bench builds it): {e}", built.display()));
    }
    let ticks: f64 = sh("getconf", &["CLK_TCK"]).parse().unwrap_or(100.0);
    let ctx = Ctx {
        size,
        layers: (0..LAYERS)
            .map(|i| data.join("layers").join(format!("l{i}")))
            .collect(),
        tar: data.join("untar.tar"),
        million: million_layer(&target, &size, &wls),
        data,
        run,
        results: target.join("bench-results"),
        stratafs,
        fuse_overlayfs2,
        worker,
        user,
        ticks,
    };

    let tracer = match Tracer::new() {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("compare: not tracing the FUSE requests: {e}");
            None
        }
    };
    // Taken now: the tree may change while the run goes on.
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let machine_desc = machine(&ctx);
    let mut results: AllResults = BTreeMap::new();
    for round in 0..ctx.size.rounds {
        for &cfg in &configs {
            for &w in &wls {
                // stat-1m is for the daemon's memory, measured as root.
                if cfg == Config::Rootless && w == Wl::Stat1M {
                    continue;
                }
                for i in 0..contenders.len() {
                    // Rotate the order each round so that drift and order effects hit all alike.
                    let c = contenders[(i + round) % contenders.len()];
                    // The last round also traces the requests the daemons get.
                    let trace = tracer.as_ref().filter(|_| round + 1 == ctx.size.rounds);
                    let r = run_one(&ctx, cfg, w, c, trace);
                    match &r {
                        Ok(s) => eprintln!(
                        "[round {}/{}] {:<8} {:<13} {:<16} {:>9.3} s  cpu {:>7}  rss {:>7} MiB  \
                         (machine {:.0}% busy before)",
                        round + 1,
                        ctx.size.rounds,
                        cfg.name(),
                        w.name(),
                        c.name(),
                        s.wall,
                        fmt_opt(s.cpu, 2),
                        fmt_opt(s.rss_kib.map(|k| k as f64 / 1024.0), 1),
                        s.busy * 100.0
                    ),
                        Err(e) => eprintln!(
                            "[round {}/{}] {:<8} {:<13} {:<16} FAILED: {e}",
                            round + 1,
                            ctx.size.rounds,
                            cfg.name(),
                            w.name(),
                            c.name()
                        ),
                    }
                    results
                        .entry(cfg)
                        .or_default()
                        .entry((w, c))
                        .or_default()
                        .push(r);
                }
            }
        }
    }

    let mut cmd = String::from("cargo bench --bench compare");
    let extra: Vec<&String> = args.iter().filter(|a| *a != "--bench").collect();
    if !extra.is_empty() {
        cmd.push_str(" --");
        for a in extra {
            cmd.push(' ');
            cmd.push_str(a);
        }
    }
    if let Err(e) = empty_trash(&trash) {
        eprintln!("compare: emptying {}: {e}", trash.display());
    }
    let meta = Meta {
        nice: nice_now,
        date,
        load_start,
        load_end: loadavg(),
        machine: machine_desc,
        dataset,
        rounds: ctx.size.rounds,
        elapsed: started.elapsed().as_secs_f64(),
        command: cmd,
    };
    let md = report::markdown(&ctx, &results, &contenders, &wls, &meta);
    println!("{md}");
    let out = target.join("bench-results");
    fs::create_dir_all(&out).unwrap();
    let stem = if quick { "compare-quick" } else { "compare" };
    fs::write(out.join(format!("{stem}.md")), &md).unwrap();
    fs::write(
        out.join(format!("{stem}.json")),
        report::json(&ctx, &results, &contenders, &wls, &meta),
    )
    .unwrap();
    if chart {
        let png = if quick || only.is_some() {
            out.join("perf-compare-quick.png")
        } else {
            root.join("docs/perf-compare.png")
        };
        chart::render_chart(&png, &ctx, &results, &contenders, &wls);
        println!("chart: {}", png.display());
    }
    println!(
        "results: {}/{stem}.{{md,json}}; whole run {:.1} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    // (Before the exit below, which runs no destructors: the tracefs instance goes and
    // /dev/fuse gets its mode back.)
    drop(tracer);
    drop(fuse_open);
    let problems = report::problems(&results, &wls);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("compare: {p}");
        }
        eprintln!(
            "compare: FAILED: {} sample(s) of stratafs or the kernel failed or differ from the kernel's",
            problems.len()
        );
        std::process::exit(1);
    }
}
