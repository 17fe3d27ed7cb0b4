//! `commit NAME --tag NEW`: a container's upper layer as a new OCI layer on top of its
//! image.
//!
//! The upper is written as a tar in OCI form (char-device whiteouts become `.wh.NAME`
//! files, opaque directories get a `.wh..wh..opq` entry, the overlay's private xattrs are
//! left out, other xattrs go into PAX records), in sorted order so the same upper always
//! gives the same tar, gzip-compressed while both digests are computed. The blob is then
//! imported like any other layer (so it is checked and unpacked by the same code), and a
//! new config (diff-id and history appended) and manifest make the new image.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use oci_spec::image::{HistoryBuilder, ImageConfiguration};
use rustix::fs::OFlags;
use stratafs::layer::format::{self, OPAQUE_MARKER, OPAQUE_XATTRS};
use stratafs::overlay::Attr;
use stratafs::sys::{self, FileKind, Stat};

use crate::digest::{self, HashWriter};
use crate::error::{Context, Error, Result};
use crate::import::{self, Compression, Imported, LayerInput};
use crate::mounts;
use crate::store::Store;
use crate::view::View;

/// The xattrs that make an upper directory a redirect (its lower copies are found at
/// another path) and an upper file a metadata-only copy (its data is in a lower layer):
/// the kernel's names as root and with `userxattr`.
const REDIRECT_XATTRS: [&str; 2] = ["trusted.overlay.redirect", "user.overlay.redirect"];
const METACOPY_XATTRS: [&str; 2] = ["trusted.overlay.metacopy", "user.overlay.metacopy"];

/// Writes the upper directory `upper` of a container whose image has the layer trees
/// `lowers` (topmost first) as an OCI layer tar into `out`.
///
/// An OCI layer has neither redirects nor metadata-only copies, so what those stand for is
/// written out in full, as the merged view of the upper over `lowers` shows it: a
/// redirected directory (a lower directory renamed with `redirect_dir=on`) becomes an
/// opaque directory holding everything it shows, and a metacopy file (`metacopy=on`) a
/// file with the data it shows.
pub fn write_layer_tar<W: Write>(upper: &Path, lowers: &[PathBuf], out: W) -> Result<W> {
    let root = crate::unpack::open_root(upper)?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut w = Walker {
        builder,
        links: HashMap::new(),
        upper: upper.to_path_buf(),
        lowers: lowers.to_vec(),
        view: None,
    };
    w.dir(root.as_fd(), &PathBuf::new())?;
    w.builder.into_inner().ctx(|| "finish the layer tar")
}

struct Walker<W: Write> {
    builder: tar::Builder<W>,
    /// Files with several links -> the path first written.
    links: HashMap<LinkKey, PathBuf>,
    upper: PathBuf,
    lowers: Vec<PathBuf>,
    /// The merged view of the upper over the lowers, opened at the first redirect or
    /// metacopy file.
    view: Option<View>,
}

fn header(st: &Stat, kind: tar::EntryType) -> tar::Header {
    header_of(st.perm(), st.uid, st.gid, st.mtime, kind)
}

fn attr_header(a: &Attr, kind: tar::EntryType) -> tar::Header {
    header_of(a.perm, a.uid, a.gid, a.mtime, kind)
}

fn header_of(
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: std::time::SystemTime,
    kind: tar::EntryType,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(u32::from(perm));
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    let secs = mtime
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    h.set_mtime(secs);
    h.set_size(0);
    h
}

/// A file with several links: by (dev, ino) in the upper, by the number the merged view
/// shows below a redirected directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LinkKey {
    Upper(u64, u64),
    View(stratafs::layer::Ino),
}

/// What a tar entry holds besides its header.
enum Body {
    /// Nothing (a directory, a fifo, a whiteout file).
    Empty,
    /// This many bytes of this reader (a regular file): exactly, or the tar fails.
    Data(Box<dyn io::Read>, u64),
    /// The target of a symlink or of a hard link (the header's type says which).
    Link(PathBuf),
    /// A device's major and minor numbers.
    Device(u32, u32),
}

/// Reads exactly `left` bytes of `inner`: fewer (a file cut short while it is read) is an
/// error, and more are not read, so the tar never holds data of another length than its
/// header says.
struct Exactly {
    inner: Box<dyn io::Read>,
    left: u64,
}

