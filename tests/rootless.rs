//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! A daemon run by an unprivileged user, as rootless podman runs its `mount_program`: it
//! mounts through fusermount3, writes `.wh.` whiteouts and fuse-overlayfs's markers (the
//! upper filesystem refuses it char devices and `trusted.` xattrs), and uses the kernel's
//! writeback cache (FUSE passthrough needs CAP_SYS_ADMIN).

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A stack owned by nobody (`common::Stack`): `d/f` to append to, `d/sub/old` in a
/// directory to replace, and `d/gone` to delete.
fn stack() -> Stack {
    let s = Stack::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(s.lower.join("d/sub")).unwrap();
    fs::write(s.lower.join("d/f"), "lower\n").unwrap();
    fs::write(s.lower.join("d/sub/old"), "old\n").unwrap();
    fs::write(s.lower.join("d/gone"), "gone\n").unwrap();
    give_to_nobody(s.dir.path());
    s
}

fn facilities() -> bool {
    can_mount()
        && facility(find_tool("fusermount3").is_some(), "fusermount3")
        && facility(find_tool("setpriv").is_some(), "setpriv")
        && facility(find_tool("perl").is_some(), "perl")
}

/// Mounts `s` as nobody with `extra` options, runs `script` as nobody in the mount point
/// (`$U` is the upper directory; root may not enter a user's FUSE mount), unmounts, and returns the script's output.
fn run_as_nobody(s: &Stack, extra: &str, script: &str) -> String {
    let opts = format!("{}{extra}", s.rw_opts());
    let m = mount_as_nobody(&opts, &s.mnt);
    let (status, output) = run_timeout(
        as_nobody(Path::new("/bin/sh"))
            .arg("-c")
            .arg(format!("cd \"$M\" || exit 1\n{script}"))
            .env("U", &s.upper)
            .env("M", &s.mnt),
        Duration::from_secs(60),
    );
    m.unmount();
    assert!(
        status.is_some_and(|s| s.success()),
        "the script failed ({status:?}):\n{output}"
    );
    output
}

/// Appends to a lower file through a descriptor kept open, and reports the upper copy's
/// size before and after an fsync: with the writeback cache the data waits in the page
/// cache; without it every write reaches the upper file at once. (Perl, from the essential
/// perl-base, because every close of a duplicate descriptor, which a shell's redirections
/// and any child process make, flushes the cache.)
const APPEND: &str = r#"exec perl -e '
use IO::Handle;
open(my $f, ">>", "d/f") or die "open: $!";
syswrite($f, "more\n") or die "write: $!";
print "before ", (lstat("$ENV{U}/d/f"))[7], "\n";
$f->sync or die "fsync: $!";
print "after ", (lstat("$ENV{U}/d/f"))[7], "\n";
close($f) or die "close: $!";
open($f, "<", "d/f") or die "reopen: $!";
print <$f>;
'
"#;

#[test]
fn unprivileged_daemon_uses_the_writeback_cache() {
    if !facilities() {
        return;
    }
    let _fuse = DevFuseOpen::new();
    let s = stack();
    let out = run_as_nobody(&s, "", APPEND);
    assert_eq!(
        out, "before 6\nafter 11\nlower\nmore\n",
        "writeback=1 (default)"
    );
    let t = stack();
    let out = run_as_nobody(&t, ",writeback=0", APPEND);
    assert_eq!(out, "before 11\nafter 11\nlower\nmore\n", "writeback=0");
}

/// The writes of `LARGE_WRITES`: sequential 1 MiB writes, 300,000 bytes at an odd offset
/// into a lower file, direct I/O, with renames, small writes and listings between them;
/// then direct reads. (Direct I/O used to fail with `EINVAL` without passthrough: the
/// daemon opened the layer file `O_DIRECT` and read and wrote it through unaligned buffers
/// of its own.)
const LARGE_WRITES: &str = "set -e
dd if=\"$S/a\" of=d/a bs=1M conv=fsync status=none
mkdir d/m; echo small > d/m/x; mv d/m/x d/m/y; ls d/m
dd if=\"$S/b\" of=d/f bs=300000 seek=12345 oflag=seek_bytes conv=notrunc,fsync status=none
dd if=\"$S/a\" of=d/c bs=1M oflag=direct conv=fsync status=none
cat d/m/y
dd if=d/c bs=1M iflag=direct status=none | cmp - \"$S/a\"
dd if=d/f bs=4096 count=1 iflag=direct status=none | head -c 6
";

