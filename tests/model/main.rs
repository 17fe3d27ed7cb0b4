#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The fast tier: model tests that need no root, no FUSE and no kernel overlayfs.
//!
//! proptest generates a layer stack (`stack.rs`: `.wh.` whiteouts, `.wh..wh..opq` and
//! `user.overlay.opaque` opaque directories, none of which needs root) and a sequence of
//! operations (`ops.rs`: creations, removals, renames, links, writes, truncates, chmod,
//! xattrs, remounts). The stack is written to temporary directories and opened as the
//! daemon opens it, without a mount; `stratafs::overlay::Overlay` is then driven in-process
//! (`driver.rs`) beside a pure model of the merge rules (`reference.rs`). After every
//! operation the two results (value or errno) must agree and so must the two whole trees:
//! paths, types, permission bits, data, symlink targets, link counts, xattrs (listed, and
//! read back), and identities (the objects the model tells apart have distinct `st_ino`s,
//! and an object keeps its `st_ino` across copy-ups, renames and remounts; not a symlink
//! copied up without root, see [`Ids::check`]). At the end the work directory must be
//! empty after `unmounted()`, and a fresh overlay over the same directories (a remount)
//! must show the same tree.
//!
//! Knobs (environment): `STRATAFS_MODEL_CASES=N` cases (default 256),
//! `STRATAFS_MODEL_TRACE=1` (each operation and its result), and proptest's own
//! (`PROPTEST_MAX_SHRINK_ITERS`...). A failure prints the shrunk case as `Debug`, which is
//! Rust: pin it in `regressions.rs`.

mod driver;
mod ops;
mod reference;
mod regressions;
mod stack;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

use driver::{Driver, Flavor};
use ops::Op;
use reference::{Model, Tree};
use stack::{materialize, normalize, Stack};

/// One generated case.
#[derive(Debug, Clone)]
pub struct Case {
    /// The layers.
    pub stack: Stack,
    /// What is done to the merged view.
    pub ops: Vec<Op>,
    /// The driver keeps every node reference (see `driver.rs`).
    pub hot: bool,
    /// The mount options.
    pub flavor: Flavor,
}

fn case() -> impl Strategy<Value = Case> {
    let flavor = (any::<bool>(), any::<bool>()).prop_map(|(fuse_markers, xattr_perms)| Flavor {
        fuse_markers,
        xattr_perms,
    });
    (stack::stack(), ops::ops(24), any::<bool>(), flavor).prop_map(|(stack, ops, hot, flavor)| {
        Case {
            stack,
            ops,
            hot,
            flavor,
        }
    })
}

/// Identities seen so far: model id -> `st_ino`, for the objects alive at the last check.
#[derive(Debug, Default)]
struct Ids(BTreeMap<u64, u64>);

impl Ids {
    /// Compares the trees, and the identities of `ours` (the overlay's `st_ino`s) with the
    /// model's: one number per object, one object per number, and no object's number
    /// changed since the last check.
    fn check(&mut self, model: &Tree, ours: &Tree, when: &str) -> Result<(), String> {
        let shown = |t: &Tree| -> BTreeMap<String, reference::Shown> {
            t.iter().map(|(p, (s, _))| (p.clone(), s.clone())).collect()
        };
        let (want, got) = (shown(model), shown(ours));
        if want != got {
            let mut diff = String::new();
            for p in want
                .keys()
                .chain(got.keys())
                .collect::<std::collections::BTreeSet<_>>()
            {
                let (w, g) = (want.get(p), got.get(p));
                if w != g {
                    diff.push_str(&format!("\n  {p}: model {w:?}, overlay {g:?}"));
                }
            }
            return Err(format!("{when}: the trees differ:{diff}"));
        }
        let mut m2o: BTreeMap<u64, (u64, &str)> = BTreeMap::new();
        let mut o2m: BTreeMap<u64, (u64, &str)> = BTreeMap::new();
        for (p, (_, id)) in model {
            let ino = ours[p].1;
            if let Some((other, q)) = m2o.insert(*id, (ino, p)) {
                if other != ino {
                    return Err(format!(
                        "{when}: '{q}' and '{p}' are one object, with st_ino {other} and {ino}"
                    ));
                }
            }
            if let Some((other, q)) = o2m.insert(ino, (*id, p)) {
                if other != *id {
                    return Err(format!(
                        "{when}: '{q}' and '{p}' are different objects, both st_ino {ino}"
                    ));
                }
            }
        }
        for (id, (ino, p)) in &m2o {
            // An unprivileged daemon cannot record a copied-up symlink's origin (user
            // xattrs are refused on symlinks): once its node is forgotten it shows its upper
            // inode number, as the copy-up code says ("best effort").
            let symlink = matches!(model[*p].0, reference::Shown::Symlink(..));
            if symlink && stratafs::sys::euid() != 0 {
                continue;
            }
            if let Some(was) = self.0.get(id) {
                if was != ino {
                    return Err(format!("{when}: '{p}' changed st_ino from {was} to {ino}"));
                }
            }
        }
        self.0 = m2o.into_iter().map(|(id, (ino, _))| (id, ino)).collect();
        Ok(())
    }
}

