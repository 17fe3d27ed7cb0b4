//! `verity=off|on|require` (issue 18 item 6), on an ext4 image made with `-O verity` on a
//! loop device: the fs-verity digest a metacopy file records (the versioned
//! `overlay.metacopy` value) is checked against its data at every open and before a
//! copy-up, and a metadata copy-up records the data's digest. Every case is compared with
//! the kernel's overlayfs mounted the same way. Where the kernel has no fs-verity
//! (`CONFIG_FS_VERITY` off: no file can have a digest), the cases with a matching digest
//! cannot be built and are left out; the refusals are compared all the same.

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::*;

const MC: &str = "trusted.overlay.metacopy";

/// A loop device, detached when dropped.
struct LoopDevice(String);

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// An ext4 filesystem with the verity feature in a file, on a loop device, mounted; all
/// undone when dropped (the mount first), also when the test fails. (Also the filesystem
/// of its own uuid that `index.rs` puts a lower layer on.)
pub(crate) struct VerityImage {
    mount: KernelMount,
    _device: LoopDevice,
}

impl VerityImage {
    pub(crate) fn new(dir: &Path) -> VerityImage {
        VerityImage::with_uuid(dir, "random")
    }

    /// [`VerityImage::new`] with filesystem uuid `uuid` (`mkfs.ext4 -U`: a uuid, `random`,
    /// or `clear` for none).
    pub(crate) fn with_uuid(dir: &Path, uuid: &str) -> VerityImage {
        let image = dir.join("verity.img");
        fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
        let mkfs = run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "verity", "-b", "4096", "-U", uuid])
            .arg(&image));
        assert!(
            mkfs.status.success(),
            "mkfs.ext4 -O verity: {}",
            String::from_utf8_lossy(&mkfs.stderr)
        );
        let lo = run(Command::new("losetup").args(["-f", "--show"]).arg(&image));
        assert!(
            lo.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&lo.stderr)
        );
        let device = LoopDevice(String::from_utf8_lossy(&lo.stdout).trim().to_string());
        let mountpoint = dir.join("img");
        fs::create_dir_all(&mountpoint).unwrap();
        let m = run(Command::new("mount").arg(&device.0).arg(&mountpoint));
        assert!(
            m.status.success(),
            "mount {}: {}",
            device.0,
            String::from_utf8_lossy(&m.stderr)
        );
        VerityImage {
            mount: KernelMount { mountpoint },
            _device: device,
        }
    }

    /// Directory `name` on the image.
    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        let p = self.mount.mountpoint.join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }
}

/// Turns fs-verity on for `p`; false where the kernel or filesystem has none.
fn enable_verity(p: &Path) -> bool {
    let f = fs::File::open(p).unwrap();
    match stratafs::sys::enable_verity(f.as_fd()) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => false,
        Err(e) => panic!("enable verity on {}: {e}", p.display()),
    }
}

/// The `overlay.metacopy` value recording `p`'s fs-verity digest.
fn digest_value(p: &Path) -> Vec<u8> {
    let f = fs::File::open(p).unwrap();
    let (algo, d) = stratafs::sys::measure_verity(f.as_fd())
        .unwrap()
        .expect("a digest");
    stratafs::layer::format::metacopy_with_digest(algo as u8, &d)
}

/// A sparse metacopy file `name` in `u` of the size of its data in `l`, with `value`.
fn metacopy_file(u: &Path, l: &Path, name: &str, value: &[u8]) {
    let size = fs::metadata(l.join(name)).unwrap().len();
    fs::File::create(u.join(name))
        .unwrap()
        .set_len(size)
        .unwrap();
    setx(u, name, MC, value);
}

/// What an open and read of `p` gives: the data or the errno.
fn read(p: &Path) -> Result<Vec<u8>, i32> {
    errno_of(fs::read(p))
}

/// The layers on the image: `l` with data (`good`, `bad`, `plain`, `regular`, fs-verity on
/// the first two where the kernel has it), `u` with metacopy files of `good` (its true
/// digest), `bad` (a digest of other data) and `plain` (none). True where the digests
/// could be made, and the names to compare.
fn layers(img: &VerityImage) -> (PathBuf, PathBuf, Vec<&'static str>) {
    let (l, u) = (img.dir("l"), img.dir("u"));
    for n in ["good", "bad", "plain", "regular"] {
        fs::write(l.join(n), format!("data of {n}\n")).unwrap();
    }
    let verity = enable_verity(&l.join("good")) && enable_verity(&l.join("bad"));
    let mut other = stratafs::layer::format::metacopy_with_digest(1, &[0xab; 32]);
    if verity {
        metacopy_file(&u, &l, "good", &digest_value(&l.join("good")));
        other = digest_value(&l.join("good"));
    } else {
        eprintln!("no fs-verity in this kernel: matching digests are not tested");
    }
    metacopy_file(&u, &l, "bad", &other);
    metacopy_file(&u, &l, "plain", b"");
    let mut names = vec!["bad", "plain", "regular"];
    if verity {
        names.push("good");
    }
    (l, u, names)
}

/// The layers of [`layers`] on a fresh image, where stratafs can be compared with the
/// kernel. The image is unmounted before the fixture's directory goes (fields drop in
/// order).
struct Stack {
    img: VerityImage,
    f: Fixture,
    l: PathBuf,
    u: PathBuf,
    names: Vec<&'static str>,
}

