//! Redirected directories (the read side of the kernel's `redirect_dir`).
//!
//! A directory the kernel renamed with `redirect_dir=on` keeps its lower copies where they
//! were, and its upper copy carries `overlay.redirect`: the name its lower copies have in the
//! same parent (relative), or their path from the layer root (absolute). A lookup that finds
//! such a directory looks for it in the layers below at that place instead of under its own
//! name, as `ovl_lookup` does: an absolute redirect continues in every layer below the one it
//! was found in (not only those of the parent), walking the path from each layer's root; a
//! relative one found on a directory reached by an absolute path replaces its last component.
//! A redirect on a directory met along such a walk rewrites the path for the layers below.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use super::{Error, Overlay, Result};
use crate::inode::{LayerPath, Node};
use crate::layer::{Layer, Probe};
use crate::sys;

/// A redirect as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Redirect {
    /// Another name in the same parent.
    Relative(OsString),
    /// A path from the layer root, one component each.
    Absolute(Vec<OsString>),
}

/// An `overlay.redirect` value the kernel would refuse to follow (it fails the lookup with
/// `EINVAL`).
const INVALID: Error = Error::Invalid("invalid overlay.redirect");

/// Parses an `overlay.redirect` value as the kernel reads it: up to its first NUL; absolute
/// when it starts with `/`, with no empty component; relative without any `/`. `.` and `..`
/// are refused (the kernel's lookup of them fails too).
pub(crate) fn parse(value: &[u8]) -> Result<Redirect> {
    let v = value.split(|b| *b == 0).next().unwrap_or_default();
    let ok = |c: &[u8]| !c.is_empty() && c != b"." && c != b"..";
    match v.strip_prefix(b"/") {
        Some(rest) => {
            let comps: Vec<&[u8]> = rest.split(|b| *b == b'/').collect();
            if !comps.iter().all(|c| ok(c)) {
                return Err(INVALID);
            }
            Ok(Redirect::Absolute(
                comps
                    .into_iter()
                    .map(|c| OsStr::from_bytes(c).to_os_string())
                    .collect(),
            ))
        }
        None if ok(v) && !v.contains(&b'/') => {
            Ok(Redirect::Relative(OsStr::from_bytes(v).to_os_string()))
        }
        None => Err(INVALID),
    }
}

/// Where the layers below are looked in once redirect `r` is found on a directory that was
/// reached at `at` (`None`: under its own name in its parent's copy).
pub(crate) fn redirected(at: Option<&LayerPath>, r: Redirect) -> LayerPath {
    match (at, r) {
        (_, Redirect::Absolute(p)) => LayerPath::FromRoot(p),
        (Some(LayerPath::FromRoot(p)), Redirect::Relative(n)) => {
            let mut p = p.clone();
            p.pop();
            p.push(n);
            LayerPath::FromRoot(p)
        }
        (_, Redirect::Relative(n)) => LayerPath::InParent(n),
    }
}

/// Where an absolute path leads in one layer, walked as `ovl_lookup_layer` walks it.
pub(crate) enum Walk {
    /// Nothing there: the layers below are looked in.
    Missing,
    /// A whiteout or a non-directory on the way: no layer below is looked in.
    Stop,
    /// The last component's parent directory in this layer.
    At {
        /// That directory.
        dir: OwnedFd,
        /// An opaque directory on the way: nothing below this layer counts, unless the
        /// last component has an absolute redirect.
        stop_after: bool,
        /// The path for the layers below, when a redirect on the way rewrote it.
        rewritten: Option<Vec<OsString>>,
    },
}

impl Overlay {
    /// Walks `path` (at least one component) from the root of layer `layer` to the parent of
    /// its last component. `last`: the layer is the last one looked in, whose markers the
    /// kernel does not read.
    pub(crate) fn walk_redirect(
        &self,
        layer: &Layer,
        path: &[OsString],
        last: bool,
    ) -> Result<Walk> {
        let mut dir = sys::open_dir_path(layer.root(), b"")?;
        let mut stop_after = false;
        let mut cur = path.to_vec();
        let mut rewritten = false;
        let Some((_, walk)) = path.split_last() else {
            return Err(INVALID);
        };
        for (k, comp) in walk.iter().enumerate() {
            match layer.probe(dir.as_fd(), comp)? {
                Probe::Missing => return Ok(Walk::Missing),
                Probe::Whiteout => return Ok(Walk::Stop),
                Probe::Found(st, _) if !st.is_dir() => return Ok(Walk::Stop),
                Probe::Found(..) => {}
            }
            if !last {
                let (opaque, redirect) = layer.dir_markers(dir.as_fd(), comp, true)?;
                if opaque {
                    stop_after = true;
                } else if let Some(v) = redirect {
                    // Components after this one stay; what leads to them changes.
                    let after = path.len() - 1 - k;
                    let at = cur.len() - 1 - after;
                    cur = match parse(&v)? {
                        Redirect::Relative(n) => {
                            cur[at] = n;
                            cur
                        }
                        Redirect::Absolute(mut p) => {
                            stop_after = false;
                            p.extend_from_slice(&cur[at + 1..]);
                            p
                        }
                    };
                    rewritten = true;
                }
            }
            dir = sys::open_dir_path(dir.as_fd(), comp.as_bytes())?;
        }
        Ok(Walk::At {
            dir,
            stop_after,
            rewritten: rewritten.then_some(cur),
        })
    }
}

