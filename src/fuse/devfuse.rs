//! The `/dev/fuse` transport: serving threads, each reading requests from its own clone of
//! the connection's fd (`FUSE_DEV_IOC_CLONE`) and writing replies back to it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::dispatch::{Dispatcher, Flow, Transport};
use super::{abi, MAX_WRITE};
use crate::sys;

/// A reply path: the fd the request came from.
struct DevFuse<'a>(&'a OwnedFd);

impl Transport for DevFuse<'_> {
    fn reply(&self, unique: u64, error: i32, body: &[u8]) -> io::Result<()> {
        let header = abi::out_header(unique, error, body.len());
        sys::fuse_write_reply(self.0.as_fd(), &header, body)
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
    let mut handles = Vec::with_capacity(fds.len());
    for (i, fd) in fds.into_iter().enumerate() {
        let d = Arc::clone(&dispatcher);
        let spawned = std::thread::Builder::new()
            .name(format!("fuse-{i}"))
            .spawn(move || serve_one(&d, &fd));
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
fn serve_one(d: &Dispatcher, fd: &OwnedFd) -> io::Result<()> {
    // The kernel refuses reads into a buffer that could not take a whole write request.
    let mut buf = vec![0u8; MAX_WRITE as usize + 4096];
    let t = DevFuse(fd);
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
