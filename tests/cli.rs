//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The command-line contract, tested with the real binary: what is refused (one stderr line,
//! non-zero exit, nothing mounted), the argv forms podman and mount.fuse3 use, and how the
//! launcher and the daemon behave around the mount's lifetime.

mod common;
#[path = "cli/support.rs"]
mod support;

use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use support::*;

// ---------------------------------------------------------------------------------------------
// Bad input: one line on stderr, non-zero exit, nothing mounted.

#[test]
fn refuses_no_lowerdir() {
    let s = Scratch::new();
    let mut args = os(&["-o", "ro"]);
    args.push(s.p("m").into());
    let (_, code) = refused(&args, &s.p("m"), &["no lowerdir"]);
    assert_eq!(code, Some(1), "a layout problem exits 1");
    // Nothing at all after the mount point.
    refused(&[s.p("m").into()], &s.p("m"), &["lowerdir"]);
}

#[test]
fn refuses_lowerdir_that_does_not_exist() {
    let s = Scratch::new();
    let gone = s.p("gone");
    let line = refused_opts(
        &format!("lowerdir={}:{}", s.p("l1").display(), gone.display()),
        &s.p("m"),
        &["lowerdir", "does not exist"],
    );
    assert!(line.contains(&gone.display().to_string()), "{line}");
}

#[test]
fn refuses_lowerdir_that_is_a_file() {
    let s = Scratch::new();
    let file = s.p("l1/top");
    let line = refused_opts(
        &format!("lowerdir={}", file.display()),
        &s.p("m"),
        &["lowerdir", "is not a directory"],
    );
    assert!(line.contains(&file.display().to_string()), "{line}");
}

#[test]
fn refuses_upperdir_without_workdir() {
    let s = Scratch::new();
    refused_opts(
        &format!("{},upperdir={}", s.lowers(), s.p("u").display()),
        &s.p("m"),
        &["upperdir given without workdir"],
    );
}

#[test]
fn refuses_upper_and_work_on_different_filesystems() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let _tmpfs = tmpfs(&s.p("other-fs"));
    let work = s.p("other-fs/w");
    fs::create_dir(&work).expect("mkdir");
    refused_opts(
        &format!(
            "{},upperdir={},workdir={}",
            s.lowers(),
            s.p("u").display(),
            work.display()
        ),
        &s.p("m"),
        &["different filesystems"],
    );
}

#[test]
fn refuses_workdir_inside_upperdir() {
    let s = Scratch::new();
    fs::create_dir(s.p("u/work")).expect("mkdir");
    refused_opts(
        &format!(
            "{},upperdir={},workdir={}",
            s.lowers(),
            s.p("u").display(),
            s.p("u/work").display()
        ),
        &s.p("m"),
        &["workdir", "is inside upperdir"],
    );
}

#[test]
fn refuses_upperdir_inside_workdir() {
    let s = Scratch::new();
    fs::create_dir(s.p("w/upper")).expect("mkdir");
    refused_opts(
        &format!(
            "{},upperdir={},workdir={}",
            s.lowers(),
            s.p("w/upper").display(),
            s.p("w").display()
        ),
        &s.p("m"),
        &["upperdir", "is inside workdir"],
    );
}

#[test]
fn refuses_mount_point_root() {
    // Should the check ever regress, a union mounted over / would hide the whole system from
    // this machine's other processes: run it in a private mount namespace, so that any such
    // mount stays there.
    if !can_mount() {
        return;
    }
    let isolated = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !facility(isolated, "unshare --mount") {
        return;
    }
    let s = Scratch::new();
    let root = Path::new("/");
    let out = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(stratafs_bin())
        .arg("-o")
        .arg(s.lowers())
        .arg(root)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null()));
    let leftover = daemons_for(root);
    for pid in &leftover {
        send_signal(*pid, rustix::process::Signal::KILL);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted over /: {stderr}");
    assert!(leftover.is_empty(), "a daemon for / was left running");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got {stderr:?}");
    assert!(
        lines[0].contains("mount point '/'") && lines[0].contains("contains lowerdir"),
        "{}",
        lines[0]
    );
}

