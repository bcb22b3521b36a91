//! What moving a process into a cgroup costs, and the mount option that makes
//! it cheap. A move by another process (a warm copy, a fork with memory)
//! takes the kernel's `cgroup_threadgroup_rwsem` for writing, and on a stock
//! kernel the writer first switches that lock's per-CPU read side off, which
//! waits for an RCU grace period: 15-17 ms for the first move after a quiet
//! spell on the 2-vCPU development machine, against 0.3 ms with the cgroup2
//! tree mounted `favordynmods` (measured by moving a process between new
//! cgroups). With the option, forks and exits take the lock's slower read
//! side (from Linux 6.18 a move through `cgroup.procs` then locks only the
//! thread group it moves, and that part stays on once turned on). The option
//! is global, whichever hierarchy's moves pay; a reconfiguration of a cgroup2
//! mount can change it after boot (v1 refuses new options at remount), and so
//! does every new cgroup2 mount made from the host's cgroup namespace, which
//! sets all of the tree's flags to its own options.

use crate::layout::MountLine;
use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;

/// The option `favordynmods`, as mountinfo shows it.
pub const FAVOR_DYNMODS: &str = "favordynmods";

/// Whether a move into a cgroup waits for an RCU grace period here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationCost {
    /// The cgroup tree at `mount` (the cgroup2 tree, or a v1 hierarchy
    /// mounted so at boot) shows `favordynmods`: a move is cheap.
    Fast { mount: PathBuf },
    /// It is not: the first move after a quiet spell waits for a grace period.
    Slow { mount: PathBuf },
    /// No cgroup2 tree is mounted and no v1 hierarchy shows the option: it
    /// may still be on (a kernel built or booted with it), and v1 cannot take
    /// it at remount.
    NoCgroup2,
}

