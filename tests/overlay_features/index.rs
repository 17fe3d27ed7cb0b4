//! `-o index=on` (issue 18 item 3): hard links to a lower file stay one file after any of
//! its names is copied up, through the index directory and `overlay.origin` file handles
//! in the kernel's format, so that the kernel's `index=on` reads our upper and we read its.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::*;

/// A lower layer with a file of three names in two directories, a file of two names, one
/// of two names to be replaced by a rename, and an ordinary file.
fn lower(f: &Fixture) -> PathBuf {
    fill_lower(&f.path("l"))
}

/// [`lower`]'s tree in directory `l`.
fn fill_lower(l: &Path) -> PathBuf {
    let l = l.to_path_buf();
    file(&l, "a/f", "shared\n");
    dir(&l, "b");
    fs::hard_link(l.join("a/f"), l.join("a/g")).unwrap();
    fs::hard_link(l.join("a/f"), l.join("b/h")).unwrap();
    file(&l, "b/two", "two\n");
    fs::hard_link(l.join("b/two"), l.join("b/deux")).unwrap();
    file(&l, "c/over", "over\n");
    fs::hard_link(l.join("c/over"), l.join("c/under")).unwrap();
    file(&l, "c/plain", "plain\n");
    file(&l, "d/x", "x\n");
    fs::hard_link(l.join("d/x"), l.join("d/y")).unwrap();
    l
}

/// Paths whose link counts and identities are compared.
const PATHS: &[&str] = &[
    "a/f", "a/g", "b/h", "b/two", "b/deux", "b/link", "c/over", "c/under", "c/plain", "c/new",
    "d/x", "d/y",
];

/// Changes through a mount: writes and links of several names of a lower file, an unlink of
/// a name never copied up, a chmod of another file, a rename over a lower hard link, and
/// every name of a file removed (its index entry goes with the last).
fn change(m: &Path) {
    sh(
        m,
        "echo more >> a/f && cat a/g b/h >/dev/null && ln a/g b/link && rm b/h \
         && chmod 600 b/deux && echo new > c/new && mv c/new c/under \
         && echo z >> d/x && rm d/x d/y",
    );
}

/// Each path's link count, and which of them are one file (the first path of the same
/// `st_ino`), or its errno.
type Identity = BTreeMap<String, Result<(u64, String), i32>>;

fn identity(root: &Path) -> Identity {
    let mut first: BTreeMap<u64, String> = BTreeMap::new();
    PATHS
        .iter()
        .map(|p| {
            let r = fs::symlink_metadata(root.join(p))
                .map(|md| {
                    let same = first.entry(md.ino()).or_insert_with(|| p.to_string());
                    (md.nlink(), same.clone())
                })
                .map_err(|e| e.raw_os_error().unwrap_or(-1));
            (p.to_string(), r)
        })
        .collect()
}

