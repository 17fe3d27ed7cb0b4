//! The io_uring transport (FUSE over io_uring, Linux 6.14+): one queue per possible CPU, each
//! with its own ring and a few entries, served by its own thread. A request arrives split in
//! an entry's buffers (the header, the operation's first argument, the rest in the payload);
//! it is put back together into the bytes `/dev/fuse` would have given and handed to the same
//! [`Dispatcher::handle`], and the reply is written into the entry and committed with the
//! fetch of the next request (`crate::sys::uring` has the ring and buffer handling).
//!
//! INIT, notifications and interrupts (and forgets, which the kernel keeps on `/dev/fuse`)
//! stay on the `/dev/fuse` transport, which keeps reading beside the rings.

use std::cell::RefCell;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
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
    let mut buf = Vec::with_capacity(abi::IN_HEADER_LEN + OP_IN_LEN + payload_len());
    loop {
        for c in ready.drain(..) {
            if c.result < 0 {
                // The kernel gave the entry up: the connection is going away (ENOTCONN),
                // or the request could not be copied to us.
                debug!(qid = q.qid(), errno = -c.result, "ring entry ended");
                continue;
            }
            let commit_id = match q.entry(c.ent) {
                Some(mut bufs) => serve_entry(d, &mut bufs, &mut buf),
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
/// with.
fn serve_entry(d: &Dispatcher, bufs: &mut EntryBufs<'_>, buf: &mut Vec<u8>) -> u64 {
    let commit_id = bufs.commit_id();
    let t = RingReply {
        bufs: RefCell::new(bufs),
        replied: std::cell::Cell::new(false),
    };
    let whole = reassemble(&t.bufs.borrow(), buf).is_ok();
    if whole {
        d.handle(buf, &t);
    } else {
        warn!(commit_id, "malformed io_uring request");
    }
    if !t.replied.get() {
        // Every request on a ring expects a reply (forgets stay on /dev/fuse).
        let _ = t.reply(commit_id, -libc::EIO, &[]);
    }
    commit_id
}

/// Puts a request back together as `/dev/fuse` gives it: `fuse_in_header`, the first
/// argument (from `op_in`), the other arguments (from the payload). The header's `len` is the
/// whole request, so the first argument is what the payload does not hold.
fn reassemble(bufs: &EntryBufs<'_>, out: &mut Vec<u8>) -> Result<(), ()> {
    let h = &bufs.header[..abi::IN_HEADER_LEN];
    let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let payload = bufs.payload_size();
    let op_in = len
        .checked_sub(abi::IN_HEADER_LEN)
        .and_then(|n| n.checked_sub(payload))
        .filter(|n| *n <= OP_IN_LEN && OP_IN_OFFSET + *n <= HEADER_LEN)
        .ok_or(())?;
    if payload > bufs.payload.len() {
        return Err(());
    }
    out.clear();
    out.extend_from_slice(h);
    out.extend_from_slice(&bufs.header[OP_IN_OFFSET..OP_IN_OFFSET + op_in]);
    out.extend_from_slice(&bufs.payload[..payload]);
    Ok(())
}

/// The reply path of a request that came through a ring: its entry's buffers.
struct RingReply<'a, 'b> {
    bufs: RefCell<&'a mut EntryBufs<'b>>,
    replied: std::cell::Cell<bool>,
}

impl Transport for RingReply<'_, '_> {
    fn reply(&self, unique: u64, error: i32, body: &[u8]) -> io::Result<()> {
        let mut b = self.bufs.borrow_mut();
        let (error, body) = if body.len() > b.payload.len() {
            warn!(
                len = body.len(),
                "reply larger than the ring's payload buffer"
            );
            (-libc::EIO, &[][..])
        } else {
            (error, body)
        };
        let header = abi::out_header(unique, error, body.len());
        b.header[..header.len()].copy_from_slice(&header);
        b.payload[..body.len()].copy_from_slice(body);
        // At most the payload buffer's length, which is far below 4 GiB.
        b.set_payload_size(u32::try_from(body.len()).unwrap_or(0));
        self.replied.set(true);
        Ok(())
    }

    /// Reads the file straight into the entry's payload buffer, which the kernel copies
    /// from: one copy less than reading into memory of our own first.
    fn reply_file(
        &self,
        unique: u64,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> Result<(), FileReplyError> {
        let mut b = self.bufs.borrow_mut();
        let len = len.min(b.payload.len());
        let n = sys::pread_full(fd, &mut b.payload[..len], offset).map_err(FileReplyError::Read)?;
        let header = abi::out_header(unique, 0, n);
        b.header[..header.len()].copy_from_slice(&header);
        // At most the payload buffer's length, which is far below 4 GiB.
        b.set_payload_size(u32::try_from(n).unwrap_or(0));
        self.replied.set(true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_put_back_together() {
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
        let mut out = Vec::new();
        reassemble(&bufs, &mut out).unwrap();
        assert_eq!(out.len(), 53);
        assert_eq!(&out[40..48], b"ARGSARGS");
        assert_eq!(&out[48..], b"hello");
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
        assert!(reassemble(&bufs, &mut Vec::new()).is_err());
    }
}
