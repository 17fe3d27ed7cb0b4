//! The workloads: what each one prepares (untimed), times and checks. The timed part and the
//! checks see only a `Job` (paths and sizes), so they run the same in the bench process (root)
//! and in the worker it starts as the bench user (rootless, see `worker.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::dataset::{mix, Size};
use crate::mounts::{Config, Contender, Ctx};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Wl {
    StatCold,
    StatWarm,
    ListBigdir,
    ReadSmall,
    ReadSmall2,
    ReadBig,
    ReReadBig,
    WriteBig,
    AppendBig,
    ChmodBig,
    ChmodBigMetacopy,
    Untar,
    RmRf,
    MvDir,
    MvDirRedirect,
    Walk1,
    Walk2,
    Stat1M,
}

pub const WORKLOADS: [Wl; 18] = [
    Wl::StatCold,
    Wl::StatWarm,
    Wl::ListBigdir,
    Wl::ReadSmall,
    Wl::ReadSmall2,
    Wl::ReadBig,
    Wl::ReReadBig,
    Wl::WriteBig,
    Wl::AppendBig,
    Wl::ChmodBig,
    Wl::ChmodBigMetacopy,
    Wl::Untar,
    Wl::RmRf,
    Wl::MvDir,
    Wl::MvDirRedirect,
    Wl::Walk1,
    Wl::Walk2,
    Wl::Stat1M,
];

