//! fanotify for `udba=notify`: a group that reports directory entry changes with the
//! changed directory's file handle and the name (`FAN_REPORT_DFID_NAME`), marks on single
//! directories, and the handles of directories to match events against. The events
//! themselves are plain bytes, parsed by the caller without `unsafe`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// What a mark on a directory reports: names created, removed, moved in or out, files
/// under it written and closed, attributes (mode, owner, times, xattrs such as opaque
/// markers) of it or of names in it changed, and the directory itself removed or moved.
pub const DIR_EVENTS: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_CLOSE_WRITE
    | libc::FAN_ATTRIB
    | libc::FAN_DELETE_SELF
    | libc::FAN_MOVE_SELF
    | libc::FAN_ONDIR
    | libc::FAN_EVENT_ON_CHILD;

/// The event bits in `DIR_EVENTS` that say a file's data or attributes changed where it
/// is (rather than a name coming or going).
pub const IN_PLACE: u64 = libc::FAN_CLOSE_WRITE | libc::FAN_ATTRIB;

/// `FAN_Q_OVERFLOW`: events were lost.
pub const OVERFLOW: u64 = libc::FAN_Q_OVERFLOW;

/// `FANOTIFY_METADATA_VERSION`.
pub const METADATA_VERSION: u8 = libc::FANOTIFY_METADATA_VERSION;

/// `FAN_EVENT_INFO_TYPE_FID`, `_DFID_NAME` and `_DFID`: the info records that carry a
/// file handle.
pub const INFO_FID: u8 = libc::FAN_EVENT_INFO_TYPE_FID;
/// See [`INFO_FID`].
pub const INFO_DFID_NAME: u8 = libc::FAN_EVENT_INFO_TYPE_DFID_NAME;
/// See [`INFO_FID`].
pub const INFO_DFID: u8 = libc::FAN_EVENT_INFO_TYPE_DFID;

/// A notification group for directory entry events (`FAN_CLASS_NOTIF |
/// FAN_REPORT_DFID_NAME`), non-blocking. Unprivileged processes may have one since Linux
/// 5.13 (marks on inodes only, which is all this asks); before, `EPERM`.
pub fn init() -> io::Result<OwnedFd> {
    let flags =
        libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_REPORT_DFID_NAME;
    let event_f_flags = (libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_uint;
    // SAFETY: fanotify_init takes two integers and returns a new fd or -1; the fd is ours
    // alone.
    let fd = unsafe { libc::fanotify_init(flags, event_f_flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by fanotify_init and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds (or, with `add` false, removes) group `group`'s mark for [`DIR_EVENTS`] on the
/// directory open as `dir` (an `O_PATH` fd will do: the mark goes on the inode its
/// `/proc/self/fd` link names, whatever the directory's path is now).
pub fn mark_dir(group: BorrowedFd<'_>, dir: BorrowedFd<'_>, add: bool) -> io::Result<()> {
    let path = CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = if add {
        libc::FAN_MARK_ADD | libc::FAN_MARK_ONLYDIR
    } else {
        libc::FAN_MARK_REMOVE
    };
    // SAFETY: `group` is a live fanotify fd, `path` a NUL-terminated string that outlives
    // the call; the kernel only reads it.
    let r = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            flags,
            DIR_EVENTS,
            libc::AT_FDCWD,
            path.as_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The most bytes of a file handle (`MAX_HANDLE_SZ`).
const MAX_HANDLE_SZ: usize = 128;

/// The file handle of the directory open as `dir`, as fanotify reports it: its type
/// (native endian, 4 bytes) then its bytes. Asked in the form fanotify uses
/// (`AT_HANDLE_FID`, Linux 6.5+), else the ordinary one, which is the same on filesystems
/// that can export handles.
pub fn dir_handle(dir: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    match handle_at(dir, libc::AT_HANDLE_FID) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => handle_at(dir, 0),
        r => r,
    }
}

fn handle_at(dir: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<Vec<u8>> {
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[] }, in u32s so
    // that it is aligned.
    let mut buf = [0u32; 2 + MAX_HANDLE_SZ / 4];
    buf[0] = MAX_HANDLE_SZ as u32;
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` is a file_handle whose handle_bytes says how many bytes follow the
    // header (MAX_HANDLE_SZ, all within `buf`); the empty path with AT_EMPTY_PATH names
    // `dir` itself; `mount_id` is a valid int to write.
    let r = unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast::<libc::file_handle>(),
            &mut mount_id,
            libc::AT_EMPTY_PATH | flags,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let len = (buf[0] as usize).min(MAX_HANDLE_SZ);
    // The type, then the handle's own bytes.
    Ok(bytes[4..8 + len].to_vec())
}

/// Reads what `fd` (non-blocking) has ready into `buf`: 0 when nothing is.
pub fn read_ready(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    match rustix::io::read(fd, buf) {
        Ok(n) => Ok(n),
        Err(rustix::io::Errno::AGAIN) => Ok(0),
        Err(e) => Err(e.into()),
    }
}
