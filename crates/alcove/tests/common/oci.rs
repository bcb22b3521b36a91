//! Hand-made OCI layouts for the image tests: well-formed ones, and the
//! malicious ones real tools refuse to write (raw tar headers).

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// One tar entry, written with a raw name so that `..` and absolute paths
/// (which tar-rs's own setters refuse) can be made.
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Executable(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDevice(&'a str, u32, u32),
}

fn raw_name(header: &mut tar::Header, name: &str) {
    let bytes = name.as_bytes();
    let old = header.as_old_mut();
    old.name = [0; 100];
    old.name[..bytes.len()].copy_from_slice(bytes);
}

fn raw_link(header: &mut tar::Header, target: &str) {
    let bytes = target.as_bytes();
    let old = header.as_old_mut();
    old.linkname = [0; 100];
    old.linkname[..bytes.len()].copy_from_slice(bytes);
}

/// An uncompressed tar of `entries`.
pub fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let (name, data): (&str, &[u8]) = match entry {
            Entry::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (n, d)
            }
            Entry::Executable(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o755);
                (n, d)
            }
            Entry::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, &[])
            }
            Entry::Symlink(n, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                raw_link(&mut h, t);
                (n, &[])
            }
            Entry::HardLink(n, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                raw_link(&mut h, t);
                (n, &[])
            }
            Entry::CharDevice(n, major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                (n, &[])
            }
        };
        raw_name(&mut h, name);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let hex = sha256_hex(bytes);
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
    hex
}

/// Writes an OCI layout at `dir` with `layers` (uncompressed tars, bottom
/// first), gzip-compressed when `gzip`, and `config` (its `config` part);
/// returns the blob digests (hex) of the layers as stored.
pub fn layout(dir: &Path, layers: &[Vec<u8>], gzip_layers: bool, config: Value) -> Vec<String> {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut descriptors = Vec::new();
    let mut blobs = Vec::new();
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(l)))
        .collect();
    for layer in layers {
        let stored = if gzip_layers {
            gzip(layer)
        } else {
            layer.clone()
        };
        let hex = put_blob(dir, &stored);
        let media = if gzip_layers {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        descriptors.push(
            json!({ "mediaType": media, "digest": format!("sha256:{hex}"), "size": stored.len() }),
        );
        blobs.push(hex);
    }
    let config = json!({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    })
    .to_string();
    let config_hex = put_blob(dir, config.as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_hex}"), "size": config.len() },
        "layers": descriptors,
    })
    .to_string();
    let manifest_hex = put_blob(dir, manifest.as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_hex}"), "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": "latest" },
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    blobs
}
