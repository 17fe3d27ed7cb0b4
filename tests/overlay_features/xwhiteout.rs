//! Xattr whiteouts (Linux 6.7+, issue 18 item 5): an empty regular file with
//! `overlay.whiteout` in a directory marked `overlay.opaque=x` is a whiteout, in every layer.

use std::fs;
use std::path::Path;

use crate::common::*;
use crate::*;

const W: &str = "trusted.overlay.whiteout";
const OPQ: &str = "trusted.overlay.opaque";

/// An xattr whiteout `rel` under `root`.
fn xwhiteout(root: &Path, rel: &str) {
    file(root, rel, "");
    setx(root, rel, W, b"");
}

/// Three lower layers, the top two with xattr whiteouts in directories marked `x`:
/// whiteouts over a file, a directory and a name of the layer right below, and files that
/// are not whiteouts (not empty, no xattr, an escaped xattr, outside... ).
fn lowers(f: &Fixture) -> [std::path::PathBuf; 3] {
    let (l0, l1, l2) = (f.path("l0"), f.path("l1"), f.path("l2"));
    for n in ["a", "b", "c"] {
        file(&l2, &format!("d/{n}"), n);
    }
    file(&l2, "d/sub/x", "x");
    file(&l2, "d/sub/deeper/y", "y");
    file(&l2, "g", "g");
    file(&l2, "h/k", "k from l2");
    file(&l2, "h/m", "m");
    // l1: d marked x, whiteouts over d/a (a file) and d/sub (a directory).
    dir(&l1, "d");
    setx(&l1, "d", OPQ, b"x");
    xwhiteout(&l1, "d/a");
    xwhiteout(&l1, "d/sub");
    // Not whiteouts: an empty file without the xattr, a file with data, an escaped
    // (nested overlay) whiteout.
    file(&l1, "d/new", "");
    file(&l1, "d/big", "data");
    setx(&l1, "d/big", W, b"");
    file(&l1, "d/esc", "");
    setx(&l1, "d/esc", "trusted.overlay.overlay.whiteout", b"");
    file(&l1, "h/k", "k from l1");
    // l0: d not marked (l1's whiteouts still count), h marked x with a whiteout over h/k.
    file(&l0, "d/c2", "c2");
    dir(&l0, "h");
    setx(&l0, "h", OPQ, b"x");
    xwhiteout(&l0, "h/k");
    [l0, l1, l2]
}

const PATHS: &[&str] = &[
    "d/a", "d/b", "d/sub", "d/sub/x", "d/new", "d/big", "d/esc", "d/c2", "h/k", "h/m",
];

/// Read-only and read-write (over an empty upper), the merged tree and the lookups equal the
/// kernel's.
#[test]
fn lower_xattr_whiteouts_read_as_the_kernel_reads_them() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let [l0, l1, l2] = lowers(&f);
    let ls = [l0.as_path(), l1.as_path(), l2.as_path()];
    let opts = lowerdir(&ls);
    let tree = same_as_kernel(&f, &opts, &opts, PATHS, "read-only");
    let shown = paths_of(&tree);
    for gone in ["d/a", "d/sub", "h/k"] {
        assert!(
            !shown.contains(&gone.to_string()),
            "{gone} shows: {shown:?}"
        );
    }
    for kept in ["d/b", "d/new", "d/big", "d/esc", "h/m"] {
        assert!(
            shown.contains(&kept.to_string()),
            "{kept} hidden: {shown:?}"
        );
    }
    let (u, w, uk, wk) = (f.path("u"), f.path("w"), f.path("uk"), f.path("wk"));
    same_as_kernel(
        &f,
        &rw(&ls, &u, &w),
        &format!(
            "{},redirect_dir=off,index=off,metacopy=off",
            rw(&ls, &uk, &wk)
        ),
        PATHS,
        "over an empty upper",
    );
}

/// Through a writable mount: a file and a directory made over names that xattr whiteouts
/// hide (the directory is opaque), entries of directories holding them removed; the trees
/// equal the kernel's doing the same, and each reads the upper the other wrote.
#[test]
fn writes_over_xattr_whiteouts_like_the_kernel() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let [l0, l1, l2] = lowers(&f);
    let ls = [l0.as_path(), l1.as_path(), l2.as_path()];
    let (u, w, uk, wk) = (f.path("u"), f.path("w"), f.path("uk"), f.path("wk"));
    let kopts =
        |u: &Path, w: &Path| format!("{},redirect_dir=off,index=off,metacopy=off", rw(&ls, u, w));
    let change = |m: &Path| {
        fs::write(m.join("d/a"), "new a").unwrap();
        fs::create_dir(m.join("d/sub")).unwrap();
        fs::write(m.join("d/sub/z"), "z").unwrap();
        fs::remove_file(m.join("d/b")).unwrap();
        fs::remove_file(m.join("h/m")).unwrap();
    };
    changed_as_kernel(
        &f,
        &rw(&ls, &u, &w),
        &kopts(&uk, &wk),
        change,
        PATHS,
        "after writes",
    );
    // Swapped uppers (fresh work directories).
    let (w2, wk2) = (f.path("w2"), f.path("wk2"));
    same_as_kernel(
        &f,
        &rw(&ls, &uk, &w2),
        &kopts(&u, &wk2),
        PATHS,
        "uppers swapped",
    );
}

