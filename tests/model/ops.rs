//! Operation sequences: what the model and the overlay are both asked to do.

use proptest::prelude::*;

use crate::stack::{any_path, path_up_to, CHMOD_MODES, DATA, DIR_MODES, FILE_MODES, TARGETS};

/// A path an operation names: given, or picked when the operation runs from what the
/// model shows then (so that most operations reach the overlay instead of failing their
/// lookup). A failure prints the operations with their picks made ([`P::At`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum P {
    /// This path.
    At(&'static str),
    /// The n-th (modulo) path of [`PATHS`] that exists.
    Existing(usize),
    /// The n-th (modulo) path of [`PATHS`] that does not exist but whose directory does.
    Missing(usize),
}

/// A rename's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// A plain `rename(2)`.
    Plain,
    /// `RENAME_NOREPLACE`.
    NoReplace,
    /// `RENAME_EXCHANGE`.
    Exchange,
}

/// How a write lands in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// `O_TRUNC`, then the data.
    Trunc,
    /// At the end.
    Append,
    /// Over the start, keeping what lies beyond.
    AtZero,
}

/// One operation on paths of the merged view. Paths resolve one name at a time, never
/// through a symlink (as with `RESOLVE_NO_SYMLINKS`: `ELOOP`), and a symlink is never
/// followed where the call would follow it (`write`, `truncate`, `chmod`, xattrs: `ELOOP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `open(O_CREAT|O_EXCL)` with the mode, then the data written.
    Create(P, &'static str, u32),
    /// `mkdir`.
    Mkdir(P, u32),
    /// `symlink(target, path)`.
    Symlink(P, &'static str),
    /// `unlink`.
    Unlink(P),
    /// `rmdir`.
    Rmdir(P),
    /// `renameat2(from, to, flag)`.
    Rename(P, P, Flag),
    /// `link(from, to)` (a symlink is linked, not followed).
    Link(P, P),
    /// `open` for writing and one write.
    Write(P, &'static str, How),
    /// `truncate` to a size.
    Truncate(P, u64),
    /// `chmod`.
    Chmod(P, u32),
    /// `setxattr` (flags 0).
    SetXattr(P, &'static str, &'static str),
    /// `removexattr`.
    RmXattr(P, &'static str),
    /// Unmount and mount again: a fresh overlay over the same directories (what the layers
    /// hold on disk is all that carries over).
    Remount,
}

/// A path for an operation: one that exists, one that could be made, one of [`PATHS`]
/// whatever it holds, or now and then a name the whiteout format reserves.
fn path() -> impl Strategy<Value = P> {
    prop_oneof![
        5 => (0..64usize).prop_map(P::Existing),
        3 => (0..64usize).prop_map(P::Missing),
        3 => any_path().prop_map(P::At),
        1 => prop_oneof![Just(".wh.a"), Just("a/.wh.b"), Just(".wh..wh..opq")].prop_map(P::At),
    ]
}

/// A path for an operation that makes one.
fn fresh() -> impl Strategy<Value = P> {
    prop_oneof![
        3 => (0..64usize).prop_map(P::Missing),
        1 => path(),
    ]
}

fn shallow() -> impl Strategy<Value = P> {
    prop_oneof![
        2 => (0..64usize).prop_map(P::Missing),
        1 => path_up_to(2).prop_map(P::At),
    ]
}

fn data() -> impl Strategy<Value = &'static str> {
    (0..DATA.len()).prop_map(|i| DATA[i])
}

fn file_mode() -> impl Strategy<Value = u32> {
    (0..FILE_MODES.len()).prop_map(|i| FILE_MODES[i])
}

/// An xattr name: user ones, and one of the overlay's own namespace (the mount's own
/// where the daemon is not root, stored escaped: setting it must not make a directory
/// opaque).
fn xattr_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("user.a"), Just("user.b"), Just("user.overlay.opaque")]
}

/// One operation.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (fresh(), data(), file_mode()).prop_map(|(p, d, m)| Op::Create(p, d, m)),
        2 => (shallow(), 0..DIR_MODES.len()).prop_map(|(p, m)| Op::Mkdir(p, DIR_MODES[m])),
        1 => (fresh(), 0..TARGETS.len()).prop_map(|(p, t)| Op::Symlink(p, TARGETS[t])),
        3 => path().prop_map(Op::Unlink),
        2 => path().prop_map(Op::Rmdir),
        4 => (path(), prop_oneof![path(), fresh()], prop_oneof![
                6 => Just(Flag::Plain),
                1 => Just(Flag::NoReplace),
                2 => Just(Flag::Exchange),
            ])
            .prop_map(|(a, b, f)| Op::Rename(a, b, f)),
        2 => (path(), fresh()).prop_map(|(a, b)| Op::Link(a, b)),
        3 => (path(), data(), prop_oneof![
                Just(How::Trunc),
                Just(How::Append),
                Just(How::AtZero),
            ])
            .prop_map(|(p, d, h)| Op::Write(p, d, h)),
        1 => (path(), 0u64..20).prop_map(|(p, n)| Op::Truncate(p, n)),
        2 => (path(), 0..CHMOD_MODES.len()).prop_map(|(p, m)| Op::Chmod(p, CHMOD_MODES[m])),
        1 => Just(Op::Remount),
        2 => (path(), xattr_name(), data()).prop_map(|(p, n, v)| Op::SetXattr(p, n, v)),
        1 => (path(), xattr_name()).prop_map(|(p, n)| Op::RmXattr(p, n)),
    ]
}

/// A sequence of operations.
pub fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..max)
}

impl P {
    /// The path, once picked (see [`Op::picked`]).
    pub fn at(self) -> &'static str {
        match self {
            P::At(p) => p,
            _ => unreachable!("paths are picked before an operation runs"),
        }
    }
}

impl Op {
    /// `self` with each path picked by `pick`.
    pub fn picked(&self, mut pick: impl FnMut(P) -> &'static str) -> Op {
        let mut at = |p: P| P::At(pick(p));
        match *self {
            Op::Create(p, d, m) => Op::Create(at(p), d, m),
            Op::Mkdir(p, m) => Op::Mkdir(at(p), m),
            Op::Symlink(p, t) => Op::Symlink(at(p), t),
            Op::Unlink(p) => Op::Unlink(at(p)),
            Op::Rmdir(p) => Op::Rmdir(at(p)),
            Op::Rename(a, b, f) => {
                let a = at(a);
                Op::Rename(a, at(b), f)
            }
            Op::Link(a, b) => {
                let a = at(a);
                Op::Link(a, at(b))
            }
            Op::Write(p, d, h) => Op::Write(at(p), d, h),
            Op::Truncate(p, n) => Op::Truncate(at(p), n),
            Op::Chmod(p, m) => Op::Chmod(at(p), m),
            Op::SetXattr(p, n, v) => Op::SetXattr(at(p), n, v),
            Op::RmXattr(p, n) => Op::RmXattr(at(p), n),
            Op::Remount => Op::Remount,
        }
    }
}
