//! Live statistics of a daemon: counters and gauges kept with relaxed atomics where requests
//! run (no lock, nothing heavier than an atomic add on a request's path), and the
//! [`Snapshot`] they are read into, which `stratafs stats`, `stratafs-mount ls` and the
//! daemon's SIGUSR1 handler show.
//!
//! Requests are counted per FUSE opcode by the dispatcher ([`Requests::start`]), with their
//! latency in a histogram of power-of-two buckets (bucket `i` holds latencies of at most
//! 2^i ns); percentiles are read from it as the upper bound of the bucket they fall in.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The version of the snapshot's format ([`Snapshot::format`]); a reader refuses another.
pub const FORMAT: u32 = 1;

/// Histogram buckets: bucket `i` counts latencies in (2^(i-1), 2^i] ns, the last one
/// everything longer (2^39 ns is about 9 minutes).
pub const BUCKETS: usize = 40;

/// Opcode slots: FUSE opcodes below this are counted each on its own, the rest in the last.
const OP_SLOTS: usize = 64;

/// A relaxed counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Hits and misses of a cache.
#[derive(Debug, Default)]
pub struct HitCounter {
    hits: Counter,
    misses: Counter,
}

impl HitCounter {
    /// Counts one look-up: `hit` or not.
    #[inline]
    pub fn record(&self, hit: bool) {
        if hit {
            self.hits.add(1);
        } else {
            self.misses.add(1);
        }
    }

    /// (hits, misses).
    pub fn get(&self) -> (u64, u64) {
        (self.hits.get(), self.misses.get())
    }
}

/// The counters of one opcode.
#[derive(Debug)]
struct OpCounters {
    count: Counter,
    errors: Counter,
    total_ns: Counter,
    buckets: [Counter; BUCKETS],
}

impl Default for OpCounters {
    fn default() -> OpCounters {
        OpCounters {
            count: Counter::default(),
            errors: Counter::default(),
            total_ns: Counter::default(),
            buckets: std::array::from_fn(|_| Counter::default()),
        }
    }
}

/// The bucket of a latency of `ns` nanoseconds.
#[inline]
fn bucket(ns: u64) -> usize {
    // ceil(log2(ns)): 1 -> 0, 2 -> 1, 3..=4 -> 2, 5..=8 -> 3...
    let b = (64 - ns.saturating_sub(1).leading_zeros()) as usize;
    b.min(BUCKETS - 1)
}

/// Requests per FUSE opcode: counts, errors and latencies.
#[derive(Debug)]
pub struct Requests {
    ops: Box<[OpCounters]>,
}

impl Default for Requests {
    fn default() -> Requests {
        Requests {
            ops: (0..OP_SLOTS).map(|_| OpCounters::default()).collect(),
        }
    }
}

impl Requests {
    /// Starts timing a request of `opcode`; it is counted when the returned guard drops.
    #[inline]
    pub fn start(&self, opcode: u32) -> Timing<'_> {
        let slot = (opcode as usize).min(OP_SLOTS - 1);
        Timing {
            op: &self.ops[slot],
            start: Instant::now(),
            failed: false,
        }
    }

    /// The counters of every opcode that saw a request: (opcode, counts). Opcodes from
    /// `OP_SLOTS - 1` up are reported together under that one.
    pub fn snapshot(&self) -> Vec<(u32, OpCounts)> {
        self.ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.count.get() > 0)
            .map(|(i, o)| {
                let buckets = o.buckets.iter().map(Counter::get).collect();
                let counts = OpCounts {
                    count: o.count.get(),
                    errors: o.errors.get(),
                    total_ns: o.total_ns.get(),
                    buckets,
                };
                (i as u32, counts)
            })
            .collect()
    }
}

/// Times one request; counts it, its latency and whether it failed when dropped.
#[derive(Debug)]
pub struct Timing<'a> {
    op: &'a OpCounters,
    start: Instant,
    /// The request failed (answered with an error).
    pub failed: bool,
}

