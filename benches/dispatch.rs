//! The cost of the FUSE front end itself, in process (no kernel, no mount): a request's bytes
//! through `Dispatcher::handle` (decode, the per-request tracing span, the handler, the reply
//! encoding) to a transport that drops the reply, and the span alone, under the logging the
//! daemon installs by default (`warn`).
//!
//! ```sh
//! cargo bench --bench dispatch
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::ffi::OsString;
use std::hint::black_box;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use stratafs::config::{parse_args, Invocation};
use stratafs::fuse::abi::{op, IN_HEADER_LEN};
use stratafs::fuse::dispatch::{Access, Dispatcher, Transport};
use stratafs::fuse::StrataFs;

/// Keeps the last reply's first bytes (for the node id of an entry) and drops the rest.
#[derive(Default)]
struct Sink {
    last: Cell<[u8; 8]>,
    error: Cell<i32>,
}

impl Transport for Sink {
    fn reply(&self, _unique: u64, error: i32, body: &[u8]) -> io::Result<()> {
        let mut first = [0u8; 8];
        if let Some(b) = body.get(..8) {
            first.copy_from_slice(b);
        }
        self.last.set(first);
        self.error.set(error);
        Ok(())
    }
}

/// A request: header for `opcode` on `nodeid`, then `args`.
fn request(opcode: u32, nodeid: u64, args: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(IN_HEADER_LEN + args.len());
    b.extend_from_slice(&((IN_HEADER_LEN + args.len()) as u32).to_ne_bytes());
    b.extend_from_slice(&opcode.to_ne_bytes());
    b.extend_from_slice(&1u64.to_ne_bytes());
    b.extend_from_slice(&nodeid.to_ne_bytes());
    for v in [0u32, 0, 1, 0] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b.extend_from_slice(args);
    b
}

fn benches(c: &mut Criterion) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(io::sink)
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    std::fs::create_dir_all(&lower).unwrap();
    std::fs::write(lower.join("f"), "data").unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let args: Vec<OsString> = vec![
        "-o".into(),
        format!("lowerdir={}", lower.display()).into(),
        mnt.into_os_string(),
    ];
    let Ok(Invocation::Mount(cfg)) = parse_args(args) else {
        panic!("options")
    };
    let ov = stratafs::daemon::open_overlay(&cfg).unwrap();
    let fs = StrataFs::new(Arc::new(ov), Duration::from_secs(1), None);
    let d = Dispatcher::new(fs, Access::All, 0);
    let sink = Sink::default();

    let lookup = request(op::LOOKUP, 1, b"f\0");
    d.handle(&lookup, &sink);
    assert_eq!(sink.error.get(), 0, "lookup of f");
    let node = u64::from_ne_bytes(sink.last.get());
    let getattr = request(op::GETATTR, node, &[0u8; 16]);
    let forget = request(op::FORGET, node, &1u64.to_ne_bytes());
    let missing = request(op::LOOKUP, 1, b"nothere\0");

    let mut g = c.benchmark_group("dispatch");
    g.bench_function("getattr", |b| {
        b.iter(|| d.handle(black_box(&getattr), &sink))
    });
    g.bench_function("lookup+forget", |b| {
        b.iter(|| {
            d.handle(black_box(&lookup), &sink);
            d.handle(black_box(&forget), &sink);
        })
    });
    g.bench_function("lookup-missing", |b| {
        b.iter(|| d.handle(black_box(&missing), &sink))
    });
    // What the dispatcher adds to each request for its span and its `request` event.
    g.bench_function("span-only", |b| {
        b.iter(|| {
            let span = tracing::debug_span!(
                "req",
                id = black_box(1u64),
                op = "getattr",
                node = black_box(node),
                pid = black_box(1u32)
            );
            let _in = span.enter();
            tracing::debug!(uid = 0u32, len = 56u32, "request");
        })
    });
    g.finish();
}

criterion_group! {
    name = dispatch;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(dispatch);