/// The entries of the index directory of work directory `w` (but the kernel's own
/// temporary `#` names: it stages in the index directory, and clears them at mount).
fn index_entries(w: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(w.join("index"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('#'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `index=on` and `userxattr`, or not.
fn opts(l: &Path, u: &Path, w: &Path, extra: &str) -> String {
    format!("{},index=on{extra}", rw(&[l], u, w))
}

/// The same changes through stratafs and the kernel, both `index=on`: the same tree, link
/// counts and identities; then each upper is read by the other implementation.
fn both_ways(extra: &str) {
    let f = Fixture::new();
    let l = lower(&f);
    both_ways_over(&f, &l, extra);
}

/// [`both_ways`] over lower layer `l`; returns the upper directories (ours, the kernel's).
fn both_ways_over(f: &Fixture, l: &Path, extra: &str) -> (PathBuf, PathBuf) {
    let l = l.to_path_buf();
    let (u1, w1, u2, w2) = (f.path("u1"), f.path("w1"), f.path("u2"), f.path("w2"));
    let (m, k) = (f.path("m"), f.path("k"));
    let (ours, theirs);
    {
        let s = Mount::new(&opts(&l, &u1, &w1, extra), &m);
        let km = KernelMount::new(&opts(&l, &u2, &w2, extra), &k);
        change(&s.mountpoint);
        change(&km.mountpoint);
        ours = (snapshot(&m), identity(&m));
        theirs = (snapshot(&k), identity(&k));
        assert_same_tree(&ours.0, &theirs.0, "after the changes");
        assert_eq!(ours.1, theirs.1, "link counts and identities");
    }
    // Every name of the file is one file with its true count.
    assert_eq!(ours.1["a/f"], Ok((3, "a/f".to_string())));
    assert_eq!(ours.1["b/link"], Ok((3, "a/f".to_string())));
    assert_eq!(ours.1["b/deux"], Ok((2, "b/two".to_string())));
    assert_eq!(ours.1["c/over"], Ok((1, "c/over".to_string())));
    // The same index entries (the names are the lower files' handles).
    assert_eq!(index_entries(&w1), index_entries(&w2));
    assert_eq!(index_entries(&w1).len(), 3, "{:?}", index_entries(&w1));
    // Swapped: the kernel reads our upper, we read the kernel's.
    kernel_reads(&opts(&l, &u1, &w1, extra), &k, &ours);
    {
        let _s = Mount::new(&opts(&l, &u2, &w2, extra), &m);
        assert_same_tree(&snapshot(&m), &theirs.0, "the kernel's upper, stratafs");
        assert_eq!(
            identity(&m),
            theirs.1,
            "the kernel's upper, stratafs: identities"
        );
    }
    (u1, u2)
}

#[test]
fn hard_links_stay_one_file_as_the_kernels_index_keeps_them() {
    both_ways("");
}

#[test]
fn index_with_userxattr_as_root_is_the_kernels() {
    both_ways(",userxattr");
}

/// The `overlay.origin` and index entry a copy-up writes are byte for byte the kernel's
/// (the `struct ovl_fb` of the lower file's handle).
#[test]
fn origin_and_index_entry_are_the_kernels_bytes() {
    let f = Fixture::new();
    let l = lower(&f);
    let (u1, w1, u2, w2) = (f.path("u1"), f.path("w1"), f.path("u2"), f.path("w2"));
    let (m, k) = (f.path("m"), f.path("k"));
    {
        let _s = Mount::new(&opts(&l, &u1, &w1, ""), &m);
        sh(&m, "echo more >> a/f");
    }
    {
        let _k = KernelMount::new(&opts(&l, &u2, &w2, ""), &k);
        sh(&k, "echo more >> a/f");
    }
    for key in ["trusted.overlay.origin", "trusted.overlay.nlink"] {
        let ours = xattr(&u1.join("a/f"), key);
        assert!(ours.is_some(), "{key} written");
        assert_eq!(ours, xattr(&u2.join("a/f"), key), "{key}");
    }
    assert_eq!(
        xattr(&u1, "trusted.overlay.origin"),
        xattr(&u2, "trusted.overlay.origin"),
        "upper root origin"
    );
    let entries = index_entries(&w1);
    assert_eq!(entries, index_entries(&w2));
    let entry = w1.join("index").join(&entries[0]);
    assert_eq!(
        fs::metadata(&entry).unwrap().ino(),
        fs::metadata(u1.join("a/f")).unwrap().ino()
    );
}

/// A lower layer on a filesystem of its own uuid (an ext4 image), the upper on another:
/// the handles record the lower filesystem's uuid, byte for byte as the kernel's.
#[test]
fn handles_record_the_lower_filesystems_uuid() {
    let f = Fixture::new();
    let image = crate::verity::VerityImage::new(f.dir.path());
    let l = fill_lower(&image.dir("l"));
    let (u1, u2) = both_ways_over(&f, &l, "");
    let key = "trusted.overlay.origin";
    let origin = xattr(&u1.join("a/f"), key).expect("origin");
    assert_eq!(Some(&origin), xattr(&u2.join("a/f"), key).as_ref());
    assert_eq!(xattr(&u1, key), xattr(&u2, key), "upper root origin");
    let dir = fs::File::open(&l).unwrap();
    let uuid = stratafs::sys::fs_uuid(std::os::fd::AsFd::as_fd(&dir)).unwrap();
    assert_ne!(uuid, [0; 16]);
    assert_eq!(&origin[5..21], &uuid[..]);
}

/// An upper whose root's origin is another lower root is refused by both, and so is an
/// index directory of another upper.
#[test]
fn an_index_of_other_layers_is_refused_like_the_kernel() {
    let f = Fixture::new();
    let l = lower(&f);
    let other = f.path("other");
    file(&other, "x", "x\n");
    let (u, w, u2) = (f.path("u"), f.path("w"), f.path("u2"));
    let (m, k) = (f.path("m"), f.path("k"));
    drop(Mount::new(&opts(&l, &u, &w, ""), &m));
    let refused = |o: &str, want: &str| {
        let e = Mount::try_new(o, &m).err().expect("refused");
        let msg = String::from_utf8_lossy(&e.stderr).into_owned();
        assert!(msg.contains(want), "{msg}");
        assert_eq!(msg.trim().lines().count(), 1, "{msg}");
        let out = run(std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", o])
            .arg(&k));
        assert!(!out.status.success(), "the kernel mounted {o}");
    };
    refused(
        &opts(&other, &u, &w, ""),
        "failed to verify upper root origin: try deleting index dir or mounting with '-o index=off'",
    );
    // Another upper (its root's origin is recorded at its first mount) with this work dir.
    refused(
        &opts(&l, &u2, &w, ""),
        "failed to verify index dir 'upper' xattr",
    );
    // With index=off both mount it.
    drop(Mount::new(&rw(&[&other], &u, &w), &m));
}

/// What a crash leaves in the index (a staging name) goes at mount, and so does the entry
/// of a file no name of which is left (an orphan, made here as a crash between the unlink
/// of the last name and the entry's removal would leave it); a whiteout entry stays, as the
/// kernel keeps them.
#[test]
fn the_index_is_cleaned_at_mount() {
    let f = Fixture::new();
    let l = lower(&f);
    let (u, w, m) = (f.path("u"), f.path("w"), f.path("m"));
    {
        let _s = Mount::new(&opts(&l, &u, &w, ""), &m);
        sh(
            &m,
            "echo x >> d/x && rm d/x d/y && echo y >> a/f && ln b/two b/link",
        );
    }
    // The last unlink took its file's entry.
    assert_eq!(index_entries(&w).len(), 2, "{:?}", index_entries(&w));
    let two = index_entries(&w)
        .into_iter()
        .find(|e| {
            fs::metadata(w.join("index").join(e)).unwrap().ino()
                == fs::metadata(u.join("b/two")).unwrap().ino()
        })
        .unwrap();
    // An orphan: no upper name, and no lower name counted.
    fs::remove_file(u.join("b/two")).unwrap();
    fs::remove_file(u.join("b/link")).unwrap();
    setx(&w.join("index"), &two, "trusted.overlay.nlink", b"U-1");
    fs::write(w.join("index/#123.4"), "crash").unwrap();
    let white = "00fb1d0001000000000000000000000000000000000000000000000000";
    make_whiteout(&w.join("index").join(white)).unwrap();
    let before = index_entries(&w);
    {
        let _s = Mount::new(&opts(&l, &u, &w, ""), &m);
        assert_eq!(identity(&m)["a/g"], Ok((3, "a/f".to_string())));
    }
    assert!(!w.join("index/#123.4").exists());
    let after = index_entries(&w);
    assert!(after.contains(&white.to_string()), "{after:?}");
    assert!(!after.contains(&two), "{after:?}");
    assert_eq!(after.len(), before.len() - 1, "{before:?} -> {after:?}");
    // The kernel mounts what is left, and shows the same.
    let k = f.path("k");
    let km = KernelMount::new(&opts(&l, &u, &w, ""), &k);
    assert_eq!(identity(&km.mountpoint)["a/g"], Ok((3, "a/f".to_string())));
    assert_eq!(
        identity(&km.mountpoint)["b/two"],
        Ok((2, "b/two".to_string()))
    );
}

/// Unprivileged, `index=on` is refused in one line: the kernel's overlayfs uses no index in
/// a user namespace, so there is nobody to share such an index with.
#[test]
fn unprivileged_index_is_refused() {
    let f = Fixture::new();
    let l = lower(&f);
    let (u, w, m) = (f.path("u"), f.path("w"), f.path("m"));
    give_to_nobody(f.dir.path());
    let out = run(as_nobody(&stable_stratafs_bin())
        .arg("-o")
        .arg(opts(&l, &u, &w, ""))
        .arg(&m));
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        msg.trim(),
        "stratafs: index=on needs a daemon running as root (the kernel's overlayfs uses no index in a user namespace)"
    );
}

/// With `metacopy=on` the kernel's copy-up of a lower hard link for a chmod puts a
/// metacopy file in the index: every name of it reads the lower data, and writes through
/// a name not linked up reach all of them.
#[test]
fn metacopy_index_entries_read_their_lower_data() {
    let f = Fixture::new();
    let l = lower(&f);
    let (u, w, m, k) = (f.path("u"), f.path("w"), f.path("m"), f.path("k"));
    let o = format!("{},metacopy=on,redirect_dir=on", opts(&l, &u, &w, ""));
    {
        let _k = KernelMount::new(&o, &k);
        sh(&k, "chmod 600 a/f");
    }
    assert!(xattr(&u.join("a/f"), "trusted.overlay.metacopy").is_some());
    let before;
    {
        let _s = Mount::new(&o, &m);
        for p in ["a/f", "a/g", "b/h"] {
            assert_eq!(fs::read_to_string(m.join(p)).unwrap(), "shared\n", "{p}");
        }
        sh(&m, "echo more >> b/h");
        assert_eq!(fs::read_to_string(m.join("a/g")).unwrap(), "shared\nmore\n");
        before = (snapshot(&m), identity(&m));
    }
    kernel_reads(&o, &k, &before);
}

/// The same kernel-made metacopy index entry under `verity=on`: the names not linked up,
/// whose top copy is the index entry, read the lower data (no digest is recorded, which
/// `on` allows). The check used to read `overlay.metacopy` at the merged name in the index
/// directory, and every open of those names failed.
#[test]
fn metacopy_index_entries_are_checked_at_their_entry_with_verity_on() {
    let f = Fixture::new();
    let l = lower(&f);
    let (u, w, m, k) = (f.path("u"), f.path("w"), f.path("m"), f.path("k"));
    let o = format!("{},metacopy=on,redirect_dir=on", opts(&l, &u, &w, ""));
    {
        let _k = KernelMount::new(&o, &k);
        sh(&k, "chmod 600 a/f");
    }
    let _s = Mount::new(&format!("{o},verity=on"), &m);
    for p in ["a/f", "a/g", "b/h"] {
        let got = fs::read_to_string(m.join(p));
        assert_eq!(got.ok().as_deref(), Some("shared\n"), "{p}");
    }
}

/// The kernel mounted with `o` on `k` shows `want` (a tree, and its names' identities).
fn kernel_reads(o: &str, k: &Path, want: &(TreeSnap, Identity)) {
    let _k = KernelMount::new(o, k);
    assert_same_tree(&snapshot(k), &want.0, "the kernel over stratafs's upper");
    assert_eq!(
        identity(k),
        want.1,
        "the kernel over stratafs's upper: identities"
    );
}

/// Deliberate differences (docs/SEMANTICS.md row 21). A change through one name of a lower
/// hard link links up the name its node was last looked up by (the kernel: the name used);
/// with `metacopy=on` the copy into the index is whole (the kernel's is metadata only). The
/// trees shown are the same, and each reads the other's upper.
#[test]
fn which_name_is_linked_up_and_metacopy_differ() {
    let f = Fixture::new();
    let l = lower(&f);
    let (u1, w1, u2, w2) = (f.path("u1"), f.path("w1"), f.path("u2"), f.path("w2"));
    let (m, k) = (f.path("m"), f.path("k"));
    let mc = ",metacopy=on,redirect_dir=on";
    let script = "stat a/g >/dev/null && stat a/f >/dev/null && echo x >> a/g && chmod 600 b/two";
    {
        let _s = Mount::new(&opts(&l, &u1, &w1, mc), &m);
        let _k = KernelMount::new(&opts(&l, &u2, &w2, mc), &k);
        sh(&m, script);
        sh(&k, script);
        assert_same_tree(&snapshot(&m), &snapshot(&k), "after the changes");
        assert_eq!(identity(&m), identity(&k));
    }
    let names = |u: &Path| (u.join("a/f").exists(), u.join("a/g").exists());
    assert_eq!(names(&u1), (true, false), "stratafs links up a/f");
    assert_eq!(names(&u2), (false, true), "the kernel links up a/g");
    assert_eq!(xattr(&u1.join("b/two"), "trusted.overlay.metacopy"), None);
    assert!(xattr(&u2.join("b/two"), "trusted.overlay.metacopy").is_some());
    let want = {
        let _s = Mount::new(&opts(&l, &u1, &w1, mc), &m);
        (snapshot(&m), identity(&m))
    };
    kernel_reads(&opts(&l, &u1, &w1, mc), &k, &want);
}

/// An index entry whose name is no file handle: the kernel refuses the mount (it cannot
/// verify the index), stratafs leaves it alone (docs/SEMANTICS.md row 21).
#[test]
fn an_index_entry_that_is_no_handle_is_left_alone() {
    let f = Fixture::new();
    let l = lower(&f);
    let (u, w, m, k) = (f.path("u"), f.path("w"), f.path("m"), f.path("k"));
    drop(Mount::new(&opts(&l, &u, &w, ""), &m));
    fs::write(w.join("index/stray"), "x").unwrap();
    drop(Mount::new(&opts(&l, &u, &w, ""), &m));
    assert!(w.join("index/stray").exists());
    let out = run(std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts(&l, &u, &w, "")])
        .arg(&k));
    assert!(!out.status.success(), "the kernel mounted it");
}

/// A fixture with [`lower`], an upper, a work directory, a mount point and the options.
struct Side {
    f: Fixture,
    l: PathBuf,
    u: PathBuf,
    w: PathBuf,
    m: PathBuf,
    o: String,
}

impl Side {
    fn new() -> Side {
        let f = Fixture::new();
        let l = lower(&f);
        let (u, w, m) = (f.path("u"), f.path("w"), f.path("m"));
        let o = opts(&l, &u, &w, "");
        Side { f, l, u, w, m, o }
    }
}

/// Runs `script` in a mount with `o` on `m`, stratafs's (`ours`) or the kernel's; the
/// identities it leaves.
fn session(ours: bool, o: &str, m: &Path, script: &str) -> Identity {
    let _mounted: Box<dyn std::any::Any> = if ours {
        Box::new(Mount::new(o, m))
    } else {
        Box::new(KernelMount::new(o, m))
    };
    sh(m, script);
    identity(m)
}

/// A count left relative to the lower file (`L+N`, as a crash in the middle of the kernel's
/// link-up leaves it) is read as the kernel reads it, and the next unlink and link through
/// the mount count from it, as the kernel's.
#[test]
fn a_count_relative_to_the_lower_file_is_the_kernels() {
    let after = |ours: bool| {
        let side = Side::new();
        let (u, m, o) = (&side.u, &side.m, &side.o);
        let session = |script: &str| session(ours, o, m, script);
        session("echo x >> a/f");
        // Three names in the lower layer, none of them removed: L+0.
        setx(u, "a/f", "trusted.overlay.nlink", b"L+0");
        let read = session("true");
        let changed = session("rm a/g && ln a/f c/more && rm b/h");
        (read, changed)
    };
    let (ours, theirs) = (after(true), after(false));
    assert_eq!(ours.0["a/g"], Ok((3, "a/f".to_string())));
    assert_eq!(ours, theirs);
    assert_eq!(ours.1["a/f"], Ok((2, "a/f".to_string())));
}

/// Stale index entries go at mount, as the kernel clears them: one whose lower file is
/// gone (no upper name left to keep it), and one whose `overlay.origin` is not its name.
#[test]
fn stale_entries_are_cleared_like_the_kernel() {
    let after = |ours: bool| {
        let Side {
            f: _f,
            l,
            u,
            w,
            m,
            o,
        } = Side::new();
        let session = |script: &str| session(ours, &o, &m, script);
        session("echo x >> b/two && echo y >> a/f");
        let two = xattr(&u.join("b/two"), "trusted.overlay.origin").unwrap();
        let kept = index_entries(&w);
        // The lower file of b/two gone, and its only upper name.
        for p in [u.join("b/two"), l.join("b/two"), l.join("b/deux")] {
            fs::remove_file(p).unwrap();
        }
        // An entry whose origin is not its name.
        let mut other = two.clone();
        *other.last_mut().unwrap() ^= 0xff;
        let name: String = other.iter().map(|b| format!("{b:02x}")).collect();
        fs::write(w.join("index").join(&name), "x").unwrap();
        setx(&w.join("index"), &name, "trusted.overlay.origin", &two);
        session("true");
        (kept.len(), index_entries(&w).len())
    };
    assert_eq!(after(true), (2, 1));
    assert_eq!(after(false), (2, 1));
}

/// The `struct ovl_fb` of `p` (any object) as a layer's copy-up records it.
fn handle_of(p: &Path) -> Vec<u8> {
    let f = fs::File::open(p).unwrap();
    let fd = std::os::fd::AsFd::as_fd(&f);
    let uuid = stratafs::sys::fs_uuid(fd).unwrap();
    let h = stratafs::sys::file_handle_at(fd, std::ffi::OsStr::new("")).unwrap();
    stratafs::layer::format::origin_handle(&uuid, h.kind, &h.bytes, false).unwrap()
}

/// Puts a regular file in index directory `index` named after handle `fh`, with `fh` as
/// its `overlay.origin` and no other link (as an entry whose upper names are all gone).
fn plant_entry(index: &Path, fh: &[u8], name: &str) {
    fs::write(index.join(name), "kept\n").unwrap();
    setx(index, name, "trusted.overlay.origin", fh);
}

/// Whether an entry planted in the index, with the `overlay.origin` (and name) `origin`
/// makes of lower layer `l`, survives a mount, stratafs's (`ours`) or the kernel's.
fn planted_entry_survives(ours: bool, origin: impl Fn(&Path) -> Vec<u8>) -> bool {
    let Side {
        f: _f, l, w, m, o, ..
    } = Side::new();
    session(ours, &o, &m, "true");
    let fh = origin(&l);
    let name: String = fh.iter().map(|b| format!("{b:02x}")).collect();
    plant_entry(&w.join("index"), &fh, &name);
    session(ours, &o, &m, "true");
    index_entries(&w).contains(&name)
}

/// An index entry whose origin is a lower directory (no entry of a non-directory can
/// stand for one): stale, as the kernel's `ovl_check_origin_fh` finds it ("invalid
/// origin", `ESTALE`), and removed by both at mount.
#[test]
fn an_index_entry_of_a_lower_directory_is_stale_like_the_kernels() {
    let origin = |l: &Path| handle_of(&l.join("b"));
    assert!(!planted_entry_survives(false, origin), "the kernel kept it");
    assert!(!planted_entry_survives(true, origin), "stratafs kept it");
}

/// An index entry no upper name of which is left, while lower names are (and read the
/// data written through them, which only the entry holds), when the daemon cannot open its
/// lower file by handle for a reason other than its being gone: here a root daemon
/// without `CAP_DAC_READ_SEARCH` (as a container's default capabilities leave it), whose
/// `open_by_handle_at` fails with `EPERM`. The entry is left alone (docs/SEMANTICS.md row
/// 21). It used to be taken for a stale entry and deleted at mount, and the data written
/// through the lower names with it: every failure to find the lower file counted as the
/// file being gone.
#[test]
fn an_index_entry_whose_origin_cannot_be_opened_is_kept() {
    let Side { f, w, m, o, .. } = Side::new();
    {
        let _s = Mount::new(&o, &m);
        sh(&m, "echo more >> a/f && rm a/f");
        assert_eq!(fs::read_to_string(m.join("a/g")).unwrap(), "shared\nmore\n");
    }
    let entries = index_entries(&w);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let wrapper = f.path("bin").join("stratafs");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --inh-caps=-dac_read_search --bounding-set=-dac_read_search -- {} \"$@\"\n",
            stratafs_bin().display()
        ),
    )
    .unwrap();
    run(std::process::Command::new("chmod").arg("755").arg(&wrapper));
    match Mount::with_binary(&wrapper, &o, &m) {
        Ok(s) => s.unmount(),
        Err(e) => panic!("{}", String::from_utf8_lossy(&e.stderr)),
    }
    assert_eq!(index_entries(&w), entries);
    let _s = Mount::new(&o, &m);
    assert_eq!(fs::read_to_string(m.join("a/g")).unwrap(), "shared\nmore\n");
    assert_eq!(identity(&m)["a/g"], Ok((2, "a/g".to_string())));
}

