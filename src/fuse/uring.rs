//! The io_uring transport (FUSE over io_uring, Linux 6.14+): one queue per possible CPU, each
//! with its own ring and a few entries, served by its own thread. A request arrives split in
//! an entry's buffers (the header, the operation's first argument, the rest in the payload);
//! the same dispatcher reads it there ([`Dispatcher::handle_parts`], no copy), and the reply,
//! kept aside until the request is served, is written into the entry and committed with the
//! fetch of the next request (`crate::sys::uring` has the ring and buffer handling).
//!
//! INIT, notifications and interrupts (and forgets, which the kernel keeps on `/dev/fuse`)
//! stay on the `/dev/fuse` transport, which keeps reading beside the rings.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::dispatch::{Dispatcher, Transport};
use super::{abi, MAX_WRITE};
use crate::sys::uring::{self, EntryBufs, FuseQueue, HEADER_LEN, OP_IN_LEN, OP_IN_OFFSET};
use crate::sys::{self, FileReplyError};

/// Entries per queue: requests of one CPU the kernel can hand over while the queue's
/// thread works on another (it queues further ones until an entry comes back). Each entry
/// has a `MAX_WRITE` payload buffer, so on machines with many CPUs fewer per queue: at most
/// [`ENTRIES`] in all, at least one per queue.
const DEPTH: usize = 4;
/// The entries of all queues together, above one per queue.
const ENTRIES: usize = 32;

/// Entries per queue for `queues` queues.
fn depth(queues: usize) -> usize {
    (ENTRIES / queues.max(1)).clamp(1, DEPTH)
}

/// The payload buffer of an entry: the kernel refuses one smaller than the largest request
/// or reply it may send (`max(8 KiB, max_write, max_pages * page size)`), which with the
/// negotiated `max_write` is `MAX_WRITE` rounded up to pages.
fn payload_len() -> usize {
    let page = rustix::param::page_size().max(4096);
    (MAX_WRITE as usize).div_ceil(page).max(2) * page
}

/// The serving threads of the rings.
#[derive(Debug)]
pub struct Rings {
    threads: Vec<JoinHandle<()>>,
    queues: usize,
}

impl Rings {
    /// How many queues are served.
    pub fn queues(&self) -> usize {
        self.queues
    }

    /// Waits (at most `limit`) for the serving threads to end; they end when the kernel
    /// tears the rings down, right after the connection goes.
    pub fn join(self, limit: Duration) {
        let start = Instant::now();
        for t in self.threads {
            while !t.is_finished() && start.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Starts serving the connection `dev` (INIT answered, io_uring granted) through rings. On
/// an error, the kernel has been told to go on through `/dev/fuse` (or the connection is
/// unusable, which the error says).
pub fn start(dispatcher: &Arc<Dispatcher>, dev: &OwnedFd) -> io::Result<Rings> {
    let r = start_queues(dispatcher, dev);
    if r.is_err() {
        // Some queues may have registered: without every queue the kernel would hold all
        // requests, waiting for the ring to be complete. Tell it to give up the rings.
        if let Err(e) = uring::refuse_uring(dev) {
            warn!(error = %e, "cannot turn io_uring off after a failed setup");
        }
    }
    r
}

fn start_queues(dispatcher: &Arc<Dispatcher>, dev: &OwnedFd) -> io::Result<Rings> {
    let n = uring::possible_cpus()?;
    let n16 = u16::try_from(n).map_err(|_| io::Error::other("too many CPUs for io_uring"))?;
    let plen = payload_len();
    let (tx, rx) = mpsc::channel::<io::Result<()>>();
    let mut threads = Vec::with_capacity(n);
    for qid in 0..n16 {
        let queue = FuseQueue::new(dev.try_clone()?, qid, depth(n), plen)?;
        let d = Arc::clone(dispatcher);
        let tx = tx.clone();
        let t = std::thread::Builder::new()
            .name(format!("fuse-ring-{qid}"))
            .spawn(move || serve_queue(&d, queue, &tx))?;
        threads.push(t);
    }
    drop(tx);
    // Each thread reports once its registrations were taken (or refused).
    for _ in 0..n {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a ring thread ended during setup")),
        }
    }
    Ok(Rings { threads, queues: n })
}

/// Pins the current thread to `cpu` (best effort): the kernel queues a request on the queue
/// of the CPU its caller runs on, and completes it in the queue thread's context.
fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        debug!(cpu, error = %e, "ring thread not pinned");
    }
}

