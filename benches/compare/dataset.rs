//! The data set: four lower layers in the overlay on-disk format, generated once per version
//! and shape under `target/bench-data/`, in forms that every contender reads both as root and
//! unprivileged: whiteouts are char 0/0 devices (made here, by root), opaque directories carry
//! both `trusted.overlay.opaque` (root mounts) and `user.overlay.opaque` (the kernel's
//! `userxattr` mounts and unprivileged FUSE daemons), and the whole set belongs to the bench's
//! unprivileged user, so the rootless contenders can read files of mode 0600.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::workloads::Wl;

/// Bump when the generator changes: a new version regenerates the data set.
pub const DATA_VERSION: &str = "v3";

// ---------------------------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub name: &'static str,
    /// `tree/gGG/dDDD/fFF`: groups x dirs per group x files per dir, in the base layer.
    pub groups: usize,
    pub dirs_per_group: usize,
    pub files_per_dir: usize,
    /// Entries of `bigdir/` in the layers l3 (base), l2 and l1.
    pub bigdir: [usize; 3],
    /// `rmtree/rDDD/fFFF` in the base layer.
    pub rm_dirs: usize,
    pub rm_files: usize,
    /// `mvtree/mDD/fFFF` in the base layer.
    pub mv_dirs: usize,
    pub mv_files: usize,
    /// Size of `big/big.bin` in the base layer, in MiB.
    pub big_mib: u64,
    /// The tarball's `untar/uDD/fFFF`.
    pub untar_dirs: usize,
    pub untar_files: usize,
    /// `million/dDDDD/fFFFF`: dirs x empty files of the separate one-layer stack of
    /// `stat-1m`.
    pub million_dirs: usize,
    pub million_files: usize,
    pub rounds: usize,
    /// Longest wait for a quiet machine before each sample.
    pub settle: Duration,
    /// Longest one timed operation may take before its FUSE daemon is killed.
    pub limit: Duration,
}

pub const FULL: Size = Size {
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

pub const QUICK: Size = Size {
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
    pub fn shape_hash(&self) -> u32 {
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
pub const LAYERS: usize = 4;

/// splitmix64: the deterministic "randomness" of the generator.
pub fn mix(mut x: u64) -> u64 {
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
pub enum DirFate {
    Plain,
    /// Whited out as a whole (char 0/0 in l1).
    WhitedOut,
    /// Replaced by an opaque directory in l2.
    Opaque,
}

pub fn dir_fate(d: usize) -> DirFate {
    match d % 50 {
        17 => DirFate::WhitedOut,
        21 => DirFate::Opaque,
        _ => DirFate::Plain,
    }
}

pub fn whiteout(p: &Path) -> io::Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        rustix::fs::makedev(0, 0),
    )?;
    Ok(())
}

pub fn write_file(p: &Path, data: &[u8], mode: u32) -> io::Result<()> {
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
pub fn million_layer(target: &Path, sz: &Size, wls: &[Wl]) -> PathBuf {
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

pub fn generate(dir: &Path, sz: &Size) -> io::Result<()> {
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
                    for name in ["trusted.overlay.opaque", "user.overlay.opaque"] {
                        rustix::fs::setxattr(
                            layers[2].join(&rel).as_path(),
                            name,
                            b"y",
                            rustix::fs::XattrFlags::empty(),
                        )?;
                    }
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

/// Makes `dir` (recursively, links not followed) belong to `uid:gid`, once: the owner is
/// recorded in `dir/OWNER` and the `chown -R` run again only when it changes.
pub fn ensure_owner(dir: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let want = format!("{uid}:{gid}");
    let marker = dir.join("OWNER");
    if fs::read_to_string(&marker).is_ok_and(|s| s.trim() == want) {
        return Ok(());
    }
    let t = Instant::now();
    let st = Command::new("chown")
        .args(["-R", "-h", &want])
        .arg(dir)
        .status()
        .map_err(|e| format!("chown: {e}"))?;
    if !st.success() {
        return Err(format!("chown -R {want} {}: {st}", dir.display()));
    }
    fs::write(&marker, &want).map_err(|e| e.to_string())?;
    eprintln!(
        "compare: {} now belongs to {want} ({:.1} s)",
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