#[test]
fn refuses_mount_point_inside_a_layer() {
    let s = Scratch::new();
    let inner = s.p("l2/mnt");
    fs::create_dir(&inner).expect("mkdir");
    refused_opts(&s.lowers(), &inner, &["mount point", "is inside lowerdir"]);
    let inner = s.p("u/mnt");
    fs::create_dir(&inner).expect("mkdir");
    refused_opts(&s.full(), &inner, &["mount point", "is inside upperdir"]);
}

#[test]
fn refuses_mount_point_containing_a_layer() {
    let s = Scratch::new();
    let layer = s.p("m/layer");
    fs::create_dir(&layer).expect("mkdir");
    refused_opts(
        &format!("lowerdir={}:{}", s.p("l1").display(), layer.display()),
        &s.p("m"),
        &["mount point", "contains lowerdir"],
    );
}

#[test]
fn refuses_mount_point_that_is_a_layer() {
    let s = Scratch::new();
    refused_opts(
        &s.lowers(),
        &s.p("l1"),
        &["mount point", "is the same directory as lowerdir"],
    );
}

#[test]
fn refuses_the_same_directory_twice() {
    let s = Scratch::new();
    let l1 = s.p("l1").display().to_string();
    refused_opts(
        &format!("lowerdir={l1}:{l1}"),
        &s.p("m"),
        &["is given twice"],
    );
    // A lower that is also the upper.
    refused_opts(
        &format!("lowerdir={l1},upperdir={l1},workdir={}", s.p("w").display()),
        &s.p("m"),
        &["are the same directory"],
    );
}

#[test]
fn refuses_the_same_directory_through_a_symlink_alias() {
    let s = Scratch::new();
    symlink(s.p("l1"), s.p("alias")).expect("symlink");
    let line = refused_opts(
        &format!(
            "lowerdir={}:{}:{}",
            s.p("l1").display(),
            s.p("l2").display(),
            s.p("alias").display()
        ),
        &s.p("m"),
        &["are the same directory"],
    );
    assert!(line.contains(&s.p("alias").display().to_string()), "{line}");
}

#[test]
fn refuses_unknown_flag() {
    let s = Scratch::new();
    let mut args = os(&["-x", "-o"]);
    args.push(s.lowers().into());
    args.push(s.p("m").into());
    let (_, code) = refused(&args, &s.p("m"), &["unknown flag '-x'"]);
    assert_eq!(code, Some(2), "a bad command line exits 2");
}

#[test]
fn refuses_bad_option_value() {
    let s = Scratch::new();
    refused_opts(&format!("{},fsync=2", s.lowers()), &s.p("m"), &["fsync"]);
}

// ---------------------------------------------------------------------------------------------
// Misuse the kernel's overlayfs refuses too (issue 14, items 13 and 14).

/// A bind mount of `from` on `to` for one test, unmounted when dropped.
fn bind_mount(from: &Path, to: &Path) -> UmountGuard {
    fs::create_dir_all(to).expect("mkdir");
    let out = run(Command::new("mount").arg("--bind").arg(from).arg(to));
    assert!(
        out.status.success(),
        "mount --bind {} {}: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    UmountGuard {
        path: to.to_path_buf(),
    }
}

/// True when the kernel's overlayfs refuses `opts` on `mountpoint` (a mount it makes anyway
/// is taken down at once).
fn kernel_refuses(opts: &str, mountpoint: &Path) -> bool {
    let out = run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", opts])
        .arg(mountpoint));
    if out.status.success() {
        let _ = Command::new("umount").arg(mountpoint).status();
        return false;
    }
    true
}

