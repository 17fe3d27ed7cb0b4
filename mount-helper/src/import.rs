//! `import`: an image from an OCI layout, an OCI archive or a docker-archive into the store.
//!
//! Each layer blob streams once: its digest and size are computed as it is read (and a copy
//! kept in the store for `export`), it is decompressed (gzip, zstd or plain, by its magic),
//! the uncompressed stream is hashed for the diff-id and unpacked into a staging directory.
//! Only when every check passes is the layer renamed into `layers/`; a layer the store
//! already has is verified but not unpacked again.

use std::io::{self, BufWriter, Cursor, Read, Write};
use std::path::Path;

use oci_spec::image::{DescriptorBuilder, ImageManifestBuilder, MediaType, Sha256Digest};

use crate::digest::{self, HashReader, TeeReader};
use crate::error::{quote, Context, Error, Result};
use crate::limits::{self, human, Bounded, HeaderGuard};
use crate::source::{self, Files, LayerRef};
use crate::store::{ImageLayer, ImageRecord, LayerRecord, Store, Txn};
use crate::unpack;

/// How a blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Recognised by the blob's first bytes.
    pub fn sniff(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// A layer blob to bring into the store.
pub struct LayerInput<'r> {
    /// The blob.
    pub reader: Box<dyn Read + Send + 'r>,
    /// The most its layer may unpack to (`--max-layer-size`); `None`: the default for its
    /// size ([`limits::layer_limit`]).
    pub max_size: Option<u64>,
    /// Its size, as the image claims.
    pub size: u64,
    /// Its digest, when the image states one.
    pub digest: Option<Sha256Digest>,
    /// The diff-id the image's config claims.
    pub diff_id: Sha256Digest,
}

/// A layer now in the store.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The blob's digest.
    pub digest: Sha256Digest,
    /// The blob's size.
    pub size: u64,
    /// How the blob is compressed.
    pub compression: Compression,
    /// The layer's diff-id.
    pub diff_id: Sha256Digest,
}

fn progress_bar(size: u64, label: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(size);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    Some(bar)
}

/// Reads up to 4 bytes (fewer only at the end of the stream).
fn read_magic(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 4];
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf[..n].to_vec())
}

/// What the store's filesystem can take: refuses `need` bytes unless they leave the reserve
/// free.
pub fn check_free_space(store: &Store, need: u64, what: impl FnOnce() -> String) -> Result<()> {
    let tmp = store.tmp_dir();
    let dir = std::fs::File::open(&tmp).ctx(|| format!("open {}", tmp.display()))?;
    let (free, reserve) = limits::free_space(&dir).ctx(|| format!("statvfs {}", tmp.display()))?;
    if need > free.saturating_sub(reserve) {
        return Err(Error::invalid(format!(
            "{} needs {}, the store's filesystem ({}) has {} free{}",
            what(),
            human(need),
            store.root().display(),
            human(free),
            if reserve > 0 {
                format!(" and keeps {} of it", human(reserve))
            } else {
                String::new()
            }
        )));
    }
    Ok(())
}