/// Large and direct writes and reads through the daemon without passthrough (rootless,
/// and root with `passthrough=off`): every byte lands where it was written.
#[test]
fn large_and_direct_writes_land_whole() {
    if !facilities() {
        return;
    }
    let _fuse = DevFuseOpen::new();
    let data = |n: usize, seed: u64| -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    };
    let (a, b) = (data(8 << 20, 1), data(300_000, 2));
    let mut f = b"lower\n".to_vec();
    f.resize(12345, 0);
    f.extend_from_slice(&b);
    for root in [false, true] {
        let s = stack();
        let src = s.dir.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("a"), &a).unwrap();
        fs::write(src.join("b"), &b).unwrap();
        give_to_nobody(&src);
        let script = format!("export S={}\n{LARGE_WRITES}", src.display());
        let out = if root {
            let opts = format!("{},passthrough=off", s.rw_opts());
            let m = Mount::new(&opts, &s.mnt);
            let (status, output) = run_timeout(
                Command::new("/bin/sh")
                    .arg("-c")
                    .arg(format!("cd \"$M\" || exit 1\n{script}"))
                    .env("M", &s.mnt),
                Duration::from_secs(120),
            );
            drop(m);
            assert!(status.is_some_and(|s| s.success()), "{output}");
            output
        } else {
            run_as_nobody(&s, "", &script)
        };
        let who = if root {
            "root, passthrough=off"
        } else {
            "rootless"
        };
        assert_eq!(out, "y\nsmall\nlower\n", "{who}");
        for (name, want) in [("a", &a), ("f", &f), ("c", &a)] {
            let got = fs::read(s.upper.join("d").join(name)).unwrap();
            assert!(
                got == *want,
                "{who}: d/{name} differs ({} bytes)",
                got.len()
            );
        }
    }
}

/// With the writeback cache the kernel keeps a written file's times itself and hands them
/// to the daemon when it writes the data back; from its flusher thread that request comes
/// as uid 0. An unprivileged daemon refused it as a stranger's (`EACCES`), though without
/// `allow_other` the kernel lets no one but the owner in: the daemon must serve whatever
/// reaches it. A write big enough to start background write-back, then the daemon's own
/// count of failed SETATTRs.
#[test]
fn requests_the_kernel_makes_on_its_own_are_served() {
    if !facilities() {
        return;
    }
    let s = stack();
    let stats = stable_stratafs_bin();
    let json = s.dir.path().join("stats.json");
    let script = format!(
        "dd if=/dev/zero of=d/big bs=1M count=256 2>/dev/null && sync && \
         {} stats --json . > {}",
        stats.display(),
        json.display()
    );
    run_as_nobody(&s, ",writeback=1", &script);
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    let failed: Vec<String> = v["requests"]
        .as_array()
        .unwrap()
        .iter()
        // (FLUSH is refused on purpose, ENOSYS; a GETXATTR may find no such attribute.)
        .filter(|r| r["errors"].as_u64().unwrap_or(0) > 0)
        .filter(|r| r["op"] != "flush" && r["op"] != "getxattr")
        .map(|r| format!("{} {} of {}", r["op"], r["errors"], r["count"]))
        .collect();
    assert!(failed.is_empty(), "requests refused: {failed:?}");
}

const REPLACE: &str = "set -e\nrm d/gone\nrm -r d/sub\nmkdir d/sub\necho new > d/sub/new\n\
                       echo more >> d/f\nls -A d d/sub\n";

/// What `REPLACE` left in the upper layer.
#[derive(Debug, PartialEq)]
struct Upper {
    names: Vec<String>,
    gone_is_char_whiteout: bool,
    sub_names: Vec<String>,
    user_overlay_opaque: bool,
    trusted_opaque: bool,
    fuse_opaque: bool,
    origin: Option<Vec<u8>>,
}

