//! alcove-fuzz owns the bodies of alcove's fuzz targets: one `pub fn` per
//! parser that takes bytes from someone alcove does not trust (API bodies
//! and queries, function code archives, image archives, layers and their
//! JSON, `--policy` profiles). The cargo-fuzz targets in `fuzz/` call them
//! under libFuzzer (`scripts/fuzz.sh`), and `tests/replay.rs` calls them on
//! the stable toolchain in CI: every saved corpus and crash input, then a
//! few thousand seeded mutations.
//!
//! A target returns normally for any input; a panic (or an abort) is the
//! finding. Where a parser promises more than "no panic" (limits judged on
//! what is written, paths a spec accepts being usable), the target asserts
//! that too. It is not published and nothing else depends on it.

mod archive;
pub mod mutate;
pub mod seeds;

use alcove_api::wire::{self, InvokeQuery, RollbackBody};
use alcove_engine::{ConfigChange, DeployRequest, Engine, EngineConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub use archive::{docker_archive, fix_tar_checksums, oci_archive, OciParts};

/// A fuzz target: takes any bytes, returns, or panics on a finding.
pub type Target = fn(&[u8]);

/// Every target by name: the names of `fuzz/fuzz_targets/*.rs` and of the
/// directories under `fuzz/corpus` and `fuzz/crashes`.
pub const TARGETS: &[(&str, Target)] = &[
    ("api_deploy", api_deploy),
    ("api_query", api_query),
    ("cgi_response", cgi_response),
    ("code_tar", code_tar),
    ("image_archive", image_archive),
    ("image_layer", image_layer),
    ("image_oci", image_oci),
    ("profile", profile),
];

/// What an image target lets one import unpack: small, so that the limit
/// checks are reached and a long run's memory stays flat.
pub const IMAGE_LIMITS: alcove_image::Limits = alcove_image::Limits {
    max_bytes: 1 << 20,
    max_entries: 4096,
};

/// Where targets write: tmpfs when there is one (`syncfs` and `fsync` cost
/// nothing there), or `ALCOVE_FUZZ_TMP`.
fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("ALCOVE_FUZZ_TMP") {
        return dir.into();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        return shm.to_owned();
    }
    std::env::temp_dir()
}

/// Scratch directories are named `alcove-fuzz.PID.*`: a fuzzer that found
/// a crash exits without dropping them, so the next process removes those
/// whose process is gone.
const SCRATCH_PREFIX: &str = "alcove-fuzz.";

fn scratch() -> tempfile::TempDir {
    static CLEANED: OnceLock<()> = OnceLock::new();
    CLEANED.get_or_init(remove_dead_scratch);
    tempfile::Builder::new()
        .prefix(&format!("{SCRATCH_PREFIX}{}.", std::process::id()))
        .tempdir_in(scratch_root())
        .expect("a scratch directory for the fuzz target")
}