/// Where the kernel lists xattr whiteouts that its lookup does not find (docs/SEMANTICS.md),
/// stratafs hides them from both: in a directory marked x in the upper layer (the kernel
/// looks for them in lower layers only), and in one a single layer holds (the kernel lists
/// such a directory as it is on disk). A file can be made over one. The kernel's `rmdir` of
/// a directory left with nothing but xattr whiteouts fails with ENOTEMPTY (its emptiness
/// check does not look for them); stratafs removes it, as its listing is empty.
#[test]
fn xattr_whiteouts_are_hidden_where_the_kernel_lists_them() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let (l, u, w) = (f.path("l"), f.path("u"), f.path("w"));
    file(&l, "d/a", "a");
    file(&l, "d/b", "b");
    dir(&u, "d");
    setx(&u, "d", OPQ, b"x");
    xwhiteout(&u, "d/a");
    dir(&l, "e");
    setx(&l, "e", OPQ, b"x");
    xwhiteout(&l, "e/none");
    file(&l, "h2/k", "k");
    file(&l, "h2/m", "m");
    let l0 = f.path("l0");
    dir(&l0, "h2");
    setx(&l0, "h2", OPQ, b"x");
    xwhiteout(&l0, "h2/k");
    let opts = rw(&[&l0, &l], &u, &w);
    {
        let k = f.path("k");
        // On a copy of the upper: stratafs mounts the original.
        let (uk, wk) = (f.dir.path().join("uk"), f.path("wk"));
        copy_tree(&u, &uk);
        let _km = KernelMount::new(&rw(&[&l0, &l], &uk, &wk), &k);
        assert_eq!(
            dir_names(&k.join("d")),
            ["a", "b"],
            "the kernel lists the whiteout"
        );
        assert_eq!(
            dir_names(&k.join("e")),
            ["none"],
            "the kernel lists the whiteout"
        );
        for p in ["d/a", "e/none", "h2/k"] {
            assert_eq!(lookups(&k, &[p])[0].1, Err(libc::ENOENT), "{p}");
        }
        fs::remove_file(k.join("h2/m")).unwrap();
        assert_eq!(dir_names(&k.join("h2")), Vec::<String>::new());
        assert_eq!(
            fs::remove_dir(k.join("h2")).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ENOTEMPTY)),
            "the kernel's rmdir"
        );
    }
    let m = f.path("m");
    {
        let _s = Mount::new(&opts, &m);
        assert_eq!(dir_names(&m.join("d")), ["b"]);
        assert_eq!(dir_names(&m.join("e")), Vec::<String>::new());
        for p in ["d/a", "e/none", "h2/k"] {
            assert_eq!(lookups(&m, &[p])[0].1, Err(libc::ENOENT), "{p}");
        }
        fs::remove_file(m.join("h2/m")).unwrap();
        fs::remove_dir(m.join("h2")).unwrap();
        fs::write(m.join("d/a"), "made").unwrap();
        assert_eq!(fs::read_to_string(m.join("d/a")).unwrap(), "made");
        assert_eq!(dir_names(&m.join("d")), ["a", "b"]);
    }
    let k = f.path("k");
    let wk = f.path("wk3");
    let _km = KernelMount::new(&rw(&[&l0, &l], &u, &wk), &k);
    assert_eq!(fs::read_to_string(k.join("d/a")).unwrap(), "made");
    assert!(!k.join("h2").exists());
}

/// Outside a directory marked x, an empty file with `overlay.whiteout` is an ordinary file
/// (listed and found). The kernel lists it but its lookup fails: docs/SEMANTICS.md.
#[test]
fn xattr_whiteout_outside_a_marked_directory_is_a_file() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let (l0, l1) = (f.path("l0"), f.path("l1"));
    file(&l1, "d/a", "a");
    xwhiteout(&l0, "d/a");
    let opts = lowerdir(&[&l0, &l1]);
    {
        let k = f.path("k");
        let _km = KernelMount::new(&opts, &k);
        assert_eq!(dir_names(&k.join("d")), ["a"]);
        assert_eq!(lookups(&k, &["d/a"])[0].1, Err(libc::ENOENT));
    }
    let m = f.path("m");
    let _s = Mount::new(&opts, &m);
    assert_eq!(dir_names(&m.join("d")), ["a"]);
    assert_eq!(lookups(&m, &["d/a"])[0].1, Ok((libc::S_IFREG, 0)));
}
