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

    /// `overlay.origin`: the file handle (`struct ovl_fb`) of the lower object an upper
    /// one was copied up from (with `index=on`), or of the upper root on the index
    /// directory in older kernels' indexes.
    pub fn origin(self) -> &'static OsStr {
        OsStr::new(match self {
            OverlayXattrs::Trusted => "trusted.overlay.origin",
            OverlayXattrs::User => "user.overlay.origin",
        })
    }

    /// `overlay.nlink`: the link count shown for an indexed file (see [`IndexNlink`]).
    pub fn nlink(self) -> &'static OsStr {
        OsStr::new(match self {
            OverlayXattrs::Trusted => "trusted.overlay.nlink",
            OverlayXattrs::User => "user.overlay.nlink",
        })
    }

    /// `overlay.upper`: the upper root's file handle, on the index directory.
    pub fn upper(self) -> &'static OsStr {
        OsStr::new(match self {
            OverlayXattrs::Trusted => "trusted.overlay.upper",
            OverlayXattrs::User => "user.overlay.upper",
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

/// The kernel's `struct ovl_fb` (the on-disk file handle of `overlay.origin`, of
/// `overlay.upper` on the index directory, and, in hex, the names in it): version 0, magic
/// 0xfb, the total length, flags, the filesystem's handle type, the filesystem's 16-byte
/// uuid, then the handle's bytes.
pub const ORIGIN_HEADER: usize = 21;

/// `OVL_FH_FLAG_PATH_UPPER`: the handle is of an upper-layer object.
const ORIGIN_FLAG_UPPER: u8 = 1 << 2;

/// `OVL_FH_FLAG_BIG_ENDIAN`: set on big-endian machines (the kernel's "CPU endian" flag).
const ORIGIN_FLAG_BIG_ENDIAN: u8 = 1 << 0;

/// The `struct ovl_fb` the kernel records for an object whose filesystem has uuid `uuid`
/// and whose handle (`name_to_handle_at`, non-connectable) is `kind`/`fid`; `upper` for an
/// upper-layer object (the index directory's `overlay.upper`). `None` for a handle too
/// long for the format's one-byte length.
pub fn origin_handle(uuid: &[u8; 16], kind: i32, fid: &[u8], upper: bool) -> Option<Vec<u8>> {
    let len = u8::try_from(ORIGIN_HEADER + fid.len()).ok()?;
    let kind = u8::try_from(kind).ok()?;
    let mut flags = if cfg!(target_endian = "big") {
        ORIGIN_FLAG_BIG_ENDIAN
    } else {
        0
    };
    if upper {
        flags |= ORIGIN_FLAG_UPPER;
    }
    let mut v = Vec::with_capacity(usize::from(len));
    v.extend_from_slice(&[0, 0xfb, len, flags, kind]);
    v.extend_from_slice(uuid);
    v.extend_from_slice(fid);
    Some(v)
}

/// True when `v` is a `struct ovl_fb` as the kernel checks one (`ovl_check_fb_len`):
/// version 0, the magic, a length that is the value's, no unknown flags.
pub fn origin_handle_ok(v: &[u8]) -> bool {
    v.len() >= ORIGIN_HEADER
        && v[0] == 0
        && v[1] == 0xfb
        && usize::from(v[2]) == v.len()
        && v[3] & !0x7 == 0
}

/// The filesystem uuid, handle type and handle bytes an `overlay.origin` records, if it is
/// one (see [`origin_handle_ok`]).
pub fn parse_origin_handle(v: &[u8]) -> Option<([u8; 16], i32, &[u8])> {
    if !origin_handle_ok(v) {
        return None;
    }
    let uuid: [u8; 16] = v[5..ORIGIN_HEADER].try_into().ok()?;
    Some((uuid, i32::from(v[4]), &v[ORIGIN_HEADER..]))
}

/// The name of the index entry of a lower object whose `overlay.origin` is `fh`: its bytes
/// in lowercase hex, as the kernel names them (`ovl_get_index_name`).
pub fn index_name(fh: &[u8]) -> std::ffi::OsString {
    let mut s = String::with_capacity(fh.len() * 2);
    for b in fh {
        s.push_str(&format!("{b:02x}"));
    }
    s.into()
}

/// The handle an index entry's name stands for, if it is the hex of a well-formed one.
pub fn index_name_handle(name: &OsStr) -> Option<Vec<u8>> {
    let b = name.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    // Digits only (`u8::from_str_radix` would take a sign too), as the kernel's hex2bin.
    let digit = |c: u8| char::from(c).to_digit(16);
    let fh = b
        .chunks(2)
        .map(|p| match p {
            [hi, lo] => u8::try_from(digit(*hi)? * 16 + digit(*lo)?).ok(),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()?;
    origin_handle_ok(&fh).then_some(fh)
}

/// The kernel's `overlay.nlink` on an indexed upper file: the link count shown through
/// the overlay, relative to the upper inode's (`U+N`, `U-N`) or the lower one's (`L+N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexNlink {
    /// Relative to the upper inode's link count.
    Upper(i32),
    /// Relative to the lower (origin) inode's link count.
    Lower(i32),
}

impl IndexNlink {
    /// Parses a value as the kernel reads it (`ovl_get_nlink`); `None` for a bad one.
    pub fn parse(v: &[u8]) -> Option<IndexNlink> {
        let s = std::str::from_utf8(v).ok()?;
        let (base, rest) = s.split_at_checked(1)?;
        if !rest.starts_with(['+', '-']) {
            return None;
        }
        let n: i32 = rest.parse().ok()?;
        match base {
            "U" => Some(IndexNlink::Upper(n)),
            "L" => Some(IndexNlink::Lower(n)),
            _ => None,
        }
    }

    /// The value as the kernel writes it (`"U%+i"`).
    pub fn encode(self) -> Vec<u8> {
        match self {
            IndexNlink::Upper(n) => format!("U{n:+}"),
            IndexNlink::Lower(n) => format!("L{n:+}"),
        }
        .into_bytes()
    }

    /// The link count shown, given the upper and lower inodes' counts; `None` when it is
    /// not positive (the kernel then shows the upper count).
    pub fn shown(self, upper: u32, lower: Option<u32>) -> Option<u32> {
        let (base, diff) = match self {
            IndexNlink::Upper(n) => (i64::from(upper), n),
            IndexNlink::Lower(n) => (i64::from(lower?), n),
        };
        u32::try_from(base + i64::from(diff))
            .ok()
            .filter(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_handles_as_the_kernel_writes_them() {
        // What the kernel wrote here for an ext4 file (null uuid, FILEID_INO32_GEN).
        let fid = [0x02, 0x4c, 0x9a, 0x00, 0x3b, 0xec, 0xfb, 0x21];
        let v = origin_handle(&[0; 16], 1, &fid, false).unwrap();
        assert_eq!(
            index_name(&v),
            OsStr::new("00fb1d000100000000000000000000000000000000024c9a003becfb21")
        );
        assert!(origin_handle_ok(&v));
        let up = origin_handle(&[7; 16], 1, &fid, true).unwrap();
        assert_eq!(&up[..5], &[0, 0xfb, 29, 4, 1]);
        assert_eq!(&up[5..21], &[7; 16]);
        assert!(origin_handle_ok(&up));
        assert!(!origin_handle_ok(&up[..28]));
        assert_eq!(parse_origin_handle(&up), Some(([7; 16], 1, &fid[..])));
        assert_eq!(parse_origin_handle(&up[..28]), None);
        assert!(origin_handle(&[0; 16], 1, &[0; 240], false).is_none());
        assert_eq!(index_name_handle(&index_name(&v)), Some(v.clone()));
        for bad in ["stray", "00fb1d0", "00fb1d00010000", "zz"] {
            assert_eq!(index_name_handle(OsStr::new(bad)), None, "{bad}");
        }
        // A sign is no hex digit (the kernel's hex2bin refuses it), though
        // `u8::from_str_radix` takes one: "+0" is no byte 0.
        let signed = index_name(&v).to_string_lossy().replacen("00", "+0", 1);
        assert_eq!(index_name_handle(OsStr::new(&signed)), None, "{signed}");
        let upper = index_name(&v).to_string_lossy().to_uppercase();
        assert_eq!(index_name_handle(OsStr::new(&upper)), Some(v.clone()));
    }

    #[test]
    fn index_nlink_values() {
        assert_eq!(IndexNlink::parse(b"U+0"), Some(IndexNlink::Upper(0)));
        assert_eq!(IndexNlink::parse(b"L-2"), Some(IndexNlink::Lower(-2)));
        for bad in [&b"U0"[..], b"X+1", b"U+", b"", b"U+1x"] {
            assert_eq!(IndexNlink::parse(bad), None);
        }
        assert_eq!(IndexNlink::Upper(0).encode(), b"U+0");
        assert_eq!(IndexNlink::Upper(-1).encode(), b"U-1");
        assert_eq!(IndexNlink::Upper(1).shown(2, None), Some(3));
        assert_eq!(IndexNlink::Upper(-2).shown(2, None), None);
        assert_eq!(IndexNlink::Lower(-1).shown(2, Some(3)), Some(2));
        assert_eq!(IndexNlink::Lower(-1).shown(2, None), None);
    }

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
