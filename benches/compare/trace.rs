//! The requests the kernel sends a FUSE daemon, counted by the kernel itself: the
//! `fuse:fuse_request_send` and `fuse:fuse_request_end` tracepoints (Linux 6.15+), recorded
//! in a tracefs instance of the bench's own during the timed part of a workload's last round.
//! This counts every FUSE contender alike (fuse-overlayfs has no `stats`), and gives each
//! request's time from the kernel's sending it to the daemon's answer.
//!
//! Only requests with a reply are traced: FORGET and BATCH_FORGET are not (they never wait).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Requests of one kind: how many were sent in the timed part, and their total time from
/// sending to the daemon's answer (in µs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct OpTrace {
    pub count: u64,
    pub total_us: f64,
}

impl OpTrace {
    /// Mean time from sending to answer, µs.
    pub fn mean_us(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.total_us / self.count as f64
        }
    }
}

/// Per operation (`lookup`, `getattr`, ...: the opcode's name without `FUSE_`, lower case).
pub type Traced = BTreeMap<String, OpTrace>;

/// A tracefs instance recording the FUSE request tracepoints.
#[derive(Debug)]
pub struct Tracer {
    dir: PathBuf,
}

impl Tracer {
    /// The instance, or why there is none (no tracefs, or a kernel without the FUSE
    /// tracepoints).
    pub fn new() -> Result<Tracer, String> {
        let root = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("instances").is_dir())
            .ok_or("no tracefs mounted")?;
        if !root.join("events/fuse/fuse_request_send").is_dir() {
            return Err("this kernel has no fuse:fuse_request_send tracepoint".into());
        }
        // Instances of runs that were killed (a run removes its own when it ends).
        for e in fs::read_dir(root.join("instances"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("stratafs-compare-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = fs::remove_dir(e.path());
                }
            }
        }
        let dir = root
            .join("instances")
            .join(format!("stratafs-compare-{}", std::process::id()));
        if !dir.exists() {
            fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let t = Tracer { dir };
        t.write("tracing_on", "0")?;
        // Timestamps in CLOCK_MONOTONIC seconds: the clock the timed part is read with.
        t.write("trace_clock", "mono")?;
        // Room for the biggest workload's requests (two events each) on one CPU.
        t.write("buffer_size_kb", "65536")?;
        for ev in ["fuse_request_send", "fuse_request_end"] {
            t.write(&format!("events/fuse/{ev}/enable"), "1")?;
        }
        Ok(t)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        fs::write(self.dir.join(file), value)
            .map_err(|e| format!("{}: {e}", self.dir.join(file).display()))
    }

    /// Starts recording the requests of FUSE connection `conn` (see [`connection`]),
    /// dropping what was recorded before.
    pub fn arm(&self, conn: u32) -> Result<(), String> {
        self.write("tracing_on", "0")?;
        for ev in ["fuse_request_send", "fuse_request_end"] {
            self.write(
                &format!("events/fuse/{ev}/filter"),
                &format!("connection == {conn}"),
            )?;
        }
        self.write("trace", "")?;
        self.write("tracing_on", "1")
    }

    /// Stops recording and returns the requests sent between monotonic times `from` and
    /// `to` (seconds); an error when the buffer lost events.
    pub fn collect(&self, from: f64, to: f64) -> Result<Traced, String> {
        self.write("tracing_on", "0")?;
        let text = fs::read_to_string(self.dir.join("trace"))
            .map_err(|e| format!("{}: {e}", self.dir.join("trace").display()))?;
        parse(&text, from, to)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.write("tracing_on", "0");
        for ev in ["fuse_request_send", "fuse_request_end"] {
            let _ = self.write(&format!("events/fuse/{ev}/enable"), "0");
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The FUSE connection of the mount at `mnt` as the tracepoints name it: the kernel's
/// `dev_t` of its superblock, from the `major:minor` of the mount table (read there because
/// a rootless FUSE mount refuses even root a `stat`).
pub fn connection(mnt: &Path) -> Option<u32> {
    let table = fs::read_to_string("/proc/self/mountinfo").ok()?;
    // The table shows canonical paths; the mount point itself is not looked at.
    let mnt = fs::canonicalize(mnt.parent()?).ok()?.join(mnt.file_name()?);
    let want = mnt.to_str()?;
    table.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        if f.get(4).copied() != Some(want) {
            return None;
        }
        let (maj, min) = f.get(2)?.split_once(':')?;
        let (maj, min): (u32, u32) = (maj.parse().ok()?, min.parse().ok()?);
        Some((maj << 20) | min)
    })
}

/// Now, in CLOCK_MONOTONIC seconds (the tracer's clock).
pub fn mono_now() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// The requests in the text of a tracefs `trace` file that were sent between `from` and
/// `to`, with their times to the answer.
pub fn parse(text: &str, from: f64, to: f64) -> Result<Traced, String> {
    let mut sent: HashMap<u64, (String, f64)> = HashMap::new();
    let mut out = Traced::new();
    for line in text.lines() {
        if let Some(counts) = line.strip_prefix("# entries-in-buffer/entries-written:") {
            let n: Vec<&str> = counts.split_whitespace().take(1).collect();
            if let Some((kept, written)) = n.first().and_then(|s| s.split_once('/')) {
                if kept != written {
                    return Err(format!(
                        "the trace buffer lost events ({kept} of {written} kept)"
                    ));
                }
            }
            continue;
        }
        let Some((head, body)) = line
            .split_once(": fuse_request_send: ")
            .map(|(h, b)| (h, (true, b)))
            .or_else(|| {
                line.split_once(": fuse_request_end: ")
                    .map(|(h, b)| (h, (false, b)))
            })
        else {
            continue;
        };
        let Some(ts) = head.rsplit(' ').next().and_then(|t| t.parse::<f64>().ok()) else {
            continue;
        };
        let (is_send, body) = body;
        let Some(unique) = field(body, "req").and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        if is_send {
            if ts < from || ts > to {
                continue;
            }
            let op = body
                .split_once('(')
                .and_then(|(_, r)| r.split_once(')'))
                .map(|(name, _)| name.trim_start_matches("FUSE_").to_ascii_lowercase())
                .unwrap_or_else(|| "unknown".into());
            out.entry(op.clone()).or_default().count += 1;
            sent.insert(unique, (op, ts));
        } else if let Some((op, t0)) = sent.remove(&unique) {
            if let Some(o) = out.get_mut(&op) {
                o.total_us += (ts - t0) * 1e6;
            }
        }
    }
    Ok(out)
}

/// The value after `key ` in a tracepoint's text.
fn field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let mut it = body.split_whitespace();
    while let Some(w) = it.next() {
        if w == key {
            return it.next();
        }
    }
    None
}
