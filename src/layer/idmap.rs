//! Owner mapping between the layers and the mount (`uidmapping=`, `gidmapping=`,
//! `squash_to_root`, `squash_to_uid=`, `squash_to_gid=`), as fuse-overlayfs applies them.
//!
//! A mapping `C:H:S` says ids `C..C+S` as stored in the layers appear as `H..H+S` through
//! the mount (containers/storage passes the container's ids first: a rootless
//! `--userns=keep-id` container gets `uidmapping=0:1:1002:1002:0:1:...`, so an image's root
//! files, stored as 0, are shown as 1, which the container's user namespace maps back to 0). Reads map stored ids to presented ones, with an id no range covers shown as the
//! overflow id (65534, as the kernel shows unmapped ids in a user namespace); writes (new
//! objects, chown) map presented ids back, and a presented id no range covers is refused
//! with `EINVAL`, as `chown` to an unmapped id is inside a user namespace. Squashing replaces
//! every presented owner (and only the presented one: what is stored is left alone).

use crate::config::{IdMapping, MountConfig};

/// The id shown for a stored id that no mapping covers.
pub const OVERFLOW_ID: u32 = 65534;

/// The owner mapping of one mount; the identity when no option asks for one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    uids: Vec<IdMapping>,
    gids: Vec<IdMapping>,
    squash_uid: Option<u32>,
    squash_gid: Option<u32>,
}

/// Stored id -> presented id through `maps`; `None` when no range covers it.
fn to_mount(maps: &[IdMapping], id: u32) -> Option<u32> {
    maps.iter().find_map(|m| {
        let off = id.checked_sub(m.container)?;
        (off < m.len).then(|| m.host.wrapping_add(off))
    })
}

/// Presented id -> stored id through `maps`; `None` when no range covers it.
fn to_disk(maps: &[IdMapping], id: u32) -> Option<u32> {
    maps.iter().find_map(|m| {
        let off = id.checked_sub(m.host)?;
        (off < m.len).then(|| m.container.wrapping_add(off))
    })
}

impl IdMap {
    /// The mapping a mount configuration asks for.
    pub fn from_config(cfg: &MountConfig) -> IdMap {
        IdMap {
            uids: cfg.uid_mappings.clone(),
            gids: cfg.gid_mappings.clone(),
            squash_uid: if cfg.squash_to_root {
                Some(0)
            } else {
                cfg.squash_to_uid
            },
            squash_gid: if cfg.squash_to_root {
                Some(0)
            } else {
                cfg.squash_to_gid
            },
        }
    }

    /// True when ids pass through unchanged both ways.
    pub fn is_identity(&self) -> bool {
        self.uids.is_empty()
            && self.gids.is_empty()
            && self.squash_uid.is_none()
            && self.squash_gid.is_none()
    }

    /// The owner a stored uid is shown as.
    pub fn uid_to_mount(&self, uid: u32) -> u32 {
        if let Some(s) = self.squash_uid {
            return s;
        }
        if self.uids.is_empty() {
            return uid;
        }
        to_mount(&self.uids, uid).unwrap_or(OVERFLOW_ID)
    }

    /// The group a stored gid is shown as.
    pub fn gid_to_mount(&self, gid: u32) -> u32 {
        if let Some(s) = self.squash_gid {
            return s;
        }
        if self.gids.is_empty() {
            return gid;
        }
        to_mount(&self.gids, gid).unwrap_or(OVERFLOW_ID)
    }

    /// The uid stored for a presented one (a caller's, or a chown target).
    pub fn uid_to_disk(&self, uid: u32) -> Option<u32> {
        if self.uids.is_empty() {
            return Some(uid);
        }
        to_disk(&self.uids, uid)
    }

    /// The gid stored for a presented one.
    pub fn gid_to_disk(&self, gid: u32) -> Option<u32> {
        if self.gids.is_empty() {
            return Some(gid);
        }
        to_disk(&self.gids, gid)
    }

    /// A POSIX ACL xattr value as stored, with its named users and groups as presented.
    pub fn acl_to_mount(&self, value: &[u8]) -> Vec<u8> {
        map_acl(
            value,
            |uid| Some(self.uid_to_mount(uid)),
            |gid| Some(self.gid_to_mount(gid)),
        )
        .unwrap_or_else(|| value.to_vec())
    }

    /// A POSIX ACL xattr value as presented, with its named users and groups as stored;
    /// none when one of them has no stored id.
    pub fn acl_to_disk(&self, value: &[u8]) -> Option<Vec<u8>> {
        map_acl(
            value,
            |uid| self.uid_to_disk(uid),
            |gid| self.gid_to_disk(gid),
        )
    }
}

