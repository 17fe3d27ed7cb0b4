//! The load tests' clients: each works in a directory of its own and in shared ones, and
//! checks what it reads back.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{ErrorKind, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::*;

// ---- load ----

pub(crate) fn load_secs() -> u64 {
    std::env::var("STRATAFS_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

pub(crate) const SHARED_DIRS: u64 = 4;
pub(crate) const LOWER_PER_DIR: u64 = 16;
pub(crate) const CLIENTS: u64 = 8;

/// Daemon memory bound, in KiB (peak resident set; about 6 MiB is typical).
pub(crate) const RSS_LIMIT_KIB: u64 = 128 * 1024;

pub(crate) fn lower_load_content(rel: &str) -> Vec<u8> {
    rel.as_bytes().repeat(64)
}

/// After a rename of `rel`: an error if the mount still shows the old name.
pub(crate) fn left_behind(mnt: &Path, rel: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(mnt.join(rel)) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) => Err(std::io::Error::other(format!(
            "the old name is still there (ino {})",
            m.ino()
        ))),
    }
}

/// One load client. It owns the names `w{id}-*` in the shared directories and the lower files
/// `lJJ` with `JJ % CLIENTS == id` (which it may append to or delete); it reads everything
/// else. Every operation on what it owns must succeed and show what it did.
pub(crate) struct Client {
    pub(crate) id: u64,
    pub(crate) mnt: PathBuf,
    /// The upper layer, looked at directly to explain a listing that is wrong.
    pub(crate) upper: PathBuf,
    pub(crate) rng: Rng,
    pub(crate) n: u64,
    /// Own regular files: relative path -> content.
    pub(crate) files: BTreeMap<PathBuf, Vec<u8>>,
    pub(crate) dirs: BTreeSet<PathBuf>,
    pub(crate) links: BTreeMap<PathBuf, String>,
    /// Owned lower files: relative path -> expected content (None once deleted).
    pub(crate) owned_lower: BTreeMap<PathBuf, Option<Vec<u8>>>,
    pub(crate) errors: Vec<String>,
    /// How each name this client had left it (the operation, and how many steps ago), to
    /// explain a listing that still shows it.
    pub(crate) gone: BTreeMap<PathBuf, (String, u64)>,
    pub(crate) steps: u64,
}

impl Client {
    pub(crate) fn new(id: u64, mnt: &Path, upper: &Path, seed: u64) -> Client {
        let mut owned_lower = BTreeMap::new();
        for d in 0..SHARED_DIRS {
            for j in (0..LOWER_PER_DIR).filter(|j| j % CLIENTS == id) {
                let rel = PathBuf::from(format!("shared/s{d}/l{j:02}"));
                let c = lower_load_content(&rel.to_string_lossy());
                owned_lower.insert(rel, Some(c));
            }
        }
        Client {
            id,
            mnt: mnt.to_path_buf(),
            upper: upper.to_path_buf(),
            rng: Rng::new(seed ^ (id + 7).wrapping_mul(0x5851_f42d)),
            n: 0,
            files: BTreeMap::new(),
            dirs: BTreeSet::new(),
            links: BTreeMap::new(),
            owned_lower,
            errors: Vec::new(),
            gone: BTreeMap::new(),
            steps: 0,
        }
    }

    pub(crate) fn fail(&mut self, what: String) {
        if self.errors.len() < 20 {
            self.errors.push(format!("client {}: {what}", self.id));
        }
    }

    pub(crate) fn new_name(&mut self, kind: &str) -> PathBuf {
        self.n += 1;
        let d = self.rng.below_u64(SHARED_DIRS);
        PathBuf::from(format!("shared/s{d}/w{}-{kind}{}", self.id, self.n))
    }

    pub(crate) fn pick<T: Clone>(&mut self, keys: Vec<T>) -> Option<T> {
        (!keys.is_empty()).then(|| keys[self.rng.below(keys.len())].clone())
    }

