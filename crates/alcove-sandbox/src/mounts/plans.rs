//! The plans: which filesystem steps each kind of sandbox root takes, as
//! templates built once and as the per-run steps on top of them.

use super::{cpath, Builder, HostView, MountOp, STAGING_DIR};
use crate::spec::SandboxSpec;
use alcove_sys::mount::{MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_REC};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The skeleton of a host-view root, built once per distinct skeleton and kept
/// as a template mount namespace (see `template`): a read-only tmpfs with the
/// host's /usr (and /bin, /lib...) bound read-only, a generated /etc, device
/// nodes, and empty mount points for what each run mounts fresh.
pub(crate) fn template_plan(spec: &SandboxSpec, host: &HostView) -> Vec<MountOp> {
    let mut b = skeleton(spec, host);
    b.ops.push(MountOp::PivotRoot {
        new_root: cpath(Path::new(STAGING_DIR)),
    });
    b.ops
}

/// A host-view root built entirely by the child, for when no template can be kept.
pub(crate) fn scratch_plan(
    spec: &SandboxSpec,
    host: &HostView,
    bind_trees: &[RawFd],
) -> Vec<MountOp> {
    let root = Path::new(STAGING_DIR);
    let mut b = skeleton(spec, host);
    b.fresh_mounts(spec, root, bind_trees);
    b.ops.push(MountOp::PivotRoot {
        new_root: cpath(root),
    });
    b.ops
}

fn skeleton(spec: &SandboxSpec, host: &HostView) -> Builder {
    let root = Path::new(STAGING_DIR);
    let mut b = Builder::default();
    // Nothing mounted from here on may propagate back to the host.
    b.mount(None, Path::new("/"), None, MS_REC | MS_PRIVATE, None);
    // No MS_NODEV: /dev's nodes live on this tmpfs, which ends read-only and
    // holds nothing but what alcove writes (room for the host's /etc files
    // it copies, at most host_etc::MAX_COPIED_TOTAL).
    b.tmpfs(root, MS_NOSUID, "0755", 4 << 20);
    // Bind targets may lead through the host's own links (/lib64 -> ...):
    // they resolve inside the new root, never on the host.
    b.enter_root(root);
    for dir in ["etc", "dev", "proc", "tmp", "run"] {
        b.mkdir(&root.join(dir), 0o755);
    }
    for (name, link) in &host.entries {
        match link {
            Some(target) => b.symlink(target.as_os_str().as_bytes(), &root.join(name)),
            None => {
                let target = root.join(name);
                b.mkdir(&target, 0o755);
                b.bind_read_only(&Path::new("/").join(name), &target, MS_NODEV);
            }
        }
    }
    let etc = root.join("etc");
    let files = crate::etc::files(
        &spec.hostname,
        spec.user.uid,
        spec.user.gid,
        host.resolv_conf.as_deref(),
    );
    for (name, contents, mode) in files {
        let path = b.place(&etc.join(name));
        b.ops.push(MountOp::WriteFile {
            path,
            contents,
            mode,
        });
    }
    b.host_etc(&etc, &host.etc);
    b.dev_nodes(&root.join("dev"));
    b.mount_points(spec, root);
    b.remount_read_only(root, 0);
    b
}

/// What every run mounts fresh on top of a template's copy: /tmp, /dev/shm,
/// /dev/pts, /proc, and the binds (detached trees the parent cloned, in order).
pub(crate) fn per_run_plan(spec: &SandboxSpec, bind_trees: &[RawFd]) -> Vec<MountOp> {
    let mut b = Builder::default();
    b.fresh_mounts(spec, Path::new("/"), bind_trees);
    b.ops
}

/// The template for a `--rootfs` sandbox: a small read-only tmpfs holding the
/// rootfs bound read-only at /lower, alcove's /dev, and empty mount points for
/// the per-run tmpfs (/scratch) and overlay (/merged).
pub(crate) fn rootfs_template_plan(lower: &Path, more: &[PathBuf]) -> Vec<MountOp> {
    let root = Path::new(STAGING_DIR);
    let mut b = Builder::default();
    b.mount(None, Path::new("/"), None, MS_REC | MS_PRIVATE, None);
    b.tmpfs(root, MS_NOSUID, "0755", 1 << 20);
    b.enter_root(root);
    for dir in ["scratch", "merged", "dev"] {
        b.mkdir(&root.join(dir), 0o755);
    }
    for (i, layer) in std::iter::once(lower)
        .chain(more.iter().map(PathBuf::as_path))
        .enumerate()
    {
        let view = root.join(layer_view(i).trim_start_matches('/'));
        b.mkdir(&view, 0o755);
        b.bind_read_only(layer, &view, MS_NODEV);
    }
    b.dev_nodes(&root.join("dev"));
    b.remount_read_only(root, 0);
    b.ops.push(MountOp::PivotRoot {
        new_root: cpath(root),
    });
    b.ops
}

