//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The daemon against hostile callers and hostile layers (issue 14, docs/SECURITY.md): each
//! test here failed before the fix it pins.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::*;

/// The unprivileged user the attacker runs as.
const NOBODY: u32 = 65534;

/// `sh -c script` as nobody, with no supplementary groups, in `dir`.
fn sh_as_nobody(dir: &std::path::Path, script: &str) -> std::process::Output {
    run(Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir))
}

/// Appending to a setuid-root file as another user drops the setuid bit, and the mount
/// shows that at once: the appended program then runs as its caller, not as root. (The
/// daemon dropped the bit on disk, but the kernel kept showing, and executing, the cached
/// mode 4777.) Lower and upper-only files, every passthrough policy, and the writeback cache.
#[test]
fn append_to_setuid_file_drops_the_bit_in_the_mount() {
    if !can_mount() || !facility(find_tool("setpriv").is_some(), "setpriv") {
        return;
    }
    let id = find_tool("id").expect("id");
    for extra in [
        "passthrough=all",
        "passthrough=upper",
        "passthrough=off,writeback=0",
        "passthrough=off,writeback=1",
    ] {
        let s = Stack::new();
        fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(s.lower.join("lower-suid"), "").unwrap();
        fs::set_permissions(
            s.lower.join("lower-suid"),
            fs::Permissions::from_mode(0o4777),
        )
        .unwrap();
        fs::write(s.upper.join("upper-suid"), "").unwrap();
        fs::set_permissions(
            s.upper.join("upper-suid"),
            fs::Permissions::from_mode(0o4777),
        )
        .unwrap();
        let m = Mount::new(&format!("{},{extra}", s.rw_opts()), &s.mnt);
        for name in ["lower-suid", "upper-suid"] {
            let p = s.mnt.join(name);
            // The kernel caches the setuid mode before the append.
            assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4777);
            let out = sh_as_nobody(
                &s.mnt,
                &format!("cat {} >> {name} && ./{name} -u", id.display()),
            );
            assert!(
                out.status.success(),
                "{extra}: {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                NOBODY.to_string(),
                "{extra}: {name}: the appended program ran with another euid"
            );
            assert_eq!(
                fs::metadata(&p).unwrap().mode() & 0o7777,
                0o777,
                "{extra}: {name}: the mount still shows the setuid bit"
            );
        }
        m.unmount();
        for name in ["lower-suid", "upper-suid"] {
            assert_eq!(
                fs::metadata(s.upper.join(name)).unwrap().mode() & 0o7777,
                0o777,
                "{extra}: {name} on disk"
            );
        }
    }
}

/// A mount inside a layer directory (a tmpfs on a lower's or the upper's subdirectory, or
/// the daemon's own mount propagated there) is not part of the layer: the kernel's
/// overlayfs works on private clones of the layers' mounts and shows the directory
/// underneath, and writes there land in the upper layer itself. The daemon crossed into
/// such mounts (and into its own, deadlocking).
/// A file made setuid while someone holds it open for writing loses the bit at the next
/// write through that open file, as on a local filesystem: the daemon must not trust what
/// it saw of the file when it was opened.
#[test]
fn setuid_set_while_open_is_dropped_by_the_next_write() {
    if !can_mount() || !facility(find_tool("setpriv").is_some(), "setpriv") {
        return;
    }
    for extra in [
        "passthrough=all",
        "passthrough=off,writeback=0",
        "passthrough=off,writeback=1",
    ] {
        let s = Stack::new();
        fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(s.lower.join("pub")).unwrap();
        fs::set_permissions(s.lower.join("pub"), fs::Permissions::from_mode(0o777)).unwrap();
        let m = Mount::new(&format!("{},{extra}", s.rw_opts()), &s.mnt);
        let out = sh_as_nobody(
            &s.mnt.join("pub"),
            "echo a > f && exec 3>>f && chmod 4777 f && stat -c %a f && echo b >&3",
        );
        assert!(
            out.status.success(),
            "{extra}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "4777",
            "{extra}"
        );
        assert_eq!(
            fs::read_to_string(s.mnt.join("pub/f")).unwrap(),
            "a\nb\n",
            "{extra}"
        );
        assert_eq!(
            fs::metadata(s.mnt.join("pub/f")).unwrap().mode() & 0o7777,
            0o777,
            "{extra}: the mount still shows the setuid bit after a write by nobody"
        );
        m.unmount();
        assert_eq!(
            fs::metadata(s.upper.join("pub/f")).unwrap().mode() & 0o7777,
            0o777,
            "{extra}: the setuid bit on disk after a write by nobody"
        );
    }
}

