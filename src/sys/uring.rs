//! FUSE over io_uring (Linux 6.14+, `CONFIG_FUSE_IO_URING`): the rings and the buffers the
//! kernel writes requests into, behind a safe API. The protocol is the kernel's
//! `fs/fuse/dev_uring.c`:
//!
//! - one queue per possible CPU; a request is queued on the queue of the CPU its caller runs
//!   on, and the kernel routes requests to the rings only once every queue has an entry;
//! - an entry is a header buffer (`struct fuse_uring_req_header`: the in/out header, the
//!   operation's first argument, and `struct fuse_uring_ent_in_out`) and a payload buffer
//!   (the other arguments, then the reply), handed over once with
//!   `FUSE_IO_URING_CMD_REGISTER` (an `IORING_OP_URING_CMD` on a 128-byte SQE, `addr` an
//!   array of two iovecs);
//! - a completion with result 0 means a request is in the entry's buffers; the reply is
//!   written into the same buffers and handed back with `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`,
//!   which also makes the entry wait for the next request.
//!
//! Ownership of an entry's buffers alternates: the kernel's from the submission of its SQE
//! until its completion, ours in between. [`FuseQueue::entry`] lends them only in between.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// `sizeof(struct fuse_uring_req_header)`.
pub const HEADER_LEN: usize = 288;
/// Where the operation's first argument starts in the header buffer (`op_in`).
pub const OP_IN_OFFSET: usize = 128;
/// The room for it (`FUSE_URING_OP_IN_OUT_SZ`).
pub const OP_IN_LEN: usize = 128;
/// `fuse_uring_ent_in_out.commit_id`.
const COMMIT_ID_OFFSET: usize = 256 + 8;
/// `fuse_uring_ent_in_out.payload_sz`.
const PAYLOAD_SZ_OFFSET: usize = 256 + 16;

/// `enum fuse_uring_cmd`.
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Offset of `len` in `struct io_uring_sqe`.
const SQE_LEN_OFFSET: usize = 24;

const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);

/// The number of possible CPUs, which is the number of queues the kernel expects
/// (`num_possible_cpus()`), from `/sys/devices/system/cpu/possible` ("0-3,5").
pub fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "cannot parse the possible CPUs");
    let mut n = 0usize;
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        n += b.checked_sub(a).ok_or_else(bad)? + 1;
    }
    if n == 0 {
        return Err(bad());
    }
    Ok(n)
}

/// Whether this process may set up the 128-byte-SQE rings the transport needs (io_uring can
/// be disabled by `kernel.io_uring_disabled`, or limited by the locked-memory limit).
pub fn probe() -> io::Result<()> {
    IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .build(2)
        .map(drop)
}

/// A `FUSE_IO_URING_CMD_*` SQE for queue `qid` on the connection fd `dev`.
fn fuse_cmd(dev: i32, cmd_op: u32, qid: u16, commit_id: u64, iov: Option<u64>) -> squeue::Entry128 {
    // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 padding[6]; }
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    let sqe = opcode::UringCmd80::new(types::Fd(dev), cmd_op)
        .cmd(cmd)
        .addr(iov)
        .build();
    match iov {
        // The kernel wants `len` = 2 (header and payload iovecs), which the builder does
        // not set.
        Some(_) => with_sqe_len(sqe, 2),
        None => sqe,
    }
}

/// `sqe` with its `len` field set.
fn with_sqe_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: `Entry128` is `#[repr(C)]` around the kernel's 64-byte `struct io_uring_sqe`
    // and 64 more bytes (its size is asserted above to be 128), plain integers with no
    // invalid bit patterns, so it can be viewed as bytes and back.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute::<squeue::Entry128, [u8; 128]>(sqe) };
    raw[SQE_LEN_OFFSET..SQE_LEN_OFFSET + 4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above; the bytes came from a valid entry and only `len` changed.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// Memory handed to the kernel: allocated once and never freed. The kernel keeps the
/// addresses of registered buffers for the life of the connection (and may still write
/// into an entry while its ring is being torn down), so they must outlive any ring; a mount
/// allocates them once.
fn leak(len: usize) -> NonNull<u8> {
    let b: Box<[u8]> = vec![0u8; len].into_boxed_slice();
    let p = Box::leak(b).as_mut_ptr();
    // A Box's pointer is never null (a zero length gives a dangling, non-null one).
    NonNull::new(p).unwrap_or(NonNull::dangling())
}

/// One ring entry: its two buffers and the iovecs naming them.
struct RingEnt {
    header: NonNull<u8>,
    payload: NonNull<u8>,
    payload_len: usize,
    /// `[iovec; 2]`, leaked as well: the kernel reads it when the REGISTER is issued.
    iov: NonNull<libc::iovec>,
    /// Between the submission of its SQE and its completion.
    in_kernel: bool,
}

/// The buffers of an entry the kernel has handed back: a request to read, a reply to write.
#[derive(Debug)]
pub struct EntryBufs<'a> {
    /// `struct fuse_uring_req_header`.
    pub header: &'a mut [u8],
    /// The payload buffer.
    pub payload: &'a mut [u8],
}

