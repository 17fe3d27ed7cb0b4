//! The on-disk formats shared with the kernel's overlayfs and fuse-overlayfs: whiteouts, opaque
//! markers and the overlay-private xattr namespaces.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::sys::{FileKind, Stat};

/// A file named `.wh.NAME` hides `NAME` in the layers below (the OCI / AUFS format that
/// containers/storage unpacks and fuse-overlayfs understands).
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// A file named `.wh..wh..opq` makes its directory opaque.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The xattrs that mark a directory opaque when their value is `y`: the kernel's (root and
/// `userxattr` mounts) and fuse-overlayfs's own.
pub const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];

/// Namespaces private to the overlay implementation: never visible through the mount.
const PRIVATE_XATTR_PREFIXES: [&[u8]; 3] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
];

/// True for a char device 0/0: the kernel's whiteout.
pub fn is_whiteout_stat(st: &Stat) -> bool {
    st.kind() == Some(FileKind::CharDevice) && st.rdev == 0
}

/// The name a `.wh.` file hides, if `name` is one (and not the opaque marker).
pub fn whiteout_target(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if b == OPAQUE_MARKER.as_bytes() {
        return None;
    }
    b.strip_prefix(WHITEOUT_PREFIX)
        .filter(|t| !t.is_empty())
        .map(OsStr::from_bytes)
}

/// The `.wh.NAME` file name that hides `name`.
pub fn whiteout_name(name: &OsStr) -> std::ffi::OsString {
    let mut v = WHITEOUT_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    std::os::unix::ffi::OsStringExt::from_vec(v)
}

/// True for names that belong to the whiteout format and are never shown through the mount.
pub fn is_reserved_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WHITEOUT_PREFIX)
}

/// True for an xattr name in one of the overlay-private namespaces.
pub fn is_private_xattr(name: &OsStr) -> bool {
    let b = name.as_bytes();
    PRIVATE_XATTR_PREFIXES.iter().any(|p| b.starts_with(p))
}

/// True for an opaque-xattr value that marks a directory opaque.
pub fn is_opaque_value(v: &[u8]) -> bool {
    v == b"y"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_names() {
        assert_eq!(
            whiteout_target(OsStr::new(".wh.foo")),
            Some(OsStr::new("foo"))
        );
        assert_eq!(whiteout_target(OsStr::new(".wh..wh..opq")), None);
        assert_eq!(whiteout_target(OsStr::new(".wh.")), None);
        assert_eq!(whiteout_target(OsStr::new("foo")), None);
        assert_eq!(whiteout_name(OsStr::new("a b")), OsStr::new(".wh.a b"));
        assert!(is_reserved_name(OsStr::new(".wh..wh..opq")));
        assert!(!is_reserved_name(OsStr::new("wh.x")));
    }

    #[test]
    fn private_xattrs() {
        assert!(is_private_xattr(OsStr::new("trusted.overlay.opaque")));
        assert!(is_private_xattr(OsStr::new("user.overlay.origin")));
        assert!(is_private_xattr(OsStr::new("user.fuseoverlayfs.opaque")));
        assert!(!is_private_xattr(OsStr::new("user.overlayish")));
        assert!(!is_private_xattr(OsStr::new("security.selinux")));
    }
}
