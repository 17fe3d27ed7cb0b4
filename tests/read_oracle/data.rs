//! Sections 14-15 of the read-path oracle: data read back exactly (big files, `SEEK_DATA` and
//! `SEEK_HOLE`), and every write refused on a read-only mount.

use super::*;
// ---------------------------------------------------------------------------------------------
// 14. Reading data
// ---------------------------------------------------------------------------------------------

#[test]
fn large_file_reads_back_exactly() {
    large_files_read_back_exactly("");
}

/// The same reads served by the daemon (no passthrough): large requests are spliced from the
/// layer file into the reply, short ones copied; both end at end of file.
#[test]
fn large_file_reads_back_exactly_through_the_daemon() {
    large_files_read_back_exactly(",passthrough=off");
}

fn large_files_read_back_exactly(extra: &str) {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 2);
    let (top, bot) = (&l[0], &l[1]);
    let big = pattern(3 * 1024 * 1024, 0x5eed);
    fs::write(bot.join("big"), &big).expect("write");
    let odd = pattern(3 * 1024 * 1024 + 4099, 0xbeef);
    fs::write(top.join("odd"), &odd).expect("write");
    fs::write(bot.join("odd"), b"shadowed").expect("write");

    let m = mountpoint(t.path(), "m");
    let _ours = Mount::new(&format!("{}{extra}", lowerdir(&l)), &m);
    let got = fs::read(m.join("big")).expect("read big");
    assert_eq!(got.len(), big.len());
    assert!(got == big, "3 MiB file differs through the mount");
    let got = fs::read(m.join("odd")).expect("read odd");
    assert!(got == odd, "odd-sized file differs through the mount");
    assert_eq!(
        fs::metadata(m.join("big")).expect("stat").len(),
        big.len() as u64
    );

    // Positioned reads at deterministic pseudo-random offsets and lengths, some past EOF.
    let f = File::open(m.join("odd")).expect("open");
    let offs = pattern(64 * 8, 42);
    for chunk in offs.chunks(8) {
        let r = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let off = (r % (odd.len() as u64 + 10_000)) as usize;
        let len = ((r >> 32) % 300_000) as usize + 1;
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        loop {
            let n = f
                .read_at(&mut buf[filled..], (off + filled) as u64)
                .expect("pread");
            if n == 0 {
                break;
            }
            filled += n;
            if filled == len {
                break;
            }
        }
        let want_end = (off + len).min(odd.len());
        let want = if off >= odd.len() {
            &[][..]
        } else {
            &odd[off..want_end]
        };
        assert!(
            &buf[..filled] == want,
            "pread at {off} len {len}: got {filled} bytes, want {}",
            want.len()
        );
    }
}

#[test]
fn seek_data_and_hole_match_layer_file() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 2);
    let (top, bot) = (&l[0], &l[1]);
    file(top, "other", "x");
    const MIB: u64 = 1024 * 1024;
    let layer_file = bot.join("sparse");
    {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&layer_file)
            .expect("create");
        f.set_len(16 * MIB).expect("set_len");
        f.write_all_at(&pattern(64 * 1024, 1), MIB).expect("write");
        f.write_all_at(&pattern(4096, 2), 6 * MIB + 100)
            .expect("write");
        f.write_all_at(&pattern(8192, 3), 12 * MIB).expect("write");
        f.sync_all().expect("fsync");
    }
    // A file with data right up to EOF, and an empty file.
    {
        let f = File::create(bot.join("tail")).expect("create");
        f.set_len(4 * MIB).expect("set_len");
        f.write_all_at(b"end", 4 * MIB - 3).expect("write");
        f.sync_all().expect("fsync");
    }
    File::create(bot.join("empty")).expect("create");

    let m = mountpoint(t.path(), "m");
    let _ours = Mount::new(&lowerdir(&l), &m);
    let probes = [
        0,
        1,
        4096,
        MIB - 1,
        MIB,
        MIB + 1000,
        MIB + 65535,
        MIB + 65536,
        3 * MIB,
        6 * MIB,
        6 * MIB + 100,
        6 * MIB + 5000,
        10 * MIB,
        12 * MIB + 8191,
        12 * MIB + 8192,
        16 * MIB - 1,
        16 * MIB,
        20 * MIB,
    ];
    for name in ["sparse", "tail", "empty"] {
        let lf = File::open(bot.join(name)).expect("open layer file");
        let mf = File::open(m.join(name)).expect("open through mount");
        for &off in &probes {
            for (label, whence) in [
                ("SEEK_DATA", SeekFrom::Data(off)),
                ("SEEK_HOLE", SeekFrom::Hole(off)),
            ] {
                let want = rustix::fs::seek(&lf, whence);
                let got = rustix::fs::seek(&mf, whence);
                assert_eq!(got, want, "{name}: {label} from {off}");
            }
        }
    }
    // The data read through the mount matches too.
    assert!(
        fs::read(m.join("sparse")).expect("read") == fs::read(&layer_file).expect("read"),
        "sparse file content differs"
    );
}