#[test]
fn refuses_a_second_daemon_on_an_upper_or_work_in_use() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    for d in ["u2", "w2", "m2"] {
        fs::create_dir(s.p(d)).expect("mkdir");
    }
    let first = Mount::new(&s.full(), &s.p("m"));
    // What a copy-up of the first daemon has staged in its work directory right now.
    fs::write(s.p("w/work/staged"), "in flight\n").expect("write");
    let second = |upper: &str, work: &str, want: &[&str]| {
        refused_opts(
            &format!(
                "lowerdir={},upperdir={},workdir={}",
                s.p("l2").display(),
                s.p(upper).display(),
                s.p(work).display()
            ),
            &s.p("m2"),
            want,
        )
    };
    // The same upper and work; the same upper with another work; the same work with another
    // upper; an upper inside the first mount's upper.
    fs::create_dir(s.p("u/nested")).expect("mkdir");
    let line = second(
        "u",
        "w",
        &["upperdir", "in-use as upperdir/workdir of another mount"],
    );
    assert!(line.contains(&s.p("u").display().to_string()), "{line}");
    second(
        "u",
        "w2",
        &["upperdir", "in-use as upperdir/workdir of another mount"],
    );
    second(
        "u2",
        "w",
        &["workdir", "in-use as upperdir/workdir of another mount"],
    );
    second("u/nested", "w2", &["upperdir", "in-use"]);
    assert_eq!(
        read(&s.p("w/work/staged")),
        "in flight\n",
        "the second daemon cleared the first one's work directory"
    );
    // The first mount still writes (copy-up through its work directory).
    fs::write(first.mountpoint.join("top"), "changed\n").expect("write through the mount");
    assert_eq!(read(&s.p("u/top")), "changed\n");
    fs::remove_file(s.p("w/work/staged")).expect("rm");
    // The lock goes with the first daemon.
    first.unmount();
    let again = Mount::new(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            s.p("l2").display(),
            s.p("u").display(),
            s.p("w").display()
        ),
        &s.p("m2"),
    );
    assert_eq!(read(&again.mountpoint.join("top")), "changed\n");
}

#[test]
fn a_killed_daemon_leaves_no_lock_behind() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    fs::create_dir(s.p("m2")).expect("mkdir");
    let first = Mount::new(&s.full(), &s.p("m"));
    let pid = the_daemon(&first.mountpoint);
    send_signal(pid, rustix::process::Signal::KILL);
    assert!(
        wait_until(TIMEOUT, || daemons_for(&first.mountpoint).is_empty()),
        "the killed daemon is still there"
    );
    let _ = Command::new("umount")
        .arg("-l")
        .arg(&first.mountpoint)
        .status();
    let again = Mount::new(&s.full(), &s.p("m2"));
    assert_eq!(read(&again.mountpoint.join("top")), "from l1\n");
}

#[test]
fn refuses_upper_and_work_on_different_mounts_of_one_filesystem() {
    if !facility(is_root(), "root") {
        return;
    }
    let s = Scratch::new();
    fs::create_dir_all(s.p("elsewhere/w")).expect("mkdir");
    let _bind = bind_mount(&s.p("elsewhere"), &s.p("bind"));
    let work = s.p("bind/w");
    let opts = format!(
        "{},upperdir={},workdir={}",
        s.lowers(),
        s.p("u").display(),
        work.display()
    );
    let line = refused_opts(
        &opts,
        &s.p("m"),
        &["upperdir", "workdir", "must reside under the same mount"],
    );
    assert!(line.contains(&work.display().to_string()), "{line}");
    if has_kernel_overlay() {
        assert!(kernel_refuses(&opts, &s.p("m")), "the kernel mounted it");
    }
}

#[test]
fn refuses_overlapping_layers() {
    let s = Scratch::new();
    for d in ["u/x", "l1/sub", "w/x"] {
        fs::create_dir(s.p(d)).expect("mkdir");
    }
    let opts = |lowers: &[&str]| {
        let l: Vec<String> = lowers
            .iter()
            .map(|d| s.p(d).display().to_string())
            .collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            l.join(":"),
            s.p("u").display(),
            s.p("w").display()
        )
    };
    let cases: [(&[&str], &str, &str); 4] = [
        (&["u/x"], "lowerdir", "upperdir"),
        (&["l1", "l1/sub"], "lowerdir", "lowerdir"),
        (&["l1/sub", "l1"], "lowerdir", "lowerdir"),
        (&["w/x"], "lowerdir", "workdir"),
    ];
    for (lowers, inner, outer) in cases {
        let o = opts(lowers);
        let line = refused_opts(&o, &s.p("m"), &[inner, outer, "overlapping"]);
        assert!(line.contains("is inside"), "{line}");
        if is_root() && has_kernel_overlay() {
            assert!(kernel_refuses(&o, &s.p("m")), "the kernel mounted {o}");
        }
    }
}

