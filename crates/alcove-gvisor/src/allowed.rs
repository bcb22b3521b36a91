//! `--allow-path` in the gVisor tier. The Sentry has no Landlock, so the
//! rules shape the file view instead of guarding it. The base set the
//! container tier's rules always allow (`/usr /bin /sbin /lib /lib64 /etc
//! /proc` to read, `/dev /tmp /dev/shm` to write) is already the whole of
//! this tier's host view; of the binds and the home, only what a rule
//! reaches is mounted. A path no rule reaches is not there at all: ENOENT
//! where the container tier answers EACCES.

use crate::GvisorError;
use alcove_sandbox::{Bind, SandboxSpec};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// One bind of the view: one of the spec's whole, or the part of one that a
/// rule reaches.
pub(crate) struct ViewBind {
    pub bind: Bind,
    /// For a part: the spec's bind source and the path below it, opened
    /// there without following a link or crossing a mount ([`open_part`]),
    /// never by the joined name, which the Gofer would resolve on the host.
    pub part_of: Option<(PathBuf, PathBuf)>,
}

/// The spec's binds as the view holds them: all of them without rules; with
/// rules, only what a rule reaches, each writable only where its bind is and
/// a rule reaching it says `rw`, parents mounted before what lies in them.
pub(crate) fn binds(spec: &SandboxSpec) -> Result<Vec<ViewBind>, GvisorError> {
    let whole = |bind: &Bind| ViewBind {
        bind: bind.clone(),
        part_of: None,
    };
    let rules = &spec.allow_paths;
    if rules.is_empty() {
        return Ok(spec.binds.iter().map(whole).collect());
    }
    if spec.rootfs.is_some() {
        return Err(GvisorError::Unsupported(
            "path rules (--allow-path) with an image or --rootfs root (it takes them with the host view)",
        ));
    }
    let plain =
        |path: &Path| path.is_absolute() && !path.components().any(|c| c == Component::ParentDir);
    for rule in rules {
        if !plain(&rule.path) {
            return Err(GvisorError::Invalid(format!(
                "--allow-path {}: the gVisor tier needs an absolute path without '..'",
                rule.path.display()
            )));
        }
    }
    if let Some(bind) = spec.binds.iter().find(|b| !plain(&b.target)) {
        return Err(GvisorError::Invalid(format!(
            "--bind to {}: use an absolute destination without '..'",
            bind.target.display()
        )));
    }
    let reached = |p: &Path| rules.iter().any(|r| p.starts_with(&r.path));
    let writable = |p: &Path| rules.iter().any(|r| r.writable && p.starts_with(&r.path));
    // The home is a fresh tmpfs the program writes to: allowed to write, or
    // not there.
    if spec.writable_workdir && !writable(&spec.workdir) {
        return Err(GvisorError::Invalid(format!(
            "--allow-path: the home {0} is not among the paths allowed to write; allow \
             it (--allow-path {0}:rw) or leave the home out",
            spec.workdir.display()
        )));
    }
    let binds = &spec.binds;
    // A bind is hidden where a later one is mounted at or above it, as the
    // view without rules mounts them in order.
    let hidden = |i: usize| {
        binds[i + 1..]
            .iter()
            .any(|later| binds[i].target.starts_with(&later.target))
    };
    // What the program sees at `path`: the deepest bind holding it, the later
    // of two at one place.
    let on_top = |path: &Path| {
        (0..binds.len())
            .filter(|&i| !hidden(i) && path.starts_with(&binds[i].target))
            .max_by_key(|&i| (binds[i].target.components().count(), i))
    };
    let mut view = Vec::new();
    for (i, bind) in binds.iter().enumerate() {
        if reached(&bind.target) && !hidden(i) {
            view.push(ViewBind {
                bind: Bind {
                    writable: bind.writable && writable(&bind.target),
                    ..bind.clone()
                },
                part_of: None,
            });
        }
    }
    for rule in rules {
        let Some(i) = on_top(&rule.path) else {
            continue; // in the base set (already there) or nowhere
        };
        let bind = &binds[i];
        let below = rule
            .path
            .strip_prefix(&bind.target)
            .unwrap_or(Path::new(""));
        let mode = bind.writable && writable(&rule.path);
        // The whole bind is there already (the loop above), in this mode.
        let covered = reached(&bind.target) && (bind.writable && writable(&bind.target)) == mode;
        if below.as_os_str().is_empty() || covered {
            continue;
        }
        // Two rules naming one path (`/a` and `/a/`, `:ro` and `:rw`): its
        // mode comes from all the rules, so one part serves both.
        if view.iter().any(|v| v.bind.target == rule.path) {
            continue;
        }
        view.push(ViewBind {
            bind: Bind {
                source: bind.source.join(below),
                target: rule.path.clone(),
                writable: mode,
                device: bind.device,
            },
            part_of: Some((bind.source.clone(), below.to_owned())),
        });
    }
    // runsc mounts in order: a parent after its child would hide it.
    view.sort_by_key(|v| v.bind.target.components().count());
    Ok(view)
}

