//! The store: one directory holding content-addressed blobs, unpacked layers (by diff-id),
//! image records, tags and containers.
//!
//! ```text
//! STORE/lock                       flock: exclusive for writers, shared for readers
//! STORE/journal.json               paths placed by an unfinished change (rolled back on open)
//! STORE/tmp/                       staging; anything here belongs to no finished change
//! STORE/blobs/sha256/HEX           layer blobs, image configs and manifests, as exported
//! STORE/layers/HEX/diff/           a layer unpacked, HEX = its diff-id; shared read-only
//! STORE/layers/HEX/layer.json      what the layer is (LayerRecord)
//! STORE/images/HEX.json            an image, HEX = its config digest (ImageRecord)
//! STORE/tags.json                  tag -> image id
//! STORE/containers/NAME/           container.json, upper/, work/, merged/
//! ```
//!
//! Every change is built under `tmp/` and renamed into place; what a change places is listed
//! in the journal first, so an interrupted change is undone by the next writer.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::Sha256Digest;
use serde::{Deserialize, Serialize};

use crate::digest;
use crate::error::{Context, Error, Result};

/// How a command uses the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only: a shared lock.
    Read,
    /// Changes it: an exclusive lock.
    Write,
}

/// One layer as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// `sha256:HEX` of the uncompressed tar.
    pub diff_id: String,
    /// Bytes of file data unpacked.
    pub size: u64,
    /// Entries of the tar.
    pub entries: u64,
    /// `chardev` (kernel format, written as root) or `dotwh` (`.wh.` files, rootless).
    pub whiteouts: String,
    /// Blob digests known to decompress to this layer.
    pub blobs: Vec<String>,
}

/// One layer of an image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageLayer {
    /// The blob's digest (`sha256:HEX`).
    pub digest: String,
    /// The blob's size.
    pub size: u64,
    /// The blob's OCI media type.
    pub media_type: String,
    /// The uncompressed tar's digest.
    pub diff_id: String,
}

/// One image as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The image id: the config blob's digest.
    pub id: String,
    /// The OCI manifest blob's digest.
    pub manifest: String,
    /// The manifest's size.
    pub manifest_size: u64,
    /// The layers, bottom first (as a manifest lists them).
    pub layers: Vec<ImageLayer>,
    /// Where it came from (`import PATH`, `commit NAME`).
    pub source: String,
}

/// A mount of a container made by `mount`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountState {
    /// The mount point.
    pub target: PathBuf,
    /// The daemon serving it, when it could be found.
    pub pid: Option<u32>,
}

/// One container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerRecord {
    /// Its name.
    pub name: String,
    /// The image it was created from.
    pub image: String,
    /// The image's diff-ids, bottom first.
    pub layers: Vec<String>,
    /// Set while mounted.
    pub mount: Option<MountState>,
}

/// An open, locked store.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    _lock: File,
    /// Behave as an unprivileged user (`.wh.` whiteouts, no device nodes, no chown).
    pub rootless: bool,
}

/// The paths placed by an unfinished change.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    placed: Vec<PathBuf>,
}