#[test]
fn mounts_inside_layers_are_not_crossed() {
    if !can_compare() {
        return;
    }
    let s = Stack::new();
    fs::create_dir(s.lower.join("sub")).unwrap();
    fs::write(s.lower.join("sub/under"), "lower\n").unwrap();
    fs::create_dir(s.upper.join("usub")).unwrap();
    fs::write(s.upper.join("usub/under"), "upper\n").unwrap();
    let mut guards = Vec::new();
    for d in [s.lower.join("sub"), s.upper.join("usub")] {
        let out = run(Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&d));
        assert!(out.status.success(), "mount tmpfs");
        guards.push(UmountGuard { path: d.clone() });
        fs::write(d.join("over"), "tmpfs\n").unwrap();
    }
    let view = |m: &std::path::Path, new: &str| {
        fs::write(m.join("usub").join(new), "new\n").unwrap();
        (
            dir_names(&m.join("sub")),
            dir_names(&m.join("usub")),
            fs::read_to_string(m.join("sub/under")).ok(),
        )
    };
    let kernel = {
        let _k = KernelMount::new(
            &kernel_rw_opts(std::slice::from_ref(&s.lower), &s.upper, &s.work),
            &s.mnt,
        );
        view(&s.mnt, "by-kernel")
    };
    let ours = {
        let _m = Mount::new(&s.rw_opts(), &s.mnt);
        view(&s.mnt, "by-stratafs")
    };
    drop(guards);
    assert_eq!(kernel.0, vec!["under"], "kernel: lower");
    assert_eq!(ours.0, kernel.0, "a lower's subdirectory");
    assert_eq!(ours.2, kernel.2);
    assert_eq!(
        dir_names(&s.upper.join("usub")),
        vec!["by-kernel", "by-stratafs", "under"],
        "new files belong in the upper directory under the tmpfs"
    );
    assert!(ours.1.contains(&"by-kernel".to_string()), "{:?}", ours.1);
    assert!(!ours.1.contains(&"over".to_string()), "{:?}", ours.1);
}

