//! `ls`, `rmi` and `gc`: what the store holds, and removing what is no longer wanted.

use std::collections::{BTreeMap, BTreeSet};

use indicatif::HumanBytes;

use crate::digest;
use crate::error::{Error, Result};
use crate::mounts;
use crate::store::{self, Store};

/// `ls` as lines: images (tags, layers, unpacked size, layers shared with other images),
/// then containers (image, state, mount point).
pub fn ls(store: &Store) -> Result<Vec<String>> {
    let images = store.list_images()?;
    let tags = store.tags()?;
    let mut users: BTreeMap<&str, usize> = BTreeMap::new();
    for img in &images {
        let set: BTreeSet<&str> = img.layers.iter().map(|l| l.diff_id.as_str()).collect();
        for d in set {
            *users.entry(d).or_default() += 1;
        }
    }
    let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
    for img in &images {
        for l in &img.layers {
            if !sizes.contains_key(&l.diff_id) {
                let size = store
                    .layer(&digest::parse(&l.diff_id)?)?
                    .map(|r| r.size)
                    .unwrap_or(0);
                sizes.insert(l.diff_id.clone(), size);
            }
        }
    }
    let mut out = vec![format!(
        "{:<19}  {:<24}  {:>6}  {:>10}  {}",
        "IMAGE", "TAGS", "LAYERS", "SIZE", "SHARED"
    )];
    for img in &images {
        let mine: Vec<String> = tags
            .iter()
            .filter(|(_, v)| **v == img.id)
            .map(|(k, _)| k.clone())
            .collect();
        // A layer the image lists twice is unpacked (and counted) once.
        let unique: BTreeSet<&str> = img.layers.iter().map(|l| l.diff_id.as_str()).collect();
        let size: u64 = unique
            .iter()
            .map(|d| sizes.get(*d).copied().unwrap_or(0))
            .sum();
        let shared: Vec<&str> = unique
            .iter()
            .copied()
            .filter(|d| users.get(d).copied().unwrap_or(0) > 1)
            .collect();
        let shared_size: u64 = shared
            .iter()
            .map(|d| sizes.get(*d).copied().unwrap_or(0))
            .sum();
        let id = digest::parse(&img.id)?;
        out.push(format!(
            "{:<19}  {:<24}  {:>6}  {:>10}  {} ({})",
            digest::short(&id),
            if mine.is_empty() {
                "<none>".to_string()
            } else {
                mine.join(",")
            },
            img.layers.len(),
            HumanBytes(size).to_string(),
            shared.len(),
            HumanBytes(shared_size)
        ));
    }
    out.push(String::new());
    out.push(format!(
        "{:<20}  {:<24}  {:<9}  {:<32}  {}",
        "CONTAINER", "IMAGE", "STATE", "MOUNT POINT", "DAEMON"
    ));
    for c in store.list_containers()? {
        let img_tags = store.tags_of(&c.image)?;
        let image = match img_tags.first() {
            Some(t) => t.clone(),
            None => digest::parse(&c.image)
                .map(|d| digest::short(&d))
                .unwrap_or_default(),
        };
        let (state, target, daemon) = match &c.mount {
            Some(m) if mounts::is_mounted(&m.target) => (
                "mounted",
                m.target.display().to_string(),
                mounts::daemon_line(&m.target),
            ),
            _ => ("unmounted", "-".to_string(), "-".to_string()),
        };
        out.push(format!(
            "{:<20}  {:<24}  {:<9}  {:<32}  {}",
            c.name, image, state, target, daemon
        ));
    }
    Ok(out)
}

/// `rmi IMAGE`: a tag of an image with other tags is just removed; otherwise the image
/// goes (with all its tags), unless a container uses it. Its layers stay until `gc`.
pub fn rmi(store: &Store, reference: &str) -> Result<String> {
    let img = store.resolve_image(reference)?;
    let mut tags = store.tags()?;
    let mine: Vec<String> = tags
        .iter()
        .filter(|(_, v)| **v == img.id)
        .map(|(k, _)| k.clone())
        .collect();
    if tags.contains_key(reference) && mine.len() > 1 {
        tags.remove(reference);
        store.set_tags(&tags)?;
        return Ok(format!("untagged {reference}"));
    }
    let users: Vec<String> = store
        .list_containers()?
        .into_iter()
        .filter(|c| c.image == img.id)
        .map(|c| c.name)
        .collect();
    if !users.is_empty() {
        return Err(Error::invalid(format!(
            "image {reference} is used by container {}",
            users.join(", ")
        )));
    }
    for t in &mine {
        tags.remove(t);
    }
    store.set_tags(&tags)?;
    store.remove_image(&digest::parse(&img.id)?)?;
    Ok(format!("removed image {}", img.id))
}

/// `gc`: removes layers no image or container uses, and blobs no image refers to.
pub fn gc(store: &Store) -> Result<String> {
    let images = store.list_images()?;
    let containers = store.list_containers()?;
    let mut keep_layers: BTreeSet<String> = BTreeSet::new();
    let mut keep_blobs: BTreeSet<String> = BTreeSet::new();
    for img in &images {
        keep_blobs.insert(img.id.clone());
        keep_blobs.insert(img.manifest.clone());
        for l in &img.layers {
            keep_layers.insert(l.diff_id.clone());
            keep_blobs.insert(l.digest.clone());
        }
    }
    for c in &containers {
        keep_layers.extend(c.layers.iter().cloned());
    }
    let mut layers = 0;
    let mut freed = 0u64;
    for d in store.list_layers()? {
        if keep_layers.contains(&digest::full(&d)) {
            continue;
        }
        if let Ok(Some(rec)) = store.layer(&d) {
            freed += rec.size;
        }
        let staging = store.staging("gc-")?;
        let from = store.layer_dir(&d);
        std::fs::rename(&from, staging.path().join("l")).map_err(|e| Error::Io {
            what: format!("remove {}", from.display()),
            source: e,
        })?;
        drop(staging);
        layers += 1;
    }
    let mut blobs = 0;
    let dir = store.root().join("blobs/sha256");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let name = format!("sha256:{}", e.file_name().to_string_lossy());
            if !keep_blobs.contains(&name) {
                freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                store::remove_any(&e.path())?;
                blobs += 1;
            }
        }
    }
    Ok(format!(
        "removed {layers} layers and {blobs} blobs ({} freed)",
        HumanBytes(freed)
    ))
}
