//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! `-o udba=notify`: files added to, removed from and changed in a lower and the upper
//! directory behind a live mount show within a few seconds without `stratafs refresh`, and the
//! tree then equals the kernel's overlayfs freshly mounted on the same layers; without the
//! option they stay invisible (as the kernel's overlayfs leaves them undefined). The same
//! for a daemon run by an unprivileged user; a race of changes under load; a watch budget
//! smaller than the directories looked into; the daemon's own writes cause no storm.
//! docs/SEMANTICS.md (row 20) has the guarantee.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::behind::*;
use common::*;

/// How long a change may take to show (it takes milliseconds; the margin is for loaded
/// machines).
const SHOWS_WITHIN: Duration = Duration::from_secs(5);

fn read(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok()
}

fn names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The layers before the changes of [`change_behind`], walked and with the names it adds
/// looked up as missing (the kernel caches them so).
fn prepare(s: &Layers) {
    write(&s.l2.join("d/b"), "b in l2\n");
    write(&s.l2.join("d/sub/s"), "s\n");
    write(&s.l2.join("f2"), "f2\n");
    write(&s.l2.join("o/hidden"), "hidden soon\n");
    write(&s.l1.join("a"), "a\n");
    write(&s.l1.join("d/c"), "c in l1\n");
    write(&s.upper.join("u"), "u\n");
    write(&s.upper.join("d/up"), "up\n");
}

fn look(s: &Layers) {
    walk(&s.mnt);
    for n in ["new", "d/new_upper", "d/sub/s2", "newdir"] {
        assert_eq!(errno(&s.mnt.join(n)), Some(libc::ENOENT));
    }
}

/// Out-of-band changes to a lower and the upper directory: names added, removed, data
/// changed, a whiteout and an opaque directory in the upper.
fn change_behind(s: &Layers) {
    write(&s.l1.join("new"), "new in l1\n");
    write(&s.l1.join("newdir/x"), "x\n");
    write(&s.l1.join("a"), "a, changed and longer\n");
    fs::remove_file(s.l1.join("d/c")).unwrap();
    write(&s.l2.join("d/sub/s2"), "s2\n");
    write(&s.upper.join("d/new_upper"), "new in upper\n");
    write(&s.upper.join("d/up"), "up, changed\n");
    fs::remove_file(s.upper.join("u")).unwrap();
    make_whiteout(&s.upper.join("f2")).unwrap();
    write(&s.upper.join("o/only"), "only this\n");
    make_opaque(&s.upper.join("o")).unwrap();
}

/// Whether every change of [`change_behind`] shows through the mount at `m`.
fn all_show(m: &Path) -> bool {
    read(&m.join("new")).as_deref() == Some("new in l1\n")
        && read(&m.join("newdir/x")).as_deref() == Some("x\n")
        && read(&m.join("a")).as_deref() == Some("a, changed and longer\n")
        && errno(&m.join("d/c")) == Some(libc::ENOENT)
        && read(&m.join("d/sub/s2")).as_deref() == Some("s2\n")
        && read(&m.join("d/new_upper")).as_deref() == Some("new in upper\n")
        && read(&m.join("d/up")).as_deref() == Some("up, changed\n")
        && errno(&m.join("u")) == Some(libc::ENOENT)
        && errno(&m.join("f2")) == Some(libc::ENOENT)
        && errno(&m.join("o/hidden")) == Some(libc::ENOENT)
        && names(&m.join("o")) == ["only"]
}

/// Whether none of the changes to names the kernel and the daemon cache shows: names
/// cached as missing, a file hidden by a new whiteout, a directory made opaque. (Without
/// `udba=notify` a file removed or changed in place shows at its next open all the same:
/// the daemon opens it by name, and the kernel keeps no pages past a close.)
fn none_show(m: &Path) -> bool {
    errno(&m.join("new")) == Some(libc::ENOENT)
        && errno(&m.join("newdir")) == Some(libc::ENOENT)
        && errno(&m.join("d/sub/s2")) == Some(libc::ENOENT)
        && errno(&m.join("d/new_upper")) == Some(libc::ENOENT)
        && read(&m.join("f2")).as_deref() == Some("f2\n")
        && names(&m.join("o")) == ["hidden"]
}