impl Store {
    /// Opens (creating it if needed) and locks the store at `root`. A writer first undoes
    /// whatever an interrupted change left.
    pub fn open(root: &Path, access: Access, rootless: bool) -> Result<Store> {
        if access == Access::Write || !root.is_dir() {
            // A reader of a store that does not exist yet sees an empty one.
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).ctx(|| format!("create store {}", root.display()))?;
            }
            make_private_dir(root)?;
        }
        let root = fs::canonicalize(root).ctx(|| format!("store {}", root.display()))?;
        let lock_path = root.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .ctx(|| format!("open {}", lock_path.display()))?;
        let op = match access {
            Access::Read => rustix::fs::FlockOperation::LockShared,
            Access::Write => rustix::fs::FlockOperation::LockExclusive,
        };
        rustix::fs::flock(&lock, op).ctx(|| format!("lock {}", lock_path.display()))?;
        let store = Store {
            root,
            _lock: lock,
            rootless,
        };
        if access == Access::Write {
            for d in [
                store.tmp_dir(),
                store.root.join("blobs"),
                store.root.join("blobs/sha256"),
                store.root.join("layers"),
                store.root.join("images"),
                store.root.join("containers"),
            ] {
                make_private_dir(&d)?;
            }
            store.recover()?;
        }
        Ok(store)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where changes are staged.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn journal_path(&self) -> PathBuf {
        self.root.join("journal.json")
    }

    /// Rolls back an interrupted change and clears the staging area (only writers hold the
    /// exclusive lock, so nothing there is in use).
    fn recover(&self) -> Result<()> {
        let jp = self.journal_path();
        if jp.exists() {
            let j: Journal = read_json(&jp)?;
            for p in j.placed.iter().rev() {
                remove_any(p)?;
            }
            fs::remove_file(&jp).ctx(|| format!("remove {}", jp.display()))?;
        }
        let tmp = self.tmp_dir();
        for e in fs::read_dir(&tmp).ctx(|| format!("list {}", tmp.display()))? {
            let e = e.ctx(|| format!("list {}", tmp.display()))?;
            remove_any(&e.path())?;
        }
        Ok(())
    }

    /// A fresh staging directory, removed with everything left in it when dropped.
    pub fn staging(&self, prefix: &str) -> Result<Staging> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.tmp_dir())
            .ctx(|| format!("create a staging directory in {}", self.tmp_dir().display()))?;
        Ok(Staging { path: dir.keep() })
    }

    /// Starts a change whose placed paths are undone unless it is committed.
    pub fn txn(&self) -> Txn<'_> {
        Txn {
            store: self,
            placed: Vec::new(),
            done: false,
        }
    }

    // ---- blobs ----

    /// Where blob `d` is kept.
    pub fn blob_path(&self, d: &Sha256Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.digest())
    }

    /// True when blob `d` is in the store.
    pub fn has_blob(&self, d: &Sha256Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Reads a small blob (a config or a manifest).
    pub fn read_blob(&self, d: &Sha256Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        fs::read(&p).ctx(|| format!("read blob {}", digest::full(d)))
    }

    // ---- layers ----

    /// The directory of layer `diff_id` (its tree is `diff/` inside).
    pub fn layer_dir(&self, diff_id: &Sha256Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.digest())
    }

    /// The unpacked tree of layer `diff_id`.
    pub fn layer_tree(&self, diff_id: &Sha256Digest) -> PathBuf {
        self.layer_dir(diff_id).join("diff")
    }

    /// The record of layer `diff_id`, if the store has it.
    pub fn layer(&self, diff_id: &Sha256Digest) -> Result<Option<LayerRecord>> {
        let p = self.layer_dir(diff_id).join("layer.json");
        if !p.exists() {
            return Ok(None);
        }
        read_json(&p).map(Some)
    }

    /// The diff-ids of every layer in the store.
    pub fn list_layers(&self) -> Result<Vec<Sha256Digest>> {
        let dir = self.root.join("layers");
        let mut out = Vec::new();
        if !dir.is_dir() {
            return Ok(out);
        }
        for e in fs::read_dir(&dir).ctx(|| format!("list {}", dir.display()))? {
            let e = e.ctx(|| format!("list {}", dir.display()))?;
            if let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|n| Sha256Digest::from_str(n).ok())
            {
                out.push(d);
            }
        }
        out.sort_by(|a, b| a.digest().cmp(b.digest()));
        Ok(out)
    }

    // ---- images and tags ----

    fn image_path(&self, id: &Sha256Digest) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", id.digest()))
    }

    /// Image `id`, if the store has it.
    pub fn image(&self, id: &Sha256Digest) -> Result<Option<ImageRecord>> {
        let p = self.image_path(id);
        if !p.exists() {
            return Ok(None);
        }
        read_json(&p).map(Some)
    }

    /// Every image, by id.
    pub fn list_images(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        if !dir.is_dir() {
            return Ok(out);
        }
        let mut names: Vec<PathBuf> = Vec::new();
        for e in fs::read_dir(&dir).ctx(|| format!("list {}", dir.display()))? {
            let e = e.ctx(|| format!("list {}", dir.display()))?;
            if e.file_name().to_string_lossy().ends_with(".json") {
                names.push(e.path());
            }
        }
        names.sort();
        for p in names {
            out.push(read_json(&p)?);
        }
        Ok(out)
    }

    /// Writes image record `rec` (placing it through `txn`).
    pub fn put_image(&self, txn: &mut Txn<'_>, rec: &ImageRecord) -> Result<()> {
        let id = digest::parse(&rec.id)?;
        let path = self.image_path(&id);
        if path.exists() {
            // Same id, same config: keep the record, it says the same.
            return Ok(());
        }
        let staged = self.stage_json(rec)?;
        txn.place(&staged, &path)
    }

    /// Removes image `id`'s record.
    pub fn remove_image(&self, id: &Sha256Digest) -> Result<()> {
        let p = self.image_path(id);
        fs::remove_file(&p).ctx(|| format!("remove {}", p.display()))
    }

    /// tag -> image id.
    pub fn tags(&self) -> Result<BTreeMap<String, String>> {
        let p = self.root.join("tags.json");
        if !p.exists() {
            return Ok(BTreeMap::new());
        }
        read_json(&p)
    }

    /// Replaces the tag table.
    pub fn set_tags(&self, tags: &BTreeMap<String, String>) -> Result<()> {
        self.write_json(&self.root.join("tags.json"), tags)
    }

    /// The image a reference names: a tag, `sha256:HEX`, or a unique prefix of at least 4
    /// hex digits of an id.
    pub fn resolve_image(&self, reference: &str) -> Result<ImageRecord> {
        let tags = self.tags()?;
        // A whole id (`sha256:HEX`, or its 64 hex digits) is always an id, and so is anything
        // spelled `sha256:...`: no tag can take those over (`check_tag` refuses such tags, and
        // a store written before may hold one). Otherwise a tag wins over an id prefix, as in
        // docker.
        let full_id = reference.starts_with("sha256:") || digest::is_hex64(reference);
        // `NAME` stands for `NAME:latest`, as docker takes it.
        let latest = format!("{reference}:latest");
        let tagged = tags
            .get(reference)
            .map(|id| (reference, id))
            .or_else(|| tags.get(&latest).map(|id| (latest.as_str(), id)))
            .filter(|_| !full_id);
        if let Some((reference, id)) = tagged {
            let d = digest::parse(id)?;
            return self.image(&d)?.ok_or_else(|| {
                Error::invalid(format!("tag {reference} names a missing image {id}"))
            });
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hex = hex.to_ascii_lowercase();
            let found: Vec<ImageRecord> = self
                .list_images()?
                .into_iter()
                .filter(|i| i.id.trim_start_matches("sha256:").starts_with(&hex))
                .collect();
            let n = found.len();
            let mut found = found.into_iter();
            match (found.next(), n) {
                (Some(one), 1) => return Ok(one),
                (None, _) => {}
                _ => {
                    return Err(Error::invalid(format!(
                        "image {reference}: ambiguous, {n} images match"
                    )))
                }
            }
        }
        Err(Error::invalid(format!("image {reference}: no such image")))
    }

    /// The tags of image `id`, sorted.
    pub fn tags_of(&self, id: &str) -> Result<Vec<String>> {
        Ok(self
            .tags()?
            .into_iter()
            .filter(|(_, v)| v == id)
            .map(|(k, _)| k)
            .collect())
    }

    // ---- containers ----

    /// The directory of container `name`.
    pub fn container_dir(&self, name: &str) -> PathBuf {
        self.root.join("containers").join(name)
    }

    /// Container `name`.
    pub fn container(&self, name: &str) -> Result<ContainerRecord> {
        check_name(name)?;
        let p = self.container_dir(name).join("container.json");
        if !p.exists() {
            return Err(Error::invalid(format!(
                "container {name}: no such container"
            )));
        }
        read_json(&p)
    }

    /// Rewrites container `rec`'s record.
    pub fn put_container(&self, rec: &ContainerRecord) -> Result<()> {
        self.write_json(&self.container_dir(&rec.name).join("container.json"), rec)
    }

    /// Every container, by name.
    pub fn list_containers(&self) -> Result<Vec<ContainerRecord>> {
        let dir = self.root.join("containers");
        let mut out = Vec::new();
        if !dir.is_dir() {
            return Ok(out);
        }
        let mut names = Vec::new();
        for e in fs::read_dir(&dir).ctx(|| format!("list {}", dir.display()))? {
            let e = e.ctx(|| format!("list {}", dir.display()))?;
            if e.path().join("container.json").exists() {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        for n in names {
            out.push(self.container(&n)?);
        }
        Ok(out)
    }

    // ---- files ----

    /// Writes `value` as JSON to a staging file and returns its path.
    pub fn stage_json<T: Serialize>(&self, value: &T) -> Result<PathBuf> {
        let bytes = serde_json::to_vec_pretty(value).ctx(|| "encode JSON")?;
        self.stage_bytes(&bytes)
    }

    /// Writes `bytes` to a new staging file (synced) and returns its path.
    pub fn stage_bytes(&self, bytes: &[u8]) -> Result<PathBuf> {
        let tmp = self.tmp_dir();
        let mut f = tempfile::Builder::new()
            .prefix("file-")
            .tempfile_in(&tmp)
            .ctx(|| format!("create a file in {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|_| f.as_file().sync_all())
            .ctx(|| format!("write {}", f.path().display()))?;
        let (_, path) = f.keep().map_err(|e| Error::Io {
            what: "keep a staging file".into(),
            source: e.error,
        })?;
        Ok(path)
    }

    /// Replaces `path` with `value` as JSON, atomically.
    pub fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let staged = self.stage_json(value)?;
        fs::rename(&staged, path).ctx(|| format!("rename into {}", path.display()))
    }

    fn write_journal(&self, placed: &[PathBuf]) -> Result<()> {
        let j = Journal {
            placed: placed.to_vec(),
        };
        let jp = self.journal_path();
        self.write_json(&jp, &j)
    }
}

/// A change to the store: everything it places is undone unless [`Txn::commit`] is called,
/// and listed in the journal before it is placed, so a crash is undone by the next writer.
pub struct Txn<'a> {
    store: &'a Store,
    placed: Vec<PathBuf>,
    done: bool,
}

impl Txn<'_> {
    /// Renames `from` to `to`, unless `to` exists already (content-addressed: it holds the
    /// same thing), in which case `from` is dropped.
    pub fn place(&mut self, from: &Path, to: &Path) -> Result<()> {
        if to.exists() {
            return remove_any(from);
        }
        self.placed.push(to.to_path_buf());
        self.store.write_journal(&self.placed)?;
        fs::rename(from, to).ctx(|| format!("rename {} to {}", from.display(), to.display()))
    }

    /// Keeps everything placed.
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        let jp = self.store.journal_path();
        if jp.exists() {
            fs::remove_file(&jp).ctx(|| format!("remove {}", jp.display()))?;
        }
        Ok(())
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for p in self.placed.iter().rev() {
            let _ = remove_any(p);
        }
        let _ = fs::remove_file(self.store.journal_path());
    }
}

