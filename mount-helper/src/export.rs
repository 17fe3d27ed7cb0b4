//! `export IMAGE --oci DIR`: an OCI image layout (`oci-layout`, `index.json`, `blobs/`)
//! that skopeo, podman and `import` read. It is written next to DIR and renamed into place.

use std::collections::HashMap;
use std::path::Path;

use oci_spec::image::{DescriptorBuilder, ImageIndexBuilder, MediaType, OciLayoutBuilder};

use crate::digest;
use crate::error::{Context, Error, Result};
use crate::store::Store;

/// `export IMAGE --oci DIR`: returns the tag written as the ref name, if any.
pub fn run(store: &Store, reference: &str, dir: &Path) -> Result<Option<String>> {
    let img = store.resolve_image(reference)?;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map(|mut rd| rd.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(Error::invalid(format!(
                "{}: exists and is not an empty directory",
                dir.display()
            )));
        }
    }
    let tag = if store.tags()?.contains_key(reference) {
        Some(reference.to_string())
    } else {
        store.tags_of(&img.id)?.into_iter().next()
    };
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempdir_in(&parent)
        .ctx(|| format!("create a directory in {}", parent.display()))?;
    let root = staging.path();
    let blobs = root.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).ctx(|| format!("create {}", blobs.display()))?;

    let mut wanted = vec![img.id.clone(), img.manifest.clone()];
    wanted.extend(img.layers.iter().map(|l| l.digest.clone()));
    for d in wanted {
        let dg = digest::parse(&d)?;
        let from = store.blob_path(&dg);
        let to = blobs.join(dg.digest());
        if to.exists() {
            continue;
        }
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)
                .ctx(|| format!("copy {} to {}", from.display(), to.display()))?;
        }
    }
    let layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .ctx(|| "oci-layout")?;
    std::fs::write(
        root.join("oci-layout"),
        serde_json::to_vec(&layout).ctx(|| "encode oci-layout")?,
    )
    .ctx(|| "write oci-layout")?;
    let mut desc = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .digest(digest::to_oci(&digest::parse(&img.manifest)?))
        .size(img.manifest_size);
    if let Some(t) = &tag {
        let mut a = HashMap::new();
        a.insert("org.opencontainers.image.ref.name".to_string(), t.clone());
        desc = desc.annotations(a);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![desc.build().ctx(|| "manifest descriptor")?])
        .build()
        .ctx(|| "index.json")?;
    std::fs::write(
        root.join("index.json"),
        serde_json::to_vec(&index).ctx(|| "encode index.json")?,
    )
    .ctx(|| "write index.json")?;
    if dir.exists() {
        std::fs::remove_dir(dir).ctx(|| format!("replace {}", dir.display()))?;
    }
    let kept = staging.keep();
    std::fs::rename(&kept, dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&kept);
        Error::Io {
            what: format!("rename into {}", dir.display()),
            source: e,
        }
    })?;
    Ok(tag)
}
