//! The snapshots: their records in an embedded transactional store (redb) and their layer
//! directories under the root, with containerd's snapshotter semantics (as
//! `snapshots/storage` and the overlayfs snapshotter of containerd define them).
//!
//! ```text
//! ROOT/lock                  flock: one snapshotter per root
//! ROOT/metadata.db           redb: key -> record, and the id counter
//! ROOT/snapshots/ID/fs       the snapshot's own layer (the upper layer while it is active)
//! ROOT/snapshots/ID/work     stratafs's work directory (active snapshots)
//! ROOT/tmp/new-ID            a snapshot's directories while it is being made
//! ROOT/trash/ID              a snapshot's directories on their way out
//! ```
//!
//! Every change is one redb write transaction, which is durable once committed: a crash
//! leaves the old or the new records. Directories are made under `tmp/` and renamed into
//! `snapshots/` inside the transaction, before its commit; removals rename into `trash/`
//! before the commit and delete after it. On start (and on `Cleanup`) a directory under
//! `snapshots/` without a record, and everything under `tmp/`, is deleted; a directory in
//! `trash/` whose record still exists (a crash between the rename and the commit) is put
//! back. So the directories always follow the records.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::error::{Context, Error, Result};
use super::filter::Filters;

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_ID: &str = "next_id";

/// The largest label (key and value together), as containerd's `labels.Validate`.
const MAX_LABEL: usize = 4096;

/// Labels that ask for an id-mapped mount (containerd 1.7 and later set them on a
/// container's snapshot when it runs in a user namespace).
pub const UIDMAPPING_LABEL: &str = "containerd.io/snapshot/uidmapping";
/// See [`UIDMAPPING_LABEL`].
pub const GIDMAPPING_LABEL: &str = "containerd.io/snapshot/gidmapping";

/// What a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A read-only view of a committed snapshot.
    View,
    /// Writable, not yet committed.
    Active,
    /// Committed: read-only, may be a parent.
    Committed,
}

impl Kind {
    /// The name containerd's filters use (`kind==committed`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// A point in time, as the records keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    /// Seconds since the epoch.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: i32,
}

impl Time {
    fn now() -> Time {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        }
    }
}

/// Disk use of a snapshot's own layer: bytes of blocks allocated, and inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes (allocated blocks, as containerd's `fs.DiskUsage` counts them).
    pub size: i64,
    /// Inodes (a hard-linked file once).
    pub inodes: i64,
}

/// One snapshot as the store keeps it, under its key (active, view) or name (committed).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: u64,
    kind: Kind,
    #[serde(default)]
    parent: String,
    created: Time,
    updated: Time,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Measured at commit (a committed layer does not change).
    #[serde(default)]
    usage: Option<Usage>,
}

/// A snapshot as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Its key (active, view) or name (committed).
    pub name: String,
    /// The committed snapshot under it, or empty.
    pub parent: String,
    /// What it is.
    pub kind: Kind,
    /// When it was made.
    pub created: Time,
    /// When its labels last changed.
    pub updated: Time,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// One mount of a snapshot, as containerd's `Mount` message carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `bind` or `fuse3.stratafs`.
    pub kind: String,
    /// The directory (bind) or the name shown as the mount's source.
    pub source: String,
    /// fstab-style options.
    pub options: Vec<String>,
}

/// Options of the snapshotter that shape every union mount.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Add `redirect_dir=on` to union mounts.
    pub redirect_dir: bool,
    /// Add `metacopy=on` to union mounts.
    pub metacopy: bool,
}

/// The open store of one root. Changes are serialized (one redb write transaction at a time
/// anyway); reads run beside them.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    db: Database,
    opts: Options,
    changing: Mutex<()>,
    _lock: File,
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

fn check_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(invalid(format!("{what} must not be empty")));
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        if k.len() + v.len() > MAX_LABEL {
            return Err(invalid(format!(
                "label {k:?}: key and value length ({} bytes) greater than maximum size ({MAX_LABEL} bytes)",
                k.len() + v.len()
            )));
        }
    }
    Ok(())
}

fn get<T: ReadableTable<&'static str, &'static [u8]>>(t: &T, key: &str) -> Result<Option<Record>> {
    match t.get(key)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

fn all<T: ReadableTable<&'static str, &'static [u8]>>(t: &T) -> Result<Vec<(String, Record)>> {
    let mut out = Vec::new();
    for entry in t.iter()? {
        let (k, v) = entry?;
        out.push((k.value().to_string(), serde_json::from_slice(v.value())?));
    }
    Ok(out)
}

fn not_found(key: &str) -> Error {
    Error::NotFound(format!("snapshot {key:?} does not exist"))
}

/// The ids of `rec`'s parents, nearest first.
fn parent_ids<T: ReadableTable<&'static str, &'static [u8]>>(
    t: &T,
    rec: &Record,
) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut parent = rec.parent.clone();
    while !parent.is_empty() {
        let Some(p) = get(t, &parent)? else {
            return Err(Error::Meta(format!(
                "parent {parent:?} of a snapshot is missing"
            )));
        };
        ids.push(p.id);
        if ids.len() > 100_000 {
            return Err(Error::Meta("a parent chain loops".to_string()));
        }
        parent = p.parent;
    }
    Ok(ids)
}

