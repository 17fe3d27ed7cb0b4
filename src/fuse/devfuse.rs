//! The `/dev/fuse` transport: serving threads, each reading requests from its own clone of
//! the connection's fd (`FUSE_DEV_IOC_CLONE`) and writing replies back to it.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::dispatch::{reply_copied, Dispatcher, Flow, Transport};
use super::{abi, MAX_WRITE};
use crate::inode::NodeId;
use crate::sys::{self, FileReplyError, ReplyPipes};

/// Reads smaller than this are copied through memory: for them the four system calls of a
/// splice cost more than the copy they save.
const SPLICE_MIN: usize = 32 * 1024;

/// Files up to this size are put in the kernel's page cache whole when a reader opens them
/// ([`Transport::store`]): the kernel's first READ of a file asks for this much (its
/// readahead window), so it would have been the only one.
const STORE_MAX: u64 = 128 * 1024;

/// A serving thread's reply path: the fd its requests come from, and its pipes for
/// splicing file data into replies (made at the first large read; none once splicing
/// failed to set up or a file refused it).
struct DevFuse<'a> {
    fd: &'a OwnedFd,
    pipes: RefCell<Splice>,
    /// Set while a thread stores file data: one at a time (see `store`).
    storing: &'a AtomicBool,
    /// The buffer a store reads the file into.
    store_buf: RefCell<Vec<u8>>,
}

impl DevFuse<'_> {
    /// Stores the whole of `fd` (of `size` bytes, where the open learned it) for `node` if
    /// it is small (nothing for an empty file, or one too big: its READs are not saved by a
    /// store).
    fn store_file(&self, node: NodeId, fd: &OwnedFd, size: Option<u64>) -> io::Result<()> {
        let size = match size {
            Some(s) => s,
            None => sys::stat_fd(fd.as_fd())?.size,
        };
        if size == 0 || size > STORE_MAX {
            return Ok(());
        }
        let mut buf = self.store_buf.borrow_mut();
        buf.resize(size as usize, 0);
        let n = sys::pread_full(fd.as_fd(), &mut buf, 0)?;
        sys::fuse_notify_store(self.fd.as_fd(), node.get(), 0, &buf[..n])
    }
}

/// The state of a thread's splicing.
enum Splice {
    /// Not tried yet.
    Untried,
    /// Pipes ready.
    Ready(ReplyPipes),
    /// Not available: reads are copied.
    Off,
}

impl Transport for DevFuse<'_> {
    fn reply(&self, unique: u64, error: i32, body: &[u8]) -> io::Result<()> {
        let header = abi::out_header(unique, error, body.len());
        sys::fuse_write_reply(self.fd.as_fd(), &header, body)
    }

    fn reply_file(
        &self,
        unique: u64,
        file: &Arc<OwnedFd>,
        offset: u64,
        len: usize,
    ) -> Result<(), FileReplyError> {
        let file = file.as_fd();
        if len >= SPLICE_MIN {
            let mut state = self.pipes.borrow_mut();
            if matches!(*state, Splice::Untried) {
                *state = match ReplyPipes::new(MAX_WRITE as usize) {
                    Ok(p) => Splice::Ready(p),
                    Err(e) => {
                        tracing::debug!(error = %e, "no pipes for splicing reads");
                        Splice::Off
                    }
                };
            }
            if let Splice::Ready(p) = &*state {
                match p.reply(self.fd.as_fd(), unique, file, offset, len) {
                    Ok(()) => return Ok(()),
                    // Nothing was sent: copy it instead.
                    Err(FileReplyError::Unsupported) => {}
                    Err(e) => {
                        // The pipes may hold part of the message: start afresh next time.
                        *state = Splice::Untried;
                        return Err(e);
                    }
                }
            }
        }
        reply_copied(self, unique, file, offset, len)
    }

    fn store(&self, node: NodeId, fd: &Arc<OwnedFd>, size: Option<u64>) -> bool {
        // One thread at a time: a store waits for the locks of the pages it fills, and a
        // reader that opened the file meanwhile may hold them until its READ is answered,
        // which another thread is then free to do. A busy store is skipped (the reader
        // READs, and a later open may store).
        if self.storing.swap(true, Ordering::Acquire) {
            return false;
        }
        let r = self.store_file(node, fd, size);
        self.storing.store(false, Ordering::Release);
        r.map_err(|e| tracing::debug!(node = node.get(), error = %e, "file data not stored"))
            .is_ok()
    }
}

/// Serves the connection `dev` with `threads` threads until it is unmounted (or the kernel
/// sends `FUSE_DESTROY`). Returns the first error a thread ended with.
pub fn serve(dispatcher: Arc<Dispatcher>, dev: OwnedFd, threads: usize) -> io::Result<()> {
    let mut fds = Vec::with_capacity(threads);
    for _ in 1..threads {
        match sys::fuse_dev_clone(dev.as_fd()) {
            Ok(fd) => fds.push(fd),
            Err(e) => {
                tracing::warn!(error = %e, "cannot clone the FUSE fd; fewer serving threads");
                break;
            }
        }
    }
    fds.push(dev);
    let storing = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(fds.len());
    for (i, fd) in fds.into_iter().enumerate() {
        let d = Arc::clone(&dispatcher);
        let storing = Arc::clone(&storing);
        let spawned = std::thread::Builder::new()
            .name(format!("fuse-{i}"))
            .spawn(move || serve_one(&d, &fd, &storing));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) if handles.is_empty() => return Err(e),
            Err(e) => tracing::warn!(error = %e, "cannot start a serving thread"),
        }
    }
    let mut result = Ok(());
    for h in handles {
        let r = h
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a serving thread panicked")));
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// One serving thread's loop.
fn serve_one(d: &Dispatcher, fd: &OwnedFd, storing: &AtomicBool) -> io::Result<()> {
    // The kernel refuses reads into a buffer that could not take a whole write request.
    let mut buf = vec![0u8; MAX_WRITE as usize + 4096];
    let t = DevFuse {
        fd,
        pipes: RefCell::new(Splice::Untried),
        storing,
        store_buf: RefCell::new(Vec::new()),
    };
    loop {
        match sys::fuse_read_request(fd.as_fd(), &mut buf) {
            Ok(n) => {
                if d.handle(&buf[..n], &t) == Flow::Stop {
                    return Ok(());
                }
            }
            Err(e) => match e.raw_os_error() {
                // Interrupted, or a request that went away before it was read.
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
                // Unmounted.
                Some(libc::ENODEV) => return Ok(()),
                _ => return Err(e),
            },
        }
    }
}
