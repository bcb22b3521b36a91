//! A mount's `options` (fstab style, as in config.json) turned into what
//! mount(2) and mount_setattr(2) take, the way runc's specconv parses them:
//! per-mount flags, propagation changes applied afterwards, recursive
//! attributes, alcove-side extensions (`tmpcopyup`), and the rest passed to
//! the filesystem as its data string.

use super::RootfsError;

/// The longest data string mount(2) accepts (one page).
const MAX_DATA: usize = 4095;
/// Bound on the number of options of one mount.
const MAX_OPTIONS: usize = 256;

/// One mount's options, parsed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// `MS_*` flags for mount(2) (including `MS_BIND`/`MS_REC` for binds).
    pub flags: libc::c_ulong,
    /// Whether any atime option was named (so a locked atime flag of the
    /// source may not be kept on a bind remount).
    pub atime_named: bool,
    /// Propagation changes (`MS_SHARED`, `MS_SLAVE | MS_REC`, ...), in order.
    pub propagation: Vec<libc::c_ulong>,
    /// `MOUNT_ATTR_*` to set and clear on the whole tree (`rro`, `rnosuid`, ...).
    pub attr_set: u64,
    pub attr_clr: u64,
    /// Copy the directory's old contents into the new tmpfs.
    pub tmpcopyup: bool,
    /// Filesystem data (`mode=755,size=65536k`), comma-joined.
    pub data: String,
}

impl MountOptions {
    /// Whether this is a bind mount (`bind`/`rbind`).
    pub fn is_bind(&self) -> bool {
        self.flags & libc::MS_BIND != 0
    }
}

/// Parses `options` of the mount at `destination` (named in errors).
pub fn parse(options: &[String], destination: &str) -> Result<MountOptions, RootfsError> {
    if options.len() > MAX_OPTIONS {
        return Err(RootfsError::Options {
            destination: destination.to_owned(),
            reason: format!("more than {MAX_OPTIONS} options"),
        });
    }
    let mut parsed = MountOptions::default();
    let mut data: Vec<&str> = Vec::new();
    for option in options {
        let option = option.as_str();
        if let Some((clear, flag)) = flag(option) {
            if clear {
                parsed.flags &= !flag;
            } else {
                parsed.flags |= flag;
            }
            parsed.atime_named |= flag & ATIME_FLAGS != 0;
        } else if let Some(p) = propagation(option) {
            parsed.propagation.push(p);
        } else if let Some((clear, attr)) = recursive_attr(option) {
            if clear {
                parsed.attr_clr |= attr;
                parsed.attr_set &= !attr;
            } else {
                parsed.attr_set |= attr;
                parsed.attr_clr &= !attr;
                // An atime mode replaces the others (mount_setattr(2)).
                if attr & libc::MOUNT_ATTR__ATIME != 0 || option == "rrelatime" {
                    parsed.attr_clr |= libc::MOUNT_ATTR__ATIME;
                }
            }
        } else {
            match option {
                "tmpcopyup" => parsed.tmpcopyup = true,
                "notmpcopyup" => parsed.tmpcopyup = false,
                "idmap" | "ridmap" => {
                    return Err(RootfsError::Options {
                        destination: destination.to_owned(),
                        reason: format!(
                            "the {option:?} option (id-mapped mounts) is not supported"
                        ),
                    })
                }
                "" => {}
                other => data.push(other),
            }
        }
    }
    parsed.data = data.join(",");
    if parsed.data.len() > MAX_DATA || parsed.data.contains('\0') {
        return Err(RootfsError::Options {
            destination: destination.to_owned(),
            reason: "the filesystem options are longer than a page or hold a NUL".to_owned(),
        });
    }
    Ok(parsed)
}

const ATIME_FLAGS: libc::c_ulong =
    libc::MS_NOATIME | libc::MS_NODIRATIME | libc::MS_RELATIME | libc::MS_STRICTATIME;

/// A per-mount flag option: (whether it clears the flag, the flag).
fn flag(option: &str) -> Option<(bool, libc::c_ulong)> {
    use libc::*;
    Some(match option {
        "acl" => (false, MS_POSIXACL),
        "noacl" => (true, MS_POSIXACL),
        "async" => (true, MS_SYNCHRONOUS),
        "sync" => (false, MS_SYNCHRONOUS),
        "atime" => (true, MS_NOATIME),
        "noatime" => (false, MS_NOATIME),
        "bind" => (false, MS_BIND),
        "rbind" => (false, MS_BIND | MS_REC),
        "defaults" => (false, 0),
        "dev" => (true, MS_NODEV),
        "nodev" => (false, MS_NODEV),
        "diratime" => (true, MS_NODIRATIME),
        "nodiratime" => (false, MS_NODIRATIME),
        "dirsync" => (false, MS_DIRSYNC),
        "exec" => (true, MS_NOEXEC),
        "noexec" => (false, MS_NOEXEC),
        "iversion" => (false, MS_I_VERSION),
        "noiversion" => (true, MS_I_VERSION),
        "lazytime" => (false, MS_LAZYTIME),
        "nolazytime" => (true, MS_LAZYTIME),
        "loud" => (true, MS_SILENT),
        "silent" => (false, MS_SILENT),
        "mand" => (false, MS_MANDLOCK),
        "nomand" => (true, MS_MANDLOCK),
        "relatime" => (false, MS_RELATIME),
        "norelatime" => (true, MS_RELATIME),
        "strictatime" => (false, MS_STRICTATIME),
        "nostrictatime" => (true, MS_STRICTATIME),
        "suid" => (true, MS_NOSUID),
        "nosuid" => (false, MS_NOSUID),
        "remount" => (false, MS_REMOUNT),
        "ro" => (false, MS_RDONLY),
        "rw" => (true, MS_RDONLY),
        "nosymfollow" => (false, MS_NOSYMFOLLOW),
        "symfollow" => (true, MS_NOSYMFOLLOW),
        _ => return None,
    })
}