/// The longest redirect written, as the kernel's `redirect_max` default: a longer path makes
/// the rename fail with `EXDEV` (and `mv` copy), as there.
const REDIRECT_MAX: usize = 256;

impl Overlay {
    /// The `overlay.redirect` a rename of `node` (a directory with lower copies, or a
    /// metacopy file, copied up already; or a metacopy file being linked, with `samedir`
    /// false) gives its upper copy, in the kernel's form (`ovl_set_redirect`): `None` when
    /// the one it has stays right (any within the same parent, an absolute one anywhere); its
    /// current name for a rename within its parent; else the absolute path of its lower
    /// copies, made of the names of it and its ancestors, each replaced by the redirect of
    /// its upper copy where it has one, up to the first absolute one.
    pub(crate) fn redirect_for_rename(
        &self,
        node: &Node,
        samedir: bool,
    ) -> Result<Option<Vec<u8>>> {
        let own = self.upper_redirect(node)?;
        match &own {
            Some(v) if samedir || v.starts_with(b"/") => return Ok(None),
            None if samedir => return Ok(Some(node.with_location(|l| l.name.as_bytes().to_vec()))),
            _ => {}
        }
        // Components from `node` up, each as it is named below its parent's copies.
        let mut comps: Vec<Vec<u8>> = Vec::new();
        let mut prefix: Vec<u8> = Vec::new();
        let mut redirect = own;
        let mut cur = self.node(node.id)?;
        while cur.id != crate::inode::ROOT {
            match redirect {
                Some(v) if v.starts_with(b"/") => {
                    prefix = v;
                    break;
                }
                Some(v) => comps.push(v),
                None => comps.push(cur.with_location(|l| l.name.as_bytes().to_vec())),
            }
            cur = self.node(cur.parent())?;
            redirect = if cur.id != crate::inode::ROOT && Overlay::in_upper(&cur) {
                self.upper_redirect(&cur)?
            } else {
                None
            };
        }
        for c in comps.iter().rev() {
            prefix.push(b'/');
            prefix.extend_from_slice(c);
        }
        if prefix.len() > REDIRECT_MAX {
            return Err(Error::CrossDevice(
                "the redirect would be longer than redirect_max",
            ));
        }
        Ok(Some(prefix))
    }

    /// The `overlay.redirect` of `node`'s upper copy (a directory, or a metacopy file), if
    /// it has a valid one.
    fn upper_redirect(&self, node: &Node) -> Result<Option<Vec<u8>>> {
        let got = if node.kind == crate::sys::FileKind::Directory {
            let fd = self.dir_fd(node, super::copyup::UPPER)?;
            sys::get_xattr(fd.as_fd(), self.layers.xattrs().redirect())
        } else {
            let (dir, name) = self.place_in(node, super::copyup::UPPER)?;
            sys::get_xattr_at(
                dir.as_fd(),
                OsStr::from_bytes(&name),
                self.layers.xattrs().redirect(),
            )
        };
        let v = match got {
            Ok(v) => v,
            Err(e) if crate::layer::is_unsupported(&e) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(v.filter(|v| parse(v).is_ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abs(p: &[&str]) -> Redirect {
        Redirect::Absolute(p.iter().map(OsString::from).collect())
    }

    #[test]
    fn values_parse_as_the_kernel_reads_them() {
        assert_eq!(parse(b"q").unwrap(), Redirect::Relative("q".into()));
        assert_eq!(parse(b"/a/b").unwrap(), abs(&["a", "b"]));
        assert_eq!(parse(b"/a\0junk").unwrap(), abs(&["a"]));
        for bad in [
            &b""[..],
            b"/",
            b"//a",
            b"/a/",
            b"/a//b",
            b"a/b",
            b"..",
            b"/a/../b",
            b"\0a",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn relative_redirects_replace_the_last_component() {
        let rel = || Redirect::Relative("n".into());
        assert_eq!(redirected(None, rel()), LayerPath::InParent("n".into()));
        let at = LayerPath::InParent("m".into());
        assert_eq!(
            redirected(Some(&at), rel()),
            LayerPath::InParent("n".into())
        );
        let at = LayerPath::FromRoot(vec!["a".into(), "m".into()]);
        assert_eq!(
            redirected(Some(&at), rel()),
            LayerPath::FromRoot(vec!["a".into(), "n".into()])
        );
        assert_eq!(
            redirected(Some(&at), abs(&["x"])),
            LayerPath::FromRoot(vec!["x".into()])
        );
    }
}