/// The POSIX ACL xattr format (`system.posix_acl_access`/`_default`): a little-endian
/// version word (2), then entries of tag (u16), permissions (u16) and id (u32).
const ACL_VERSION: u32 = 2;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

/// `value` with the ids of its named user and group entries mapped; a value not in the
/// format comes back unchanged (the layer's filesystem judges it).
fn map_acl(
    value: &[u8],
    uid: impl Fn(u32) -> Option<u32>,
    gid: impl Fn(u32) -> Option<u32>,
) -> Option<Vec<u8>> {
    let (head, entries) = value.split_at_checked(4)?;
    if u32::from_le_bytes(head.try_into().ok()?) != ACL_VERSION || entries.len() % 8 != 0 {
        return Some(value.to_vec());
    }
    let mut out = value.to_vec();
    for (i, e) in entries.chunks_exact(8).enumerate() {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let mapped = match tag {
            ACL_USER => uid(id)?,
            ACL_GROUP => gid(id)?,
            _ => continue,
        };
        let at = 4 + i * 8 + 4;
        out[at..at + 4].copy_from_slice(&mapped.to_le_bytes());
    }
    Some(out)
}

const ACL_USER_OBJ: u16 = 0x01;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;

/// The entries of an ACL value as (tag, permissions) with their positions; none when the
/// value is not in the format.
fn acl_entries(value: &[u8]) -> Option<Vec<(usize, u16, u16)>> {
    let (head, entries) = value.split_at_checked(4)?;
    if u32::from_le_bytes(head.try_into().ok()?) != ACL_VERSION || entries.len() % 8 != 0 {
        return None;
    }
    Some(
        entries
            .chunks_exact(8)
            .enumerate()
            .map(|(i, e)| {
                (
                    4 + i * 8,
                    u16::from_le_bytes([e[0], e[1]]),
                    u16::from_le_bytes([e[2], e[3]]),
                )
            })
            .collect(),
    )
}

/// The permission bits an access ACL stands for, as the filesystem sets them when the ACL
/// is set: owner from `USER_OBJ`, group from `MASK` (`GROUP_OBJ` without one), other from
/// `OTHER`. None when the value is not an ACL with those entries.
pub fn acl_mode(value: &[u8]) -> Option<u32> {
    let entries = acl_entries(value)?;
    let perm = |tag: u16| {
        entries
            .iter()
            .find(|e| e.1 == tag)
            .map(|e| u32::from(e.2 & 7))
    };
    let group = perm(ACL_MASK).or_else(|| perm(ACL_GROUP_OBJ))?;
    Some(perm(ACL_USER_OBJ)? << 6 | group << 3 | perm(ACL_OTHER)?)
}

/// `value` with the entries that stand for the permission bits set from `mode`, as a chmod
/// changes an access ACL (`posix_acl_chmod`); none when the value is not an ACL.
pub fn acl_with_mode(value: &[u8], mode: u32) -> Option<Vec<u8>> {
    let entries = acl_entries(value)?;
    let has_mask = entries.iter().any(|e| e.1 == ACL_MASK);
    let mut out = value.to_vec();
    for (at, tag, _) in entries {
        let bits = match tag {
            ACL_USER_OBJ => mode >> 6,
            ACL_MASK => mode >> 3,
            ACL_GROUP_OBJ if !has_mask => mode >> 3,
            ACL_OTHER => mode,
            _ => continue,
        };
        out[at + 2..at + 4].copy_from_slice(&((bits & 7) as u16).to_le_bytes());
    }
    Some(out)
}

/// The xattr of a POSIX access ACL.
pub const ACCESS_ACL: &str = "system.posix_acl_access";
/// The xattr of a directory's default ACL.
pub const DEFAULT_ACL: &str = "system.posix_acl_default";

