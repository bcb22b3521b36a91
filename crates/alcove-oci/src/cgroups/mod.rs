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
//! The spec's `cgroupsPath`, absolute or relative, is appended to the base;
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
mod path;
#[cfg(test)]
mod live;
mod v1;
mod v2;

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
}

/// Where one controller is served for this container.
enum Place<'a> {
    V1(&'a Path),
    V2(&'a Path),
    Absent,
}

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
        let layout = alcove_cgroup::CgroupLayout::detect().map_err(CgroupsError::Layout)?;
        let mut hierarchies: Vec<(Vec<String>, PathBuf)> = layout
            .v1
            .iter()
            .map(|h| (h.controllers.clone(), h.own_dir.clone()))
            .collect();
        for (controllers, own) in path::extra_v1_hierarchies() {
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

    /// Writes `resources` into the container's cgroup (the `update` command).
    pub fn update(&self, resources: &LinuxResources) -> Result<(), CgroupsError> {
        self.apply(resources)
    }

    fn apply(&self, r: &LinuxResources) -> Result<(), CgroupsError> {
        if let Some(m) = r.memory() {
            let wanted = m.limit().is_some()
                || m.reservation().is_some()
                || m.swap().is_some()
                || m.swappiness().is_some()
                || m.disable_oom_killer() == Some(true);
            self.dispatch(
                ("memory limits", "memory", "memory"),
                wanted,
                |place| match place {
                    Place::V1(d) => v1::memory(d, m),
                    Place::V2(d) => v2::memory(d, m),
                    Place::Absent => Ok(()),
                },
            )?;
        }
        if let Some(c) = r.cpu() {
            let wanted = c.shares().is_some()
                || c.quota().is_some()
                || c.period().is_some()
                || c.realtime_runtime().is_some()
                || c.realtime_period().is_some()
                || c.idle().is_some()
                || c.burst().is_some();
            self.dispatch(("cpu limits", "cpu", "cpu"), wanted, |place| match place {
                Place::V1(d) => v1::cpu(d, c),
                Place::V2(d) => v2::cpu(d, c),
                Place::Absent => Ok(()),
            })?;
            let non_empty = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
            let wanted = non_empty(c.cpus()) || non_empty(c.mems());
            self.dispatch(
                ("cpuset", "cpuset", "cpuset"),
                wanted,
                |place| match place {
                    Place::V1(d) | Place::V2(d) => cpuset(d, c),
                    Place::Absent => Ok(()),
                },
            )?;
        }
        if let Some(p) = r.pids() {
            let value = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".to_owned()
            };
            self.dispatch(
                ("the pids limit", "pids", "pids"),
                true,
                |place| match place {
                    Place::V1(d) | Place::V2(d) => write(&d.join("pids.max"), &value),
                    Place::Absent => Ok(()),
                },
            )?;
        }
        if let Some(b) = r.block_io() {
            self.dispatch(
                ("block IO limits", "blkio", "io"),
                v1::blkio_wanted(b),
                |place| match place {
                    Place::V1(d) => v1::blkio(d, b),
                    Place::V2(d) => v2::io(d, b),
                    Place::Absent => Ok(()),
                },
            )?;
        }
        if let Some(h) = r.hugepage_limits() {
            self.dispatch(
                ("hugepage limits", "hugetlb", "hugetlb"),
                !h.is_empty(),
                |place| match place {
                    Place::V1(d) => v1::hugetlb(d, h),
                    Place::V2(d) => v2::hugetlb(d, h),
                    Place::Absent => Ok(()),
                },
            )?;
        }
        if let Some(n) = r.network() {
            v1::network(self.v1.get("net_cls"), self.v1.get("net_prio"), n)?;
        }
        if let Some(rdma) = r.rdma() {
            self.dispatch(
                ("rdma limits", "rdma", "rdma"),
                !rdma.is_empty(),
                |place| match place {
                    Place::V1(d) | Place::V2(d) => rdma_limits(d, rdma),
                    Place::Absent => Ok(()),
                },
            )?;
        }
        if let Some(u) = r.unified().as_ref().filter(|u| !u.is_empty()) {
            let Some(dir) = &self.unified else {
                return Err(CgroupsError::Unsupported {
                    what: "linux.resources.unified",
                    controller: "cgroup2",
                });
            };
            v2::unified(dir, &self.v2_controllers, u)?;
        }
        if let Some(rules) = r.devices() {
            devices::apply(
                self.v1.get("devices").map(PathBuf::as_path),
                self.unified.as_deref(),
                rules,
            )?;
        }
        Ok(())
    }

    /// Runs `write` on where the controller (`names`: what, v1 name, v2 name)
    /// is served, if `wanted`; wanted but served nowhere is an error.
    fn dispatch(
        &self,
        names: (&'static str, &'static str, &'static str),
        wanted: bool,
        write: impl FnOnce(Place<'_>) -> Result<(), CgroupsError>,
    ) -> Result<(), CgroupsError> {
        if !wanted {
            return Ok(());
        }
        match self.place(names.1, names.2) {
            Place::Absent => Err(CgroupsError::Unsupported {
                what: names.0,
                controller: names.1,
            }),
            place => write(place),
        }
    }

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

    /// Moves process `pid` into the container's cgroup in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupsError> {
        let value = pid.to_string();
        for dir in self.leaves() {
            write(&dir.join("cgroup.procs"), &value)?;
        }
        Ok(())
    }

    /// Every process in the container's cgroup, its nested cgroups included.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupsError> {
        let dir = self.unified.as_ref().or_else(|| {
            ["pids", "freezer", "memory", "cpu"]
                .iter()
                .find_map(|c| self.v1.get(*c))
                .or_else(|| self.v1.values().next())
        });
        match dir {
            Some(dir) => procs_in(dir),
            None => Ok(Vec::new()),
        }
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
    /// the listing, and thawed so the signal takes effect.
    pub fn kill_all(&self, signal: i32) {
        if signal == libc::SIGKILL {
            if let Some(dir) = &self.unified {
                let kill = dir.join("cgroup.kill");
                if kill.exists() && write(&kill, "1").is_ok() {
                    return;
                }
            }
        }
        let freeze = signal == libc::SIGKILL && self.freeze().is_ok();
        for pid in self.pids().unwrap_or_default() {
            let _ = alcove_sys::process::kill(pid, signal);
        }
        if freeze {
            let _ = self.thaw();
        }
    }

    /// Kills what is left in the container, waits briefly for it to go, and
    /// removes the container's directories (nested cgroups first) and the
    /// now-empty parents `create` made, up to the base.
    pub fn destroy(&self) -> Result<(), CgroupsError> {
        self.kill_all(libc::SIGKILL);
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
        first_error.map_or(Ok(()), Err)
    }

    /// The container's directory in the unified hierarchy: its inode number
    /// is the cgroup id eBPF sees, and it is the target of CLONE_INTO_CGROUP.
    pub fn unified_dir(&self) -> Option<&Path> {
        self.unified.as_deref()
    }
}

/// cpuset.cpus and cpuset.mems; v1 and v2 share the names and syntax.
fn cpuset(dir: &Path, c: &oci_spec::runtime::LinuxCpu) -> Result<(), CgroupsError> {
    for (file, value) in [("cpuset.cpus", c.cpus()), ("cpuset.mems", c.mems())] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            write(&dir.join(file), value)?;
        }
    }
    Ok(())
}