/// A propagation option, as the `MS_*` value mount(2) takes.
pub fn propagation(option: &str) -> Option<libc::c_ulong> {
    use libc::*;
    Some(match option {
        "private" => MS_PRIVATE,
        "rprivate" => MS_PRIVATE | MS_REC,
        "shared" => MS_SHARED,
        "rshared" => MS_SHARED | MS_REC,
        "slave" => MS_SLAVE,
        "rslave" => MS_SLAVE | MS_REC,
        "unbindable" => MS_UNBINDABLE,
        "runbindable" => MS_UNBINDABLE | MS_REC,
        _ => return None,
    })
}

/// A recursive attribute option: (whether it clears, the `MOUNT_ATTR_*`).
fn recursive_attr(option: &str) -> Option<(bool, u64)> {
    use libc::*;
    Some(match option {
        "rro" => (false, MOUNT_ATTR_RDONLY),
        "rrw" => (true, MOUNT_ATTR_RDONLY),
        "rnosuid" => (false, MOUNT_ATTR_NOSUID),
        "rsuid" => (true, MOUNT_ATTR_NOSUID),
        "rnodev" => (false, MOUNT_ATTR_NODEV),
        "rdev" => (true, MOUNT_ATTR_NODEV),
        "rnoexec" => (false, MOUNT_ATTR_NOEXEC),
        "rexec" => (true, MOUNT_ATTR_NOEXEC),
        "rnodiratime" => (false, MOUNT_ATTR_NODIRATIME),
        "rdiratime" => (true, MOUNT_ATTR_NODIRATIME),
        "rrelatime" => (false, MOUNT_ATTR_RELATIME),
        "rnorelatime" => (true, MOUNT_ATTR_RELATIME),
        "rnoatime" => (false, MOUNT_ATTR_NOATIME),
        "ratime" => (true, MOUNT_ATTR_NOATIME),
        "rstrictatime" => (false, MOUNT_ATTR_STRICTATIME),
        "rnostrictatime" => (true, MOUNT_ATTR_STRICTATIME),
        "rnosymfollow" => (false, MOUNT_ATTR_NOSYMFOLLOW),
        "rsymfollow" => (true, MOUNT_ATTR_NOSYMFOLLOW),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Result<MountOptions, RootfsError> {
        let owned: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        parse(&owned, "/dest")
    }

    #[test]
    fn flags_propagation_and_data_are_separated() {
        let o = opts(&[
            "nosuid",
            "rbind",
            "ro",
            "rprivate",
            "mode=755",
            "size=65536k",
        ])
        .unwrap();
        assert_eq!(
            o.flags,
            libc::MS_NOSUID | libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY
        );
        assert_eq!(o.propagation, vec![libc::MS_PRIVATE | libc::MS_REC]);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(o.is_bind());
        assert!(!o.atime_named);
    }

    #[test]
    fn later_options_override_earlier_ones() {
        let o = opts(&["ro", "noexec", "rw", "exec", "suid", "noatime"]).unwrap();
        assert_eq!(o.flags, libc::MS_NOATIME);
        assert!(o.atime_named);
        let o = opts(&["tmpcopyup", "notmpcopyup"]).unwrap();
        assert!(!o.tmpcopyup);
    }

    #[test]
    fn recursive_attributes_set_and_clear() {
        let o = opts(&["rro", "rnoatime", "rsuid"]).unwrap();
        assert_eq!(
            o.attr_set,
            libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOATIME
        );
        assert_eq!(
            o.attr_clr,
            libc::MOUNT_ATTR__ATIME | libc::MOUNT_ATTR_NOSUID
        );
        assert_eq!(o.flags, 0);
    }

    #[test]
    fn idmap_is_refused_by_name() {
        let err = opts(&["idmap"]).unwrap_err().to_string();
        assert!(err.contains("idmap") && err.contains("/dest"), "{err}");
        assert!(opts(&["ridmap"]).is_err());
    }

    #[test]
    fn oversized_data_is_refused() {
        let big = "x".repeat(5000);
        assert!(opts(&[big.as_str()]).is_err());
        let many: Vec<String> = (0..300).map(|i| format!("o{i}")).collect();
        assert!(parse(&many, "/d").is_err());
    }
}
