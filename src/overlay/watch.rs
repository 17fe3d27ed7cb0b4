//! `udba=notify`: watches on the layer directories the daemon has looked into, and the
//! changes they report, as (directory node, name) pairs for [`Overlay::refresh`].
//!
//! A directory is watched in a layer from the moment the daemon opens it there (every lookup
//! and listing in it does, through [`Overlay::dir_fd`]) until its node is forgotten by the
//! kernel or removed through the mount. The watch does not go with the directory's cached fd:
//! what the kernel and the daemon know about the directory's names (entries, names cached
//! as missing, listings) outlives the fd, and a change the watch would have reported then
//! goes unseen. At most a budget of directories (`udba_watches=`) is watched; past it the
//! directories watched longest ago lose theirs (changes there need `stratafs refresh`), and
//! the log says so once.
//!
//! Two kernel interfaces, the same watches: fanotify where the daemon may have a group
//! that reports names (`FAN_REPORT_DFID_NAME`: root, or anyone since Linux 5.13 for marks
//! on single directories), inotify otherwise, and for a directory on a filesystem fanotify
//! cannot mark (one without file handles). fanotify's events say which process made the
//! change, so the daemon's own writes to the upper layer (already in its caches) are read
//! and skipped; inotify's do not, and they cause refreshes of names that did not change
//! behind the mount, gathered by the refresh thread as any other burst. A fanotify mark is
//! removed through the directory, so each keeps an `O_PATH` fd of it; an inotify watch is
//! removed by its number.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;
use rustix::fs::inotify::{self, ReadFlags, WatchFlags};

use super::{Overlay, Scope};
use crate::inode::{NodeId, ROOT};
use crate::layer::LayerIdx;
use crate::sys::fanotify;

/// What an inotify watch reports: as [`fanotify::DIR_EVENTS`]. Data written to a file
/// shows when the writer closes it (`IN_MODIFY` would report every write). `EXCL_UNLINK`:
/// nothing from names already removed.
fn inotify_mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::EXCL_UNLINK
}

/// A change a watch reported.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// Name `name` in directory node `dir` (or the directory itself, `None`); `in_place`:
    /// a file's data or attributes changed, its name stayed.
    In {
        dir: NodeId,
        name: Option<OsString>,
        in_place: bool,
    },
    /// Events were lost (the kernel's queue overflowed): anything may have changed.
    Lost,
}

/// One watch: an inotify watch descriptor, or the file handle of a directory fanotify marks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum WatchId {
    Inotify(i32),
    Fanotify(Arc<[u8]>),
}

/// The (directory, layer) pairs a watch is for (one directory may be several nodes' in
/// several layers), and for a fanotify mark the directory it is removed through.
#[derive(Debug)]
struct Watch {
    keys: Vec<(NodeId, LayerIdx)>,
    dir: Option<OwnedFd>,
}

#[derive(Debug)]
struct State {
    /// Least recently placed first.
    watches: LruCache<WatchId, Watch>,
    by_key: HashMap<(NodeId, LayerIdx), WatchId>,
    /// The directory fds the fanotify marks keep.
    fds: usize,
}

impl State {
    /// Forgets key `key`; returns its watch when no other key uses it any more.
    fn detach(&mut self, key: (NodeId, LayerIdx)) -> Option<(WatchId, Watch)> {
        let id = self.by_key.remove(&key)?;
        let w = self.watches.peek_mut(&id)?;
        w.keys.retain(|k| *k != key);
        if w.keys.is_empty() {
            let out = self.watches.pop_entry(&id);
            self.fds = self.fds.saturating_sub(
                out.as_ref()
                    .map_or(0, |(_, w)| usize::from(w.dir.is_some())),
            );
            out
        } else {
            None
        }
    }

    /// Forgets watch `id` and every key on it.
    fn forget(&mut self, id: &WatchId) -> Option<Watch> {
        let w = self.watches.pop(id)?;
        self.fds = self.fds.saturating_sub(usize::from(w.dir.is_some()));
        for k in &w.keys {
            if self.by_key.get(k) == Some(id) {
                self.by_key.remove(k);
            }
        }
        Some(w)
    }