#[test]
fn replaces_a_work_entry_that_is_not_a_directory() {
    // The kernel's overlayfs removes whatever non-directory sits at WORKDIR/work (without
    // following a symlink) and makes the directory afresh.
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    fs::create_dir(s.p("target")).expect("mkdir");
    fs::write(s.p("target/precious"), "keep\n").expect("write");
    for make in ["file", "symlink", "dangling symlink"] {
        let work = s.p("w/work");
        match make {
            "file" => fs::write(&work, "junk").expect("write"),
            "symlink" => symlink(s.p("target"), &work).expect("symlink"),
            _ => symlink(s.p("gone"), &work).expect("symlink"),
        }
        let m = Mount::new(&s.full(), &s.p("m"));
        let meta = fs::symlink_metadata(&work).expect("stat work");
        assert!(meta.is_dir(), "{make}: WORKDIR/work is not a directory now");
        // A copy-up goes through the new work directory.
        fs::write(m.mountpoint.join("top"), format!("{make}\n")).expect("write");
        assert_eq!(read(&s.p("u/top")), format!("{make}\n"));
        m.unmount();
        assert_eq!(read(&s.p("target/precious")), "keep\n", "{make}");
        fs::remove_dir(&work).expect("rmdir work");
    }
}

#[test]
fn error_lines_carry_no_os_error_code() {
    // An OS error met while the daemon prepares the layers (here EROFS making WORKDIR/work on
    // a read-only filesystem) is reported with its text only, naming the directory.
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let fs_dir = s.p("ro-fs");
    let _tmpfs = tmpfs(&fs_dir);
    for d in ["u", "w"] {
        fs::create_dir(fs_dir.join(d)).expect("mkdir");
    }
    let out = run(Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&fs_dir));
    assert!(out.status.success(), "remount,ro");
    let line = refused_opts(
        &format!(
            "{},upperdir={},workdir={}",
            s.lowers(),
            fs_dir.join("u").display(),
            fs_dir.join("w").display()
        ),
        &s.p("m"),
        &["Read-only file system"],
    );
    assert!(
        line.contains(&fs_dir.join("w").display().to_string()),
        "{line}"
    );
}

#[test]
fn relative_path_from_a_removed_directory_has_no_os_error_code() {
    let s = Scratch::new();
    let gone = s.p("gone");
    fs::create_dir(&gone).expect("mkdir");
    let out = run(Command::new("sh")
        .args([
            "-c",
            "cd \"$1\" && rmdir \"$1\" && exec \"$2\" -o lowerdir=l1 m",
            "sh",
        ])
        .arg(&gone)
        .arg(stratafs_bin())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr:?}");
    assert!(
        lines[0].contains("current directory: No such file or directory"),
        "{}",
        lines[0]
    );
    assert!(!lines[0].contains("(os error"), "{}", lines[0]);
}

// ---------------------------------------------------------------------------------------------
// Informational flags and tolerated options.

#[test]
fn version_exits_zero() {
    for flag in ["--version", "-V"] {
        let out = run(stratafs().arg(flag));
        assert!(out.status.success(), "{flag}: {}", out.status);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("stratafs") && stdout.contains(env!("CARGO_PKG_VERSION")),
            "{flag}: {stdout:?}"
        );
    }
}

#[test]
fn help_exits_zero() {
    for flag in ["--help", "-h"] {
        let out = run(stratafs().arg(flag));
        assert!(out.status.success(), "{flag}: {}", out.status);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("usage") && stdout.contains("lowerdir"),
            "{flag}: {stdout:?}"
        );
    }
}

