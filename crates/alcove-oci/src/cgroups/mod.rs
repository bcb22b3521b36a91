//! The container's cgroup: created in every cgroup hierarchy the host mounts,
//! limited from the spec's `linux.resources`, and used to move, list, freeze,
//! signal, account and finally remove the container's processes.
//!
//! # Where it goes
//!
//! This project creates cgroups only beneath the cgroup it was started in, so
//! the base is the runtime's own cgroup in each hierarchy (each v1
//! controller's own path; the unified path). cgroup v2 lets a cgroup enable
//! controllers for its children only while it holds no processes (the root
//! excepted), and our caller (conmon, the containerd shim) sits in our own
//! cgroup: on v2 the base is therefore the nearest cgroup from our own upwards
//! whose `cgroup.procs` is empty, or the hierarchy's root. The controllers a
//! container can be limited by (cpu, cpuset, memory, pids, io, hugetlb, rdma,
//! misc: those offered) are enabled from the base down to the container's
//! parent.
//!
//! An absolute `cgroupsPath` is the exception: the runtime spec says it
//! MUST be taken from the cgroup mount point, and its callers count on that
//! (Kubernetes counts a pod's containers in the pod's cgroup; podman and
//! containerd read a container's statistics there). So an absolute path is
//! placed from each hierarchy's root, as runc places it, unless
//! `ALCOVE_OCI_CGROUPS=nested` is in the runtime's environment: then it too
//! goes beneath our own cgroup (for a runtime confined to a delegated
//! subtree; the tests here run so).
//!
//! The spec's `cgroupsPath` (relative, or absolute when nested) is appended to the base;
//! unset, it is `alcove-oci/<id>`. With `--systemd-cgroup` it has systemd's
//! form `slice:prefix:name`: the slice is expanded as systemd lays slices out
//! (`a-b.slice` → `a.slice/a-b.slice`; `-.slice` or empty: none) and the leaf
//! is `prefix-name.scope`. systemd itself is not asked (no D-Bus): the
//! directories are made directly, so a systemd host does not know the scope.
//! Components that are empty, `.` or `..` are refused, so nothing escapes
//! the base.
//!
//! On a hybrid host (v1 controllers plus a cgroup2 tree), the container gets
//! a directory in every v1 hierarchy alcove knows and in the unified tree:
//! the latter gives the cgroup id eBPF programs see, `cgroup.kill`, and the
//! device filter program. A controller is used through v2 when the unified
//! tree offers it, through v1 otherwise.
//!
//! Settings nothing can enforce: `memory.kernel` and `memory.kernelTCP` are
//! ignored (the kernel dropped kernel-memory limits); `network` is written
//! only where v1 net_cls / net_prio are mounted (v2 has no equivalent: use a
//! BPF program on the network side), and ignored otherwise, as runc does;
//! `memory.swap` is ignored on v1 when swap accounting is off. Any other
//! limit the host cannot enforce is an error, not a silent no-op.

mod devices;
mod files;
#[cfg(test)]
mod live;
mod path;
mod resources;
mod v1;
mod v2;

use files::{
    check_page_size, hugepage_sizes, keyed, limit_v1, limit_v2, procs_in, read, read_u64,
    remove_tree, write,
};
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors from creating, limiting and removing a container's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupsError {
    #[error("invalid cgroups path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("cannot find the cgroup hierarchies")]
    Layout(#[source] alcove_cgroup::CgroupError),
    #[error("no cgroup hierarchy is mounted")]
    NoHierarchy,
    #[error("cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} already holds processes")]
    InUse { path: PathBuf },
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("{what} needs the {controller} cgroup controller, which this host does not offer")]
    Unsupported {
        what: &'static str,
        controller: &'static str,
    },
    #[error("{what} cannot be set here: {path} does not exist")]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("cgroup {path} did not become {state} in time")]
    Timeout { path: PathBuf, state: &'static str },
    #[error("cannot {action} the cgroup device filter program{log}")]
    DeviceFilter {
        action: &'static str,
        /// The verifier's log, when it rejected the program.
        log: String,
        #[source]
        source: io::Error,
    },
}

/// The controllers the unified hierarchy is asked to enable for containers.
const V2_CONTROLLERS: &[&str] = &[
    "cpu", "cpuset", "memory", "pids", "io", "hugetlb", "rdma", "misc",
];