/// An index entry with no upper name whose origin names a filesystem of no lower layer
/// (its lower file cannot be found, as when it is gone): stale, as the kernel's
/// `ovl_check_origin_fh` finds it (`ESTALE`), and removed by both at mount.
#[test]
fn an_index_entry_of_another_filesystem_is_stale_like_the_kernels() {
    let origin = |l: &Path| {
        let mut fh = handle_of(&l.join("c/plain"));
        fh[5] ^= 0xff;
        fh
    };
    assert!(!planted_entry_survives(false, origin), "the kernel kept it");
    assert!(!planted_entry_survives(true, origin), "stratafs kept it");
}

/// Two lower layers on two filesystems of one uuid (ext4 images made with the same `-U`,
/// and then with none): a handle's uuid would not tell which of them it is of, so the
/// kernel's overlayfs falls back to `index=off` with a warning (`ovl_lower_uuid_ok`), and
/// so does stratafs: a change through one name of a lower hard link copies that name up
/// alone, and no index is written. stratafs used to turn the index on all the same.
#[test]
fn lower_filesystems_of_one_uuid_turn_the_index_off_like_the_kernels() {
    for uuid in ["6a1f3c2e-9d4b-4e8a-b1c7-0f2d3e4a5b6c", "clear"] {
        let f = Fixture::new();
        let (i1, i2) = (f.path("i1"), f.path("i2"));
        let one = crate::verity::VerityImage::with_uuid(&i1, uuid);
        let two = crate::verity::VerityImage::with_uuid(&i2, uuid);
        let l1 = fill_lower(&one.dir("l"));
        let l2 = two.dir("l");
        file(&l2, "only-here", "2\n");
        let run_in = |ours: bool, name: &str| {
            let (u, w, m) = (
                f.path(&format!("u{name}")),
                f.path(&format!("w{name}")),
                f.path(&format!("m{name}")),
            );
            let o = format!("{},index=on", rw(&[&l1, &l2], &u, &w));
            let ids = session(ours, &o, &m, "echo more >> a/f && ln b/two b/link");
            (ids, w.join("index").exists())
        };
        let (ours, theirs) = (run_in(true, "1"), run_in(false, "2"));
        assert_eq!(ours, theirs, "uuid {uuid}");
        assert_eq!(ours.0["a/g"], Ok((3, "a/g".to_string())), "uuid {uuid}");
        assert!(!ours.1, "an index directory, uuid {uuid}");
        drop((one, two));
    }
}