#[test]
fn unknown_option_key_only_warns() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let m = s.p("m");
    let _g = guard(&m);
    let out = run(stratafs()
        .arg("-o")
        .arg(format!("{},frobnicate=7", s.lowers()))
        .arg(&m));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("frobnicate"),
        "no warning: {stderr:?}"
    );
    assert!(is_mounted(&m));
    assert_eq!(read(&m.join("top")), "from l1\n");
}

// ---------------------------------------------------------------------------------------------
// The argv forms of podman and mount.fuse3.

#[test]
fn podman_form_with_trailing_empty_element() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    fs::write(s.p("u/upper-file"), "from u\n").expect("write");
    let m = s.p("m");
    let _g = guard(&m);
    let out = run(stratafs().arg("-o").arg(format!("{},", s.full())).arg(&m));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&m));
    assert_eq!(read(&m.join("top")), "from l1\n");
    assert_eq!(read(&m.join("bottom")), "from l2\n");
    assert_eq!(read(&m.join("upper-file")), "from u\n");
}

#[test]
fn podman_form_with_empty_element_and_volatile() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let m = s.p("m");
    let _g = guard(&m);
    let out = run(stratafs()
        .arg("-o")
        .arg(format!("{},,volatile", s.full()))
        .arg(&m));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&m));
    assert_eq!(read(&m.join("top")), "from l1\n");
    assert_eq!(read(&m.join("bottom")), "from l2\n");
}

/// The mount source and filesystem type of the mount on `mountpoint`, from mountinfo.
fn mount_source(mountpoint: &Path) -> Option<(String, String)> {
    let canon = fs::canonicalize(mountpoint).ok()?;
    let want = canon.display().to_string();
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if left.split(' ').nth(4)? != want {
            return None;
        }
        let mut r = right.split(' ');
        let fstype = r.next()?.to_string();
        let source = r.next()?.to_string();
        Some((source, fstype))
    })
}

#[test]
fn mount_fuse3_form_source_first() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let m = s.p("m");
    let _g = guard(&m);
    let out = run(stratafs()
        .arg("overlay")
        .arg(&m)
        .arg("-o")
        .arg(format!("rw,{},dev,suid", s.full())));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&m));
    assert_eq!(read(&m.join("top")), "from l1\n");
    assert_eq!(read(&m.join("bottom")), "from l2\n");
    let (source, _) = mount_source(&m).expect("in mountinfo");
    assert_eq!(source, "overlay", "SOURCE is shown as the mount's source");
}

#[test]
fn mount_type_is_fuse_stratafs() {
    // libfuse (and so fuse-overlayfs) mounts with type `fuse.SUBTYPE`; tools select mounts by
    // it (`findmnt -t fuse.stratafs`, `umount -a -t fuse.stratafs`).
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let m = Mount::new(&s.lowers(), &s.p("m"));
    let (_, fstype) = mount_source(&m.mountpoint).expect("in mountinfo");
    assert_eq!(fstype, "fuse.stratafs");
}

