//! `alcove image ...`, and what `--image` does to a sandbox spec.

use alcove_image::{import, ImageRecord, ImportOptions, Lease, Store, DEFAULT_STORE};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ImageArgs {
    /// The image store [default: $ALCOVE_IMAGES or /var/lib/alcove/images].
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Import an OCI layout directory, an oci-archive or a docker-archive tar
    /// (docker/podman save, skopeo copy, buildah push, umoci). Every blob is
    /// checked against its digest; layers already stored are not read again.
    Import {
        path: PathBuf,
        /// Name it (default: the name in the archive, else the file's name).
        #[arg(long)]
        name: Option<String>,
        /// Which image of an OCI layout holding several (its ref.name, such as a tag).
        #[arg(long = "ref", value_name = "REF")]
        reference: Option<String>,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
        /// Create device nodes found in layers (skipped by default).
        #[arg(long)]
        allow_devices: bool,
        /// Refuse images whose layers unpack to more than this many bytes of files.
        #[arg(long, value_name = "BYTES", default_value = "32G", value_parser = alcove_sandbox::units::parse_size)]
        max_size: u64,
        /// Refuse images whose layers hold more than this many entries.
        #[arg(long, value_name = "N", default_value_t = 2_000_000)]
        max_files: u64,
    },
    /// List images with their size and the part of it shared with other images.
    Ls,
    /// Show an image's record: id, layers, and the config alcove honours.
    Inspect { name: String },
    /// Forget an image (its layers stay until `image prune`). Refused for an
    /// image deployed functions run, unless --force.
    Rm {
        name: String,
        /// Forget it even though deployed functions run it (they keep
        /// running it; prune keeps its layers until they are removed).
        #[arg(long)]
        force: bool,
    },
    /// Remove layers no image uses, no running sandbox holds and no deployed
    /// function runs.
    Prune,
}

/// The store named by `--store`, `$ALCOVE_IMAGES`, or the default.
pub fn store_at(dir: Option<&Path>) -> anyhow::Result<Store> {
    let root = dir
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ALCOVE_IMAGES").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE));
    Store::open(&root).with_context(|| format!("opening the image store {}", root.display()))
}

pub fn main(args: ImageArgs) -> i32 {
    alcove_sys::signal::default_sigpipe();
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("alcove: error: {e:#}");
            125
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn run(args: ImageArgs) -> anyhow::Result<()> {
    let store = store_at(args.store.as_deref())?;
    let print =
        |v: serde_json::Value| println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    match args.command {
        ImageCommand::Import {
            path,
            name,
            reference,
            quiet,
            allow_devices,
            max_size,
            max_files,
        } => {
            let options = ImportOptions {
                name,
                reference,
                quiet: quiet || args.json,
                allow_devices,
                limits: alcove_image::Limits {
                    max_bytes: max_size,
                    max_entries: max_files,
                },
            };
            let r = import(&store, &path, &options)?;
            if args.json {
                print(serde_json::json!({
                    "name": r.image.name, "id": r.image.id, "layers": r.image.layers.len(),
                    "layers_unpacked": r.layers_unpacked, "layers_reused": r.layers_reused,
                    "blob_bytes": r.blob_bytes, "unpacked_bytes": r.unpacked_bytes,
                    "skipped_devices": r.skipped_devices, "seconds": r.seconds,
                }));
            } else {
                let rate = if r.seconds > 0.0 {
                    r.unpacked_bytes as f64 / 1e6 / r.seconds
                } else {
                    0.0
                };
                println!(
                    "imported {} (id {}): {} layers, {} unpacked, {} already stored; {} in {:.2} s ({rate:.0} MB/s)",
                    r.image.name,
                    &r.image.id[..12],
                    r.image.layers.len(),
                    r.layers_unpacked,
                    r.layers_reused,
                    mib(r.unpacked_bytes),
                    r.seconds
                );
                if r.skipped_devices > 0 {
                    eprintln!(
                        "alcove: {} device node(s) skipped (--allow-devices keeps them)",
                        r.skipped_devices
                    );
                }
            }
        }
        ImageCommand::Ls => {
            let images = store.images()?;
            if args.json {
                print(serde_json::to_value(&images)?);
            } else {
                println!(
                    "{:<32} {:<12} {:>6} {:>10} {:>10}  CREATED",
                    "NAME", "ID", "LAYERS", "SIZE", "SHARED"
                );
                for i in images {
                    println!(
                        "{:<32} {:<12} {:>6} {:>10} {:>10}  {}",
                        i.name,
                        &i.id[..12],
                        i.layers,
                        mib(i.size),
                        mib(i.shared),
                        i.created.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        ImageCommand::Inspect { name } => {
            let record = store.get(&name)?;
            let mut value = serde_json::to_value(&record)?;
            let sizes: Vec<serde_json::Value> = record
                .layers
                .iter()
                .map(|l| Ok(serde_json::json!({ "diff_id": format!("sha256:{l}"), "info": store.layer_info(l)? })))
                .collect::<anyhow::Result<_>>()?;
            value["layers"] = serde_json::Value::Array(sizes);
            print(value);
        }
        ImageCommand::Rm { name, force } => {
            let record = store.remove(&name, force)?;
            if args.json {
                print(serde_json::json!({ "removed": record.name }));
            } else {
                println!(
                    "removed {} (its layers stay until `alcove image prune`)",
                    record.name
                );
            }
        }
        ImageCommand::Prune => {
            let report = store.prune()?;
            // Templates may still show removed layers: drop those not in use.
            let _ = alcove_sandbox::gc_templates();
            if args.json {
                print(serde_json::to_value(&report)?);
            } else {
                println!(
                    "removed {} layer(s), {}; {} unused layer(s) kept because a sandbox is using them",
                    report.removed_layers,
                    mib(report.removed_bytes),
                    report.in_use
                );
                for kept in &report.pinned {
                    println!("kept the layers of {kept}");
                }
            }
        }
    }
    Ok(())
}

/// The image for `alcove run --image`: its record and a lease on its layers.
pub fn for_run(
    store_dir: Option<&Path>,
    name: &str,
) -> anyhow::Result<(Store, ImageRecord, Lease)> {
    let store = store_at(store_dir)?;
    let (record, lease) = store.lease(name)?;
    Ok((store, record, lease))
}