    /// The directory nodes watch `id` is for.
    fn nodes(&self, id: &WatchId) -> Vec<NodeId> {
        self.watches
            .peek(id)
            .map(|w| w.keys.iter().map(|k| k.0).collect())
            .unwrap_or_default()
    }
}

/// The watches of a mount with `udba=notify`.
#[derive(Debug)]
pub(crate) struct Watches {
    fanotify: Option<OwnedFd>,
    inotify: Option<OwnedFd>,
    budget: usize,
    /// The most fanotify marks (each keeps a directory fd): a quarter of the fd limit, as
    /// for the cache of directory fds.
    fd_cap: usize,
    state: Mutex<State>,
    stats: WatchCounters,
    /// The log has said the budget is used up.
    full_said: AtomicBool,
}

#[derive(Debug, Default)]
struct WatchCounters {
    events: crate::stats::Counter,
    own: crate::stats::Counter,
    evicted: crate::stats::Counter,
    failed: crate::stats::Counter,
    lost: crate::stats::Counter,
    refreshes: crate::stats::Counter,
}

/// The size of the buffer events are read into.
const READ_BUF: usize = 64 * 1024;

impl Watches {
    /// No watches yet, at most `budget` at a time: fanotify where this process may have a
    /// group, and inotify for what fanotify cannot watch.
    pub(crate) fn new(budget: usize) -> std::io::Result<Watches> {
        let fanotify = match fanotify::init() {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::debug!(error = %e, "udba=notify: no fanotify group; inotify");
                None
            }
        };
        let inotify =
            match inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK) {
                Ok(fd) => Some(fd),
                Err(e) if fanotify.is_some() => {
                    tracing::debug!(error = %e, "udba=notify: no inotify instance");
                    None
                }
                Err(e) => return Err(e.into()),
            };
        Ok(Watches {
            fanotify,
            inotify,
            budget: budget.max(1),
            fd_cap: usize::try_from(crate::sys::nofile_limit() / 4)
                .unwrap_or(usize::MAX)
                .max(16),
            state: Mutex::new(State {
                watches: LruCache::unbounded(),
                by_key: HashMap::new(),
                fds: 0,
            }),
            stats: WatchCounters::default(),
            full_said: AtomicBool::new(false),
        })
    }

    /// The interface watches are placed with first.
    fn backend(&self) -> &'static str {
        if self.fanotify.is_some() {
            "fanotify"
        } else {
            "inotify"
        }
    }

    /// Removes watch `w` from the kernel.
    fn remove(&self, id: &WatchId, w: &Watch) {
        match (id, &self.inotify, &self.fanotify, &w.dir) {
            (WatchId::Inotify(wd), Some(ino), _, _) => {
                let _ = inotify::remove_watch(ino, *wd);
            }
            (WatchId::Fanotify(_), _, Some(fan), Some(dir)) => {
                let _ = fanotify::mark_dir(fan.as_fd(), dir.as_fd(), false);
            }
            _ => {}
        }
    }

    /// Watches the directory open as `fd` as node `node`'s copy in layer `layer`.
    pub(crate) fn watch(&self, node: NodeId, layer: LayerIdx, fd: &OwnedFd) {
        let key = (node, layer);
        // fanotify knows a directory by its file handle.
        let handle = self.fanotify.as_ref().and_then(|_| {
            fanotify::dir_handle(fd.as_fd())
                .ok()
                .map(|h| WatchId::Fanotify(h.into()))
        });
        let mut st = self.state.lock();
        if let Some(id) = &handle {
            if st.by_key.get(&key) == Some(id) {
                st.watches.promote(id);
                return;
            }
        }
        // Make room first: the oldest watches go.
        let shared = handle.as_ref().is_some_and(|id| st.watches.contains(id));
        while !shared && !st.by_key.contains_key(&key) && st.watches.len() >= self.budget {
            let Some((old, w)) = st.watches.pop_lru() else {
                break;
            };
            st.fds = st.fds.saturating_sub(usize::from(w.dir.is_some()));
            for k in &w.keys {
                st.by_key.remove(k);
            }
            self.remove(&old, &w);
            self.stats.evicted.add(1);
            if !self.full_said.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    budget = self.budget,
                    "udba=notify: the watch budget (udba_watches) is used up; the layer \
                     directories watched longest ago are let go, and changes in them need \
                     'stratafs refresh'"
                );
            }
        }
        let id = match handle {
            Some(id) if st.watches.contains(&id) => id,
            // Past its share of the fd limit, a new watch is an inotify one (which keeps no
            // fd).
            Some(_) if st.fds >= self.fd_cap => match self.inotify_watch(fd) {
                Some(id) => id,
                None => return self.unwatch_key(&mut st, key),
            },
            Some(id) => match self.mark(fd) {
                Some(dir) => {
                    st.fds += 1;
                    st.watches.put(
                        id.clone(),
                        Watch {
                            keys: Vec::new(),
                            dir: Some(dir),
                        },
                    );
                    id
                }
                None => match self.inotify_watch(fd) {
                    Some(id) => id,
                    None => return self.unwatch_key(&mut st, key),
                },
            },
            None => match self.inotify_watch(fd) {
                Some(id) => id,
                None => return self.unwatch_key(&mut st, key),
            },
        };
        match st.by_key.get(&key) {
            Some(old) if *old == id => {
                st.watches.promote(&id);
                return;
            }
            // The directory was replaced: its old watch goes unless another key uses it.
            Some(_) => self.unwatch_key(&mut st, key),
            None => {}
        }
        st.by_key.insert(key, id.clone());
        match st.watches.get_mut(&id) {
            Some(w) => w.keys.push(key),
            None => {
                st.watches.put(
                    id,
                    Watch {
                        keys: vec![key],
                        dir: None,
                    },
                );
            }
        }
    }

    /// Marks the directory open as `fd` with fanotify; returns the fd to remove the mark
    /// through, or `None` when it cannot be marked.
    fn mark(&self, fd: &OwnedFd) -> Option<OwnedFd> {
        let fan = self.fanotify.as_ref()?;
        let dir = fd.try_clone().ok()?;
        match fanotify::mark_dir(fan.as_fd(), dir.as_fd(), true) {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::debug!(error = %e, "udba: no fanotify mark; inotify");
                None
            }
        }
    }

    /// An inotify watch on the directory open as `fd`.
    fn inotify_watch(&self, fd: &OwnedFd) -> Option<WatchId> {
        let Some(ino) = &self.inotify else {
            self.stats.failed.add(1);
            return None;
        };
        // inotify takes a path only, and the daemon's own fd link names the directory
        // whatever its path is now.
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
        match inotify::add_watch(ino, path.as_str(), inotify_mask()) {
            Ok(wd) => Some(WatchId::Inotify(wd)),
            Err(e) => {
                self.stats.failed.add(1);
                tracing::debug!(error = %e, "udba: no watch");
                None
            }
        }
    }

    /// Forgets `key`, removing its watch when no other key uses it.
    fn unwatch_key(&self, st: &mut State, key: (NodeId, LayerIdx)) {
        if let Some((id, w)) = st.detach(key) {
            self.remove(&id, &w);
        }
    }

    /// Stops watching node `node`'s copies (it was forgotten or removed).
    pub(crate) fn unwatch(&self, node: NodeId, layers: usize) {
        let mut st = self.state.lock();
        for l in 0..layers {
            self.unwatch_key(&mut st, (node, l as LayerIdx));
        }
    }

    /// Waits up to `timeout` for events; true when some are ready.
    pub(crate) fn wait(&self, timeout: Option<std::time::Duration>) -> bool {
        let mut fds: Vec<rustix::event::PollFd<'_>> = [&self.fanotify, &self.inotify]
            .into_iter()
            .flatten()
            .map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN))
            .collect();
        let ts = timeout.and_then(|t| rustix::event::Timespec::try_from(t).ok());
        matches!(rustix::event::poll(&mut fds, ts.as_ref()), Ok(n) if n > 0)
    }

    /// The changes reported so far (without waiting), deduplicated.
    pub(crate) fn read(&self) -> Vec<Change> {
        let mut out = Changes::default();
        if let Some(fan) = &self.fanotify {
            // This process (the daemon forks after the watches are made): events it caused
            // are its own changes.
            let pid = rustix::process::getpid().as_raw_nonzero().get();
            self.read_fanotify(fan, pid, &mut out);
        }
        if let Some(ino) = &self.inotify {
            self.read_inotify(ino, &mut out);
        }
        out.list
    }

    fn read_inotify(&self, ino: &OwnedFd, out: &mut Changes) {
        let mut buf = vec![MaybeUninit::<u8>::uninit(); READ_BUF];
        let mut reader = inotify::Reader::new(ino.as_fd(), &mut buf);
        // Err (EAGAIN): nothing more for now.
        while let Ok(ev) = reader.next() {
            self.stats.events.add(1);
            let flags = ev.events();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                self.stats.lost.add(1);
                out.push(Change::Lost);
                continue;
            }
            let id = WatchId::Inotify(ev.wd());
            let name = ev
                .file_name()
                .map(|n| OsStr::from_bytes(n.to_bytes()).to_os_string())
                .filter(|n| !n.is_empty());
            let mut st = self.state.lock();
            if flags.contains(ReadFlags::IGNORED) {
                // The watch is gone (removed, or its directory deleted).
                st.forget(&id);
                continue;
            }
            let nodes = st.nodes(&id);
            drop(st);
            let in_place = name.is_some()
                && !flags.contains(ReadFlags::ISDIR)
                && flags.intersects(ReadFlags::CLOSE_WRITE | ReadFlags::ATTRIB);
            for dir in nodes {
                out.push(Change::In {
                    dir,
                    name: name.clone(),
                    in_place,
                });
            }
        }
    }

    fn read_fanotify(&self, fan: &OwnedFd, pid: i32, out: &mut Changes) {
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let n = match fanotify::read_ready(fan.as_fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "udba: reading fanotify events");
                    break;
                }
            };
            let mut rest = buf.get(..n).unwrap_or_default();
            while let Some(ev) = FanEvent::parse(&mut rest) {
                self.fanotify_event(&ev, pid, out);
            }
        }
    }

    fn fanotify_event(&self, ev: &FanEvent<'_>, pid: i32, out: &mut Changes) {
        self.stats.events.add(1);
        if ev.mask & fanotify::OVERFLOW != 0 || !ev.known {
            self.stats.lost.add(1);
            out.push(Change::Lost);
            return;
        }
        if ev.pid == pid {
            // The daemon's own change, in its caches already.
            self.stats.own.add(1);
            return;
        }
        let Some((handle, name)) = ev.dir.as_ref() else {
            return;
        };
        let id = WatchId::Fanotify(Arc::from(*handle));
        let mut st = self.state.lock();
        let itself = name.is_none_or(|n| n.as_bytes() == b".");
        if itself && ev.mask & libc::FAN_DELETE_SELF != 0 {
            // The directory is gone: so is its mark, with the inode.
            let nodes = st.nodes(&id);
            st.forget(&id);
            drop(st);
            for dir in nodes {
                out.push(Change::In {
                    dir,
                    name: None,
                    in_place: false,
                });
            }
            return;
        }
        let nodes = st.nodes(&id);
        drop(st);
        let name = name.filter(|_| !itself).map(|n| n.to_os_string());
        let in_place =
            name.is_some() && ev.mask & libc::FAN_ONDIR == 0 && ev.mask & fanotify::IN_PLACE != 0;
        for dir in nodes {
            out.push(Change::In {
                dir,
                name: name.clone(),
                in_place,
            });
        }
    }

    /// What the watches did.
    pub(crate) fn stats(&self) -> crate::stats::WatchStats {
        let (watches, watched) = {
            let st = self.state.lock();
            (st.watches.len() as u64, st.by_key.len() as u64)
        };
        crate::stats::WatchStats {
            backend: self.backend().to_string(),
            watches,
            watched,
            budget: self.budget as u64,
            events: self.stats.events.get(),
            own: self.stats.own.get(),
            evicted: self.stats.evicted.get(),
            failed: self.stats.failed.get(),
            lost: self.stats.lost.get(),
            refreshes: self.stats.refreshes.get(),
        }
    }
}