impl EntryBufs<'_> {
    /// `fuse_uring_ent_in_out.commit_id`: what the reply's COMMIT_AND_FETCH names.
    pub fn commit_id(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.header[COMMIT_ID_OFFSET..COMMIT_ID_OFFSET + 8]);
        u64::from_ne_bytes(b)
    }

    /// `fuse_uring_ent_in_out.payload_sz`: the bytes of the payload the request (or the
    /// reply) fills.
    pub fn payload_size(&self) -> usize {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.header[PAYLOAD_SZ_OFFSET..PAYLOAD_SZ_OFFSET + 4]);
        u32::from_ne_bytes(b) as usize
    }

    /// Sets `payload_sz` for the reply.
    pub fn set_payload_size(&mut self, n: u32) {
        self.header[PAYLOAD_SZ_OFFSET..PAYLOAD_SZ_OFFSET + 4].copy_from_slice(&n.to_ne_bytes());
    }
}

/// What a completion says about an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The entry.
    pub ent: usize,
    /// 0: a request is in its buffers; a negative errno: the kernel gave the entry up
    /// (`ENOTCONN` when the connection goes away).
    pub result: i32,
}

/// One queue of a connection: its own ring and entries, served by one thread.
pub struct FuseQueue {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    dev: OwnedFd,
    qid: u16,
    ents: Vec<RingEnt>,
}

impl std::fmt::Debug for FuseQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseQueue")
            .field("qid", &self.qid)
            .field("entries", &self.ents.len())
            .finish()
    }
}

// SAFETY: the raw pointers are to leaked allocations that only this queue uses (and the
// kernel, for entries it holds); moving the queue to another thread moves that use along.
unsafe impl Send for FuseQueue {}

impl FuseQueue {
    /// A queue `qid` on the connection `dev` with `depth` entries of `payload_len`-byte
    /// payload buffers; nothing is registered yet.
    pub fn new(dev: OwnedFd, qid: u16, depth: usize, payload_len: usize) -> io::Result<Self> {
        let sq =
            u32::try_from(depth.max(1)).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_coop_taskrun()
            .build(sq)?;
        let mut ents = Vec::with_capacity(depth);
        for _ in 0..depth {
            let header = leak(HEADER_LEN);
            let payload = leak(payload_len);
            let iov = leak(2 * std::mem::size_of::<libc::iovec>()).cast::<libc::iovec>();
            let pair = [
                libc::iovec {
                    iov_base: header.as_ptr().cast(),
                    iov_len: HEADER_LEN,
                },
                libc::iovec {
                    iov_base: payload.as_ptr().cast(),
                    iov_len: payload_len,
                },
            ];
            // SAFETY: `iov` points at a fresh allocation of room for two iovecs, used by
            // nothing else; `write_unaligned` needs no alignment (a byte allocation may not
            // have an iovec's).
            unsafe {
                iov.as_ptr()
                    .cast::<[libc::iovec; 2]>()
                    .write_unaligned(pair)
            };
            ents.push(RingEnt {
                header,
                payload,
                payload_len,
                iov,
                in_kernel: false,
            });
        }
        Ok(FuseQueue {
            ring,
            dev,
            qid,
            ents,
        })
    }

    /// This queue's index.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// How many entries the kernel holds.
    pub fn in_kernel(&self) -> usize {
        self.ents.iter().filter(|e| e.in_kernel).count()
    }