/// Brings one layer into the store through `txn`: verified, unpacked if new, blob kept.
///
/// The blob is read once, stopping at the first byte past its declared size; the
/// uncompressed tar stops at the layer size limit, and the unpacker refuses a file that
/// would take the layer past it (sparse holes counted) or not fit in the store's free space.
/// Everything is written under `tmp/` and renamed into place only once the blob's digest and
/// size and the diff-id match.
pub fn import_layer(store: &Store, txn: &mut Txn<'_>, input: LayerInput<'_>) -> Result<Imported> {
    let label = match &input.digest {
        Some(d) => digest::short(d),
        None => digest::short(&input.diff_id),
    };
    let known = store.layer(&input.diff_id)?;
    if let (Some(d), Some(rec)) = (&input.digest, &known) {
        if store.has_blob(d) && rec.blobs.contains(&digest::full(d)) {
            let mut f =
                std::fs::File::open(store.blob_path(d)).ctx(|| format!("open blob {label}"))?;
            let magic = read_magic(&mut f).ctx(|| format!("read blob {label}"))?;
            return Ok(Imported {
                digest: d.clone(),
                size: input.size,
                compression: Compression::sniff(&magic),
                diff_id: input.diff_id,
            });
        }
    }
    check_free_space(store, input.size, || format!("layer {label}: its blob"))?;
    let limit = limits::layer_limit(input.max_size, input.size);
    let staging = store.staging("layer-")?;
    let blob_path = staging.path().join("blob");
    let layer_path = staging.path().join("layer");
    let tree = layer_path.join("diff");
    let unpack_it = known.is_none();
    if unpack_it {
        crate::store::make_private_dir(&layer_path)?;
        std::fs::create_dir(&tree).ctx(|| format!("create {}", tree.display()))?;
    }
    let blob_file =
        std::fs::File::create(&blob_path).ctx(|| format!("create {}", blob_path.display()))?;
    let corrupt = |e: io::Error| match limits::refusal(&e) {
        Some(r) => Error::invalid(format!("layer {label}: {r}")),
        None => Error::invalid(format!(
            "layer {label}: the blob is corrupt or truncated: {e}"
        )),
    };

    // blob bytes -> copy kept + digest -> decompressor -> diff-id digest -> tar
    let claimed = input.size;
    let limited = Bounded::new(input.reader, claimed, move |l| {
        format!("the blob is larger than the {l} bytes the image claims")
    });
    let tee = TeeReader::new(limited, BufWriter::new(blob_file));
    let mut blob = HashReader::new(tee, progress_bar(input.size, &label));
    let magic = read_magic(&mut blob).map_err(corrupt)?;
    let compression = Compression::sniff(&magic);
    let stats;
    let diff_digest;
    {
        let compressed = Cursor::new(magic).chain(&mut blob);
        let decompressed: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(compressed),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(compressed).map_err(corrupt)?)
            }
        };
        let bounded = Bounded::new(decompressed, limit, |l| {
            format!(
                "its uncompressed tar is over the layer size limit of {} (--max-layer-size)",
                human(l)
            )
        });
        let mut diff = HashReader::new(bounded, None);
        stats = if unpack_it {
            let root = unpack::open_root(&tree)?;
            let mut opts = unpack::Options::for_user(store.rootless, label.clone());
            opts.max_bytes = limit;
            let mut archive = tar::Archive::new(HeaderGuard::new(&mut diff));
            unpack::Unpacker::new(std::os::fd::AsFd::as_fd(&root), opts).run(&mut archive)?
        } else {
            unpack::Stats::default()
        };
        diff.drain().map_err(corrupt)?;
        diff_digest = diff.finish().0;
    }
    blob.drain().map_err(corrupt)?;
    let (blob_digest, blob_size, tee) = blob.finish();
    let (_, mut writer) = tee.into_parts();
    writer
        .flush()
        .ctx(|| format!("write {}", blob_path.display()))?;
    let file = writer
        .into_inner()
        .map_err(|e| Error::invalid(format!("write {}: {}", blob_path.display(), e.error())))?;
    file.sync_all()
        .ctx(|| format!("sync {}", blob_path.display()))?;
    drop(file);

    if blob_size > input.size {
        return Err(Error::invalid(format!(
            "layer {label}: the blob is larger than the {} bytes the image claims",
            input.size
        )));
    }
    if blob_size < input.size {
        return Err(Error::invalid(format!(
            "layer {label}: the blob is truncated: {blob_size} of {} bytes",
            input.size
        )));
    }
    if let Some(want) = &input.digest {
        if &blob_digest != want {
            return Err(Error::invalid(format!(
                "layer {label}: the blob's digest is {}, the manifest says {}",
                digest::full(&blob_digest),
                digest::full(want)
            )));
        }
    }
    if diff_digest != input.diff_id {
        return Err(Error::invalid(format!(
            "layer {label}: the diff-id is {}, the image config says {}",
            digest::full(&diff_digest),
            digest::full(&input.diff_id)
        )));
    }

    txn.place(&blob_path, &store.blob_path(&blob_digest))?;
    let blob_name = digest::full(&blob_digest);
    match known {
        None => {
            let rec = LayerRecord {
                diff_id: digest::full(&input.diff_id),
                size: stats.bytes,
                entries: stats.entries,
                whiteouts: match unpack::Options::for_user(store.rootless, String::new()).whiteouts
                {
                    stratafs::layer::WhiteoutFormat::CharDevice => "chardev".into(),
                    stratafs::layer::WhiteoutFormat::DotWh => "dotwh".into(),
                },
                blobs: vec![blob_name],
            };
            let staged = store.stage_json(&rec)?;
            std::fs::rename(&staged, layer_path.join("layer.json")).ctx(|| "stage layer.json")?;
            txn.place(&layer_path, &store.layer_dir(&input.diff_id))?;
        }
        Some(mut rec) if !rec.blobs.contains(&blob_name) => {
            rec.blobs.push(blob_name);
            store.write_json(&store.layer_dir(&input.diff_id).join("layer.json"), &rec)?;
        }
        Some(_) => {}
    }
    Ok(Imported {
        digest: blob_digest,
        size: blob_size,
        compression,
        diff_id: input.diff_id,
    })
}

