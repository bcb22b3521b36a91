//! The store: unpacked layers by diff_id (`layers/<hex>/`, overlayfs lower
//! dirs shared by every image that has them), an index of images and layers
//! (`index.json`, replaced atomically under `index.lock`), lease files that
//! sandboxes hold shared while they use a layer, and a staging directory.

use crate::ImageError;
use alcove_sys::fd::{flock, Lock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where images live unless told otherwise.
pub const DEFAULT_STORE: &str = "/var/lib/alcove/images";

/// What an image says about running it (from its OCI config).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` strings.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// Recorded, not acted on (sandboxes have no inbound network).
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// An imported image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    /// sha256 hex of its config.
    pub id: String,
    /// diff_ids (sha256 hex of each uncompressed layer), bottom first.
    pub layers: Vec<String>,
    pub config: RunConfig,
    pub architecture: String,
    pub os: String,
    pub created: Option<String>,
    /// Unix seconds.
    pub imported_at: u64,
}

/// One unpacked layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Bytes of file content.
    pub bytes: u64,
    pub entries: u64,
}

/// A line of `image ls`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageSummary {
    pub name: String,
    pub id: String,
    pub layers: usize,
    /// Bytes of its layers' files.
    pub size: u64,
    /// Of `size`, bytes in layers other images use too (stored once).
    pub shared: u64,
    pub created: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Index {
    pub images: Vec<ImageRecord>,
    pub layers: BTreeMap<String, LayerInfo>,
}

/// Layers held for a sandbox: `image prune` skips them while this lives.
#[derive(Debug)]
pub struct Lease {
    _locks: Vec<File>,
}

/// What `image prune` did.
#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub removed_layers: usize,
    pub removed_bytes: u64,
    /// Unreferenced layers left because a sandbox is using them.
    pub in_use: usize,
    /// Images no longer named in the store (removed with --force, or
    /// replaced by a new import of their name) whose layers are kept
    /// because deployed functions run them: `image (id) for holder, ...`.
    pub pinned: Vec<String>,
}

pub struct Store {
    pub(crate) root: PathBuf,
}

/// Opens (creating) the lock file `path` and locks it as `how` says;
/// `None` when a `TryExclusive` lock is held by someone else.
fn lock_file(path: &Path, how: Lock) -> Result<Option<File>, ImageError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(ImageError::io(format!("opening {}", path.display())))?;
    let locked =
        flock(file.as_fd(), how).map_err(ImageError::io(format!("locking {}", path.display())))?;
    Ok(locked.then_some(file))
}

