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

/// fuse-overlayfs's opaque marker (written where `trusted.overlay.opaque` is refused).
pub const FUSE_OVERLAYFS_OPAQUE: &str = "user.fuseoverlayfs.opaque";

/// fuse-overlayfs's record of a copied-up file's path (NUL-terminated), from which it
/// finds the original's inode number.
pub const FUSE_OVERLAYFS_ORIGIN: &str = "user.fuseoverlayfs.origin";

/// The xattrs that mark a directory opaque when their value is `y`: the kernel's (root and
/// `userxattr` mounts) and fuse-overlayfs's own.
pub const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    FUSE_OVERLAYFS_OPAQUE,
];

/// Namespaces private to the overlay implementation: never visible through the mount (the
/// last two hold owner and mode overrides, see `xattr_permissions`).
const PRIVATE_XATTR_PREFIXES: [&[u8]; 5] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"user.containers.override_stat",
    b"security.fuseoverlayfs.",
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

/// How xattr names map between the mount and the layers. The mount's own overlay namespace
/// (`trusted.overlay.` as root, `user.overlay.` unprivileged) can be used through the mount
/// as the kernel allows since 6.7: `PREFIX.X` is stored escaped as `PREFIX.overlay.X`. Every
/// other private name is neither shown nor settable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XattrNames {
    prefix: &'static str,
}

/// Where an xattr name given through the mount lives in a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XattrTarget {
    /// Stored under this name.
    Stored(std::ffi::OsString),
    /// A private name: not reachable through the mount.
    Private,
}

impl XattrNames {
    /// The mapping for a mount whose own namespace is `prefix` (`trusted.overlay.` or
    /// `user.overlay.`).
    pub fn new(prefix: &'static str) -> XattrNames {
        XattrNames { prefix }
    }

    /// The stored name for `name` as given through the mount.
    pub fn to_layer(&self, name: &OsStr) -> XattrTarget {
        let b = name.as_bytes();
        match b.strip_prefix(self.prefix.as_bytes()) {
            Some(rest) => {
                let mut v = self.prefix.as_bytes().to_vec();
                v.extend_from_slice(b"overlay.");
                v.extend_from_slice(rest);
                XattrTarget::Stored(std::os::unix::ffi::OsStringExt::from_vec(v))
            }
            None if is_private_xattr(name) => XattrTarget::Private,
            None => XattrTarget::Stored(name.to_os_string()),
        }
    }

    /// The name shown through the mount for stored name `name`, if it is shown at all.
    pub fn to_mount<'a>(&self, name: &'a OsStr) -> Option<std::borrow::Cow<'a, OsStr>> {
        let b = name.as_bytes();
        let escaped = [self.prefix.as_bytes(), b"overlay."].concat();
        if let Some(rest) = b.strip_prefix(escaped.as_slice()) {
            let mut v = self.prefix.as_bytes().to_vec();
            v.extend_from_slice(rest);
            return Some(std::borrow::Cow::Owned(
                std::os::unix::ffi::OsStringExt::from_vec(v),
            ));
        }
        if is_private_xattr(name) {
            None
        } else {
            Some(std::borrow::Cow::Borrowed(name))
        }
    }

    /// True when a copy-up carries stored name `name` over (user-visible ones, escaped
    /// ones included).
    pub fn copied_up(&self, name: &OsStr) -> bool {
        self.to_mount(name).is_some()
    }
}

/// The namespace of the overlay's own xattrs in a mount, as the kernel picks it:
/// `trusted.overlay.` as root, `user.overlay.` for an unprivileged daemon or with `userxattr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayXattrs {
    /// `trusted.overlay.*`
    Trusted,
    /// `user.overlay.*`
    User,
}

impl OverlayXattrs {
    /// `trusted.overlay.` or `user.overlay.`
    pub fn prefix(self) -> &'static str {
        match self {
            OverlayXattrs::Trusted => "trusted.overlay.",
            OverlayXattrs::User => "user.overlay.",
        }
    }

    /// `overlay.opaque`: `y` on an opaque directory, `x` on one that may hold xattr
    /// whiteouts.
    pub fn opaque(self) -> &'static OsStr {
        OsStr::new(match self {
            OverlayXattrs::Trusted => "trusted.overlay.opaque",
            OverlayXattrs::User => "user.overlay.opaque",
        })
    }

    /// `overlay.whiteout`: makes an empty regular file a whiteout (see
    /// [`OverlayXattrs::opaque`]).
    pub fn whiteout(self) -> &'static OsStr {
        OsStr::new(match self {
            OverlayXattrs::Trusted => "trusted.overlay.whiteout",
            OverlayXattrs::User => "user.overlay.whiteout",
        })
    }

    /// `overlay.metacopy`: on a regular file whose data is in a layer below (empty, or an
    /// fs-verity digest of the data).
    pub fn metacopy(self) -> &'static OsStr {
        OsStr::new(match self {
            OverlayXattrs::Trusted => "trusted.overlay.metacopy",
            OverlayXattrs::User => "user.overlay.metacopy",
        })
    }

    /// `overlay.impure`: on a directory holding copied-up entries (with an origin).
    pub fn impure(self) -> &'static OsStr {
        OsStr::new(match self {
            OverlayXattrs::Trusted => "trusted.overlay.impure",
            OverlayXattrs::User => "user.overlay.impure",
        })
    }

    /// `overlay.redirect`: where the lower layers of a renamed directory are.
    pub fn redirect(self) -> &'static OsStr {
        OsStr::new(match self {
            OverlayXattrs::Trusted => "trusted.overlay.redirect",
            OverlayXattrs::User => "user.overlay.redirect",
        })
    }
}