fn stack() -> Option<Stack> {
    if !can_compare() {
        return None;
    }
    let f = Fixture::new();
    let img = VerityImage::new(f.dir.path());
    let (l, u, names) = layers(&img);
    Some(Stack {
        img,
        f,
        l,
        u,
        names,
    })
}

/// Opens through a metacopy file check the data's digest as the kernel's do, for each
/// `verity` mode with and without `metacopy=on`.
#[test]
fn opens_check_the_recorded_digest_like_the_kernel() {
    let Some(Stack {
        img: _img,
        f,
        l,
        u,
        names,
    }) = stack()
    else {
        return;
    };
    let verity = names.contains(&"good");
    for opts in [
        "metacopy=on",
        "metacopy=on,verity=off",
        "metacopy=on,verity=on",
        "metacopy=on,verity=require",
        "verity=on",
        "verity=require",
    ] {
        let ro = format!("{},{opts}", lowerdir(&[&u, &l]));
        let (m, k) = (f.path("m"), f.path("k"));
        let _s = Mount::new(&ro, &m);
        let _km = KernelMount::new(&ro, &k);
        assert_eq!(lookups(&m, &names), lookups(&k, &names), "{opts}");
        for n in &names {
            assert_eq!(read(&m.join(n)), read(&k.join(n)), "{opts}: {n}");
        }
        if opts == "metacopy=on,verity=on" || opts == "metacopy=on,verity=require" {
            assert_eq!(
                read(&m.join("bad")),
                Err(libc::EIO),
                "{opts}: another digest"
            );
            if verity {
                assert_eq!(read(&m.join("good")).unwrap(), b"data of good\n");
            }
        }
        if opts == "metacopy=on,verity=require" {
            assert_eq!(read(&m.join("plain")), Err(libc::EIO), "{opts}: no digest");
        }
    }
}

/// With an upper layer: a copy-up of a metacopy file checks its data first (chmod fails
/// with `EIO` where the open would), and a metadata copy-up records the data's digest
/// (`verity=on`: an empty value where it has none; `require`: the data is copied then), as
/// the kernel's; the uppers each side writes read the same under the other.
#[test]
fn copy_ups_check_and_record_digests_like_the_kernel() {
    let Some(Stack {
        img,
        f,
        l,
        u,
        names,
    }) = stack()
    else {
        return;
    };
    for (i, opts) in ["metacopy=on,verity=on", "metacopy=on,verity=require"]
        .iter()
        .enumerate()
    {
        let (us, uk) = (img.dir(&format!("us{i}")), img.dir(&format!("uk{i}")));
        let (ws, wk) = (img.dir(&format!("ws{i}")), img.dir(&format!("wk{i}")));
        let with = |up: &Path, w: &Path| {
            format!(
                "{},upperdir={},workdir={},{opts}",
                lowerdir(&[&u, &l]),
                up.display(),
                w.display()
            )
        };
        {
            let (m, k) = (f.path("m"), f.path("k"));
            let _s = Mount::new(&with(&us, &ws), &m);
            let _km = KernelMount::new(&format!("{},index=off", with(&uk, &wk)), &k);
            for n in &names {
                let chmod = |root: &Path| {
                    errno_of(fs::set_permissions(
                        root.join(n),
                        std::os::unix::fs::PermissionsExt::from_mode(0o640),
                    ))
                };
                assert_eq!(chmod(&m), chmod(&k), "{opts}: chmod {n}");
            }
            for n in &names {
                assert_eq!(read(&m.join(n)), read(&k.join(n)), "{opts}: {n}");
            }
        }
        for n in &names {
            let (a, b) = (us.join(n), uk.join(n));
            assert_eq!(a.exists(), b.exists(), "{opts}: upper {n}");
            assert_eq!(
                xattr(&a, MC),
                xattr(&b, MC),
                "{opts}: metacopy xattr of {n}"
            );
            if a.exists() && xattr(&a, MC).is_none() {
                // Copied whole: the data is in the upper file.
                assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap(), "{opts}: {n}");
            }
        }
        // Each upper under the other implementation.
        let (ws2, wk2) = (img.dir(&format!("ws{i}b")), img.dir(&format!("wk{i}b")));
        let (m, k) = (f.path("m"), f.path("k"));
        let _s = Mount::new(&with(&uk, &ws2), &m);
        let _km = KernelMount::new(&format!("{},index=off", with(&us, &wk2)), &k);
        for n in &names {
            assert_eq!(read(&m.join(n)), read(&k.join(n)), "{opts}: swapped {n}");
        }
    }
}

/// `verity=` takes the kernel's values; this kernel accepts it with any `metacopy` and
/// `redirect_dir`, and so does stratafs.
#[test]
fn verity_values_are_the_kernels() {
    if !can_compare() {
        return;
    }
    let f = Fixture::new();
    let (l, l2, m, k) = (f.path("l"), f.path("l2"), f.path("m"), f.path("k"));
    for opts in [
        "verity=on,metacopy=off",
        "verity=require,redirect_dir=off",
        "verity=on,redirect_dir=nofollow",
    ] {
        let o = format!("{},{opts}", lowerdir(&[&l]));
        let _s = Mount::new(&o, &m);
        let _km = KernelMount::new(&format!("{},{opts}", lowerdir(&[&l, &l2])), &k);
    }
    let bad = run(Command::new(stratafs_bin())
        .args(["-o", &format!("{},verity=yes", lowerdir(&[&l]))])
        .arg(&m));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("expected off, on or require"), "{err}");
}
