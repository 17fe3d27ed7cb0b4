//! How `st_ino` (and so the FUSE node id) is composed from a layer object's inode number.
//!
//! When every layer lives on one filesystem, the real inode number is used as it is: unique,
//! and stable across remounts. When layers span filesystems, the filesystem's index in the
//! stack goes into the high bits (like the kernel's `xino`), so numbers stay unique; an inode
//! number too large to leave room for them is folded through a hash into the high range.

use crate::config::Xino;

/// Node id 1 belongs to the mount's root; a real inode numbered 1 is moved aside.
pub const ROOT_INO: u64 = 1;

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

    /// The `st_ino` shown for inode `ino` of the filesystem with index `fs_index`.
    pub fn compose(&self, fs_index: u32, ino: u64) -> u64 {
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
        match composed {
            0 | ROOT_INO => composed | (1u64 << (total_bits - 1)),
            n => n,
        }
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
        assert_eq!(s.compose(0, 12345), 12345);
        assert_ne!(s.compose(0, ROOT_INO), ROOT_INO);
        assert_ne!(s.compose(0, 0), 0);
    }

    #[test]
    fn several_filesystems_are_kept_apart() {
        let s = InoScheme::new(3, Xino::Auto, false);
        assert_ne!(s.compose(0, 77), s.compose(1, 77));
        assert_ne!(s.compose(1, 77), s.compose(2, 77));
        assert_eq!(s.compose(0, 77), 77);
        let big = u64::MAX - 5;
        assert_ne!(s.compose(1, big), s.compose(2, big));
    }

    #[test]
    fn ino32_fits_in_32_bits() {
        let s = InoScheme::new(2, Xino::Auto, true);
        for ino in [5u64, 1 << 40, u64::MAX] {
            assert!(s.compose(1, ino) <= u64::from(u32::MAX));
        }
    }
}