/// Adds an image to the store through `txn`: config and manifest blobs, the record, and
/// `tag` pointing at it. The layers must be in the store already.
pub fn add_image(
    store: &Store,
    txn: &mut Txn<'_>,
    config: &[u8],
    layers: &[Imported],
    source: &str,
) -> Result<ImageRecord> {
    let config_digest = digest::of_bytes(config);
    let staged = store.stage_bytes(config)?;
    txn.place(&staged, &store.blob_path(&config_digest))?;
    let mut descs = Vec::new();
    for l in layers {
        descs.push(
            DescriptorBuilder::default()
                .media_type(MediaType::from(l.compression.media_type()))
                .digest(digest::to_oci(&l.digest))
                .size(l.size)
                .build()
                .ctx(|| "layer descriptor")?,
        );
    }
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageConfig)
                .digest(digest::to_oci(&config_digest))
                .size(config.len() as u64)
                .build()
                .ctx(|| "config descriptor")?,
        )
        .layers(descs)
        .build()
        .ctx(|| "manifest")?;
    let manifest_bytes = serde_json::to_vec(&manifest).ctx(|| "encode the manifest")?;
    let manifest_digest = digest::of_bytes(&manifest_bytes);
    let staged = store.stage_bytes(&manifest_bytes)?;
    txn.place(&staged, &store.blob_path(&manifest_digest))?;
    let rec = ImageRecord {
        id: digest::full(&config_digest),
        manifest: digest::full(&manifest_digest),
        manifest_size: manifest_bytes.len() as u64,
        layers: layers
            .iter()
            .map(|l| ImageLayer {
                digest: digest::full(&l.digest),
                size: l.size,
                media_type: l.compression.media_type().to_string(),
                diff_id: digest::full(&l.diff_id),
            })
            .collect(),
        source: source.to_string(),
    };
    store.put_image(txn, &rec)?;
    Ok(rec)
}

/// Points `tag` at image `id`.
pub fn set_tag(store: &Store, tag: &str, id: &str) -> Result<()> {
    check_tag(tag)?;
    let mut tags = store.tags()?;
    tags.insert(tag.to_string(), id.to_string());
    store.set_tags(&tags)
}