/// The size of the kernel's versioned `overlay.metacopy` value without a digest (`struct
/// ovl_metacopy`: version, length, flags, digest algorithm, then the fs-verity digest).
pub const METACOPY_HEADER: usize = 4;

/// True when an `overlay.metacopy` value is one the kernel's lookup accepts: empty (its
/// older form, and what it writes without a digest), or at least the versioned header (the
/// digest is only read with `verity=on`). A shorter one fails the lookup with `EIO`.
pub fn metacopy_value_ok(v: &[u8]) -> bool {
    v.is_empty() || v.len() >= METACOPY_HEADER
}

/// The fs-verity digest an `overlay.metacopy` value records, as the kernel reads it: the
/// hash algorithm (`FS_VERITY_HASH_ALG_*`, 0 for none) and the digest, whose size the
/// header's length field gives. `None` for the empty form and a header without an
/// algorithm.
pub fn metacopy_digest(v: &[u8]) -> Option<(u8, &[u8])> {
    let (&len, &algo) = (v.get(1)?, v.get(3)?);
    if algo == 0 {
        return None;
    }
    let end = usize::from(len).clamp(METACOPY_HEADER, v.len());
    Some((algo, &v[METACOPY_HEADER..end]))
}

/// The `overlay.metacopy` value that records fs-verity digest `digest` of hash algorithm
/// `algo`: the versioned header (version 0, length, no flags, algorithm), then the digest.
pub fn metacopy_with_digest(algo: u8, digest: &[u8]) -> Vec<u8> {
    let mut v = vec![0, (METACOPY_HEADER + digest.len()) as u8, 0, algo];
    v.extend_from_slice(digest);
    v
}

/// True for an opaque-xattr value that marks a directory as holding xattr whiteouts (Linux
/// 6.7+): not opaque, but its empty regular files with `overlay.whiteout` are whiteouts.
pub fn is_xwhiteouts_value(v: &[u8]) -> bool {
    v == b"x"
}

/// True for an opaque-xattr value that marks a directory opaque.
pub fn is_opaque_value(v: &[u8]) -> bool {
    v == b"y"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metacopy_digests() {
        assert_eq!(metacopy_digest(b""), None);
        assert_eq!(metacopy_digest(&[0, 4, 0, 0]), None);
        let v = metacopy_with_digest(1, &[0xab; 32]);
        assert_eq!(&v[..4], &[0, 36, 0, 1]);
        assert_eq!(metacopy_digest(&v), Some((1, &[0xab; 32][..])));
        // A length field past the value's end reads what is there.
        assert_eq!(metacopy_digest(&[0, 40, 0, 2, 7]), Some((2, &[7][..])));
    }

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
    fn escaped_names() {
        let x = XattrNames::new("trusted.overlay.");
        assert_eq!(
            x.to_layer(OsStr::new("trusted.overlay.opaque")),
            XattrTarget::Stored("trusted.overlay.overlay.opaque".into())
        );
        assert_eq!(
            x.to_layer(OsStr::new("user.overlay.a")),
            XattrTarget::Private
        );
        assert_eq!(
            x.to_layer(OsStr::new("user.a")),
            XattrTarget::Stored("user.a".into())
        );
        assert_eq!(
            x.to_mount(OsStr::new("trusted.overlay.overlay.x"))
                .as_deref(),
            Some(OsStr::new("trusted.overlay.x"))
        );
        assert_eq!(x.to_mount(OsStr::new("trusted.overlay.opaque")), None);
        assert_eq!(x.to_mount(OsStr::new("user.fuseoverlayfs.opaque")), None);
        assert!(x.copied_up(OsStr::new("trusted.overlay.overlay.x")));
        assert!(!x.copied_up(OsStr::new("trusted.overlay.origin")));
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
