//! Image sources: an OCI image layout directory, an OCI archive (the same layout in a tar),
//! or a docker-archive (`docker save`). Each yields the image's config and, per layer, a
//! reader of its blob with the size and digests the image claims for it.
//!
//! The source is untrusted: files of a layout directory are opened beneath it without
//! following symlinks, members of an archive are found by an index of the tar (never
//! extracted), and every small document is read with a size limit.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Sha256Digest,
};
use rustix::fs::OFlags;
use serde::Deserialize;

use crate::digest;
use crate::error::{quote, quote_bytes, Context, Error, Result};
use crate::limits::HeaderGuard;

/// The largest manifest, index or config accepted.
const MAX_DOC: u64 = 8 << 20;

/// Where blobs and documents are read from.
pub enum Files {
    /// A layout directory, held by an fd.
    Dir {
        /// The directory.
        root: OwnedFd,
        /// Its path, for messages.
        path: PathBuf,
    },
    /// A tar archive and the regular files in it.
    Tar {
        /// The archive, open (members are read at their offsets, never by reopening it).
        file: Arc<File>,
        /// Its path, for messages.
        path: PathBuf,
        /// member path -> (data offset, size)
        members: HashMap<String, (u64, u64)>,
    },
}

/// Opens `name` beneath `dir` (or `path` itself when `dir` is `None`) for reading, without
/// waiting: `O_NONBLOCK`, so that a FIFO in place of a file cannot block the open, and
/// `O_NOFOLLOW` beneath a layout. Anything but a regular file is refused.
fn open_regular(dir: Option<BorrowedFd<'_>>, name: &str, path: &Path) -> Result<(File, u64)> {
    let shown = || match dir {
        Some(_) => format!("{}: {}", path.display(), quote(name)),
        None => path.display().to_string(),
    };
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match dir {
        Some(d) => stratafs::sys::open_beneath(d, name.as_bytes(), flags),
        None => rustix::fs::open(path, flags, rustix::fs::Mode::empty()).map_err(io::Error::from),
    }
    .ctx(|| format!("open {}", shown()))?;
    let st = rustix::fs::fstat(&fd).ctx(|| format!("stat {}", shown()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(Error::invalid(format!("{}: not a regular file", shown())));
    }
    // Reads of a regular file do not wait anyway; clear the flag all the same.
    rustix::fs::fcntl_setfl(&fd, OFlags::empty()).ctx(|| format!("open {}", shown()))?;
    Ok((File::from(fd), u64::try_from(st.st_size).unwrap_or(0)))
}

/// A member of an archive: the bytes from `pos` to `end`, read with `pread` (readers of several
/// members share one open file).
struct Member {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for Member {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let left = self.end.saturating_sub(self.pos);
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Files {
    /// Opens a layout directory or indexes an archive.
    pub fn open(path: &Path) -> Result<Files> {
        let md = std::fs::metadata(path).ctx(|| format!("{}", path.display()))?;
        if md.is_dir() {
            let root = rustix::fs::open(
                path,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ctx(|| format!("open {}", path.display()))?;
            return Ok(Files::Dir {
                root,
                path: path.to_path_buf(),
            });
        }
        index_tar(path)
    }

    /// True when the source has a file at `name`.
    pub fn has(&self, name: &str) -> bool {
        match self {
            Files::Dir { root, .. } => {
                stratafs::sys::open_beneath(root.as_fd(), name.as_bytes(), OFlags::PATH).is_ok()
            }
            Files::Tar { members, .. } => members.contains_key(name),
        }
    }

    /// Opens file `name`, returning a reader and its size.
    pub fn open_file(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        match self {
            Files::Dir { root, path } => {
                let (f, size) = open_regular(Some(root.as_fd()), name, path)?;
                Ok((Box::new(f), size))
            }
            Files::Tar {
                file,
                path,
                members,
            } => {
                let Some(&(offset, size)) = members.get(name) else {
                    return Err(Error::invalid(format!(
                        "{}: no {} in the archive",
                        path.display(),
                        quote(name)
                    )));
                };
                let end = offset
                    .checked_add(size)
                    .ok_or_else(|| Error::invalid(format!("{}: bad member", path.display())))?;
                let m = Member {
                    file: Arc::clone(file),
                    pos: offset,
                    end,
                };
                Ok((Box::new(m), size))
            }
        }
    }

    /// Reads a small document whole.
    pub fn read_doc(&self, name: &str) -> Result<Vec<u8>> {
        let (r, size) = self.open_file(name)?;
        if size > MAX_DOC {
            return Err(Error::invalid(format!(
                "{}: {size} bytes is too large for a document",
                quote(name)
            )));
        }
        let mut buf = Vec::with_capacity(size as usize);
        r.take(MAX_DOC)
            .read_to_end(&mut buf)
            .ctx(|| format!("read {}", quote(name)))?;
        Ok(buf)
    }

    /// Reads a small blob and checks it against its descriptor's digest and size.
    pub fn read_blob(&self, d: &Sha256Digest, size: u64, what: &str) -> Result<Vec<u8>> {
        let name = blob_name(d);
        let bytes = self.read_doc(&name)?;
        if bytes.len() as u64 != size {
            return Err(Error::invalid(format!(
                "{what} {}: {} bytes, its descriptor says {size}",
                digest::short(d),
                bytes.len()
            )));
        }
        let got = digest::of_bytes(&bytes);
        if &got != d {
            return Err(Error::invalid(format!(
                "{what}: digest is {}, its descriptor says {}",
                digest::full(&got),
                digest::full(d)
            )));
        }
        Ok(bytes)
    }
}

/// `blobs/sha256/HEX`.
pub fn blob_name(d: &Sha256Digest) -> String {
    format!("blobs/sha256/{}", d.digest())
}

/// A member path of an archive, normalized (`./` and empty components dropped). Paths that
/// leave the archive's root are refused.
fn normalize(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    let mut parts: Vec<&str> = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fn index_tar(path: &Path) -> Result<Files> {
    let (f, _) = open_regular(None, "", path)?;
    let mut magic = [0u8; 2];
    let n = (&f)
        .read(&mut magic)
        .ctx(|| format!("read {}", path.display()))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        return Err(Error::invalid(format!(
            "{}: a compressed archive: decompress it first (gunzip)",
            path.display()
        )));
    }
    let file = Arc::new(f);
    let whole = Member {
        file: Arc::clone(&file),
        pos: 0,
        end: u64::MAX,
    };
    let mut ar = tar::Archive::new(HeaderGuard::new(whole));
    let mut members: HashMap<String, (u64, u64)> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let bad = |e: io::Error| {
        Error::invalid(format!(
            "{}: not a readable tar archive: {e}",
            path.display()
        ))
    };
    for e in ar.entries().map_err(bad)? {
        let e = e.map_err(bad)?;
        let raw = e.path_bytes().into_owned();
        let Some(name) = normalize(&raw) else {
            return Err(Error::invalid(format!(
                "{}: member {} leaves the archive",
                path.display(),
                quote_bytes(&raw)
            )));
        };
        let kind = e.header().entry_type();
        if matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous) {
            let previous = members.insert(name.clone(), (e.raw_file_position(), e.size()));
            if previous.is_some() {
                return Err(Error::invalid(format!(
                    "{}: member {} appears twice",
                    path.display(),
                    quote(&name)
                )));
            }
            continue;
        }
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let Some(target) = e.link_name_bytes() else {
                    continue;
                };
                let base = if e.header().entry_type() == tar::EntryType::Symlink {
                    let parent = name.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                    format!("{parent}/")
                } else {
                    String::new()
                };
                let mut full = base.into_bytes();
                full.extend_from_slice(&target);
                if let Some(t) = normalize(&full) {
                    links.insert(name, t);
                }
            }
            _ => {}
        }
    }
    // docker save stores a layer shared by several images once and links the others to it.
    for (name, target) in &links {
        let mut t = target.clone();
        for _ in 0..8 {
            match links.get(&t) {
                Some(next) => t = next.clone(),
                None => break,
            }
        }
        if let Some(m) = members.get(&t).copied() {
            members.entry(name.clone()).or_insert(m);
        }
    }
    Ok(Files::Tar {
        file,
        path: path.to_path_buf(),
        members,
    })
}

/// One layer as the image describes it.
#[derive(Debug, Clone)]
pub struct LayerRef {
    /// Path of its blob in the source.
    pub file: String,
    /// The blob's size.
    pub size: u64,
    /// The blob's digest, when the source states it (OCI); docker-archives do not.
    pub digest: Option<Sha256Digest>,
    /// The uncompressed tar's digest, from the config.
    pub diff_id: Sha256Digest,
}

/// An image found in a source.
pub struct Image {
    /// The config blob as the source holds it.
    pub config: Vec<u8>,
    /// Its layers, bottom first.
    pub layers: Vec<LayerRef>,
    /// The names the source gives it.
    pub tags: Vec<String>,
}

/// Finds the image in `files`: `reference` picks one when the source holds several.
pub fn find_image(files: &Files, reference: Option<&str>) -> Result<Image> {
    if files.has("index.json") {
        if !files.has("oci-layout") {
            return Err(Error::invalid(
                "index.json without oci-layout: not an OCI image layout",
            ));
        }
        oci_image(files, reference)
    } else if files.has("manifest.json") {
        docker_image(files, reference)
    } else {
        Err(Error::invalid(
            "not an image: no index.json (OCI layout) and no manifest.json (docker-archive)",
        ))
    }
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn is_index(mt: &MediaType) -> bool {
    matches!(mt, MediaType::ImageIndex)
        || mt.to_string() == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn oci_image(files: &Files, reference: Option<&str>) -> Result<Image> {
    let layout = files.read_doc("oci-layout")?;
    let _: oci_spec::image::OciLayout = serde_json::from_slice(&layout).ctx(|| "oci-layout")?;
    let index_bytes = files.read_doc("index.json")?;
    let index: ImageIndex = serde_json::from_slice(&index_bytes).ctx(|| "index.json")?;
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| match reference {
            None => true,
            Some(r) => ref_name(d).as_deref() == Some(r),
        })
        .collect();
    let desc = match candidates.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(Error::invalid(match reference {
                Some(r) => format!("index.json: no image named {}", quote(r)),
                None => "index.json lists no image".into(),
            }))
        }
        many => {
            let names: Vec<String> = many
                .iter()
                .filter_map(|d| ref_name(d))
                .take(8)
                .map(|n| quote(&n).trim_matches('"').to_string())
                .collect();
            return Err(Error::invalid(format!(
                "index.json lists {} images: pick one with --ref ({})",
                many.len(),
                names.join(", ")
            )));
        }
    };
    let mut tags = Vec::new();
    if let Some(n) = ref_name(&desc) {
        tags.push(n);
    }
    let manifest = resolve_manifest(files, desc, 0)?;
    let config_desc = manifest.config();
    let config_digest = digest::of(config_desc.digest())?;
    let config = files.read_blob(&config_digest, config_desc.size(), "config")?;
    let diff_ids = diff_ids(&config)?;
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::invalid(format!(
            "the manifest lists {} layers, the config {} diff-ids",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (d, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let mt = d.media_type().to_string();
        if mt.contains("nondistributable") || mt.contains("foreign") {
            return Err(Error::invalid(format!(
                "layer {}: a foreign layer ({}) is not in the archive",
                d.digest(),
                quote(&mt)
            )));
        }
        let dg = digest::of(d.digest())?;
        layers.push(LayerRef {
            file: blob_name(&dg),
            size: d.size(),
            digest: Some(dg),
            diff_id,
        });
    }
    Ok(Image {
        config,
        layers,
        tags,
    })
}

fn ref_name(d: &Descriptor) -> Option<String> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME).cloned())
}

