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

/// A layer object whose xattrs are read or written: held by an fd (`O_PATH` included), or
/// named under a directory fd (never followed if it is a symlink).
#[derive(Debug, Clone, Copy)]
pub enum Object<'a> {
    /// The object the fd holds.
    Fd(BorrowedFd<'a>),
    /// Entry `name` directly under directory `dir`.
    At(BorrowedFd<'a>, &'a OsStr),
}

impl<'a> Object<'a> {
    /// Entry `name` under `dir`, or `dir` itself when `name` is empty (the root of a layer is
    /// its own directory fd with an empty name).
    pub fn named(dir: BorrowedFd<'a>, name: &'a OsStr) -> Object<'a> {
        if name.is_empty() {
            Object::Fd(dir)
        } else {
            Object::At(dir, name)
        }
    }

    /// The value of xattr `x`; `Ok(None)` when the object has none.
    pub fn get_xattr(self, x: &OsStr) -> io::Result<Option<Vec<u8>>> {
        get(self, x)
    }

    /// The names of all xattrs (NUL-terminated, back to back).
    pub fn list_xattr(self) -> io::Result<Vec<u8>> {
        with_growing_buffer(|buf| list_raw(self, buf))
    }

    /// Sets xattr `x`. `flags` is `XATTR_CREATE`, `XATTR_REPLACE` or 0.
    pub fn set_xattr(self, x: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        set_raw(self, &cstr(x.as_bytes())?, value, flags)
    }

    /// Removes xattr `x`.
    pub fn remove_xattr(self, x: &OsStr) -> io::Result<()> {
        remove_raw(self, &cstr(x.as_bytes())?)
    }
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `/proc/self/fd/N` for an fd, `/proc/self/fd/N/NAME` for a name under a directory fd.
fn proc_path(o: Object<'_>) -> io::Result<CString> {
    match o {
        Object::Fd(fd) => cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes()),
        Object::At(dir, name) => {
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

/// Runs one xattr call on `o`, passing `ctx` (the caller's buffer) to whichever form runs:
/// `on_fd` on a real fd; `on_at` (a raw `*xattrat` syscall, given the entry name) for a name
/// under a directory fd; `on_path` (given the `/proc/self/fd` path and whether the final
/// component must not be followed) for `O_PATH` fds and kernels without `*xattrat`.
fn dispatch<C: ?Sized>(
    o: Object<'_>,
    ctx: &mut C,
    on_fd: impl FnOnce(BorrowedFd<'_>, &mut C) -> rustix::io::Result<usize>,
    on_at: impl FnOnce(BorrowedFd<'_>, &CString, &mut C) -> libc::c_long,
    on_path: impl FnOnce(&CString, bool, &mut C) -> libc::c_long,
) -> io::Result<usize> {
    match o {
        Object::Fd(fd) => match on_fd(fd, ctx) {
            Err(e) if is_ebadf(&e) => {}
            r => return r.map_err(io::Error::from),
        },
        Object::At(dir, path) if !NO_XATTRAT.load(Ordering::Relaxed) => {
            let p = cstr(path.as_bytes())?;
            match ret_len(on_at(dir, &p, ctx)) {
                Err(e) if is_enosys(&e) => NO_XATTRAT.store(true, Ordering::Relaxed),
                r => return r,
            }
        }
        Object::At(..) => {}
    }
    let path = proc_path(o)?;
    // For an fd the magic link itself resolves to the object the fd holds; for a name under
    // a directory the final component must not be followed.
    ret_len(on_path(&path, matches!(o, Object::At(..)), ctx))
}

fn get_raw(o: Object<'_>, name: &CString, buf: &mut [u8]) -> io::Result<usize> {
    dispatch(
        o,
        buf,
        |fd, buf| rustix::fs::fgetxattr(fd, name.as_c_str(), buf),
        |dir, p, buf| {
            let mut args = XattrArgs {
                value: buf.as_mut_ptr() as u64,
                size: buf.len() as u32,
                flags: 0,
            };
            // SAFETY: getxattrat(dirfd, path, AT_SYMLINK_NOFOLLOW, name, args, size): `p` and
            // `name` are NUL-terminated and outlive the call, `args` is a live struct of the
            // size passed, and `args.value` points at `buf`, writable for `args.size` bytes.
            unsafe {
                libc::syscall(
                    SYS_GETXATTRAT,
                    dir.as_raw_fd(),
                    p.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                    name.as_ptr(),
                    &mut args as *mut XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            }
        },
        |path, nofollow, buf| {
            let call = if nofollow {
                libc::lgetxattr
            } else {
                libc::getxattr
            };
            // SAFETY: `path` and `name` are NUL-terminated and live for the call; `buf` is
            // writable for `buf.len()` bytes.
            unsafe {
                call(
                    path.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                ) as _
            }
        },
    )
}

fn list_raw(o: Object<'_>, buf: &mut [u8]) -> io::Result<usize> {
    dispatch(
        o,
        buf,
        |fd, buf| rustix::fs::flistxattr(fd, buf),
        |dir, p, buf| {
            // SAFETY: listxattrat(dirfd, path, AT_SYMLINK_NOFOLLOW, list, size): `p` is
            // NUL-terminated and lives for the call; `buf` is writable for `buf.len()` bytes.
            unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    dir.as_raw_fd(),
                    p.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            }
        },
        |path, nofollow, buf| {
            let call = if nofollow {
                libc::llistxattr
            } else {
                libc::listxattr
            };
            // SAFETY: `path` is NUL-terminated and lives for the call; `buf` is writable for
            // `buf.len()` bytes.
            unsafe { call(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) as _ }
        },
    )
}

fn set_raw(o: Object<'_>, name: &CString, value: &[u8], flags: i32) -> io::Result<()> {
    dispatch(
        o,
        &mut (),
        |fd, _| {
            let f = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
            rustix::fs::fsetxattr(fd, name.as_c_str(), value, f).map(|()| 0)
        },
        |dir, p, _| {
            let args = XattrArgs {
                value: value.as_ptr() as u64,
                size: value.len() as u32,
                flags: flags as u32,
            };
            // SAFETY: setxattrat(dirfd, path, AT_SYMLINK_NOFOLLOW, name, args, size): `p` and
            // `name` are NUL-terminated and live for the call; `args` is a live struct of the
            // size passed, pointing at `value`, readable for `args.size` bytes.
            unsafe {
                libc::syscall(
                    SYS_SETXATTRAT,
                    dir.as_raw_fd(),
                    p.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                    name.as_ptr(),
                    &args as *const XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            }
        },
        |path, nofollow, _| {
            let call = if nofollow {
                libc::lsetxattr
            } else {
                libc::setxattr
            };
            // SAFETY: `path` and `name` are NUL-terminated and live for the call; `value` is
            // readable for `value.len()` bytes.
            let ret = unsafe {
                call(
                    path.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags,
                )
            };
            libc::c_long::from(ret)
        },
    )
    .map(drop)
}

fn remove_raw(o: Object<'_>, name: &CString) -> io::Result<()> {
    dispatch(
        o,
        &mut (),
        |fd, _| rustix::fs::fremovexattr(fd, name.as_c_str()).map(|()| 0),
        |dir, p, _| {
            // SAFETY: removexattrat(dirfd, path, AT_SYMLINK_NOFOLLOW, name): both strings are
            // NUL-terminated and live for the call.
            unsafe {
                libc::syscall(
                    SYS_REMOVEXATTRAT,
                    dir.as_raw_fd(),
                    p.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                    name.as_ptr(),
                )
            }
        },
        |path, nofollow, _| {
            let call = if nofollow {
                libc::lremovexattr
            } else {
                libc::removexattr
            };
            // SAFETY: `path` and `name` are NUL-terminated and live for the call.
            libc::c_long::from(unsafe { call(path.as_ptr(), name.as_ptr()) })
        },
    )
    .map(drop)
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

fn get(o: Object<'_>, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
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
    get(Object::Fd(fd), name)
}

/// The value of xattr `xattr` on entry `name` directly under `dir`, without following a
/// symlink; `Ok(None)` when absent.
pub fn get_xattr_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    xattr: &OsStr,
) -> io::Result<Option<Vec<u8>>> {
    get(Object::At(dir, name), xattr)
}

/// The names of all xattrs on the object `fd` holds (NUL-terminated, back to back).
pub fn list_xattr(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    Object::Fd(fd).list_xattr()
}

/// The names of all xattrs of entry `name` directly under `dir`.
pub fn list_xattr_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    Object::At(dir, name).list_xattr()
}

/// Sets xattr `name` on the object `fd` holds. `flags` is `XATTR_CREATE`, `XATTR_REPLACE`
/// or 0.
pub fn set_xattr(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    Object::Fd(fd).set_xattr(name, value, flags)
}

/// Sets xattr `xattr` on entry `name` directly under `dir`, without following a symlink.
pub fn set_xattr_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    xattr: &OsStr,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    Object::At(dir, name).set_xattr(xattr, value, flags)
}

/// Removes xattr `name` from the object `fd` holds.
pub fn remove_xattr(fd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Object::Fd(fd).remove_xattr(name)
}

/// Removes xattr `xattr` from entry `name` directly under `dir`.
pub fn remove_xattr_at(dir: BorrowedFd<'_>, name: &OsStr, xattr: &OsStr) -> io::Result<()> {
    Object::At(dir, name).remove_xattr(xattr)
}

/// Splits a kernel xattr name list into names.
pub fn split_xattr_list(list: &[u8]) -> impl Iterator<Item = &OsStr> {
    list.split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(OsStr::from_bytes)
}
