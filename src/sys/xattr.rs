//! Extended attributes of layer objects, held either by an fd or as a name under a directory
//! fd.
//!
//! Layer objects are mostly held as `O_PATH` fds, on which the `f*xattr` calls fail with
//! EBADF. A name under a directory fd uses the `*xattrat` calls of Linux 6.13
//! (`AT_SYMLINK_NOFOLLOW`); without them, and for `O_PATH` fds, the calls go through the fd's
//! `/proc/self/fd` entry, which names exactly the object the fd holds (the kernel's own
//! reference, never a path inside a layer).
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;

const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// The kernel has no `*xattrat` calls (before 6.13).
static NO_XATTRAT: AtomicBool = AtomicBool::new(false);

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Where the attributes live.
#[derive(Clone, Copy)]
enum Obj<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a OsStr),
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `/proc/self/fd/N` for an fd, `/proc/self/fd/N/NAME` for a name under a directory fd.
fn proc_path(o: Obj<'_>) -> io::Result<CString> {
    match o {
        Obj::Fd(fd) => cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes()),
        Obj::At(dir, name) => {
            let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
            p.extend_from_slice(name.as_bytes());
            cstr(&p)
        }
    }
}

fn ret_len(ret: libc::c_long) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

fn is_enosys(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSYS)
}

fn is_ebadf(e: &rustix::io::Errno) -> bool {
    *e == Errno::BADF
}

fn get_raw(o: Obj<'_>, name: &CString, buf: &mut [u8]) -> io::Result<usize> {
    match o {
        Obj::Fd(fd) => match rustix::fs::fgetxattr(fd, name.as_c_str(), &mut *buf) {
            Err(e) if is_ebadf(&e) => {}
            r => return r.map_err(io::Error::from),
        },
        Obj::At(dir, path) if !NO_XATTRAT.load(Ordering::Relaxed) => {
            let p = cstr(path.as_bytes())?;
            let mut args = XattrArgs {
                value: buf.as_mut_ptr() as u64,
                size: buf.len() as u32,
                flags: 0,
            };
            // SAFETY: getxattrat(dirfd, path, AT_SYMLINK_NOFOLLOW, name, args, size): `p` and
            // `name` are NUL-terminated and outlive the call, `args` is a live struct of the
            // size passed, and `args.value` points at `buf`, writable for `args.size` bytes.
            let ret = unsafe {
                libc::syscall(
                    SYS_GETXATTRAT,
                    dir.as_raw_fd(),
                    p.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                    name.as_ptr(),
                    &mut args as *mut XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            };
            match ret_len(ret) {
                Err(e) if is_enosys(&e) => NO_XATTRAT.store(true, Ordering::Relaxed),
                r => return r,
            }
        }
        Obj::At(..) => {}
    }
    let path = proc_path(o)?;
    // SAFETY: `path` and `name` are NUL-terminated and live for the call; `buf` is writable
    // for `buf.len()` bytes. lgetxattr does not follow the final component (for an fd the
    // magic link itself resolves to the object the fd holds).
    let ret = unsafe {
        match o {
            Obj::Fd(_) => libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            ),
            Obj::At(..) => libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            ),
        }
    };
    ret_len(ret as libc::c_long)
}

fn list_raw(o: Obj<'_>, buf: &mut [u8]) -> io::Result<usize> {
    match o {
        Obj::Fd(fd) => match rustix::fs::flistxattr(fd, &mut *buf) {
            Err(e) if is_ebadf(&e) => {}
            r => return r.map_err(io::Error::from),
        },
        Obj::At(dir, path) if !NO_XATTRAT.load(Ordering::Relaxed) => {
            let p = cstr(path.as_bytes())?;
            // SAFETY: listxattrat(dirfd, path, AT_SYMLINK_NOFOLLOW, list, size): `p` is
            // NUL-terminated and lives for the call; `buf` is writable for `buf.len()` bytes.
            let ret = unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    dir.as_raw_fd(),
                    p.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            match ret_len(ret) {
                Err(e) if is_enosys(&e) => NO_XATTRAT.store(true, Ordering::Relaxed),
                r => return r,
            }
        }
        Obj::At(..) => {}
    }
    let path = proc_path(o)?;
    // SAFETY: `path` is NUL-terminated and lives for the call; `buf` is writable for
    // `buf.len()` bytes.
    let ret = unsafe {
        match o {
            Obj::Fd(_) => libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
            Obj::At(..) => libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
        }
    };
    ret_len(ret as libc::c_long)
}

