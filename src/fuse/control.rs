//! The daemon's side of the control channel ([`crate::control`]): the ioctl the dispatcher
//! hands over before the inode-flag ioctls, answered for the mount's owner or root only; the
//! statistics snapshot it (and SIGUSR1) reads; and refreshes, run on a thread of their own
//! (the kernel's side of a refresh waits for requests in the directories it touches, which
//! the serving threads must stay free to answer).

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Instant, SystemTime};

use lru::LruCache;
use parking_lot::Mutex;

use super::abi::{self, Out};
use super::dispatch::{os, Dispatcher, Outcome, Req, Response};
use super::{Handle, StrataFs};
use crate::control::{op, Header, RefreshDone, DATA_LEN};
use crate::inode::NodeId;
use crate::overlay::{Overlay, Scope};
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

/// Refreshes whose outcome is kept for the clients waiting for them.
const KEPT_REFRESHES: usize = 64;

/// The FUSE connection, for the kernel's side of refreshes.
#[derive(Debug)]
struct Connection {
    dev: OwnedFd,
    /// The kernel's FUSE protocol minor version.
    minor: u32,
    /// The writeback cache is on: the kernel keeps its own size and times of regular
    /// files, whatever the daemon answers, as long as it holds their inodes.
    writeback: bool,
}

