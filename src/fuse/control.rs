//! The daemon's side of the control channel ([`crate::control`]): the ioctl the dispatcher
//! hands over before the inode-flag ioctls, answered for the mount's owner or root only, and
//! the statistics snapshot it (and SIGUSR1) reads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use super::abi::{self, Out};
use super::dispatch::{os, Dispatcher, Outcome, Req, Response};
use super::{Handle, StrataFs};
use crate::control::{op, Header, DATA_LEN};
use crate::stats::{OpStats, OpenStats, Snapshot};

/// The ioctl command of the control channel, as the request carries it (rustix's opcode
/// type is wider on some targets).
#[allow(clippy::unnecessary_cast)]
pub(crate) const CMD: u32 = crate::sys::CONTROL_IOCTL as u32;

/// Snapshots kept for readers that read them in pieces.
const KEPT: usize = 4;

/// How the mount is served, for the snapshot.
#[derive(Debug, Clone, Default)]
struct Serving {
    mountpoint: String,
    transport: &'static str,
    queues: u32,
}

/// The control channel's state in the daemon.
#[derive(Debug)]
pub(crate) struct Control {
    /// The uid that started the daemon: it and root may ask.
    owner: u32,
    started: Instant,
    serving: Mutex<Serving>,
    /// The last serialized snapshots, by id.
    snapshots: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
    next_id: AtomicU64,
}

impl Control {
    pub(crate) fn new(owner: u32) -> Control {
        Control {
            owner,
            started: Instant::now(),
            serving: Mutex::new(Serving {
                transport: "/dev/fuse",
                ..Serving::default()
            }),
            snapshots: Mutex::new(VecDeque::with_capacity(KEPT)),
            next_id: AtomicU64::new(1),
        }
    }

    /// The piece of snapshot `id` at `offset` (a new snapshot for id 0).
    fn stats_piece(&self, d: &Dispatcher, h: &Header) -> Result<(Header, Vec<u8>), i32> {
        let (id, json) = if h.id == 0 {
            let json = serde_json::to_vec(&d.snapshot()).map_err(|_| libc::EIO)?;
            let json = Arc::new(json);
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let mut kept = self.snapshots.lock();
            if kept.len() == KEPT {
                kept.pop_front();
            }
            kept.push_back((id, Arc::clone(&json)));
            (id, json)
        } else {
            let kept = self.snapshots.lock();
            let found = kept.iter().find(|(i, _)| *i == h.id);
            // Dropped for newer ones: the reader starts again.
            let (_, json) = found.ok_or(libc::ESTALE)?;
            (h.id, Arc::clone(json))
        };
        let start = usize::try_from(h.offset).map_err(|_| libc::EINVAL)?;
        let piece = json
            .get(start..(start + DATA_LEN).min(json.len()))
            .ok_or(libc::EINVAL)?;
        let answer = Header {
            op: op::STATS,
            flags: 0,
            len: piece.len() as u32,
            id,
            offset: h.offset,
            total: json.len() as u64,
        };
        Ok((answer, piece.to_vec()))
    }
}

impl Dispatcher {
    /// Tells the snapshot where the mount is.
    pub fn set_mountpoint(&self, mountpoint: &std::path::Path) {
        self.control().serving.lock().mountpoint = mountpoint.display().to_string();
    }

    /// Tells the snapshot which transport serves: FUSE over io_uring with `queues` queues,
    /// or `/dev/fuse` (0).
    pub fn set_transport(&self, queues: usize) {
        let mut s = self.control().serving.lock();
        s.transport = if queues > 0 { "io_uring" } else { "/dev/fuse" };
        s.queues = u32::try_from(queues).unwrap_or(u32::MAX);
    }

    /// One reading of every counter and gauge.
    pub fn snapshot(&self) -> Snapshot {
        let c = self.control();
        let serving = c.serving.lock().clone();
        let fs = self.fs();
        let requests = self
            .requests()
            .snapshot()
            .into_iter()
            .map(|(opcode, counts)| OpStats::new(abi::op_name(opcode), opcode, counts))
            .collect();
        Snapshot {
            format: crate::stats::FORMAT,
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            mountpoint: serving.mountpoint,
            uptime_secs: c.started.elapsed().as_secs_f64(),
            taken_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            transport: serving.transport.to_string(),
            uring_queues: serving.queues,
            passthrough: fs.backing_dev.is_some(),
            rss_bytes: crate::stats::rss_bytes(),
            nodes: fs.overlay.node_stats(),
            open: fs.open_stats(),
            caches: fs.overlay.cache_stats(),
            copy_ups: fs.overlay.copy_up_stats(),
            requests,
        }
    }

    /// Answers a control ioctl (`in_data`: the message; `out_size`: what the caller takes).
    pub(crate) fn control_request(&self, req: &Req, in_data: &[u8], out_size: u32) -> Outcome {
        let c = self.control();
        if req.uid != c.owner && req.uid != 0 {
            return Err(os(libc::EPERM));
        }
        let (h, _data) = Header::read(in_data).map_err(|r| os(r.0))?;
        let (answer, data) = match h.op {
            op::STATS => c.stats_piece(self, &h).map_err(os)?,
            _ => return Err(os(libc::EOPNOTSUPP)),
        };
        let mut msg = vec![0u8; crate::control::HEADER_LEN + data.len()];
        answer.write(&data, &mut msg);
        if msg.len() > out_size as usize {
            return Err(os(libc::EINVAL));
        }
        // struct fuse_ioctl_out { result, flags, in_iovs, out_iovs }, then the data.
        let mut o = Out::with_capacity(16 + msg.len());
        o.u32(0).u32(0).u32(0).u32(0);
        o.buf.extend_from_slice(&msg);
        Ok(Response::Body(o.buf))
    }
}

impl StrataFs {
    /// Open files (and how many in passthrough) and directories.
    fn open_stats(&self) -> OpenStats {
        let mut s = OpenStats::default();
        for h in self.handles.iter() {
            match h.value() {
                Handle::File(f) => {
                    s.files += 1;
                    s.passthrough += u64::from(f.passthrough);
                }
                Handle::Dir(_) => s.dirs += 1,
            }
        }
        s
    }
}
