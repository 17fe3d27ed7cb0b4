//! `redirect_dir` (issue 18 item 1), the read side: directories the kernel renamed with
//! `redirect_dir=on` (an `overlay.redirect` on the upper copy, the lower copies left where
//! they were) are found where the kernel finds them, with each value of the option.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::*;

/// The kernel renames through a `redirect_dir=on` mount of `lowers` with `upper`.
fn kernel_session(
    f: &Fixture,
    lowers: &[&Path],
    upper: &Path,
    work: &str,
    ops: impl FnOnce(&Path),
) {
    let k = f.path("k-session");
    let w = f.path(work);
    let _m = KernelMount::new(
        &format!(
            "{},redirect_dir=on,index=off,metacopy=off",
            rw(lowers, upper, &w)
        ),
        &k,
    );
    ops(&k);
}

fn mv(root: &Path, from: &str, to: &str) {
    let out = run(Command::new("mv").arg(root.join(from)).arg(root.join(to)));
    assert!(
        out.status.success(),
        "mv {from} {to}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Layers made by two kernel sessions: `l` (plain), `u1` (the first session's upper:
/// absolute and relative redirects, a redirected directory moved again, one moved out of a
/// redirected directory, a new directory inside one, copy-ups), and `u2` (the second
/// session's upper over `u1:l`: renames of directories redirected by the first).
fn layers(f: &Fixture) -> (PathBuf, PathBuf, PathBuf) {
    let (l, u1, u2) = (f.path("l"), f.path("u1"), f.path("u2"));
    file(&l, "a/b/c/d/e/deep", "deep\n");
    file(&l, "a/b/c/f", "f\n");
    file(&l, "a/b/g", "g\n");
    file(&l, "a/q/f", "q\n");
    file(&l, "a/keep/k", "k\n");
    dir(&l, "x");
    file(&l, "t/s/v", "v\n");
    kernel_session(f, &[&l], &u1, "w1", |m| {
        mv(m, "a/b", "x/y"); // absolute
        mv(m, "a/q", "a/r"); // relative
        fs::create_dir(m.join("x/y/new")).unwrap();
        mv(m, "x/y/c", "x/y/new/c2"); // out of a redirected directory
        fs::write(m.join("x/y/new/c2/h"), "added\n").unwrap();
        fs::write(m.join("x/y/g"), "g changed\n").unwrap(); // copy-up
        mv(m, "x/y/new/c2/d", "top-d"); // several levels deep
        mv(m, "t/s", "t/s2");
        mv(m, "t/s2", "t/s3"); // a redirected directory renamed again
    });
    kernel_session(f, &[&u1, &l], &u2, "w2", |m| {
        mv(m, "x/y", "moved-y"); // redirected in u1, moved again in u2
        mv(m, "top-d/e", "a/keep/e2");
        mv(m, "a/r", "a/r2");
    });
    (l, u1, u2)
}

const PATHS: &[&str] = &[
    "x/y",
    "x/y/g",
    "moved-y",
    "moved-y/g",
    "moved-y/new/c2",
    "moved-y/new/c2/f",
    "moved-y/new/c2/h",
    "top-d",
    "top-d/e",
    "a/keep/e2",
    "a/keep/e2/deep",
    "a/r",
    "a/r2",
    "a/r2/f",
    "a/q",
    "a/b",
    "t/s3/v",
];

/// Every value but `nofollow`: the trees, the contents and the lookups equal the kernel's,
/// with the redirecting uppers as lowers and as the upper, one and two sessions deep.
#[test]
fn redirected_directories_are_followed_like_the_kernel() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let (l, u1, u2) = layers(&f);
    for mode in [
        "",
        ",redirect_dir=off",
        ",redirect_dir=follow",
        ",redirect_dir=on",
    ] {
        let what = |s: &str| format!("{s}{mode}");
        // Read-only, as lowers.
        let ro = format!("{}{mode}", lowerdir(&[&u2, &u1, &l]));
        let tree = same_as_kernel(&f, &ro, &ro, PATHS, &what("u2:u1:l"));
        let shown = paths_of(&tree);
        for want in [
            "moved-y/new/c2/f",
            "moved-y/g",
            "a/keep/e2/deep",
            "t/s3/v",
            "a/r2/f",
        ] {
            assert!(
                shown.contains(&want.to_string()),
                "{want} missing: {shown:?}"
            );
        }
        let ro1 = format!("{}{mode}", lowerdir(&[&u1, &l]));
        same_as_kernel(&f, &ro1, &ro1, PATHS, &what("u1:l"));
        // As the upper layer (each on its own copy: a writable mount may mark it).
        let (us, uk) = (f.dir.path().join("us"), f.dir.path().join("uk"));
        let _ = fs::remove_dir_all(&us);
        let _ = fs::remove_dir_all(&uk);
        copy_tree(&u2, &us);
        copy_tree(&u2, &uk);
        let (ws, wk) = (f.path("ws"), f.path("wk"));
        let ours = format!("{}{mode}", rw(&[&u1, &l], &us, &ws));
        let theirs = format!("{}{mode},index=off,metacopy=off", rw(&[&u1, &l], &uk, &wk));
        same_as_kernel(&f, &ours, &theirs, PATHS, &what("upper u2 over u1:l"));
    }
}

/// `redirect_dir=nofollow`: a redirected directory cannot be looked up (EPERM), as the
/// kernel refuses it; the rest of the tree is as the kernel shows it. Listings leave its
/// name out; the kernel's does too in a directory several layers merge (not here: `a` of
/// `u1` is one layer's, and the kernel lists the name it cannot look up; docs/SEMANTICS.md).
#[test]
fn nofollow_refuses_redirected_directories_like_the_kernel() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let (l, u1, _u2) = layers(&f);
    let opts = format!("{},redirect_dir=nofollow", lowerdir(&[&u1, &l]));
    let (m, k) = (f.path("m"), f.path("k"));
    let _s = Mount::new(&opts, &m);
    let _k = KernelMount::new(&opts, &k);
    assert_eq!(lookups(&m, PATHS), lookups(&k, PATHS));
    assert_eq!(lookups(&m, &["x/y"])[0].1, Err(libc::EPERM));
    assert_eq!(dir_names(&m.join("a")), ["keep"]);
    assert_eq!(dir_names(&k.join("a")), ["keep", "r"]);
    assert_eq!(
        fs::read_to_string(m.join("a/keep/k")).unwrap(),
        fs::read_to_string(k.join("a/keep/k")).unwrap()
    );
}