/// Changes, each once, in the order first reported.
#[derive(Default)]
struct Changes {
    list: Vec<Change>,
    seen: HashSet<Change>,
}

impl Changes {
    fn push(&mut self, c: Change) {
        if self.seen.insert(c.clone()) {
            self.list.push(c);
        }
    }
}

/// One fanotify event, as read (`struct fanotify_event_metadata` and its info records).
struct FanEvent<'a> {
    mask: u64,
    pid: i32,
    /// A metadata version this code reads.
    known: bool,
    /// The directory's handle (its type, then its bytes, as [`fanotify::dir_handle`]
    /// gives them) and the name in it, if any.
    dir: Option<(&'a [u8], Option<&'a OsStr>)>,
}

impl<'a> FanEvent<'a> {
    /// The event at the start of `buf`, which moves past it; `None` at the end (or at
    /// bytes that are no event).
    fn parse(buf: &mut &'a [u8]) -> Option<FanEvent<'a>> {
        // event_len u32, vers u8, reserved u8, metadata_len u16, mask u64, fd i32, pid i32.
        const META: usize = 24;
        let b: &'a [u8] = buf;
        let event_len = u32::from_ne_bytes(b.get(0..4)?.try_into().ok()?) as usize;
        if event_len < META || event_len > b.len() {
            return None;
        }
        let (ev, rest) = b.split_at(event_len);
        *buf = rest;
        let vers = ev[4];
        let meta_len = usize::from(u16::from_ne_bytes(ev.get(6..8)?.try_into().ok()?));
        let mask = u64::from_ne_bytes(ev.get(8..16)?.try_into().ok()?);
        let pid = i32::from_ne_bytes(ev.get(20..24)?.try_into().ok()?);
        let mut out = FanEvent {
            mask,
            pid,
            known: vers == fanotify::METADATA_VERSION,
            dir: None,
        };
        // Info records: type u8, pad u8, len u16; for a handle then fsid (8 bytes),
        // handle_bytes u32, handle_type i32, the handle, and for DFID_NAME the name, NUL
        // terminated.
        let mut info = ev.get(meta_len.max(META)..).unwrap_or_default();
        while info.len() >= 4 {
            let typ = info[0];
            let len = usize::from(u16::from_ne_bytes([info[2], info[3]]));
            if len < 4 || len > info.len() {
                break;
            }
            let (rec, more) = info.split_at(len);
            info = more;
            if ![
                fanotify::INFO_DFID_NAME,
                fanotify::INFO_DFID,
                fanotify::INFO_FID,
            ]
            .contains(&typ)
                || out.dir.is_some()
            {
                continue;
            }
            let Some(hb) = rec.get(12..16) else { continue };
            let hb = u32::from_ne_bytes(hb.try_into().unwrap_or_default()) as usize;
            let Some(handle) = rec.get(16..20 + hb) else {
                continue;
            };
            let name = (typ == fanotify::INFO_DFID_NAME).then(|| {
                let n = rec.get(20 + hb..).unwrap_or_default();
                let end = n.iter().position(|c| *c == 0).unwrap_or(n.len());
                OsStr::from_bytes(&n[..end])
            });
            out.dir = Some((handle, name));
        }
        Some(out)
    }
}

impl Overlay {
    /// True with `udba=notify`: the layers are expected to change behind the mount, so a
    /// file opened by name after its check is checked again (a change behind the mount
    /// moves no directory version).
    pub(super) fn layers_change_behind(&self) -> bool {
        self.watches.is_some()
    }