#[test]
fn changes_behind_the_mount_show_with_udba_notify() {
    if !can_compare() {
        return;
    }
    let s = Layers::new();
    prepare(&s);
    let m = s.mount(",udba=notify");
    look(&s);
    let changed = Instant::now();
    change_behind(&s);
    assert!(
        wait_until(SHOWS_WITHIN, || all_show(&s.mnt)),
        "not every change showed within {SHOWS_WITHIN:?}"
    );
    eprintln!("every change showed after {:?}", changed.elapsed());
    s.comes_to_equal_the_kernel(
        SHOWS_WITHIN,
        "with udba=notify, after changes behind the mount",
    );
    let w = watch_stats(&s.mnt).expect("udba stats");
    // A root daemon may always have a fanotify group.
    assert_eq!(w["backend"], "fanotify", "{w}");
    assert!(w["watches"].as_u64().unwrap() > 0, "{w}");
    assert!(w["refreshes"].as_u64().unwrap() > 0, "{w}");
    m.unmount();
}

/// Without `udba=notify` (the default, `udba=none` said or not) nothing shows until a
/// refresh, as before the option existed.
#[test]
fn without_udba_notify_changes_stay_invisible() {
    if !can_compare() {
        return;
    }
    for extra in ["", ",udba=none"] {
        let s = Layers::new();
        prepare(&s);
        let m = s.mount(extra);
        look(&s);
        change_behind(&s);
        assert!(
            !wait_until(Duration::from_secs(1), || !none_show(&s.mnt)),
            "a change showed without udba=notify ({extra:?})"
        );
        assert!(none_show(&s.mnt));
        assert!(watch_stats(&s.mnt).is_none(), "watches without udba=notify");
        m.unmount();
    }
}