impl io::Read for Exactly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "changed while it was being read",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The tar type of a file kind, with the body of a device (`None` for a fifo).
fn device_entry(kind: FileKind, rdev: u64) -> Option<(tar::EntryType, Body)> {
    match kind {
        FileKind::CharDevice => Some((
            tar::EntryType::Char,
            Body::Device(sys::dev_major(rdev), sys::dev_minor(rdev)),
        )),
        FileKind::BlockDevice => Some((
            tar::EntryType::Block,
            Body::Device(sys::dev_major(rdev), sys::dev_minor(rdev)),
        )),
        FileKind::Fifo => Some((tar::EntryType::Fifo, Body::Empty)),
        _ => None,
    }
}

/// True when `name` under `dir` carries one of `xattrs`.
fn has_xattr(dir: BorrowedFd<'_>, name: &OsStr, xattrs: &[&str]) -> io::Result<bool> {
    for x in xattrs {
        match sys::get_xattr_at(dir, name, OsStr::new(x)) {
            Ok(Some(_)) => return Ok(true),
            Ok(None) => {}
            Err(e) if stratafs::layer::is_unsupported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

fn is_opaque_xattr(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    for x in OPAQUE_XATTRS {
        match sys::get_xattr_at(dir, name, OsStr::new(x)) {
            Ok(Some(v)) if format::is_opaque_value(&v) => return Ok(true),
            Ok(_) => {}
            Err(e) if stratafs::layer::is_unsupported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

impl<W: Write> Walker<W> {
    fn fail(&self, path: &Path, e: impl std::fmt::Display) -> Error {
        Error::invalid(format!("{}: {}: {e}", self.upper.display(), path.display()))
    }

    /// The PAX records for the user-visible xattrs of `name` under `dir`, sorted.
    fn xattrs(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let list = match sys::list_xattr_at(dir, name) {
            Ok(l) => l,
            Err(e) if stratafs::layer::is_unsupported(&e) => return Ok(Vec::new()),
            Err(e) => return Err(self.fail(path, e)),
        };
        let mut out = Vec::new();
        for x in sys::split_xattr_list(&list) {
            if format::is_private_xattr(x) {
                continue;
            }
            if let Some(v) = sys::get_xattr_at(dir, name, x).map_err(|e| self.fail(path, e))? {
                let key = format!("SCHILY.xattr.{}", x.to_string_lossy());
                out.push((key, v));
            }
        }
        out.sort();
        Ok(out)
    }

    fn pax(&mut self, recs: &[(String, Vec<u8>)], path: &Path) -> Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        let it = recs.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        self.builder
            .append_pax_extensions(it)
            .map_err(|e| self.fail(path, e))
    }

    /// Appends one entry with header `h` (type, mode, owner and time set), its PAX
    /// records `x` and what it holds.
    fn append(
        &mut self,
        path: &Path,
        x: &[(String, Vec<u8>)],
        mut h: tar::Header,
        body: Body,
    ) -> Result<()> {
        self.pax(x, path)?;
        let r = match body {
            Body::Empty => self.builder.append_data(&mut h, path, io::empty()),
            Body::Data(data, size) => {
                h.set_size(size);
                let mut exact = Exactly {
                    inner: data,
                    left: size,
                };
                self.builder.append_data(&mut h, path, &mut exact)
            }
            Body::Link(target) => self.builder.append_link(&mut h, path, &target),
            Body::Device(major, minor) => {
                h.set_device_major(major)
                    .and_then(|()| h.set_device_minor(minor))
                    .map_err(|e| self.fail(path, e))?;
                self.builder.append_data(&mut h, path, io::empty())
            }
        };
        r.map_err(|e| self.fail(path, e))
    }

    fn empty_file(&mut self, path: &Path, st: &Stat) -> Result<()> {
        let mut h = header(st, tar::EntryType::Regular);
        h.set_mode(0o644);
        self.builder
            .append_data(&mut h, path, io::empty())
            .map_err(|e| self.fail(path, e))
    }

    fn dir(&mut self, dir: BorrowedFd<'_>, rel: &Path) -> Result<()> {
        // (name in the tar, name in the upper, attributes), in the tar's name order.
        let mut entries: Vec<(OsString, OsString, Stat)> = Vec::new();
        for e in sys::list_dir(dir).map_err(|e| self.fail(rel, e))? {
            let st =
                sys::stat_at(dir, &e.name).map_err(|err| self.fail(&rel.join(&e.name), err))?;
            let out = if format::is_whiteout_stat(&st) {
                format::whiteout_name(&e.name)
            } else {
                e.name.clone()
            };
            entries.push((out, e.name, st));
        }
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (out, name, st) in entries {
            let path = rel.join(&name);
            if format::is_whiteout_stat(&st) {
                self.empty_file(&rel.join(out), &st)?;
                continue;
            }
            let x = self.xattrs(dir, &name, &path)?;
            let special = match st.kind() {
                Some(FileKind::Directory) => REDIRECT_XATTRS.as_slice(),
                Some(FileKind::Regular) => METACOPY_XATTRS.as_slice(),
                _ => &[],
            };
            if !special.is_empty()
                && has_xattr(dir, &name, special).map_err(|e| self.fail(&path, e))?
            {
                self.write_merged(&path)?;
                continue;
            }
            let h = |kind| header(&st, kind);
            match st.kind() {
                Some(FileKind::Directory) => {
                    self.append(&path, &x, h(tar::EntryType::Directory), Body::Empty)?;
                    let sub = sys::open_dir_path(dir, name.as_bytes())
                        .map_err(|e| self.fail(&path, e))?;
                    let has_marker = sys::stat_at(sub.as_fd(), OsStr::new(OPAQUE_MARKER)).is_ok();
                    if !has_marker
                        && is_opaque_xattr(dir, &name).map_err(|e| self.fail(&path, e))?
                    {
                        self.empty_file(&path.join(OPAQUE_MARKER), &st)?;
                    }
                    self.dir(sub.as_fd(), &path)?;
                }
                Some(FileKind::Regular) => {
                    if st.nlink > 1 {
                        let key = LinkKey::Upper(st.dev, st.ino);
                        if let Some(first) = self.links.get(&key).cloned() {
                            self.append(&path, &x, h(tar::EntryType::Link), Body::Link(first))?;
                            continue;
                        }
                        self.links.insert(key, path.clone());
                    }
                    let fd = sys::open_beneath(dir, name.as_bytes(), OFlags::RDONLY)
                        .map_err(|e| self.fail(&path, e))?;
                    let file = std::fs::File::from(fd);
                    let now = sys::stat_fd(file.as_fd()).map_err(|e| self.fail(&path, e))?;
                    if now.size != st.size {
                        return Err(self.fail(&path, "changed while it was being read"));
                    }
                    let body = Body::Data(Box::new(file), st.size);
                    self.append(&path, &x, h(tar::EntryType::Regular), body)?;
                }
                Some(FileKind::Symlink) => {
                    let fd = sys::open_beneath(dir, name.as_bytes(), OFlags::PATH)
                        .map_err(|e| self.fail(&path, e))?;
                    let target = sys::read_link_fd(fd.as_fd()).map_err(|e| self.fail(&path, e))?;
                    let target = PathBuf::from(OsString::from_vec(target));
                    self.append(&path, &x, h(tar::EntryType::Symlink), Body::Link(target))?;
                }
                // Devices and fifos; sockets have no place in a tar (docker leaves them
                // out too).
                Some(k) => {
                    if let Some((kind, body)) = device_entry(k, st.rdev) {
                        self.append(&path, &x, h(kind), body)?;
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Writes `path` (a redirected directory, with everything it shows, or a metacopy
    /// file) as the merged view shows it.
    fn write_merged(&mut self, path: &Path) -> Result<()> {
        if self.view.is_none() {
            let mut layers = vec![self.upper.clone()];
            layers.extend(self.lowers.iter().cloned());
            self.view = Some(View::open(&layers)?);
        }
        let attr = match &self.view {
            Some(v) => v.at(path)?,
            None => None,
        };
        let attr = attr.ok_or_else(|| self.fail(path, "not shown by the merged view"))?;
        self.view_entry(path, &attr, true)
    }

    /// Writes the merged view's `attr` at `path`, and everything below a directory.
    /// `top` marks the redirected directory itself, made opaque in the tar so that nothing
    /// the image had at its path shows through.
    fn view_entry(&mut self, path: &Path, attr: &Attr, top: bool) -> Result<()> {
        let Some(view) = self.view.take() else {
            return Err(self.fail(path, "no merged view"));
        };
        let r = self.view_entry_in(&view, path, attr, top);
        self.view = Some(view);
        r
    }

    fn view_entry_in(&mut self, view: &View, path: &Path, a: &Attr, top: bool) -> Result<()> {
        let x: Vec<(String, Vec<u8>)> = view
            .xattrs(a.node)?
            .into_iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{}", k.to_string_lossy()), v))
            .collect();
        let h = |kind| attr_header(a, kind);
        match a.kind {
            FileKind::Directory => {
                self.append(path, &x, h(tar::EntryType::Directory), Body::Empty)?;
                if top {
                    let mut m = h(tar::EntryType::Regular);
                    m.set_mode(0o644);
                    self.append(&path.join(OPAQUE_MARKER), &[], m, Body::Empty)?;
                }
                let mut children = view.children(a.node)?;
                children.sort_by(|p, q| p.0.as_bytes().cmp(q.0.as_bytes()));
                for (name, _) in children {
                    let child = path.join(&name);
                    let ca = view
                        .lookup(a.node, &name)?
                        .ok_or_else(|| self.fail(&child, "vanished from the merged view"))?;
                    self.view_entry_in(view, &child, &ca, false)?;
                }
            }
            FileKind::Regular => {
                if a.nlink > 1 {
                    let key = LinkKey::View(a.ino);
                    if let Some(first) = self.links.get(&key).cloned() {
                        self.append(path, &x, h(tar::EntryType::Link), Body::Link(first))?;
                        return Ok(());
                    }
                    self.links.insert(key, path.to_path_buf());
                }
                let file = std::fs::File::from(view.open_file(a.node)?);
                let body = Body::Data(Box::new(file), a.size);
                self.append(path, &x, h(tar::EntryType::Regular), body)?;
            }
            FileKind::Symlink => {
                let target = PathBuf::from(OsString::from_vec(view.readlink(a.node)?));
                self.append(path, &x, h(tar::EntryType::Symlink), Body::Link(target))?;
            }
            k => {
                if let Some((kind, body)) = device_entry(k, u64::from(a.rdev)) {
                    self.append(path, &x, h(kind), body)?;
                }
            }
        }
        Ok(())
    }
}

/// `commit NAME --tag NEW`: returns the new image's id.
pub fn run(store: &Store, name: &str, tag: &str) -> Result<String> {
    import::check_tag(tag)?;
    let ctr = store.container(name)?;
    if mounts::is_live(&ctr) {
        return Err(Error::invalid(format!(
            "container {name} is mounted: umount it first, so the upper layer holds still"
        )));
    }
    let base_id = digest::parse(&ctr.image)?;
    let base = store.image(&base_id)?.ok_or_else(|| {
        Error::invalid(format!("container {name}: its image {} is gone", ctr.image))
    })?;
    let upper = store.container_dir(name).join("upper");

    let staging = store.staging("commit-")?;
    let blob_path = staging.path().join("layer.tar.gz");
    let file =
        std::fs::File::create(&blob_path).ctx(|| format!("create {}", blob_path.display()))?;
    let blob_hash = HashWriter::new(io::BufWriter::new(file));
    let gz = flate2::write::GzEncoder::new(blob_hash, flate2::Compression::default());
    let diff_hash = HashWriter::new(gz);
    let lowers = crate::diff::lower_trees(store, &ctr)?;
    let diff_hash = write_layer_tar(&upper, &lowers, diff_hash)?;
    let (diff_id, _, gz) = diff_hash.finish();
    let blob_hash = gz.finish().ctx(|| "compress the layer")?;
    let (blob_digest, blob_size, buf) = blob_hash.finish();
    let file = buf
        .into_inner()
        .map_err(|e| Error::invalid(format!("write {}: {}", blob_path.display(), e.error())))?;
    file.sync_all()
        .ctx(|| format!("sync {}", blob_path.display()))?;
    drop(file);

    let mut txn = store.txn();
    let reader = std::fs::File::open(&blob_path).ctx(|| format!("open {}", blob_path.display()))?;
    let new_layer = import::import_layer(
        store,
        &mut txn,
        LayerInput {
            reader: Box::new(reader),
            // The container's own changes: no expansion limit (the free-space check holds).
            max_size: Some(u64::MAX),
            size: blob_size,
            digest: Some(blob_digest),
            diff_id: diff_id.clone(),
        },
    )?;

    let config_bytes = store.read_blob(&digest::parse(&base.id)?)?;
    let mut config: ImageConfiguration =
        serde_json::from_slice(&config_bytes).ctx(|| format!("image config {}", base.id))?;
    config
        .rootfs_mut()
        .diff_ids_mut()
        .push(digest::full(&diff_id));
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let entry = HistoryBuilder::default()
        .created(now.clone())
        .created_by(format!("stratafs-mount commit {name}"))
        .build()
        .ctx(|| "history entry")?;
    config
        .history_mut()
        .get_or_insert_with(Vec::new)
        .push(entry);
    config.set_created(Some(now));
    let new_config = serde_json::to_vec(&config).ctx(|| "encode the image config")?;

    let mut layers: Vec<Imported> = Vec::new();
    for l in &base.layers {
        layers.push(Imported {
            digest: digest::parse(&l.digest)?,
            size: l.size,
            compression: match l.media_type.as_str() {
                m if m.ends_with("+gzip") => Compression::Gzip,
                m if m.ends_with("+zstd") => Compression::Zstd,
                _ => Compression::None,
            },
            diff_id: digest::parse(&l.diff_id)?,
        });
    }
    layers.push(new_layer);
    let rec = import::add_image(
        store,
        &mut txn,
        &new_config,
        &layers,
        &format!("commit {name}"),
    )?;
    txn.commit()?;
    import::set_tag(store, tag, &rec.id)?;
    Ok(rec.id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Read;

    /// path -> (type, size, link name, PAX records)
    type Entries = BTreeMap<String, (tar::EntryType, u64, Option<String>, Vec<(String, Vec<u8>)>)>;

    fn entries(tar_bytes: &[u8]) -> Entries {
        let mut out = BTreeMap::new();
        let mut ar = tar::Archive::new(tar_bytes);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let pax: Vec<(String, Vec<u8>)> = match e.pax_extensions().unwrap() {
                Some(p) => p
                    .map(|x| {
                        let x = x.unwrap();
                        (x.key().unwrap().to_string(), x.value_bytes().to_vec())
                    })
                    .collect(),
                None => Vec::new(),
            };
            let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let link = e
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned());
            let kind = e.header().entry_type();
            let size = e.size();
            let mut sink = Vec::new();
            e.read_to_end(&mut sink).unwrap();
            out.insert(path, (kind, size, link, pax));
        }
        out
    }

    #[test]
    fn upper_as_oci_layer() {
        let dir = tempfile::tempdir().unwrap();
        let u = dir.path();
        std::fs::create_dir(u.join("d")).unwrap();
        std::fs::write(u.join("d/f"), b"data").unwrap();
        std::fs::hard_link(u.join("d/f"), u.join("d/g")).unwrap();
        std::os::unix::fs::symlink("d/f", u.join("s")).unwrap();
        // A rootless upper: .wh. files and the user.overlay.* opaque xattr.
        std::fs::write(u.join(".wh.gone"), b"").unwrap();
        std::fs::create_dir(u.join("opq")).unwrap();
        let set = |p: &str, k: &str, v: &[u8]| {
            rustix::fs::lsetxattr(u.join(p), k, v, rustix::fs::XattrFlags::empty()).unwrap()
        };
        set("opq", "user.overlay.opaque", b"y");
        set("d/f", "user.keep", b"1");
        set("d/f", "user.overlay.origin", b"private");
        let root = rustix::process::geteuid().is_root();
        if root {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                u.join("d/wh"),
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                0,
            )
            .unwrap();
        }
        let a = write_layer_tar(u, &[], Vec::new()).unwrap();
        let b = write_layer_tar(u, &[], Vec::new()).unwrap();
        assert_eq!(a, b, "the same upper gives the same tar");
        let e = entries(&a);
        use tar::EntryType as T;
        assert_eq!(e["d"].0, T::Directory);
        assert_eq!(e["d/f"].0, T::Regular);
        assert_eq!(e["d/f"].1, 4);
        assert_eq!(
            e["d/f"].3,
            vec![("SCHILY.xattr.user.keep".to_string(), b"1".to_vec())]
        );
        assert_eq!(e["d/g"].0, T::Link);
        assert_eq!(e["d/g"].2.as_deref(), Some("d/f"));
        assert_eq!(e["s"].0, T::Symlink);
        assert_eq!(e["s"].2.as_deref(), Some("d/f"));
        assert_eq!(e[".wh.gone"].0, T::Regular);
        assert_eq!(e["opq/.wh..wh..opq"].0, T::Regular);
        assert!(e["opq"].3.is_empty(), "private xattrs are not exported");
        if root {
            assert_eq!(e["d/.wh.wh"].0, T::Regular, "char 0/0 becomes .wh.");
            assert!(!e.contains_key("d/wh"));
        }
        // Written in name order, a directory before its children.
        let mut ar = tar::Archive::new(&a[..]);
        let order: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|x| String::from_utf8_lossy(&x.unwrap().path_bytes()).into_owned())
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
    }
}
