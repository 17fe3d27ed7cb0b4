//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The daemon against hostile callers and hostile layers (issue 14, docs/SECURITY.md): each
//! test here failed before the fix it pins.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::*;

/// The unprivileged user the attacker runs as.
const NOBODY: u32 = 65534;

/// `sh -c script` as nobody, with no supplementary groups, in `dir`.
fn sh_as_nobody(dir: &std::path::Path, script: &str) -> std::process::Output {
    run(Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir))
}

/// Appending to a setuid-root file as another user drops the setuid bit, and the mount
/// shows that at once: the appended program then runs as its caller, not as root. (The
/// daemon dropped the bit on disk, but the kernel kept showing, and executing, the cached
/// mode 4777.) Lower and upper-only files, every passthrough policy, and the writeback cache.
#[test]
fn append_to_setuid_file_drops_the_bit_in_the_mount() {
    if !can_mount() || !facility(find_tool("setpriv").is_some(), "setpriv") {
        return;
    }
    let id = find_tool("id").expect("id");
    for extra in [
        "passthrough=all",
        "passthrough=upper",
        "passthrough=off,writeback=0",
        "passthrough=off,writeback=1",
    ] {
        let s = Stack::new();
        fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(s.lower.join("lower-suid"), "").unwrap();
        fs::set_permissions(s.lower.join("lower-suid"), fs::Permissions::from_mode(0o4777))
            .unwrap();
        fs::write(s.upper.join("upper-suid"), "").unwrap();
        fs::set_permissions(s.upper.join("upper-suid"), fs::Permissions::from_mode(0o4777))
            .unwrap();
        let m = Mount::new(&format!("{},{extra}", s.rw_opts()), &s.mnt);
        for name in ["lower-suid", "upper-suid"] {
            let p = s.mnt.join(name);
            // The kernel caches the setuid mode before the append.
            assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4777);
            let out = sh_as_nobody(
                &s.mnt,
                &format!("cat {} >> {name} && ./{name} -u", id.display()),
            );
            assert!(
                out.status.success(),
                "{extra}: {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                NOBODY.to_string(),
                "{extra}: {name}: the appended program ran with another euid"
            );
            assert_eq!(
                fs::metadata(&p).unwrap().mode() & 0o7777,
                0o777,
                "{extra}: {name}: the mount still shows the setuid bit"
            );
        }
        m.unmount();
        for name in ["lower-suid", "upper-suid"] {
            assert_eq!(
                fs::metadata(s.upper.join(name)).unwrap().mode() & 0o7777,
                0o777,
                "{extra}: {name} on disk"
            );
        }
    }
}