impl Drop for Timing<'_> {
    #[inline]
    fn drop(&mut self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let o = self.op;
        o.count.add(1);
        o.total_ns.add(ns);
        o.buckets[bucket(ns)].add(1);
        if self.failed {
            o.errors.add(1);
        }
    }
}

/// Copy-ups done.
#[derive(Debug, Default)]
pub struct CopyUps {
    count: Counter,
    bytes: Counter,
    ns: Counter,
}

impl CopyUps {
    /// Counts one copy-up of `bytes` bytes of data that took `took`.
    pub fn record(&self, bytes: u64, took: Duration) {
        self.count.add(1);
        self.bytes.add(bytes);
        self.ns
            .add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    /// What was counted.
    pub fn snapshot(&self) -> CopyUpStats {
        CopyUpStats {
            count: self.count.get(),
            bytes: self.bytes.get(),
            total_ns: self.ns.get(),
        }
    }
}

/// Raw counts of one opcode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    /// Requests answered (or taken, for those that get no answer).
    pub count: u64,
    /// Of them, answered with an error.
    pub errors: u64,
    /// Their latencies added up, in nanoseconds.
    pub total_ns: u64,
    /// The latency histogram: [`BUCKETS`] counts, bucket `i` for at most 2^i ns.
    pub buckets: Vec<u64>,
}

impl OpCounts {
    /// The latency below which a share `q` (0..=1) of the requests fall: the upper bound of
    /// the bucket holding that rank, in nanoseconds (0 with no requests).
    pub fn percentile_ns(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return 1u64 << i;
            }
        }
        1u64 << (self.buckets.len().max(1) - 1)
    }

    /// The mean latency in nanoseconds.
    pub fn mean_ns(&self) -> u64 {
        self.total_ns.checked_div(self.count).unwrap_or(0)
    }

    /// What happened between `earlier` and `self` (counts of the same opcode).
    pub fn since(&self, earlier: &OpCounts) -> OpCounts {
        OpCounts {
            count: self.count.saturating_sub(earlier.count),
            errors: self.errors.saturating_sub(earlier.errors),
            total_ns: self.total_ns.saturating_sub(earlier.total_ns),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }
}

/// One operation's line in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpStats {
    /// The operation (`lookup`, `create`...).
    pub op: String,
    /// The FUSE opcode.
    pub opcode: u32,
    /// Its counts.
    #[serde(flatten)]
    pub counts: OpCounts,
    /// Median latency, microseconds (a bucket's upper bound).
    pub p50_us: f64,
    /// 90th percentile, microseconds.
    pub p90_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Mean latency, microseconds.
    pub mean_us: f64,
}

impl OpStats {
    /// The line for `op` (opcode `opcode`) with `counts`.
    pub fn new(op: &str, opcode: u32, counts: OpCounts) -> OpStats {
        let us = |ns: u64| ns as f64 / 1000.0;
        OpStats {
            op: op.to_string(),
            opcode,
            p50_us: us(counts.percentile_ns(0.50)),
            p90_us: us(counts.percentile_ns(0.90)),
            p99_us: us(counts.percentile_ns(0.99)),
            mean_us: us(counts.mean_ns()),
            counts,
        }
    }
}

/// A cache's size and hit counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Entries held now.
    pub entries: u64,
    /// The most it holds (entries; names for the listing cache).
    pub capacity: u64,
    /// Look-ups answered from it.
    pub hits: u64,
    /// Look-ups it could not answer.
    pub misses: u64,
}

impl CacheStats {
    /// Hits as a share of look-ups, in percent (`None` before any).
    pub fn hit_rate(&self) -> Option<f64> {
        let all = self.hits + self.misses;
        (all > 0).then(|| self.hits as f64 * 100.0 / all as f64)
    }
}

