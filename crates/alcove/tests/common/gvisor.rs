//! What the gVisor tier's tests share: whether runsc is here, and what a
//! run or a pool may leave behind (run directories, runsc processes).

use super::oci::{layout, tar_of, Entry};
use super::{image, root_or_skip, skip_unprovided};
use std::path::Path;

pub const STATE_ROOT: &str = "/run/alcove/gvisor";

/// Whether runsc is here to test with; says why not when it is missing
/// (scripts/test.sh installs it, so CI always has it).
pub fn runsc_or_skip(test: &str) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    let found = ["/usr/bin/runsc", "/usr/sbin/runsc", "/usr/local/bin/runsc"]
        .iter()
        .any(|p| Path::new(p).exists());
    if !found {
        skip_unprovided(
            test,
            "runsc (the Debian package `runsc`) is not installed; scripts/test.sh installs it",
        );
    }
    found
}

/// This run's bundles and runsc state: none may be left once a run ends.
pub fn leftovers() -> Vec<String> {
    std::fs::read_dir(STATE_ROOT)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Live processes whose executable is runsc (the Sentry and Gofer run as it).
pub fn runsc_processes() -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        if exe.file_name().is_some_and(|n| n == "runsc") {
            found.push(pid);
        }
    }
    found
}

/// Imports into `store`, as `name`, an image of two layers: busybox as
/// `sh`, `cat` and `uname` in /bin, and /etc/greeting ("from the image");
/// `config` is its OCI config (its command, environment). Built in `dir`.
pub fn import_busybox_image(dir: &Path, store: &Path, name: &str, config: serde_json::Value) {
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let l = dir.join(format!("layout-{}", name.replace(':', "-")));
    let layers = [
        tar_of(&[
            Entry::Dir("bin"),
            Entry::Executable("bin/sh", &busybox),
            Entry::Symlink("bin/cat", "sh"),
            Entry::Symlink("bin/uname", "sh"),
            Entry::Dir("tmp"),
        ]),
        tar_of(&[
            Entry::Dir("etc"),
            Entry::File("etc/greeting", b"from the image"),
        ]),
    ];
    layout(&l, &layers, true, config);
    let (code, _, err) = image(store, &["import", l.to_str().unwrap(), "--name", name]);
    assert_eq!(code, 0, "{err}");
}