    /// Waits up to `timeout` for changes the watches report (false at once without
    /// `udba=notify`).
    pub fn wait_for_changes(&self, timeout: Option<std::time::Duration>) -> bool {
        self.watches.as_ref().is_some_and(|w| w.wait(timeout))
    }

    /// The refresh covering the changes the watches reported since the last call (`None`:
    /// nothing changed that the daemon knows of), and the names of files changed in place
    /// among them, `(directory node, name)`.
    pub fn changed_scope(&self) -> Option<(Scope, Vec<(NodeId, OsString)>)> {
        let w = self.watches.as_ref()?;
        let changes = w.read();
        if changes.is_empty() {
            return None;
        }
        let mut paths: Vec<OsString> = Vec::new();
        let mut in_place_names = Vec::new();
        let mut all = false;
        for c in changes {
            let (dir, name, in_place) = match c {
                Change::Lost => {
                    all = true;
                    continue;
                }
                Change::In {
                    dir,
                    name,
                    in_place,
                } => (dir, name, in_place),
            };
            let Some(node) = self.nodes.get(dir).filter(|n| !n.is_dead()) else {
                continue;
            };
            let Ok(mut path) = self.rel_path(&node) else {
                continue;
            };
            match name {
                Some(n) => {
                    if in_place {
                        in_place_names.push((dir, n.clone()));
                    }
                    if !path.is_empty() {
                        path.push(b'/');
                    }
                    path.extend_from_slice(n.as_bytes());
                }
                // The directory itself, the root included: all of it.
                None if dir == ROOT => all = true,
                None => {}
            }
            paths.push(OsStr::from_bytes(&path).to_os_string());
        }
        if all {
            w.stats.refreshes.add(1);
            return Some((Scope::All, in_place_names));
        }
        if paths.is_empty() {
            return None;
        }
        w.stats.refreshes.add(1);
        Some((Scope::Paths(paths), in_place_names))
    }