/// One container's cgroup: its directory in each hierarchy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerCgroup {
    /// v1 controller name → the container's directory in that controller's
    /// hierarchy (co-mounted controllers share one directory).
    v1: BTreeMap<String, PathBuf>,
    /// The container's directory in the unified (v2) hierarchy.
    unified: Option<PathBuf>,
    /// Controllers the unified hierarchy offers in `unified`.
    #[serde(default)]
    v2_controllers: Vec<String>,
    /// Directories `create` made, parents first: what `destroy` may remove.
    #[serde(default)]
    created: Vec<PathBuf>,
    /// Parents between our own cgroup and the container's (placed beneath
    /// our own, so ours by this project's rule, whoever made them): removed
    /// by whichever container leaves them empty.
    #[serde(default)]
    own_parents: Vec<PathBuf>,
    /// While creating: whether the path goes beneath our own cgroup.
    #[serde(skip)]
    beneath_own: bool,
}

/// Where one controller is served for this container.
enum Place<'a> {
    V1(&'a Path),
    V2(&'a Path),
    Absent,
}

/// Where a container without a `cgroupsPath` goes, beneath the base.
pub(crate) const DEFAULT_PARENT: &str = "alcove-oci";

impl ContainerCgroup {
    /// Creates the container's cgroup (see the module doc for where) and
    /// applies `resources`. An existing directory is reused if it holds no
    /// processes. On error, the directories made so far are removed.
    pub fn create(
        cgroups_path: Option<&str>,
        id: &str,
        systemd: bool,
        resources: Option<&LinuxResources>,
    ) -> Result<Self, CgroupsError> {
        let relative = path::relative(cgroups_path, id, systemd)?;
        let mut layout = alcove_cgroup::CgroupLayout::detect().map_err(CgroupsError::Layout)?;
        let from_root = std::env::var("ALCOVE_OCI_CGROUPS").map_or(true, |v| v != "nested")
            && (systemd || cgroups_path.is_some_and(|p| p.starts_with('/')));
        if from_root {
            for h in &mut layout.v1 {
                h.own_dir = path::hierarchy_root(&h.own_dir);
            }
            layout.unified_own_dir = layout.unified_own_dir.as_deref().map(path::hierarchy_root);
        }
        let mut hierarchies: Vec<(Vec<String>, PathBuf)> = layout
            .v1
            .iter()
            .map(|h| (h.controllers.clone(), h.own_dir.clone()))
            .collect();
        for (controllers, mut own) in path::extra_v1_hierarchies() {
            if from_root {
                own = path::hierarchy_root(&own);
            }
            let known = hierarchies
                .iter()
                .any(|(c, _)| c.iter().any(|x| controllers.contains(x)));
            if !known {
                hierarchies.push((controllers, own));
            }
        }
        let mut cgroup = ContainerCgroup {
            v1: BTreeMap::new(),
            unified: None,
            v2_controllers: Vec::new(),
            created: Vec::new(),
            own_parents: Vec::new(),
            beneath_own: !from_root,
        };
        let built = cgroup.build(
            &relative,
            &hierarchies,
            layout.unified_own_dir.as_deref(),
            resources,
        );
        if let Err(err) = built {
            // Nothing was moved in yet: remove only what we made, and never
            // kill what a reused directory may hold.
            for dir in cgroup.created.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(err);
        }
        Ok(cgroup)
    }

    fn build(
        &mut self,
        relative: &Path,
        hierarchies: &[(Vec<String>, PathBuf)],
        unified_own: Option<&Path>,
        resources: Option<&LinuxResources>,
    ) -> Result<(), CgroupsError> {
        for (controllers, own) in hierarchies {
            let leaf = self.make_dirs(own, relative, &[])?;
            if controllers.iter().any(|c| c == "cpuset") {
                v1::inherit_cpuset(own, &leaf)?;
            }
            for controller in controllers {
                self.v1.insert(controller.clone(), leaf.clone());
            }
        }
        if let Some(own) = unified_own {
            let base = path::v2_base(own);
            let offered = read(&base.join("cgroup.controllers")).unwrap_or_default();
            let wanted: Vec<&str> = offered
                .split_whitespace()
                .filter(|c| V2_CONTROLLERS.contains(c))
                .collect();
            let leaf = self.make_dirs(&base, relative, &wanted)?;
            self.v2_controllers = read(&leaf.join("cgroup.controllers"))?
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            self.unified = Some(leaf);
        }
        if self.v1.is_empty() && self.unified.is_none() {
            return Err(CgroupsError::NoHierarchy);
        }
        for leaf in self.leaves() {
            if !self.created.contains(&leaf) && !procs_in(&leaf)?.is_empty() {
                return Err(CgroupsError::InUse { path: leaf });
            }
        }
        match resources {
            Some(resources) => self.apply(resources),
            None => Ok(()),
        }
    }

    /// Makes `base/relative` one level at a time, recording what it made and
    /// enabling `enable` (v2 controllers) in every level above the leaf.
    fn make_dirs(
        &mut self,
        base: &Path,
        relative: &Path,
        enable: &[&str],
    ) -> Result<PathBuf, CgroupsError> {
        let mut attempt = 0;
        'retry: loop {
            attempt += 1;
            let mut dir = base.to_path_buf();
            for component in relative.components() {
                if !enable.is_empty() {
                    v2::enable_controllers(&dir, enable);
                }
                if dir != base && self.beneath_own && !self.own_parents.contains(&dir) {
                    self.own_parents.push(dir.clone());
                }
                dir.push(component);
                match std::fs::create_dir(&dir) {
                    Ok(()) => self.created.push(dir.clone()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                    // Another container's destroy removed a shared parent
                    // between our steps: start again from the base.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 3 => {
                        continue 'retry;
                    }
                    Err(source) => return Err(CgroupsError::Create { path: dir, source }),
                }
            }
            return Ok(dir);
        }
    }

    /// Where the controller named `v1_name` in v1 and `v2_name` in v2 is
    /// served: v2 when the unified tree offers it here.
    fn place(&self, v1_name: &str, v2_name: &str) -> Place<'_> {
        match (&self.unified, self.v1.get(v1_name)) {
            (Some(dir), _) if self.v2_controllers.iter().any(|c| c == v2_name) => Place::V2(dir),
            (_, Some(dir)) => Place::V1(dir),
            _ => Place::Absent,
        }
    }

    /// The container's directory in every hierarchy, each once.
    fn leaves(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for dir in self.v1.values().chain(self.unified.iter()) {
            if !dirs.contains(dir) {
                dirs.push(dir.clone());
            }
        }
        dirs
    }

    /// (Tests only: the runtime's own processes join by themselves, see
    /// [`join_self_v1`](Self::join_self_v1).) Moves the single-threaded process `pid` (the runtime's own child,
    /// before it starts anything) into the container's cgroup in every
    /// hierarchy. On v1 through `tasks`: moving one thread skips the
    /// whole-process migration lock that makes a `cgroup.procs` write wait
    /// for an RCU grace period (~7-13 ms here, against ~0.03 ms).
    #[cfg(test)]
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupsError> {
        let value = pid.to_string();
        for dir in self.leaves() {
            let v1 = self.unified.as_deref() != Some(dir.as_path());
            let file = if v1 { "tasks" } else { "cgroup.procs" };
            write(&dir.join(file), &value)?;
        }
        Ok(())
    }

    /// Moves the calling (single-threaded) process into the container's v1
    /// cgroups: a task moving itself through `tasks` takes no migration lock.
    /// The unified directory is joined at fork instead (CLONE_INTO_CGROUP).
    pub fn join_self_v1(&self) -> Result<(), CgroupsError> {
        for dir in self.leaves() {
            if self.unified.as_deref() != Some(dir.as_path()) {
                write(&dir.join("tasks"), "0")?;
            }
        }
        Ok(())
    }

    /// The unified directory, open, for starting a process in it.
    pub fn open_unified(&self) -> Result<Option<std::os::fd::OwnedFd>, CgroupsError> {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(dir) = &self.unified else {
            return Ok(None);
        };
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map(|f| Some(f.into()))
            .map_err(|source| CgroupsError::Read {
                path: dir.clone(),
                source,
            })
    }

    /// Every process in the container's cgroup, its nested cgroups included.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupsError> {
        // Every hierarchy is read: a process may sit in some directories
        // and not yet (or no longer) in others.
        let mut pids = Vec::new();
        for dir in self.leaves() {
            pids.extend(procs_in(&dir)?);
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Freezes every process in the container and waits until the kernel
    /// reports them frozen.
    pub fn freeze(&self) -> Result<(), CgroupsError> {
        self.set_frozen(true)
    }

    /// Thaws the container's processes.
    pub fn thaw(&self) -> Result<(), CgroupsError> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupsError> {
        match (self.v1.get("freezer"), &self.unified) {
            (Some(dir), _) => v1::set_frozen(dir, frozen),
            (None, Some(dir)) => v2::set_frozen(dir, frozen),
            (None, None) => Err(CgroupsError::Unsupported {
                what: "pausing",
                controller: "freezer",
            }),
        }
    }

    /// Whether the container's processes are frozen (not merely freezing).
    pub fn is_frozen(&self) -> bool {
        match (self.v1.get("freezer"), &self.unified) {
            (Some(dir), _) => v1::is_frozen(dir),
            (None, Some(dir)) => v2::is_frozen(dir),
            (None, None) => false,
        }
    }

    /// The container's usage in the form of runc's `events --stats` "data"
    /// object (cpu, memory, pids, blkio, hugetlb).
    pub fn stats(&self) -> serde_json::Value {
        let cpu = match (self.place("cpuacct", "cpu"), &self.unified) {
            (Place::V1(d), _) => v1::cpu_stats(d, self.v1.get("cpu").map(PathBuf::as_path)),
            (_, Some(d)) => v2::cpu_stats(d),
            _ => serde_json::json!({}),
        };
        let memory = match self.place("memory", "memory") {
            Place::V1(d) => v1::memory_stats(d),
            Place::V2(d) => v2::memory_stats(d),
            Place::Absent => serde_json::json!({}),
        };
        let pids = match self.place("pids", "pids") {
            Place::V1(d) | Place::V2(d) => serde_json::json!({
                "current": read_u64(&d.join("pids.current")),
                "limit": read_u64(&d.join("pids.max")).filter(|m| *m != u64::MAX).unwrap_or(0),
            }),
            Place::Absent => serde_json::json!({}),
        };
        let blkio = match self.place("blkio", "io") {
            Place::V1(d) => v1::blkio_stats(d),
            Place::V2(d) => v2::io_stats(d),
            Place::Absent => serde_json::json!({}),
        };
        let hugetlb = match self.place("hugetlb", "hugetlb") {
            Place::V1(d) => v1::hugetlb_stats(d),
            Place::V2(d) => v2::hugetlb_stats(d),
            Place::Absent => serde_json::json!({}),
        };
        serde_json::json!({
            "cpu": cpu,
            "memory": memory,
            "pids": pids,
            "blkio": blkio,
            "hugetlb": hugetlb,
        })
    }

    /// How many times the kernel's OOM killer killed a process in the container.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.place("memory", "memory") {
            Place::V1(d) => d.join("memory.oom_control"),
            Place::V2(d) => d.join("memory.events"),
            Place::Absent => return 0,
        };
        let text = read(&file).unwrap_or_default();
        keyed(&text).get("oom_kill").copied().unwrap_or(0)
    }

    /// Sends `signal` to every process in the container. SIGKILL uses
    /// `cgroup.kill` where the kernel has it; otherwise the cgroup is frozen
    /// while the processes are listed and signalled, so none can fork past
    /// the listing. Either way a frozen container is thawed afterwards: a v1
    /// freezer holds even killed tasks until then.
    pub fn kill_all(&self, signal: i32) {
        let mut cgroup_kill = false;
        if signal == libc::SIGKILL {
            if let Some(dir) = &self.unified {
                let kill = dir.join("cgroup.kill");
                cgroup_kill = kill.exists() && write(&kill, "1").is_ok();
            }
        }
        let froze = signal == libc::SIGKILL && !cgroup_kill && self.freeze().is_ok();
        // Also after cgroup.kill: a process only in the v1 directories (moved
        // in by hand, half-way through joining) is not in the unified one.
        for pid in self.pids().unwrap_or_default() {
            let _ = alcove_sys::process::kill(pid, signal);
        }
        if signal == libc::SIGKILL && (froze || self.is_frozen()) {
            let _ = self.thaw();
        }
    }

    /// Kills what is left in the container, waits briefly for it to go, and
    /// removes the container's directories (nested cgroups first) and the
    /// now-empty parents `create` made, up to the base.
    pub fn destroy(&self) -> Result<(), CgroupsError> {
        // An emptied container (the usual case: its init exited) needs no
        // freezing and signalling, only its directories removed.
        if self.pids().map_or(true, |p| !p.is_empty()) {
            self.kill_all(libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.pids().is_ok_and(|p| !p.is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let leaves = self.leaves();
        let mut first_error = None;
        for leaf in &leaves {
            if let Err(err) = remove_tree(leaf) {
                first_error.get_or_insert(err);
            }
        }
        // Parents shared with other containers stay while those use them.
        for dir in self.created.iter().rev().filter(|d| !leaves.contains(d)) {
            let _ = std::fs::remove_dir(dir);
        }
        for dir in self.own_parents.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        // The default parent (`alcove-oci/`, for a config without a
        // cgroupsPath) goes with the last container in it, whichever made it:
        // rmdir refuses while another is there.
        for leaf in &leaves {
            if let Some(parent) = leaf.parent().filter(|p| p.ends_with(DEFAULT_PARENT)) {
                let _ = std::fs::remove_dir(parent);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The container's directory in the unified hierarchy: its inode number
    /// is the cgroup id eBPF sees, and it is the target of CLONE_INTO_CGROUP.
    pub fn unified_dir(&self) -> Option<&Path> {
        self.unified.as_deref()
    }
}