impl Store {
    /// Opens the store at `root`, creating it (mode 0700: layers keep their
    /// set-id bits, which no host user may reach).
    pub fn open(root: &Path) -> Result<Store, ImageError> {
        let io = |what: &str| ImageError::io(format!("{what} {}", root.display()));
        for sub in ["", "layers", "leases", "tmp"] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root.join(sub))
                .map_err(io("creating"))?;
        }
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(io("securing"))?;
        Ok(Store {
            root: root.to_owned(),
        })
    }

    /// The directory of an unpacked layer.
    pub fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(diff_id)
    }

    pub(crate) fn staging_dir(&self, diff_id: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{diff_id}.{}", alcove_sys::process::random_id()))
    }

    pub(crate) fn index_lock(&self, exclusive: bool) -> Result<File, ImageError> {
        let how = if exclusive {
            Lock::Exclusive
        } else {
            Lock::Shared
        };
        Ok(lock_file(&self.root.join("index.lock"), how)?.expect("a blocking lock is taken"))
    }

    fn lease_path(&self, diff_id: &str) -> PathBuf {
        self.root.join("leases").join(format!("{diff_id}.lock"))
    }

    pub(crate) fn read_index(&self) -> Result<Index, ImageError> {
        match std::fs::read(self.root.join("index.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ImageError::Format(format!("the store's index.json is damaged: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(ImageError::io("reading the store's index")(e)),
        }
    }

    fn write_index(&self, index: &Index) -> Result<(), ImageError> {
        let io = ImageError::io("writing the store's index");
        let tmp = self
            .root
            .join(format!("index.json.{}", alcove_sys::process::random_id()));
        let mut file = File::create(&tmp).map_err(ImageError::io("writing the store's index"))?;
        let bytes = serde_json::to_vec_pretty(index).expect("the index serializes");
        let written = file.write_all(&bytes).and_then(|()| file.sync_all());
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, self.root.join("index.json"))) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        Ok(())
    }

    /// Holds layer `diff_id` (shared) so prune leaves it alone.
    pub(crate) fn lease_layer(&self, diff_id: &str) -> Result<File, ImageError> {
        Ok(lock_file(&self.lease_path(diff_id), Lock::Shared)?.expect("a blocking lock is taken"))
    }

    /// Removes the lease file of a layer that is not stored (an import that
    /// failed before storing it), unless someone holds it.
    pub(crate) fn drop_unused_lease(&self, diff_id: &str) {
        if self.layer_dir(diff_id).exists() {
            return;
        }
        if let Ok(Some(_held)) = self.try_exclusive(diff_id) {
            let _ = std::fs::remove_file(self.lease_path(diff_id));
        }
    }

    /// Records unpacked layers and (re)names an image; an image of the same
    /// name is replaced (its layers stay until `prune`).
    pub(crate) fn add(
        &self,
        mut record: ImageRecord,
        layers: &BTreeMap<String, LayerInfo>,
    ) -> Result<ImageRecord, ImageError> {
        let _lock = self.index_lock(true)?;
        let mut index = self.read_index()?;
        index
            .layers
            .extend(layers.iter().map(|(k, v)| (k.clone(), *v)));
        if let Some(old) = index.images.iter_mut().find(|i| i.name == record.name) {
            if old.id == record.id && old.layers == record.layers {
                record.imported_at = old.imported_at; // the same image again: nothing changes
            }
            *old = record.clone();
        } else {
            index.images.push(record.clone());
            index.images.sort_by(|a, b| a.name.cmp(&b.name));
        }
        self.write_index(&index)?;
        Ok(record)
    }

    /// The image called `name` (`app` means `app:latest`), or whose id starts with it.
    pub fn get(&self, name: &str) -> Result<ImageRecord, ImageError> {
        let _lock = self.index_lock(false)?;
        find(&self.read_index()?, name).cloned()
    }

    /// The image and a lease on its layers, for a sandbox about to use them.
    pub fn lease(&self, name: &str) -> Result<(ImageRecord, Lease), ImageError> {
        let _lock = self.index_lock(false)?;
        let record = match find(&self.read_index()?, name) {
            Ok(record) => record.clone(),
            // A pinned image whose name is gone: still there by its id.
            Err(e @ ImageError::NotFound(_)) => {
                let id = name.strip_prefix("sha256:").unwrap_or(name);
                let pins = self.read_pins()?;
                let pinned = (id.len() >= 12)
                    .then(|| pins.into_iter().find(|p| p.image.id.starts_with(id)))
                    .flatten();
                pinned.map(|p| p.image).ok_or(e)?
            }
            Err(e) => return Err(e),
        };
        let locks = record
            .layers
            .iter()
            .map(|l| self.lease_layer(l))
            .collect::<Result<_, _>>()?;
        Ok((record, Lease { _locks: locks }))
    }

    /// The image's layer directories, top-most first (overlayfs' lowerdir order).
    pub fn lower_dirs(&self, record: &ImageRecord) -> Vec<PathBuf> {
        record
            .layers
            .iter()
            .rev()
            .map(|l| self.layer_dir(l))
            .collect()
    }

    pub fn images(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let _lock = self.index_lock(false)?;
        let index = self.read_index()?;
        let mut users: BTreeMap<&str, usize> = BTreeMap::new();
        for image in &index.images {
            for layer in image.layers.iter().collect::<BTreeSet<_>>() {
                *users.entry(layer).or_default() += 1;
            }
        }
        let bytes = |l: &String| index.layers.get(l).map_or(0, |i| i.bytes);
        Ok(index
            .images
            .iter()
            .map(|image| {
                let distinct: BTreeSet<&String> = image.layers.iter().collect();
                ImageSummary {
                    name: image.name.clone(),
                    id: image.id.clone(),
                    layers: image.layers.len(),
                    size: distinct.iter().map(|l| bytes(l)).sum(),
                    shared: distinct
                        .iter()
                        .filter(|l| users[l.as_str()] > 1)
                        .map(|l| bytes(l))
                        .sum(),
                    created: image.created.clone(),
                }
            })
            .collect())
    }

    pub fn layer_info(&self, diff_id: &str) -> Result<Option<LayerInfo>, ImageError> {
        let _lock = self.index_lock(false)?;
        Ok(self.read_index()?.layers.get(diff_id).copied())
    }

    /// Forgets an image; its layers stay until `prune`. An image deployed
    /// functions pin is refused unless `force` (they keep running it).
    pub fn remove(&self, name: &str, force: bool) -> Result<ImageRecord, ImageError> {
        let _lock = self.index_lock(true)?;
        let mut index = self.read_index()?;
        let record = find(&index, name)?.clone();
        let pins = self.read_pins()?;
        let holding: Vec<&crate::Pin> = pins.iter().filter(|p| p.image.id == record.id).collect();
        if !holding.is_empty() && !force {
            return Err(ImageError::Pinned {
                name: record.name,
                holders: crate::pins::holders(&holding),
            });
        }
        index.images.retain(|i| i.name != record.name);
        self.write_index(&index)?;
        Ok(record)
    }

    /// Removes layers no image references and no sandbox holds, and staging
    /// directories no import is writing.
    pub fn prune(&self) -> Result<PruneReport, ImageError> {
        let _lock = self.index_lock(true)?;
        let mut index = self.read_index()?;
        let mut referenced: BTreeSet<String> = index
            .images
            .iter()
            .flat_map(|i| i.layers.iter().cloned())
            .collect();
        let mut report = PruneReport::default();
        let pins = self.read_pins()?;
        let mut kept: BTreeMap<String, Vec<&crate::Pin>> = BTreeMap::new();
        for pin in &pins {
            referenced.extend(pin.image.layers.iter().cloned());
            if !index.images.iter().any(|i| i.id == pin.image.id) {
                let short = pin.image.id.get(..12).unwrap_or(&pin.image.id);
                kept.entry(format!("{} ({short})", pin.image.name))
                    .or_default()
                    .push(pin);
            }
        }
        report.pinned = kept
            .iter()
            .map(|(image, pins)| format!("{image} for {}", crate::pins::holders(pins)))
            .collect();
        let mut on_disk: BTreeSet<String> = BTreeSet::new();
        for entry in std::fs::read_dir(self.root.join("layers"))
            .map_err(ImageError::io("listing layers"))?
            .flatten()
        {
            on_disk.insert(entry.file_name().to_string_lossy().into_owned());
        }
        let candidates: BTreeSet<String> = on_disk
            .union(&index.layers.keys().cloned().collect())
            .cloned()
            .collect();
        for layer in candidates.difference(&referenced) {
            let Some(lock) = self.try_exclusive(layer)? else {
                report.in_use += 1;
                continue;
            };
            let dir = self.layer_dir(layer);
            if dir.exists() {
                let trash = self
                    .root
                    .join("tmp")
                    .join(format!("trash.{}", alcove_sys::process::random_id()));
                std::fs::rename(&dir, &trash).map_err(ImageError::io("moving a layer out"))?;
                std::fs::remove_dir_all(&trash).map_err(ImageError::io("removing a layer"))?;
            }
            report.removed_layers += 1;
            report.removed_bytes += index.layers.remove(layer).map_or(0, |i| i.bytes);
            let _ = std::fs::remove_file(self.lease_path(layer));
            drop(lock);
        }
        self.write_index(&index)?;
        // Lease files of layers never stored (imports that died).
        for entry in std::fs::read_dir(self.root.join("leases"))
            .map_err(ImageError::io("listing leases"))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(layer) = name.strip_suffix(".lock") {
                self.drop_unused_lease(layer);
            }
        }
        // Staging left by imports that died; a live import holds its layer's lease.
        for entry in std::fs::read_dir(self.root.join("tmp"))
            .map_err(ImageError::io("listing staging"))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let layer = name.split('.').next().unwrap_or("");
            let free = name.starts_with("trash.") || self.try_exclusive(layer)?.is_some();
            if free {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(report)
    }

    fn try_exclusive(&self, layer: &str) -> Result<Option<File>, ImageError> {
        lock_file(&self.lease_path(layer), Lock::TryExclusive)
    }
}

