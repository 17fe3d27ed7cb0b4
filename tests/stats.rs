//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! `stratafs stats`: a live daemon's counters through the control ioctl on its mount, as a
//! table and as JSON, refused to other users; `--watch`; SIGUSR1 writing the same table to
//! the daemon's log; one error line for what is not a stratafs mount.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn stats_cmd(args: &[&str], mnt: &Path) -> Command {
    let mut c = Command::new(stratafs_bin());
    c.arg("stats").arg(mnt).args(args);
    c
}

/// `stratafs stats --json MNT`, parsed.
fn stats_json(mnt: &Path) -> serde_json::Value {
    let out = run(&mut stats_cmd(&["--json"], mnt));
    assert!(
        out.status.success(),
        "stratafs stats --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// How many requests of operation `op` a snapshot counts (0 when none came).
fn count(s: &serde_json::Value, op: &str) -> u64 {
    s["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["op"] == op)
        .map_or(0, |o| o["count"].as_u64().unwrap())
}

fn stderr_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one error line: {err:?}");
    err
}

#[test]
fn stats_show_the_requests_a_load_makes() {
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    fs::write(s.lower.join("lower"), "l").unwrap();
    let m = Mount::new(&s.rw_opts(), &s.mnt);
    let before = stats_json(&s.mnt);
    assert_eq!(before["format"], 1);
    assert_eq!(before["mountpoint"], s.mnt.display().to_string());
    assert_eq!(
        before["pid"].as_u64().unwrap() as u32,
        daemons_for(&s.mnt)[0]
    );
    const N: usize = 25;
    for i in 0..N {
        fs::write(s.mnt.join(format!("f{i}")), "x").unwrap();
    }
    for i in 0..N {
        assert!(fs::metadata(s.mnt.join(format!("missing{i}"))).is_err());
    }
    // Appending copies the data up (a truncating open would not).
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(s.mnt.join("lower"))
        .unwrap();
    f.write_all(b" copied up").unwrap();
    drop(f);
    let after = stats_json(&s.mnt);
    let made = count(&after, "create") - count(&before, "create");
    assert!(made >= N as u64, "{N} creates counted as {made}");
    assert!(count(&after, "lookup") - count(&before, "lookup") >= N as u64);
    assert!(after["copy_ups"]["count"].as_u64().unwrap() >= 1);
    assert!(after["copy_ups"]["bytes"].as_u64().unwrap() >= 1);
    assert!(after["nodes"]["nodes"].as_u64().unwrap() > N as u64);
    assert!(after["rss_bytes"].as_u64().unwrap() > 0);
    assert!(after["caches"]["dir_fds"]["hits"].as_u64().unwrap() > 0);
    // A second stat of names the kernel caches sends no LOOKUP.
    for i in 0..N {
        fs::metadata(s.mnt.join(format!("f{i}"))).unwrap();
    }
    let cached = stats_json(&s.mnt);
    for i in 0..N {
        fs::metadata(s.mnt.join(format!("f{i}"))).unwrap();
    }
    let again = stats_json(&s.mnt);
    assert_eq!(count(&again, "lookup"), count(&cached, "lookup"));
    // Every operation carries latency percentiles in order, from its histogram.
    for o in again["requests"].as_array().unwrap() {
        let (p50, p99) = (o["p50_us"].as_f64().unwrap(), o["p99_us"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= p99, "{o}");
        let in_buckets: u64 = o["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap())
            .sum();
        assert_eq!(in_buckets, o["count"].as_u64().unwrap(), "{o}");
    }
    // The table names the same things.
    let out = run(&mut stats_cmd(&[], &s.mnt));
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    for word in ["transport", "nodes", "dir fds", "copy-ups", "create", "p99"] {
        assert!(table.contains(word), "{word} missing from {table}");
    }
    m.unmount();
}

#[test]
fn watch_prints_rates_until_interrupted() {
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    let m = Mount::new(&s.rw_opts(), &s.mnt);
    let mnt = s.mnt.clone();
    let load = std::thread::spawn(move || {
        for i in 0..40 {
            fs::write(mnt.join(format!("w{i}")), "x").unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let (status, out) = run_timeout(
        &mut stats_cmd(&["--watch", "0.2"], &s.mnt),
        Duration::from_millis(1500),
    );
    load.join().unwrap();
    assert!(status.is_none(), "--watch ended by itself: {out}");
    assert!(out.contains("requests/s"), "{out}");
    assert!(out.contains("create"), "{out}");
    // JSON: one object per line.
    let (_, out) = run_timeout(
        &mut stats_cmd(&["--watch", "0.2", "--json"], &s.mnt),
        Duration::from_millis(900),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 2, "{out}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["format"], 1);
    }
    m.unmount();
}

#[test]
fn other_users_are_refused() {
    if !can_mount() || !facility(is_root(), "root, to run a command as the tests user") {
        return;
    }
    let Some((uid, gid)) = user_ids("tests") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the tests user is missing (.ci/run creates it)"
        );
        return;
    };
    let s = Stack::new();
    // The tests user must reach the mount point (a root mount is open to all users).
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let m = Mount::new(&s.rw_opts(), &s.mnt);
    let out = run(stats_cmd(&["--json"], &s.mnt).uid(uid).gid(gid));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr_line(&out);
    assert!(err.contains("permission denied"), "{err}");
    assert!(out.stdout.is_empty());
    // The refusal is an error the daemon counted.
    let s2 = stats_json(&s.mnt);
    let ioctl = s2["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["op"] == "ioctl")
        .unwrap();
    assert!(ioctl["errors"].as_u64().unwrap() >= 1);
    m.unmount();
}

#[test]
fn sigusr1_writes_the_table_to_the_log() {
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    let log = s.dir.path().join("daemon.log");
    let m = Mount::new(&format!("{},log={}", s.rw_opts(), log.display()), &s.mnt);
    for i in 0..5 {
        fs::write(s.mnt.join(format!("f{i}")), "x").unwrap();
    }
    let pid = daemons_for(&s.mnt)[0];
    assert!(Command::new("kill")
        .args(["-USR1", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let logged = wait_until(Duration::from_secs(10), || {
        fs::read_to_string(&log).unwrap_or_default().contains("p99")
    });
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(logged, "no table in the log: {text:?}");
    for word in ["transport", "nodes", "copy-ups", "create"] {
        assert!(text.contains(word), "{word} missing from {text}");
    }
    // The daemon serves on.
    fs::write(s.mnt.join("after"), "y").unwrap();
    assert!(daemons_for(&s.mnt).contains(&pid));
    m.unmount();
}

#[test]
fn what_is_no_stratafs_mount_gets_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&mut stats_cmd(&[], dir.path()));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_line(&out).contains("is not a stratafs mount point"));
    let out = run(&mut stats_cmd(&[], &dir.path().join("missing")));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_line(&out).contains("No such file or directory"));
    let out = run(Command::new(stratafs_bin()).arg("stats"));
    assert_eq!(out.status.code(), Some(2), "a bad command line");
    let out = run(&mut stats_cmd(&["--watch", "soon"], dir.path()));
    assert_eq!(out.status.code(), Some(2));
    // A mount whose SOURCE is the word stats still mounts.
    if !can_mount() {
        return;
    }
    let s = Stack::new();
    let out = run(Command::new(stratafs_bin())
        .arg("stats")
        .arg(&s.mnt)
        .arg("-o")
        .arg(s.rw_opts()));
    assert!(out.status.success(), "{out:?}");
    let m = Mount {
        mountpoint: s.mnt.clone(),
    };
    assert_eq!(stats_json(&s.mnt)["format"], 1);
    m.unmount();
}