/// Redirects the kernel refuses (a relative one with a `/`, an empty component) fail the
/// lookup with EINVAL on both; one to a missing path or to a file merges nothing.
#[test]
fn bad_redirects_fail_like_the_kernel() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let (l, u) = (f.path("l"), f.path("u"));
    file(&l, "src/sub/g", "g");
    file(&l, "afile", "file");
    for (d, v) in [
        ("t1", "src/sub"),
        ("t2", "//src"),
        ("t3", "/nothere"),
        ("t4", "/afile"),
        ("t5", "/src/"),
        ("t6", "/src/sub"),
        ("t7", "sub"),
    ] {
        file(&u, &format!("{d}/own"), d);
        setx(&u, d, "trusted.overlay.redirect", v.as_bytes());
    }
    let opts = lowerdir(&[&u, &l]);
    let (m, k) = (f.path("m"), f.path("k"));
    let _s = Mount::new(&opts, &m);
    let _k = KernelMount::new(&opts, &k);
    let paths = [
        "t1", "t2", "t3", "t4", "t5", "t6", "t6/g", "t7", "t3/own", "t4/own",
    ];
    assert_eq!(lookups(&m, &paths), lookups(&k, &paths));
    assert_eq!(lookups(&m, &["t1"])[0].1, Err(libc::EINVAL));
    for d in ["t3", "t4", "t6", "t7"] {
        assert_eq!(dir_names(&m.join(d)), dir_names(&k.join(d)), "{d}");
    }
}

/// Writes in redirected directories over an upper the kernel redirected: new files, a lower
/// file and a lower directory deleted, a file copied up; the trees equal the kernel's doing
/// the same, and each reads the upper the other wrote.
#[test]
fn writes_in_redirected_directories_like_the_kernel() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let (l, u1, u2) = layers(&f);
    let (us, uk) = (f.dir.path().join("us"), f.dir.path().join("uk"));
    copy_tree(&u2, &us);
    copy_tree(&u2, &uk);
    let (ws, wk) = (f.path("ws"), f.path("wk"));
    let ls = [u1.as_path(), l.as_path()];
    let kernel = |u: &Path, w: &Path| {
        format!(
            "{},redirect_dir=follow,index=off,metacopy=off",
            rw(&ls, u, w)
        )
    };
    let change = |m: &Path| {
        fs::remove_file(m.join("moved-y/new/c2/f")).unwrap();
        fs::write(m.join("moved-y/new/c2/n"), "n\n").unwrap();
        fs::remove_dir_all(m.join("a/keep/e2")).unwrap();
        fs::write(m.join("a/r2/f"), "q changed\n").unwrap();
        fs::create_dir(m.join("t/s3/sub")).unwrap();
    };
    changed_as_kernel(
        &f,
        &rw(&ls, &us, &ws),
        &kernel(&uk, &wk),
        change,
        PATHS,
        "after writes",
    );
    let (ws2, wk2) = (f.path("ws2"), f.path("wk2"));
    same_as_kernel(
        &f,
        &rw(&ls, &uk, &ws2),
        &kernel(&us, &wk2),
        PATHS,
        "uppers swapped",
    );
}

