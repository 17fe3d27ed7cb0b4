//! Sections 11-13 of the read-path oracle: inode identity (`st_ino`, `d_ino`, `st_nlink`), and
//! the whiteout and opaque forms the kernel does not read, compared with expected trees.

use super::*;
// ---------------------------------------------------------------------------------------------
// 11. Identity
// ---------------------------------------------------------------------------------------------

/// path -> (st_ino, is_dir, nlink) for every entry under `root`, checking that d_ino == st_ino
/// and that st_dev is the root's.
fn identities(root: &Path) -> BTreeMap<PathBuf, (u64, bool, u64)> {
    let root_dev = fs::symlink_metadata(root).expect("lstat root").dev();
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("dirent");
            let p = e.path();
            let md = fs::symlink_metadata(&p).expect("lstat");
            let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
            assert_eq!(
                e.ino(),
                md.ino(),
                "d_ino of {} differs from its st_ino",
                rel.display()
            );
            assert_eq!(
                md.dev(),
                root_dev,
                "st_dev of {} differs from the root's",
                rel.display()
            );
            if md.is_dir() {
                todo.push(p.clone());
            }
            out.insert(rel, (md.ino(), md.is_dir(), md.nlink()));
        }
    }
    out
}

#[test]
fn inode_numbers_are_consistent_and_stable() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 3);
    let (top, mid, bot) = (&l[0], &l[1], &l[2]);
    for (i, layer) in l.iter().enumerate() {
        file(layer, &format!("f{i}"), "x");
        file(layer, &format!("d/g{i}"), "x");
        file(layer, "d/shared", &format!("{i}"));
        file(layer, &format!("d/sub{i}/h"), "x");
    }
    file(bot, "hl", "linked");
    fs::hard_link(bot.join("hl"), bot.join("d/hl2")).expect("link");
    slink(mid, "sym", "f0");
    node(top, "fifo", FileType::Fifo, 0o644, 0);
    node(
        mid,
        "null",
        FileType::CharacterDevice,
        0o666,
        rustix::fs::makedev(1, 3),
    );
    whiteout(top, "f1");
    file(bot, "only-bottom/deep/er", "x");
    let opts = lowerdir(&l);
    let m = mountpoint(t.path(), "m");
    let first = {
        let ours = Mount::new(&opts, &m);
        let ids = identities(&ours.mountpoint);
        // The root's inode number must not collide with any entry's.
        let root_ino = fs::symlink_metadata(&ours.mountpoint).expect("lstat").ino();
        assert!(
            ids.values().all(|(ino, _, _)| *ino != root_ino),
            "an entry shares the root's inode number"
        );
        ids
    };
    // Distinct objects have distinct numbers; only the hard link pair shares one.
    let mut by_ino: BTreeMap<u64, Vec<&PathBuf>> = BTreeMap::new();
    for (p, (ino, _, _)) in &first {
        by_ino.entry(*ino).or_default().push(p);
    }
    for (ino, ps) in &by_ino {
        if ps.len() > 1 {
            let set: BTreeSet<String> = ps.iter().map(|p| p.display().to_string()).collect();
            let want: BTreeSet<String> = ["hl", "d/hl2"].iter().map(|s| s.to_string()).collect();
            assert_eq!(set, want, "inode {ino} shared by unrelated entries");
        }
    }
    assert_eq!(first[Path::new("hl")].0, first[Path::new("d/hl2")].0);
    let second = {
        let ours = Mount::new(&opts, &m);
        identities(&ours.mountpoint)
    };
    assert_eq!(first, second, "inode numbers changed across a remount");
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    fn new(path: &Path) -> TmpfsMount {
        fs::create_dir_all(path).expect("mkdir");
        let out = run(std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(path));
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TmpfsMount {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[test]
fn inode_numbers_unique_across_layer_filesystems() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    // Two fresh tmpfs layers number their inodes alike, so the real numbers collide.
    let top_fs = TmpfsMount::new(&t.path().join("l0"));
    let bot_fs = TmpfsMount::new(&t.path().join("l1"));
    let l = vec![top_fs.path.clone(), bot_fs.path.clone()];
    for layer in &l {
        for i in 0..20 {
            file(layer, &format!("d{i}/f{i}"), "x");
        }
    }
    for i in 0..20 {
        file(&l[0], &format!("top{i}"), "t");
        file(&l[1], &format!("bot{i}"), "b");
    }
    let real = |p: PathBuf| fs::symlink_metadata(p).expect("lstat").ino();
    let collisions = (0..20)
        .filter(|i| real(l[0].join(format!("top{i}"))) == real(l[1].join(format!("bot{i}"))))
        .count();
    eprintln!("{collisions} of 20 top/bottom pairs share a real inode number");

    let m = mountpoint(t.path(), "m");
    let ours = Mount::new(&lowerdir(&l), &m);
    let ids = identities(&ours.mountpoint);
    let mut seen: BTreeMap<u64, &PathBuf> = BTreeMap::new();
    for (p, (ino, _, _)) in &ids {
        if let Some(other) = seen.insert(*ino, p) {
            panic!(
                "{} and {} share inode number {ino} through the mount",
                other.display(),
                p.display()
            );
        }
    }
    drop(ours);
    let ours = Mount::new(&lowerdir(&l), &m);
    assert_eq!(
        identities(&ours.mountpoint),
        ids,
        "inode numbers changed across a remount"
    );
}

// ---------------------------------------------------------------------------------------------
// 12. `.wh.` whiteouts (OCI / fuse-overlayfs format)
// ---------------------------------------------------------------------------------------------

#[test]
fn oci_whiteouts_match_expected_tree() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 3);
    let (top, mid, bot) = (&l[0], &l[1], &l[2]);
    // `.wh.NAME` hiding a lower file and a lower dir.
    file(mid, "gone", "hidden");
    file(top, ".wh.gone", "");
    file(mid, "gonedir/a", "a");
    file(bot, "gonedir/b", "b");
    file(top, ".wh.gonedir", "");
    // Inside a merged dir.
    file(bot, "d/inner", "hidden");
    file(bot, "d/keep", "keep");
    file(mid, "d/mid", "mid");
    file(top, "d/.wh.inner", "");
    file(mid, "d/.wh.nothing-below", "");
    // `.wh..wh..opq` makes a directory opaque.
    file(top, "opq/.wh..wh..opq", "");
    file(top, "opq/new", "new");
    file(mid, "opq/old", "old");
    file(bot, "opq/sub/deep", "deep");
    // Opaque in the middle layer.
    file(top, "mo/t", "t");
    file(mid, "mo/.wh..wh..opq", "");
    file(mid, "mo/m", "m");
    file(bot, "mo/b", "b");
    // A layer holding both `.wh.X` and `X`: X shows, the lower X is hidden.
    file(top, ".wh.both", "");
    file(top, "both", "top");
    file(mid, "both", "mid");
    // A whiteout of a file in the middle, re-created on top.
    file(bot, "re", "bottom");
    file(mid, ".wh.re", "");
    file(top, "re", "top");
    // Whiteouts in the lowest layer and with nothing to hide are invisible too.
    file(bot, ".wh.lonely", "");
    file(bot, "d/.wh.lonely", "");
    // A dir of only whiteouts ends up empty.
    file(bot, "w/x", "x");
    file(mid, "w/.wh.x", "");

    let exp = t.path().join("expected");
    dir(&exp, "");
    file(&exp, "d/keep", "keep");
    file(&exp, "d/mid", "mid");
    file(&exp, "opq/new", "new");
    file(&exp, "mo/t", "t");
    file(&exp, "mo/m", "m");
    file(&exp, "both", "top");
    file(&exp, "re", "top");
    dir(&exp, "w");

    let snap = assert_matches_expected(t.path(), &l, &exp, ".wh. whiteouts");
    for p in snap.keys() {
        assert!(
            !p.iter().any(|c| c.as_bytes().starts_with(b".wh.")),
            "{} is visible",
            p.display()
        );
    }

    let m = mountpoint(t.path(), "m");
    let _ours = Mount::new(&lowerdir(&l), &m);
    for name in [
        ".wh.gone",
        ".wh.gonedir",
        "d/.wh.inner",
        "d/.wh.nothing-below",
        "opq/.wh..wh..opq",
        "mo/.wh..wh..opq",
        ".wh.both",
        ".wh.lonely",
        "w/.wh.x",
        ".wh.never-existed",
        "gone",
        "gonedir",
        "d/inner",
    ] {
        assert_errno(
            fs::symlink_metadata(m.join(name)),
            Errno::NOENT,
            &format!("lstat {name}"),
        );
    }
}