/// The refreshes asked for: `None` while one runs, then its outcome.
type Tickets = Mutex<VecDeque<(u64, Option<RefreshDone>)>>;

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
    connection: OnceLock<Arc<Connection>>,
    /// The refresh thread's queue (started with the first refresh).
    refresher: Mutex<Option<mpsc::Sender<(u64, Scope)>>>,
    tickets: Arc<Tickets>,
    refreshes: AtomicU64,
    /// Held while a refresh runs: those asked for and those `udba=notify` makes take turns.
    serial: Arc<Mutex<()>>,
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
            connection: OnceLock::new(),
            refresher: Mutex::new(None),
            tickets: Arc::default(),
            refreshes: AtomicU64::new(0),
            serial: Arc::default(),
        }
    }

    /// Queues a refresh of `scope`; returns its ticket.
    fn start_refresh(&self, fs: &StrataFs, scope: Scope) -> Result<u64, i32> {
        let ticket = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut t = self.tickets.lock();
            if t.len() == KEPT_REFRESHES {
                t.pop_front();
            }
            t.push_back((ticket, None));
        }
        let mut worker = self.refresher.lock();
        if worker.is_none() {
            let (tx, rx) = mpsc::channel::<(u64, Scope)>();
            let overlay = Arc::clone(&fs.overlay);
            let missing = Arc::clone(&fs.missing);
            let conn = self.connection.get().cloned();
            let tickets = Arc::clone(&self.tickets);
            let serial = Arc::clone(&self.serial);
            std::thread::Builder::new()
                .name("refresh".into())
                .spawn(move || {
                    for (ticket, scope) in rx {
                        let done = {
                            let _turn = serial.lock();
                            refresh(&overlay, &missing, conn.as_deref(), &scope, &[], false)
                        };
                        let mut t = tickets.lock();
                        if let Some(slot) = t.iter_mut().find(|(id, _)| *id == ticket) {
                            slot.1 = Some(done);
                        }
                    }
                })
                .map_err(|_| libc::EAGAIN)?;
            *worker = Some(tx);
        }
        let queued = worker
            .as_ref()
            .is_some_and(|tx| tx.send((ticket, scope)).is_ok());
        if !queued {
            *worker = None;
            return Err(libc::EIO);
        }
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        Ok(ticket)
    }

    /// The outcome of refresh `ticket`: `None` while it runs; `ESTALE` for one not known
    /// (any more).
    fn refresh_outcome(&self, ticket: u64) -> Result<Option<RefreshDone>, i32> {
        let t = self.tickets.lock();
        let (_, done) = t.iter().find(|(id, _)| *id == ticket).ok_or(libc::ESTALE)?;
        Ok(done.clone())
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
    /// Gives refreshes the FUSE connection `dev`, whose kernel speaks protocol minor
    /// `minor` (with the writeback cache on or not), for telling the kernel what to forget.
    /// Until then refreshes reach only the daemon's caches.
    pub fn set_connection(&self, dev: OwnedFd, minor: u32, writeback: bool) {
        let _ = self.control().connection.set(Arc::new(Connection {
            dev,
            minor,
            writeback,
        }));
    }

    /// With `udba=notify`, starts the thread that refreshes what the layer watches report
    /// changed: it waits for events, lets a burst gather for [`COALESCE`], and refreshes
    /// the names they name at once (as `stratafs refresh` would), the daemon's caches and
    /// then the kernel's. Call after [`Dispatcher::set_connection`].
    pub fn start_udba(&self) -> std::io::Result<()> {
        let fs = self.fs();
        if fs.overlay.watch_stats().is_none() {
            return Ok(());
        }
        let c = self.control();
        let overlay = Arc::clone(&fs.overlay);
        let missing = Arc::clone(&fs.missing);
        let conn = c.connection.get().cloned();
        let serial = Arc::clone(&c.serial);
        std::thread::Builder::new()
            .name("udba".into())
            .spawn(move || loop {
                if !overlay.wait_for_changes(None) {
                    // Interrupted: wait again, without spinning on a persistent error.
                    std::thread::sleep(COALESCE);
                    continue;
                }
                std::thread::sleep(COALESCE);
                if let Some((scope, in_place)) = overlay.changed_scope() {
                    let _turn = serial.lock();
                    refresh(&overlay, &missing, conn.as_deref(), &scope, &in_place, true);
                }
            })?;
        Ok(())
    }

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
            refreshes: c.refreshes.load(Ordering::Relaxed),
            requests,
        }
    }

    /// Answers a control ioctl (`in_data`: the message; `out_size`: what the caller takes).
    pub(crate) fn control_request(&self, req: &Req, in_data: &[u8], out_size: u32) -> Outcome {
        let c = self.control();
        if req.uid != c.owner && req.uid != 0 {
            return Err(os(libc::EPERM));
        }
        let (h, data) = Header::read(in_data).map_err(|r| os(r.0))?;
        let (answer, data) = match h.op {
            op::STATS => c.stats_piece(self, &h).map_err(os)?,
            op::REFRESH => {
                let scope = refresh_scope(data).map_err(os)?;
                let ticket = c.start_refresh(self.fs(), scope).map_err(os)?;
                let answer = Header {
                    op: op::REFRESH,
                    id: ticket,
                    ..Header::default()
                };
                (answer, Vec::new())
            }
            op::REFRESH_STATUS => {
                let done = c.refresh_outcome(h.id).map_err(os)?;
                let answer = Header {
                    op: op::REFRESH_STATUS,
                    id: h.id,
                    flags: if done.is_some() {
                        crate::control::DONE
                    } else {
                        0
                    },
                    ..Header::default()
                };
                let data = match done {
                    Some(d) => serde_json::to_vec(&d).map_err(|_| os(libc::EIO))?,
                    None => Vec::new(),
                };
                (answer, data)
            }
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

/// The scope of a refresh message: NUL-terminated paths relative to the root, or none for
/// the whole mount. `..` is refused (`EINVAL`); a path naming the root means the whole
/// mount.
fn refresh_scope(data: &[u8]) -> Result<Scope, i32> {
    let mut paths = Vec::new();
    for p in data.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let path = std::path::Path::new(OsStr::from_bytes(p));
        let mut rel = std::path::PathBuf::new();
        for c in path.components() {
            match c {
                std::path::Component::Normal(n) => rel.push(n),
                std::path::Component::RootDir | std::path::Component::CurDir => {}
                _ => return Err(libc::EINVAL),
            }
        }
        if rel.as_os_str().is_empty() {
            return Ok(Scope::All);
        }
        paths.push(rel.into_os_string());
    }
    Ok(if paths.is_empty() {
        Scope::All
    } else {
        Scope::Paths(paths)
    })
}

/// Runs one refresh: the daemon's caches and nodes first, then the kernel is told what to
/// forget (see `docs/SEMANTICS.md`).
fn refresh(
    overlay: &Overlay,
    missing: &MissingNames,
    conn: Option<&Connection>,
    scope: &Scope,
    in_place: &[(NodeId, OsString)],
    auto: bool,
) -> RefreshDone {
    let started = Instant::now();
    let r = overlay.refresh(scope);
    let mut done = RefreshDone {
        resolved: r.resolved as u64,
        gone: r.gone as u64,
        ..RefreshDone::default()
    };
    if let Some(c) = conn {
        let dev = c.dev.as_fd();
        let mut send = |what: &str, res: std::io::Result<()>| match res {
            Ok(()) => done.notified += 1,
            // The kernel holds no such dentry or inode: nothing to forget.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                done.failed += 1;
                tracing::debug!(what, error = %e, "refresh: notification not sent");
            }
        };
        // Names the kernel may cache as missing, in the directories in scope, that no node
        // holds now: dropped (a negative dentry has nothing mounted on it).
        let held = overlay.held_names();
        let dirs: HashSet<NodeId> = r.dirs.iter().copied().collect();
        let mut negative = missing.take(|d| r.all || dirs.contains(&d));
        negative.extend(r.missing.iter().cloned());
        for (dir, name) in negative.iter().filter(|e| !held.contains(*e)) {
            send(
                "negative entry",
                crate::sys::fuse_notify_inval_entry(dev, dir.get(), name, false),
            );
        }
        // Names of nodes: they expire, so their next use looks them up again, and only
        // those that now name another object (or none) are dropped. Dropping them at once
        // would detach whatever is mounted on them (a container's /proc).
        if c.minor >= FUSE_EXPIRE_ONLY_MINOR {
            for (dir, name) in &r.names {
                send(
                    "entry",
                    crate::sys::fuse_notify_inval_entry(dev, dir.get(), name, true),
                );
            }
        } else if !r.names.is_empty() {
            tracing::warn!(
                minor = c.minor,
                "refresh: the kernel cannot expire entries (Linux 6.2+): names it holds \
                 are looked up again only when their entry times out"
            );
        }
        for id in &r.nodes {
            send("inode", crate::sys::fuse_notify_inval_inode(dev, id.get()));
        }
        // Files changed in place behind the mount, under the writeback cache: the kernel
        // would keep its own size and times of the inode for as long as it holds it, so
        // the name is dropped, and with it the inode unless a file is open on it (the next
        // lookup makes a new one from what the daemon answers). What is mounted on such a
        // file is detached.
        if c.writeback {
            for (dir, name) in in_place {
                send(
                    "changed file",
                    crate::sys::fuse_notify_inval_entry(dev, dir.get(), name, false),
                );
            }
        }
    }
    let what = match scope {
        Scope::All => "the whole mount".to_string(),
        Scope::Paths(p) => format!("{} path(s)", p.len()),
    };
    if auto {
        tracing::debug!(
            scope = %what,
            resolved = done.resolved,
            gone = done.gone,
            notified = done.notified,
            us = started.elapsed().as_micros() as u64,
            "udba refresh"
        );
        return done;
    }
    tracing::warn!(
        scope = %what,
        resolved = done.resolved,
        gone = done.gone,
        notified = done.notified,
        ms = started.elapsed().as_millis() as u64,
        "refresh"
    );
    done
}

