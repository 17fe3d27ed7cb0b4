//! Side-by-side benchmark of kernel overlayfs, fuse-overlayfs and stratafs (issue 5).
//!
//! ```sh
//! cargo bench --bench compare              # full size, 3 interleaved rounds (~20 min)
//! cargo bench --bench compare -- --quick   # CI-sized smoke run (~1-2 min)
//! ```
//!
//! Needs root (kernel overlayfs mounts, `drop_caches`), `/dev/fuse`, `fusermount3`, `find`,
//! `tar`, `rm` and `mv`; `fuse-overlayfs` is measured when it is installed. The data set is
//! generated once under `target/bench-data/` and reused; each workload runs on a fresh mount with
//! a fresh upper and work directory. The report goes to stdout and to
//! `target/bench-results/compare{,-quick}.{md,json}`; a full run also renders
//! `docs/perf-compare.png` (a quick one `target/bench-results/perf-compare-quick.png`).
//! `docs/PERFORMANCE.md` explains the workloads and how to read the numbers.
//!
//! Extra flags (after `--`): `--rounds N`, `--only w1,w2,...` (workload names),
//! `--contenders kernel,fuse-overlayfs,stratafs`, `--no-chart`, `--nice N` (default -15: the
//! bench, its tools and the daemons run ahead of other work on the machine; 0 leaves it).
//! `STRATAFS_BIN` overrides the stratafs binary (default: the one cargo built for this bench).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bump when the generator changes: a new version regenerates the data set.
const DATA_VERSION: &str = "v2";

// ---------------------------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Size {
    name: &'static str,
    /// `tree/gGG/dDDD/fFF`: groups x dirs per group x files per dir, in the base layer.
    groups: usize,
    dirs_per_group: usize,
    files_per_dir: usize,
    /// Entries of `bigdir/` in the layers l3 (base), l2 and l1.
    bigdir: [usize; 3],
    /// `rmtree/rDDD/fFFF` in the base layer.
    rm_dirs: usize,
    rm_files: usize,
    /// `mvtree/mDD/fFFF` in the base layer.
    mv_dirs: usize,
    mv_files: usize,
    /// Size of `big/big.bin` in the base layer, in MiB.
    big_mib: u64,
    /// The tarball's `untar/uDD/fFFF`.
    untar_dirs: usize,
    untar_files: usize,
    /// `million/dDDDD/fFFFF`: dirs x empty files of the separate one-layer stack of
    /// `stat-1m`.
    million_dirs: usize,
    million_files: usize,
    rounds: usize,
    /// Longest wait for a quiet machine before each sample.
    settle: Duration,
    /// Longest one timed operation may take before its FUSE daemon is killed.
    limit: Duration,
}

const FULL: Size = Size {
    name: "full",
    groups: 20,
    dirs_per_group: 100,
    files_per_dir: 25,
    bigdir: [30_000, 15_000, 6_000],
    rm_dirs: 500,
    rm_files: 100,
    mv_dirs: 20,
    mv_files: 100,
    big_mib: 1024,
    untar_dirs: 100,
    untar_files: 100,
    million_dirs: 1000,
    million_files: 1000,
    rounds: 3,
    settle: Duration::from_secs(5),
    limit: Duration::from_secs(1200),
};

const QUICK: Size = Size {
    name: "quick",
    groups: 8,
    dirs_per_group: 25,
    files_per_dir: 25,
    bigdir: [6_000, 3_000, 1_000],
    rm_dirs: 50,
    rm_files: 100,
    mv_dirs: 10,
    mv_files: 100,
    big_mib: 256,
    untar_dirs: 20,
    untar_files: 100,
    million_dirs: 100,
    million_files: 1000,
    rounds: 2,
    settle: Duration::ZERO,
    limit: Duration::from_secs(300),
};

impl Size {
    /// Identifies the shape of the generated data (not rounds or time limits).
    fn shape_hash(&self) -> u32 {
        let shape = format!(
            "{} {} {} {:?} {} {} {} {} {} {} {}",
            self.groups,
            self.dirs_per_group,
            self.files_per_dir,
            self.bigdir,
            self.rm_dirs,
            self.rm_files,
            self.mv_dirs,
            self.mv_files,
            self.big_mib,
            self.untar_dirs,
            self.untar_files
        );
        let h = shape.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (h ^ (h >> 32)) as u32
    }
}

/// Number of lower layers: l0 (top) .. l3 (base).
const LAYERS: usize = 4;

/// splitmix64: the deterministic "randomness" of the generator.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

// ---------------------------------------------------------------------------------------------
// Data set
// ---------------------------------------------------------------------------------------------

/// What a directory of the base tree becomes in the upper layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirFate {
    Plain,
    /// Whited out as a whole (char 0/0 in l1).
    WhitedOut,
    /// Replaced by an opaque directory in l2.
    Opaque,
}

fn dir_fate(d: usize) -> DirFate {
    match d % 50 {
        17 => DirFate::WhitedOut,
        21 => DirFate::Opaque,
        _ => DirFate::Plain,
    }
}

fn whiteout(p: &Path) -> io::Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        rustix::fs::makedev(0, 0),
    )?;
    Ok(())
}

fn write_file(p: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(p)?;
    f.write_all(data)?;
    // The umask may have cleared bits of `mode`.
    f.set_permissions(fs::Permissions::from_mode(mode))
}

/// Generates the data set into `dir` (through a temporary sibling renamed at the end).
/// The one layer of `stat-1m`: `million/dDDDD/fFFFF`, empty files, generated once (in a
/// temporary directory renamed into place) and only when the workload is selected.
fn million_layer(target: &Path, sz: &Size, wls: &[Wl]) -> PathBuf {
    let dir = target
        .join("bench-data")
        .join(format!("million-{}x{}", sz.million_dirs, sz.million_files));
    if !wls.contains(&Wl::Stat1M) || dir.exists() {
        return dir;
    }
    eprintln!("compare: generating {} (once)", dir.display());
    let tmp = dir.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    for d in 0..sz.million_dirs {
        let sub = tmp.join(format!("million/d{d:05}"));
        fs::create_dir_all(&sub).expect("mkdir million");
        for f in 0..sz.million_files {
            File::create(sub.join(format!("f{f:05}"))).expect("create million");
        }
    }
    fs::rename(&tmp, &dir).expect("rename million");
    dir
}