/// What a target of issue 5 says about a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
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
    pub fn name(self) -> &'static str {
        match self {
            Wl::StatCold => "stat-cold",
            Wl::StatWarm => "stat-warm",
            Wl::ListBigdir => "list-bigdir",
            Wl::ReadSmall => "read-small",
            Wl::ReadSmall2 => "read-small-2x",
            Wl::ReadBig => "read-big",
            Wl::ReReadBig => "reread-big",
            Wl::WriteBig => "write-big",
            Wl::AppendBig => "append-big",
            Wl::ChmodBig => "chmod-big",
            Wl::ChmodBigMetacopy => "chmod-big-metacopy",
            Wl::Untar => "untar",
            Wl::RmRf => "rm-rf",
            Wl::MvDir => "mv-dir",
            Wl::MvDirRedirect => "mv-dir-redirect",
            Wl::Walk1 => "walk-1proc",
            Wl::Walk2 => "walk-2proc",
            Wl::Stat1M => "stat-1m",
        }
    }

    /// The options a contender is mounted with for this workload beyond the layers: the
    /// optional feature the workload measures, where the contender has it.
    pub fn feature_opts(self, cfg: Config, c: Contender) -> Option<&'static str> {
        match (self, c, cfg) {
            (Wl::MvDirRedirect, Contender::Stratafs, _)
            | (Wl::MvDirRedirect, Contender::Kernel, Config::Root) => Some("redirect_dir=on"),
            (Wl::ChmodBigMetacopy, Contender::Stratafs, _)
            | (Wl::ChmodBigMetacopy, Contender::Kernel, Config::Root) => Some("metacopy=on"),
            _ => None,
        }
    }

    pub fn class(self) -> Class {
        match self {
            Wl::StatCold | Wl::StatWarm | Wl::ListBigdir | Wl::Untar | Wl::RmRf => Class::Metadata,
            Wl::ReadBig | Wl::WriteBig => Class::Data,
            Wl::AppendBig | Wl::ChmodBig => Class::CopyUp,
            _ => Class::Other,
        }
    }

    pub fn describe(self, sz: &Size) -> String {
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
            Wl::ReadSmall2 => format!(
                "open and read every file under `tree/` twice on the same mount, both passes \
                 timed (base of {tree} files)"
            ),
            Wl::ReadBig => format!("read the {big} MiB lower file sequentially, 1 MiB reads"),
            Wl::ReReadBig => format!(
                "read the {big} MiB lower file again on the same mount, 1 MiB reads (timed: \
                 the second read)"
            ),
            Wl::WriteBig => {
                format!("write a new {big} MiB file in 1 MiB writes, then fsync")
            }
            Wl::AppendBig => {
                format!("append 4 KiB to the {big} MiB lower file (copy-up), then fsync")
            }
            Wl::ChmodBig => {
                format!("chmod the {big} MiB lower file (copy-up), then open and fsync it")
            }
            Wl::ChmodBigMetacopy => format!(
                "the same chmod of the {big} MiB lower file with `metacopy=on` where the \
                 contender has it (stratafs, root and rootless; the kernel as root: in a user \
                 namespace it refuses the option with `userxattr`, and fuse-overlayfs has \
                 none, so they copy the data as in chmod-big)"
            ),
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
            Wl::MvDirRedirect => format!(
                "the same `mv` of {} files with `redirect_dir=on` where the contender has it \
                 (stratafs, root and rootless; the kernel as root: in a user namespace it \
                 refuses the option with `userxattr`, and fuse-overlayfs takes only `off`, so \
                 they copy as in mv-dir)",
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
pub struct FindSum {
    pub entries: u64,
    pub dirs: u64,
    pub files: u64,
    pub links: u64,
    pub bytes: u64,
    pub modes: u64,
}

impl FindSum {
    pub fn add(&mut self, o: &FindSum) {
        self.entries += o.entries;
        self.dirs += o.dirs;
        self.files += o.files;
        self.links += o.links;
        self.bytes += o.bytes;
        self.modes += o.modes;
    }
    pub fn check(&self) -> String {
        format!(
            "entries={} dirs={} files={} links={} bytes={} modesum={}",
            self.entries, self.dirs, self.files, self.links, self.bytes, self.modes
        )
    }
}

/// Starts `find PATHS -printf ...`; `collect_find` reads and waits for it.
pub fn spawn_find(paths: &[PathBuf], errlog: &Path) -> Result<std::process::Child, String> {
    Command::new("find")
        .args(paths)
        .args(["-printf", "%y %s %m\\n"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(errlog).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("find: {e}"))
}

pub fn collect_find(mut child: std::process::Child, errlog: &Path) -> Result<FindSum, String> {
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

pub fn find_sum(paths: &[PathBuf], errlog: &Path) -> Result<FindSum, String> {
    collect_find(spawn_find(paths, errlog)?, errlog)
}

pub fn run_cmd(cmd: &mut Command, errlog: &Path) -> Result<(), String> {
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
pub fn read_tree(dir: &Path, buf: &mut [u8], acc: &mut (u64, u64)) -> io::Result<()> {
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
pub fn stat_tree(dir: &Path, acc: &mut (u64, u64)) -> io::Result<()> {
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
pub fn warm_layers(ctx: &Ctx, sub: &str, data: bool) {
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

pub fn drop_caches() -> Result<(), String> {
    rustix::fs::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("drop_caches: {e}"))
}

/// (busy, total) jiffies of all CPUs from /proc/stat.
pub fn cpu_jiffies() -> (u64, u64) {
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
pub fn settle(max_wait: Duration) -> f64 {
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

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn tree_halves(groups: usize, mnt: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let half = groups / 2;
    let a = (0..half)
        .map(|g| mnt.join(format!("tree/g{g:02}")))
        .collect();
    let b = (half..groups)
        .map(|g| mnt.join(format!("tree/g{g:02}")))
        .collect();
    (a, b)
}

pub const BIG: &str = "big/big.bin";

/// What the timed part and the checks of one sample need: serialized to the rootless worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub w: Wl,
    pub mnt: PathBuf,
    pub upper: PathBuf,
    pub tar: PathBuf,
    pub big_mib: u64,
    pub groups: usize,
}

impl Job {
    pub fn new(ctx: &Ctx, w: Wl, mnt: &Path, upper: &Path) -> Job {
        Job {
            w,
            mnt: mnt.to_path_buf(),
            upper: upper.to_path_buf(),
            tar: ctx.tar.clone(),
            big_mib: ctx.size.big_mib,
            groups: ctx.size.groups,
        }
    }
}

/// Untimed preparation on the host, by root, before the sample: the part of the layers the
/// workload touches brought into the caches (or, for the cold walks, dropped from them).
pub fn prepare_host(ctx: &Ctx, w: Wl) -> Result<(), String> {
    match w {
        Wl::StatCold | Wl::StatWarm | Wl::WriteBig | Wl::Stat1M => {}
        Wl::ListBigdir => warm_layers(ctx, "bigdir", false),
        Wl::ReadSmall | Wl::ReadSmall2 => warm_layers(ctx, "tree", true),
        Wl::ReadBig | Wl::ReReadBig | Wl::AppendBig | Wl::ChmodBig | Wl::ChmodBigMetacopy => {
            warm_layers(ctx, BIG, true)
        }
        Wl::Untar => {
            let mut f = File::open(&ctx.tar).map_err(|e| e.to_string())?;
            io::copy(&mut f, &mut io::sink()).map_err(|e| e.to_string())?;
        }
        Wl::RmRf => warm_layers(ctx, "rmtree", false),
        Wl::MvDir | Wl::MvDirRedirect => warm_layers(ctx, "mvtree", true),
        Wl::Walk1 | Wl::Walk2 => warm_layers(ctx, "tree", false),
    }
    rustix::fs::sync();
    if matches!(w, Wl::StatCold | Wl::Stat1M) {
        drop_caches()?;
    }
    Ok(())
}

/// Untimed preparation on the fresh mount, by whoever runs the timed part.
pub fn prepare_mount(job: &Job, errlog: &Path) -> Result<(), String> {
    match job.w {
        Wl::StatWarm => {
            find_sum(std::slice::from_ref(&job.mnt), errlog)?;
        }
        Wl::ReReadBig => {
            read_big(&job.mnt).map_err(|e| e.to_string())?;
        }
        _ => {}
    }
    Ok(())
}

/// Reads the big lower file through the mount in 1 MiB reads; its size and a checksum.
fn read_big(mnt: &Path) -> io::Result<String> {
    let mut f = File::open(mnt.join(BIG))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut total, mut fold) = (0u64, 0u64);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if n >= 8 {
            let mut w = [0u8; 8];
            w.copy_from_slice(&buf[..8]);
            fold = fold.rotate_left(5) ^ u64::from_le_bytes(w);
        }
        total += n as u64;
    }
    Ok(format!("bytes={total} fold={fold:016x}"))
}

pub fn timed(job: &Job, errlog: &Path) -> Result<String, String> {
    let mnt = &job.mnt;
    let err = |e: io::Error| e.to_string();
    match job.w {
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
        Wl::ReadSmall | Wl::ReadSmall2 => {
            let passes = if job.w == Wl::ReadSmall2 { 2 } else { 1 };
            let mut buf = vec![0u8; 64 * 1024];
            let mut acc = (0, 0);
            for _ in 0..passes {
                read_tree(&mnt.join("tree"), &mut buf, &mut acc).map_err(err)?;
            }
            Ok(format!("files={} bytes={}", acc.0, acc.1))
        }
        Wl::ReadBig | Wl::ReReadBig => read_big(mnt).map_err(err),
        Wl::WriteBig => {
            let mut f = File::create(mnt.join("new-big.bin")).map_err(err)?;
            let mut buf = vec![0u8; 1 << 20];
            for (i, c) in buf.chunks_mut(8).enumerate() {
                c.copy_from_slice(&mix(i as u64 ^ 0x5EED).to_le_bytes());
            }
            for _ in 0..job.big_mib {
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
        Wl::ChmodBig | Wl::ChmodBigMetacopy => {
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
                    .arg(&job.tar)
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
        Wl::MvDir | Wl::MvDirRedirect => {
            run_cmd(
                Command::new("mv")
                    .arg(mnt.join("mvtree"))
                    .arg(mnt.join("mvtree-renamed")),
                errlog,
            )?;
            Ok(String::new())
        }
        Wl::Walk1 => {
            let (a, _) = tree_halves(job.groups, mnt);
            Ok(find_sum(&a, errlog)?.check())
        }
        Wl::Walk2 => {
            let (a, b) = tree_halves(job.groups, mnt);
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

pub fn verify(job: &Job) -> Result<String, String> {
    let mnt = &job.mnt;
    let err = |e: io::Error| e.to_string();
    Ok(match job.w {
        Wl::AppendBig | Wl::ChmodBig | Wl::ChmodBigMetacopy => {
            let md = fs::symlink_metadata(mnt.join(BIG)).map_err(err)?;
            let mut f = File::open(mnt.join(BIG)).map_err(err)?;
            let mut tail = [0u8; 8];
            let pos = md.len().saturating_sub(8);
            io::Seek::seek(&mut f, io::SeekFrom::Start(pos)).map_err(err)?;
            f.read_exact(&mut tail).map_err(err)?;
            let up = fs::symlink_metadata(job.upper.join(BIG))
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
        Wl::MvDir | Wl::MvDirRedirect => {
            let mut acc = (0, 0);
            stat_tree(&mnt.join("mvtree-renamed"), &mut acc).map_err(err)?;
            format!(
                "old_gone={} entries={} bytes={}",
                !mnt.join("mvtree").exists(),
                acc.0,
                acc.1
            )
        }
        _ => String::new(),
    })
}
