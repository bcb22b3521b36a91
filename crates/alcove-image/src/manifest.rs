//! From an archive's index to a plan: which config and which layers, in
//! order, each with the digests to check it against. OCI layouts (and
//! oci-archives) go index -> manifest -> config and layers, every blob
//! verified against its descriptor; docker-archives go manifest.json ->
//! config (named by its digest) and layers (checked against the config's
//! diff_ids when unpacked).

use crate::digest::{sha256_hex, verify};
use crate::source::Source;
use crate::ImageError;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

pub(crate) struct LayerPlan {
    /// Where the blob is in the source.
    pub member: String,
    /// sha256 hex of the blob as stored, when the format names it.
    pub blob_digest: Option<String>,
    /// sha256 hex of the uncompressed tar (the config's diff_id).
    pub diff_id: String,
    /// Bytes of the blob as stored.
    pub size: u64,
}

pub(crate) struct ImagePlan {
    /// The name the archive gives the image, if any.
    pub name: Option<String>,
    /// sha256 hex of the config: the image's id.
    pub config_digest: String,
    pub config: ImageConfiguration,
    /// Bottom layer first.
    pub layers: Vec<LayerPlan>,
}

/// `reference` picks one of several images in an OCI layout by its ref.name.
pub(crate) fn plan(source: &Source, reference: Option<&str>) -> Result<ImagePlan, ImageError> {
    if source.exists("index.json") && source.exists("oci-layout") {
        oci_plan(source, reference)
    } else if source.exists("manifest.json") {
        docker_plan(source)
    } else {
        Err(ImageError::Format(format!(
            "{}: no index.json and oci-layout (an OCI layout) nor manifest.json (a docker-archive)",
            source.describe()
        )))
    }
}

fn format(source: &Source, what: impl std::fmt::Display) -> ImageError {
    ImageError::Format(format!("{}: {what}", source.describe()))
}

/// A blob named by `d`, read whole and checked against its digest and size.
fn read_blob(source: &Source, d: &Descriptor, what: &str) -> Result<Vec<u8>, ImageError> {
    let hex = sha256_hex(d.digest().as_ref())?;
    let bytes = source.read_small(&format!("blobs/sha256/{hex}"))?;
    if bytes.len() as u64 != d.size() {
        return Err(format(
            source,
            format!(
                "the {what} is {} bytes, its descriptor says {}",
                bytes.len(),
                d.size()
            ),
        ));
    }
    verify(&format!("the {what} blob"), &bytes, &hex)?;
    Ok(bytes)
}

fn oci_plan(source: &Source, reference: Option<&str>) -> Result<ImagePlan, ImageError> {
    let index = ImageIndex::from_reader(&source.read_small("index.json")?[..])
        .map_err(|e| format(source, format!("index.json: {e}")))?;
    let (descriptor, name) = pick_manifest(source, &index, reference, 0)?;
    let manifest = ImageManifest::from_reader(&read_blob(source, &descriptor, "manifest")?[..])
        .map_err(|e| format(source, format!("the manifest: {e}")))?;
    let config_bytes = read_blob(source, manifest.config(), "config")?;
    let config_digest = sha256_hex(manifest.config().digest().as_ref())?;
    let config = ImageConfiguration::from_reader(&config_bytes[..])
        .map_err(|e| format(source, format!("the image config: {e}")))?;
    let diff_ids = diff_ids(source, &config, manifest.layers().len())?;
    let mut layers = Vec::new();
    for (d, diff_id) in manifest.layers().iter().zip(diff_ids) {
        match d.media_type() {
            MediaType::ImageLayer
            | MediaType::ImageLayerGzip
            | MediaType::ImageLayerZstd
            | MediaType::ImageLayerNonDistributable
            | MediaType::ImageLayerNonDistributableGzip
            | MediaType::ImageLayerNonDistributableZstd => {}
            MediaType::Other(t)
                if t.starts_with("application/vnd.docker.image.rootfs.diff.tar") => {}
            other => {
                return Err(format(
                    source,
                    format!("a layer of media type {other} is not a file system layer"),
                ))
            }
        }
        let hex = sha256_hex(d.digest().as_ref())?;
        layers.push(LayerPlan {
            member: format!("blobs/sha256/{hex}"),
            blob_digest: Some(hex),
            diff_id,
            size: d.size(),
        });
    }
    Ok(ImagePlan {
        name,
        config_digest,
        config,
        layers,
    })
}

fn ref_name(d: &Descriptor) -> Option<String> {
    let a = d.annotations().as_ref()?;
    a.get("io.containerd.image.name")
        .or_else(|| a.get("org.opencontainers.image.ref.name"))
        .cloned()
}