/// One queue's thread: register the entries, then serve requests until the kernel gives
/// every entry up.
fn serve_queue(d: &Dispatcher, mut q: FuseQueue, setup: &mpsc::Sender<io::Result<()>>) {
    pin(usize::from(q.qid()));
    let registered = q.register_all().and_then(|()| q.submit(false));
    if let Err(e) = registered {
        let _ = setup.send(Err(e));
        return;
    }
    // A refused registration completes at once; an accepted one only with a request.
    let mut ready = Vec::new();
    while let Some(c) = q.next_completion() {
        if c.result < 0 {
            let _ = setup.send(Err(io::Error::from_raw_os_error(-c.result)));
            return;
        }
        ready.push(c);
    }
    let _ = setup.send(Ok(()));
    loop {
        for c in ready.drain(..) {
            if c.result < 0 {
                // The kernel gave the entry up: the connection is going away (ENOTCONN),
                // or the request could not be copied to us.
                debug!(qid = q.qid(), errno = -c.result, "ring entry ended");
                continue;
            }
            let commit_id = match q.entry(c.ent) {
                Some(mut bufs) => serve_entry(d, &mut bufs),
                None => continue,
            };
            if let Err(e) = q.commit(c.ent, commit_id) {
                warn!(qid = q.qid(), error = %e, "cannot commit a reply");
            }
        }
        if q.in_kernel() == 0 {
            debug!(qid = q.qid(), "ring queue done");
            return;
        }
        if let Err(e) = q.submit(true) {
            warn!(qid = q.qid(), error = %e, "ring queue stops");
            return;
        }
        while let Some(c) = q.next_completion() {
            ready.push(c);
        }
    }
}

/// Serves the request in `bufs` and leaves the reply there; returns the id to commit it
/// with. The request is read where it lies (no copy); the reply is kept aside until the
/// request is served and then written over the buffers it came in.
fn serve_entry(d: &Dispatcher, bufs: &mut EntryBufs<'_>) -> u64 {
    let commit_id = bufs.commit_id();
    let t = RingReply {
        pending: RefCell::new(Pending::None),
    };
    match parts(bufs) {
        Some((header, op_in, payload)) => {
            d.handle_parts(header, op_in, payload, &t);
        }
        None => warn!(commit_id, "malformed io_uring request"),
    }
    match t.pending.into_inner() {
        Pending::Bytes {
            unique,
            error,
            body,
        } => write_reply(bufs, unique, error, &body),
        Pending::File {
            unique,
            fd,
            offset,
            len,
        } => {
            let len = len.min(bufs.payload.len());
            match sys::pread_full(fd.as_fd(), &mut bufs.payload[..len], offset) {
                Ok(n) => {
                    let header = abi::out_header(unique, 0, n);
                    bufs.header[..header.len()].copy_from_slice(&header);
                    // At most the payload buffer's length, far below 4 GiB.
                    bufs.set_payload_size(u32::try_from(n).unwrap_or(0));
                }
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    warn!(id = unique, op = "read", errno, error = %e, "failed");
                    write_reply(bufs, unique, -errno, &[]);
                }
            }
        }
        // Every request on a ring expects a reply (forgets stay on /dev/fuse).
        Pending::None => write_reply(bufs, commit_id, -libc::EIO, &[]),
    }
    commit_id
}

/// The three parts of the request in `bufs`: `fuse_in_header`, the operation's first
/// argument (`op_in`) and the payload. The header's `len` is the whole request, so the
/// first argument is what the payload does not hold.
fn parts<'a>(bufs: &'a EntryBufs<'_>) -> Option<(&'a [u8], &'a [u8], &'a [u8])> {
    let h = bufs.header.get(..abi::IN_HEADER_LEN)?;
    let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let payload = bufs.payload_size();
    let op_in = len
        .checked_sub(abi::IN_HEADER_LEN)
        .and_then(|n| n.checked_sub(payload))
        .filter(|n| *n <= OP_IN_LEN && OP_IN_OFFSET + *n <= HEADER_LEN)?;
    Some((
        h,
        bufs.header.get(OP_IN_OFFSET..OP_IN_OFFSET + op_in)?,
        bufs.payload.get(..payload)?,
    ))
}