    /// Starts watching directory `node`'s copy in layer `layer`, open as `fd`, with
    /// `udba=notify`.
    pub(super) fn watch_dir(&self, node: NodeId, layer: LayerIdx, fd: &OwnedFd) {
        if let Some(w) = &self.watches {
            w.watch(node, layer, fd);
        }
    }

    /// Stops watching directory `node` (forgotten, or removed through the mount).
    pub(super) fn unwatch_dir(&self, node: NodeId) {
        if let Some(w) = &self.watches {
            w.unwatch(node, self.layers.len());
        }
    }

    /// What the watches did, with `udba=notify`.
    pub fn watch_stats(&self) -> Option<crate::stats::WatchStats> {
        self.watches.as_ref().map(Watches::stats)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn event(mask: u64, pid: i32, handle: &[u8], name: &[u8]) -> Vec<u8> {
        let mut rec = vec![fanotify::INFO_DFID_NAME, 0, 0, 0];
        rec.extend_from_slice(&[7u8; 8]); // fsid
        rec.extend_from_slice(&((handle.len() - 4) as u32).to_ne_bytes());
        rec.extend_from_slice(handle);
        rec.extend_from_slice(name);
        rec.push(0);
        while rec.len() % 4 != 0 {
            rec.push(0);
        }
        let rl = rec.len() as u16;
        rec[2..4].copy_from_slice(&rl.to_ne_bytes());
        let mut ev = Vec::new();
        ev.extend_from_slice(&((24 + rec.len()) as u32).to_ne_bytes());
        ev.extend_from_slice(&[fanotify::METADATA_VERSION, 0]);
        ev.extend_from_slice(&24u16.to_ne_bytes());
        ev.extend_from_slice(&mask.to_ne_bytes());
        ev.extend_from_slice(&(-1i32).to_ne_bytes());
        ev.extend_from_slice(&pid.to_ne_bytes());
        ev.extend_from_slice(&rec);
        ev
    }

    #[test]
    fn fanotify_events_parse() {
        let h = [1u8, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9];
        let mut buf = event(libc::FAN_CREATE, 42, &h, b"name");
        buf.extend(event(libc::FAN_ATTRIB | libc::FAN_ONDIR, 7, &h, b"."));
        let mut rest = &buf[..];
        let a = FanEvent::parse(&mut rest).unwrap();
        assert_eq!((a.mask, a.pid, a.known), (libc::FAN_CREATE, 42, true));
        assert_eq!(a.dir, Some((&h[..], Some(OsStr::new("name")))));
        let b = FanEvent::parse(&mut rest).unwrap();
        assert_eq!(b.dir, Some((&h[..], Some(OsStr::new(".")))));
        assert!(rest.is_empty());
        assert!(FanEvent::parse(&mut rest).is_none());
        // A short or broken buffer ends the parse.
        let mut short = &buf[..10];
        assert!(FanEvent::parse(&mut short).is_none());
    }

    #[test]
    fn a_directory_fanotify_marks_has_the_handle_its_events_carry() {
        let Ok(fan) = fanotify::init() else {
            return; // no fanotify for this process: inotify is used
        };
        let t = tempfile::tempdir().unwrap();
        let dir = rustix::fs::open(
            t.path(),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let handle = fanotify::dir_handle(dir.as_fd()).unwrap();
        fanotify::mark_dir(fan.as_fd(), dir.as_fd(), true).unwrap();
        std::fs::write(t.path().join("f"), "x").unwrap();
        let mut buf = vec![0u8; READ_BUF];
        let n = fanotify::read_ready(fan.as_fd(), &mut buf).unwrap();
        let mut rest = &buf[..n];
        let ev = FanEvent::parse(&mut rest).unwrap();
        assert!(ev.mask & libc::FAN_CREATE != 0, "{:#x}", ev.mask);
        assert_eq!(ev.pid, rustix::process::getpid().as_raw_nonzero().get());
        assert_eq!(ev.dir, Some((&handle[..], Some(OsStr::new("f")))));
        fanotify::mark_dir(fan.as_fd(), dir.as_fd(), false).unwrap();
    }

    /// Both interfaces report a name made in a watched directory as a change of that name
    /// in the directory's node, keep to the budget (the oldest watch goes), and report
    /// nothing from a directory no longer watched.
    #[test]
    fn both_interfaces_report_names_within_the_budget() {
        for fan in [true, false] {
            let mut w = Watches::new(2).unwrap();
            if !fan {
                w.fanotify = None;
            } else if w.fanotify.is_none() {
                continue; // no fanotify for this process
            }
            let t = tempfile::tempdir().unwrap();
            let open = |n: &str| {
                std::fs::create_dir(t.path().join(n)).unwrap();
                rustix::fs::open(
                    t.path().join(n),
                    rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
                    rustix::fs::Mode::empty(),
                )
                .unwrap()
            };
            let (a, b, c) = (open("a"), open("b"), open("c"));
            let id = NodeId::from_wire;
            w.watch(id(10), 0, &a);
            w.watch(id(11), 0, &b);
            w.watch(id(11), 0, &b);
            w.watch(id(12), 1, &c);
            let s = w.stats();
            assert_eq!((s.watches, s.evicted), (2, 1), "{fan}: {s:?}");
            assert_eq!(s.backend, if fan { "fanotify" } else { "inotify" });
            // Written by another process: fanotify skips this one's own changes.
            let ok = std::process::Command::new("sh")
                .arg("-c")
                .arg("for d in a b c; do echo x > \"$T/$d/f\"; done")
                .env("T", t.path())
                .status()
                .unwrap();
            assert!(ok.success());
            assert!(w.wait(Some(std::time::Duration::from_secs(5))), "{fan}");
            let got = w.read();
            for dir in [11, 12] {
                // (fanotify merges the creation and the close into one event.)
                assert!(
                    got.contains(&Change::In {
                        dir: id(dir),
                        name: Some("f".into()),
                        in_place: true,
                    }),
                    "{fan}: closed after writing: {got:?}"
                );
            }
            assert!(
                got.iter()
                    .all(|c| matches!(c, Change::In { dir, .. } if *dir != id(10))),
                "{fan}: a let go: {got:?}"
            );
            w.unwatch(id(12), 2);
            assert_eq!(w.stats().watches, 1);
        }
    }
}