/// A staging directory under `tmp/`: whatever is still in it when dropped is removed (read-only
/// directories included).
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = remove_any(&self.path);
    }
}

/// Removes a file or a whole tree (read-only directories and any depth included); nothing
/// there is fine.
pub fn remove_any(p: &Path) -> Result<()> {
    crate::tree::remove_path(p).ctx(|| format!("remove {}", p.display()))
}

/// Makes directory `p` (its parent must exist) readable by its owner alone, or makes an
/// existing one so: the store holds setuid files and device nodes of images, which no other
/// user may reach (containers/storage keeps its layers under 0700 directories too).
pub fn make_private_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match fs::DirBuilder::new().mode(0o700).create(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).ctx(|| format!("create {}", p.display())),
    }
    let md = fs::metadata(p).ctx(|| format!("{}", p.display()))?;
    if !md.is_dir() {
        return Err(Error::invalid(format!("{}: not a directory", p.display())));
    }
    if md.permissions().mode() & 0o7777 != 0o700 {
        fs::set_permissions(p, fs::Permissions::from_mode(0o700))
            .ctx(|| format!("chmod {}", p.display()))?;
    }
    Ok(())
}

/// Reads a JSON document the store wrote.
pub fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Result<T> {
    let bytes = fs::read(p).ctx(|| format!("read {}", p.display()))?;
    serde_json::from_slice(&bytes).ctx(|| format!("parse {}", p.display()))
}

