//! The rootless worker: the bench's own binary run again as the bench user
//! (`compare --worker JSON`), to prepare the mount, time the workload and check it where only
//! that user may look (a FUSE mount without `allow_other` refuses even root). For the kernel's
//! overlayfs it runs under `unshare -Urm` and mounts the overlay itself with `userxattr`; the
//! mount ends with the worker's mount namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::mounts::{
    proc_cpu, requests_between, served_requests, stats_table, Contender, Ctx, Mount,
};
use crate::trace::mono_now;
use crate::workloads::{prepare_mount, timed, verify, Job};

/// What the bench hands the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub job: Job,
    /// `-o` options of a kernel overlayfs mount to make first (in the worker's namespace).
    pub kernel_opts: Option<String>,
    /// The FUSE daemon, whose CPU time the worker reads around the timed part.
    pub daemon: Option<u32>,
    pub ticks: f64,
    /// The stratafs binary, whose `stats` the worker reads around the timed part (stratafs
    /// only).
    #[serde(default)]
    pub stats: Option<PathBuf>,
}

/// What the worker hands back on stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub wall: f64,
    pub cpu: Option<f64>,
    pub check: String,
    pub more: String,
    /// Requests the daemon served during the timed part, per operation (stratafs only).
    #[serde(default)]
    pub requests: Option<BTreeMap<String, u64>>,
    /// `stratafs stats` right after the timed part (stratafs only).
    #[serde(default)]
    pub stats: Option<String>,
    /// Start and end of the timed part, CLOCK_MONOTONIC seconds (what the tracer records).
    #[serde(default)]
    pub t0: f64,
    #[serde(default)]
    pub t1: f64,
}

/// `compare --worker JSON`: runs the order, prints a `Result<Report, String>` as JSON.
pub fn main(arg: &str) {
    let out: Result<Report, String> = serde_json::from_str::<Order>(arg)
        .map_err(|e| format!("worker: bad order: {e}"))
        .and_then(|o| run(&o));
    println!("{}", serde_json::to_string(&out).expect("serialize report"));
}

fn run(o: &Order) -> Result<Report, String> {
    let errlog = std::env::temp_dir().join(format!("compare-worker-{}.err", std::process::id()));
    if let Some(opts) = &o.kernel_opts {
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", opts])
            .arg(&o.job.mnt)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "kernel (userns): mount failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let r = measure(o, &errlog);
    if o.kernel_opts.is_some() {
        let _ = Command::new("umount").arg(&o.job.mnt).status();
    }
    let _ = std::fs::remove_file(&errlog);
    let _ = std::fs::remove_file(errlog.with_extension("2"));
    r
}

fn measure(o: &Order, errlog: &Path) -> Result<Report, String> {
    prepare_mount(&o.job, errlog)?;
    let served = || {
        o.stats
            .as_deref()
            .and_then(|b| served_requests(b, &o.job.mnt))
    };
    let req0 = served();
    let cpu0 = o.daemon.and_then(|p| proc_cpu(p, o.ticks));
    let t = Instant::now();
    let t0 = mono_now();
    let check = timed(&o.job, errlog)?;
    let wall = t.elapsed().as_secs_f64();
    let t1 = mono_now();
    let cpu1 = o.daemon.and_then(|p| proc_cpu(p, o.ticks));
    let requests = requests_between(req0, served());
    let stats = o.stats.as_deref().and_then(|b| stats_table(b, &o.job.mnt));
    let more = verify(&o.job)?;
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(Report {
        wall,
        cpu,
        check,
        more,
        requests,
        stats,
        t0,
        t1,
    })
}

/// Starts the worker for `job` on `m` as the bench user (in a user namespace for the kernel).
pub fn spawn(ctx: &Ctx, m: &Mount, job: &Job) -> Result<std::process::Child, String> {
    let order = Order {
        job: job.clone(),
        kernel_opts: (m.c == Contender::Kernel).then(|| m.opts.clone()),
        daemon: m.pid,
        ticks: ctx.ticks,
        stats: (m.c == Contender::Stratafs).then(|| ctx.stratafs.clone()),
    };
    let arg = serde_json::to_string(&order).map_err(|e| e.to_string())?;
    let mut cmd = if order.kernel_opts.is_some() {
        let mut c = ctx.as_user(&PathBuf::from("unshare"))?;
        c.args(["-Urm", "--"]).arg(&ctx.worker);
        c
    } else {
        ctx.as_user(&ctx.worker)?
    };
    cmd.arg("--worker")
        .arg(arg)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().map_err(|e| format!("worker: {e}"))
}

/// Waits for the worker and reads its report.
pub fn collect(child: std::process::Child) -> Result<Report, String> {
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    match serde_json::from_str::<Result<Report, String>>(last) {
        Ok(r) => r,
        Err(_) => Err(format!(
            "worker {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}
