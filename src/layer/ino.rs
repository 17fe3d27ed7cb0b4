//! How `st_ino` (and so the FUSE node id) is composed from a layer object's inode number.
//!
//! When every layer lives on one filesystem, the real inode number is used as it is: unique,
//! and stable across remounts. When layers span filesystems, the filesystem's index in the
//! stack goes into the high bits (like the kernel's `xino`), so numbers stay unique; an inode
//! number too large to leave room for them is folded through a hash into the high range.
//!
//! Two of the id types live here: [`LayerIno`], an object's inode number in one layer (never
//! shown as it is), and [`Ino`], the `st_ino` (and `d_ino`) shown through the mount. An
//! [`Ino`] is made from a layer's number only by [`InoScheme::compose`].

use std::fmt;

use super::LayerIdx;
use crate::config::Xino;

/// Node id 1 belongs to the mount's root; a real inode numbered 1 is moved aside.
pub const ROOT_INO: u64 = 1;

/// The `st_ino` (and readdir's `d_ino`) shown through the mount.
///
/// Made from a layer object's inode number by [`InoScheme::compose`] (the only way from a
/// [`LayerIno`]), from a node id by [`crate::inode::NodeId::shown`], or read back from the
/// number recorded at copy-up ([`Ino::from_origin`]). Only the wire takes it as a `u64`.
/// (The default, 0, is no object's number: a negative entry's.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Ino(u64);

impl Ino {
    /// The root's number.
    pub const ROOT: Ino = Ino(ROOT_INO);

    /// The number as the wire and the origin xattr carry it.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The number a node id stands for when shown as it is: only for the node table's rule
    /// ([`crate::inode::NodeId::shown`]) and its inverse.
    pub(crate) const fn from_node_number(n: u64) -> Ino {
        Ino(n)
    }

    /// The number recorded on an upper object at copy-up (the value of the origin xattr),
    /// if it is one: the value is data in a layer, not trusted. 0 is no node id the kernel
    /// accepts (it reads an entry with node id 0 as a negative one, hiding the file) and the
    /// root's number is the root's: either means "no origin recorded".
    pub fn from_origin(value: &[u8]) -> Option<Ino> {
        let n: u64 = std::str::from_utf8(value).ok()?.parse().ok()?;
        (n != 0 && n != ROOT_INO).then_some(Ino(n))
    }

    /// The value of the origin xattr recording this number (see [`Ino::from_origin`]).
    pub fn to_origin(self) -> String {
        self.0.to_string()
    }
}

impl fmt::Display for Ino {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One object's inode number in one layer, as `statx` there reports it: unique within the
/// layer's filesystem only, so never shown as it is (see [`InoScheme::compose`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerIno {
    /// The layer holding the object.
    pub layer: LayerIdx,
    /// Its inode number on that layer's filesystem.
    pub ino: u64,
}

impl LayerIno {
    /// Inode `ino` of layer `layer`.
    pub const fn new(layer: LayerIdx, ino: u64) -> LayerIno {
        LayerIno { layer, ino }
    }
}

/// The composition rule for one mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InoScheme {
    fs_bits: u32,
    ino32: bool,
}

impl InoScheme {
    /// The scheme for `filesystems` distinct filesystems under the given options.
    pub fn new(filesystems: usize, xino: Xino, ino32: bool) -> InoScheme {
        let needed = usize::BITS - filesystems.saturating_sub(1).leading_zeros();
        let fs_bits = match xino {
            Xino::Off => 0,
            Xino::Auto => needed,
            Xino::On => needed.max(1),
        };
        InoScheme { fs_bits, ino32 }
    }

    /// The `st_ino` shown for inode `ino` of the filesystem with index `fs_index` (the
    /// number of a [`LayerIno`], or a number standing for one: see
    /// `Overlay::nondir_ino`).
    pub fn compose(&self, fs_index: u32, ino: u64) -> Ino {
        let total_bits = if self.ino32 { 32 } else { 64 };
        let ino_bits = total_bits - self.fs_bits;
        let composed = if self.fs_bits == 0 {
            fold(ino, total_bits)
        } else if ino >> ino_bits == 0 {
            (u64::from(fs_index) << ino_bits) | ino
        } else {
            // No room: hash into the range, keeping the filesystem bits.
            (u64::from(fs_index) << ino_bits) | (mix(ino) & ((1u64 << ino_bits) - 1))
        };
        Ino(match composed {
            0 | ROOT_INO => composed | (1u64 << (total_bits - 1)),
            n => n,
        })
    }
}

fn fold(ino: u64, bits: u32) -> u64 {
    if bits >= 64 || ino >> bits == 0 {
        ino
    } else {
        (ino ^ (ino >> bits)) & ((1u64 << bits) - 1)
    }
}

/// A fixed 64-bit mixer (splitmix64's finaliser): deterministic across runs, so folded numbers
/// stay stable across remounts.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_filesystem_keeps_real_numbers() {
        let s = InoScheme::new(1, Xino::Auto, false);
        assert_eq!(s.compose(0, 12345).get(), 12345);
        assert_ne!(s.compose(0, ROOT_INO), Ino::ROOT);
        assert_ne!(s.compose(0, 0).get(), 0);
    }

    #[test]
    fn several_filesystems_are_kept_apart() {
        let s = InoScheme::new(3, Xino::Auto, false);
        assert_ne!(s.compose(0, 77), s.compose(1, 77));
        assert_ne!(s.compose(1, 77), s.compose(2, 77));
        assert_eq!(s.compose(0, 77).get(), 77);
        let big = u64::MAX - 5;
        assert_ne!(s.compose(1, big), s.compose(2, big));
    }

    #[test]
    fn ino32_fits_in_32_bits() {
        let s = InoScheme::new(2, Xino::Auto, true);
        for ino in [5u64, 1 << 40, u64::MAX] {
            assert!(s.compose(1, ino).get() <= u64::from(u32::MAX));
        }
    }
}
