//! A read-only merged view of layer directories, served by the stratafs library's own union
//! logic (no mount): what `diff` and `inspect` ask "is this path below?" of.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use stratafs::inode::NodeId;
use stratafs::overlay::{Attr, Error as OvlError, Options, Overlay};
use stratafs::sys::FileKind;

use crate::error::{Error, Result};

/// The merged view of some layers, topmost first.
pub struct View {
    ovl: Overlay,
}

impl View {
    /// Opens `layers` (topmost first) read-only.
    pub fn open(layers: &[PathBuf]) -> Result<View> {
        let stack =
            stratafs::layer::LayerStack::open(None, layers, stratafs::config::Xino::Auto, false)
                .map_err(|e| Error::Io {
                    what: "open the layers".into(),
                    source: e,
                })?;
        // The options of a read-only mount of these layers, as the daemon would take them;
        // metacopy files (a container's upper mounted with `metacopy=on`) are followed to
        // their data.
        let argv = ["-o", "lowerdir=/,ro,metacopy=on", "/"].map(std::ffi::OsString::from);
        let opts = match stratafs::config::parse_args(argv) {
            Ok(stratafs::config::Invocation::Mount(cfg)) => Options::from_config(&cfg),
            _ => return Err(Error::invalid("cannot configure a read-only view")),
        };
        Ok(View {
            ovl: Overlay::new(stack, opts),
        })
    }

    /// The root directory's node.
    pub fn root(&self) -> NodeId {
        stratafs::inode::ROOT
    }

    /// Looks `name` up in directory node `dir`: `None` when the view does not show it.
    pub fn lookup(&self, dir: NodeId, name: &OsStr) -> Result<Option<Attr>> {
        match self.ovl.lookup(dir, name) {
            Ok(a) => Ok(Some(a)),
            Err(OvlError::NotFound) => Ok(None),
            Err(e) => Err(Error::invalid(format!("{}: {e}", name.to_string_lossy()))),
        }
    }

    /// The names directory node `dir` shows.
    pub fn children(&self, dir: NodeId) -> Result<Vec<(std::ffi::OsString, FileKind)>> {
        let l = self
            .ovl
            .listing(dir)
            .map_err(|e| Error::invalid(format!("list a lower directory: {e}")))?;
        Ok(l.entries.iter().map(|e| (e.name.clone(), e.kind)).collect())
    }

    /// What the view shows at `path` (relative to the root): `None` when nothing.
    pub fn at(&self, path: &Path) -> Result<Option<Attr>> {
        let mut cur = self.attr(self.root())?;
        for c in path.components() {
            let name = match c {
                Component::Normal(n) => n,
                Component::RootDir | Component::CurDir => continue,
                _ => {
                    return Err(Error::invalid(format!(
                        "{}: not a plain path",
                        path.display()
                    )))
                }
            };
            match self.lookup(cur.node, name)? {
                Some(a) => cur = a,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// The attributes of node `node`.
    pub fn attr(&self, node: NodeId) -> Result<Attr> {
        self.ovl.getattr(node).map_err(|e| self.fail(node, e))
    }

    /// The file node `node` shows, opened for reading.
    pub fn open_file(&self, node: NodeId) -> Result<std::os::fd::OwnedFd> {
        self.ovl
            .open(node, rustix::fs::OFlags::RDONLY.bits() as i32)
            .map(|f| f.fd)
            .map_err(|e| self.fail(node, e))
    }

    /// The target of symlink node `node`.
    pub fn readlink(&self, node: NodeId) -> Result<Vec<u8>> {
        self.ovl.readlink(node).map_err(|e| self.fail(node, e))
    }

    /// The xattrs node `node` shows (the overlay's private ones are not), sorted by name.
    pub fn xattrs(&self, node: NodeId) -> Result<Vec<(std::ffi::OsString, Vec<u8>)>> {
        let list = match self.ovl.listxattr(node) {
            Ok(l) => l,
            Err(e) if e.errno() == rustix::io::Errno::OPNOTSUPP.raw_os_error() => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(self.fail(node, e)),
        };
        let mut out = Vec::new();
        for name in stratafs::sys::split_xattr_list(&list) {
            match self.ovl.getxattr(node, name) {
                Ok(v) => out.push((name.to_os_string(), v)),
                // Removed since it was listed.
                Err(e) if e.errno() == rustix::io::Errno::NODATA.raw_os_error() => {}
                Err(e) => return Err(self.fail(node, e)),
            }
        }
        out.sort();
        Ok(out)
    }

    fn fail(&self, node: NodeId, e: OvlError) -> Error {
        Error::invalid(format!("merged view, node {}: {e}", node.get()))
    }

    /// Which layers provide `path` (relative to the root): `None` when the view does not
    /// show it.
    pub fn provenance(&self, path: &Path) -> Result<Option<stratafs::overlay::Provenance>> {
        match self.ovl.provenance(path.as_os_str()) {
            Ok(p) => Ok(Some(p)),
            Err(OvlError::NotFound) => Ok(None),
            Err(e) => Err(Error::invalid(format!("{}: {e}", path.display()))),
        }
    }
}

/// A path given on the command line, as components below the root; `..` is refused.
pub fn rel_path(p: &str) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            _ => return Err(Error::invalid(format!("path {p:?}: '..' is not allowed"))),
        }
    }
    Ok(out)
}