/// Errors from turning `favordynmods` on.
#[derive(Debug, thiserror::Error)]
pub enum FavorDynmodsError {
    #[error("cannot read /proc/self/mountinfo")]
    Mountinfo(#[source] io::Error),
    #[error("no cgroup2 tree is mounted (v1 cannot take favordynmods at remount): mount one, or boot with cgroup v2")]
    NoCgroup2,
    #[error("cannot open the cgroup2 tree at {mount} for reconfiguration ({hint})")]
    Pick {
        mount: PathBuf,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{mount} is not the cgroup2 tree mountinfo says it is (something is mounted over it)")]
    NotCgroup2 { mount: PathBuf },
    #[error("the kernel refused the option {option:?} of the cgroup2 tree at {mount} ({hint})")]
    Option {
        mount: PathBuf,
        option: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused to reconfigure the cgroup2 tree at {mount} (it needs CAP_SYS_ADMIN in the host's user namespace)")]
    Reconfigure {
        mount: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the cgroup2 tree at {mount} {} favordynmods after its reconfiguration ({})", if *.wanted { "still shows no" } else { "still shows" }, if *.wanted { "a cgroup namespace other than the host's cannot change it" } else { "a kernel built with CONFIG_CGROUP_FAVOR_DYNMODS or booted with cgroup_favordynmods=true keeps it" })]
    NotApplied { mount: PathBuf, wanted: bool },
    #[error("reconfiguring the cgroup2 tree at {mount} dropped its options {lost:?}; {}", if *.restored { "they were set again" } else { "setting them again failed: remount it with them" })]
    OptionsLost {
        mount: PathBuf,
        lost: Vec<String>,
        restored: bool,
    },
}

/// The first cgroup2 mount in `mountinfo`: its mount point and superblock
/// options.
fn cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, Vec<String>)> {
    mountinfo.lines().find_map(|line| {
        let mount = MountLine::parse(line)?;
        (mount.fstype == "cgroup2").then(|| {
            let options = mount
                .super_options
                .split(',')
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect();
            (PathBuf::from(mount.mount_point), options)
        })
    })
}

/// The cost of a move, from the text of mountinfo: `Fast` when a cgroup2
/// mount, or a v1 hierarchy mounted with it, shows `favordynmods`.
pub fn cost_from(mountinfo: &str) -> MigrationCost {
    let favored = mountinfo.lines().filter_map(MountLine::parse).find(|m| {
        matches!(m.fstype, "cgroup" | "cgroup2")
            && m.super_options.split(',').any(|o| o == FAVOR_DYNMODS)
    });
    match (favored, cgroup2_mount(mountinfo)) {
        (Some(m), _) => MigrationCost::Fast {
            mount: PathBuf::from(m.mount_point),
        },
        (None, Some((mount, _))) => MigrationCost::Slow { mount },
        (None, None) => MigrationCost::NoCgroup2,
    }
}

/// The flags of the cgroup2 tree itself among a cgroup2 mount's superblock
/// options (`nsdelegate`, `memory_recursiveprot`, `favordynmods`, ...), in
/// their order: what a new cgroup2 mount from the host's cgroup namespace
/// must carry not to clear them.
pub fn root_flags(super_options: &str) -> Vec<String> {
    super_options
        .split(',')
        .filter(|o| ROOT_FLAGS.contains(o))
        .map(str::to_owned)
        .collect()
}

/// cgroup2's own mount options (kernel/cgroup/cgroup.c, cgroup2_fs_parameters).
const ROOT_FLAGS: &[&str] = &[
    "nsdelegate",
    FAVOR_DYNMODS,
    "memory_localevents",
    "memory_recursiveprot",
    "memory_hugetlb_accounting",
    "pids_localevents",
];

/// The cost of a move on this host, as this process's mount namespace shows it.
pub fn migration_cost() -> Result<MigrationCost, FavorDynmodsError> {
    read_mountinfo().map(|m| cost_from(&m))
}

fn read_mountinfo() -> Result<String, FavorDynmodsError> {
    std::fs::read_to_string("/proc/self/mountinfo").map_err(FavorDynmodsError::Mountinfo)
}

/// The options a reconfiguration must set to keep `current` (a cgroup2
/// superblock's options) and `favor` or not: the kernel applies every flag
/// of cgroup2 from the new set alone, so one left out (nsdelegate,
/// memory_recursiveprot under systemd) would be cleared.
pub fn options_to_set(current: &[String], favor: bool) -> Vec<String> {
    let mut options: Vec<String> = current
        .iter()
        .filter(|o| *o != "rw" && *o != FAVOR_DYNMODS)
        .cloned()
        .collect();
    if favor {
        options.push(FAVOR_DYNMODS.to_owned());
    }
    options
}

/// Mounts the cgroup2 tree `favordynmods` (or not), keeping its other
/// options, and checks that it took. Returns the cost after; `Fast` at once
/// when it was on already. Needs CAP_SYS_ADMIN in the host's namespaces.
pub fn set_favor_dynmods(favor: bool) -> Result<MigrationCost, FavorDynmodsError> {
    let before = read_mountinfo()?;
    let Some((mount, current)) = cgroup2_mount(&before) else {
        return Err(FavorDynmodsError::NoCgroup2);
    };
    let was = current.iter().any(|o| o == FAVOR_DYNMODS);
    if was == favor {
        return Ok(cost_from(&before));
    }
    reconfigure(&mount, &options_to_set(&current, favor))?;
    let now = cgroup2_mount(&read_mountinfo()?).map(|(_, o)| o);
    let missing = |now: &Option<Vec<String>>| -> Vec<String> {
        options_to_set(&current, false)
            .into_iter()
            .filter(|o| !now.as_ref().is_some_and(|n| n.contains(o)))
            .collect()
    };
    let lost = missing(&now);
    if !lost.is_empty() {
        // Back to what it was, and read again to say whether that held.
        let _ = reconfigure(&mount, &options_to_set(&current, was));
        let again = cgroup2_mount(&read_mountinfo()?).map(|(_, o)| o);
        return Err(FavorDynmodsError::OptionsLost {
            mount,
            restored: missing(&again).is_empty(),
            lost,
        });
    }
    if now.is_some_and(|n| n.iter().any(|o| o == FAVOR_DYNMODS)) != favor {
        return Err(FavorDynmodsError::NotApplied {
            mount,
            wanted: favor,
        });
    }
    migration_cost()
}

/// Sets `options` on the cgroup2 superblock mounted at `mount`, through a
/// descriptor checked to be on cgroup2 (not on something mounted over it).
fn reconfigure(mount: &std::path::Path, options: &[String]) -> Result<(), FavorDynmodsError> {
    use std::os::unix::ffi::OsStrExt;
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    let pick = |hint: &'static str| {
        move |source: io::Error| FavorDynmodsError::Pick {
            mount: mount.to_owned(),
            hint: match source.raw_os_error() {
                Some(libc::ENOSYS) => "fspick needs Linux 5.2 or newer",
                Some(libc::EPERM) => "it needs CAP_SYS_ADMIN",
                _ => hint,
            },
            source,
        }
    };
    let path = CString::new(mount.as_os_str().as_bytes())
        .map_err(|_| invalid("a NUL in the mount point"))
        .map_err(pick("its path holds a NUL"))?;
    let dir = alcove_sys::dirfd::open_dir(&path).map_err(pick("it could not be opened"))?;
    if alcove_sys::fs::filesystem_magic_of(dir.as_fd()).ok() != Some(libc::CGROUP2_SUPER_MAGIC) {
        return Err(FavorDynmodsError::NotCgroup2 {
            mount: mount.to_owned(),
        });
    }
    let fs = alcove_sys::mount::pick_filesystem(dir.as_fd())
        .map_err(pick("fspick refused its superblock"))?;
    for option in options {
        let refused = |source: io::Error| FavorDynmodsError::Option {
            mount: mount.to_owned(),
            option: option.clone(),
            hint: if option == FAVOR_DYNMODS {
                "favordynmods needs Linux 6.0 or newer"
            } else {
                "an option the mount shows but cannot be set again"
            },
            source,
        };
        let set = match option.split_once('=') {
            Some((key, value)) => {
                let key = CString::new(key).map_err(|_| refused(invalid("a NUL in the key")))?;
                let value =
                    CString::new(value).map_err(|_| refused(invalid("a NUL in the value")))?;
                alcove_sys::mount::set_fs_string(fs.as_fd(), &key, &value)
            }
            None => {
                let key = CString::new(option.as_str())
                    .map_err(|_| refused(invalid("a NUL in the option")))?;
                alcove_sys::mount::set_fs_flag(fs.as_fd(), &key)
            }
        };
        set.map_err(refused)?;
    }
    alcove_sys::mount::reconfigure_fs(fs.as_fd()).map_err(|source| FavorDynmodsError::Reconfigure {
        mount: mount.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEMD_V2: &str = "\
24 30 0:22 / /sys ro,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 24 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const HYBRID_FAVORED: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,favordynmods
";
    const V1_ONLY: &str =
        "32 31 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n";

    #[test]
    fn the_cost_follows_the_cgroup2_mounts_option() {
        assert_eq!(
            cost_from(SYSTEMD_V2),
            MigrationCost::Slow {
                mount: "/sys/fs/cgroup".into()
            }
        );
        assert_eq!(
            cost_from(HYBRID_FAVORED),
            MigrationCost::Fast {
                mount: "/sys/fs/cgroup/unified".into()
            }
        );
        assert_eq!(cost_from(V1_ONLY), MigrationCost::NoCgroup2);
        let v1_favored =
            "32 31 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory,favordynmods\n";
        assert_eq!(
            cost_from(v1_favored),
            MigrationCost::Fast {
                mount: "/sys/fs/cgroup/memory".into()
            }
        );
    }

    #[test]
    fn a_new_mount_carries_the_trees_own_flags_only() {
        assert_eq!(
            root_flags("rw,seclabel,nsdelegate,memory_recursiveprot,favordynmods"),
            ["nsdelegate", "memory_recursiveprot", "favordynmods"]
        );
        assert!(root_flags("rw").is_empty());
    }

    #[test]
    fn a_reconfiguration_keeps_every_other_option() {
        let (_, current) = cgroup2_mount(SYSTEMD_V2).unwrap();
        assert_eq!(
            options_to_set(&current, true),
            ["nsdelegate", "memory_recursiveprot", "favordynmods"]
        );
        assert_eq!(
            options_to_set(&current, false),
            ["nsdelegate", "memory_recursiveprot"]
        );
        let (_, favored) = cgroup2_mount(HYBRID_FAVORED).unwrap();
        assert!(options_to_set(&favored, false).is_empty());
        assert_eq!(options_to_set(&favored, true), ["favordynmods"]);
    }
}