/// Opens the part `below` of the bind source `source` as an `O_PATH`
/// descriptor: `None` where it does not exist (a rule for a missing path
/// allows nothing, as Landlock's does), an error where the way passes
/// through a symbolic link or into another mount.
pub(crate) fn open_part(source: &Path, below: &Path) -> Result<Option<OwnedFd>, GvisorError> {
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (Ok(root), Ok(rel)) = (c(source), c(below)) else {
        return Err(GvisorError::Invalid(format!(
            "--allow-path {}: the path contains a NUL byte",
            below.display()
        )));
    };
    let failed = |what: &str, e: std::io::Error| {
        GvisorError::Invalid(format!(
            "--allow-path: {what} {} in the bind of {}: {e}; check that alcove can read it, \
             or leave the rule out",
            below.display(),
            source.display()
        ))
    };
    let dir = match alcove_sys::dirfd::open_dir(&root) {
        Ok(dir) => dir,
        // A rule beneath a bound file allows nothing, as a missing path.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
        Err(e) => return Err(failed("opening the bind's source for", e)),
    };
    match alcove_sys::dirfd::open_beneath(dir.as_fd(), &rel, libc::O_PATH) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::EXDEV)) => {
            Err(GvisorError::Invalid(format!(
                "--allow-path: {} in the bind of {} passes through a symbolic link or \
                 into another mount; the gVisor view holds only binds, so bind what the \
                 link leads to (or that mount) with --bind, or allow a path with no link \
                 on its way",
                below.display(),
                source.display()
            )))
        }
        Err(e) => Err(failed("opening", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alcove_sandbox::PathRule;

    fn spec(binds: &[(&str, &str, bool)], rules: &[(&str, bool)]) -> SandboxSpec {
        let mut s = SandboxSpec::new(vec!["/bin/true".into()]);
        for (source, target, writable) in binds {
            s.binds.push(Bind {
                source: source.into(),
                target: target.into(),
                writable: *writable,
                device: false,
            });
        }
        for (path, writable) in rules {
            s.allow_paths.push(PathRule {
                path: path.into(),
                writable: *writable,
            });
        }
        s
    }

    fn targets(view: &[ViewBind]) -> Vec<(String, bool, bool)> {
        view.iter()
            .map(|v| {
                let b = &v.bind;
                (
                    b.target.display().to_string(),
                    b.writable,
                    v.part_of.is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn without_rules_every_bind_is_whole() {
        let s = spec(&[("/srv/a", "/a", true), ("/srv/b", "/b", false)], &[]);
        let view = binds(&s).unwrap();
        assert_eq!(
            targets(&view),
            [("/a".into(), true, false), ("/b".into(), false, false)]
        );
    }

    #[test]
    fn rules_keep_what_they_reach_and_their_mode() {
        let s = spec(
            &[
                ("/srv/data", "/data", true),
                ("/srv/other", "/other", true),
                ("/srv/ro", "/ro", false),
            ],
            // Given deepest first: the view still mounts /data before its part.
            &[("/data/out", true), ("/data", false), ("/ro", true)],
        );
        let view = binds(&s).unwrap();
        assert_eq!(
            targets(&view),
            [
                ("/data".into(), false, false),
                // a read-only bind stays read-only whatever the rule says
                ("/ro".into(), false, false),
                ("/data/out".into(), true, true),
            ]
        );
        let part = view.iter().find(|v| v.part_of.is_some()).unwrap();
        assert_eq!(
            part.part_of,
            Some((PathBuf::from("/srv/data"), PathBuf::from("out")))
        );
        // /other is reached by no rule: not in the view at all.
        assert!(!view.iter().any(|v| v.bind.target == Path::new("/other")));
    }

    #[test]
    fn a_rule_takes_its_part_from_the_bind_on_top_only() {
        // /work/cache is B's: a rule inside it never shows A's cache dir.
        let s = spec(
            &[("/srv/a", "/work", true), ("/srv/b", "/work/cache", false)],
            &[("/work/cache/x", true)],
        );
        let view = binds(&s).unwrap();
        assert_eq!(targets(&view), [("/work/cache/x".into(), false, true)]);
        assert_eq!(
            view[0].part_of,
            Some((PathBuf::from("/srv/b"), PathBuf::from("x")))
        );
        // A later bind above an earlier one hides it, with or without rules.
        let s = spec(
            &[("/srv/b", "/work/cache", false), ("/srv/a", "/work", true)],
            &[("/work", false), ("/work/cache/x", false)],
        );
        let view = binds(&s).unwrap();
        assert_eq!(targets(&view), [("/work".into(), false, false)]);
    }

    #[test]
    fn overlapping_rules_mount_a_part_only_where_its_mode_differs() {
        let s = spec(
            &[("/srv/data", "/data", true)],
            &[
                ("/data", false),
                ("/data/sub", false),
                ("/data/out", true),
                ("/data/out/", true),
            ],
        );
        let view = binds(&s).unwrap();
        assert_eq!(
            targets(&view),
            [
                ("/data".into(), false, false),
                ("/data/out".into(), true, true)
            ]
        );
        let s = spec(&[("/srv/data", "/data/../etc", true)], &[("/data", false)]);
        let err = binds(&s).err().unwrap().to_string();
        assert!(err.contains("without '..'"), "{err}");
    }

    #[test]
    fn a_part_is_opened_beneath_its_source_without_links() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        std::fs::create_dir_all(dir.join("pub/sub")).unwrap();
        std::fs::write(dir.join("file"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("link")).unwrap();
        let opened = open_part(dir, Path::new("pub/sub")).map(|fd| fd.is_some());
        let missing = open_part(dir, Path::new("missing")).map(|fd| fd.is_none());
        // Beneath a file (a bound file's source, or a file in the way):
        // nothing to allow, as for a missing path.
        let under_bound_file = open_part(&dir.join("file"), Path::new("x")).map(|fd| fd.is_none());
        let under_file = open_part(dir, Path::new("file/x")).map(|fd| fd.is_none());
        let linked = open_part(dir, Path::new("link/passwd")).err();
        assert!(opened.unwrap());
        assert!(missing.unwrap());
        assert!(under_bound_file.unwrap());
        assert!(under_file.unwrap());
        let err = linked.expect("a link on the way is refused").to_string();
        assert!(
            err.contains("symbolic link") && err.contains("--bind"),
            "{err}"
        );
    }

    #[test]
    fn bad_rules_are_refused_with_what_to_do() {
        let relative = spec(&[], &[("data", false)]);
        let err = binds(&relative).err().unwrap().to_string();
        assert!(err.contains("absolute path"), "{err}");
        let mut image = spec(&[], &[("/data", false)]);
        image.rootfs = Some("/srv/root".into());
        let err = binds(&image).err().unwrap().to_string();
        assert!(
            err.contains("--rootfs") && err.contains("--isolation container"),
            "{err}"
        );
        let mut home = spec(&[], &[("/data", false)]);
        home.workdir = "/home/fn".into();
        home.writable_workdir = true;
        let err = binds(&home).err().unwrap().to_string();
        assert!(err.contains("--allow-path /home/fn:rw"), "{err}");
    }
}
