//! Well-formed image archives around fuzzed parts: an archive's blobs are
//! named by their digests, so raw mutations die at the first digest check;
//! these builders compute the digests, so mutations reach the parsers
//! behind those checks (the layer unpacker, the manifest and config JSON).

use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tar archive of regular files.
fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, bytes) in members {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, *bytes)
            .expect("append to an in-memory tar");
    }
    tar.into_inner().expect("finish an in-memory tar")
}

/// A docker-archive (`docker save`) of one image whose only layer is
/// `layer`, with its config named by its digest and listing the layer's
/// digest as its diff_id.
pub fn docker_archive(layer: &[u8]) -> Vec<u8> {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#,
        sha256_hex(layer)
    );
    let config_name = format!("{}.json", sha256_hex(config.as_bytes()));
    let manifest = format!(
        r#"[{{"Config":"{config_name}","RepoTags":["fuzz:latest"],"Layers":["layer.tar"]}}]"#
    );
    tar_of(&[
        ("manifest.json", manifest.as_bytes()),
        (&config_name, config.as_bytes()),
        ("layer.tar", layer),
    ])
}

/// The documents of an OCI layout, as one fuzz input: `index.json`, the
/// manifest, the config and (optionally) the layer, separated by two NUL
/// bytes. Placeholders are filled in before the archive is built, so the
/// digests match whatever the JSON around them became: `@L`/`@l` the
/// layer's digest and size, `@D` its diff_id, `@C`/`@c` the config's,
/// `@M`/`@m` the manifest's.
pub struct OciParts {
    pub index: Vec<u8>,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
}

impl OciParts {
    /// The parts of a fuzz input; a missing layer is a small valid one.
    pub fn split(data: &[u8]) -> OciParts {
        let mut parts = Vec::new();
        let mut rest = data;
        while parts.len() < 3 {
            match rest.windows(2).position(|w| w == [0, 0]) {
                Some(at) => {
                    parts.push(rest[..at].to_vec());
                    rest = &rest[at + 2..];
                }
                None => break,
            }
        }
        parts.push(rest.to_vec());
        let layer = if parts.len() == 4 {
            parts.pop().unwrap_or_default()
        } else {
            tar_of(&[("etc/hello", b"hello\n".as_slice())])
        };
        parts.resize(3, Vec::new());
        let config = parts.pop().unwrap_or_default();
        let manifest = parts.pop().unwrap_or_default();
        let index = parts.pop().unwrap_or_default();
        OciParts {
            index,
            manifest,
            config,
            layer,
        }
    }

    /// The parts as one fuzz input (what [`split`](Self::split) reads).
    pub fn join(&self) -> Vec<u8> {
        [&self.index[..], &self.manifest, &self.config, &self.layer].join(&[0u8, 0][..])
    }
}

fn fill(text: &[u8], values: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    'scan: while i < text.len() {
        for (token, value) in values {
            if text[i..].starts_with(token.as_bytes()) {
                out.extend_from_slice(value.as_bytes());
                i += token.len();
                continue 'scan;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// An oci-archive (an OCI layout in a tar) of `parts`, placeholders filled.
pub fn oci_archive(parts: &OciParts) -> Vec<u8> {
    let layer_hex = sha256_hex(&parts.layer);
    let mut values = vec![
        ("@L", format!("sha256:{layer_hex}")),
        ("@l", parts.layer.len().to_string()),
        ("@D", format!("sha256:{layer_hex}")),
    ];
    let config = fill(&parts.config, &values);
    let config_hex = sha256_hex(&config);
    values.push(("@C", format!("sha256:{config_hex}")));
    values.push(("@c", config.len().to_string()));
    let manifest = fill(&parts.manifest, &values);
    let manifest_hex = sha256_hex(&manifest);
    values.push(("@M", format!("sha256:{manifest_hex}")));
    values.push(("@m", manifest.len().to_string()));
    let index = fill(&parts.index, &values);
    let blob = |hex: &str| format!("blobs/sha256/{hex}");
    let (layer_name, config_name, manifest_name) =
        (blob(&layer_hex), blob(&config_hex), blob(&manifest_hex));
    tar_of(&[
        (
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#.as_slice(),
        ),
        ("index.json", &index),
        (&manifest_name, &manifest),
        (&config_name, &config),
        (&layer_name, &parts.layer),
    ])
}

/// `data` with the checksum of every tar header it holds recomputed (a
/// header is found where the previous entry's declared size ends), so that
/// mutated sizes, names, types, link targets and PAX records are parsed
/// rather than refused as corrupt. Compressed data is left as it is.
pub fn fix_tar_checksums(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    if out.starts_with(&[0x1f, 0x8b]) || out.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return out;
    }
    let mut at = 0usize;
    while at + 512 <= out.len() {
        let header = &mut out[at..at + 512];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        header[148..156].fill(b' ');
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let Some(size) = header_size(&header[124..136]) else {
            break;
        };
        let Some(next) = size
            .checked_add(511)
            .map(|s| s / 512 * 512)
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| at.checked_add(512 + s))
        else {
            break;
        };
        at = next;
    }
    out
}

/// A tar header's size field: octal text, or base-256 when its top bit is set.
fn header_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        return field[1..]
            .iter()
            .try_fold(0u64, |n, &b| n.checked_mul(256)?.checked_add(u64::from(b)));
    }
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}
