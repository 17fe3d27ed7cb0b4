//! `metacopy` (issue 18 item 2): metacopy files the kernel made (`overlay.metacopy` on a
//! sparse upper file whose data stays below, with `overlay.redirect` where the data is
//! elsewhere) are read as the kernel reads them, their data is copied up at the first open
//! for writing, and `metacopy=off` refuses them as the kernel does.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::*;

const MC: &str = "trusted.overlay.metacopy";

/// True when `p` (in a layer) has xattr `name`.
fn has_xattr(p: &Path, name: &str) -> bool {
    let mut buf = [0u8; 256];
    rustix::fs::lgetxattr(p, name, &mut buf).is_ok()
}

/// The lower layer: a big file, small files, a tree.
fn lower(f: &Fixture) -> PathBuf {
    let l = f.path("l");
    fs::write(l.join("big"), vec![7u8; 1 << 20]).unwrap();
    file(&l, "a/f", "f data\n");
    file(&l, "a/g", "g data\n");
    file(&l, "a/h", "h data\n");
    file(&l, "r", "renamed data\n");
    file(&l, "t/x/1", "one\n");
    file(&l, "t/x/2", "two\n");
    file(&l, "t/3", "three\n");
    l
}

/// An upper the kernel made with `metacopy=on`: chown, chmod, utimes, setxattr of lower
/// files, a rename (an absolute redirect) and a hard link of one.
fn kernel_upper(f: &Fixture, l: &Path) -> PathBuf {
    kernel_metacopy_upper(
        f,
        l,
        "ku",
        "chown 123:45 big && chmod 0600 a/f && touch -h -d 2001-02-03 a/g \
         && setfattr -n user.x -v y a/h && mv r a/r2 && ln a/f a/f-link",
    )
}

const PATHS: &[&str] = &["big", "a/f", "a/g", "a/h", "a/r2", "a/f-link", "r"];

/// A kernel-made metacopy upper: the files there are sparse with the metacopy xattr, and
/// stratafs shows the tree the kernel shows (owners, modes, contents from the data below),
/// with `st_blocks` of the data, as the upper layer and as a lower one.
#[test]
fn kernel_metacopy_files_are_read_like_the_kernel() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let l = lower(&f);
    let u = kernel_upper(&f, &l);
    assert!(has_xattr(&u.join("big"), MC), "the kernel made no metacopy");
    // No data: at most an xattr block (ext4 keeps the origin and metacopy xattrs there).
    assert!(blocks(&u.join("big")) <= 8, "{}", blocks(&u.join("big")));
    // As the upper layer (each side its own copy).
    let (us, uk) = (f.dir.path().join("us"), f.dir.path().join("uk"));
    copy_tree(&u, &us);
    copy_tree(&u, &uk);
    let (ws, wk) = (f.path("ws"), f.path("wk"));
    let opts = ",metacopy=on,redirect_dir=on";
    let ours = format!("{}{opts}", rw(&[&l], &us, &ws));
    let theirs = format!("{}{opts},index=off", rw(&[&l], &uk, &wk));
    let tree = same_as_kernel(&f, &ours, &theirs, PATHS, "kernel upper");
    let big = tree.get(Path::new("big")).unwrap();
    assert_eq!((big.uid, big.gid, big.size), (123, 45, Some(1 << 20)));
    {
        let m = f.path("m");
        let k = f.path("k");
        let _s = Mount::new(&ours, &m);
        let _km = KernelMount::new(&theirs, &k);
        for p in PATHS.iter().filter(|p| **p != "r") {
            assert_eq!(blocks(&m.join(p)), blocks(&k.join(p)), "{p}: st_blocks");
        }
        assert!(
            blocks(&m.join("big")) >= 2048,
            "big shows the data's blocks"
        );
    }
    // As a lower layer.
    let ro = format!("{}{opts}", lowerdir(&[&u, &l]));
    same_as_kernel(&f, &ro, &ro, PATHS, "kernel upper as a lower");
}

