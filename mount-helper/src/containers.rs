//! `create` and `rm`: a container is an upper and a work directory (and a default mount
//! point) over an image's layers.

use std::os::unix::fs::MetadataExt;

use crate::digest;
use crate::error::{Context, Error, Result};
use crate::mounts;
use crate::store::{self, ContainerRecord, Store};

/// `create NAME IMAGE`.
pub fn create(store: &Store, name: &str, image: &str) -> Result<ContainerRecord> {
    store::check_name(name)?;
    if store.container_dir(name).exists() {
        return Err(Error::invalid(format!("container {name} exists already")));
    }
    let img = store.resolve_image(image)?;
    let staging = store.staging("container-")?;
    let dir = staging.path().join("c");
    // Only the owner may reach the container's layers and its default mount point.
    store::make_private_dir(&dir)?;
    for sub in ["upper", "work", "merged"] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p).ctx(|| format!("create {}", p.display()))?;
    }
    // The merged root shows the upper root's attributes: start from the image's.
    if let Some(top) = img.layers.last() {
        let tree = store.layer_tree(&digest::parse(&top.diff_id)?);
        let md = std::fs::symlink_metadata(&tree).ctx(|| format!("{}", tree.display()))?;
        let upper = dir.join("upper");
        if !store.rootless && rustix::process::geteuid().is_root() {
            std::os::unix::fs::lchown(&upper, Some(md.uid()), Some(md.gid()))
                .ctx(|| format!("chown {}", upper.display()))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(md.mode() & 0o7777))
            .ctx(|| format!("chmod {}", upper.display()))?;
    }
    let rec = ContainerRecord {
        name: name.to_string(),
        image: img.id.clone(),
        layers: img.layers.iter().map(|l| l.diff_id.clone()).collect(),
        mount: None,
    };
    let staged = store.stage_json(&rec)?;
    std::fs::rename(&staged, dir.join("container.json")).ctx(|| "stage container.json")?;
    let to = store.container_dir(name);
    std::fs::rename(&dir, &to).ctx(|| format!("rename into {}", to.display()))?;
    Ok(rec)
}

/// `rm NAME`: refused while mounted.
pub fn remove(store: &Store, name: &str) -> Result<()> {
    let ctr = store.container(name)?;
    if mounts::is_live(&ctr) {
        return Err(Error::invalid(format!(
            "container {name} is mounted: umount it first"
        )));
    }
    // Out of sight first (one rename), then removed.
    let staging = store.staging("rm-")?;
    let from = store.container_dir(name);
    std::fs::rename(&from, staging.path().join("c"))
        .ctx(|| format!("remove {}", from.display()))?;
    drop(staging);
    Ok(())
}