/// Tags are image references as docker and podman read them: `[HOST[:PORT]/]NAME[:TAG]`,
/// NAME's components lowercase letters and digits joined by `.`, `_`, `__` or dashes, TAG
/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`, at most 255 characters (`oci_spec`'s parser of the
/// distribution grammar). Refused as docker refuses them: a digest (`NAME@sha256:...`), 64
/// hex digits (an image id), and a digest algorithm as the name (`sha256:...` reads as an id).
pub fn check_tag(tag: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid(format!("tag {}: {why}", quote(tag))));
    if tag.len() > 255 {
        return bad("longer than 255 characters");
    }
    if digest::is_hex64(tag) {
        return bad("64 hex digits are an image id, not a name");
    }
    let r = match oci_spec::distribution::Reference::try_from(tag) {
        Ok(r) => r,
        Err(e) => {
            return bad(&format!(
                "not an image reference ({e}): use [HOST/]NAME[:TAG], lowercase"
            ))
        }
    };
    if r.digest().is_some() {
        return bad("a tag cannot hold a digest");
    }
    let name = match tag.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => n,
        _ => tag,
    };
    if matches!(name, "sha256" | "sha384" | "sha512") {
        return bad("a digest algorithm as the name reads as an image id");
    }
    Ok(())
}

/// An image read from its source and checked, with every layer blob open: all of an import
/// that needs no store, done before the store is locked (a source that blocks or fails
/// holds up no other command).
pub struct Prepared {
    /// `import PATH`, for the image record.
    source: String,
    /// The config blob.
    config: Vec<u8>,
    /// The layers, bottom first, with their blobs open.
    layers: Vec<(LayerRef, Box<dyn Read + Send>)>,
    /// The tag to give it.
    tag: Option<String>,
}

/// Reads and checks `path`'s image (the one `reference` names), and opens its blobs.
pub fn prepare(path: &Path, tag: Option<&str>, reference: Option<&str>) -> Result<Prepared> {
    if let Some(t) = tag {
        check_tag(t)?;
    }
    let files = Files::open(path)?;
    let image = source::find_image(&files, reference)?;
    let tag = match tag {
        Some(t) => Some(t.to_string()),
        None => match image.tags.first() {
            Some(t) => {
                check_tag(t).map_err(|e| {
                    Error::invalid(format!(
                        "the image's name in {}: {e} (give it one with --tag)",
                        path.display()
                    ))
                })?;
                Some(t.clone())
            }
            None => None,
        },
    };
    let mut layers = Vec::new();
    for l in image.layers {
        let (reader, actual) = files.open_file(&l.file)?;
        if actual != l.size {
            let label = l
                .digest
                .as_ref()
                .map(digest::short)
                .unwrap_or_else(|| quote(&l.file));
            return Err(Error::invalid(format!(
                "layer {label}: the blob has {actual} bytes, the image claims {}",
                l.size
            )));
        }
        layers.push((l, reader));
    }
    Ok(Prepared {
        source: format!("import {}", path.display()),
        config: image.config,
        layers,
        tag,
    })
}

/// `import PATH [--tag NAME] [--ref REF] [--max-layer-size SIZE]` into the locked store:
/// returns the image and the tag given to it.
pub fn run(
    store: &Store,
    prepared: Prepared,
    max_layer_size: Option<u64>,
) -> Result<(ImageRecord, Option<String>)> {
    let mut txn = store.txn();
    let mut layers = Vec::new();
    for (l, reader) in prepared.layers {
        layers.push(import_layer(
            store,
            &mut txn,
            LayerInput {
                reader,
                max_size: max_layer_size,
                size: l.size,
                digest: l.digest.clone(),
                diff_id: l.diff_id.clone(),
            },
        )?);
    }
    let rec = add_image(store, &mut txn, &prepared.config, &layers, &prepared.source)?;
    txn.commit()?;
    if let Some(t) = &prepared.tag {
        set_tag(store, t, &rec.id)?;
    }
    Ok((rec, prepared.tag))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn tags() {
        for good in [
            "alpine",
            "alpine:3.19",
            "docker.io/library/alpine:latest",
            "localhost:5000/a/b_c.d-e:T_1.x",
            "3.19",
            "sha256x:1",
            "abcd",
        ] {
            assert!(check_tag(good).is_ok(), "{good}");
        }
        let hex = "a".repeat(64);
        let long = "a".repeat(256);
        for bad in [
            "",
            ":",
            "x:y:z",
            "../../x",
            "/abs:t",
            "Alpine",
            "a@sha256:0000",
            "sha256:abcd",
            "sha512:ab",
            hex.as_str(),
            &format!("sha256:{hex}"),
            long.as_str(),
            "a b",
            "a\n",
        ] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
    }
}
