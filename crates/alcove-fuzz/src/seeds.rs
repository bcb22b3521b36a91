//! The seed inputs of each target, as `fuzz/corpus/<target>/seed-*` holds
//! them (regenerate with `cargo test -p alcove-fuzz -- --ignored
//! write_seed_corpus`): small, valid, and each reaching a different path.

use crate::archive::{docker_archive, oci_archive, OciParts};
use base64::Engine as _;

fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    build(&mut tar);
    tar.into_inner().expect("finish an in-memory tar")
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_700_000_000);
    h
}

fn file(tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = header(tar::EntryType::Regular, data.len() as u64, mode);
    tar.append_data(&mut h, path, data).expect("append a file");
}

fn special(tar: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, link: &str) {
    let mut h = header(kind, 0, 0o644);
    if kind == tar::EntryType::Char {
        h.set_device_major(1)
            .expect("a GNU header has device fields");
        h.set_device_minor(3)
            .expect("a GNU header has device fields");
    }
    if link.is_empty() {
        tar.append_data(&mut h, path, &[][..])
    } else {
        tar.append_link(&mut h, path, link)
    }
    .expect("append an entry");
}

/// A layer with one of everything the unpacker handles.
fn rich_layer() -> Vec<u8> {
    tar_with(|t| {
        special(t, tar::EntryType::Directory, "etc", "");
        file(t, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644);
        file(t, "bin/tool", b"#!/bin/sh\necho hi\n", 0o4755);
        special(t, tar::EntryType::Symlink, "bin/sh", "/bin/busybox");
        special(t, tar::EntryType::Link, "bin/tool2", "bin/tool");
        special(t, tar::EntryType::Fifo, "run/fifo", "");
        special(t, tar::EntryType::Char, "dev/null", "");
        file(t, "var/.wh.cache", b"", 0o644);
        file(t, "opt/.wh..wh..opq", b"", 0o644);
        let long = format!("deep/{}/file", "d".repeat(120));
        file(t, &long, b"long name\n", 0o644);
    })
}

/// A layer whose entry carries PAX records (path, size, linkpath).
fn pax_layer() -> Vec<u8> {
    tar_with(|t| {
        t.append_pax_extensions([("path", b"pax/named/by/pax".as_slice()), ("mtime", b"1.5")])
            .expect("append PAX records");
        file(t, "short", b"pax content\n", 0o644);
        t.append_pax_extensions([("linkpath", b"/target/of/pax".as_slice())])
            .expect("append PAX records");
        special(t, tar::EntryType::Symlink, "paxlink", "x");
    })
}

fn code_archive() -> Vec<u8> {
    tar_with(|t| {
        special(t, tar::EntryType::Directory, "lib", "");
        file(t, "main.py", b"print('hi')\n", 0o644);
        file(t, "run.sh", b"#!/bin/sh\nexec python3 /fn/main.py\n", 0o755);
        file(t, "lib/util.py", b"X = 1\n", 0o644);
    })
}

/// The OCI layout documents, placeholders for the digests (see [`OciParts`]).
pub fn oci_parts(layer: Option<Vec<u8>>) -> OciParts {
    let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"@M","size":@m,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}"#;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"@C","size":@c},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"@L","size":@l}]}"#;
    let config = br#"{"created":"2024-01-01T00:00:00Z","architecture":"amd64","os":"linux","config":{"User":"1000:1000","Env":["PATH=/usr/bin:/bin","A=b"],"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"WorkingDir":"/work","ExposedPorts":{"80/tcp":{}},"Labels":{"k":"v"}},"rootfs":{"type":"layers","diff_ids":["@D"]}}"#;
    let mut parts = OciParts::split(&[&index[..], manifest, config].join(&[0u8, 0][..]));
    if let Some(layer) = layer {
        parts.layer = layer;
    }
    parts
}

/// `(file name, bytes)` of every seed of `target`.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let named = |list: Vec<(&str, Vec<u8>)>| {
        list.into_iter()
            .map(|(n, b)| (format!("seed-{n}"), b))
            .collect()
    };
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match target {
        "api_deploy" => named(vec![
            ("minimal", br#"{"name":"f","handler":["true"]}"#.to_vec()),
            (
                "full",
                serde_json::json!({
                    "name": "hello", "handler": ["python3", "/fn/main.py"],
                    "code": b64(&code_archive()), "env": {"A": "b"},
                    "secrets": {"db_password": "hunter2"}, "memory_bytes": 134_217_728u64,
                    "cpus": 0.5, "pids": 64, "timeout_ms": 5000, "output_bytes": 1_048_576,
                    "net": "none", "concurrency": 4, "accel": "auto"
                })
                .to_string()
                .into_bytes(),
            ),
            (
                "image",
                br#"{"name":"img","image":"fuzz:latest","net":"host"}"#.to_vec(),
            ),
            (
                "edges",
                br#"{"name":"e","handler":["x"],"memory_bytes":18446744073709551615,"timeout_ms":18446744073709551615,"output_bytes":0,"cpus":1e308,"pids":0}"#.to_vec(),
            ),
        ]),
        "api_query" => named(vec![
            ("async", b"async=true&retries=3".to_vec()),
            ("version", b"version=2".to_vec()),
            ("rollback", br#"{"version":1}"#.to_vec()),
            ("edges", b"retries=4294967296&async=1&version=-1".to_vec()),
        ]),
        "cgi_response" => named(vec![
            (
                "full",
                b"Status: 201 Created\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nbody".to_vec(),
            ),
            ("bare", b"\nbody".to_vec()),
            ("location", b"Location: /elsewhere\n\n".to_vec()),
            (
                "dropped",
                b"Connection: close\nTransfer-Encoding: chunked\nX-Alcove-Status: fake\n\n".to_vec(),
            ),
            ("bad", b"Status: 99x\nBad Name: v\n\n".to_vec()),
        ]),
        "code_tar" => named(vec![
            ("code", code_archive()),
            ("links", rich_layer()),
        ]),
        "image_archive" => named(vec![
            ("oci", oci_archive(&oci_parts(None))),
            ("docker", docker_archive(&rich_layer())),
        ]),
        "image_layer" => named(vec![
            ("rich", rich_layer()),
            ("pax", pax_layer()),
            ("empty", tar_with(|_| {})),
        ]),
        "image_oci" => named(vec![
            ("plain", oci_parts(None).join()),
            ("layer", oci_parts(Some(rich_layer())).join()),
        ]),
        "profile" => named(vec![
            (
                "learned",
                serde_json::json!({
                    "alcove_profile": 1, "program": ["sh", "-c", "cat /etc/hostname"],
                    "syscalls": ["openat", "read", "write", "exit_group"],
                    "files": {"read": ["/etc/hostname"], "write": ["/tmp/out"], "exec": ["/usr/bin/cat"]},
                    "network": ["127.0.0.1:80", "[::1]:443", "10.0.0.0"]
                })
                .to_string()
                .into_bytes(),
            ),
            (
                "empty",
                br#"{"alcove_profile":1,"program":[],"syscalls":[],"files":{"read":[],"write":[],"exec":[]},"network":[]}"#.to_vec(),
            ),
            (
                "lines",
                b"openat\n/etc/hostname\n/tmp/out\n/usr/bin/cat\n127.0.0.1:80\nread\n/etc\n/var/tmp/x\n/bin/sh\n[::1]:443".to_vec(),
            ),
        ]),
        other => panic!("no target {other}"),
    }
}
