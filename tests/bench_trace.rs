//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The benchmark's request tracer (`benches/compare/trace.rs`): its reading of a tracefs
//! `trace` file, and the kernel's FUSE tracepoints on a real mount counted against what was
//! done on it.

mod common;
#[allow(dead_code)]
#[path = "../benches/compare/trace.rs"]
mod trace;

use std::fs;

use common::*;

#[test]
fn requests_are_read_in_their_window_with_their_times() {
    let text = "\
# tracer: nop
#
# entries-in-buffer/entries-written: 6/6   #P:2
#
            tar-1234    [001] .....   10.000100: fuse_request_send: connection 52 req 2 opcode 1 (FUSE_LOOKUP) len 48
     fuse-0-99      [000] .....   10.000130: fuse_request_end: connection 52 req 2 len 144 error -2
            tar-1234    [001] .....   10.000200: fuse_request_send: connection 52 req 4 opcode 35 (FUSE_CREATE) len 64
     fuse-0-99      [000] .....   10.000250: fuse_request_end: connection 52 req 4 len 160 error 0
            tar-1234    [001] .....   12.000000: fuse_request_send: connection 52 req 6 opcode 1 (FUSE_LOOKUP) len 48
     fuse-0-99      [000] .....   12.000010: fuse_request_end: connection 52 req 6 len 144 error 0
";
    let t = trace::parse(text, 9.0, 11.0).unwrap();
    assert_eq!(t.len(), 2, "{t:?}");
    assert_eq!(t["lookup"].count, 1);
    assert!((t["lookup"].mean_us() - 30.0).abs() < 0.01, "{t:?}");
    assert_eq!(t["create"].count, 1);
    assert!((t["create"].mean_us() - 50.0).abs() < 0.01, "{t:?}");
    // A buffer that overflowed is no count at all.
    let lost = text.replace("6/6", "5/6");
    assert!(trace::parse(&lost, 9.0, 11.0).is_err());
}

/// On a live mount the tracer sees exactly the lookups a stat of fresh names costs, and
/// nothing of what happened outside its window or on another mount.
#[test]
fn the_kernel_counts_the_lookups_of_a_mount() {
    if !can_mount() {
        return;
    }
    let tracer = match trace::Tracer::new() {
        Ok(t) => t,
        Err(e) => {
            facility(false, &format!("the fuse tracepoints ({e})"));
            return;
        }
    };
    let s = Stack::new();
    for i in 0..30 {
        fs::write(s.lower.join(format!("f{i}")), "x").unwrap();
    }
    let other = Stack::new();
    let _m = Mount::new(&s.rw_opts(), &s.mnt);
    let _o = Mount::new(&other.rw_opts(), &other.mnt);
    let conn = trace::connection(&s.mnt).expect("the mount's FUSE connection");
    assert_ne!(Some(conn), trace::connection(&other.mnt));
    tracer.arm(conn).unwrap();
    // Before the window: not counted.
    assert!(fs::symlink_metadata(s.mnt.join("f0")).is_ok());
    let t0 = trace::mono_now();
    for i in 1..30 {
        assert!(fs::symlink_metadata(s.mnt.join(format!("f{i}"))).is_ok());
        // Another mount's requests: not counted.
        assert!(fs::symlink_metadata(other.mnt.join(format!("g{i}"))).is_err());
    }
    // Missing names are negative entries: one lookup each, however often probed.
    for _ in 0..3 {
        for i in 0..10 {
            assert!(fs::symlink_metadata(s.mnt.join(format!("none{i}"))).is_err());
        }
    }
    let t1 = trace::mono_now();
    let t = tracer.collect(t0, t1).unwrap();
    assert_eq!(t.get("lookup").map(|o| o.count), Some(29 + 10), "{t:?}");
    assert!(t["lookup"].mean_us() > 0.0, "{t:?}");
}
