//! Running commands: podman and the daemon, as root or as the rootless user, with timeouts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::*;

/// What a finished (or killed) command left.
pub(crate) struct Out {
    /// Exit code; `None` when it was killed by a signal or the timeout.
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) what: String,
}

impl Out {
    pub(crate) fn ok(self) -> Result<String, String> {
        if self.code == Some(0) {
            Ok(self.stdout)
        } else {
            Err(self.failure())
        }
    }

    pub(crate) fn failure(&self) -> String {
        format!(
            "`{}` {}\n--- stdout:\n{}--- stderr:\n{}",
            self.what,
            match self.code {
                Some(c) => format!("exited {c}"),
                None => "was killed (signal or timeout)".to_string(),
            },
            tail(&self.stdout, 40),
            tail(&self.stderr, 40)
        )
    }
}

pub(crate) fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    let start = v.len().saturating_sub(lines);
    let mut out = v[start..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// Runs `cmd` in its own process group with stdout and stderr captured apart (in files, so
/// daemons that inherit them cannot hold the call up), killing the group after `limit`.
pub(crate) fn exec(cmd: &mut Command, what: String, limit: Duration) -> Out {
    use std::io::{Read, Seek};
    let mut o = tempfile::tempfile().expect("tempfile");
    let mut e = tempfile::tempfile().expect("tempfile");
    let spawned = cmd
        .stdin(std::process::Stdio::null())
        .stdout(o.try_clone().expect("dup"))
        .stderr(e.try_clone().expect("dup"))
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(err) => {
            return Out {
                code: None,
                stdout: String::new(),
                stderr: format!("cannot run: {err}"),
                what,
            }
        }
    };
    let start = Instant::now();
    let code = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s.code(),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(format!("-{}", child.id()))
                    .status();
                let _ = child.wait();
                break None;
            }
        }
    };
    let read = |f: &mut fs::File| {
        let mut b = Vec::new();
        let _ = f.rewind();
        let _ = f.read_to_end(&mut b);
        String::from_utf8_lossy(&b).into_owned()
    };
    Out {
        code,
        stdout: read(&mut o),
        stderr: read(&mut e),
        what,
    }
}

pub(crate) fn sh(cmd: &str) -> Result<String, String> {
    exec(
        Command::new("sh").arg("-c").arg(cmd),
        cmd.to_string(),
        PODMAN_TIMEOUT,
    )
    .ok()
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// True for an ELF executable without a program interpreter (statically linked).
pub(crate) fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = fs::read(path) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= b.len() && u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) != 3
    })
}

pub(crate) fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

pub(crate) fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

pub(crate) fn write(path: &Path, content: &str, mode: u32) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chmod(path, mode);
}

pub(crate) fn mkdir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    chmod(path, mode);
}

/// Compares two line lists as sets of lines, naming what is missing and what is extra.
pub(crate) fn same_lines(what: &str, got: &str, want: &str) -> Result<(), String> {
    let mut g: Vec<&str> = got.lines().collect();
    let mut w: Vec<&str> = want.lines().collect();
    g.sort_unstable();
    w.sort_unstable();
    if g == w {
        return Ok(());
    }
    let show = |v: Vec<&str>| {
        if v.is_empty() {
            "(none)".to_string()
        } else {
            v.join("\n    ")
        }
    };
    let missing = show(w.iter().filter(|l| !g.contains(l)).copied().collect());
    let extra = show(g.iter().filter(|l| !w.contains(l)).copied().collect());
    Err(format!(
        "{what}: output differs from the expected one\n  missing (expected, not seen):\n    {missing}\n  \
         unexpected (seen, not expected):\n    {extra}"
    ))
}

/// A shell snippet printing `still resolves: P` for each path that exists (lookup), so a
/// whited-out name found by stat/open though readdir no longer lists it shows up.
pub(crate) fn probe_gone(paths: &[&str]) -> String {
    let list: Vec<String> = paths.iter().map(|p| format!("'{p}'")).collect();
    format!(
        "for p in {}; do if [ -e \"$p\" ] || [ -L \"$p\" ]; then echo \"still resolves: $p\"; fi; done\n",
        list.join(" ")
    )
}

/// The state script followed by the lookup probe, as one `sh -c` program taking the root
/// and the listed trees as arguments.
pub(crate) fn state_and_probe(gone: &[&str]) -> String {
    format!("{STATE_SH}\n{}", probe_gone(gone))
}
