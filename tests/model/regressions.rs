//! Shrunk failures of `overlay_matches_model`, pinned, and hand-picked cases of the rules
//! the model states. Each is a case in the `Debug` form a failure prints.

use crate::driver::Flavor;
use crate::ops::Flag::*;
use crate::ops::How::*;
use crate::ops::Op::*;
use crate::ops::P::At;
use crate::stack::Entry::*;
use crate::stack::Opaque::*;
use crate::stack::Stack;
use crate::{run, Case};

/// Runs the case cold and hot, with the kernel's markers and with fuse-overlayfs's.
fn check(stack: Stack, ops: Vec<crate::ops::Op>) {
    for hot in [false, true] {
        for fuse_markers in [false, true] {
            let case = Case {
                stack: stack.clone(),
                ops: ops.clone(),
                hot,
                flavor: Flavor {
                    fuse_markers,
                    xattr_perms: false,
                },
            };
            if let Err(e) = run(&case) {
                panic!("{e}\n{case:?}");
            }
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

/// With fuse-overlayfs's markers (`markers=fuse-overlayfs`, or where the upper layer
/// takes no opaque xattr), making a directory opaque that already is (a `.wh..wh..opq`
/// file inside: it was made over a whiteout) failed with `EEXIST`: a `RENAME_EXCHANGE`
/// that swaps it onto a name a lower layer holds. (Shrunk from a failure.)
#[test]
fn regression_exchange_of_opaque_dir_with_marker_file() {
    check(
        Stack {
            upper: vec![("c", Whiteout), ("a", Dir(0o755, Marker))],
            lowers: vec![vec![("a", File("", 0o644))]],
        },
        vec![
            Mkdir(At("c"), 0o755),
            Create(At("c/a"), "", 0o644),
            Rename(At("a"), At("c"), Exchange),
        ],
    );
}

/// The same through a plain rename: a directory made over a whiteout (opaque, with its
/// marker file) renamed onto another name a lower layer holds.
#[test]
fn regression_rename_of_opaque_dir_with_marker_file_onto_lower_name() {
    check(
        Stack {
            upper: vec![],
            lowers: vec![vec![("a", Dir(0o755, No)), ("b", File("x", 0o644))]],
        },
        vec![
            Rmdir(At("a")),
            Mkdir(At("a"), 0o755),
            Unlink(At("b")),
            Rename(At("a"), At("b"), Plain),
        ],
    );
}

/// Names of a lower hard link: one `st_ino` and the lower link count while they are
/// lower; a copy-up (a write, a chmod, a link, a rename) makes that name an object of its
/// own, and the others keep the lower file. Two of its names renamed one onto the other
/// are two nodes: the rename happens.
#[test]
fn pinned_lower_hard_links() {
    check(
        Stack {
            upper: vec![],
            lowers: vec![vec![
                ("a/f", File("data", 0o644)),
                ("a/g", HardLink("a/f")),
                ("b/h", HardLink("a/f")),
                ("b/s", SymlinkTo("a")),
                ("c", HardLink("b/s")),
            ]],
        },
        vec![
            Write(At("a/g"), "new", Trunc),
            Chmod(At("b/h"), 0o700),
            Link(At("a/f"), At("b/i")),
            Rename(At("c"), At("b/s"), Plain),
            Remount,
        ],
    );
}

/// A rename to or from a name of a lower hard link failed with `ESTALE`: rename() took the
/// `st_ino` its lookups showed for the node id, and such a name shows the lower file's
/// number, not its node's (it also forgot the wrong node). Found as soon as the model's
/// stacks held lower hard links.
#[test]
fn regression_rename_of_and_onto_names_of_a_lower_hard_link() {
    check(
        Stack {
            upper: vec![],
            lowers: vec![vec![
                ("f", File("data", 0o644)),
                ("c", HardLink("f")),
                ("d", HardLink("f")),
            ]],
        },
        vec![
            Create(At("n"), "x", 0o644),
            Rename(At("n"), At("f"), Plain),
            Rename(At("c"), At("g"), Plain),
            Rename(At("d"), At("g"), Exchange),
        ],
    );
}