    pub(crate) fn check(&mut self, what: &str, r: std::io::Result<()>) {
        if let Err(e) = r {
            self.fail(format!("{what}: {e}"));
        }
    }

    /// One random operation.
    pub(crate) fn step(&mut self) {
        self.steps += 1;
        let m = self.mnt.clone();
        let own_file = self.pick(self.files.keys().cloned().collect());
        match self.rng.below_u64(20) {
            0..=2 => {
                let rel = self.new_name("f");
                let len = self.rng.below_u64(16 << 10) as usize;
                let c = noise(self.rng.next(), len);
                let r = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(m.join(&rel))
                    .and_then(|mut f| f.write_all(&c));
                self.check(&format!("create {}", rel.display()), r);
                self.files.insert(rel, c);
            }
            3 | 4 => {
                let Some(rel) = own_file else { return };
                let off = self.rng.below_u64(20_000);
                let data = noise(self.rng.next(), self.rng.below_u64(8192) as usize + 1);
                let r = fs::OpenOptions::new()
                    .write(true)
                    .open(m.join(&rel))
                    .and_then(|mut f| {
                        f.seek(SeekFrom::Start(off))?;
                        f.write_all(&data)?;
                        if off % 4 == 0 {
                            f.sync_data()?;
                        }
                        Ok(())
                    });
                self.check(&format!("write {}", rel.display()), r);
                let c = self.files.get_mut(&rel).unwrap();
                let end = off as usize + data.len();
                if c.len() < end {
                    c.resize(end, 0);
                }
                c[off as usize..end].copy_from_slice(&data);
            }
            5 => {
                let Some(rel) = own_file else { return };
                let len = self.rng.below_u64(10_000);
                let r = fs::OpenOptions::new()
                    .write(true)
                    .open(m.join(&rel))
                    .and_then(|f| f.set_len(len));
                self.check(&format!("truncate {}", rel.display()), r);
                self.files.get_mut(&rel).unwrap().resize(len as usize, 0);
            }
            6 => {
                let Some(rel) = own_file else { return };
                let to = self.new_name("f");
                let r = fs::rename(m.join(&rel), m.join(&to)).and_then(|()| left_behind(&m, &rel));
                self.check(&format!("rename {} {}", rel.display(), to.display()), r);
                self.left(&rel, format!("renamed to {}", to.display()));
                let c = self.files.remove(&rel).unwrap();
                self.files.insert(to, c);
            }
            7 => {
                let Some(to) = self.pick(self.files.keys().cloned().collect()) else {
                    return;
                };
                let Some(rel) = own_file else { return };
                if rel == to {
                    return;
                }
                let r = fs::rename(m.join(&rel), m.join(&to)).and_then(|()| left_behind(&m, &rel));
                self.check(
                    &format!("rename over {} {}", rel.display(), to.display()),
                    r,
                );
                self.left(&rel, format!("renamed over {}", to.display()));
                let c = self.files.remove(&rel).unwrap();
                self.files.insert(to, c);
            }
            8 => {
                let Some(rel) = own_file else { return };
                let r = fs::remove_file(m.join(&rel));
                self.check(&format!("unlink {}", rel.display()), r);
                self.left(&rel, "unlinked".into());
                self.files.remove(&rel);
            }
            9 => {
                if self.dirs.len() > 8 {
                    let d = self.pick(self.dirs.iter().cloned().collect()).unwrap();
                    let r = fs::remove_dir(m.join(&d));
                    self.check(&format!("rmdir {}", d.display()), r);
                    self.dirs.remove(&d);
                } else {
                    let d = self.new_name("d");
                    let r = fs::create_dir(m.join(&d));
                    self.check(&format!("mkdir {}", d.display()), r);
                    self.dirs.insert(d);
                }
            }
            10 => {
                let rel = self.new_name("s");
                let target = format!("target-{}", self.n);
                let r = std::os::unix::fs::symlink(&target, m.join(&rel));
                self.check(&format!("symlink {}", rel.display()), r);
                match fs::read_link(m.join(&rel)) {
                    Ok(t) if t == Path::new(&target) => {}
                    other => self.fail(format!("readlink {}: {other:?}", rel.display())),
                }
                self.links.insert(rel, target);
            }
            11 => {
                let Some(rel) = own_file else { return };
                let link = self.new_name("h");
                let r = fs::hard_link(m.join(&rel), m.join(&link)).and_then(|()| {
                    let n = fs::metadata(m.join(&link))?.nlink();
                    if n != 2 {
                        return Err(std::io::Error::other(format!("nlink {n}, expected 2")));
                    }
                    fs::remove_file(m.join(&link))
                });
                self.check(&format!("link {}", rel.display()), r);
            }
            12 | 13 => {
                let Some(rel) = own_file else { return };
                match fs::read(m.join(&rel)) {
                    Ok(c) if c == self.files[&rel] => {}
                    Ok(c) => self.fail(format!(
                        "read {}: {} bytes, not what was written ({} bytes)",
                        rel.display(),
                        c.len(),
                        self.files[&rel].len()
                    )),
                    Err(e) => self.fail(format!("read {}: {e}", rel.display())),
                }
            }
            14 => {
                let d = self.rng.below_u64(SHARED_DIRS);
                let dir = PathBuf::from(format!("shared/s{d}"));
                let prefix = format!("w{}-", self.id);
                match fs::read_dir(m.join(&dir)) {
                    Ok(rd) => {
                        let seen: BTreeSet<PathBuf> = rd
                            .flatten()
                            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                            .map(|e| dir.join(e.file_name()))
                            .collect();
                        let want: BTreeSet<PathBuf> = self.owned_names_in(&dir);
                        if seen != want {
                            let odd: Vec<&PathBuf> = want.symmetric_difference(&seen).collect();
                            let why = self.explain(&dir, &odd);
                            self.fail(format!(
                                "listing of {}: {:?} missing, {:?} unexpected ({why})",
                                dir.display(),
                                want.difference(&seen).collect::<Vec<_>>(),
                                seen.difference(&want).collect::<Vec<_>>()
                            ));
                        }
                    }
                    Err(e) => self.fail(format!("readdir {}: {e}", dir.display())),
                }
            }
            15 => {
                let Some(rel) = own_file else { return };
                let v = format!("v{}", self.n);
                let r = rustix::fs::setxattr(
                    m.join(&rel).as_path(),
                    "user.load",
                    v.as_bytes(),
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(std::io::Error::from)
                .and_then(|()| {
                    let mut b = [0u8; 64];
                    let n = rustix::fs::getxattr(m.join(&rel).as_path(), "user.load", &mut b[..])?;
                    if &b[..n] != v.as_bytes() {
                        return Err(std::io::Error::other("xattr reads back differently"));
                    }
                    Ok(())
                });
                self.check(&format!("xattr {}", rel.display()), r);
            }
            16 => {
                // Someone's lower file: present with its content (plus appends), or deleted.
                let d = self.rng.below_u64(SHARED_DIRS);
                let j = self.rng.below_u64(LOWER_PER_DIR);
                let rel = format!("shared/s{d}/l{j:02}");
                let base = lower_load_content(&rel);
                match fs::read(m.join(&rel)) {
                    Ok(c) if c.starts_with(&base) => {}
                    Ok(c) => {
                        self.fail(format!("read {rel}: {} bytes, not the lower data", c.len()))
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => self.fail(format!("read {rel}: {e}")),
                }
            }
            17 | 18 => {
                // Append to an owned lower file: the first one copies it up.
                let live: Vec<PathBuf> = self
                    .owned_lower
                    .iter()
                    .filter(|(_, c)| c.is_some())
                    .map(|(p, _)| p.clone())
                    .collect();
                let Some(rel) = self.pick(live) else { return };
                let data = format!("+{}", self.n).into_bytes();
                let r = fs::OpenOptions::new()
                    .append(true)
                    .open(m.join(&rel))
                    .and_then(|mut f| f.write_all(&data));
                self.check(&format!("append {}", rel.display()), r);
                if let Some(Some(c)) = self.owned_lower.get_mut(&rel) {
                    c.extend_from_slice(&data);
                }
            }
            _ => {
                let live: Vec<PathBuf> = self
                    .owned_lower
                    .iter()
                    .filter(|(_, c)| c.is_some())
                    .map(|(p, _)| p.clone())
                    .collect();
                if live.len() < 3 {
                    return;
                }
                let Some(rel) = self.pick(live) else { return };
                let r = fs::remove_file(m.join(&rel));
                self.check(&format!("unlink lower {}", rel.display()), r);
                self.owned_lower.insert(rel, None);
            }
        }
    }

    /// What the mount and the upper layer say of `names` of `dir` now, and whether a second
    /// listing agrees with the first: tells a stale listing from a wrong model.
    /// Records that `rel` left this client's names by `how`.
    pub(crate) fn left(&mut self, rel: &Path, how: String) {
        self.gone.insert(rel.to_path_buf(), (how, self.steps));
    }

    pub(crate) fn explain(&self, dir: &Path, names: &[&PathBuf]) -> String {
        let again: BTreeSet<PathBuf> = fs::read_dir(self.mnt.join(dir))
            .map(|rd| rd.flatten().map(|e| dir.join(e.file_name())).collect())
            .unwrap_or_default();
        names
            .iter()
            .map(|n| {
                let through = fs::symlink_metadata(self.mnt.join(n)).map(|m| m.ino());
                let on_disk = fs::symlink_metadata(self.upper.join(n)).map(|m| m.ino());
                let how = match self.gone.get(*n) {
                    Some((how, at)) => format!(", {how} {} steps ago", self.steps - at),
                    None => String::new(),
                };
                format!(
                    "{}: lstat {:?}, upper {:?}, listed again {}{how}",
                    n.display(),
                    through.map_err(|e| e.kind()),
                    on_disk.map_err(|e| e.kind()),
                    again.contains(*n)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(crate) fn owned_names_in(&self, dir: &Path) -> BTreeSet<PathBuf> {
        self.files
            .keys()
            .chain(self.dirs.iter())
            .chain(self.links.keys())
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect()
    }

    /// Checks through `root` that everything this client owns is as it left it.
    pub(crate) fn verify(&self, root: &Path) -> Vec<String> {
        let mut bad = Vec::new();
        for (rel, c) in &self.files {
            match fs::read(root.join(rel)) {
                Ok(got) if &got == c => {}
                Ok(got) => bad.push(format!(
                    "{}: {} bytes, expected {}",
                    rel.display(),
                    got.len(),
                    c.len()
                )),
                Err(e) => bad.push(format!("{}: {e}", rel.display())),
            }
        }
        for d in &self.dirs {
            if !root.join(d).is_dir() {
                bad.push(format!("{}: directory missing", d.display()));
            }
        }
        for (rel, t) in &self.links {
            match fs::read_link(root.join(rel)) {
                Ok(got) if got == Path::new(t) => {}
                other => bad.push(format!("{}: {other:?}", rel.display())),
            }
        }
        for (rel, c) in &self.owned_lower {
            match (fs::read(root.join(rel)), c) {
                (Ok(got), Some(c)) if &got == c => {}
                (Err(e), None) if e.raw_os_error() == Some(libc::ENOENT) => {}
                (got, c) => bad.push(format!(
                    "{}: {:?} bytes, expected {:?}",
                    rel.display(),
                    got.map(|g| g.len()),
                    c.as_ref().map(|c| c.len())
                )),
            }
        }
        bad
    }
}
