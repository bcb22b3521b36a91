//! `alcove image ...`, and what `--image` does to a sandbox spec.

use alcove_image::{import, ImageRecord, ImportOptions, Lease, Store, DEFAULT_STORE};
use alcove_sandbox::{SandboxSpec, User};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::ffi::OsString;
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
    /// Forget an image (its layers stay until `image prune`).
    Rm { name: String },
    /// Remove layers no image uses and no running sandbox holds.
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
        ImageCommand::Rm { name } => {
            let record = store.remove(&name)?;
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
            }
        }
    }
    Ok(())
}

/// Makes `spec` run `record`: its layers as the root, its environment under
/// the caller's, and its command, working directory and user where the
/// caller gave none. Image users that are root run as nobody: alcove has no
/// user namespace, so uid 0 inside would be uid 0 on the host.
pub fn apply(
    spec: &mut SandboxSpec,
    store: &Store,
    record: &ImageRecord,
    explicit_user: bool,
    explicit_workdir: bool,
) -> anyhow::Result<()> {
    let mut lowers = store.lower_dirs(record);
    if lowers.is_empty() {
        anyhow::bail!("image {} has no layers", record.name);
    }
    spec.rootfs = Some(lowers.remove(0));
    spec.lower_layers = lowers;
    if spec.argv.is_empty() {
        spec.argv = record
            .config
            .entrypoint
            .iter()
            .chain(&record.config.cmd)
            .map(OsString::from)
            .collect();
        if spec.argv.is_empty() {
            anyhow::bail!(
                "image {} has no Entrypoint or Cmd: give a command after --",
                record.name
            );
        }
    }
    let mut env: Vec<(OsString, OsString)> = record
        .config
        .env
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
        .collect();
    for (k, v) in spec.env.drain(..) {
        env.retain(|(key, _)| *key != k);
        env.push((k, v));
    }
    spec.env = env;
    if !explicit_workdir {
        if let Some(dir) = &record.config.working_dir {
            spec.workdir = dir.into();
        }
    }
    if !explicit_user {
        if let Some(user) = &record.config.user {
            let resolved = resolve_user(store, record, user)?;
            if resolved.uid != 0 {
                spec.user = resolved;
            }
        }
    }
    Ok(())
}

/// `uid`, `uid:gid`, `name` or `name:group`, names looked up in the image's
/// /etc/passwd and /etc/group (top layer first).
fn resolve_user(store: &Store, record: &ImageRecord, user: &str) -> anyhow::Result<User> {
    let (who, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        for layer in store.lower_dirs(record) {
            let Ok(text) = std::fs::read_to_string(layer.join(file)) else {
                continue;
            };
            return text.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[0] == name)
                    .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                    .flatten()
            });
        }
        None
    };
    let (uid, mut gid) = match who.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => lookup("etc/passwd", who).with_context(|| {
            format!(
                "image {}: user {who:?} is not in its /etc/passwd",
                record.name
            )
        })?,
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup("etc/group", g)
                .map(|(gid, _)| gid)
                .with_context(|| {
                    format!(
                        "image {}: group {g:?} is not in its /etc/group",
                        record.name
                    )
                })?,
        };
    }
    Ok(User { uid, gid })
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