fn info(name: String, r: Record) -> Info {
    Info {
        name,
        parent: r.parent,
        kind: r.kind,
        created: r.created,
        updated: r.updated,
        labels: r.labels,
    }
}

/// Disk use of a directory tree, not following symlinks, not leaving its filesystem.
pub fn disk_usage(dir: &Path) -> Result<Usage> {
    let mut seen = std::collections::HashSet::new();
    let mut usage = Usage::default();
    let top = fs::symlink_metadata(dir).ctx(|| format!("stat {}", dir.display()))?;
    let mut stack = vec![dir.to_path_buf()];
    let mut add = |m: &fs::Metadata, u: &mut Usage| {
        if seen.insert((m.dev(), m.ino())) {
            u.inodes += 1;
            u.size += i64::try_from(m.blocks().saturating_mul(512)).unwrap_or(i64::MAX);
        }
    };
    add(&top, &mut usage);
    while let Some(d) = stack.pop() {
        let rd = fs::read_dir(&d).ctx(|| format!("read {}", d.display()))?;
        for e in rd {
            let e = e.ctx(|| format!("read {}", d.display()))?;
            let m =
                fs::symlink_metadata(e.path()).ctx(|| format!("stat {}", e.path().display()))?;
            add(&m, &mut usage);
            if m.is_dir() && m.dev() == top.dev() {
                stack.push(e.path());
            }
        }
    }
    Ok(usage)
}

fn remove_tree(p: &Path) {
    if let Err(e) = fs::remove_dir_all(p) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {}: {e}", p.display());
        }
    }
}