/// True for the xattr names that hold POSIX ACLs.
pub fn is_acl_name(name: &std::ffi::OsStr) -> bool {
    name == ACCESS_ACL || name == DEFAULT_ACL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_modes_both_ways() {
        let u = u32::MAX;
        let masked = acl(&[(1, 7, u), (2, 5, 42), (4, 5, u), (0x10, 6, u), (0x20, 1, u)]);
        assert_eq!(acl_mode(&masked), Some(0o761));
        let chmodded = acl_with_mode(&masked, 0o640).unwrap();
        assert_eq!(
            chmodded,
            acl(&[(1, 6, u), (2, 5, 42), (4, 5, u), (0x10, 4, u), (0x20, 0, u)])
        );
        let plain = acl(&[(1, 6, u), (4, 4, u), (0x20, 4, u)]);
        assert_eq!(acl_mode(&plain), Some(0o644));
        assert_eq!(
            acl_with_mode(&plain, 0o750).unwrap(),
            acl(&[(1, 7, u), (4, 5, u), (0x20, 0, u)])
        );
        assert_eq!(acl_mode(b"junk"), None);
        assert_eq!(acl_with_mode(b"junk", 0o644), None);
    }

    fn map(uids: &[(u32, u32, u32)]) -> IdMap {
        IdMap {
            uids: uids
                .iter()
                .map(|&(container, host, len)| IdMapping {
                    container,
                    host,
                    len,
                })
                .collect(),
            ..IdMap::default()
        }
    }

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = ACL_VERSION.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    /// Named users and groups of an ACL follow the mapping; the owner, owning group, mask
    /// and other entries carry no id; an unmapped presented id cannot be stored.
    #[test]
    fn acl_ids_map_both_ways() {
        let mut m = map(&[(0, 1000, 1), (1, 100_000, 65_536)]);
        m.gids = m.uids.clone();
        let undef = u32::MAX;
        let stored = acl(&[
            (0x01, 6, undef),
            (ACL_USER, 4, 0),
            (ACL_USER, 4, 5),
            (0x04, 4, undef),
            (ACL_GROUP, 2, 7),
            (0x10, 6, undef),
            (0x20, 0, undef),
        ]);
        let shown = m.acl_to_mount(&stored);
        assert_eq!(
            shown,
            acl(&[
                (0x01, 6, undef),
                (ACL_USER, 4, 1000),
                (ACL_USER, 4, 100_004),
                (0x04, 4, undef),
                (ACL_GROUP, 2, 100_006),
                (0x10, 6, undef),
                (0x20, 0, undef),
            ])
        );
        assert_eq!(m.acl_to_disk(&shown), Some(stored));
        assert_eq!(m.acl_to_disk(&acl(&[(ACL_USER, 4, 5)])), None);
        // Not an ACL value: left to the filesystem to refuse.
        assert_eq!(m.acl_to_mount(b"xy"), b"xy");
    }

    #[test]
    fn identity_without_options() {
        let m = IdMap::default();
        assert!(m.is_identity());
        assert_eq!(m.uid_to_mount(1234), 1234);
        assert_eq!(m.gid_to_disk(7), Some(7));
    }

    #[test]
    fn ranges_map_both_ways() {
        // What rootless podman passes for --userns=keep-id with user 1002: stored 0..1001
        // show as 1..1002, stored 1002 (the user) as 0, the rest as themselves.
        let m = map(&[(0, 1, 1002), (1002, 0, 1), (1003, 1003, 64_534)]);
        assert_eq!(m.uid_to_mount(0), 1);
        assert_eq!(m.uid_to_mount(1000), 1001);
        assert_eq!(m.uid_to_mount(1002), 0);
        assert_eq!(m.uid_to_mount(2000), 2000);
        assert_eq!(m.uid_to_mount(70_000), OVERFLOW_ID);
        assert_eq!(m.uid_to_disk(1), Some(0));
        assert_eq!(m.uid_to_disk(0), Some(1002));
        assert_eq!(m.uid_to_disk(2000), Some(2000));
        assert_eq!(m.uid_to_disk(70_000), None);
        // Round trip over the range edges.
        for shown in [0, 1, 1002, 1003, 65_536] {
            assert_eq!(m.uid_to_mount(m.uid_to_disk(shown).unwrap()), shown);
        }
        // Gids are untouched by uid mappings.
        assert_eq!(m.gid_to_mount(1002), 1002);
    }

    #[test]
    fn ranges_at_the_top_of_the_id_space() {
        let m = map(&[(u32::MAX - 1, 0, 2)]);
        assert_eq!(m.uid_to_mount(u32::MAX), 1);
        assert_eq!(m.uid_to_disk(1), Some(u32::MAX));
        assert_eq!(m.uid_to_disk(2), None);
    }

    #[test]
    fn squash_replaces_what_is_shown_only() {
        let mut m = map(&[(1000, 0, 10)]);
        m.squash_uid = Some(0);
        m.squash_gid = Some(5);
        assert_eq!(m.uid_to_mount(4242), 0);
        assert_eq!(m.gid_to_mount(4242), 5);
        // Writes still go through the mapping.
        assert_eq!(m.uid_to_disk(3), Some(1003));
        assert!(!m.is_identity());
    }
}