// ---------------------------------------------------------------------------------------------
// 15. Read-only
// ---------------------------------------------------------------------------------------------

fn truncate_path(p: &Path) -> io::Result<()> {
    stratafs::sys::truncate_path(p, 0)
}

type WriteOp = (&'static str, fn(&Path) -> io::Result<()>);

fn write_ops() -> Vec<WriteOp> {
    vec![
        ("create", |r| File::create(r.join("newfile")).map(drop)),
        ("create_new", |r| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(r.join("newfile2"))
                .map(drop)
        }),
        ("mkdir", |r| fs::create_dir(r.join("newdir"))),
        ("unlink", |r| fs::remove_file(r.join("f"))),
        ("unlink lower", |r| fs::remove_file(r.join("d/low"))),
        ("rmdir", |r| fs::remove_dir(r.join("empty"))),
        ("rename", |r| fs::rename(r.join("f"), r.join("g"))),
        ("rename over", |r| fs::rename(r.join("f"), r.join("d/low"))),
        ("rename dir", |r| fs::rename(r.join("d"), r.join("d2"))),
        ("chmod", |r| {
            fs::set_permissions(
                r.join("f"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
        }),
        ("chmod dir", |r| {
            fs::set_permissions(
                r.join("d"),
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
        }),
        ("chown", |r| {
            std::os::unix::fs::chown(r.join("f"), Some(1), Some(1))
        }),
        ("utimensat", |r| {
            let ts = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                },
            };
            rustix::fs::utimensat(CWD, r.join("f"), &ts, rustix::fs::AtFlags::empty())
                .map_err(io::Error::from)
        }),
        ("open O_WRONLY", |r| {
            OpenOptions::new().write(true).open(r.join("f")).map(drop)
        }),
        ("open O_RDWR", |r| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(r.join("d/low"))
                .map(drop)
        }),
        ("open O_APPEND", |r| {
            OpenOptions::new().append(true).open(r.join("f")).map(drop)
        }),
        ("open O_WRONLY|O_TRUNC", |r| {
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(r.join("f"))
                .map(drop)
        }),
        ("open O_WRONLY|O_CREAT existing", |r| {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(r.join("f"))
                .map(drop)
        }),
        ("setxattr", |r| {
            rustix::fs::lsetxattr(r.join("f"), "user.new", b"v", XattrFlags::empty())
                .map_err(io::Error::from)
        }),
        ("setxattr dir", |r| {
            rustix::fs::lsetxattr(r.join("d"), "user.new", b"v", XattrFlags::empty())
                .map_err(io::Error::from)
        }),
        ("removexattr", |r| {
            rustix::fs::lremovexattr(r.join("f"), "user.attr").map_err(io::Error::from)
        }),
        ("symlink", |r| symlink("f", r.join("newlink"))),
        ("link", |r| fs::hard_link(r.join("f"), r.join("newhard"))),
        ("mknod fifo", |r| {
            rustix::fs::mknodat(
                CWD,
                r.join("newfifo"),
                FileType::Fifo,
                Mode::from_raw_mode(0o644),
                0,
            )
            .map_err(io::Error::from)
        }),
        ("truncate", |r| truncate_path(&r.join("f"))),
        ("truncate lower", |r| truncate_path(&r.join("d/low"))),
    ]
}

#[test]
fn every_write_fails_with_erofs() {
    if !can_compare() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let l = layers(t.path(), 2);
    let (top, bot) = (&l[0], &l[1]);
    file(top, "f", "content");
    setx(top, "f", "user.attr", b"v");
    file(top, "d/top", "t");
    file(bot, "d/low", "l");
    dir(bot, "empty");
    let before: Vec<TreeSnap> = l.iter().map(|p| snapshot(p)).collect();

    let opts = lowerdir(&l);
    let m = mountpoint(t.path(), "m");
    let k = mountpoint(t.path(), "k");
    let ours = Mount::new(&opts, &m);
    let kernel = KernelMount::new(&opts, &k);
    let mut failures = Vec::new();
    for (what, op) in write_ops() {
        let theirs = op(&kernel.mountpoint);
        assert_eq!(
            theirs.as_ref().map_err(errno_of).err(),
            Some(Some(Errno::ROFS)),
            "kernel {what}: {theirs:?}"
        );
        match op(&ours.mountpoint) {
            Ok(()) => failures.push(format!("{what}: succeeded")),
            Err(e) if errno_of(&e) == Some(Errno::ROFS) => {}
            Err(e) => failures.push(format!("{what}: {e} (want EROFS)")),
        }
    }
    drop(kernel);
    drop(ours);
    let after: Vec<TreeSnap> = l.iter().map(|p| snapshot(p)).collect();
    for (b, a) in before.iter().zip(&after) {
        assert_same_tree(a, b, "layers after write attempts");
    }
    assert!(
        failures.is_empty(),
        "writes not refused with EROFS:\n{}",
        failures.join("\n")
    );
}