fn generate(dir: &Path, sz: &Size) -> io::Result<()> {
    let t0 = Instant::now();
    let tmp = dir.with_extension("partial");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    let layers: Vec<PathBuf> = (0..LAYERS)
        .map(|i| tmp.join("layers").join(format!("l{i}")))
        .collect();
    for l in &layers {
        fs::create_dir_all(l)?;
    }
    let base = &layers[LAYERS - 1];
    let mut pool = vec![0u8; 16 * 1024];
    for (i, chunk) in pool.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(i as u64 ^ 0xDA7A).to_le_bytes()[..chunk.len()]);
    }
    let modes = [0o644, 0o600, 0o755, 0o640];

    // tree/: the base of small files, and what the three layers above do to it. 2% of the
    // directories are whited out whole and 2% replaced by opaque ones; in the others 11% of
    // the files are modified, 4% whited out and 1% get a new sibling: 10.6% of all files
    // modified and 5.8% whited out.
    let mut counts = [0usize; 6]; // files, modified, whiteouts (file), whited-out dirs, opaque, new
    for g in 0..sz.groups {
        for d in 0..sz.dirs_per_group {
            let rel = PathBuf::from(format!("tree/g{g:02}/d{d:03}"));
            fs::create_dir_all(base.join(&rel))?;
            let fate = dir_fate(d);
            for f in 0..sz.files_per_dir {
                let i = ((g * sz.dirs_per_group + d) * sz.files_per_dir + f) as u64;
                let h = mix(i);
                let size = 512 + (h >> 20) as usize % (8192 - 512 + 1);
                let off = (h >> 40) as usize % 8192;
                let name = format!("f{f:02}");
                write_file(
                    &base.join(&rel).join(&name),
                    &pool[off..off + size],
                    modes[(h >> 16) as usize & 3],
                )?;
                counts[0] += 1;
                if fate != DirFate::Plain {
                    continue;
                }
                let r = h % 100;
                let layer = &layers[(h >> 8) as usize % 3];
                if r < 11 {
                    // Modified in one of l0..l2: another size and mode.
                    fs::create_dir_all(layer.join(&rel))?;
                    let size2 = 512 + (h >> 24) as usize % (8192 - 512 + 1);
                    write_file(
                        &layer.join(&rel).join(&name),
                        &pool[off / 2..off / 2 + size2],
                        modes[(h >> 18) as usize & 3],
                    )?;
                    counts[1] += 1;
                } else if r < 15 {
                    fs::create_dir_all(layer.join(&rel))?;
                    whiteout(&layer.join(&rel).join(&name))?;
                    counts[2] += 1;
                } else if r < 16 {
                    fs::create_dir_all(layers[1].join(&rel))?;
                    write_file(
                        &layers[1].join(&rel).join(format!("n{f:02}")),
                        &pool[..1000],
                        0o644,
                    )?;
                    counts[5] += 1;
                }
            }
            if d % 10 == 0 {
                std::os::unix::fs::symlink("f00", base.join(&rel).join("link"))?;
            }
            match fate {
                DirFate::Plain => {}
                DirFate::WhitedOut => {
                    fs::create_dir_all(layers[1].join(format!("tree/g{g:02}")))?;
                    whiteout(&layers[1].join(&rel))?;
                    counts[3] += 1;
                }
                DirFate::Opaque => {
                    fs::create_dir_all(layers[2].join(&rel))?;
                    rustix::fs::setxattr(
                        layers[2].join(&rel).as_path(),
                        "trusted.overlay.opaque",
                        b"y",
                        rustix::fs::XattrFlags::empty(),
                    )?;
                    for o in 0..5 {
                        write_file(
                            &layers[2].join(&rel).join(format!("o{o}")),
                            &pool[..1024],
                            0o644,
                        )?;
                    }
                    counts[4] += 1;
                }
            }
        }
    }

    // bigdir/: one directory of 50,000+ entries spread over l3, l2 and l1.
    let [n3, n2, n1] = sz.bigdir;
    for l in &layers[1..] {
        fs::create_dir_all(l.join("bigdir"))?;
    }
    for i in 0..n3 {
        File::create(base.join(format!("bigdir/e{i:06}")))?;
    }
    for i in n3..n3 + n2 {
        File::create(layers[2].join(format!("bigdir/e{i:06}")))?;
    }
    for i in 0..n3 / 50 {
        fs::write(layers[2].join(format!("bigdir/e{i:06}")), b"modified\n")?;
    }
    for i in n3 + n2..n3 + n2 + n1 {
        File::create(layers[1].join(format!("bigdir/e{i:06}")))?;
    }
    for i in n3 / 2..n3 / 2 + n3 / 100 {
        whiteout(&layers[1].join(format!("bigdir/e{i:06}")))?;
    }

    // rmtree/: a lower tree of rm_dirs x rm_files files to delete.
    for d in 0..sz.rm_dirs {
        let p = base.join(format!("rmtree/r{d:03}"));
        fs::create_dir_all(&p)?;
        for f in 0..sz.rm_files {
            File::create(p.join(format!("f{f:04}")))?;
        }
    }
    // mvtree/: a lower directory to rename (copied by mv on EXDEV).
    for d in 0..sz.mv_dirs {
        let p = base.join(format!("mvtree/m{d:02}"));
        fs::create_dir_all(&p)?;
        for f in 0..sz.mv_files {
            let h = mix((d * 1000 + f) as u64 ^ 0x3D);
            let size = 512 + (h >> 20) as usize % (8192 - 512 + 1);
            write_file(&p.join(format!("f{f:04}")), &pool[..size], 0o644)?;
        }
    }

    // big/big.bin: real data, not sparse.
    fs::create_dir_all(base.join("big"))?;
    {
        let mut f = File::create(base.join("big/big.bin"))?;
        let mut buf = vec![0u8; 1 << 20];
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&mix(i as u64 ^ 0xB16).to_le_bytes());
        }
        for mib in 0..sz.big_mib {
            buf[..8].copy_from_slice(&mix(mib).to_le_bytes());
            f.write_all(&buf)?;
        }
        f.sync_all()?;
    }

    // The tarball of untar_dirs x untar_files small files.
    let src = tmp.join("untar-src");
    for d in 0..sz.untar_dirs {
        let p = src.join(format!("untar/u{d:02}"));
        fs::create_dir_all(&p)?;
        for f in 0..sz.untar_files {
            let h = mix((d * 10_000 + f) as u64 ^ 0x7A2);
            let size = 512 + (h >> 20) as usize % (8192 - 512 + 1);
            let off = (h >> 40) as usize % 8192;
            write_file(&p.join(format!("f{f:04}")), &pool[off..off + size], 0o644)?;
        }
    }
    let st = Command::new("tar")
        .arg("-cf")
        .arg(tmp.join("untar.tar"))
        .arg("-C")
        .arg(&src)
        .arg("untar")
        .status()?;
    if !st.success() {
        return Err(io::Error::other(format!("tar -c failed: {st}")));
    }
    fs::remove_dir_all(&src)?;

    let desc = format!(
        "data set {DATA_VERSION}-{}: tree {} files in {} dirs ({} modified, {} whited out one \
         by one, {} dirs whited out, {} opaque dirs, {} new files), bigdir {} entries over 3 \
         layers ({} whited out), rmtree {} files, mvtree {} files, big.bin {} MiB, tarball {} \
         files; generated in {:.1} s\n",
        sz.name,
        counts[0],
        sz.groups * sz.dirs_per_group,
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        counts[5],
        n3 + n2 + n1,
        n3 / 100,
        sz.rm_dirs * sz.rm_files,
        sz.mv_dirs * sz.mv_files,
        sz.big_mib,
        sz.untar_dirs * sz.untar_files,
        t0.elapsed().as_secs_f64()
    );
    fs::write(tmp.join("COMPLETE"), &desc)?;
    rustix::fs::sync();
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::rename(&tmp, dir)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Contender {
    Kernel,
    FuseOverlayfs,
    Stratafs,
}

const CONTENDERS: [Contender; 3] = [
    Contender::Kernel,
    Contender::FuseOverlayfs,
    Contender::Stratafs,
];

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Kernel => "kernel",
            Contender::FuseOverlayfs => "fuse-overlayfs",
            Contender::Stratafs => "stratafs",
        }
    }
}

struct Ctx {
    size: Size,
    data: PathBuf,
    layers: Vec<PathBuf>,
    /// The one layer of `stat-1m` (generated when that workload runs).
    million: PathBuf,
    tar: PathBuf,
    run: PathBuf,
    stratafs: PathBuf,
    ticks: f64,
}

/// Mount points as /proc/self/mountinfo lists them (octal escapes decoded).
fn mount_points() -> Vec<PathBuf> {
    let s = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    s.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| {
            let b = m.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\' && i + 3 < b.len() {
                    if let Ok(v) = u8::from_str_radix(&m[i + 1..i + 4], 8) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                }
                out.push(b[i]);
                i += 1;
            }
            PathBuf::from(std::ffi::OsString::from(
                String::from_utf8_lossy(&out).into_owned(),
            ))
        })
        .collect()
}

fn is_mounted(p: &Path) -> bool {
    mount_points().iter().any(|m| m == p)
}