/// `udba` of the mount's statistics (`stratafs stats --json`), if any.
fn watch_stats(mnt: &Path) -> Option<serde_json::Value> {
    let out = run(Command::new(stratafs_bin())
        .args(["stats", "--json"])
        .arg(mnt));
    assert!(
        out.status.success(),
        "stratafs stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["caches"].get("watches").cloned()
}

/// Changes in every layer behind the mount while two threads read and list through it, and
/// no refresh: once the changes stop, the tree comes to equal the kernel's.
#[test]
fn a_race_of_changes_under_load_ends_as_the_kernel_shows_the_layers() {
    if !can_compare() {
        return;
    }
    let s = Layers::new();
    s.seed_race();
    let m = s.mount(",udba=notify");
    let stop = Arc::new(AtomicBool::new(false));
    let changer = s.spawn_changer(&stop);
    let loaders = s.spawn_loaders(&stop);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let changes = changer.join().unwrap();
    let reads: usize = loaders.into_iter().map(|l| l.join().unwrap()).sum();
    assert!(changes > 100, "{changes} changes");
    assert!(reads > 100, "{reads} reads");
    // Whiteouts in upper directories that merge with no lower one hide nothing, and the
    // kernel lists them (see tests/refresh.rs): gone, and then the two must agree.
    drop_idle_whiteouts(&s.upper, &[&s.l1, &s.l2]);
    s.comes_to_equal_the_kernel(SHOWS_WITHIN, "after the race, without a refresh");
    m.unmount();
}

/// A budget of 4 watches and 12 directories looked into: the 4 looked into last are watched
/// and show changes; the others (the root among them) no longer are, the log says so once,
/// and their changes show after `stratafs refresh`, as documented.
#[test]
fn a_watch_budget_smaller_than_the_directories_looked_into() {
    if !can_compare() {
        return;
    }
    let s = Layers::new();
    for i in 0..10 {
        write(&s.l2.join(format!("d{i}/f")), "f\n");
    }
    let log = s.dir.path().join("daemon.log");
    let m = s.mount(&format!(
        ",udba=notify,udba_watches=4,log={}",
        log.display()
    ));
    // The root in three layers, then d0..d9 (in l2 alone), in this order.
    for i in 0..10 {
        let d = s.mnt.join(format!("d{i}"));
        assert_eq!(names(&d), ["f"]);
        assert_eq!(errno(&d.join("new")), Some(libc::ENOENT));
    }
    let w = watch_stats(&s.mnt).expect("udba stats");
    assert_eq!(w["watches"].as_u64(), Some(4), "{w}");
    assert_eq!(w["budget"].as_u64(), Some(4), "{w}");
    assert!(w["evicted"].as_u64().unwrap() >= 9, "{w}");
    // The log says so once, whatever the number let go.
    let said = fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        said.matches("watch budget (udba_watches) is used up")
            .count(),
        1,
        "{said}"
    );
    for i in 0..10 {
        write(&s.l2.join(format!("d{i}/new")), "new\n");
    }
    for i in 6..10 {
        let p = s.mnt.join(format!("d{i}/new"));
        assert!(
            wait_until(SHOWS_WITHIN, || read(&p).is_some()),
            "d{i} is watched"
        );
    }
    for i in 0..6 {
        assert_eq!(
            errno(&s.mnt.join(format!("d{i}/new"))),
            Some(libc::ENOENT),
            "d{i} is no longer watched"
        );
    }
    let out = run(Command::new(stratafs_bin()).arg("refresh").arg(&s.mnt));
    assert!(out.status.success(), "{out:?}");
    s.comes_to_equal_the_kernel(SHOWS_WITHIN, "after a refresh, with the watch budget full");
    // Still within the budget after the refresh looked everything up again.
    let w = watch_stats(&s.mnt).expect("udba stats");
    assert!(w["watches"].as_u64().unwrap() <= 4, "{w}");
    m.unmount();
}