/// The image `name` means: the image called exactly that (`app` meaning
/// `app:latest`), else the one whose id starts with it (12 or more hex
/// digits), else the one whose name is the same reference as docker
/// normalises it (`app:2`, `library/app:2`, `docker.io/app:2` and
/// `docker.io/library/app:2` are one); two or more such images are an error
/// naming them.
pub(crate) fn find<'a>(index: &'a Index, name: &str) -> Result<&'a ImageRecord, ImageError> {
    let full = normalize_name(name);
    if let Some(exact) = index.images.iter().find(|i| i.name == full) {
        return Ok(exact);
    }
    let id = name.strip_prefix("sha256:").unwrap_or(name);
    if id.len() >= 12 {
        if let Some(by_id) = index.images.iter().find(|i| i.id.starts_with(id)) {
            return Ok(by_id);
        }
    }
    let wanted = crate::names::canonical(name);
    let same: Vec<&ImageRecord> = index
        .images
        .iter()
        .filter(|i| crate::names::canonical(&i.name) == wanted)
        .collect();
    match same[..] {
        [] => Err(ImageError::NotFound(name.to_owned())),
        [one] => Ok(one),
        _ => Err(ImageError::Ambiguous {
            name: name.to_owned(),
            candidates: same.iter().map(|i| i.name.clone()).collect(),
        }),
    }
}

/// Adds `:latest` to a name without a tag.
pub(crate) fn normalize_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// Image names: lower-case letters, digits, `.`, `_`, `-` and `/`, then an
/// optional `:tag` of letters, digits, `.`, `_` and `-`; at most 255 bytes.
pub(crate) fn valid_name(name: &str) -> bool {
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (name, None),
    };
    let repo_ok = !repo.is_empty()
        && repo.as_bytes()[0].is_ascii_alphanumeric()
        && repo
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-".contains(&b));
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    name.len() <= 255 && repo_ok && tag_ok && !name.contains("//") && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::{normalize_name, valid_name};

    #[test]
    fn names_get_a_tag_and_are_checked() {
        assert_eq!(normalize_name("app"), "app:latest");
        assert_eq!(
            normalize_name("docker.io/library/app:3"),
            "docker.io/library/app:3"
        );
        assert_eq!(normalize_name("registry/app"), "registry/app:latest");
        for ok in [
            "app:1",
            "docker.io/library/python:3.11-slim",
            "a_b.c-d:latest",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "App:1", ":1", "app:", "../x:1", "a//b:1", "app:1/2", "-app:1", "app:t@g",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