/// Without metacopy=on the kernel refuses to follow a metacopy file (EPERM), and so does
/// stratafs; the other files are unaffected.
#[test]
fn metacopy_off_refuses_metacopy_files_like_the_kernel() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let l = lower(&f);
    let u = kernel_upper(&f, &l);
    for opts in ["", ",metacopy=off", ",metacopy=off,redirect_dir=on"] {
        let ro = format!("{}{opts}", lowerdir(&[&u, &l]));
        let (m, k) = (f.path("m"), f.path("k"));
        let _s = Mount::new(&ro, &m);
        let _km = KernelMount::new(&ro, &k);
        let paths = ["big", "a/f", "a/r2", "t/3", "a"];
        let ours = lookups(&m, &paths);
        assert_eq!(ours, lookups(&k, &paths), "{opts}");
        assert_eq!(ours[0].1, Err(libc::EPERM), "{opts}");
    }
}

/// A metacopy file whose data is nowhere below fails its lookup with EIO, as the kernel's.
/// The xattr's value takes both of the kernel's forms: empty, or the versioned struct (a
/// header and an fs-verity digest, which is not checked without `verity=on`); one shorter
/// than the header is EIO.
#[test]
fn metacopy_xattr_forms_and_missing_data_like_the_kernel() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let (l, u) = (f.path("l"), f.path("u"));
    file(&l, "present", "x\n");
    let mut digest = vec![0u8, 36, 0, 1];
    digest.extend([0xab; 32]);
    let forms: [(&str, Vec<u8>); 5] = [
        ("empty", vec![]),
        ("header", vec![0, 4, 0, 0]),
        ("digest", digest),
        ("short", b"y".to_vec()),
        ("orphan", vec![]),
    ];
    for (name, v) in &forms {
        if *name != "orphan" {
            file(&l, name, &format!("data of {name}\n"));
        }
        fs::File::create(u.join(name))
            .unwrap()
            .set_len(100)
            .unwrap();
        setx(&u, name, MC, v);
    }
    let ro = format!("{},metacopy=on", lowerdir(&[&u, &l]));
    let (m, k) = (f.path("m"), f.path("k"));
    let _s = Mount::new(&ro, &m);
    let _km = KernelMount::new(&ro, &k);
    let paths = ["empty", "header", "digest", "short", "orphan", "present"];
    let ours = lookups(&m, &paths);
    assert_eq!(ours, lookups(&k, &paths));
    assert_eq!(ours[3].1, Err(libc::EIO));
    assert_eq!(ours[4].1, Err(libc::EIO));
    for p in ["empty", "header", "digest"] {
        assert_eq!(
            fs::read(m.join(p)).unwrap(),
            fs::read(k.join(p)).unwrap(),
            "{p}"
        );
        assert_eq!(
            fs::read(m.join(p)).unwrap(),
            format!("data of {p}\n").as_bytes()
        );
    }
}

/// The first open for writing of a kernel-made metacopy file copies its data up (the
/// metacopy xattr goes); what was written then reads back through the
/// kernel from the same upper.
#[test]
fn open_for_write_copies_the_data_of_a_kernel_metacopy_file() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let l = lower(&f);
    let u = kernel_upper(&f, &l);
    let w = f.path("w");
    let opts = format!("{},metacopy=on,redirect_dir=on", rw(&[&l], &u, &w));
    let before = fs::symlink_metadata(u.join("a/g")).unwrap();
    {
        let m = f.path("m");
        let _s = Mount::new(&opts, &m);
        assert_eq!(fs::read(m.join("a/g")).unwrap(), b"g data\n");
        // An open for writing that writes nothing still brings the data.
        drop(
            fs::OpenOptions::new()
                .write(true)
                .open(m.join("a/g"))
                .unwrap(),
        );
        let mut big = fs::OpenOptions::new()
            .append(true)
            .open(m.join("big"))
            .unwrap();
        std::io::Write::write_all(&mut big, b"tail").unwrap();
        drop(big);
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("a/h"))
            .unwrap()
            .set_len(3)
            .unwrap();
        assert_eq!(fs::read(m.join("a/h")).unwrap(), b"h d");
    }
    for p in ["a/g", "big", "a/h"] {
        assert!(!has_xattr(&u.join(p), MC), "{p} keeps its metacopy xattr");
    }
    let after = fs::symlink_metadata(u.join("a/g")).unwrap();
    // The copy is a write: the mtime is its time, as the kernel's data copy-up leaves it.
    assert!(after.mtime() > before.mtime());
    assert_eq!(fs::read(u.join("a/g")).unwrap(), b"g data\n");
    let k = f.path("k");
    let kw = f.path("kw2");
    let _km = KernelMount::new(
        &format!(
            "{},metacopy=on,redirect_dir=on,index=off",
            rw(&[&l], &u, &kw)
        ),
        &k,
    );
    let big = fs::read(k.join("big")).unwrap();
    assert_eq!(big.len(), (1 << 20) + 4);
    assert!(big.ends_with(b"tail"));
    assert_eq!(fs::read(k.join("a/h")).unwrap(), b"h d");
    assert_eq!(fs::read(k.join("a/r2")).unwrap(), b"renamed data\n");
}

