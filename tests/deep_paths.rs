//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Objects deeper below the mount root than PATH_MAX (issue 15, item 3): the daemon opened
//! each object with one `openat2` of its whole path from the layer root, so at 4,096 bytes
//! every open, truncate, listing and chmod failed with `ENAMETOOLONG`, where the kernel's
//! overlayfs (and any local filesystem) serves callers whose own relative paths are short.
//! Every call here goes through directory fds, as such a caller's would.

mod common;

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags};

use common::*;

/// Length of each directory name on the way down (plus one byte for its `/`).
const DIR_NAME: usize = 100;

/// The directory names and the final name whose path from the root is `len` bytes long.
fn deep_names(len: usize) -> (Vec<String>, String) {
    let levels = (len - 50) / (DIR_NAME + 1);
    let dirs: Vec<String> = (0..levels)
        .map(|i| format!("{i:03}{}", "d".repeat(DIR_NAME - 3)))
        .collect();
    let last = len - levels * (DIR_NAME + 1);
    (dirs, "f".repeat(last))
}

fn open_dir(root: &std::path::Path) -> OwnedFd {
    rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

/// Walks `dirs` down from `root`, making each directory when `make`; the last one's fd,
/// or the errno of the first step that failed.
fn walk(root: &std::path::Path, dirs: &[String], make: bool) -> Result<OwnedFd, i32> {
    let mut fd = open_dir(root);
    for d in dirs {
        if make {
            match rustix::fs::mkdirat(&fd, d.as_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.raw_os_error()),
            }
        }
        fd = rustix::fs::openat(
            &fd,
            d.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| e.raw_os_error())?;
    }
    Ok(fd)
}

fn r<T>(x: rustix::io::Result<T>) -> String {
    match x {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("errno {}", e.raw_os_error()),
    }
}

fn list(dir: &impl AsFd) -> String {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let Ok(fd) = fd else {
        return r(fd);
    };
    let mut names = Vec::new();
    let mut d = rustix::fs::Dir::new(fd).unwrap();
    while let Some(e) = d.read() {
        match e {
            Ok(e) => {
                let n = e.file_name().to_string_lossy().into_owned();
                if n != "." && n != ".." {
                    names.push(format!("{}..{}", &n[..3.min(n.len())], n.len()));
                }
            }
            Err(e) => return format!("errno {}", e.raw_os_error()),
        }
    }
    names.sort();
    names.join(",")
}

/// The calls a program makes on `name` in `dir` (the directory `len` bytes deep holding
/// it), and what each returned. `lower`: `name` and `name.d` were in a lower layer.
fn exercise(dir: &OwnedFd, name: &str, lower: bool) -> Vec<String> {
    let mut out = Vec::new();
    let sub = format!("{}.d", &name[..name.len() - 2]);
    let other = format!("{}.r", &name[..name.len() - 2]);
    if !lower {
        out.push(r(rustix::fs::mkdirat(
            dir,
            sub.as_str(),
            Mode::from_raw_mode(0o755),
        )));
        let f = rustix::fs::openat(
            dir,
            name,
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        );
        out.push(r(f.and_then(|f| rustix::io::write(&f, b"hello world"))));
    }
    out.push(format!(
        "stat {}",
        r(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW))
    ));
    let mut buf = [0u8; 64];
    let read = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .and_then(|f| rustix::io::read(&f, &mut buf));
    out.push(format!("read {read:?}"));
    out.push(format!("list {}", list(dir)));
    out.push(format!(
        "chmod {}",
        r(rustix::fs::chmodat(
            dir,
            name,
            Mode::from_raw_mode(0o600),
            AtFlags::empty()
        ))
    ));
    let trunc = rustix::fs::openat(dir, name, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
        .and_then(|f| rustix::fs::ftruncate(&f, 5));
    out.push(format!("truncate {}", r(trunc)));
    let otrunc = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::TRUNC | OFlags::CLOEXEC,
        Mode::empty(),
    );
    out.push(format!("open O_TRUNC {}", r(otrunc)));
    out.push(format!(
        "stat after {:?}",
        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map(|s| (s.st_size, s.st_mode & 0o7777))
            .map_err(|e| e.raw_os_error())
    ));
    out.push(format!(
        "rename {}",
        r(rustix::fs::renameat(dir, name, dir, other.as_str()))
    ));
    out.push(format!("list {}", list(dir)));
    out.push(format!(
        "rmdir {}",
        r(rustix::fs::unlinkat(dir, sub.as_str(), AtFlags::REMOVEDIR))
    ));
    out.push(format!(
        "unlink {}",
        r(rustix::fs::unlinkat(dir, other.as_str(), AtFlags::empty()))
    ));
    out.push(format!("list {}", list(dir)));
    out
}

/// Runs `exercise` at `len` bytes below the root on a fresh stack, through the kernel's
/// overlayfs or stratafs.
fn run_at(len: usize, lower: bool, kernel: bool) -> Vec<String> {
    let s = Stack::new();
    let (dirs, name) = deep_names(len);
    if lower {
        let d = walk(&s.lower, &dirs, true).unwrap();
        let f = rustix::fs::openat(
            &d,
            name.as_str(),
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&f, b"hello world").unwrap();
        let sub = format!("{}.d", &name[..name.len() - 2]);
        rustix::fs::mkdirat(&d, sub.as_str(), Mode::from_raw_mode(0o755)).unwrap();
    }
    let opts = if kernel {
        kernel_rw_opts(std::slice::from_ref(&s.lower), &s.upper, &s.work)
    } else {
        s.rw_opts()
    };
    let _k = kernel.then(|| KernelMount::new(&opts, &s.mnt));
    let _m = (!kernel).then(|| Mount::new(&opts, &s.mnt));
    let mut out = Vec::new();
    match walk(&s.mnt, &dirs, !lower) {
        Ok(d) => out.extend(exercise(&d, &name, lower)),
        Err(e) => out.push(format!("walk errno {e}")),
    }
    // A listing of the deepest directory from the top again, after everything.
    out.push(format!(
        "walk again {}",
        walk(&s.mnt, &dirs, false)
            .map(|d| list(&d))
            .unwrap_or_else(|e| format!("errno {e}"))
    ));
    out
}

#[test]
fn objects_deeper_than_path_max_behave_as_on_the_kernel() {
    if !can_compare() {
        return;
    }
    for len in [4_095, 4_096, 8_200] {
        for lower in [false, true] {
            let kernel = run_at(len, lower, true);
            assert!(
                kernel.iter().all(|l| !l.contains("errno")),
                "kernel at {len} bytes (lower: {lower}): {kernel:#?}"
            );
            let ours = run_at(len, lower, false);
            assert_eq!(ours, kernel, "{len} bytes below the root (lower: {lower})");
        }
    }
}