/// rdma.max, one line per device; v1 and v2 share the syntax.
fn rdma_limits(
    dir: &Path,
    limits: &std::collections::HashMap<String, oci_spec::runtime::LinuxRdma>,
) -> Result<(), CgroupsError> {
    for (device, limit) in limits {
        if device.is_empty() || device.contains(char::is_whitespace) {
            return Err(CgroupsError::Invalid {
                what: "rdma device name",
                reason: format!("{device:?} is empty or holds white space"),
            });
        }
        let value = |v: Option<u32>| v.map_or("max".to_owned(), |v| v.to_string());
        let line = format!(
            "{device} hca_handle={} hca_object={}",
            value(limit.hca_handles()),
            value(limit.hca_objects())
        );
        write(&dir.join("rdma.max"), &line)?;
    }
    Ok(())
}

/// Every pid in `dir`'s cgroup.procs and in those of the cgroups below it.
fn procs_in(dir: &Path) -> Result<Vec<i32>, CgroupsError> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let text = read(&dir.join("cgroup.procs"))?;
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        let entries = std::fs::read_dir(&dir).map_err(|source| CgroupsError::Read {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    Ok(pids)
}

/// Removes `dir` and the cgroups below it, deepest first, retrying while the
/// kernel still counts exiting processes in it (EBUSY) for about a second.
fn remove_tree(dir: &Path) -> Result<(), CgroupsError> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path())?;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(CgroupsError::Remove {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

pub(super) fn read(path: &Path) -> Result<String, CgroupsError> {
    std::fs::read_to_string(path).map_err(|source| CgroupsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn write(path: &Path, value: &str) -> Result<(), CgroupsError> {
    std::fs::write(path, value).map_err(|source| CgroupsError::Write {
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

/// A one-number cgroup file; `max` reads as `u64::MAX`.
pub(super) fn read_u64(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    if text == "max" {
        return Some(u64::MAX);
    }
    text.parse().ok()
}

/// A flat-keyed file (`key value` lines, as memory.stat) as a map.
pub(super) fn keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            let value = value.trim();
            let value = if value == "max" {
                u64::MAX
            } else {
                value.parse().ok()?
            };
            Some((key.to_owned(), value))
        })
        .collect()
}

/// A limit as v1 takes it: `-1` unlimited, else a non-negative number.
pub(super) fn limit_v1(what: &'static str, value: i64) -> Result<String, CgroupsError> {
    match value {
        -1 => Ok("-1".to_owned()),
        v if v >= 0 => Ok(v.to_string()),
        v => Err(CgroupsError::Invalid {
            what,
            reason: format!("{v} is neither -1 (unlimited) nor a size"),
        }),
    }
}

/// A limit as v2 takes it: `max` unlimited, else a non-negative number.
pub(super) fn limit_v2(what: &'static str, value: i64) -> Result<String, CgroupsError> {
    match limit_v1(what, value)?.as_str() {
        "-1" => Ok("max".to_owned()),
        v => Ok(v.to_owned()),
    }
}

/// A hugepage size as the spec and the kernel's file names spell it (`2MB`).
pub(super) fn check_page_size(size: &str) -> Result<(), CgroupsError> {
    let digits = size.trim_end_matches(['K', 'M', 'G', 'B']);
    let unit = &size[digits.len()..];
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !["KB", "MB", "GB"].contains(&unit)
    {
        return Err(CgroupsError::Invalid {
            what: "hugepage size",
            reason: format!("{size:?} is not a number followed by KB, MB or GB"),
        });
    }
    Ok(())
}

/// The hugepage sizes this kernel supports, named as cgroup files name them.
pub(super) fn hugepage_sizes() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/kernel/mm/hugepages") else {
        return Vec::new();
    };
    let mut sizes: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kb: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(match kb {
                kb if kb % (1 << 20) == 0 => format!("{}GB", kb >> 20),
                kb if kb % (1 << 10) == 0 => format!("{}MB", kb >> 10),
                kb => format!("{kb}KB"),
            })
        })
        .collect();
    sizes.sort();
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_map_minus_one_to_unlimited() {
        assert_eq!(limit_v1("x", -1).unwrap(), "-1");
        assert_eq!(limit_v2("x", -1).unwrap(), "max");
        assert_eq!(limit_v2("x", 4096).unwrap(), "4096");
        assert!(limit_v2("x", -2).is_err());
    }

    #[test]
    fn page_sizes_are_checked() {
        for good in ["2MB", "1GB", "64KB"] {
            check_page_size(good).unwrap();
        }
        for bad in ["", "MB", "2mb", "2MB/../x", "2 MB", "2TB"] {
            assert!(check_page_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keyed_files_parse_max() {
        let map = keyed("oom 0\noom_kill 3\nmax max\n");
        assert_eq!(map["oom_kill"], 3);
        assert_eq!(map["max"], u64::MAX);
    }
}
