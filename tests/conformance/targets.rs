//! Targets, layers and mounts: what the external suites run against (stratafs or the
//! kernel's overlayfs), and how.

use std::fmt::Display;
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use crate::common::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Target {
    Stratafs,
    /// stratafs with `passthrough=off`: every byte through the daemon (as rootless).
    StratafsDaemon,
    Kernel,
    FuseOverlayfs,
}

impl Target {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Stratafs => "stratafs",
            Target::StratafsDaemon => "stratafs-passthrough-off",
            Target::Kernel => "kernel",
            Target::FuseOverlayfs => "fuse-overlayfs",
        }
    }

    /// Mount point names of one length, so pjdfstest's path-length cases see the same
    /// lengths everywhere (its `create_path_max` helper underflows for some base lengths).
    pub(crate) fn dir(self) -> &'static str {
        match self {
            Target::Stratafs => "ours",
            Target::StratafsDaemon => "ourd",
            Target::Kernel => "kern",
            Target::FuseOverlayfs => "fovl",
        }
    }
}

/// The targets of this run: stratafs and the kernel, plus fuse-overlayfs in table mode.
pub(crate) fn targets() -> Vec<Target> {
    let mut t = vec![Target::Stratafs, Target::Kernel];
    if table_mode() {
        if find_tool("fuse-overlayfs").is_some() {
            t.push(Target::FuseOverlayfs);
        } else {
            eprintln!("fuse-overlayfs not found: its column stays empty");
        }
    }
    t
}

pub(crate) fn table_mode() -> bool {
    std::env::var_os("STRATAFS_CONFORMANCE_TABLE").is_some()
}

/// Appends one count to the table file (table mode only).
pub(crate) fn record(suite: &str, target: Target, key: &str, value: impl Display) {
    let Some(path) = std::env::var_os("STRATAFS_CONFORMANCE_TABLE") else {
        return;
    };
    let line = format!("{suite}\t{}\t{key}\t{value}\n", target.name());
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the table file");
    f.write_all(line.as_bytes()).expect("write the table file");
}

/// Lower layers with content (shared, read-only, by every target) and, per target, an upper,
/// a work directory and a mount point.
pub(crate) struct Lab {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) lowers: Vec<PathBuf>,
}

/// 256 KiB of recognisable bytes: the lower file fsx starts from.
pub(crate) fn lower_fsx_content() -> Vec<u8> {
    (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

impl Lab {
    pub(crate) fn new() -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let l1 = dir.path().join("l1");
        let l2 = dir.path().join("l2");
        for d in [
            l1.join("etc"),
            l1.join("dir/sub"),
            l2.join("dir/deep/er"),
            l2.join("data"),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(l1.join("etc/app.conf"), "key = top\n").unwrap();
        fs::write(l1.join("dir/sub/x"), "x in the top layer\n").unwrap();
        fs::write(l2.join("dir/y"), "y in the bottom layer\n").unwrap();
        fs::write(l2.join("dir/deep/er/z"), vec![7u8; 100_000]).unwrap();
        fs::write(l2.join("data/blob"), lower_fsx_content()).unwrap();
        fs::write(l2.join("fsx-lower"), lower_fsx_content()).unwrap();
        std::os::unix::fs::symlink("dir/y", l1.join("link")).unwrap();
        Lab {
            lowers: vec![l1, l2],
            dir,
        }
    }

    pub(crate) fn upper(&self, t: Target) -> PathBuf {
        self.dir.path().join(format!("{}-upper", t.dir()))
    }

    pub(crate) fn work(&self, t: Target) -> PathBuf {
        self.dir.path().join(format!("{}-work", t.dir()))
    }

    pub(crate) fn mnt(&self, t: Target) -> PathBuf {
        self.dir.path().join(t.dir())
    }

    /// A fresh upper and work directory and an empty mount point for `t`.
    pub(crate) fn reset(&self, t: Target) {
        for d in [self.upper(t), self.work(t), self.mnt(t)] {
            let _ = fs::remove_dir_all(&d);
            fs::create_dir(&d).unwrap();
        }
    }

    /// Mounts `t` over the lower layers and its own upper.
    pub(crate) fn mount(&self, t: Target) -> Guard {
        let (upper, work, mnt) = (self.upper(t), self.work(t), self.mnt(t));
        match t {
            Target::Stratafs | Target::StratafsDaemon => {
                let mut opts = format!("{},fsync=1", rw_opts(&self.lowers, &upper, &work));
                if t == Target::StratafsDaemon {
                    opts.push_str(",passthrough=off");
                }
                match mount_stable(&opts, &mnt) {
                    Ok(m) => Guard::Ours(m),
                    Err(o) => panic!(
                        "stratafs -o {opts} failed: {}",
                        String::from_utf8_lossy(&o.stderr)
                    ),
                }
            }
            Target::Kernel => Guard::Kernel(KernelMount::new(
                &kernel_rw_opts(&self.lowers, &upper, &work),
                &mnt,
            )),
            Target::FuseOverlayfs => {
                let bin = find_tool("fuse-overlayfs").expect("fuse-overlayfs");
                let opts = rw_opts(&self.lowers, &upper, &work);
                let out = run(Command::new(bin).arg("-o").arg(&opts).arg(&mnt));
                assert!(
                    out.status.success() && is_mounted(&mnt),
                    "fuse-overlayfs -o {opts} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Guard::Other(UmountGuard { path: mnt })
            }
        }
    }
}

/// A mounted target; unmounted when dropped.
#[allow(dead_code)]
pub(crate) enum Guard {
    Ours(Mount),
    Kernel(KernelMount),
    Other(UmountGuard),
}

/// The path of a tool the suite needs, or None when the test must skip.
pub(crate) fn tool(name: &str, install: &str) -> Option<PathBuf> {
    let found = find_tool(name);
    facility(found.is_some(), &format!("{name} ({install})")).then(|| found.unwrap())
}

pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