/// Writes a reply into the entry's buffers: header, then `body` in the payload buffer
/// (`EIO` instead when it does not fit).
fn write_reply(bufs: &mut EntryBufs<'_>, unique: u64, error: i32, body: &[u8]) {
    let (error, body) = if body.len() > bufs.payload.len() {
        warn!(
            len = body.len(),
            "reply larger than the ring's payload buffer"
        );
        (-libc::EIO, &[][..])
    } else {
        (error, body)
    };
    let header = abi::out_header(unique, error, body.len());
    bufs.header[..header.len()].copy_from_slice(&header);
    bufs.payload[..body.len()].copy_from_slice(body);
    // At most the payload buffer's length, which is far below 4 GiB.
    bufs.set_payload_size(u32::try_from(body.len()).unwrap_or(0));
}

/// A reply kept aside while the request it answers is still borrowed from the entry.
enum Pending {
    None,
    Bytes {
        unique: u64,
        error: i32,
        body: Vec<u8>,
    },
    File {
        unique: u64,
        fd: Arc<OwnedFd>,
        offset: u64,
        len: usize,
    },
}

/// The reply path of a request that came through a ring: keeps the reply for
/// [`serve_entry`] to write into the entry.
struct RingReply {
    pending: RefCell<Pending>,
}

impl Transport for RingReply {
    fn reply(&self, unique: u64, error: i32, body: &[u8]) -> io::Result<()> {
        *self.pending.borrow_mut() = Pending::Bytes {
            unique,
            error,
            body: body.to_vec(),
        };
        Ok(())
    }

    /// Kept as the file and range: once the request is served, the data is read straight
    /// into the entry's payload buffer, which the kernel copies from.
    fn reply_file(
        &self,
        unique: u64,
        fd: &Arc<OwnedFd>,
        offset: u64,
        len: usize,
    ) -> Result<(), FileReplyError> {
        *self.pending.borrow_mut() = Pending::File {
            unique,
            fd: Arc::clone(fd),
            offset,
            len,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_in_their_parts() {
        let mut header = vec![0u8; HEADER_LEN];
        let mut payload = vec![0u8; 64];
        // A WRITE-like request: 40-byte header, 8 bytes of op_in, 5 bytes of payload.
        let len: u32 = 40 + 8 + 5;
        header[0..4].copy_from_slice(&len.to_ne_bytes());
        header[4..8].copy_from_slice(&abi::op::WRITE.to_ne_bytes());
        header[OP_IN_OFFSET..OP_IN_OFFSET + 8].copy_from_slice(b"ARGSARGS");
        header[256 + 16..256 + 20].copy_from_slice(&5u32.to_ne_bytes());
        payload[..5].copy_from_slice(b"hello");
        let bufs = EntryBufs {
            header: &mut header,
            payload: &mut payload,
        };
        let (h, op_in, rest) = parts(&bufs).unwrap();
        assert_eq!(h.len(), 40);
        assert_eq!(op_in, b"ARGSARGS");
        assert_eq!(rest, b"hello");
        // The arguments read across the two parts as one sequence.
        let (hd, mut a) = abi::parse_parts(h, op_in, rest).unwrap();
        assert_eq!(hd.opcode, abi::op::WRITE);
        assert_eq!(a.bytes(8).unwrap(), b"ARGSARGS");
        assert_eq!(a.bytes(5).unwrap(), b"hello");
        assert!(a.bytes(1).is_err());
    }

    #[test]
    fn fewer_entries_per_queue_with_many_cpus() {
        assert_eq!(depth(2), 4);
        assert_eq!(depth(8), 4);
        assert_eq!(depth(16), 2);
        assert_eq!(depth(64), 1);
        assert_eq!(depth(1024), 1);
    }

    #[test]
    fn lying_lengths_are_refused() {
        let mut header = vec![0u8; HEADER_LEN];
        let mut payload = vec![0u8; 16];
        let len: u32 = 40 + 200;
        header[0..4].copy_from_slice(&len.to_ne_bytes());
        let bufs = EntryBufs {
            header: &mut header,
            payload: &mut payload,
        };
        assert!(parts(&bufs).is_none());
    }
}