/// Follows image indexes (multi-platform images) down to the manifest for this machine.
fn resolve_manifest(files: &Files, desc: Descriptor, depth: u32) -> Result<ImageManifest> {
    if depth > 4 {
        return Err(Error::invalid("image indexes nest too deeply"));
    }
    let d = digest::of(desc.digest())?;
    let bytes = files.read_blob(&d, desc.size(), "manifest")?;
    if is_index(desc.media_type()) {
        let index: ImageIndex =
            serde_json::from_slice(&bytes).ctx(|| format!("index {}", digest::short(&d)))?;
        let arch = oci_spec::image::Arch::default();
        let pick = index
            .manifests()
            .iter()
            .find(|m| {
                m.platform()
                    .as_ref()
                    .map(|p| *p.architecture() == arch && p.os().to_string() == "linux")
                    .unwrap_or(false)
            })
            .or_else(|| match index.manifests().as_slice() {
                [one] => Some(one),
                _ => None,
            })
            .cloned()
            .ok_or_else(|| {
                Error::invalid(format!(
                    "index {}: no image for linux/{arch}",
                    digest::short(&d)
                ))
            })?;
        return resolve_manifest(files, pick, depth + 1);
    }
    serde_json::from_slice(&bytes).ctx(|| format!("manifest {}", digest::short(&d)))
}