/// The daemon's own mount propagated into a lower layer (a bind of `l1/sub` on a shared
/// mount used as the mount point): the daemon used to walk into its own mount, recursing
/// until its clients hung. In a private mount namespace, so nothing leaks to the host.
#[test]
fn own_mount_propagated_into_a_lower_is_not_entered() {
    if !can_mount() || !facility(find_tool("unshare").is_some(), "unshare") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("shared");
    fs::create_dir(&root).unwrap();
    let script = format!(
        r#"set -e
mount -t tmpfs tmpfs {root}
mount --make-shared {root}
cd {root}
mkdir -p l1/sub u w m
echo a > l1/sub/file
mount --bind l1/sub m
{bin} m -o lowerdir=l1,upperdir=u,workdir=w
echo "propagated: $(grep " $PWD/l1/sub " /proc/self/mountinfo | grep -c fuse)"
echo "sub: $(timeout 10 ls m/sub)"
echo "walk: $(timeout 10 find m | sort | tr '\n' ' ')"
umount m
umount m
"#,
        root = root.display(),
        bin = stratafs_bin().display()
    );
    let out = run(Command::new("timeout")
        .args([
            "60",
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(&script));
    // Whatever happened, no daemon of this test outlives it.
    kill_daemons(&root.join("m"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("propagated: 1"),
        "the mount did not propagate: {stdout}"
    );
    assert!(stdout.contains("sub: file\n"), "{stdout}");
    assert!(stdout.contains("walk: m m/sub m/sub/file \n"), "{stdout}");
}

/// A daemon under a low hard fd limit (`ulimit -n 1024`) walking more directories than
/// that: its directory-fd cache filled the limit, `find` stopped part-way with `EMFILE`,
/// and every later operation failed until a remount. The cache is now sized from the
/// limit and gives fds back when an open fails for want of them.
#[test]
fn low_fd_limit_does_not_exhaust_the_daemon() {
    if !can_mount() || !facility(find_tool("prlimit").is_some(), "prlimit") {
        return;
    }
    let s = Stack::new();
    for i in 0..3000 {
        fs::create_dir(s.lower.join(format!("d{i:04}"))).unwrap();
    }
    let out = run(Command::new("prlimit")
        .arg("--nofile=1024:1024")
        .arg(stratafs_bin())
        .arg("-o")
        .arg(s.rw_opts())
        .arg(&s.mnt));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _m = Mount {
        mountpoint: s.mnt.clone(),
    };
    for round in 0..2 {
        let out = run(Command::new("find").arg(&s.mnt));
        let seen = String::from_utf8_lossy(&out.stdout).lines().count();
        assert!(
            out.status.success() && seen == 3001,
            "round {round}: find saw {seen} entries: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    fs::write(s.mnt.join("after"), "x").unwrap();
    let daemon = daemons_for(&s.mnt)[0];
    assert!(fd_count(daemon) <= 1024);
}

/// Device nodes in a mount work only when `dev` is asked for (issue 15, item 2): a root
/// daemon mounted `dev` by default, and containers/storage drops `nodev` from `mountopt`
/// before it calls a mount program, so a container could `mknod` and use devices on its
/// rootfs. libfuse (and so fuse-overlayfs) mounts `nodev` unless told `dev`.
#[test]
fn device_nodes_work_only_when_dev_is_asked_for() {
    if !can_mount() {
        return;
    }
    for (extra, usable) in [("", false), (",nodev", false), (",dev", true)] {
        let s = Stack::new();
        let m = Mount::new(&format!("{}{extra}", s.rw_opts()), &s.mnt);
        let dev = s.mnt.join("null");
        let out = run(Command::new("mknod").arg(&dev).args(["c", "1", "3"]));
        assert!(
            out.status.success(),
            "mknod: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let opened = fs::OpenOptions::new().write(true).open(&dev);
        assert_eq!(
            opened.is_ok(),
            usable,
            "-o ...{extra}: opening a device node: {opened:?}"
        );
        drop(opened);
        let line = fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(s.mnt.to_str().unwrap()))
            .map(str::to_string)
            .unwrap_or_default();
        assert_eq!(line.contains("nodev"), !usable, "{line}");
        m.unmount();
    }
}

/// A daemon killed with `kill -9` leaves a dead FUSE mount (`ENOTCONN`) at the mount point;
/// the same mount command then mounts again, saying so in one line, as fuse-overlayfs
/// mounts over it (issue 15, item 4). It used to refuse: "Transport endpoint is not
/// connected (a stale FUSE mount?)".
#[test]
fn mount_over_a_dead_mount_of_a_killed_daemon() {
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    fs::write(s.lower.join("f"), "lower\n").unwrap();
    let m = Mount::new(&s.rw_opts(), &s.mnt);
    let pids = daemons_for(&s.mnt);
    assert_eq!(pids.len(), 1);
    run(Command::new("kill").arg("-9").arg(pids[0].to_string()));
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        fs::metadata(&s.mnt).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN)
    }));
    let out = run(Command::new(stratafs_bin())
        .arg("-o")
        .arg(s.rw_opts())
        .arg(&s.mnt));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("dead FUSE mount"), "{stderr}");
    assert_eq!(fs::read_to_string(s.mnt.join("f")).unwrap(), "lower\n");
    m.unmount();
    assert!(
        !is_mounted(&s.mnt),
        "the dead mount is still there under the new one"
    );
}