/// Where a template shows lower layer `i` (0 is the top one, the rootfs).
fn layer_view(i: usize) -> String {
    if i == 0 {
        "/lower".to_owned()
    } else {
        format!("/lower{i}")
    }
}

/// What each `--rootfs` run does in its copy of the template: an overlay of
/// /lower under a fresh tmpfs, alcove's /dev in it, the fresh mounts, the
/// binds, and a pivot into the overlay.
pub(crate) fn rootfs_per_run_plan(spec: &SandboxSpec, bind_trees: &[RawFd]) -> Vec<MountOp> {
    let mut b = Builder::default();
    let scratch = Path::new("/scratch");
    b.tmpfs(
        scratch,
        MS_NOSUID | MS_NODEV,
        "0755",
        spec.limits.tmpfs_bytes,
    );
    b.mkdir(&scratch.join("upper"), 0o755);
    b.mkdir(&scratch.join("work"), 0o755);
    let root = Path::new("/merged");
    b.mount(
        Some(b"overlay"),
        root,
        Some("overlay"),
        MS_NOSUID | MS_NODEV,
        Some(format!(
            "lowerdir={},upperdir=/scratch/upper,workdir=/scratch/work",
            (0..=spec.lower_layers.len())
                .map(layer_view)
                .collect::<Vec<_>>()
                .join(":")
        )),
    );
    // Everything below is the image's or the rootfs's: its links lead
    // nowhere but inside it.
    b.enter_root(root);
    for dir in ["dev", "proc", "tmp"] {
        b.mkdir_best_effort(&root.join(dir), 0o755);
    }
    // The image's own /dev may hold device nodes: cover it with alcove's.
    b.mount(Some(b"/dev"), &root.join("dev"), None, MS_BIND, None);
    b.image_resolv_conf(spec, root);
    b.mount_points(spec, root);
    b.fresh_mounts(spec, root, bind_trees);
    b.ops.push(MountOp::PivotRoot {
        new_root: cpath(root),
    });
    b.ops
}