/// The `overlay.redirect` xattrs of a tree, by path.
fn redirects(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if !e.file_type().unwrap().is_dir() {
                continue;
            }
            if let Some(v) = xattr(&p, "trusted.overlay.redirect") {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, String::from_utf8_lossy(&v).into_owned()));
            }
            stack.push(p);
        }
    }
    out.sort();
    out
}

/// `redirect_dir=on`: renames of lower and merged directories succeed by moving the upper
/// copy alone, with a redirect in the kernel's form (relative within the parent, else
/// absolute; kept when it stays right) and a whiteout at the old name. The trees, the
/// lookups and the redirects written equal the kernel's doing the same renames, and each
/// mounts the upper the other wrote.
#[test]
fn redirect_dir_on_renames_directories_like_the_kernel() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let l = f.path("l");
    file(&l, "a/b/c/d/deep", "deep\n");
    file(&l, "a/b/g", "g\n");
    file(&l, "a/q/f", "q\n");
    file(&l, "a/w/f", "w\n");
    dir(&l, "x");
    dir(&l, "other");
    file(&l, "x/z/lower-z", "x/z: a lower directory\n");
    file(&l, "x/e/lower-e", "a lower directory one is moved over\n");
    for i in 0..50 {
        file(&l, &format!("big/f{i}"), "data\n");
    }
    file(&l, "p1/m1/f", "m1\n");
    file(&l, "p2/m2/g", "m2\n");
    file(&l, "s/a1/f1", "a1\n");
    file(&l, "s/a2/f2", "a2\n");
    let (us, ws, uk, wk) = (f.path("us"), f.path("ws"), f.path("uk"), f.path("wk"));
    let ours = |u: &Path, w: &Path| format!("{},redirect_dir=on", rw(&[&l], u, w));
    let kernel =
        |u: &Path, w: &Path| format!("{},redirect_dir=on,index=off,metacopy=off", rw(&[&l], u, w));
    let change = |m: &Path| {
        mv(m, "a/b", "x/y"); // absolute
        mv(m, "a/q", "a/r"); // relative
        mv(m, "x/y", "x/y2"); // moved again in its parent: kept
        mv(m, "x/y2/c", "top-c"); // out of a redirected directory
        mv(m, "a/r", "other/r"); // a relative one moved elsewhere: absolute
        mv(m, "top-c/d", "x/z/d"); // into a merged directory
                                   // Over a directory a lower layer holds (emptied first): not merged with it.
        let out = run(Command::new("mv")
            .arg("-T")
            .arg(m.join("a/w"))
            .arg(m.join("x/e")));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::write(m.join("x/z/new"), "new\n").unwrap();
        fs::create_dir(m.join("other/r/sub")).unwrap();
        fs::remove_file(m.join("x/y2/g")).unwrap();
        mv(m, "big", "big2"); // many entries: one rename
                              // Exchanges, across directories and within one.
        for (a, b) in [("p1/m1", "p2/m2"), ("s/a1", "s/a2")] {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                m.join(a),
                rustix::fs::CWD,
                m.join(b),
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .unwrap_or_else(|e| panic!("exchange {a} {b}: {e}"));
        }
    };
    let paths = &[
        "a/b",
        "a/q",
        "a/r",
        "a/w",
        "x/y",
        "x/y2",
        "x/y2/g",
        "top-c",
        "top-c/d",
        "x/z/d/deep",
        "other/r/f",
        "x/z",
        "x/z/f",
        "x/z/lower-z",
        "x/e",
        "x/e/f",
        "x/e/lower-e",
        "p1/m1/g",
        "p2/m2/f",
        "s/a1/f2",
        "s/a2/f1",
        "big2/f7",
        "big",
    ];
    changed_as_kernel(
        &f,
        &ours(&us, &ws),
        &kernel(&uk, &wk),
        |r: &Path| {
            // The target of a move must be empty for the rename to replace it.
            fs::remove_file(r.join("x/e/lower-e")).unwrap();
            change(r);
        },
        paths,
        "after renames",
    );
    assert_eq!(redirects(&us), redirects(&uk), "the redirects written");
    let want: Vec<(String, String)> = [
        ("big2", "big"),
        ("other/r", "/a/q"),
        ("p1/m1", "/p2/m2"),
        ("p2/m2", "/p1/m1"),
        ("s/a1", "a2"),
        ("s/a2", "a1"),
        ("top-c", "/a/b/c"),
        ("x/e", "/a/w"),
        ("x/y2", "/a/b"),
        ("x/z/d", "/a/b/c/d"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(redirects(&us), want);
    // Each mounts the upper the other wrote.
    let (ws2, wk2) = (f.path("ws2"), f.path("wk2"));
    same_as_kernel(
        &f,
        &ours(&uk, &ws2),
        &kernel(&us, &wk2),
        paths,
        "uppers swapped",
    );
}