fn lazy_unmount(p: &Path) {
    let _ = Command::new("fusermount3")
        .arg("-uz")
        .arg(p)
        .stderr(Stdio::null())
        .status();
    if is_mounted(p) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(p)
            .stderr(Stdio::null())
            .status();
    }
}

fn proc_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .map(|i| !s[i + 1..].trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The FUSE daemon serving `mnt`: the process whose command line names the mount point.
fn find_daemon(mnt: &Path, c: Contender) -> Option<u32> {
    let me = std::process::id();
    let want = mnt.as_os_str().as_encoded_bytes();
    let exe = match c {
        Contender::Stratafs => "stratafs",
        _ => "fuse-overlayfs",
    };
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let argv0 = args.first().copied().unwrap_or_default();
        let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
        if base == exe.as_bytes() && args.contains(&want) && proc_alive(pid) {
            found.push(pid);
        }
    }
    found.into_iter().max()
}

/// utime + stime of a process (all its threads), in seconds.
fn proc_cpu(pid: u32, ticks: f64) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some((ut + st) as f64 / ticks)
}

/// VmHWM (peak resident set) of a process, in KiB.
fn proc_hwm_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// One mount of one contender with its own fresh upper and work directories. Dropping it
/// unmounts (lazily if need be) and removes the upper and work directories.
struct Mount {
    c: Contender,
    mnt: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    pid: Option<u32>,
    live: bool,
}

impl Mount {
    fn new(ctx: &Ctx, c: Contender, layers: &[PathBuf]) -> Result<Mount, String> {
        let base = ctx.run.join(c.name());
        let mut m = Mount {
            c,
            mnt: base.join("mnt"),
            upper: base.join("upper"),
            work: base.join("work"),
            pid: None,
            live: false,
        };
        while is_mounted(&m.mnt) {
            lazy_unmount(&m.mnt);
        }
        for d in [&m.upper, &m.work] {
            if d.exists() {
                fs::remove_dir_all(d).map_err(|e| format!("rm {}: {e}", d.display()))?;
            }
        }
        for d in [&m.mnt, &m.upper, &m.work] {
            fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        let lowers: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            m.upper.display(),
            m.work.display()
        );
        let mut cmd = match c {
            Contender::Kernel => {
                let mut k = Command::new("mount");
                k.args(["-t", "overlay", "overlay"]);
                k
            }
            Contender::FuseOverlayfs => Command::new("fuse-overlayfs"),
            Contender::Stratafs => Command::new(&ctx.stratafs),
        };
        let log = base.join("daemon.log");
        cmd.arg("-o").arg(&opts).arg(&m.mnt);
        // Not pipes: a daemon that keeps them open would block us for ever.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).map_err(|e| e.to_string())?);
        let st = cmd
            .status()
            .map_err(|e| format!("{}: cannot start: {e}", c.name()))?;
        if !st.success() {
            let msg = fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{}: mount failed ({st}): {}", c.name(), msg.trim()));
        }
        let t = Instant::now();
        while !is_mounted(&m.mnt) {
            if t.elapsed() > Duration::from_secs(20) {
                return Err(format!("{}: mount did not appear", c.name()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        m.live = true;
        if c != Contender::Kernel {
            let t = Instant::now();
            while m.pid.is_none() && t.elapsed() < Duration::from_secs(5) {
                m.pid = find_daemon(&m.mnt, c);
                if m.pid.is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if m.pid.is_none() {
                eprintln!("compare: warning: no daemon found for {}", m.mnt.display());
            }
        }
        Ok(m)
    }

    fn cpu(&self, ctx: &Ctx) -> Option<f64> {
        self.pid.and_then(|p| proc_cpu(p, ctx.ticks))
    }

    fn unmount(&mut self) -> Result<(), String> {
        if !self.live {
            return Ok(());
        }
        let mut last = String::new();
        for attempt in 0..20u64 {
            let out = match self.c {
                Contender::Kernel => Command::new("umount").arg(&self.mnt).output(),
                _ => Command::new("fusermount3")
                    .arg("-u")
                    .arg(&self.mnt)
                    .output(),
            };
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => last = e.to_string(),
            }
            if !is_mounted(&self.mnt) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
        }
        let busy = is_mounted(&self.mnt);
        if busy {
            lazy_unmount(&self.mnt);
        }
        self.live = false;
        if let Some(pid) = self.pid {
            let t = Instant::now();
            while proc_alive(pid) {
                if t.elapsed() > Duration::from_secs(30) {
                    let _ = rustix::process::kill_process(
                        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
                        rustix::process::Signal::KILL,
                    );
                    return Err(format!(
                        "{}: daemon {pid} still alive 30 s after unmount; killed",
                        self.c.name()
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if busy {
            return Err(format!(
                "{}: unmount failed ({last}); unmounted lazily",
                self.c.name()
            ));
        }
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.live {
            if let Err(e) = self.unmount() {
                eprintln!("compare: {e}");
            }
        }
        if self.live || is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
        for d in [&self.upper, &self.work] {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// Runs `f`; if it takes longer than `limit`, kills the FUSE daemon `pid`, which makes every
/// request still waiting on the mount fail, so `f` returns.
fn guarded<T>(pid: Option<u32>, limit: Duration, label: &str, f: impl FnOnce() -> T) -> T {
    let (tx, rx) = mpsc::channel::<()>();
    let label = label.to_string();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("compare: {label} took longer than {limit:?}; killing its daemon");
            if let Some(pid) = pid {
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
        }
    });
    let out = f();
    let _ = tx.send(());
    let _ = watchdog.join();
    out
}

// ---------------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Wl {
    StatCold,
    StatWarm,
    ListBigdir,
    ReadSmall,
    ReadBig,
    WriteBig,
    AppendBig,
    ChmodBig,
    Untar,
    RmRf,
    MvDir,
    Walk1,
    Walk2,
    Stat1M,
}

const WORKLOADS: [Wl; 14] = [
    Wl::StatCold,
    Wl::StatWarm,
    Wl::ListBigdir,
    Wl::ReadSmall,
    Wl::ReadBig,
    Wl::WriteBig,
    Wl::AppendBig,
    Wl::ChmodBig,
    Wl::Untar,
    Wl::RmRf,
    Wl::MvDir,
    Wl::Walk1,
    Wl::Walk2,
    Wl::Stat1M,
];

/// What a target of issue 5 says about a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// <= 1.5x kernel and <= 0.6x fuse-overlayfs.
    Metadata,
    /// <= 1.1x kernel (with passthrough).
    Data,
    /// <= 1.2x kernel.
    CopyUp,
    /// No target of its own.
    Other,
}

impl Wl {
    fn name(self) -> &'static str {
        match self {
            Wl::StatCold => "stat-cold",
            Wl::StatWarm => "stat-warm",
            Wl::ListBigdir => "list-bigdir",
            Wl::ReadSmall => "read-small",
            Wl::ReadBig => "read-big",
            Wl::WriteBig => "write-big",
            Wl::AppendBig => "append-big",
            Wl::ChmodBig => "chmod-big",
            Wl::Untar => "untar",
            Wl::RmRf => "rm-rf",
            Wl::MvDir => "mv-dir",
            Wl::Walk1 => "walk-1proc",
            Wl::Walk2 => "walk-2proc",
            Wl::Stat1M => "stat-1m",
        }
    }

    fn class(self) -> Class {
        match self {
            Wl::StatCold | Wl::StatWarm | Wl::ListBigdir | Wl::Untar | Wl::RmRf => Class::Metadata,
            Wl::ReadBig | Wl::WriteBig => Class::Data,
            Wl::AppendBig | Wl::ChmodBig => Class::CopyUp,
            _ => Class::Other,
        }
    }

    fn describe(self, sz: &Size) -> String {
        let tree = sz.groups * sz.dirs_per_group * sz.files_per_dir;
        let big = sz.big_mib;
        match self {
            Wl::StatCold => "`find MNT -printf '%y %s %m\\n'` over the whole union, caches \
                             dropped after mounting"
                .into(),
            Wl::StatWarm => "the same walk again on the same mount (timed: the second walk)".into(),
            Wl::ListBigdir => format!(
                "readdir of `bigdir/` ({} entries over 3 layers), names only",
                sz.bigdir.iter().sum::<usize>()
            ),
            Wl::ReadSmall => {
                format!("open and read every file under `tree/` (base of {tree} files)")
            }
            Wl::ReadBig => format!("read the {big} MiB lower file sequentially, 1 MiB reads"),
            Wl::WriteBig => {
                format!("write a new {big} MiB file in 1 MiB writes, then fsync")
            }
            Wl::AppendBig => {
                format!("append 4 KiB to the {big} MiB lower file (copy-up), then fsync")
            }
            Wl::ChmodBig => {
                format!("chmod the {big} MiB lower file (copy-up), then open and fsync it")
            }
            Wl::Untar => format!(
                "`tar -xf` of {} small files into the mount",
                sz.untar_dirs * sz.untar_files
            ),
            Wl::RmRf => format!(
                "`rm -rf` of a lower tree of {} files in {} dirs",
                sz.rm_dirs * sz.rm_files,
                sz.rm_dirs
            ),
            Wl::MvDir => format!(
                "`mv` of a lower directory of {} files (EXDEV, so mv copies and deletes)",
                sz.mv_dirs * sz.mv_files
            ),
            Wl::Walk1 => "one `find -printf` over half of `tree/`".into(),
            Wl::Walk2 => "two `find -printf` processes at once, one per half of `tree/`".into(),
            Wl::Stat1M => format!(
                "`find -printf` over a separate one-layer stack of {} entries, caches dropped \
                 (for the daemon's peak RSS)",
                sz.million_dirs * (sz.million_files + 1)
            ),
        }
    }
}

/// What `find -printf '%y %s %m\n'` printed, summed up (directory sizes left out: they are
/// the layer filesystem's business).
#[derive(Debug, Default, Clone, Copy)]
struct FindSum {
    entries: u64,
    dirs: u64,
    files: u64,
    links: u64,
    bytes: u64,
    modes: u64,
}

impl FindSum {
    fn add(&mut self, o: &FindSum) {
        self.entries += o.entries;
        self.dirs += o.dirs;
        self.files += o.files;
        self.links += o.links;
        self.bytes += o.bytes;
        self.modes += o.modes;
    }
    fn check(&self) -> String {
        format!(
            "entries={} dirs={} files={} links={} bytes={} modesum={}",
            self.entries, self.dirs, self.files, self.links, self.bytes, self.modes
        )
    }
}

/// Starts `find PATHS -printf ...`; `collect_find` reads and waits for it.
fn spawn_find(paths: &[PathBuf], errlog: &Path) -> Result<std::process::Child, String> {
    Command::new("find")
        .args(paths)
        .args(["-printf", "%y %s %m\\n"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(errlog).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("find: {e}"))
}

fn collect_find(mut child: std::process::Child, errlog: &Path) -> Result<FindSum, String> {
    let out = child.stdout.take().expect("stdout");
    let mut r = BufReader::with_capacity(1 << 16, out);
    let mut line = Vec::with_capacity(64);
    let mut s = FindSum::default();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).map_err(|e| e.to_string())? == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let mut it = text.split_whitespace();
        let (Some(t), Some(size), Some(mode)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        s.entries += 1;
        s.modes += u64::from_str_radix(mode, 8).unwrap_or(0);
        match t {
            "d" => s.dirs += 1,
            "f" | "l" => {
                if t == "f" {
                    s.files += 1;
                } else {
                    s.links += 1;
                }
                s.bytes += size.parse::<u64>().unwrap_or(0);
            }
            _ => {}
        }
    }
    let st = child.wait().map_err(|e| e.to_string())?;
    if !st.success() {
        let err = fs::read_to_string(errlog).unwrap_or_default();
        let first: Vec<&str> = err.lines().take(3).collect();
        return Err(format!("find {st}: {}", first.join(" | ")));
    }
    Ok(s)
}

fn find_sum(paths: &[PathBuf], errlog: &Path) -> Result<FindSum, String> {
    collect_find(spawn_find(paths, errlog)?, errlog)
}

fn run_cmd(cmd: &mut Command, errlog: &Path) -> Result<(), String> {
    let st = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(errlog).map_err(|e| e.to_string())?)
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        let err = fs::read_to_string(errlog).unwrap_or_default();
        let first: Vec<&str> = err.lines().take(3).collect();
        return Err(format!("{cmd:?} {st}: {}", first.join(" | ")));
    }
    Ok(())
}

/// Reads every regular file under `dir` (types from readdir, no stat); (files, bytes).
fn read_tree(dir: &Path, buf: &mut [u8], acc: &mut (u64, u64)) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            read_tree(&e.path(), buf, acc)?;
        } else if ft.is_file() {
            let mut f = File::open(e.path())?;
            loop {
                let n = f.read(buf)?;
                if n == 0 {
                    break;
                }
                acc.1 += n as u64;
            }
            acc.0 += 1;
        }
    }
    Ok(())
}

/// lstat of everything under `dir`; (entries, bytes of regular files). Untimed checks and
/// cache warming.
fn stat_tree(dir: &Path, acc: &mut (u64, u64)) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let md = fs::symlink_metadata(e.path())?;
        acc.0 += 1;
        if md.is_dir() {
            stat_tree(&e.path(), acc)?;
        } else if md.is_file() {
            acc.1 += md.len();
        }
    }
    Ok(())
}