fn upper(s: &Stack) -> Upper {
    let d = s.upper.join("d");
    let sub = d.join("sub");
    let y = |x: &str| xattr(&sub, x).as_deref() == Some(b"y");
    Upper {
        names: dir_names(&d),
        gone_is_char_whiteout: fs::symlink_metadata(d.join("gone"))
            .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0),
        sub_names: dir_names(&sub),
        user_overlay_opaque: y("user.overlay.opaque"),
        trusted_opaque: y("trusted.overlay.opaque"),
        fuse_opaque: y("user.fuseoverlayfs.opaque"),
        origin: xattr(&d.join("f"), "user.fuseoverlayfs.origin"),
    }
}

/// An unprivileged daemon may make char 0/0 whiteouts (Linux 5.8 and later) and `user.`
/// xattrs: the upper is in the format of the kernel's `userxattr` mounts, and gets only
/// those markers unless `markers=fuse-overlayfs` asks for fuse-overlayfs's too.
#[test]
fn unprivileged_daemon_writes_the_userxattr_format() {
    if !facilities() {
        return;
    }
    let _fuse = DevFuseOpen::new();
    let kernel = Upper {
        names: vec!["f".into(), "gone".into(), "sub".into()],
        gone_is_char_whiteout: true,
        sub_names: vec!["new".into()],
        user_overlay_opaque: true,
        trusted_opaque: false,
        fuse_opaque: false,
        origin: None,
    };
    let s = stack();
    let out = run_as_nobody(&s, "", REPLACE);
    assert_eq!(out, "d:\nf\nsub\n\nd/sub:\nnew\n");
    assert_eq!(upper(&s), kernel);

    let t = stack();
    let out = run_as_nobody(&t, ",markers=fuse-overlayfs", REPLACE);
    assert_eq!(out, "d:\nf\nsub\n\nd/sub:\nnew\n");
    assert_eq!(
        upper(&t),
        Upper {
            sub_names: vec![".wh..wh..opq".into(), "new".into()],
            fuse_opaque: true,
            origin: Some(b"d/f\0".to_vec()),
            ..kernel
        }
    );
}

/// Kills, when dropped, every process whose command line names `path` (a daemon left in a
/// namespace the test cannot reach when its script failed half-way).
struct KillNaming(PathBuf);

