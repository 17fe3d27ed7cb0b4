//! `-o userxattr` (issue 18 item 7): the overlay's own xattrs are the `user.overlay.*` ones
//! even as root, so an upper is shared with the kernel's `userxattr` mounts both ways.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::common::*;
use crate::*;

/// A lower layer with a file to copy up, files and a directory to delete, and a directory
/// to replace by a new one; and a second lower layer whose directory marked x (`user.`
/// names) holds an xattr whiteout.
fn lowers(f: &Fixture) -> [std::path::PathBuf; 2] {
    let (l0, l1) = (f.path("l0"), f.path("l1"));
    file(&l1, "d/f", "lower\n");
    file(&l1, "d/gone", "gone\n");
    file(&l1, "d/sub/old", "old\n");
    file(&l1, "e/hidden", "hidden\n");
    file(&l1, "e/kept", "kept\n");
    dir(&l0, "e");
    setx(&l0, "e", "user.overlay.opaque", b"x");
    file(&l0, "e/hidden", "");
    setx(&l0, "e/hidden", "user.overlay.whiteout", b"");
    [l0, l1]
}

fn change(m: &Path) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.join("d/f"))
        .unwrap();
    f.write_all(b"more\n").unwrap();
    drop(f);
    fs::remove_file(m.join("d/gone")).unwrap();
    fs::remove_dir_all(m.join("d/sub")).unwrap();
    fs::create_dir(m.join("d/sub")).unwrap();
    fs::write(m.join("d/sub/new"), "new\n").unwrap();
    fs::remove_file(m.join("e/kept")).unwrap();
    fs::write(m.join("e/hidden"), "made\n").unwrap();
}

const PATHS: &[&str] = &[
    "d/f",
    "d/gone",
    "d/sub",
    "d/sub/old",
    "d/sub/new",
    "e/hidden",
    "e/kept",
];

/// The overlay xattrs in a tree, by path (both namespaces).
fn overlay_xattrs(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let mut buf = vec![0u8; 65536];
            if let Ok(n) = rustix::fs::llistxattr(&p, &mut buf[..]) {
                for x in buf[..n].split(|b| *b == 0).filter(|x| !x.is_empty()) {
                    let x = String::from_utf8_lossy(x);
                    if x.starts_with("trusted.overlay.") || x.starts_with("user.overlay.") {
                        let rel = p.strip_prefix(root).unwrap().display();
                        out.push(format!("{rel}: {x}"));
                    }
                }
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// As root, stratafs with `userxattr` writes an upper (an opaque directory, whiteouts, a
/// copy-up) with `user.overlay.*` names only, reads the `user.` xattr whiteouts of its
/// lowers, and the kernel's `userxattr` mount of that upper shows the same; and the other
/// way round.
#[test]
fn uppers_are_shared_with_the_kernels_userxattr_mounts() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let [l0, l1] = lowers(&f);
    let ls = [l0.as_path(), l1.as_path()];
    let (u, w, uk, wk) = (f.path("u"), f.path("w"), f.path("uk"), f.path("wk"));
    let ours = |u: &Path, w: &Path| format!("{},userxattr", rw(&ls, u, w));
    let kernel = |u: &Path, w: &Path| format!("{},userxattr,index=off,metacopy=off", rw(&ls, u, w));
    {
        let m = f.path("m");
        let k = f.path("k");
        let s = Mount::new(&ours(&u, &w), &m);
        let km = KernelMount::new(&kernel(&uk, &wk), &k);
        assert_same_tree(
            &snapshot(&s.mountpoint),
            &snapshot(&km.mountpoint),
            "before",
        );
        change(&m);
        change(&k);
        assert_same_tree(&snapshot(&s.mountpoint), &snapshot(&km.mountpoint), "after");
        assert_eq!(lookups(&m, PATHS), lookups(&k, PATHS), "lookups");
    }
    let written = overlay_xattrs(&u);
    assert!(
        written.contains(&"d/sub: user.overlay.opaque".to_string()),
        "{written:?}"
    );
    assert!(
        written.iter().all(|x| !x.contains("trusted.overlay.")),
        "stratafs wrote trusted.overlay names: {written:?}"
    );
    // Swapped: each mounts the upper the other wrote.
    let (w2, wk2) = (f.path("w2"), f.path("wk2"));
    same_as_kernel(
        &f,
        &ours(&uk, &w2),
        &kernel(&u, &wk2),
        PATHS,
        "uppers swapped",
    );
}

/// Without `userxattr`, as root, the `user.overlay.*` names are not the mount's: an empty
/// file with `user.overlay.whiteout` in a directory marked x by `user.overlay.opaque` is a
/// file, as for the kernel.
#[test]
fn root_mounts_read_trusted_names_only_for_xattr_whiteouts() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let [l0, l1] = lowers(&f);
    let opts = lowerdir(&[&l0, &l1]);
    let with = format!("{opts},userxattr");
    for (o, want) in [(&opts, vec!["hidden", "kept"]), (&with, vec!["kept"])] {
        let (m, k) = (f.path("m"), f.path("k"));
        let _s = Mount::new(o, &m);
        let _k = KernelMount::new(o, &k);
        assert_eq!(dir_names(&m.join("e")), want, "stratafs -o {o}");
        assert_eq!(dir_names(&k.join("e")), want, "the kernel -o {o}");
        assert_eq!(
            lookups(&m, &["e/hidden"]),
            lookups(&k, &["e/hidden"]),
            "-o {o}"
        );
    }
}