/// The overlay's caches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caches {
    /// Directory fds (`O_PATH`), per (directory, layer).
    pub dir_fds: CacheStats,
    /// Merged directory listings (`entries`: listings; `names`: the names they hold).
    pub listings: CacheStats,
    /// The names those listings hold (`listings.capacity` is the most it keeps).
    pub listing_names: u64,
    /// Names known missing (`hits`: lookups answered without probing the layers).
    pub negative: CacheStats,
    /// `udba=notify`'s watches (absent without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watches: Option<WatchStats>,
}

/// The layer directories watched with `udba=notify`, and what the watches reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStats {
    /// The kernel interface watches are placed with: `fanotify`, or `inotify` (also used
    /// with fanotify for a directory it cannot mark).
    pub backend: String,
    /// Watches held now (one per directory watched).
    pub watches: u64,
    /// (directory, layer) pairs they watch for.
    pub watched: u64,
    /// The most watches placed at a time (`udba_watches=`).
    pub budget: u64,
    /// Events read.
    pub events: u64,
    /// Of them, the daemon's own changes (known with fanotify only), skipped.
    #[serde(default)]
    pub own: u64,
    /// Watches let go to stay within the budget (budget overflows).
    pub evicted: u64,
    /// Watches that could not be placed.
    pub failed: u64,
    /// Times the kernel's event queue overflowed (the whole mount is refreshed).
    pub lost: u64,
    /// Refreshes (invalidations of the names the events named) they caused.
    pub refreshes: u64,
}

/// Copy-ups done since the mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyUpStats {
    /// Objects copied up (directories included).
    pub count: u64,
    /// Bytes of file data copied.
    pub bytes: u64,
    /// Time spent copying, nanoseconds.
    pub total_ns: u64,
}

/// The node table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Nodes the kernel holds.
    pub nodes: u64,
    /// Past this the daemon asks the kernel to prune (`node_limit`).
    pub limit: u64,
    /// `FUSE_NOTIFY_PRUNE` messages sent.
    pub prune_notices: u64,
    /// Nodes named in them.
    pub pruned: u64,
}

/// Open handles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenStats {
    /// Open files.
    pub files: u64,
    /// Of them, in FUSE passthrough.
    pub passthrough: u64,
    /// Open directories.
    pub dirs: u64,
}

/// Everything `stratafs stats` shows: one reading of a live daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`FORMAT`].
    pub format: u32,
    /// The daemon's version.
    pub version: String,
    /// The daemon's pid.
    pub pid: u32,
    /// The mount point it serves.
    pub mountpoint: String,
    /// Seconds since it started serving.
    pub uptime_secs: f64,
    /// When this was taken: seconds since the epoch.
    pub taken_at: f64,
    /// The transport serving requests: `io_uring` or `/dev/fuse`.
    pub transport: String,
    /// io_uring queues (0 on `/dev/fuse`).
    pub uring_queues: u32,
    /// The kernel granted FUSE passthrough.
    pub passthrough: bool,
    /// The daemon's resident memory, bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// The node table.
    pub nodes: NodeStats,
    /// Open files and directories.
    pub open: OpenStats,
    /// The caches.
    pub caches: Caches,
    /// Copy-ups.
    pub copy_ups: CopyUpStats,
    /// Refreshes asked for (`stratafs refresh`).
    #[serde(default)]
    pub refreshes: u64,
    /// Requests per operation, in opcode order.
    pub requests: Vec<OpStats>,
}

/// The resident memory of this process in bytes, from `/proc/self/status` (0 if unknown).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// `n` bytes for people: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A latency in microseconds for people: `12µs`, `1.5ms`, `2.0s`.
pub fn human_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.1}ms", us / 1000.0)
    } else {
        format!("{:.1}s", us / 1_000_000.0)
    }
}

/// Seconds for people: `45s`, `12m05s`, `3h02m`, `2d04h`.
pub fn human_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn rate(c: &CacheStats) -> String {
    match c.hit_rate() {
        Some(r) => format!("{r:.1}% hits ({} of {})", c.hits, c.hits + c.misses),
        None => "no look-ups yet".to_string(),
    }
}