#[test]
fn oci_whiteout_beside_dir_hides_lower_dir() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 3);
    let (top, mid, bot) = (&l[0], &l[1], &l[2]);
    // A layer holding both `.wh.X` and a directory `X`: X shows with only its own entries,
    // the lower X (in every layer below) is hidden, nothing is merged.
    file(top, ".wh.bothdir", "");
    file(top, "bothdir/new", "new");
    file(mid, "bothdir/old", "old");
    file(bot, "bothdir/older", "older");
    // The same one level down, in a merged parent.
    file(top, "p/.wh.x", "");
    file(top, "p/x/new", "new");
    file(mid, "p/x/old", "old");
    file(mid, "p/keep", "keep");

    let exp = t.path().join("expected");
    dir(&exp, "");
    file(&exp, "bothdir/new", "new");
    file(&exp, "p/x/new", "new");
    file(&exp, "p/keep", "keep");
    assert_matches_expected(t.path(), &l, &exp, ".wh.X beside directory X");
}

// ---------------------------------------------------------------------------------------------
// 13. The other opaque forms
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum OpaqueForm {
    UserOverlay,
    FuseOverlayfs,
    WhOpq,
}

fn mark_opaque(root: &Path, rel: &str, form: OpaqueForm) {
    match form {
        OpaqueForm::UserOverlay => setx(root, rel, "user.overlay.opaque", b"y"),
        OpaqueForm::FuseOverlayfs => setx(root, rel, "user.fuseoverlayfs.opaque", b"y"),
        OpaqueForm::WhOpq => file(root, &format!("{rel}/.wh..wh..opq"), ""),
    }
}