/// What an upper layer holds, entry by entry: the type, the size, whether a regular file
/// has data of its own (`SEEK_DATA` finds some), and its `overlay.metacopy` and
/// `overlay.redirect` xattrs.
fn upper_entries(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let md = fs::symlink_metadata(&p).unwrap();
            let x = |n: &str| xattr(&p, n).map(|v| String::from_utf8_lossy(&v).into_owned());
            if md.is_dir() {
                stack.push(p.clone());
                out.push(format!(
                    "{rel}: dir redirect={:?}",
                    x("trusted.overlay.redirect")
                ));
            } else if md.is_file() {
                let f = fs::File::open(&p).unwrap();
                let data = rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(0)).is_ok();
                out.push(format!(
                    "{rel}: file size={} data={data} nlink={} metacopy={:?} redirect={:?}",
                    md.size(),
                    md.nlink(),
                    x(MC),
                    x("trusted.overlay.redirect")
                ));
            } else {
                out.push(format!(
                    "{rel}: {:o} rdev={}",
                    md.mode() & libc::S_IFMT,
                    md.rdev()
                ));
            }
        }
    }
    out.sort();
    out
}

/// The metadata changes of `kernel_upper` and more: renames within a directory (a relative
/// redirect, kept by the next), out of one (absolute), of a file chmod'ed first, a hard
/// link of a renamed one, an empty file, and an exchange.
fn meta_changes(m: &Path) {
    sh(
        m,
        "chown 123:45 big && chmod 0600 a/f && touch -h -d 2001-02-03 a/g \
         && setfattr -n user.x -v y a/h && mv r a/r2 && ln a/f a/f-link \
         && mv t/3 t/3b && mv t/3b t/3c && chmod 0640 t/x/1 && mv t/x/1 one \
         && mv t/x/2 t/2 && ln t/2 t/2-link && chmod 0600 empty && touch -m -d 2002-01-01 sym",
    );
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        m.join("a/g"),
        rustix::fs::CWD,
        m.join("a/h"),
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .unwrap();
}

/// Then data changes: a write, a truncate, an open with `O_TRUNC`, an append to a renamed
/// one and to one name of a hard-linked one (the other name, read before, shows it).
fn data_changes(m: &Path) {
    sh(
        m,
        "printf X | dd of=a/f conv=notrunc status=none && truncate -s 3 big \
         && : > a/h && echo more >> a/r2 && cat t/2 && echo linked >> t/2-link \
         && cat t/2 && chmod 0644 a/g && cat a/g",
    );
}

const MORE_PATHS: &[&str] = &[
    "big", "a/f", "a/g", "a/h", "a/r2", "a/f-link", "r", "t/3", "t/3c", "one", "t/x/1", "t/2",
    "t/2-link", "empty", "sym",
];