#[test]
fn mount_fuse3_helper_starts_the_daemon() {
    // What `mount -t fuse.stratafs` and fstab do: mount.fuse3 runs `stratafs overlay MNT -o ..`
    // through the shell, finding `stratafs` on PATH.
    if !can_mount() {
        return;
    }
    let helper = ["/sbin/mount.fuse3", "/usr/sbin/mount.fuse3"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(helper) = helper else {
        facility(false, "mount.fuse3 (package fuse3)");
        return;
    };
    let s = Scratch::new();
    let m = s.p("m");
    let _g = guard(&m);
    let bin_dir = stratafs_bin()
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin_dir];
    dirs.extend(std::env::split_paths(&path));
    let out = run(Command::new(helper)
        .arg("overlay")
        .arg(&m)
        .args(["-t", "fuse.stratafs", "-o"])
        .arg(format!("{},nodev", s.lowers()))
        .env("PATH", std::env::join_paths(dirs).expect("PATH"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null()));
    assert!(
        out.status.success(),
        "mount.fuse3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&m));
    assert_eq!(read(&m.join("bottom")), "from l2\n");
}

// ---------------------------------------------------------------------------------------------
// The launcher: returns once the mount is live, with its output pipes closed.

#[test]
fn launcher_returns_once_the_mount_is_live() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    for round in 0..3 {
        let m = s.p(&format!("m{round}"));
        fs::create_dir(&m).expect("mkdir");
        let _g = guard(&m);
        let status = stratafs()
            .arg("-o")
            .arg(s.lowers())
            .arg(&m)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run stratafs");
        assert!(status.success(), "{status}");
        // No waiting: the mount must be there the moment the launcher has exited.
        assert!(is_mounted(&m), "round {round}: not mounted yet");
        assert_eq!(read(&m.join("top")), "from l1\n");
        assert_eq!(daemons_for(&m).len(), 1);
    }
}

#[test]
fn launcher_closes_its_output_pipes() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let m = s.p("m");
    let _g = guard(&m);
    let mut child = stratafs()
        .arg("-o")
        .arg(s.lowers())
        .arg(&m)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stratafs");
    // Read both pipes to EOF in threads: EOF means every process holding them (the daemon
    // included) has closed them.
    let (tx, rx) = mpsc::channel();
    for (name, pipe) in [
        (
            "stdout",
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            "stderr",
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let mut pipe = pipe.expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let r = pipe.read_to_end(&mut buf);
            let _ = tx.send((name, r.map(|_| buf)));
        });
    }
    drop(tx);
    let mut launcher = ChildGuard(child);
    let status = wait_exit(&mut launcher.0).expect("the launcher did not exit within 10 s");
    assert!(status.success(), "{status}");
    assert!(is_mounted(&m));
    for _ in 0..2 {
        match rx.recv_timeout(TIMEOUT) {
            Ok((name, r)) => {
                let data = r.unwrap_or_else(|e| panic!("reading {name}: {e}"));
                assert!(
                    data.is_empty(),
                    "{name}: {:?}",
                    String::from_utf8_lossy(&data)
                );
            }
            Err(_) => panic!("a pipe is still open 10 s after the launcher exited"),
        }
    }
    // ... while the daemon keeps serving.
    assert_eq!(daemons_for(&m).len(), 1, "the daemon is not running");
    assert_eq!(read(&m.join("bottom")), "from l2\n");
}

// ---------------------------------------------------------------------------------------------
// The daemon's lifetime.

#[test]
fn daemon_exits_after_fusermount3_u() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let m = Mount::new(&s.lowers(), &s.p("m"));
    the_daemon(&m.mountpoint);
    let out = run(Command::new("fusermount3").arg("-u").arg(&m.mountpoint));
    assert!(
        out.status.success(),
        "fusermount3 -u: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_daemon_exits(&m.mountpoint, "fusermount3 -u");
}

#[test]
fn daemon_exits_after_umount() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let m = Mount::new(&s.lowers(), &s.p("m"));
    the_daemon(&m.mountpoint);
    let out = run(Command::new("umount").arg(&m.mountpoint));
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_daemon_exits(&m.mountpoint, "umount");
}

fn signal_unmounts(sig: rustix::process::Signal, what: &str) {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let m = Mount::new(&s.lowers(), &s.p("m"));
    let pid = the_daemon(&m.mountpoint);
    assert_eq!(read(&m.mountpoint.join("top")), "from l1\n");
    send_signal(pid, sig);
    assert_daemon_exits(&m.mountpoint, what);
}

#[test]
fn sigterm_unmounts_and_exits() {
    signal_unmounts(rustix::process::Signal::TERM, "SIGTERM");
}

#[test]
fn sigint_unmounts_and_exits() {
    signal_unmounts(rustix::process::Signal::INT, "SIGINT");
}