/// Brings `sub` of every lower layer into the page, dentry and inode caches (lstat of every
/// entry, and the data too with `data`), so that a workload measures the union and not the
/// disk. Untimed.
fn warm_layers(ctx: &Ctx, sub: &str, data: bool) {
    let mut buf = vec![0u8; 1 << 20];
    for l in &ctx.layers {
        let p = l.join(sub);
        if !p.exists() {
            continue;
        }
        let md = fs::symlink_metadata(&p).expect("stat layer path");
        if md.is_dir() {
            let mut acc = (0, 0);
            let _ = stat_tree(&p, &mut acc);
            if data {
                let _ = read_tree(&p, &mut buf, &mut acc);
            }
        } else if data && md.is_file() {
            if let Ok(mut f) = File::open(&p) {
                while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
            }
        }
    }
}

fn drop_caches() -> Result<(), String> {
    rustix::fs::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("drop_caches: {e}"))
}

/// (busy, total) jiffies of all CPUs from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let s = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Waits (at most `max_wait`) until the machine is quiet: less than a quarter of the CPU time
/// busy over half a second (with no wait, just measures 0.2 s). Returns the busy fraction last seen. Other work on a shared
/// machine is the main source of noise here.
fn settle(max_wait: Duration) -> f64 {
    let t = Instant::now();
    let window = if max_wait.is_zero() { 200 } else { 500 };
    loop {
        let (b0, t0) = cpu_jiffies();
        std::thread::sleep(Duration::from_millis(window));
        let (b1, t1) = cpu_jiffies();
        let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
        if busy < 0.25 || t.elapsed() >= max_wait {
            return busy;
        }
    }
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn tree_halves(ctx: &Ctx, mnt: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let half = ctx.size.groups / 2;
    let a = (0..half)
        .map(|g| mnt.join(format!("tree/g{g:02}")))
        .collect();
    let b = (half..ctx.size.groups)
        .map(|g| mnt.join(format!("tree/g{g:02}")))
        .collect();
    (a, b)
}

const BIG: &str = "big/big.bin";

/// Untimed preparation on the fresh mount.
fn prepare(ctx: &Ctx, w: Wl, m: &Mount, errlog: &Path) -> Result<(), String> {
    match w {
        Wl::StatCold => {}
        Wl::StatWarm => {
            find_sum(std::slice::from_ref(&m.mnt), errlog)?;
        }
        Wl::ListBigdir => warm_layers(ctx, "bigdir", false),
        Wl::ReadSmall => warm_layers(ctx, "tree", true),
        Wl::ReadBig | Wl::AppendBig | Wl::ChmodBig => warm_layers(ctx, BIG, true),
        Wl::WriteBig => {}
        Wl::Untar => {
            let mut f = File::open(&ctx.tar).map_err(|e| e.to_string())?;
            io::copy(&mut f, &mut io::sink()).map_err(|e| e.to_string())?;
        }
        Wl::RmRf => warm_layers(ctx, "rmtree", false),
        Wl::MvDir => warm_layers(ctx, "mvtree", true),
        Wl::Walk1 | Wl::Walk2 => warm_layers(ctx, "tree", false),
        Wl::Stat1M => {}
    }
    rustix::fs::sync();
    if matches!(w, Wl::StatCold | Wl::Stat1M) {
        drop_caches()?;
    }
    Ok(())
}

/// The timed part. Returns a check string that must agree between contenders.
fn timed(ctx: &Ctx, w: Wl, m: &Mount, errlog: &Path) -> Result<String, String> {
    let mnt = &m.mnt;
    let err = |e: io::Error| e.to_string();
    match w {
        Wl::StatCold | Wl::StatWarm | Wl::Stat1M => {
            Ok(find_sum(std::slice::from_ref(mnt), errlog)?.check())
        }
        Wl::ListBigdir => {
            let mut n = 0u64;
            let mut len = 0u64;
            for e in fs::read_dir(mnt.join("bigdir")).map_err(err)? {
                n += 1;
                len += e.map_err(err)?.file_name().len() as u64;
            }
            Ok(format!("entries={n} namebytes={len}"))
        }
        Wl::ReadSmall => {
            let mut buf = vec![0u8; 64 * 1024];
            let mut acc = (0, 0);
            read_tree(&mnt.join("tree"), &mut buf, &mut acc).map_err(err)?;
            Ok(format!("files={} bytes={}", acc.0, acc.1))
        }
        Wl::ReadBig => {
            let mut f = File::open(mnt.join(BIG)).map_err(err)?;
            let mut buf = vec![0u8; 1 << 20];
            let (mut total, mut fold) = (0u64, 0u64);
            loop {
                let n = f.read(&mut buf).map_err(err)?;
                if n == 0 {
                    break;
                }
                if n >= 8 {
                    fold = fold.rotate_left(5) ^ u64::from_le_bytes(buf[..8].try_into().unwrap());
                }
                total += n as u64;
            }
            Ok(format!("bytes={total} fold={fold:016x}"))
        }
        Wl::WriteBig => {
            let mut f = File::create(mnt.join("new-big.bin")).map_err(err)?;
            let mut buf = vec![0u8; 1 << 20];
            for (i, c) in buf.chunks_mut(8).enumerate() {
                c.copy_from_slice(&mix(i as u64 ^ 0x5EED).to_le_bytes());
            }
            for _ in 0..ctx.size.big_mib {
                f.write_all(&buf).map_err(err)?;
            }
            f.sync_all().map_err(err)?;
            Ok(format!("bytes={}", f.metadata().map_err(err)?.len()))
        }
        Wl::AppendBig => {
            let mut f = OpenOptions::new()
                .append(true)
                .open(mnt.join(BIG))
                .map_err(err)?;
            f.write_all(&[0xA5u8; 4096]).map_err(err)?;
            f.sync_all().map_err(err)?;
            Ok(String::new())
        }
        Wl::ChmodBig => {
            fs::set_permissions(mnt.join(BIG), fs::Permissions::from_mode(0o600)).map_err(err)?;
            File::open(mnt.join(BIG))
                .and_then(|f| f.sync_all())
                .map_err(err)?;
            Ok(String::new())
        }
        Wl::Untar => {
            run_cmd(
                Command::new("tar")
                    .arg("-xf")
                    .arg(&ctx.tar)
                    .arg("-C")
                    .arg(mnt),
                errlog,
            )?;
            Ok(String::new())
        }
        Wl::RmRf => {
            run_cmd(
                Command::new("rm").arg("-rf").arg(mnt.join("rmtree")),
                errlog,
            )?;
            Ok(String::new())
        }
        Wl::MvDir => {
            run_cmd(
                Command::new("mv")
                    .arg(mnt.join("mvtree"))
                    .arg(mnt.join("mvtree-renamed")),
                errlog,
            )?;
            Ok(String::new())
        }
        Wl::Walk1 => {
            let (a, _) = tree_halves(ctx, mnt);
            Ok(find_sum(&a, errlog)?.check())
        }
        Wl::Walk2 => {
            let (a, b) = tree_halves(ctx, mnt);
            let err2 = errlog.with_extension("2");
            let ca = spawn_find(&a, errlog)?;
            let cb = spawn_find(&b, &err2)?;
            let other = std::thread::spawn(move || collect_find(cb, &err2));
            let mut s = collect_find(ca, errlog)?;
            s.add(&other.join().expect("walker thread")?);
            Ok(s.check())
        }
    }
}

/// Untimed checks after the timed part; appended to the check string.
fn verify(ctx: &Ctx, w: Wl, m: &Mount) -> Result<String, String> {
    let mnt = &m.mnt;
    let err = |e: io::Error| e.to_string();
    Ok(match w {
        Wl::AppendBig | Wl::ChmodBig => {
            let md = fs::symlink_metadata(mnt.join(BIG)).map_err(err)?;
            let mut f = File::open(mnt.join(BIG)).map_err(err)?;
            let mut tail = [0u8; 8];
            let pos = md.len().saturating_sub(8);
            io::Seek::seek(&mut f, io::SeekFrom::Start(pos)).map_err(err)?;
            f.read_exact(&mut tail).map_err(err)?;
            let up = fs::symlink_metadata(m.upper.join(BIG))
                .map(|u| u.len())
                .unwrap_or(0);
            format!(
                "size={} mode={:o} tail={:016x} upper_size={}",
                md.len(),
                md.mode() & 0o7777,
                u64::from_le_bytes(tail),
                up
            )
        }
        Wl::Untar => {
            let mut acc = (0, 0);
            stat_tree(&mnt.join("untar"), &mut acc).map_err(err)?;
            format!("entries={} bytes={}", acc.0, acc.1)
        }
        Wl::RmRf => format!(
            "gone={} root_entries={}",
            !mnt.join("rmtree").exists(),
            fs::read_dir(mnt).map_err(err)?.count()
        ),
        Wl::MvDir => {
            let mut acc = (0, 0);
            stat_tree(&mnt.join("mvtree-renamed"), &mut acc).map_err(err)?;
            format!(
                "old_gone={} entries={} bytes={}",
                !mnt.join("mvtree").exists(),
                acc.0,
                acc.1
            )
        }
        _ => {
            let _ = ctx;
            String::new()
        }
    })
}

#[derive(Debug, Clone)]
struct Sample {
    /// CPU busy fraction of the machine just before the sample (see `settle`).
    busy: f64,
    wall: f64,
    cpu: Option<f64>,
    rss_kib: Option<u64>,
    check: String,
}

fn run_one(ctx: &Ctx, w: Wl, c: Contender) -> Result<Sample, String> {
    let errlog = ctx.run.join(c.name()).join("workload.err");
    let layers = if w == Wl::Stat1M {
        std::slice::from_ref(&ctx.million)
    } else {
        &ctx.layers[..]
    };
    let mut m = Mount::new(ctx, c, layers)?;
    prepare(ctx, w, &m, &errlog)?;
    let busy = settle(ctx.size.settle);
    let cpu0 = m.cpu(ctx);
    let label = format!("{} on {}", w.name(), c.name());
    let t = Instant::now();
    let check = guarded(m.pid, ctx.size.limit, &label, || timed(ctx, w, &m, &errlog))?;
    let wall = t.elapsed().as_secs_f64();
    let cpu1 = m.cpu(ctx);
    let more = verify(ctx, w, &m)?;
    // Read just before unmounting: the whole life of the mount.
    let rss_kib = m.pid.and_then(proc_hwm_kib);
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
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
    })
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