fn set_raw(o: Obj<'_>, name: &CString, value: &[u8], flags: i32) -> io::Result<()> {
    match o {
        Obj::Fd(fd) => {
            let f = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
            match rustix::fs::fsetxattr(fd, name.as_c_str(), value, f) {
                Err(e) if is_ebadf(&e) => {}
                r => return r.map_err(io::Error::from),
            }
        }
        Obj::At(dir, path) if !NO_XATTRAT.load(Ordering::Relaxed) => {
            let p = cstr(path.as_bytes())?;
            let args = XattrArgs {
                value: value.as_ptr() as u64,
                size: value.len() as u32,
                flags: flags as u32,
            };
            // SAFETY: setxattrat(dirfd, path, AT_SYMLINK_NOFOLLOW, name, args, size): `p` and
            // `name` are NUL-terminated and live for the call; `args` is a live struct of the
            // size passed, pointing at `value`, readable for `args.size` bytes.
            let ret = unsafe {
                libc::syscall(
                    SYS_SETXATTRAT,
                    dir.as_raw_fd(),
                    p.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                    name.as_ptr(),
                    &args as *const XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            };
            match ret_len(ret) {
                Err(e) if is_enosys(&e) => NO_XATTRAT.store(true, Ordering::Relaxed),
                r => return r.map(drop),
            }
        }
        Obj::At(..) => {}
    }
    let path = proc_path(o)?;
    // SAFETY: `path` and `name` are NUL-terminated and live for the call; `value` is readable
    // for `value.len()` bytes.
    let ret = unsafe {
        match o {
            Obj::Fd(_) => libc::setxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            ),
            Obj::At(..) => libc::lsetxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            ),
        }
    };
    ret_len(ret as libc::c_long).map(drop)
}

fn remove_raw(o: Obj<'_>, name: &CString) -> io::Result<()> {
    match o {
        Obj::Fd(fd) => match rustix::fs::fremovexattr(fd, name.as_c_str()) {
            Err(e) if is_ebadf(&e) => {}
            r => return r.map_err(io::Error::from),
        },
        Obj::At(dir, path) if !NO_XATTRAT.load(Ordering::Relaxed) => {
            let p = cstr(path.as_bytes())?;
            // SAFETY: removexattrat(dirfd, path, AT_SYMLINK_NOFOLLOW, name): both strings are
            // NUL-terminated and live for the call.
            let ret = unsafe {
                libc::syscall(
                    SYS_REMOVEXATTRAT,
                    dir.as_raw_fd(),
                    p.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                    name.as_ptr(),
                )
            };
            match ret_len(ret) {
                Err(e) if is_enosys(&e) => NO_XATTRAT.store(true, Ordering::Relaxed),
                r => return r.map(drop),
            }
        }
        Obj::At(..) => {}
    }
    let path = proc_path(o)?;
    // SAFETY: `path` and `name` are NUL-terminated and live for the call.
    let ret = unsafe {
        match o {
            Obj::Fd(_) => libc::removexattr(path.as_ptr(), name.as_ptr()),
            Obj::At(..) => libc::lremovexattr(path.as_ptr(), name.as_ptr()),
        }
    };
    ret_len(ret as libc::c_long).map(drop)
}

/// Calls `f` with a growing buffer until the value fits (values can change size between a
/// size probe and the read).
fn with_growing_buffer(mut f: impl FnMut(&mut [u8]) -> io::Result<usize>) -> io::Result<Vec<u8>> {
    let mut cap = 256usize;
    loop {
        let mut buf = vec![0u8; cap];
        match f(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && cap < (1 << 21) => cap *= 4,
            Err(e) => return Err(e),
        }
    }
}

fn get(o: Obj<'_>, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let cname = cstr(name.as_bytes())?;
    match with_growing_buffer(|buf| get_raw(o, &cname, buf)) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The value of xattr `name` on the object `fd` holds (any fd, `O_PATH` included);
/// `Ok(None)` when it has no such attribute.
pub fn get_xattr(fd: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    get(Obj::Fd(fd), name)
}

/// The value of xattr `xattr` on entry `name` directly under `dir`, without following a
/// symlink; `Ok(None)` when absent.
pub fn get_xattr_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    xattr: &OsStr,
) -> io::Result<Option<Vec<u8>>> {
    get(Obj::At(dir, name), xattr)
}

/// The names of all xattrs on the object `fd` holds (NUL-terminated, back to back).
pub fn list_xattr(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    with_growing_buffer(|buf| list_raw(Obj::Fd(fd), buf))
}

/// The names of all xattrs of entry `name` directly under `dir`.
pub fn list_xattr_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    with_growing_buffer(|buf| list_raw(Obj::At(dir, name), buf))
}

/// Sets xattr `name` on the object `fd` holds. `flags` is `XATTR_CREATE`, `XATTR_REPLACE`
/// or 0.
pub fn set_xattr(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    set_raw(Obj::Fd(fd), &cstr(name.as_bytes())?, value, flags)
}

/// Sets xattr `xattr` on entry `name` directly under `dir`, without following a symlink.
pub fn set_xattr_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    xattr: &OsStr,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    set_raw(Obj::At(dir, name), &cstr(xattr.as_bytes())?, value, flags)
}

/// Removes xattr `name` from the object `fd` holds.
pub fn remove_xattr(fd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    remove_raw(Obj::Fd(fd), &cstr(name.as_bytes())?)
}

/// Removes xattr `xattr` from entry `name` directly under `dir`.
pub fn remove_xattr_at(dir: BorrowedFd<'_>, name: &OsStr, xattr: &OsStr) -> io::Result<()> {
    remove_raw(Obj::At(dir, name), &cstr(xattr.as_bytes())?)
}

/// Splits a kernel xattr name list into names.
pub fn split_xattr_list(list: &[u8]) -> impl Iterator<Item = &OsStr> {
    list.split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(OsStr::from_bytes)
}