    fn push(&mut self, sqe: &squeue::Entry128) -> io::Result<()> {
        // SAFETY: every buffer an SQE of this queue names (the iovec array, and through it
        // the header and payload buffers) is leaked, so valid for as long as the kernel may
        // use it; the entry is marked in the kernel's hands by the caller, so no reference
        // to its buffers is lent until its completion.
        let pushed = unsafe { self.ring.submission().push(sqe) };
        if pushed.is_err() {
            // Full: hand what is queued to the kernel and try once more.
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(sqe) }
                .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
        }
        Ok(())
    }

    /// Queues the registration of every entry (sent with the next [`FuseQueue::submit`]).
    pub fn register_all(&mut self) -> io::Result<()> {
        let fd = self.dev.as_raw_fd();
        for i in 0..self.ents.len() {
            let iov = self.ents[i].iov.as_ptr() as u64;
            let sqe = fuse_cmd(fd, CMD_REGISTER, self.qid, 0, Some(iov)).user_data(i as u64);
            self.push(&sqe)?;
            self.ents[i].in_kernel = true;
        }
        Ok(())
    }

    /// Queues the reply in entry `ent` (written through [`FuseQueue::entry`]) and asks for
    /// the next request in it.
    pub fn commit(&mut self, ent: usize, commit_id: u64) -> io::Result<()> {
        match self.ents.get(ent) {
            Some(e) if !e.in_kernel => {}
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
        let sqe = fuse_cmd(
            self.dev.as_raw_fd(),
            CMD_COMMIT_AND_FETCH,
            self.qid,
            commit_id,
            None,
        )
        .user_data(ent as u64);
        self.push(&sqe)?;
        self.ents[ent].in_kernel = true;
        Ok(())
    }

    /// Sends what is queued; with `wait`, blocks until at least one completion is there.
    pub fn submit(&mut self, wait: bool) -> io::Result<()> {
        loop {
            let r = if wait && self.ring.completion().is_empty() {
                self.ring.submit_and_wait(1)
            } else {
                self.ring.submit()
            };
            match r {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next completion, if one is there; its entry is ours again.
    pub fn next_completion(&mut self) -> Option<Completion> {
        let cqe = self.ring.completion().next()?;
        let ent = usize::try_from(cqe.user_data()).ok()?;
        let e = self.ents.get_mut(ent)?;
        e.in_kernel = false;
        Some(Completion {
            ent,
            result: cqe.result(),
        })
    }

    /// The buffers of entry `ent`, while the kernel does not hold it.
    pub fn entry(&mut self, ent: usize) -> Option<EntryBufs<'_>> {
        let e = self.ents.get(ent)?;
        if e.in_kernel {
            return None;
        }
        // SAFETY: both buffers are live leaked allocations of these lengths; the kernel
        // does not hold the entry (its last SQE completed and no new one was queued), so
        // nothing else writes them; the borrows are tied to `&mut self`, so no second view
        // exists and no SQE can be queued for the entry while they live.
        unsafe {
            Some(EntryBufs {
                header: std::slice::from_raw_parts_mut(e.header.as_ptr(), HEADER_LEN),
                payload: std::slice::from_raw_parts_mut(e.payload.as_ptr(), e.payload_len),
            })
        }
    }
}

/// Makes the kernel give up io_uring for the connection `dev` after it was negotiated: a
/// registration it must refuse (a queue index past any CPU) turns it off, and requests go
/// on through `/dev/fuse` (the kernel routes none to the rings before every queue has an
/// entry). For when the rings cannot all be set up.
pub fn refuse_uring(dev: &OwnedFd) -> io::Result<()> {
    let mut ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(2)?;
    let sqe = fuse_cmd(dev.as_raw_fd(), CMD_REGISTER, u16::MAX, 0, None);
    // SAFETY: the SQE names no memory (no iovec address).
    unsafe { ring.submission().push(&sqe) }
        .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
    ring.submit_and_wait(1)?;
    let result = ring.completion().next().map(|c| c.result());
    match result {
        Some(r) if r < 0 => Ok(()),
        _ => Err(io::Error::other("the kernel accepted a bad registration")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqe_len_is_patched() {
        let sqe = super::fuse_cmd(3, super::CMD_REGISTER, 1, 0, Some(0x1000));
        // SAFETY (test): as in `with_sqe_len`.
        let raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(&raw[24..28], &2u32.to_ne_bytes());
        assert_eq!(&raw[16..24], &0x1000u64.to_ne_bytes());
        // cmd area at 48: commit_id at +8, qid at +16.
        assert_eq!(&raw[48 + 16..48 + 18], &1u16.to_ne_bytes());
    }

    #[test]
    fn possible_cpus_counts() {
        assert!(super::possible_cpus().unwrap() >= 1);
    }
}