impl Drop for KillNaming {
    fn drop(&mut self) {
        let needle = self.0.as_os_str().as_encoded_bytes().to_vec();
        let Ok(rd) = fs::read_dir("/proc") else {
            return;
        };
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            if pid != std::process::id()
                && cmdline
                    .windows(needle.len())
                    .any(|w| w == needle.as_slice())
            {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}

/// A daemon that is root only inside a user namespace (how rootless podman runs its
/// `mount_program`): `trusted.` xattrs are refused to it, so it keeps its markers in
/// `user.overlay.`, as the kernel's overlayfs does with `userxattr`; and FUSE passthrough
/// is refused to it, so it uses the writeback cache.
#[test]
fn root_in_a_user_namespace_uses_user_xattrs() {
    if !facilities() {
        return;
    }
    if !facility(find_tool("unshare").is_some(), "unshare") {
        return;
    }
    let s = stack();
    let out = run(Command::new("chown").arg("-R").arg("0:0").arg(s.dir.path()));
    assert!(out.status.success(), "chown");
    let _kill = KillNaming(s.dir.path().to_path_buf());
    let opts = s.rw_opts();
    let script = format!(
        "\"$BIN\" -o \"$OPTS\" \"$M\" || exit 1\ncd \"$M\" || exit 1\n(\n{REPLACE}\n) && (\n{APPEND}\n)\n\
         rc=$?\ncd /\numount \"$M\"\nexit $rc\n"
    );
    let (status, output) = run_timeout(
        Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
            .env("BIN", stable_stratafs_bin())
            .env("OPTS", &opts)
            .env("U", &s.upper)
            .env("M", &s.mnt),
        Duration::from_secs(60),
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "the script failed ({status:?}):\n{output}"
    );
    assert_eq!(
        output,
        "d:\nf\nsub\n\nd/sub:\nnew\nbefore 11\nafter 16\nlower\nmore\nmore\n"
    );
    let got = upper(&s);
    assert!(
        got.user_overlay_opaque && !got.trusted_opaque && got.gone_is_char_whiteout,
        "{got:?}"
    );
}

/// A root daemon uses FUSE passthrough, which excludes the writeback cache; with
/// `passthrough=off` it uses the writeback cache instead.
#[test]
fn root_daemon_with_passthrough_off_uses_the_writeback_cache() {
    if !facilities() {
        return;
    }
    for (extra, want) in [
        ("", "before 11\nafter 11\nlower\nmore\n"),
        (",passthrough=off", "before 6\nafter 11\nlower\nmore\n"),
    ] {
        let s = stack();
        let opts = format!("{}{extra}", s.rw_opts());
        let m = Mount::new(&opts, &s.mnt);
        let (status, output) = run_timeout(
            Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("cd \"$M\" || exit 1\n{APPEND}"))
                .env("U", &s.upper)
                .env("M", &s.mnt),
            Duration::from_secs(60),
        );
        drop(m);
        assert!(status.is_some_and(|s| s.success()), "{output}");
        assert_eq!(output, want, "options: {extra:?}");
    }
}

/// An unprivileged daemon killed with `kill -9` leaves a dead mount that the same user's
/// next mount command detaches (`fusermount3 -u -z`) and mounts again (issue 15, item 4).
#[test]
fn unprivileged_mount_over_a_dead_mount() {
    if !facilities() {
        return;
    }
    let s = stack();
    let bin = stable_stratafs_bin();
    let mount = || run(as_nobody(&bin).arg("-o").arg(s.rw_opts()).arg(&s.mnt));
    let out = mount();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mount {
        mountpoint: s.mnt.clone(),
    };
    let pids = daemons_for(&s.mnt);
    assert_eq!(pids.len(), 1);
    run(Command::new("kill").arg("-9").arg(pids[0].to_string()));
    assert!(wait_until(Duration::from_secs(5), || daemons_for(&s.mnt).is_empty()));
    let out = mount();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("dead FUSE mount"), "{stderr}");
    let (status, output) = run_timeout(
        as_nobody(Path::new("/bin/cat")).arg(s.mnt.join("d/f")),
        Duration::from_secs(10),
    );
    assert!(status.is_some_and(|s| s.success()), "{output}");
    assert_eq!(output, "lower\n");
    m.unmount();
    assert!(
        !is_mounted(&s.mnt),
        "a dead mount is left under the new one"
    );
}

/// `metacopy=on` in an unprivileged daemon (which the kernel refuses in a user namespace):
/// a chmod and a rename of lower files copy up their metadata alone, in the kernel's format
/// under `user.overlay.`; the daemon mounted again reads its data from below, and the first
/// write copies it up.
#[test]
fn unprivileged_daemon_copies_up_metadata_with_metacopy() {
    if !facilities() {
        return;
    }
    let _fuse = DevFuseOpen::new();
    let s = stack();
    let out = run_as_nobody(
        &s,
        ",metacopy=on",
        "chmod 0600 d/f && mv d/gone d/moved && cat d/f d/moved",
    );
    assert_eq!(out, "lower\ngone\n");
    let (f, moved) = (s.upper.join("d/f"), s.upper.join("d/moved"));
    for p in [&f, &moved] {
        assert_eq!(xattr(p, "user.overlay.metacopy").as_deref(), Some(&b""[..]));
        assert_eq!(xattr(p, "trusted.overlay.metacopy"), None);
        // No data (at most an xattr block).
        let file = fs::File::open(p).unwrap();
        assert!(
            rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(0)).is_err(),
            "{}: has data",
            p.display()
        );
    }
    assert_eq!(fs::metadata(&f).unwrap().len(), 6);
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        xattr(&moved, "user.overlay.redirect").as_deref(),
        Some(&b"gone"[..])
    );
    let out = run_as_nobody(
        &s,
        ",metacopy=on",
        "cat d/f d/moved && echo more >> d/f && ls -l d/f | cut -c1-10 && cat d/f",
    );
    assert_eq!(out, "lower\ngone\n-rw-------\nlower\nmore\n");
    assert_eq!(xattr(&f, "user.overlay.metacopy"), None);
    assert_eq!(fs::read(&f).unwrap(), b"lower\nmore\n");
    assert_eq!(
        xattr(&moved, "user.overlay.metacopy").as_deref(),
        Some(&b""[..])
    );
}