type Results = BTreeMap<(Wl, Contender), Vec<Result<Sample, String>>>;

fn median(v: &mut [f64]) -> Option<f64> {
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
struct Row {
    walls: Vec<f64>,
    wall: Option<f64>,
    cpu: Option<f64>,
    rss_mib: Option<f64>,
    failures: Vec<String>,
    checks: Vec<String>,
}

fn summarize(results: &Results, w: Wl, c: Contender) -> Option<Row> {
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
            }
            Err(e) => r.failures.push(e.clone()),
        }
    }
    r.wall = median(&mut r.walls.clone());
    r.cpu = median(&mut cpus);
    Some(r)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.prec$}"))
}

fn fmt_secs(v: f64) -> String {
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

struct Meta {
    nice: i32,
    date: String,
    load_start: String,
    load_end: String,
    machine: Vec<(String, String)>,
    dataset: String,
    rounds: usize,
    elapsed: f64,
    command: String,
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn machine(ctx: &Ctx) -> Vec<(String, String)> {
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
            sh("dpkg-query", &["-W", "-f", "${Version}", "fuse-overlayfs"]),
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

fn target_for(w: Wl) -> Option<f64> {
    match w.class() {
        Class::Metadata => Some(1.5),
        Class::Data => Some(1.1),
        Class::CopyUp => Some(1.2),
        Class::Other => None,
    }
}

fn markdown(
    ctx: &Ctx,
    results: &Results,
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
        "Run started {} with `{}`; {} round(s) per contender and workload, interleaved; \
                         median wall time; whole run {:.1} min.\n",
        meta.date,
        meta.command,
        meta.rounds,
        meta.elapsed / 60.0
    );
    for (k, v) in &meta.machine {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(s, "- {}", meta.dataset.trim());
    let mut busy: Vec<f64> = results
        .values()
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
    let _ = writeln!(
        s,
        "| workload | contender | wall s (median) | × kernel | × fuse-overlayfs | daemon CPU s | daemon peak RSS MiB | rounds (s) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|");
    let mut mismatches = Vec::new();
    let mut failures = Vec::new();
    for &w in wls {
        let k = summarize(results, w, Contender::Kernel);
        let f = summarize(results, w, Contender::FuseOverlayfs);
        let kw = k.as_ref().and_then(|r| r.wall);
        let fw = f.as_ref().and_then(|r| r.wall);
        let kcheck = k.as_ref().and_then(|r| r.checks.first().cloned());
        for &c in contenders {
            let Some(r) = summarize(results, w, c) else {
                continue;
            };
            let mut flag = "";
            if let Some(kc) = &kcheck {
                for chk in &r.checks {
                    if chk != kc {
                        flag = " ⚠";
                        mismatches.push(format!(
                            "- {} on {}: got `{chk}`, kernel `{kc}`",
                            w.name(),
                            c.name()
                        ));
                        break;
                    }
                }
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
            let _ = writeln!(
                s,
                "| {} | {}{flag} | {wall} | {} | {} | {cpu} | {rss} | {} |",
                w.name(),
                c.name(),
                fmt_opt(ratio(r.wall, kw), 2),
                fmt_opt(ratio(r.wall, fw), 2),
                rounds.join(" ")
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "### Workloads\n");
    for &w in wls {
        let _ = writeln!(s, "- **{}**: {}", w.name(), w.describe(&ctx.size));
    }
    let _ = writeln!(s);

    // The targets of issue 5, for stratafs.
    let _ = writeln!(s, "### stratafs against the targets of issue 5\n");
    let _ = writeln!(s, "| workload | target | stratafs | met |");
    let _ = writeln!(s, "|---|---|---:|---|");
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    for &w in wls {
        let sw = summarize(results, w, Contender::Stratafs).and_then(|r| r.wall);
        let kw = summarize(results, w, Contender::Kernel).and_then(|r| r.wall);
        let fw = summarize(results, w, Contender::FuseOverlayfs).and_then(|r| r.wall);
        if let (Some(t), Some(rk)) = (target_for(w), ratio(sw, kw)) {
            let _ = writeln!(
                s,
                "| {} | ≤ {t}× kernel | {rk:.2}× | {} |",
                w.name(),
                yes(rk <= t)
            );
        }
        if w.class() == Class::Metadata {
            if let Some(rf) = ratio(sw, fw) {
                let _ = writeln!(
                    s,
                    "| {} | ≤ 0.6× fuse-overlayfs | {rf:.2}× | {} |",
                    w.name(),
                    yes(rf <= 0.6)
                );
            }
        }
    }
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
    let _ = writeln!(s);
    if !mismatches.is_empty() {
        let _ = writeln!(s, "### Results that differ from the kernel's (⚠)\n");
        for m in &mismatches {
            let _ = writeln!(s, "{m}");
        }
        let _ = writeln!(s);
    }
    if !failures.is_empty() {
        let _ = writeln!(s, "### Failures\n");
        for m in &failures {
            let _ = writeln!(s, "{m}");
        }
        let _ = writeln!(s);
    }
    s
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: Option<f64>) -> String {
    v.map_or_else(|| "null".into(), |v| format!("{v:.6}"))
}

fn json(ctx: &Ctx, results: &Results, contenders: &[Contender], wls: &[Wl], meta: &Meta) -> String {
    let mut s = String::from("{\n");
    let _ = writeln!(s, "  \"data_version\": {},", json_str(DATA_VERSION));
    let _ = writeln!(s, "  \"size\": {},", json_str(ctx.size.name));
    let _ = writeln!(s, "  \"date\": {},", json_str(&meta.date));
    let _ = writeln!(s, "  \"command\": {},", json_str(&meta.command));
    let _ = writeln!(s, "  \"rounds\": {},", meta.rounds);
    let _ = writeln!(s, "  \"elapsed_s\": {:.1},", meta.elapsed);
    let _ = writeln!(s, "  \"loadavg_start\": {},", json_str(&meta.load_start));
    let _ = writeln!(s, "  \"loadavg_end\": {},", json_str(&meta.load_end));
    let _ = writeln!(s, "  \"dataset\": {},", json_str(meta.dataset.trim()));
    s.push_str("  \"machine\": {");
    let m: Vec<String> = meta
        .machine
        .iter()
        .map(|(k, v)| format!("{}: {}", json_str(k), json_str(v)))
        .collect();
    s.push_str(&m.join(", "));
    s.push_str("},\n  \"results\": [\n");
    let mut rows = Vec::new();
    for &w in wls {
        let kw = summarize(results, w, Contender::Kernel).and_then(|r| r.wall);
        let fw = summarize(results, w, Contender::FuseOverlayfs).and_then(|r| r.wall);
        for &c in contenders {
            let Some(r) = summarize(results, w, c) else {
                continue;
            };
            let walls: Vec<String> = r.walls.iter().map(|v| format!("{v:.6}")).collect();
            let busy: Vec<String> = results[&(w, c)]
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|s| format!("{:.3}", s.busy)))
                .collect();
            let checks: Vec<String> = r.checks.iter().map(|v| json_str(v)).collect();
            let fails: Vec<String> = r.failures.iter().map(|v| json_str(v)).collect();
            rows.push(format!(
                "    {{\"workload\": {}, \"contender\": {}, \"wall_s\": [{}], \"busy_before\": [{}], \"median_s\": {}, \
                 \"ratio_kernel\": {}, \"ratio_fuse_overlayfs\": {}, \"daemon_cpu_s\": {}, \
                 \"daemon_peak_rss_mib\": {}, \"checks\": [{}], \"failures\": [{}]}}",
                json_str(w.name()),
                json_str(c.name()),
                walls.join(", "),
                busy.join(", "),
                json_num(r.wall),
                json_num(ratio(r.wall, kw)),
                json_num(ratio(r.wall, fw)),
                json_num(r.cpu),
                json_num(r.rss_mib),
                checks.join(", "),
                fails.join(", ")
            ));
        }
    }
    s.push_str(&rows.join(",\n"));
    s.push_str("\n  ]\n}\n");
    s
}

// ---------------------------------------------------------------------------------------------
// Chart (plotters' bitmap backend; text drawn with a built-in 5x7 pixel font, so no font
// files are needed)
// ---------------------------------------------------------------------------------------------

const GLYPHS: &[(char, &str)] = &[
    ('A', ".###.|#...#|#...#|#####|#...#|#...#|#...#"),
    ('B', "####.|#...#|#...#|####.|#...#|#...#|####."),
    ('C', ".###.|#...#|#....|#....|#....|#...#|.###."),
    ('D', "####.|#...#|#...#|#...#|#...#|#...#|####."),
    ('E', "#####|#....|#....|####.|#....|#....|#####"),
    ('F', "#####|#....|#....|####.|#....|#....|#...."),
    ('G', ".###.|#...#|#....|#.###|#...#|#...#|.####"),
    ('H', "#...#|#...#|#...#|#####|#...#|#...#|#...#"),
    ('I', ".###.|..#..|..#..|..#..|..#..|..#..|.###."),
    ('J', "..###|...#.|...#.|...#.|...#.|#..#.|.##.."),
    ('K', "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#"),
    ('L', "#....|#....|#....|#....|#....|#....|#####"),
    ('M', "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#"),
    ('N', "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#"),
    ('O', ".###.|#...#|#...#|#...#|#...#|#...#|.###."),
    ('P', "####.|#...#|#...#|####.|#....|#....|#...."),
    ('Q', ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#"),
    ('R', "####.|#...#|#...#|####.|#.#..|#..#.|#...#"),
    ('S', ".####|#....|#....|.###.|....#|....#|####."),
    ('T', "#####|..#..|..#..|..#..|..#..|..#..|..#.."),
    ('U', "#...#|#...#|#...#|#...#|#...#|#...#|.###."),
    ('V', "#...#|#...#|#...#|#...#|#...#|.#.#.|..#.."),
    ('W', "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#."),
    ('X', "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#"),
    ('Y', "#...#|#...#|.#.#.|..#..|..#..|..#..|..#.."),
    ('Z', "#####|....#|...#.|..#..|.#...|#....|#####"),
    ('0', ".###.|#...#|#..##|#.#.#|##..#|#...#|.###."),
    ('1', "..#..|.##..|..#..|..#..|..#..|..#..|.###."),
    ('2', ".###.|#...#|....#|...#.|..#..|.#...|#####"),
    ('3', "#####|...#.|..#..|...#.|....#|#...#|.###."),
    ('4', "...#.|..##.|.#.#.|#..#.|#####|...#.|...#."),
    ('5', "#####|#....|####.|....#|....#|#...#|.###."),
    ('6', "..##.|.#...|#....|####.|#...#|#...#|.###."),
    ('7', "#####|....#|...#.|..#..|.#...|.#...|.#..."),
    ('8', ".###.|#...#|#...#|.###.|#...#|#...#|.###."),
    ('9', ".###.|#...#|#...#|.####|....#|...#.|.##.."),
    ('.', ".....|.....|.....|.....|.....|.##..|.##.."),
    (',', ".....|.....|.....|.....|.##..|..#..|.#..."),
    ('-', ".....|.....|.....|#####|.....|.....|....."),
    ('_', ".....|.....|.....|.....|.....|.....|#####"),
    (':', ".....|.##..|.##..|.....|.##..|.##..|....."),
    (';', ".....|.##..|.##..|.....|.##..|..#..|.#..."),
    ('/', ".....|....#|...#.|..#..|.#...|#....|....."),
    ('(', "...#.|..#..|.#...|.#...|.#...|..#..|...#."),
    (')', ".#...|..#..|...#.|...#.|...#.|..#..|.#..."),
    ('%', "##...|##..#|...#.|..#..|.#...|#..##|...##"),
    ('+', ".....|..#..|..#..|#####|..#..|..#..|....."),
    ('=', ".....|.....|#####|.....|#####|.....|....."),
    ('<', "...#.|..#..|.#...|#....|.#...|..#..|...#."),
    ('>', ".#...|..#..|...#.|....#|...#.|..#..|.#..."),
    ('*', ".....|..#..|#.#.#|.###.|#.#.#|..#..|....."),
    (' ', ".....|.....|.....|.....|.....|.....|....."),
];

/// One row of the chart: workload, its target (ratio to kernel), each contender's ratio.
type ChartRow = (String, Option<f64>, Vec<(Contender, Option<f64>)>);

fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 6 * scale - scale
}

mod chart {
    use super::*;
    use plotters::prelude::*;

    type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
    type Res = Result<(), Box<dyn std::error::Error>>;

    fn text(a: &Area, x: i32, y: i32, s: &str, scale: i32, color: &RGBColor) -> Res {
        let mut cx = x;
        for ch in s.chars() {
            let up = ch.to_ascii_uppercase();
            let g = GLYPHS
                .iter()
                .find(|(c, _)| *c == up)
                .map_or("#####|#...#|#...#|#...#|#...#|#...#|#####", |(_, g)| *g);
            for (row, line) in g.split('|').enumerate() {
                for (col, b) in line.bytes().enumerate() {
                    if b == b'#' {
                        let x0 = cx + col as i32 * scale;
                        let y0 = y + row as i32 * scale;
                        // The far corner is exclusive.
                        a.draw(&Rectangle::new(
                            [(x0, y0), (x0 + scale, y0 + scale)],
                            color.filled(),
                        ))?;
                    }
                }
            }
            cx += 6 * scale;
        }
        Ok(())
    }

    /// Horizontal bars of each contender's ratio to the kernel, one row per workload, on a
    /// log scale; the kernel is the line at 1x, issue 5's target a red tick.
    pub fn render(path: &Path, rows: &[ChartRow], title: &str) -> Res {
        let colors = |c: Contender| match c {
            Contender::Kernel => RGBColor(90, 90, 90),
            Contender::FuseOverlayfs => RGBColor(230, 126, 34),
            Contender::Stratafs => RGBColor(41, 128, 185),
        };
        let nbars = rows.first().map_or(1, |r| r.2.len()).max(1) as i32;
        let bar_h = 16;
        let row_h = nbars * (bar_h + 4) + 14;
        let (left, right, top, bottom) = (190, 110, 90, 70);
        let width = 1200;
        let height = top + rows.len() as i32 * row_h + bottom;
        let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        let black = RGBColor(20, 20, 20);
        let grey = RGBColor(225, 225, 225);
        let red = RGBColor(200, 30, 30);
        text(&root, 20, 14, title, 2, &black)?;

        let mut vmax: f64 = 2.0;
        let mut vmin: f64 = 0.5;
        for r in rows {
            for (_, v) in &r.2 {
                if let Some(v) = v {
                    vmax = vmax.max(*v * 1.15);
                    vmin = vmin.min(*v / 1.15);
                }
            }
        }
        let ticks: Vec<f64> = (-3..4)
            .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
            .collect();
        let lo = ticks
            .iter()
            .copied()
            .filter(|t| *t <= vmin)
            .fold(0.1, f64::max);
        let hi = ticks
            .iter()
            .copied()
            .filter(|t| *t >= vmax)
            .fold(f64::INFINITY, f64::min)
            .min(1000.0);
        let x0 = left;
        let x1 = width - right;
        let y0 = top;
        let y1 = top + rows.len() as i32 * row_h;
        let xof = |v: f64| {
            let v = v.clamp(lo, hi);
            x0 + ((v.ln() - lo.ln()) / (hi.ln() - lo.ln()) * f64::from(x1 - x0)) as i32
        };
        // Legend.
        let mut lx = 20;
        let ly = 46;
        if let Some(r) = rows.first() {
            for (c, _) in &r.2 {
                root.draw(&Rectangle::new(
                    [(lx, ly), (lx + 14, ly + 14)],
                    colors(*c).filled(),
                ))?;
                text(&root, lx + 20, ly, c.name(), 2, &black)?;
                lx += 20 + text_width(c.name(), 2) + 30;
            }
        }
        root.draw(&Rectangle::new(
            [(lx, ly), (lx + 2, ly + 14)],
            black.filled(),
        ))?;
        text(&root, lx + 10, ly, "kernel = 1x", 2, &black)?;
        lx += 10 + text_width("kernel = 1x", 2) + 30;
        root.draw(&Rectangle::new(
            [(lx, ly - 2), (lx + 3, ly + 16)],
            red.filled(),
        ))?;
        text(&root, lx + 10, ly, "target", 2, &black)?;

        // Grid and ticks.
        for t in ticks.iter().copied().filter(|t| *t >= lo && *t <= hi) {
            let x = xof(t);
            root.draw(&PathElement::new(vec![(x, y0), (x, y1)], grey))?;
            let label = if t < 1.0 {
                format!("{t}x")
            } else {
                format!("{t:.0}x")
            };
            text(
                &root,
                x - text_width(&label, 2) / 2,
                y1 + 10,
                &label,
                2,
                &black,
            )?;
        }
        text(
            &root,
            x0,
            y1 + 40,
            "wall time / kernel wall time, median, log scale; lower is better",
            2,
            &black,
        )?;
        // Rows.
        for (i, (name, target, bars)) in rows.iter().enumerate() {
            let ry = y0 + i as i32 * row_h + 7;
            text(&root, 14, ry + (row_h - 14 - 14) / 2, name, 2, &black)?;
            if let Some(t) = target {
                let x = xof(*t);
                root.draw(&Rectangle::new(
                    [(x - 1, ry - 3), (x + 1, ry + nbars * (bar_h + 4))],
                    red.filled(),
                ))?;
            }
            for (j, (c, v)) in bars.iter().enumerate() {
                let by = ry + j as i32 * (bar_h + 4);
                match v {
                    Some(v) => {
                        let xe = xof(*v).max(x0 + 1);
                        root.draw(&Rectangle::new(
                            [(x0, by), (xe, by + bar_h)],
                            colors(*c).filled(),
                        ))?;
                        let label = format!("{v:.2}x");
                        root.draw(&Rectangle::new(
                            [(xe + 3, by), (xe + 9 + text_width(&label, 2), by + bar_h)],
                            WHITE.filled(),
                        ))?;
                        text(&root, xe + 6, by + 1, &label, 2, &black)?;
                    }
                    None => text(&root, x0 + 6, by + 1, "failed / not run", 2, &red)?,
                }
            }
        }
        let x1k = xof(1.0);
        root.draw(&Rectangle::new([(x1k - 1, y0), (x1k, y1)], black.filled()))?;
        root.draw(&PathElement::new(vec![(x0, y0), (x0, y1), (x1, y1)], black))?;
        root.present()?;
        Ok(())
    }
}

fn render_chart(path: &Path, ctx: &Ctx, results: &Results, contenders: &[Contender], wls: &[Wl]) {
    let shown: Vec<Contender> = contenders
        .iter()
        .copied()
        .filter(|c| *c != Contender::Kernel)
        .collect();
    let rows: Vec<ChartRow> = wls
        .iter()
        .map(|&w| {
            let kw = summarize(results, w, Contender::Kernel).and_then(|r| r.wall);
            let bars = shown
                .iter()
                .map(|&c| (c, ratio(summarize(results, w, c).and_then(|r| r.wall), kw)))
                .collect();
            (w.name().to_string(), target_for(w), bars)
        })
        .collect();
    let title = format!(
        "union filesystems vs kernel overlayfs ({} data set, {} round(s))",
        ctx.size.name,
        results.values().map(Vec::len).max().unwrap_or(0)
    );
    if let Err(e) = chart::render(path, &rows, &title) {
        eprintln!("compare: chart {}: {e}", path.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches` runs bench targets without --bench: nothing to test here.
        println!("compare: not run (run it with `cargo bench --bench compare`)");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let mut size = if quick { QUICK } else { FULL };
    let mut only: Option<Vec<String>> = None;
    let mut contenders: Vec<Contender> = CONTENDERS.to_vec();
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

    if !rustix::process::geteuid().is_root() {
        println!("compare: SKIPPED: needs root (kernel overlayfs mounts, drop_caches)");
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        println!("compare: SKIPPED: no /dev/fuse");
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
    }
    let dataset = fs::read_to_string(data.join("COMPLETE")).unwrap_or_default();
    eprintln!("compare: {}", dataset.trim());

    let run = target.join("bench-run");
    // Leftovers of an interrupted run.
    for m in mount_points() {
        if m.starts_with(&run) {
            eprintln!("compare: unmounting leftover {}", m.display());
            lazy_unmount(&m);
        }
    }
    fs::create_dir_all(run.join("bin")).unwrap();
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
        stratafs,
        ticks,
    };

    // Taken now: the tree may change while the run goes on.
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let machine_desc = machine(&ctx);
    let mut results: Results = BTreeMap::new();
    for round in 0..ctx.size.rounds {
        for &w in &wls {
            for i in 0..contenders.len() {
                // Rotate the order each round so that drift and order effects hit all alike.
                let c = contenders[(i + round) % contenders.len()];
                let r = run_one(&ctx, w, c);
                match &r {
                    Ok(s) => eprintln!(
                        "[round {}/{}] {:<12} {:<15} {:>9.3} s  cpu {:>7}  rss {:>7} MiB  \
                         (machine {:.0}% busy before)",
                        round + 1,
                        ctx.size.rounds,
                        w.name(),
                        c.name(),
                        s.wall,
                        fmt_opt(s.cpu, 2),
                        fmt_opt(s.rss_kib.map(|k| k as f64 / 1024.0), 1),
                        s.busy * 100.0
                    ),
                    Err(e) => eprintln!(
                        "[round {}/{}] {:<12} {:<15} FAILED: {e}",
                        round + 1,
                        ctx.size.rounds,
                        w.name(),
                        c.name()
                    ),
                }
                results.entry((w, c)).or_default().push(r);
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
    let md = markdown(&ctx, &results, &contenders, &wls, &meta);
    println!("{md}");
    let out = target.join("bench-results");
    fs::create_dir_all(&out).unwrap();
    let stem = if quick { "compare-quick" } else { "compare" };
    fs::write(out.join(format!("{stem}.md")), &md).unwrap();
    fs::write(
        out.join(format!("{stem}.json")),
        json(&ctx, &results, &contenders, &wls, &meta),
    )
    .unwrap();
    if chart {
        let png = if quick || only.is_some() {
            out.join("perf-compare-quick.png")
        } else {
            root.join("docs/perf-compare.png")
        };
        render_chart(&png, &ctx, &results, &contenders, &wls);
        println!("chart: {}", png.display());
    }
    println!(
        "results: {}/{stem}.{{md,json}}; whole run {:.1} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
}
