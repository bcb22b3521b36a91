//! Importing an archive: plan, then for each layer not yet stored, unpack
//! it into a staging directory while checking both its digests, sync, and
//! rename it into place; then record the image. A layer is trusted only once
//! it is in `layers/`, so an interrupted import leaves nothing a later one
//! would reuse, and importing the same image again reads no layer at all.

use crate::digest::Hashing;
use crate::manifest::{plan, ImagePlan};
use crate::source::Source;
use crate::store::{normalize_name, valid_name, ImageRecord, LayerInfo, RunConfig, Store};
use crate::unpack::{unpack, Budget, Limits};
use crate::ImageError;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The name to give the image; else the archive's, else the file's.
    pub name: Option<String>,
    /// Which image of an OCI layout holding several (its ref.name).
    pub reference: Option<String>,
    /// No progress bar, even on a terminal.
    pub quiet: bool,
    /// Create device nodes found in layers (skipped by default).
    pub allow_devices: bool,
    pub limits: Limits,
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    pub image: ImageRecord,
    pub layers_unpacked: usize,
    pub layers_reused: usize,
    /// Bytes of layer blobs read (compressed, as stored in the archive).
    pub blob_bytes: u64,
    /// Bytes of files written.
    pub unpacked_bytes: u64,
    pub skipped_devices: u64,
    pub seconds: f64,
}

pub fn import(
    store: &Store,
    path: &Path,
    options: &ImportOptions,
) -> Result<ImportReport, ImageError> {
    let started = Instant::now();
    let source = Source::open(path)?;
    let plan = plan(&source, options.reference.as_deref())?;
    let name = image_name(options.name.as_deref(), plan.name.as_deref(), path)?;

    // Leases first, so a concurrent prune cannot take a layer between our
    // check and the index update.
    let leases = plan
        .layers
        .iter()
        .map(|l| store.lease_layer(&l.diff_id))
        .collect::<Result<Vec<_>, _>>();
    let result =
        leases.and_then(|_held| store_layers(store, &source, &plan, name, options, started));
    if result.is_err() {
        // A refused import leaves no lease files for layers it did not store.
        for layer in &plan.layers {
            store.drop_unused_lease(&layer.diff_id);
        }
    }
    result
}

/// Unpacks the layers the store lacks and records the image.
fn store_layers(
    store: &Store,
    source: &Source,
    plan: &ImagePlan,
    name: String,
    options: &ImportOptions,
    started: Instant,
) -> Result<ImportReport, ImageError> {
    let missing: Vec<usize> = (0..plan.layers.len())
        .filter(|&i| !store.layer_dir(&plan.layers[i].diff_id).is_dir())
        .collect();
    let progress = progress_bar(
        options.quiet,
        missing.iter().map(|&i| plan.layers[i].size).sum(),
    );
    let mut budget = Budget {
        limits: options.limits,
        bytes: 0,
        entries: 0,
    };
    let mut report = ImportReport {
        image: ImageRecord {
            name,
            id: plan.config_digest.clone(),
            layers: plan.layers.iter().map(|l| l.diff_id.clone()).collect(),
            config: run_config(&plan.config),
            architecture: plan.config.architecture().to_string(),
            os: plan.config.os().to_string(),
            created: plan.config.created().clone(),
            imported_at: now(),
        },
        layers_unpacked: 0,
        layers_reused: plan.layers.len() - missing.len(),
        blob_bytes: 0,
        unpacked_bytes: 0,
        skipped_devices: 0,
        seconds: 0.0,
    };
    let mut infos = BTreeMap::new();
    for (n, &i) in missing.iter().enumerate() {
        let layer = &plan.layers[i];
        progress.set_message(format!("layer {}/{}", n + 1, missing.len()));
        let short = &layer.diff_id[..12];
        let staging = store.staging_dir(&layer.diff_id);
        std::fs::create_dir(&staging).map_err(ImageError::io("creating a staging directory"))?;
        let result = (|| {
            let (reader, _) = source.reader(&layer.member)?;
            let mut blob = Hashing::new(progress.wrap_read(reader));
            let unpacked = unpack(
                &mut blob,
                &staging,
                short,
                &mut budget,
                options.allow_devices,
            )?;
            let (blob_digest, blob_bytes) = blob
                .finish()
                .map_err(ImageError::io(format!("reading layer {short}")))?;
            if let Some(expected) = &layer.blob_digest {
                if &blob_digest != expected {
                    return Err(ImageError::Digest {
                        what: format!("layer {short}'s blob"),
                        expected: expected.clone(),
                        actual: blob_digest,
                    });
                }
            }
            if unpacked.diff_id != layer.diff_id {
                return Err(ImageError::Digest {
                    what: format!("layer {short}'s content (its diff_id in the config)"),
                    expected: layer.diff_id.clone(),
                    actual: unpacked.diff_id,
                });
            }
            Ok((unpacked, blob_bytes))
        })();
        let (unpacked, blob_bytes) = match result {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                progress.abandon();
                return Err(e);
            }
        };
        let dir = store.layer_dir(&layer.diff_id);
        if std::fs::rename(&staging, &dir).is_err() {
            // Another import stored it meanwhile.
            let _ = std::fs::remove_dir_all(&staging);
        }
        infos.insert(
            layer.diff_id.clone(),
            LayerInfo {
                bytes: unpacked.bytes,
                entries: unpacked.entries,
            },
        );
        report.layers_unpacked += 1;
        report.blob_bytes += blob_bytes;
        report.unpacked_bytes += unpacked.bytes;
        report.skipped_devices += unpacked.skipped_devices;
    }
    progress.finish_and_clear();
    report.image = store.add(report.image, &infos)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn progress_bar(quiet: bool, total: u64) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() || total == 0 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

fn image_name(
    given: Option<&str>,
    archive: Option<&str>,
    path: &Path,
) -> Result<String, ImageError> {
    let stem = || {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = file.split('.').next().unwrap_or("").to_ascii_lowercase();
        let clean: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if clean.is_empty() {
            "image".to_owned()
        } else {
            clean
        }
    };
    let name = match (given, archive) {
        (Some(n), _) => n.to_owned(),
        // An OCI ref.name may be a tag only ("latest").
        (None, Some(a)) if !a.contains(['/', ':']) => format!("{}:{a}", stem()),
        (None, Some(a)) => a.to_owned(),
        (None, None) => stem(),
    };
    let name = normalize_name(&name);
    if !valid_name(&name) {
        return Err(ImageError::Invalid(format!(
            "image name {name:?}: use lower-case letters, digits, '.', '_', '-' and '/', then an optional :tag (--name app:1)"
        )));
    }
    Ok(name)
}

fn run_config(config: &oci_spec::image::ImageConfiguration) -> RunConfig {
    let Some(c) = config.config() else {
        return RunConfig::default();
    };
    RunConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
        user: c.user().clone().filter(|u| !u.is_empty()),
        exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
        labels: c
            .labels()
            .clone()
            .map(|l| l.into_iter().collect())
            .unwrap_or_default(),
    }
}

/// Unix seconds (whole: a float would not survive a JSON round trip bit
/// for bit, and a re-import must leave the index as it was).
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