#[test]
fn foreground_stays_until_unmounted() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let m = s.p("m");
    let _g = guard(&m);
    let child = stratafs()
        .arg("-f")
        .arg("-o")
        .arg(s.lowers())
        .arg(&m)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn stratafs -f");
    let mut fg = ChildGuard(child);
    assert!(
        wait_until(TIMEOUT, || is_mounted(&m)),
        "stratafs -f did not mount within 10 s"
    );
    assert_eq!(read(&m.join("top")), "from l1\n");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        matches!(fg.0.try_wait(), Ok(None)),
        "stratafs -f left the foreground while mounted"
    );
    assert_eq!(
        daemons_for(&m),
        vec![fg.0.id()],
        "-f must not fork a daemon"
    );
    let out = run(Command::new("fusermount3").arg("-u").arg(&m));
    assert!(out.status.success(), "fusermount3 -u");
    let status = wait_exit(&mut fg.0).expect("stratafs -f still running 10 s after unmount");
    assert!(status.success(), "stratafs -f exited with {status}");
}

#[test]
fn debug_logs_requests() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let m = s.p("m");
    let _g = guard(&m);
    let log_path = s.p("stderr.log");
    let log = fs::File::create(&log_path).expect("create log");
    let child = stratafs()
        .arg("-d")
        .arg("-o")
        .arg(s.lowers())
        .arg(&m)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn stratafs -d");
    let mut fg = ChildGuard(child);
    assert!(
        wait_until(TIMEOUT, || is_mounted(&m)),
        "stratafs -d did not mount within 10 s"
    );
    let ls = run(Command::new("ls").arg("-l").arg(&m));
    assert!(ls.status.success());
    assert!(String::from_utf8_lossy(&ls.stdout).contains("bottom"));
    let out = run(Command::new("fusermount3").arg("-u").arg(&m));
    assert!(out.status.success(), "fusermount3 -u");
    let status = wait_exit(&mut fg.0).expect("stratafs -d still running 10 s after unmount");
    assert!(status.success(), "stratafs -d exited with {status}");
    let logged = read(&log_path);
    assert!(
        logged.contains("lookup") || logged.contains("getattr"),
        "-d logged no request: {logged:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Layers: symlinked paths, and held open from before the launcher returns.

/// podman's layout: `l/SHORT -> ../ID/diff`.
fn podman_layer(root: &Path, id: &str, short: &str, file: &str) -> PathBuf {
    fs::create_dir_all(root.join(id).join("diff")).expect("mkdir");
    fs::create_dir_all(root.join("l")).expect("mkdir");
    fs::write(root.join(id).join("diff").join(file), format!("{id}\n")).expect("write");
    let link = root.join("l").join(short);
    symlink(format!("../{id}/diff"), &link).expect("symlink");
    link
}

#[test]
fn symlinked_layers_mount() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let a = podman_layer(s.tmp.path(), "aaaa1111", "SHORTA", "a-file");
    let b = podman_layer(s.tmp.path(), "bbbb2222", "SHORTB", "b-file");
    let m = Mount::new(
        &format!("lowerdir={}:{}", a.display(), b.display()),
        &s.p("m"),
    );
    assert_eq!(read(&m.mountpoint.join("a-file")), "aaaa1111\n");
    assert_eq!(read(&m.mountpoint.join("b-file")), "bbbb2222\n");
}

#[test]
fn layers_stay_in_use_after_being_renamed() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let a = podman_layer(s.tmp.path(), "aaaa1111", "SHORTA", "a-file");
    fs::create_dir(s.p("l1/sub")).expect("mkdir");
    fs::write(s.p("l1/sub/deep"), "deep\n").expect("write");
    let m = Mount::new(
        &format!("lowerdir={}:{}", a.display(), s.p("l1").display()),
        &s.p("m"),
    );
    // Rename both layers away before anything is looked up through the mount.
    fs::rename(s.p("aaaa1111"), s.p("aaaa1111.moved")).expect("mv");
    fs::rename(s.p("l1"), s.p("l1.moved")).expect("mv");
    assert!(!a.exists(), "the symlink should dangle now");
    let mut names: Vec<String> = fs::read_dir(&m.mountpoint)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a-file", "sub", "top"]);
    assert_eq!(read(&m.mountpoint.join("a-file")), "aaaa1111\n");
    assert_eq!(read(&m.mountpoint.join("top")), "from l1\n");
    assert_eq!(read(&m.mountpoint.join("sub/deep")), "deep\n");
}