/// The manifest for this machine's platform, following nested indexes;
/// `reference` picks among several images by ref.name.
fn pick_manifest(
    source: &Source,
    index: &ImageIndex,
    reference: Option<&str>,
    depth: u32,
) -> Result<(Descriptor, Option<String>), ImageError> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let is_manifest = |d: &&Descriptor| {
        matches!(
            d.media_type(),
            MediaType::ImageManifest | MediaType::ImageIndex
        ) || matches!(d.media_type(), MediaType::Other(t) if t.contains("docker.distribution.manifest"))
    };
    let for_us = |d: &&Descriptor| {
        d.platform()
            .as_ref()
            .is_none_or(|p| p.os().to_string() == "linux" && p.architecture().to_string() == arch)
    };
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(is_manifest)
        .filter(for_us)
        .collect();
    let refs: Vec<String> = candidates.iter().filter_map(|d| ref_name(d)).collect();
    let tag_of = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.ref.name").cloned())
    };
    let chosen = match (reference, candidates.as_slice()) {
        (Some(r), _) => *candidates
            .iter()
            .find(|d| tag_of(d).as_deref() == Some(r) || ref_name(d).as_deref() == Some(r))
            .ok_or_else(|| {
                format(
                    source,
                    format!("no image {r:?} in index.json (it has: {})", refs.join(", ")),
                )
            })?,
        (None, [one]) => *one,
        (None, []) => {
            return Err(format(
                source,
                format!("no manifest for linux/{arch} in index.json"),
            ))
        }
        (None, [first, ..]) => {
            let distinct: std::collections::BTreeSet<&String> = refs.iter().collect();
            if distinct.len() > 1 {
                return Err(format(
                    source,
                    format!(
                        "it holds {} images ({}): pick one with --ref",
                        candidates.len(),
                        refs.join(", ")
                    ),
                ));
            }
            *first
        }
    };
    let name = ref_name(chosen);
    if matches!(chosen.media_type(), MediaType::ImageIndex) {
        if depth > 2 {
            return Err(format(source, "indexes nested too deep"));
        }
        let nested = ImageIndex::from_reader(&read_blob(source, chosen, "index")?[..])
            .map_err(|e| format(source, format!("a nested index: {e}")))?;
        let (d, inner_name) = pick_manifest(source, &nested, None, depth + 1)?;
        return Ok((d, name.or(inner_name)));
    }
    Ok((chosen.clone(), name))
}

fn diff_ids(
    source: &Source,
    config: &ImageConfiguration,
    layers: usize,
) -> Result<Vec<String>, ImageError> {
    let ids = config.rootfs().diff_ids();
    if ids.len() != layers {
        return Err(format(
            source,
            format!(
                "the config lists {} layers (diff_ids), the manifest {layers}",
                ids.len()
            ),
        ));
    }
    ids.iter().map(|d| sha256_hex(d)).collect()
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn docker_plan(source: &Source) -> Result<ImagePlan, ImageError> {
    let entries: Vec<DockerManifest> = serde_json::from_slice(&source.read_small("manifest.json")?)
        .map_err(|e| format(source, format!("manifest.json: {e}")))?;
    let [m] = entries.as_slice() else {
        return Err(format(
            source,
            format!(
                "manifest.json holds {} images; alcove imports archives of one",
                entries.len()
            ),
        ));
    };
    let config_bytes = source.read_small(&m.config)?;
    // The config is named by its digest ("<hex>.json" or "blobs/sha256/<hex>").
    let stem = m
        .config
        .rsplit('/')
        .next()
        .unwrap_or("")
        .trim_end_matches(".json");
    let config_digest = sha256_hex(&format!("sha256:{stem}")).map_err(|_| {
        format(
            source,
            format!("the config {} is not named by its digest", m.config),
        )
    })?;
    verify("the config", &config_bytes, &config_digest)?;
    let config = ImageConfiguration::from_reader(&config_bytes[..])
        .map_err(|e| format(source, format!("the image config: {e}")))?;
    let ids = diff_ids(source, &config, m.layers.len())?;
    let mut layers = Vec::new();
    for (member, diff_id) in m.layers.iter().zip(ids) {
        let (_, size) = source.reader(member)?;
        let blob_digest = member
            .strip_prefix("blobs/sha256/")
            .map(|h| sha256_hex(&format!("sha256:{h}")))
            .transpose()?;
        layers.push(LayerPlan {
            member: member.clone(),
            blob_digest,
            diff_id,
            size,
        });
    }
    let name = m.repo_tags.as_ref().and_then(|t| t.first().cloned());
    Ok(ImagePlan {
        name,
        config_digest,
        config,
        layers,
    })
}