fn remove_dead_scratch() {
    for entry in std::fs::read_dir(scratch_root())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(SCRATCH_PREFIX)
            .and_then(|rest| rest.split('.').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

static ENGINE: OnceLock<(Arc<Engine>, PathBuf)> = OnceLock::new();

/// One engine per process, on a scratch data directory with its own image
/// store (never the host's), as the daemon would open it; and that directory.
fn engine() -> &'static (Arc<Engine>, PathBuf) {
    ENGINE.get_or_init(|| {
        // Kept for the life of the process (a static is never dropped):
        // `remove_scratch` removes it, or else the next process does (see
        // `remove_dead_scratch`).
        let dir = scratch().keep();
        let data = dir.join("data");
        let mut config = EngineConfig::new(data.clone());
        config.image_store = dir.join("images");
        let engine = Engine::open(config).expect("open a scratch engine");
        (engine, data)
    })
}

/// Removes the scratch engine's directory; call it after the last target
/// ran (later deploys fail, without panicking). Other scratch directories
/// are removed as their targets return.
pub fn remove_scratch() {
    if let Some((_, data)) = ENGINE.get() {
        if let Some(dir) = data.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Deploys `req` on the scratch engine, then removes what it stored, so a
/// long run neither fills the scratch directory nor slows down.
fn deploy_and_forget(req: DeployRequest) {
    let name = req.name.clone();
    let (engine, data) = engine();
    if engine.deploy(req).is_ok() {
        let _ = engine.remove(&name);
    }
    let _ = std::fs::remove_dir_all(data.join("code"));
}

/// `POST /v1/functions`: the body as the API parses it, then the deploy the
/// engine would do with it (names, limits, code archive, secrets). The same
/// bytes as a `PATCH /v1/functions/{name}` body, too.
pub fn api_deploy(data: &[u8]) {
    match wire::parse_deploy(data) {
        Ok(req) => deploy_and_forget(req),
        Err(e) => assert!(!e.message.is_empty(), "an error without a message"),
    }
    if let Err(e) = wire::parse_json::<ConfigChange>(data, "configuration") {
        assert!(!e.message.is_empty(), "an error without a message");
    }
}

/// The query of `POST /v1/functions/{name}/invoke` (as axum's `Query`
/// decodes it), and the body of `POST .../rollback`.
pub fn api_query(data: &[u8]) {
    if let Ok(q) = serde_urlencoded::from_bytes::<InvokeQuery>(data) {
        let _ = wire::check_invoke_query(&q);
    }
    let _ = wire::parse_json::<RollbackBody>(data, "rollback");
}

/// What an `http` function writes on stdout: its header block is parsed
/// from whatever the handler wrote, and a block it accepts lies inside the
/// input and the bounds.
pub fn cgi_response(data: &[u8]) {
    use alcove_api::cgi;
    if let Ok(Some(head)) = cgi::parse_head(data) {
        assert!(head.len <= data.len() && head.len <= cgi::MAX_HEAD_BYTES);
        assert!((200..=599).contains(&head.status.as_u16()));
        assert!(head.headers.contains_key("content-type"));
        assert!(!head.headers.contains_key("transfer-encoding"));
    }
    let _ = cgi::parse_at_end(data);
}

/// A function's code archive (the `code` of a deploy, after base64), its
/// tar checksums fixed so that mutations reach the unpacker.
pub fn code_tar(data: &[u8]) {
    deploy_and_forget(DeployRequest {
        name: "fuzz".into(),
        change: ConfigChange {
            handler: Some(vec!["true".into()]),
            ..ConfigChange::default()
        },
        code_tar: Some(fix_tar_checksums(data)),
        inherit: false,
        must_exist: false,
    });
}

/// Imports `archive` as the image targets do; for checking that seeds get
/// past the archive's digest checks.
pub fn import_archive(archive: &[u8]) -> Result<(), alcove_image::ImageError> {
    import(archive, true).1
}

/// Imports `archive` (a file's bytes) into a fresh store; returns the store
/// directory for checks after the import, and the import's result.
fn import(
    archive: &[u8],
    allow_devices: bool,
) -> (tempfile::TempDir, Result<(), alcove_image::ImageError>) {
    let dir = scratch();
    let path = dir.path().join("image.tar");
    std::fs::write(&path, archive).expect("write the archive");
    let store = alcove_image::Store::open(&dir.path().join("store")).expect("open a store");
    let options = alcove_image::ImportOptions {
        name: Some("fuzz:latest".into()),
        quiet: true,
        allow_devices,
        limits: IMAGE_LIMITS,
        ..Default::default()
    };
    let result = alcove_image::import(&store, &path, &options).map(|_| ());
    (dir, result)
}

/// Bytes of regular files under `dir`, each inode counted once.
fn file_bytes(dir: &Path) -> u64 {
    fn walk(dir: &Path, seen: &mut std::collections::HashSet<u64>) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let mut total = 0;
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                total += walk(&entry.path(), seen);
            } else if meta.is_file() && seen.insert(meta.ino()) {
                total += meta.len();
            }
        }
        total
    }
    walk(dir, &mut Default::default())
}

/// Any bytes as an image archive (`alcove image import FILE`).
pub fn image_archive(data: &[u8]) {
    let _ = import(data, false);
}

/// Any bytes (tar checksums fixed) as the one layer of a well-formed
/// docker-archive, so every input reaches the layer unpacker; what it
/// writes must stay within the import's byte limit however the archive
/// declares its sizes.
pub fn image_layer(data: &[u8]) {
    let (dir, _result) = import(&docker_archive(&fix_tar_checksums(data)), true);
    let written = file_bytes(&dir.path().join("store").join("layers"));
    assert!(
        written <= IMAGE_LIMITS.max_bytes,
        "an import limited to {} bytes of files wrote {written}",
        IMAGE_LIMITS.max_bytes
    );
}

/// An OCI layout's JSON (index, manifest, config, and optionally the layer),
/// with digests and sizes filled in so the parsers past the digest checks
/// see every mutation (see [`OciParts`]).
pub fn image_oci(data: &[u8]) {
    let _ = import(&oci_archive(&OciParts::split(data)), false);
}

/// A `--policy` profile: loaded, applied to a sandbox spec and checked as
/// `alcove run` does. A spec that passes its checks must be one the sandbox
/// can set up: the Landlock paths it was given hold no NUL byte. The input
/// is tried as the profile's file, and as lines dealt out to its lists
/// (syscalls, read, write, exec, network), which a byte mutator cannot
/// otherwise keep inside well-formed JSON.
pub fn profile(data: &[u8]) {
    profile_file(data);
    let mut lists: [Vec<String>; 5] = Default::default();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        lists[i % 5].push(String::from_utf8_lossy(line).into_owned());
    }
    let [syscalls, read, write, exec, network] = lists;
    let structured = serde_json::json!({
        "alcove_profile": 1, "program": ["fuzz"], "syscalls": syscalls,
        "files": {"read": read, "write": write, "exec": exec}, "network": network,
    });
    profile_file(structured.to_string().as_bytes());
}

fn profile_file(data: &[u8]) {
    let dir = scratch();
    let path = dir.path().join("profile.json");
    std::fs::write(&path, data).expect("write the profile");
    let Ok(profile) = alcove_monitor::Profile::load(&path) else {
        return;
    };
    let mut spec = alcove_sandbox::SandboxSpec::new(vec!["true".into()]);
    let mut policy = alcove_bpf::SandboxPolicy::default();
    if profile.apply(&mut spec, &mut policy).is_err() || spec.validate().is_err() {
        return;
    }
    for rule in &spec.allow_paths {
        use std::os::unix::ffi::OsStrExt;
        assert!(
            !rule.path.as_os_str().as_bytes().contains(&0),
            "a profile path with a NUL byte passed the spec's checks: {:?}",
            rule.path
        );
    }
}
