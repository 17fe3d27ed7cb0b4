//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Where a detached daemon logs (`-o log=PATH|syslog`), and the one error line a bad target
//! gets.

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Mounts `s` detached with `extra` options and `RUST_LOG=info`, touches a name, unmounts.
fn mount_and_unmount(s: &Stack, extra: &str) {
    let out = run(Command::new(stratafs_bin())
        .env("RUST_LOG", "info")
        .arg("-o")
        .arg(format!("{},{extra}", s.rw_opts()))
        .arg(&s.mnt));
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mount {
        mountpoint: s.mnt.clone(),
    };
    fs::write(s.mnt.join("new"), "x").unwrap();
    drop(m);
}

#[test]
fn detached_daemon_logs_to_a_file() {
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    let log = s.dir.path().join("logs/stratafs.log");
    fs::create_dir(log.parent().unwrap()).unwrap();
    fs::write(&log, "an older line\n").unwrap();
    mount_and_unmount(&s, &format!("log={},no_such_option", log.display()));
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("unknown option ignored option=no_such_option"),
        "{text:?}"
    );
    assert!(text.starts_with("an older line\n"), "appended: {text:?}");
    assert!(text.contains("mounted"), "{text:?}");
    assert!(text.contains("unmounted"), "{text:?}");
}

/// At the default level a healthy mount logs nothing: the answers a filesystem gives every
/// day (a missing name, `ENOSYS` for FLUSH on every close) are not warnings.
#[test]
fn everyday_requests_log_no_warnings() {
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    fs::write(s.lower.join("lower"), "l").unwrap();
    let log = s.dir.path().join("quiet.log");
    let out = run(Command::new(stratafs_bin())
        .env_remove("RUST_LOG")
        .arg("-o")
        .arg(format!("{},log={}", s.rw_opts(), log.display()))
        .arg(&s.mnt));
    assert!(out.status.success(), "{out:?}");
    let m = Mount {
        mountpoint: s.mnt.clone(),
    };
    for i in 0..20 {
        let p = s.mnt.join(format!("f{i}"));
        fs::write(&p, "x").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "x");
        assert!(fs::metadata(s.mnt.join(format!("missing{i}"))).is_err());
    }
    fs::write(s.mnt.join("lower"), "copied up").unwrap();
    drop(m);
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(text.is_empty(), "a healthy mount logged: {text}");
}

/// A socket standing in for syslog at `/dev/log`, removed when dropped.
struct FakeSyslog(UnixDatagram);

impl Drop for FakeSyslog {
    fn drop(&mut self) {
        let _ = fs::remove_file("/dev/log");
    }
}

#[test]
fn detached_daemon_logs_to_syslog() {
    if !can_mount()
        || !facility(
            !Path::new("/dev/log").exists(),
            "a free /dev/log (no syslog daemon) for a stand-in socket",
        )
    {
        return;
    }
    let sock = FakeSyslog(UnixDatagram::bind("/dev/log").unwrap());
    sock.0
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let s = Stack::new();
    mount_and_unmount(&s, "log=syslog");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.0.recv(&mut buf) {
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = m.contains("unmounted");
        got.push(m);
        if done {
            break;
        }
    }
    // RFC 3164: <PRI>TIMESTAMP HOST stratafs[PID]: message; facility daemon (3), info (6).
    let mounted = got
        .iter()
        .find(|m| m.contains("mounted") && !m.contains("unmounted"))
        .unwrap_or_else(|| panic!("no 'mounted' message in {got:?}"));
    assert!(mounted.starts_with("<30>"), "{mounted:?}");
    assert!(mounted.contains("stratafs["), "{mounted:?}");
    assert!(got.iter().any(|m| m.contains("unmounted")), "{got:?}");
}

#[test]
fn bad_log_targets_get_one_error_line() {
    let s = Stack::new();
    for (opt, code, want) in [
        ("log=", 2, "a value is required"),
        (
            "log=/nonexistent-dir/x.log",
            1,
            "cannot open log file '/nonexistent-dir/x.log'",
        ),
    ] {
        let out = run(Command::new(stratafs_bin())
            .arg("-o")
            .arg(format!("{},{opt}", s.rw_opts()))
            .arg(&s.mnt));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{opt}: {err}");
        assert_eq!(err.lines().count(), 1, "{opt}: {err}");
        assert!(err.contains(want), "{opt}: {err}");
        assert!(!is_mounted(&s.mnt));
    }
}
