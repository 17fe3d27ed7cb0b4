//! `inspect NAME|IMAGE PATH`: which layer provides a path, which layers it shadows, and the
//! whiteouts and opaque directories met on the way down the stack.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use stratafs::layer::{Layer, Probe};
use stratafs::sys::FileKind;

use crate::digest;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::view::{self, View};

/// What one layer holds at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Raw {
    /// Nothing there.
    Absent,
    /// An object of this kind.
    Object(FileKind),
    /// A whiteout for the path itself.
    Whiteout,
    /// A whiteout for an ancestor.
    WhiteoutAbove(PathBuf),
    /// A non-directory where an ancestor directory would be.
    NotDirAbove(PathBuf),
}

fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::Regular => "regular file",
        FileKind::Directory => "directory",
        FileKind::Symlink => "symlink",
        FileKind::Fifo => "fifo",
        FileKind::Socket => "socket",
        FileKind::CharDevice => "char device",
        FileKind::BlockDevice => "block device",
    }
}

/// Looks `rel` up in one layer alone, noting the opaque directories on the way.
fn probe_layer(layer: &Layer, rel: &Path) -> Result<(Raw, Vec<PathBuf>)> {
    let io = |e: std::io::Error| Error::Io {
        what: format!("{}: {}", layer.path.display(), rel.display()),
        source: e,
    };
    let comps: Vec<&OsStr> = rel.iter().collect();
    let mut opaque = Vec::new();
    let mut dir: OwnedFd = stratafs::sys::open_dir_path(layer.root(), b"").map_err(io)?;
    let mut sofar = PathBuf::from("/");
    let Some((last, parents)) = comps.split_last() else {
        return Ok((Raw::Object(FileKind::Directory), opaque));
    };
    for c in parents {
        sofar.push(c);
        match layer.probe(dir.as_fd(), c).map_err(io)? {
            Probe::Missing => return Ok((Raw::Absent, opaque)),
            Probe::Whiteout => return Ok((Raw::WhiteoutAbove(sofar), opaque)),
            Probe::Found(st, ..) if !st.is_dir() => return Ok((Raw::NotDirAbove(sofar), opaque)),
            Probe::Found(..) => {
                if layer.is_opaque(dir.as_fd(), c).map_err(io)? {
                    opaque.push(sofar.clone());
                }
                use std::os::unix::ffi::OsStrExt;
                dir = stratafs::sys::open_dir_path(dir.as_fd(), c.as_bytes()).map_err(io)?;
            }
        }
    }
    let raw = match layer.probe(dir.as_fd(), last).map_err(io)? {
        Probe::Missing => Raw::Absent,
        Probe::Whiteout => Raw::Whiteout,
        Probe::Found(st, ..) => {
            if st.is_dir() && layer.is_opaque(dir.as_fd(), last).map_err(io)? {
                opaque.push(sofar.join(last));
            }
            Raw::Object(st.kind().unwrap_or(FileKind::Regular))
        }
    };
    Ok((raw, opaque))
}

/// `inspect TARGET PATH` as lines.
pub fn run(store: &Store, target: &str, path: &str) -> Result<Vec<String>> {
    let rel = view::rel_path(path)?;
    // (label, tree), topmost first.
    let mut layers: Vec<(String, PathBuf)> = Vec::new();
    let is_container = crate::store::check_name(target).is_ok()
        && store.container_dir(target).join("container.json").exists();
    let diff_ids: Vec<String> = if is_container {
        let ctr = store.container(target)?;
        layers.push((
            "upper".to_string(),
            store.container_dir(target).join("upper"),
        ));
        ctr.layers
    } else {
        store
            .resolve_image(target)?
            .layers
            .into_iter()
            .map(|l| l.diff_id)
            .collect()
    };
    for (i, d) in diff_ids.iter().enumerate().rev() {
        let dg = digest::parse(d)?;
        layers.push((
            format!("layer {} {}", i + 1, digest::short(&dg)),
            store.layer_tree(&dg),
        ));
    }
    // A layer listed twice is in the view once, at its topmost place (as `mount` stacks it);
    // `dup_of[i]` names the occurrence above that stands for layer `i`.
    let mut dup_of: Vec<Option<usize>> = Vec::new();
    let mut in_view: Vec<usize> = Vec::new();
    for (i, (_, tree)) in layers.iter().enumerate() {
        let first = layers
            .iter()
            .position(|(_, t)| t == tree)
            .filter(|&f| f < i);
        if first.is_none() {
            in_view.push(i);
        }
        dup_of.push(first);
    }
    let trees: Vec<PathBuf> = in_view.iter().map(|&i| layers[i].1.clone()).collect();
    let view = View::open(&trees)?;
    let shown = Path::new("/").join(&rel);
    let prov = view.provenance(&rel)?;
    let mut out = Vec::new();
    match &prov {
        Some(p) => {
            let from: Vec<String> = p
                .layers
                .iter()
                .filter_map(|&i| in_view.get(usize::from(i)))
                .filter_map(|&i| layers.get(i).map(|l| l.0.clone()))
                .collect();
            out.push(format!(
                "{}: {} from {}{}",
                shown.display(),
                kind_name(p.kind),
                from.join(", "),
                if p.opaque {
                    " (opaque: hides the layers below)"
                } else {
                    ""
                }
            ));
        }
        None => out.push(format!("{}: not in the merged tree", shown.display())),
    }
    let providing: Vec<usize> = prov
        .as_ref()
        .map(|p| {
            p.layers
                .iter()
                .filter_map(|&i| in_view.get(usize::from(i)).copied())
                .collect()
        })
        .unwrap_or_default();
    let width = layers.iter().map(|l| l.0.len()).max().unwrap_or(0);
    for (i, (label, tree)) in layers.iter().enumerate() {
        if let Some(first) = dup_of[i].and_then(|f| layers.get(f)) {
            let above = first
                .0
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            out.push(format!("  {label:<width$}  - (the same layer as {above})"));
            continue;
        }
        let layer = Layer::open(tree, false).map_err(|e| Error::Io {
            what: format!("open {}", tree.display()),
            source: e,
        })?;
        let (raw, opaque) = probe_layer(&layer, &rel)?;
        let mut what = match &raw {
            Raw::Absent => "-".to_string(),
            Raw::Object(k) if providing.contains(&i) => format!("provides ({})", kind_name(*k)),
            Raw::Object(k) => format!("shadowed ({})", kind_name(*k)),
            Raw::Whiteout => "whiteout: hides it in the layers below".to_string(),
            Raw::WhiteoutAbove(p) => {
                format!("whiteout of {}: hides it in the layers below", p.display())
            }
            Raw::NotDirAbove(p) => format!("- ({} is not a directory here)", p.display()),
        };
        for o in opaque {
            what.push_str(&format!("; opaque directory {}", o.display()));
        }
        out.push(format!("  {label:<width$}  {what}"));
    }
    Ok(out)
}