/// Container names: a letter or digit, then letters, digits, `_`, `.` and `-`; at most 128.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .next()
            .map(|b| b.is_ascii_alphanumeric())
            .unwrap_or(false)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "container name {name:?}: use letters, digits, '_', '.' and '-' (starting with a letter or digit)"
        )))
    }
}

/// The default store: `$STRATAFS_STORE`, else `/var/lib/stratafs` as root, else
/// `$XDG_DATA_HOME/stratafs` (`~/.local/share/stratafs`).
pub fn default_root(rootless: bool) -> PathBuf {
    if let Some(s) = std::env::var_os("STRATAFS_STORE") {
        return PathBuf::from(s);
    }
    if !rootless {
        return PathBuf::from("/var/lib/stratafs");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("stratafs");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/stratafs")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("web-1.a_b").is_ok());
        for bad in ["", "-x", "a/b", "..", ".x", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interrupted_change_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), Access::Write, true).unwrap();
            let staged = s.stage_bytes(b"x").unwrap();
            let mut t = s.txn();
            t.place(&staged, &s.root().join("blobs/sha256/aa")).unwrap();
            // A crash: the journal stays, the placed file too.
            std::mem::forget(t);
            let stray = s.staging("import-").unwrap();
            std::mem::forget(stray);
        }
        let s = Store::open(dir.path(), Access::Write, true).unwrap();
        assert!(!s.root().join("blobs/sha256/aa").exists());
        assert!(!s.root().join("journal.json").exists());
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    }
}