/// With `metacopy=on`, stratafs copies up the metadata of lower files as the kernel does:
/// the same upper entries (sparse files of the data's size with an empty metacopy xattr,
/// the same redirects), the same tree with the same `st_blocks` through both mounts, the
/// data copied at the first write or truncate; and each mounts the upper the other wrote.
#[test]
fn metacopy_on_copies_up_metadata_like_the_kernel() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let l = lower(&f);
    file(&l, "empty", "");
    std::os::unix::fs::symlink("a/f", l.join("sym")).unwrap();
    let (us, ws, uk, wk) = (f.path("us"), f.path("ws"), f.path("uk"), f.path("wk"));
    let ours = |u: &Path, w: &Path| format!("{},metacopy=on,redirect_dir=on", rw(&[&l], u, w));
    let kernel =
        |u: &Path, w: &Path| format!("{},metacopy=on,redirect_dir=on,index=off", rw(&[&l], u, w));
    let compare = |m: &Path, k: &Path, what: &str| {
        assert_same_tree(&snapshot(m), &snapshot(k), what);
        assert_eq!(
            lookups(m, MORE_PATHS),
            lookups(k, MORE_PATHS),
            "{what}: lookups"
        );
        for p in MORE_PATHS {
            let (a, b) = (
                fs::symlink_metadata(m.join(p)),
                fs::symlink_metadata(k.join(p)),
            );
            if let (Ok(a), Ok(b)) = (a, b) {
                assert_eq!(a.blocks(), b.blocks(), "{what}: {p}: st_blocks");
            }
        }
    };
    {
        let (m, k) = (f.path("m"), f.path("k"));
        let _s = Mount::new(&ours(&us, &ws), &m);
        let _km = KernelMount::new(&kernel(&uk, &wk), &k);
        meta_changes(&m);
        meta_changes(&k);
        compare(&m, &k, "after metadata changes");
        assert_eq!(fs::read(m.join("a/r2")).unwrap(), b"renamed data\n");
        assert_eq!(fs::read(m.join("one")).unwrap(), b"one\n");
        // A write through one name of a metacopy file linked in this session: the other
        // name, known already, shows it.
        for root in [&m, &k] {
            sh(
                root,
                "cat t/2 a/f-link >/dev/null && echo same-session >> t/2-link",
            );
        }
        compare(&m, &k, "after a write to a link");
        assert_eq!(fs::read(m.join("t/2")).unwrap(), b"two\nsame-session\n");
    }
    assert_eq!(upper_entries(&us), upper_entries(&uk), "the uppers written");
    let big = upper_entries(&us)
        .into_iter()
        .find(|e| e.starts_with("big:"))
        .unwrap();
    assert!(
        big.contains("data=false") && big.contains("metacopy=Some(\"\")"),
        "{big}"
    );
    // Each mounts the upper the other wrote (copies: both are written to next).
    let (us2, uk2) = (f.dir.path().join("us2"), f.dir.path().join("uk2"));
    copy_tree(&us, &uk2);
    copy_tree(&uk, &us2);
    let (ws2, wk2) = (f.path("ws2"), f.path("wk2"));
    same_as_kernel(
        &f,
        &ours(&us2, &ws2),
        &kernel(&uk2, &wk2),
        MORE_PATHS,
        "uppers swapped",
    );
    {
        let (m, k) = (f.path("m"), f.path("k"));
        let _s = Mount::new(&ours(&us, &ws), &m);
        let _km = KernelMount::new(&kernel(&uk, &wk), &k);
        data_changes(&m);
        data_changes(&k);
        compare(&m, &k, "after data changes");
    }
    assert_eq!(
        upper_entries(&us),
        upper_entries(&uk),
        "the uppers after data changes"
    );
    let (ws3, wk3) = (f.path("ws3"), f.path("wk3"));
    same_as_kernel(
        &f,
        &ours(&uk, &ws3),
        &kernel(&us, &wk3),
        MORE_PATHS,
        "uppers swapped again",
    );
}