impl Store {
    /// Opens (making it if needed) the store at `root`, takes its lock, and brings the
    /// directories in line with the records (see the module's notes).
    pub fn open(root: &Path, opts: Options) -> Result<Store> {
        let mkdir = |p: &Path| {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)
                .ctx(|| format!("create {}", p.display()))
        };
        mkdir(root)?;
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .ctx(|| format!("open {}", lock_path.display()))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(std::io::Error::from)
            .ctx(|| {
                format!(
                    "lock {} (is another stratafs-snapshotter using this root?)",
                    lock_path.display()
                )
            })?;
        for d in ["snapshots", "tmp", "trash"] {
            mkdir(&root.join(d))?;
        }
        let db = Database::create(root.join("metadata.db"))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(SNAPSHOTS)?;
            txn.open_table(COUNTERS)?;
        }
        txn.commit()?;
        let store = Store {
            root: root.to_path_buf(),
            db,
            opts,
            changing: Mutex::new(()),
            _lock: lock,
        };
        store.cleanup()?;
        Ok(store)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn fs_dir(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mounts of a snapshot with these parents, shaped as containerd's overlayfs
    /// snapshotter shapes them, with stratafs for the union.
    fn mounts_of(&self, rec: &Record, parents: &[u64]) -> Vec<Mount> {
        let bind = |dir: PathBuf, rw: bool| Mount {
            kind: "bind".to_string(),
            source: dir.display().to_string(),
            options: vec![
                if rw { "rw" } else { "ro" }.to_string(),
                "rbind".to_string(),
            ],
        };
        if parents.is_empty() {
            return vec![bind(self.fs_dir(rec.id), rec.kind == Kind::Active)];
        }
        if rec.kind == Kind::View && parents.len() == 1 {
            return vec![bind(self.fs_dir(parents[0]), false)];
        }
        let mut options = Vec::new();
        if rec.kind == Kind::Active {
            options.push(format!(
                "workdir={}",
                self.dir(rec.id).join("work").display()
            ));
            options.push(format!("upperdir={}", self.fs_dir(rec.id).display()));
        }
        let lowers: Vec<String> = parents
            .iter()
            .map(|id| self.fs_dir(*id).display().to_string())
            .collect();
        options.push(format!("lowerdir={}", lowers.join(":")));
        if let Some(m) = rec.labels.get(UIDMAPPING_LABEL) {
            options.push(format!("uidmapping={m}"));
        }
        if let Some(m) = rec.labels.get(GIDMAPPING_LABEL) {
            options.push(format!("gidmapping={m}"));
        }
        if self.opts.redirect_dir {
            options.push("redirect_dir=on".to_string());
        }
        if self.opts.metacopy {
            options.push("metacopy=on".to_string());
        }
        vec![Mount {
            kind: "fuse3.stratafs".to_string(),
            source: "overlay".to_string(),
            options,
        }]
    }

    /// `Prepare` (kind active) and `View` (kind view): a new snapshot on `parent`.
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        check_key("key", key)?;
        check_labels(&labels)?;
        if kind == Kind::Committed {
            return Err(invalid("a new snapshot is active or a view".to_string()));
        }
        let _g = self.lock();
        let txn = self.db.begin_write()?;
        let (rec, parents, owner) = {
            let mut t = txn.open_table(SNAPSHOTS)?;
            if get(&t, key)?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {key:?} already exists"
                )));
            }
            let mut owner = None;
            if !parent.is_empty() {
                let Some(p) = get(&t, parent)? else {
                    return Err(Error::NotFound(format!(
                        "parent snapshot {parent:?} does not exist"
                    )));
                };
                if p.kind != Kind::Committed {
                    return Err(Error::FailedPrecondition(format!(
                        "parent {parent:?} is not a committed snapshot"
                    )));
                }
                let m = fs::symlink_metadata(self.fs_dir(p.id))
                    .ctx(|| format!("stat the layer of {parent:?}"))?;
                owner = Some((m.uid(), m.gid()));
            }
            let mut counters = txn.open_table(COUNTERS)?;
            let id = counters.get(NEXT_ID)?.map(|v| v.value()).unwrap_or(0) + 1;
            counters.insert(NEXT_ID, id)?;
            let now = Time::now();
            let rec = Record {
                id,
                kind,
                parent: parent.to_string(),
                created: now,
                updated: now,
                labels,
                usage: None,
            };
            t.insert(key, serde_json::to_vec(&rec)?.as_slice())?;
            let parents = parent_ids(&t, &rec)?;
            (rec, parents, owner)
        };
        let tmp = self.root.join("tmp").join(format!("new-{}", rec.id));
        let made = (|| {
            let mkdir = |p: &Path| {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(p)
                    .ctx(|| format!("create {}", p.display()))
            };
            mkdir(&tmp)?;
            mkdir(&tmp.join("fs"))?;
            if kind == Kind::Active {
                mkdir(&tmp.join("work"))?;
            }
            // The new upper layer's root takes its parent's owner, as in containerd's
            // overlayfs snapshotter (so an image's non-root root directory stays so).
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(tmp.join("fs"), Some(uid), Some(gid))
                    .ctx(|| "chown the new layer".to_string())?;
            }
            fs::rename(&tmp, self.dir(rec.id))
                .ctx(|| format!("rename into {}", self.dir(rec.id).display()))
        })();
        if let Err(e) = made {
            remove_tree(&tmp);
            return Err(e);
        }
        if let Err(e) = txn.commit() {
            remove_tree(&self.dir(rec.id));
            return Err(e.into());
        }
        tracing::info!(
            key,
            parent,
            id = rec.id,
            kind = kind.name(),
            "snapshot made"
        );
        Ok(self.mounts_of(&rec, &parents))
    }

    /// `Mounts`: how to mount an active snapshot or a view.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        check_key("key", key)?;
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SNAPSHOTS)?;
        let rec = get(&t, key)?.ok_or_else(|| not_found(key))?;
        if rec.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is committed: only active snapshots and views have mounts"
            )));
        }
        let parents = parent_ids(&t, &rec)?;
        Ok(self.mounts_of(&rec, &parents))
    }

    /// `Commit`: the active snapshot `key` becomes the committed snapshot `name`.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        check_key("name", name)?;
        check_key("key", key)?;
        check_labels(&labels)?;
        let _g = self.lock();
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(SNAPSHOTS)?;
            let mut rec = get(&t, key)?.ok_or_else(|| not_found(key))?;
            if rec.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            if get(&t, name)?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {name:?} already exists"
                )));
            }
            let usage = disk_usage(&self.fs_dir(rec.id))?;
            let now = Time::now();
            rec.kind = Kind::Committed;
            rec.labels = labels;
            rec.created = now;
            rec.updated = now;
            rec.usage = Some(usage);
            t.remove(key)?;
            t.insert(name, serde_json::to_vec(&rec)?.as_slice())?;
        }
        txn.commit()?;
        tracing::info!(key, name, "snapshot committed");
        Ok(())
    }

    /// `Remove`: refused while another snapshot has this one as its parent.
    pub fn remove(&self, key: &str) -> Result<()> {
        check_key("key", key)?;
        let _g = self.lock();
        let txn = self.db.begin_write()?;
        let id = {
            let mut t = txn.open_table(SNAPSHOTS)?;
            let rec = get(&t, key)?.ok_or_else(|| not_found(key))?;
            if let Some((child, _)) = all(&t)?.into_iter().find(|(_, r)| r.parent == key) {
                return Err(Error::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?}: snapshot {child:?} is its child"
                )));
            }
            t.remove(key)?;
            rec.id
        };
        let (dir, aside) = (self.dir(id), self.root.join("trash").join(id.to_string()));
        let moved = match fs::rename(&dir, &aside) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e).ctx(|| format!("rename {} aside", dir.display())),
        };
        if let Err(e) = txn.commit() {
            if moved {
                let _ = fs::rename(&aside, &dir);
            }
            return Err(e.into());
        }
        remove_tree(&aside);
        tracing::info!(key, id, "snapshot removed");
        Ok(())
    }

    /// `Stat`.
    pub fn stat(&self, key: &str) -> Result<Info> {
        check_key("key", key)?;
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SNAPSHOTS)?;
        let rec = get(&t, key)?.ok_or_else(|| not_found(key))?;
        Ok(info(key.to_string(), rec))
    }

    /// `Update`: the labels, all of them (no field paths, or `labels`) or one each
    /// (`labels.KEY`: set to the given value, or removed when the given info lacks it).
    /// Other fields cannot change.
    pub fn update(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Info> {
        check_key("name", name)?;
        let _g = self.lock();
        let txn = self.db.begin_write()?;
        let rec = {
            let mut t = txn.open_table(SNAPSHOTS)?;
            let mut rec = get(&t, name)?.ok_or_else(|| not_found(name))?;
            if paths.is_empty() {
                rec.labels = labels.clone();
            }
            for p in paths {
                if p == "labels" {
                    rec.labels = labels.clone();
                } else if let Some(k) = p.strip_prefix("labels.") {
                    match labels.get(k) {
                        Some(v) => rec.labels.insert(k.to_string(), v.clone()),
                        None => rec.labels.remove(k),
                    };
                } else {
                    return Err(invalid(format!(
                        "cannot update {p:?} field on snapshot {name:?}"
                    )));
                }
            }
            check_labels(&rec.labels)?;
            rec.updated = Time::now();
            t.insert(name, serde_json::to_vec(&rec)?.as_slice())?;
            rec
        };
        txn.commit()?;
        Ok(info(name.to_string(), rec))
    }

    /// `List`: every snapshot that matches one of the filters (all when there are none).
    pub fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filters = Filters::parse(filters)?;
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SNAPSHOTS)?;
        Ok(all(&t)?
            .into_iter()
            .map(|(k, r)| info(k, r))
            .filter(|i| filters.matches(i))
            .collect())
    }

    /// `Usage`: of the snapshot's own layer (measured now unless committed).
    pub fn usage(&self, key: &str) -> Result<Usage> {
        check_key("key", key)?;
        let rec = {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(SNAPSHOTS)?;
            get(&t, key)?.ok_or_else(|| not_found(key))?
        };
        match rec.usage {
            Some(u) if rec.kind == Kind::Committed => Ok(u),
            _ => disk_usage(&self.fs_dir(rec.id)),
        }
    }

    /// The number of snapshots.
    pub fn len(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(SNAPSHOTS)?.len()?)
    }

    /// Whether there are no snapshots.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// `Cleanup` (and the start): directories follow the records (see the module's notes).
    pub fn cleanup(&self) -> Result<()> {
        let _g = self.lock();
        let ids: std::collections::HashSet<u64> = {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(SNAPSHOTS)?;
            all(&t)?.into_iter().map(|(_, r)| r.id).collect()
        };
        let entries = |d: &Path| -> Result<Vec<(String, PathBuf)>> {
            let rd = fs::read_dir(d).ctx(|| format!("read {}", d.display()))?;
            let mut v = Vec::new();
            for e in rd {
                let e = e.ctx(|| format!("read {}", d.display()))?;
                v.push((e.file_name().to_string_lossy().into_owned(), e.path()));
            }
            Ok(v)
        };
        for (name, path) in entries(&self.root.join("trash"))? {
            match name.parse::<u64>() {
                Ok(id) if ids.contains(&id) && !self.dir(id).exists() => {
                    tracing::warn!(id, "a removal did not finish: the snapshot's layer is back");
                    fs::rename(&path, self.dir(id))
                        .ctx(|| format!("rename {} back", path.display()))?;
                }
                _ => remove_tree(&path),
            }
        }
        for (_, path) in entries(&self.root.join("tmp"))? {
            remove_tree(&path);
        }
        for (name, path) in entries(&self.root.join("snapshots"))? {
            if name.parse::<u64>().is_ok_and(|id| ids.contains(&id)) {
                continue;
            }
            tracing::info!("removing {}: no snapshot owns it", path.display());
            let aside = self.root.join("trash").join(format!("orphan-{name}"));
            fs::rename(&path, &aside).ctx(|| format!("rename {} aside", path.display()))?;
            remove_tree(&aside);
        }
        Ok(())
    }
}
