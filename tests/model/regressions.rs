//! Shrunk failures of `overlay_matches_model`, pinned, and hand-picked cases of the rules
//! the model states. Each is a case in the `Debug` form a failure prints.

use crate::ops::Flag::*;
use crate::ops::How::*;
use crate::ops::Op::*;
use crate::ops::P::At;
use crate::stack::Entry::*;
use crate::stack::Opaque::*;
use crate::stack::Stack;
use crate::{run, Case};

fn check(stack: Stack, ops: Vec<crate::ops::Op>) {
    for hot in [false, true] {
        let case = Case {
            stack: stack.clone(),
            ops: ops.clone(),
            hot,
        };
        if let Err(e) = run(&case) {
            panic!("{e}\n{case:?}");
        }
    }
}

/// Whiteouts and opaque markers of every kind across three lowers, then a copy-up, a
/// write, renames and removals over them.
#[test]
fn pinned_basic_stack() {
    check(
        Stack {
            upper: vec![("c", Whiteout)],
            lowers: vec![
                vec![
                    ("a", Dir(0o755, Marker)),
                    ("a/b", File("x", 0o644)),
                    ("b", Whiteout),
                    ("c/a", File("hello", 0o600)),
                ],
                vec![
                    ("a/c", File("hidden", 0o644)),
                    ("b", Dir(0o700, Xattr)),
                    ("b/a", SymlinkTo("a")),
                ],
                vec![("b/c", File("", 0o644)), ("a/a", Whiteout)],
            ],
        },
        vec![
            Write(At("a/b"), "hello", Append),
            Rename(At("a/b"), At("b"), Plain),
            Mkdir(At("c"), 0o755),
            Create(At("c/a"), "x", 0o644),
            Link(At("c/a"), At("a/c")),
            Unlink(At("c/a")),
            Rmdir(At("a")),
            Rename(At("a"), At("c/b"), Plain),
        ],
    );
}

/// A hard link made in another directory to a copied-up file has the file's `st_ino` (its
/// origin's), and the listing of that directory must say the same `d_ino`: the new
/// directory is marked impure, as the kernel's `ovl_create_or_link` marks it. (It was
/// not: readdir gave the upper inode's own number.)
#[test]
fn regression_link_into_other_dir_keeps_d_ino() {
    check(
        Stack {
            upper: vec![],
            lowers: vec![
                vec![("c/b/c", File("", 0o644))],
                vec![("b/a/a", File("", 0o644))],
            ],
        },
        vec![Link(At("c/b/c"), At("b/b"))],
    );
}

/// A directory renamed over an empty opaque upper directory that hides a lower one must
/// be made opaque itself: the marker went with the directory it replaced. It was not (the
/// replaced directory has no lower layers of its own, which is all the rename asked), so
/// the lower directory's entries showed through it again, and its `st_ino` became the
/// lower directory's. (Shrunk from a failure; `c/b` added to show the leak.)
#[test]
fn regression_dir_renamed_over_opaque_dir_stays_opaque() {
    check(
        Stack {
            upper: vec![("a/a", File("", 0o644)), ("c", Dir(0o755, Marker))],
            lowers: vec![vec![("c/a", File("", 0o644)), ("c/b", File("", 0o644))]],
        },
        vec![Rename(At("a"), At("c"), Plain)],
    );
}