/// Runs `case`: the first disagreement between the model and the overlay, if any.
pub fn run(case: &Case) -> Result<(), String> {
    let t = tempfile::tempdir().unwrap();
    let (u, w) = (t.path().join("upper"), t.path().join("work"));
    let lowers: Vec<_> = (0..case.stack.lowers.len())
        .map(|i| t.path().join(format!("lower{i}")))
        .collect();
    for d in std::iter::once(&u).chain([&w]).chain(&lowers) {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    materialize(&normalize(&case.stack.upper), &u);
    for (spec, dir) in case.stack.lowers.iter().zip(&lowers) {
        materialize(&normalize(spec), dir);
    }
    let mut model = Model::new(&case.stack);
    let mut drv = Driver::open(&u, &w, &lowers, case.flavor, case.hot);
    let mut ids = Ids::default();
    ids.check(&model.tree(), &drv.tree()?, "before any operation")?;
    let mut picked = Vec::new();
    for (i, op) in case.ops.iter().enumerate() {
        let op = model.pick(op);
        picked.push(op);
        let failed = |e: String| format!("{e}\nthe operations as run: {picked:?}");
        let want = model.apply(&op);
        let got = drv.apply(&op);
        if trace() {
            eprintln!("{op:?} -> {got:?}");
        }
        if want != got {
            return Err(failed(format!(
                "operation {i}, {op:?}: the model says {want:?}, the overlay {got:?}"
            )));
        }
        if op == Op::Remount && case.hot {
            // Numbers given while a dead node held an object's own (a kept node) are not
            // kept across a remount; the others are (the cold driver checks that).
            ids = Ids::default();
        }
        let after = format!("after operation {i}, {op:?}");
        let ours = drv.tree().map_err(|e| failed(format!("{after}: {e}")))?;
        ids.check(&model.tree(), &ours, &after).map_err(failed)?;
    }
    drv.ov.unmounted();
    drop(drv);
    let left: Vec<_> = std::fs::read_dir(w.join("work"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    if !left.is_empty() {
        return Err(format!("work/ holds {left:?} after unmount"));
    }
    let mut again = Driver::open(&u, &w, &lowers, case.flavor, false);
    Ids::default().check(&model.tree(), &again.tree()?, "after a remount")?;
    Ok(())
}

/// `STRATAFS_MODEL_TRACE=1`: each operation and its result on stderr (to tune the
/// generator: most operations should reach the overlay).
fn trace() -> bool {
    std::env::var_os("STRATAFS_MODEL_TRACE").is_some_and(|v| v == "1")
}

fn cases() -> u32 {
    std::env::var("STRATAFS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(Config {
        cases: cases(),
        // Shrunk failures are pinned by hand as tests (regressions.rs), not in files
        // beside the sources.
        failure_persistence: None,
        ..Config::default()
    })]

    /// The overlay agrees with the model on every operation's result and on the whole
    /// tree after each one.
    #[test]
    fn overlay_matches_model(case in case()) {
        run(&case).map_err(TestCaseError::fail)?;
    }
}
