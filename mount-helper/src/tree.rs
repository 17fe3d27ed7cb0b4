//! Removing a whole tree of the store, however deep, with two file descriptors.
//!
//! A layer's paths may be up to `PATH_MAX` long, so a tree may be 2,048 directories deep;
//! a removal that keeps one descriptor per level open (as `std::fs::remove_dir_all` and a
//! recursive walk do) fails with `EMFILE` under a low descriptor limit, and a staging
//! directory it cannot remove would stop every later writer. This walk keeps only the
//! directory it is in: it goes down by name (`O_NOFOLLOW`) and back up through `..`, and
//! remembers, per level, the names of the subdirectories still to remove. The trees it
//! removes are the store's own (under its private `tmp/`, `layers/` or `containers/`, with
//! the store locked), so nothing moves them while it walks.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Gives the owner read, write and search permission on `dir` (an unprivileged owner
/// cannot empty a read-only directory of a layer otherwise), removes every entry of `dir`
/// that is not a directory, and returns the names of its subdirectories.
fn clear_files(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let st = rustix::fs::fstat(dir)?;
    let mode = st.st_mode & 0o7777;
    if mode & 0o700 != 0o700 {
        // Best effort: root needs no permission, and a failure shows at the unlink.
        let _ = rustix::fs::fchmod(dir, Mode::from_raw_mode(mode | 0o700));
    }
    let mut subdirs = Vec::new();
    let mut files = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let name = OsStr::from_bytes(e.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let is_dir = match e.file_type() {
            FileType::Directory => true,
            FileType::Unknown => rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)?,
            _ => false,
        };
        if is_dir {
            subdirs.push(name.to_os_string());
        } else {
            files.push(name.to_os_string());
        }
    }
    for f in files {
        match rustix::fs::unlinkat(dir, &f, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(subdirs)
}

/// Removes `name` under `dir` and everything beneath it; nothing there is fine.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?);
    }
    let mut cur = open_dir(dir, name)?;
    // Per level below `name`: the level's name in its parent, and its subdirectories left.
    let mut stack: Vec<(OsString, Vec<OsString>)> =
        vec![(OsString::new(), clear_files(cur.as_fd())?)];
    loop {
        let next = match stack.last_mut() {
            None => break,
            Some((_, pending)) => pending.pop(),
        };
        match next {
            Some(child) => {
                let sub = open_dir(cur.as_fd(), &child)?;
                let pending = clear_files(sub.as_fd())?;
                cur = sub;
                stack.push((child, pending));
            }
            None => {
                let Some((emptied, _)) = stack.pop() else {
                    break;
                };
                if stack.is_empty() {
                    break;
                }
                let parent = open_dir(cur.as_fd(), OsStr::new(".."))?;
                rustix::fs::unlinkat(parent.as_fd(), &emptied, AtFlags::REMOVEDIR)?;
                cur = parent;
            }
        }
    }
    drop(cur);
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

/// Removes the file or tree at `path`; nothing there is fine.
pub fn remove_path(path: &std::path::Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no file name to remove",
        ));
    };
    let dir = rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    remove_tree_at(dir.as_fd(), name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn removes_deep_wide_and_read_only_trees() {
        let t = tempfile::tempdir().unwrap();
        let top = t.path().join("top");
        std::fs::create_dir(&top).unwrap();
        // 3000 levels: more than a walk holding one descriptor per level could open under
        // a limit of 1024, and a path longer than PATH_MAX.
        let mut cur = open_dir(rustix::fs::CWD, top.as_os_str()).unwrap();
        for i in 0..3000 {
            rustix::fs::mkdirat(&cur, "d", Mode::from_raw_mode(0o755)).unwrap();
            if i % 500 == 0 {
                rustix::fs::symlinkat("/etc", &cur, "link").unwrap();
                rustix::fs::openat(
                    &cur,
                    "f",
                    OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                )
                .unwrap();
            }
            cur = open_dir(cur.as_fd(), OsStr::new("d")).unwrap();
        }
        drop(cur);
        for i in 0..200 {
            std::fs::create_dir(top.join(format!("w{i}"))).unwrap();
            std::fs::write(top.join(format!("w{i}/f")), b"x").unwrap();
        }
        std::fs::set_permissions(top.join("w0"), std::fs::Permissions::from_mode(0o500)).unwrap();
        remove_path(&top).unwrap();
        assert!(!top.exists());
        assert!(
            std::path::Path::new("/etc/passwd").is_file(),
            "links are not followed"
        );
        remove_path(&top).unwrap();
        let f = t.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        remove_path(&f).unwrap();
        assert!(!f.exists());
    }
}