/// Without metacopy=on, metadata changes copy the data up with them, as before.
#[test]
fn metacopy_off_copies_data_up() {
    if !can_mount() {
        return;
    }
    let f = Fixture::new();
    let l = lower(&f);
    let (u, w, m) = (f.path("u"), f.path("w"), f.path("m"));
    {
        let _s = Mount::new(&rw(&[&l], &u, &w), &m);
        sh(&m, "chmod 0600 big && chown 1:2 a/f");
    }
    assert!(!has_xattr(&u.join("big"), MC));
    assert!(blocks(&u.join("big")) >= 2048);
    assert_eq!(fs::read(u.join("a/f")).unwrap(), b"f data\n");
}

/// docs/SEMANTICS.md row 7: without metacopy=on, stratafs looks for the metacopy xattr only
/// where the kernel's copy-ups leave one (a sparse-looking file, or any file in a directory
/// marked impure), so a lookup in a tree without copy-ups reads no xattr. A metacopy file
/// with data blocks in an unmarked directory (which no kernel copy-up makes) is refused by
/// the kernel and shown as a file by stratafs.
#[test]
fn metacopy_off_looks_for_metacopy_files_where_copy_ups_leave_them() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let (l, u) = (f.path("l"), f.path("u"));
    file(&l, "plain/f", "lower\n");
    file(&l, "marked/f", "lower\n");
    file(&l, "sparse/f", "lower\n");
    file(&u, "plain/f", "upper\n");
    file(&u, "marked/f", "upper\n");
    setx(&u, "marked", "trusted.overlay.impure", b"y");
    dir(&u, "sparse");
    fs::File::create(u.join("sparse/f"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    for p in ["plain/f", "marked/f", "sparse/f"] {
        setx(&u, p, MC, b"");
    }
    let ro = lowerdir(&[&u, &l]);
    let (m, k) = (f.path("m"), f.path("k"));
    let _s = Mount::new(&ro, &m);
    let _km = KernelMount::new(&ro, &k);
    let paths = ["plain/f", "marked/f", "sparse/f"];
    assert_eq!(
        lookups(&k, &paths)
            .into_iter()
            .map(|(_, r)| r.map(|_| ()))
            .collect::<Vec<_>>(),
        vec![Err(libc::EPERM); 3]
    );
    let ours = lookups(&m, &paths);
    assert_eq!(ours[0].1, Ok((libc::S_IFREG, 6)), "shown as a file");
    assert_eq!(ours[1].1, Err(libc::EPERM));
    assert_eq!(ours[2].1, Err(libc::EPERM));
}

/// A file open for reading on a metacopy file reads what a write through another open
/// brought up, as on the kernel (whose open file moves to the upper data), where stratafs's
/// handles follow a copy-up (`passthrough=upper` and `off`; docs/SEMANTICS.md row 13 for
/// `all`).
#[test]
fn a_read_handle_follows_the_data_copy_up() {
    if !can_compare() {
        return;
    }
    let read_after_write = |root: &Path| {
        let r = fs::File::open(root.join("a/f")).unwrap();
        let mut w = fs::OpenOptions::new()
            .append(true)
            .open(root.join("a/f"))
            .unwrap();
        std::io::Write::write_all(&mut w, b"appended\n").unwrap();
        drop(w);
        let mut buf = vec![0u8; 64];
        let n = std::os::unix::fs::FileExt::read_at(&r, &mut buf, 0).unwrap();
        buf.truncate(n);
        buf
    };
    for pt in ["upper", "off"] {
        let f = Fixture::new();
        let l = lower(&f);
        let (us, ws, uk, wk) = (f.path("us"), f.path("ws"), f.path("uk"), f.path("wk"));
        let (m, k) = (f.path("m"), f.path("k"));
        let _s = Mount::new(
            &format!("{},metacopy=on,passthrough={pt}", rw(&[&l], &us, &ws)),
            &m,
        );
        let _km = KernelMount::new(
            &format!(
                "{},metacopy=on,redirect_dir=on,index=off",
                rw(&[&l], &uk, &wk)
            ),
            &k,
        );
        sh(&m, "chmod 0600 a/f");
        sh(&k, "chmod 0600 a/f");
        let (a, b) = (read_after_write(&m), read_after_write(&k));
        assert_eq!(a, b, "passthrough={pt}");
        assert_eq!(a, b"f data\nappended\n");
    }
}