/// The whole filesystem for a `--rootfs` sandbox, built in the child from a
/// copy of the host's mount namespace: an overlay of the rootfs under a tmpfs
/// upper layer, then the same fresh mounts, then the pivot.
pub(crate) fn rootfs_plan(spec: &SandboxSpec, lower: &Path, bind_trees: &[RawFd]) -> Vec<MountOp> {
    let staging = Path::new(STAGING_DIR);
    let mut b = Builder::default();
    b.mount(None, Path::new("/"), None, MS_REC | MS_PRIVATE, None);
    b.tmpfs(
        staging,
        MS_NOSUID | MS_NODEV,
        "0755",
        spec.limits.tmpfs_bytes,
    );
    let (upper, work, root) = (
        staging.join("upper"),
        staging.join("work"),
        staging.join("merged"),
    );
    for dir in [&upper, &work, &root] {
        b.mkdir(dir, 0o755);
    }
    let lowers: Vec<String> = std::iter::once(lower)
        .chain(spec.lower_layers.iter().map(PathBuf::as_path))
        .map(|l| l.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    b.mount(
        Some(b"overlay"),
        &root,
        Some("overlay"),
        MS_NOSUID | MS_NODEV,
        Some(data),
    );
    // Everything below is the image's or the rootfs's: its links lead
    // nowhere but inside it (here the host's root would be theirs).
    b.enter_root(&root);
    for dir in ["dev", "proc", "tmp"] {
        b.mkdir(&root.join(dir), 0o755);
    }
    // The image's own /dev may hold device nodes: cover it with one of ours.
    b.tmpfs(&root.join("dev"), MS_NOSUID | MS_NOEXEC, "0755", 1 << 20);
    b.dev_nodes(&root.join("dev"));
    b.image_resolv_conf(spec, &root);
    b.mount_points(spec, &root);
    b.fresh_mounts(spec, &root, bind_trees);
    b.ops.push(MountOp::PivotRoot {
        new_root: cpath(&root),
    });
    b.ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Bind;
    use alcove_sys::mount::MS_RDONLY;

    fn host() -> HostView {
        HostView {
            entries: vec![("usr", None), ("bin", Some("usr/bin".into()))],
            resolv_conf: None,
            etc: std::sync::Arc::new(vec![
                super::super::host_etc::EtcPiece {
                    path: "ssl/certs".into(),
                    kind: super::super::host_etc::EtcKind::Dir,
                },
                super::super::host_etc::EtcPiece {
                    path: "localtime".into(),
                    kind: super::super::host_etc::EtcKind::Link("/usr/share/zoneinfo/UTC".into()),
                },
            ]),
        }
    }

    fn described(ops: &[MountOp]) -> Vec<String> {
        ops.iter().map(MountOp::describe).collect()
    }

    #[test]
    fn template_binds_usr_read_only_and_ends_with_a_pivot() {
        let spec = SandboxSpec::new(vec!["true".into()]);
        let ops = template_plan(&spec, &host());
        let d = described(&ops);
        assert!(d
            .iter()
            .any(|d| d == "mounting /usr (bind) at /run/alcove/root/usr"));
        assert!(d
            .iter()
            .any(|d| d == "creating symlink /run/alcove/root/bin"));
        assert!(d
            .iter()
            .any(|d| d == "mounting /etc/ssl/certs (bind) at /run/alcove/root/etc/ssl/certs"));
        assert!(d
            .iter()
            .any(|d| d == "creating symlink /run/alcove/root/etc/localtime"));
        assert!(d.iter().any(|d| d == "writing /run/alcove/root/etc/passwd"));
        assert!(!d.iter().any(|d| d.contains("shadow")));
        let ro = ops.iter().any(|op| {
            matches!(op, MountOp::Mount { target, flags, .. }
            if target.shown().to_bytes() == b"/run/alcove/root/usr" && flags & MS_RDONLY != 0)
        });
        assert!(ro, "/usr must be remounted read-only");
        assert!(matches!(ops.last(), Some(MountOp::PivotRoot { .. })));
        assert!(matches!(&ops[0], MountOp::Mount { flags, .. } if *flags == MS_REC | MS_PRIVATE));
    }

    #[test]
    fn each_run_mounts_tmp_shm_pts_proc_and_its_binds() {
        let mut spec = SandboxSpec::new(vec!["true".into()]);
        spec.binds.push(Bind::parse("/tmp:/data/in:rw").unwrap());
        let d = described(&per_run_plan(&spec, &[7]));
        assert_eq!(
            d,
            [
                "mounting tmpfs (tmpfs) at /tmp",
                "mounting tmpfs (tmpfs) at /dev/shm",
                "mounting devpts (devpts) at /dev/pts",
                "mounting proc (proc) at /proc",
                "attaching a bind mount at /data/in",
            ]
        );
        let template = described(&template_plan(&spec, &host()));
        assert!(template
            .iter()
            .any(|d| d == "creating directory /run/alcove/root/data"));
        assert!(template
            .iter()
            .any(|d| d == "creating directory /run/alcove/root/data/in"));
    }

    #[test]
    fn rootfs_is_an_overlay_with_a_tmpfs_upper_layer() {
        let spec = SandboxSpec::new(vec!["true".into()]);
        let ops = rootfs_plan(&spec, Path::new("/srv/img"), &[]);
        let overlay = ops.iter().find_map(|op| match op {
            MountOp::Mount {
                fstype: Some(f),
                data: Some(d),
                ..
            } if f.to_bytes() == b"overlay" => Some(d.to_string_lossy().into_owned()),
            _ => None,
        });
        assert_eq!(
            overlay.as_deref(),
            Some("lowerdir=/srv/img,upperdir=/run/alcove/root/upper,workdir=/run/alcove/root/work")
        );
        assert!(described(&ops)
            .iter()
            .any(|d| d == "mounting proc (proc) at /run/alcove/root/merged/proc"));
        assert!(matches!(ops.last(), Some(MountOp::PivotRoot { .. })));
    }
}