/// The daemon's own writes to the upper layer are reported by its watches too: with
/// fanotify they are known as its own and skipped; what is left (with inotify, all of them;
/// with FUSE passthrough, the writes the kernel makes for the writer) is gathered into a few
/// refreshes while the writes go on, and stops with them (no refresh makes events of its
/// own). Prints what a burst of 400 files costs, with and without the option.
#[test]
fn the_daemons_own_writes_cause_no_storm() {
    if !can_mount() {
        return;
    }
    let mut took = Vec::new();
    for extra in ["", ",udba=notify"] {
        let s = Layers::new();
        write(&s.l1.join("d/lower"), "lower\n");
        let m = s.mount(extra);
        walk(&s.mnt);
        let start = Instant::now();
        for i in 0..400 {
            let p = s.mnt.join(format!("d/f{i}"));
            fs::write(&p, format!("{i}\n")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::write(s.mnt.join("d/lower"), "copied up\n").unwrap();
        for i in 0..400 {
            assert_eq!(read(&s.mnt.join(format!("d/f{i}"))), Some(format!("{i}\n")));
        }
        took.push(start.elapsed());
        if let Some(first) = watch_stats(&s.mnt) {
            // Quiet once the last events are read: no event comes from a refresh.
            let mut last = first;
            let quiet = wait_until(SHOWS_WITHIN, || {
                std::thread::sleep(Duration::from_millis(300));
                let now = watch_stats(&s.mnt).unwrap();
                let same = now["events"] == last["events"];
                last = now;
                same
            });
            assert!(quiet, "events go on after the writes stopped: {last}");
            let refreshes = last["refreshes"].as_u64().unwrap();
            let events = last["events"].as_u64().unwrap();
            eprintln!("udba=notify: 400 files written: {last}");
            assert!(events >= 400, "the daemon's own writes are seen: {last}");
            if last["backend"] == "fanotify" {
                assert!(
                    last["own"].as_u64().unwrap() >= 400,
                    "the daemon's creations are its own: {last}"
                );
            }
            assert!(
                refreshes < 400,
                "events are gathered into fewer refreshes: {last}"
            );
        }
        m.unmount();
    }
    eprintln!(
        "400 files written, chmod'ed and read back: {:?} without udba, {:?} with udba=notify",
        took[0], took[1]
    );
}

/// A daemon run by an unprivileged user (fanotify too since Linux 5.13, inotify before;
/// the writeback cache, so a file changed in place must lose its inode to show its new
/// size): changes to a lower and the upper directory show to that user without a refresh,
/// and what it sees then is what the kernel's overlayfs on the same layers shows.
#[test]
fn rootless_daemon_sees_changes_behind_the_mount() {
    if !can_compare()
        || !facility(find_tool("fusermount3").is_some(), "fusermount3")
        || !facility(find_tool("setpriv").is_some(), "setpriv")
    {
        return;
    }
    let s = Layers::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    write(&s.l1.join("d/c"), "c\n");
    write(&s.l2.join("d/b"), "b\n");
    write(&s.upper.join("d/up"), "up\n");
    write(&s.upper.join("u"), "u\n");
    give_to_nobody(s.dir.path());
    let m = mount_as_nobody(&s.opts(",udba=notify"), &s.mnt);
    // What nobody sees: every path and its content, sorted (root may not enter the mount).
    let listing = |script: &str| {
        let (status, output) = run_timeout(
            as_nobody(Path::new("/bin/sh"))
                .arg("-c")
                .arg(format!(
                    "cd \"$M\" || exit 1\n{script}\n\
                     find . | sort | while read -r p; do\n\
                       if [ -f \"$p\" ]; then echo \"$p: $(cat \"$p\")\"; else echo \"$p\"; fi\n\
                     done"
                ))
                .env("M", &s.mnt),
            Duration::from_secs(60),
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "the script failed ({status:?}):\n{output}"
        );
        output
    };
    // Looked into, with the names to come cached as missing.
    listing("cat d/new d/new_upper new 2>/dev/null; true");
    write(&s.l1.join("d/new"), "new in l1\n");
    write(&s.l1.join("new"), "new at the root\n");
    fs::remove_file(s.l2.join("d/b")).unwrap();
    write(&s.l1.join("d/c"), "c, changed\n");
    write(&s.upper.join("d/new_upper"), "new in upper\n");
    fs::remove_file(s.upper.join("u")).unwrap();
    let ours = listing(
        "i=0\n\
         until [ -f d/new ] && [ -f d/new_upper ] && [ -f new ] && [ ! -e d/b ] \
               && [ ! -e u ] && [ \"$(cat d/c)\" = \"c, changed\" ]; do\n\
           i=$((i+1)); [ $i -gt 250 ] && { echo 'not shown within 5 s:' >&2; ls -la . d >&2; cat d/c >&2; exit 1; }\n\
           sleep 0.02\n\
         done",
    );
    m.unmount();
    let k = s.kernel();
    let (status, theirs) = run_timeout(
        Command::new("/bin/sh")
            .arg("-c")
            .arg(
                "cd \"$M\" || exit 1\n\
             find . | sort | while read -r p; do\n\
               if [ -f \"$p\" ]; then echo \"$p: $(cat \"$p\")\"; else echo \"$p\"; fi\n\
             done",
            )
            .env("M", &s.kmnt),
        Duration::from_secs(60),
    );
    drop(k);
    assert!(status.is_some_and(|s| s.success()), "{theirs}");
    assert_eq!(ours, theirs, "nobody's view differs from the kernel's");
    assert!(ours.contains("./d/new: new in l1"), "{ours}");
}