fn opaque_form_case(form: OpaqueForm) {
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 3);
    let (top, mid, bot) = (&l[0], &l[1], &l[2]);
    // Opaque on top.
    file(top, "o/a", "a");
    mark_opaque(top, "o", form);
    file(mid, "o/b", "b");
    file(mid, "o/sub/x", "x");
    file(bot, "o/c", "c");
    // Opaque in the middle.
    file(top, "m/a", "a");
    file(mid, "m/b", "b");
    mark_opaque(mid, "m", form);
    file(bot, "m/c", "c");
    // Opaque at the bottom: no effect.
    file(mid, "low/y", "y");
    file(bot, "low/z", "z");
    mark_opaque(bot, "low", form);
    // Empty opaque dir.
    dir(top, "e");
    mark_opaque(top, "e", form);
    file(mid, "e/f", "f");
    // Nested.
    file(top, "p/q/a", "a");
    mark_opaque(top, "p/q", form);
    file(mid, "p/q/b", "b");
    file(mid, "p/r", "r");
    // Not opaque, for contrast.
    file(top, "n/a", "a");
    file(mid, "n/b", "b");
    match form {
        OpaqueForm::UserOverlay => setx(top, "n", "user.overlay.opaque", b"n"),
        OpaqueForm::FuseOverlayfs => setx(top, "n", "user.fuseoverlayfs.opaque", b"n"),
        OpaqueForm::WhOpq => {}
    }

    let exp = t.path().join("expected");
    dir(&exp, "");
    file(&exp, "o/a", "a");
    file(&exp, "m/a", "a");
    file(&exp, "m/b", "b");
    file(&exp, "low/y", "y");
    file(&exp, "low/z", "z");
    dir(&exp, "e");
    file(&exp, "p/q/a", "a");
    file(&exp, "p/r", "r");
    file(&exp, "n/a", "a");
    file(&exp, "n/b", "b");
    assert_matches_expected(t.path(), &l, &exp, &format!("opaque form {form:?}"));
}

#[test]
fn user_overlay_opaque_matches_expected_tree() {
    if !can_compare() {
        return;
    }
    opaque_form_case(OpaqueForm::UserOverlay);
}

#[test]
fn fuseoverlayfs_opaque_matches_expected_tree() {
    if !can_compare() {
        return;
    }
    opaque_form_case(OpaqueForm::FuseOverlayfs);
}

#[test]
fn wh_opq_marker_matches_expected_tree() {
    if !can_compare() {
        return;
    }
    opaque_form_case(OpaqueForm::WhOpq);
}