impl Snapshot {
    /// The readable table `stratafs stats` prints and SIGUSR1 logs.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "stratafs {} on {} (pid {}, up {})",
            self.version,
            self.mountpoint,
            self.pid,
            human_secs(self.uptime_secs)
        );
        let transport = if self.uring_queues > 0 {
            format!("{}, {} queues", self.transport, self.uring_queues)
        } else {
            self.transport.clone()
        };
        let rows: [(&str, String); 9] = [
            (
                "transport",
                format!(
                    "{transport}; passthrough {}",
                    if self.passthrough { "on" } else { "off" }
                ),
            ),
            (
                "memory",
                format!("{} resident", human_bytes(self.rss_bytes)),
            ),
            (
                "nodes",
                format!(
                    "{} (limit {}); {} pruned in {} notices; {} refreshes",
                    self.nodes.nodes,
                    self.nodes.limit,
                    self.nodes.pruned,
                    self.nodes.prune_notices,
                    self.refreshes
                ),
            ),
            (
                "open",
                format!(
                    "{} files ({} passthrough), {} directories",
                    self.open.files, self.open.passthrough, self.open.dirs
                ),
            ),
            (
                "dir fds",
                format!(
                    "{} of {} cached; {}",
                    self.caches.dir_fds.entries,
                    self.caches.dir_fds.capacity,
                    rate(&self.caches.dir_fds)
                ),
            ),
            (
                "listings",
                format!(
                    "{} cached ({} of {} names); {}",
                    self.caches.listings.entries,
                    self.caches.listing_names,
                    self.caches.listings.capacity,
                    rate(&self.caches.listings)
                ),
            ),
            (
                "negative",
                format!(
                    "{} of {} names cached; {}",
                    self.caches.negative.entries,
                    self.caches.negative.capacity,
                    rate(&self.caches.negative)
                ),
            ),
            (
                "copy-ups",
                format!(
                    "{}, {} of data, {}",
                    self.copy_ups.count,
                    human_bytes(self.copy_ups.bytes),
                    human_us(self.copy_ups.total_ns as f64 / 1000.0)
                ),
            ),
            (
                "requests",
                format!(
                    "{}",
                    self.requests.iter().map(|o| o.counts.count).sum::<u64>()
                ),
            ),
        ];
        for (k, v) in rows {
            let _ = writeln!(t, "  {k:<10} {v}");
        }
        if let Some(w) = &self.caches.watches {
            let _ = writeln!(
                t,
                "  {:<10} {} watches held ({}, budget {}, {} let go over budget, {} failed); \
                 {} events ({} own), {} invalidations, {} queue overflows",
                "udba",
                w.watches,
                w.backend,
                w.budget,
                w.evicted,
                w.failed,
                w.events,
                w.own,
                w.refreshes,
                w.lost
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "  {:<16} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "operation", "requests", "errors", "mean", "p50", "p90", "p99"
        );
        for o in &self.requests {
            let _ = writeln!(
                t,
                "  {:<16} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
                o.op,
                o.counts.count,
                o.counts.errors,
                human_us(o.mean_us),
                human_us(o.p50_us),
                human_us(o.p90_us),
                human_us(o.p99_us)
            );
        }
        t
    }

    /// What happened between `earlier` and `self`, per second, for `stratafs stats
    /// --watch`: the request rates and the latencies of the interval.
    pub fn rates_since(&self, earlier: &Snapshot) -> String {
        let secs = (self.uptime_secs - earlier.uptime_secs).max(1e-3);
        let mut t = String::new();
        let ops: Vec<(String, OpCounts)> = self
            .requests
            .iter()
            .map(|o| {
                let before = earlier
                    .requests
                    .iter()
                    .find(|e| e.opcode == o.opcode)
                    .map(|e| e.counts.clone())
                    .unwrap_or_default();
                (o.op.clone(), o.counts.since(&before))
            })
            .filter(|(_, d)| d.count > 0)
            .collect();
        let total: u64 = ops.iter().map(|(_, d)| d.count).sum();
        let cu = self.copy_ups.count.saturating_sub(earlier.copy_ups.count);
        let _ = writeln!(
            t,
            "{:.1}s: {:.0} requests/s, {} nodes, {} open files, {} copy-ups/s, {} resident",
            secs,
            total as f64 / secs,
            self.nodes.nodes,
            self.open.files,
            format_args!("{:.1}", cu as f64 / secs),
            human_bytes(self.rss_bytes)
        );
        if !ops.is_empty() {
            let _ = writeln!(
                t,
                "  {:<16} {:>10} {:>9} {:>8} {:>8}",
                "operation", "per sec", "errors/s", "p50", "p99"
            );
        }
        for (op, d) in ops {
            let _ = writeln!(
                t,
                "  {:<16} {:>10.1} {:>9.1} {:>8} {:>8}",
                op,
                d.count as f64 / secs,
                d.errors as f64 / secs,
                human_us(d.percentile_ns(0.5) as f64 / 1000.0),
                human_us(d.percentile_ns(0.99) as f64 / 1000.0)
            );
        }
        t
    }

    /// One line for `stratafs-mount ls`: pid, uptime, requests, nodes, open files, memory.
    pub fn one_line(&self) -> String {
        let requests: u64 = self.requests.iter().map(|o| o.counts.count).sum();
        format!(
            "pid {} up {} {} requests, {} nodes, {} open, {} copy-ups, {} RSS",
            self.pid,
            human_secs(self.uptime_secs),
            requests,
            self.nodes.nodes,
            self.open.files + self.open.dirs,
            self.copy_ups.count,
            human_bytes(self.rss_bytes)
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(3), 2);
        assert_eq!(bucket(4), 2);
        assert_eq!(bucket(5), 3);
        assert_eq!(bucket(1024), 10);
        assert_eq!(bucket(1025), 11);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn requests_are_counted_per_opcode() {
        let r = Requests::default();
        for _ in 0..3 {
            let _t = r.start(1);
        }
        let mut t = r.start(35);
        t.failed = true;
        drop(t);
        drop(r.start(4096));
        let s = r.snapshot();
        let get = |op| s.iter().find(|(o, _)| *o == op).map(|(_, c)| c.clone());
        assert_eq!(get(1).unwrap().count, 3);
        assert_eq!(get(1).unwrap().errors, 0);
        assert_eq!(get(35).unwrap().errors, 1);
        assert_eq!(
            get(63).unwrap().count,
            1,
            "opcodes past the slots share the last"
        );
        assert_eq!(get(1).unwrap().buckets.iter().sum::<u64>(), 3);
    }

    #[test]
    fn percentiles_come_from_the_buckets() {
        let mut c = OpCounts {
            count: 100,
            errors: 0,
            total_ns: 0,
            buckets: vec![0; BUCKETS],
        };
        c.buckets[10] = 50; // <= 1024 ns
        c.buckets[12] = 40; // <= 4096 ns
        c.buckets[20] = 10; // <= ~1 ms
        assert_eq!(c.percentile_ns(0.5), 1024);
        assert_eq!(c.percentile_ns(0.9), 4096);
        assert_eq!(c.percentile_ns(0.99), 1 << 20);
        let empty = OpCounts::default();
        assert_eq!(empty.percentile_ns(0.5), 0);
        let d = c.since(&OpCounts {
            count: 50,
            buckets: {
                let mut b = vec![0; BUCKETS];
                b[10] = 50;
                b
            },
            ..OpCounts::default()
        });
        assert_eq!(d.count, 50);
        assert_eq!(d.percentile_ns(0.5), 4096);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_us(12.4), "12µs");
        assert_eq!(human_us(1500.0), "1.5ms");
        assert_eq!(human_secs(59.0), "59s");
        assert_eq!(human_secs(125.0), "2m05s");
        assert_eq!(human_secs(3.0 * 3600.0 + 120.0), "3h02m");
    }

    #[test]
    fn rss_is_read() {
        assert!(rss_bytes() > 0);
    }
}