/// The config's `rootfs.diff_ids`.
fn diff_ids(config: &[u8]) -> Result<Vec<Sha256Digest>> {
    let c: ImageConfiguration = serde_json::from_slice(config).ctx(|| "image config")?;
    c.rootfs()
        .diff_ids()
        .iter()
        .map(|s| digest::parse(s))
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A digest spelled in a docker-archive file name (`HEX.json`, `blobs/sha256/HEX`).
fn digest_in_name(name: &str) -> Option<Sha256Digest> {
    let base = name.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    if name.ends_with(".json") || name.starts_with("blobs/sha256/") {
        Sha256Digest::from_str(hex).ok()
    } else {
        None
    }
}

fn docker_image(files: &Files, reference: Option<&str>) -> Result<Image> {
    let bytes = files.read_doc("manifest.json")?;
    let list: Vec<DockerManifest> = serde_json::from_slice(&bytes).ctx(|| "manifest.json")?;
    let pick: Vec<&DockerManifest> = list
        .iter()
        .filter(|m| match reference {
            None => true,
            Some(r) => m
                .repo_tags
                .as_ref()
                .map(|t| t.iter().any(|x| x == r))
                .unwrap_or(false),
        })
        .collect();
    let m = match pick.as_slice() {
        [one] => *one,
        [] => {
            return Err(Error::invalid(match reference {
                Some(r) => format!("manifest.json: no image tagged {}", quote(r)),
                None => "manifest.json lists no image".into(),
            }))
        }
        many => {
            return Err(Error::invalid(format!(
                "manifest.json lists {} images: pick one with --ref TAG",
                many.len()
            )))
        }
    };
    let config_name = normalize(m.config.as_bytes()).ok_or_else(|| {
        Error::invalid(format!(
            "manifest.json: config {} leaves the archive",
            quote(&m.config)
        ))
    })?;
    let config = files.read_doc(&config_name)?;
    if let Some(want) = digest_in_name(&config_name) {
        let got = digest::of_bytes(&config);
        if got != want {
            return Err(Error::invalid(format!(
                "config {config_name}: digest is {}, its name says {}",
                digest::full(&got),
                digest::full(&want)
            )));
        }
    }
    let diff_ids = diff_ids(&config)?;
    if diff_ids.len() != m.layers.len() {
        return Err(Error::invalid(format!(
            "manifest.json lists {} layers, the config {} diff-ids",
            m.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (l, diff_id) in m.layers.iter().zip(diff_ids) {
        let file = normalize(l.as_bytes()).ok_or_else(|| {
            Error::invalid(format!(
                "manifest.json: layer {} leaves the archive",
                quote(l)
            ))
        })?;
        let (_, size) = files.open_file(&file)?;
        layers.push(LayerRef {
            digest: digest_in_name(&file),
            file,
            size,
            diff_id,
        });
    }
    Ok(Image {
        config,
        layers,
        tags: m.repo_tags.clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn member_names() {
        assert_eq!(normalize(b"./a//b").as_deref(), Some("a/b"));
        assert_eq!(normalize(b"a/../b").as_deref(), Some("b"));
        assert_eq!(normalize(b"../b"), None);
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(digest_in_name(&format!("{hex}.json")).is_some());
        assert!(digest_in_name(&format!("blobs/sha256/{hex}")).is_some());
        assert!(digest_in_name(&format!("{hex}/layer.tar")).is_none());
    }
}