/// How long `udba=notify` lets a burst of events gather before it refreshes what they name:
/// the longest a change waits to show, beyond the refresh itself.
pub(crate) const COALESCE: std::time::Duration = std::time::Duration::from_millis(10);

/// The protocol minor version from which the kernel honours `FUSE_EXPIRE_ONLY`.
const FUSE_EXPIRE_ONLY_MINOR: u32 = 38;

/// How many names answered as missing are remembered for refreshes.
const MISSING_NAMES: usize = 1 << 16;
const MISSING_SHARDS: usize = 16;

/// Names the kernel was told are missing (negative entries it may cache for the entry
/// timeout), so that a refresh can make it forget them: the kernel looks a name it caches
/// as missing up again only once the entry times out, and the names are not otherwise
/// known. Sharded and bounded: the oldest are forgotten first.
#[derive(Debug)]
pub(crate) struct MissingNames {
    shards: Vec<Mutex<LruCache<(NodeId, OsString), ()>>>,
    key: std::collections::hash_map::RandomState,
}

impl Default for MissingNames {
    fn default() -> MissingNames {
        let per = NonZeroUsize::new(MISSING_NAMES / MISSING_SHARDS).unwrap_or(NonZeroUsize::MIN);
        MissingNames {
            shards: (0..MISSING_SHARDS)
                .map(|_| Mutex::new(LruCache::new(per)))
                .collect(),
            key: Default::default(),
        }
    }
}

impl MissingNames {
    /// `name` in directory `dir` was answered as missing.
    pub(crate) fn record(&self, dir: NodeId, name: &OsStr) {
        let shard = (self.key.hash_one((dir, name)) as usize) % MISSING_SHARDS;
        self.shards[shard]
            .lock()
            .put((dir, name.to_os_string()), ());
    }

    /// Removes and returns the names in the directories `wanted` picks.
    fn take(&self, wanted: impl Fn(NodeId) -> bool) -> Vec<(NodeId, OsString)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut s = shard.lock();
            let picked: Vec<(NodeId, OsString)> = s
                .iter()
                .map(|(k, _)| k)
                .filter(|(d, _)| wanted(*d))
                .cloned()
                .collect();
            for k in picked {
                s.pop(&k);
                out.push(k);
            }
        }
        out
    }
}
