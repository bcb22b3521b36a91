//! One sandbox's cgroup, spread over whichever hierarchies serve its controllers.

use crate::delegation::{self, static_name};
use crate::{registry, v1, v2, CgroupError, CgroupLayout, Controller, Limits, Usage};
use std::io;
use std::path::{Path, PathBuf};

/// The directory, under alcove's own cgroup, that holds every sandbox cgroup.
pub const PARENT_DIR: &str = "alcove";

/// The child of a pooled v2 cgroup that one run's processes live in.
pub const RUN_LEAF: &str = "run";

/// Memory an earlier run may leave charged to a reused cgroup before it is
/// reclaimed ahead of the next run (below this, subtracting it is harmless).
pub const RECLAIM_ABOVE: u64 = 4 << 20;

/// A sandbox's cgroup: one directory in the unified tree (when mounted, even
/// without controllers, because it gives the sandbox its cgroup2 id) and one in
/// each v1 hierarchy that serves a controller the sandbox needs.
#[derive(Debug)]
pub struct SandboxCgroup {
    unified: Option<PathBuf>,
    unified_controllers: Vec<Controller>,
    v1: Vec<(Vec<String>, PathBuf)>,
    /// A fresh child of `unified` holding this run's processes (a pooled
    /// cgroup on v2), so that every counter starts at zero: v2 cannot reset
    /// pids.peak, nor memory.peak before kernel 6.12. Limits stay on the parent.
    run_leaf: Option<PathBuf>,
    /// v2 memory.peak opened and reset for this run (kernel 6.12+): its peak
    /// is read back through the same descriptor.
    peak_fd: Option<std::fs::File>,
}

impl SandboxCgroup {
    /// Creates the cgroup `name` for a sandbox that needs `controllers`. An
    /// existing directory of that name is reused as it is.
    pub fn create(
        layout: &CgroupLayout,
        name: &str,
        controllers: &[Controller],
    ) -> Result<Self, CgroupError> {
        let mut cgroup = SandboxCgroup {
            unified: None,
            unified_controllers: Vec::new(),
            v1: Vec::new(),
            run_leaf: None,
            peak_fd: None,
        };
        if let Some(own) = &layout.unified_own_dir {
            let wanted: Vec<Controller> = controllers
                .iter()
                .copied()
                .filter(|c| layout.unified_controllers.iter().any(|u| u == c.name()))
                .collect();
            let parent = own.join(PARENT_DIR);
            let dir = parent.join(name);
            if !wanted.is_empty() {
                delegation::enable_for_children(own, &wanted)?;
                let made = make_parent(&parent)?;
                if let Err(e) = delegation::enable_below(&parent, &wanted) {
                    if made {
                        let _ = std::fs::remove_dir(&parent);
                    }
                    return Err(e);
                }
            }
            if create_in_parent(&dir)? && !wanted.is_empty() {
                // `alcove gc` removed the empty parent after we enabled its
                // controllers; the children of the new one get them now.
                delegation::enable_below(&parent, &wanted)?;
            }
            // A pooled cgroup whose last holder died mid-run may still have
            // that run's leaf: kill_all and remove must reach it.
            let stale_leaf = dir.join(RUN_LEAF);
            cgroup.run_leaf = stale_leaf.is_dir().then_some(stale_leaf);
            cgroup.unified = Some(dir);
            cgroup.unified_controllers = wanted;
        }
        let mut v1_needed: Vec<&str> = controllers
            .iter()
            .filter(|c| !cgroup.unified_controllers.contains(c))
            .map(|c| c.name())
            .collect();
        if cgroup.unified.is_none() {
            v1_needed.push("cpuacct"); // CPU usage; v2 gives it through cpu.stat
        }
        for controller in v1_needed {
            let Some(hierarchy) = layout.v1_for(controller) else {
                if controller == "cpuacct" {
                    continue;
                }
                cgroup.remove_quietly();
                return Err(match &layout.unified_own_dir {
                    Some(own) if layout.kind() == crate::LayoutKind::V2 => {
                        delegation::DelegationError::NotDelegated {
                            controller: controller.to_owned(),
                            path: own.clone(),
                        }
                        .into()
                    }
                    _ => CgroupError::MissingController(static_name(controller)),
                });
            };
            if cgroup.v1.iter().any(|(c, _)| *c == hierarchy.controllers) {
                continue; // co-mounted with one already created
            }
            let dir = hierarchy.own_dir.join(PARENT_DIR).join(name);
            if let Err(e) = create_in_parent(&dir) {
                cgroup.remove_quietly();
                return Err(e);
            }
            cgroup.v1.push((hierarchy.controllers.clone(), dir));
        }
        Ok(cgroup)
    }

    /// Writes the limits that differ from `previous` (what the cgroup holds now:
    /// `None` for "unknown", which rewrites everything). A limit of `None` means
    /// unlimited, so a reused cgroup never keeps an earlier sandbox's limit.
    pub fn apply(&self, limits: &Limits, previous: Option<&Limits>) -> Result<(), CgroupError> {
        let changed = |f: fn(&Limits) -> Option<u64>| previous.is_none_or(|p| f(p) != f(limits));
        if changed(|l| l.memory_bytes) {
            if let Some(dir) = self.dir_for(Controller::Memory, "memory") {
                match self.is_v2(Controller::Memory) {
                    true => v2::set_memory_limit(dir, limits.memory_bytes)?,
                    false => v1::set_memory_limit(dir, limits.memory_bytes)?,
                }
            }
        }
        if changed(|l| l.cpu.map(|q| q.quota_us << 32 | q.period_us)) {
            if let Some(dir) = self.dir_for(Controller::Cpu, "cpu") {
                match self.is_v2(Controller::Cpu) {
                    true => v2::set_cpu_quota(dir, limits.cpu)?,
                    false => v1::set_cpu_quota(dir, limits.cpu)?,
                }
            }
        }
        if changed(|l| l.pids_max) {
            if let Some(dir) = self.dir_for(Controller::Pids, "pids") {
                v2::set_pids_max(dir, limits.pids_max)?; // the same file in v1 and v2
            }
        }
        Ok(())
    }

    /// Prepares a reused cgroup to measure a new run (reclaiming the page
    /// cache earlier runs left when it is over [`RECLAIM_ABOVE`]): restarts the peak-memory
    /// record where the kernel allows it, and re-creates the v1 pids directory
    /// when `pids_reset` (pids.peak cannot be reset). Returns the memory still
    /// charged from earlier runs (page cache), which the new peak includes.
    pub fn restart_peaks(
        &mut self,
        pids_reset: bool,
        pids_max: Option<u64>,
    ) -> Result<u64, CgroupError> {
        let mut leftover = 0;
        if let Some(dir) = self
            .dir_for(Controller::Memory, "memory")
            .map(Path::to_owned)
        {
            // Page cache an earlier run left is reclaimed first when this run
            // presses on its limit, so a run that fills its limit peaks at the
            // limit, not at leftover + its own: subtracting the leftover then
            // under-reports it (an out-of-memory run showed a 148 KiB peak
            // under 32 MiB). Reclaimed here instead, best effort: the cgroup
            // holds no task between runs.
            if self.is_v2(Controller::Memory) {
                self.peak_fd = v2::reset_peak_fd(&dir);
                leftover = crate::v1::parse_u64(&dir, "memory.current").unwrap_or(0);
                if leftover > RECLAIM_ABOVE {
                    // EAGAIN when it reclaimed less than asked: measured anew either way.
                    let _ = v2::reclaim(&dir, leftover);
                    self.peak_fd = v2::reset_peak_fd(&dir);
                    leftover = crate::v1::parse_u64(&dir, "memory.current").unwrap_or(0);
                }
            } else {
                v1::reset_memory_peak(&dir)?;
                leftover = v1::memory_usage(&dir)?;
                if leftover > RECLAIM_ABOVE {
                    let _ = v1::force_empty(&dir);
                    v1::reset_memory_peak(&dir)?;
                    leftover = v1::memory_usage(&dir)?;
                }
            }
        }
        if pids_reset && !self.is_v2(Controller::Pids) {
            if let Some(dir) = self.dir_for_v1("pids").map(Path::to_owned) {
                remove_dir(&dir)?;
                ensure_dir(&dir)?;
                v2::set_pids_max(&dir, pids_max)?;
            }
        }
        Ok(leftover)
    }

    /// Moves this run's processes into a fresh child of the pooled v2 cgroup
    /// (see the `run_leaf` field), so its peaks, CPU time and OOM kills are
    /// its own. Returns `false` where no v2 controller measures the run (v1
    /// keeps [`restart_peaks`](Self::restart_peaks)). A leaf left by a run that
    /// died is killed and replaced.
    ///
    /// The leaf gets the memory and task limits too, though the slot holds
    /// them already: the kernel charges a child before it checks the parent's
    /// limit, so a charge the parent refuses would still raise the child's
    /// peak past the limit (a fork bomb's pids.peak read 17 under pids.max 16).
    pub fn begin_run_leaf(&mut self, limits: &Limits) -> Result<bool, CgroupError> {
        let Some(dir) = self.unified.clone() else {
            return Ok(false);
        };
        let measured: Vec<Controller> = self
            .unified_controllers
            .iter()
            .copied()
            .filter(|c| matches!(c, Controller::Memory | Controller::Pids))
            .collect();
        if measured.is_empty() {
            return Ok(false);
        }
        delegation::enable_below(&dir, &measured)?;
        let leaf = dir.join(RUN_LEAF);
        if std::fs::create_dir(&leaf).is_err() {
            self.kill_all();
            remove_dir(&leaf)?;
            std::fs::create_dir(&leaf).map_err(|source| CgroupError::Create {
                path: leaf.clone(),
                source,
            })?;
        }
        if measured.contains(&Controller::Memory) && limits.memory_bytes.is_some() {
            v2::set_memory_limit(&leaf, limits.memory_bytes)?;
        }
        if measured.contains(&Controller::Pids) && limits.pids_max.is_some() {
            v2::set_pids_max(&leaf, limits.pids_max)?;
        }
        self.run_leaf = Some(leaf);
        Ok(true)
    }

    /// Removes the run's leaf; its processes must all be gone.
    pub fn end_run_leaf(&mut self) -> Result<(), CgroupError> {
        match self.run_leaf.take() {
            Some(leaf) => remove_dir(&leaf),
            None => Ok(()),
        }
    }

    /// Whether the last [`restart_peaks`](Self::restart_peaks) restarted the
    /// peak-memory record (always on v1; on v2 only where memory.peak can be
    /// reset, kernel 6.12 and later).
    pub fn memory_peak_restarted(&self) -> bool {
        !self.is_v2(Controller::Memory) || self.peak_fd.is_some()
    }

    /// Whether pids.peak can be restarted (v1 only; v2's cannot be reset).
    pub fn pids_peak_resettable(&self) -> bool {
        !self.is_v2(Controller::Pids) && self.dir_for_v1("pids").is_some()
    }

    /// The sandbox's directory in the unified tree, for `CLONE_INTO_CGROUP`:
    /// the run's leaf where there is one.
    pub fn unified_dir(&self) -> Option<&Path> {
        self.run_leaf.as_deref().or(self.unified.as_deref())
    }

    /// The cgroup2 id of the sandbox (the inode number of its unified directory),
    /// which is what `bpf_get_current_cgroup_id()` reports for its processes.
    pub fn id(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.unified_dir()?;
        std::fs::metadata(dir).ok().map(|m| m.ino())
    }

    /// The v1 directories the sandbox's first process must join itself (v1 has
    /// no `CLONE_INTO_CGROUP`).
    pub fn v1_dirs(&self) -> impl Iterator<Item = &Path> {
        self.v1.iter().map(|(_, dir)| dir.as_path())
    }

    /// Reads what the kernel accounted to this cgroup.
    pub fn usage(&self) -> Result<Usage, CgroupError> {
        let mut usage = Usage::default();
        (usage.cpu_user_us, usage.cpu_system_us) = self.cpu_usage_us()?;
        if let Some(dir) = self.measured_dir(Controller::Memory, "memory") {
            if self.is_v2(Controller::Memory) {
                usage.memory_peak_bytes = match &self.peak_fd {
                    Some(fd) => v2::read_peak_fd(fd),
                    None => v2::memory_peak(dir),
                };
            } else {
                usage.memory_peak_bytes = Some(v1::memory_peak(dir)?);
            }
        }
        if let Some(dir) = self.measured_dir(Controller::Pids, "pids") {
            usage.pids_peak = v2::pids_peak(dir);
        }
        usage.oom_kills = self.oom_kills()?;
        Ok(usage)
    }

    /// Where this run's memory and CPU counters can be read from another
    /// thread while it runs (`alcove fn ps`).
    pub fn probe(&self) -> crate::UsageProbe {
        let memory = self
            .measured_dir(Controller::Memory, "memory")
            .map(|dir| (dir.to_owned(), self.is_v2(Controller::Memory)));
        let cpu = match self.unified_dir() {
            Some(dir) => Some((dir.to_owned(), true)),
            None => self
                .dir_for_v1("cpuacct")
                .map(|dir| (dir.to_owned(), false)),
        };
        crate::UsageProbe { memory, cpu }
    }

    /// CPU time used so far, `(user, system)` in microseconds.
    pub fn cpu_usage_us(&self) -> Result<(u64, u64), CgroupError> {
        if let Some(dir) = self.unified_dir() {
            return v2::cpu_usage_us(dir);
        }
        match self.dir_for_v1("cpuacct") {
            Some(dir) => v1::cpu_usage_us(dir),
            None => Ok((0, 0)),
        }
    }

    /// How many processes the OOM killer has killed in this cgroup.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        match self.measured_dir(Controller::Memory, "memory") {
            Some(dir) if self.is_v2(Controller::Memory) => v2::oom_kills(dir),
            Some(dir) => v1::oom_kills(dir),
            None => Ok(0),
        }
    }

    /// Whether any process is still in the cgroup.
    pub fn is_populated(&self) -> bool {
        self.all_dirs().any(|dir| {
            std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|t| !t.trim().is_empty())
        })
    }

    /// Thaws the cgroup where it is frozen (cgroup v2's `cgroup.freeze`): a
    /// frozen slot would freeze the next sandbox started in it.
    pub fn thaw(&self) {
        for dir in self.all_dirs() {
            let freeze = dir.join("cgroup.freeze");
            if std::fs::read_to_string(&freeze).is_ok_and(|v| v.trim() == "1") {
                let _ = std::fs::write(&freeze, "0");
            }
        }
    }

    /// Kills every process in the cgroup and waits (briefly) until it is empty.
    ///
    /// This deliberately does not use cgroup v2's `cgroup.kill`: on this kernel
    /// a process later started in that cgroup with `CLONE_INTO_CGROUP` is
    /// killed at birth (the cgroup's kill sequence no longer matches the
    /// parent's), which would poison a reused cgroup.
    pub fn kill_all(&self) {
        for _ in 0..200 {
            let mut any = false;
            for dir in self.all_dirs() {
                let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                    continue;
                };
                for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    any = true;
                    // These pids are in the sandbox's own cgroup, which only
                    // sandbox processes can join; one already gone is fine.
                    let _ = alcove_sys::process::kill(pid, libc::SIGKILL);
                }
            }
            if !any {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Moves the single-threaded process `pid`, which alcove did not start in
    /// this cgroup (a warm copy), into it in every hierarchy. In v1 it writes
    /// `tasks`, which moves the one thread without the global threadgroup lock
    /// a `cgroup.procs` write takes; v2 has only `cgroup.procs`.
    pub fn adopt(&self, pid: libc::pid_t) -> Result<(), CgroupError> {
        let value = pid.to_string();
        let unified = self.unified.iter().map(|d| d.join("cgroup.procs"));
        let v1 = self.v1.iter().map(|(_, d)| d.join("tasks"));
        for path in unified.chain(v1) {
            std::fs::write(&path, &value).map_err(|source| CgroupError::Write {
                path,
                value: value.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Removes every directory of the cgroup. The cgroup must be empty.
    pub fn remove(self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for dir in self.all_dirs() {
            if let Err(e) = remove_dir(dir) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Every directory of the cgroup, in all hierarchies, so a caller can
    /// record where they are (a pool slot, which may later be claimed from
    /// another cgroup) and clean them up with [`SandboxCgroup::open_dirs`].
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.all_dirs().map(Path::to_owned).collect()
    }

    /// Opens, for cleanup only (killing what is in it and removing it), a
    /// cgroup whose directories [`SandboxCgroup::dirs`] listed earlier. Those
    /// that no longer exist, or are not on a cgroup filesystem, are left out.
    pub fn open_dirs(dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        SandboxCgroup {
            unified: None,
            unified_controllers: Vec::new(),
            v1: with_leaves(
                dirs.into_iter()
                    .filter(|d| d.is_dir() && crate::layout::is_cgroup_fs(d)),
            ),
            run_leaf: None,
            peak_fd: None,
        }
    }

    /// Opens an existing sandbox cgroup `name` (for cleanup), without creating.
    pub fn open_existing(layout: &CgroupLayout, name: &str) -> Self {
        let unified = layout
            .unified_own_dir
            .as_ref()
            .map(|own| own.join(PARENT_DIR).join(name))
            .filter(|d| d.is_dir());
        let v1 = layout
            .v1
            .iter()
            .map(|h| (h.controllers.clone(), h.own_dir.join(PARENT_DIR).join(name)))
            .filter(|(_, d)| d.is_dir())
            .collect();
        let run_leaf = unified
            .as_ref()
            .map(|d| d.join(RUN_LEAF))
            .filter(|d| d.is_dir());
        SandboxCgroup {
            unified,
            unified_controllers: Vec::new(),
            v1,
            run_leaf,
            peak_fd: None,
        }
    }

    fn remove_quietly(&mut self) {
        for dir in self.all_dirs() {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Every directory, children before their parents.
    fn all_dirs(&self) -> impl Iterator<Item = &Path> {
        self.run_leaf
            .iter()
            .chain(self.unified.iter())
            .map(PathBuf::as_path)
            .chain(self.v1_dirs())
    }

    fn is_v2(&self, controller: Controller) -> bool {
        self.unified_controllers.contains(&controller)
    }

    /// Where `controller`'s limit is written.
    fn dir_for(&self, controller: Controller, v1_name: &str) -> Option<&Path> {
        if self.is_v2(controller) {
            return self.unified.as_deref();
        }
        self.dir_for_v1(v1_name)
    }

    /// Where `controller`'s usage of this run is read: the run's leaf, if any.
    fn measured_dir(&self, controller: Controller, v1_name: &str) -> Option<&Path> {
        if self.is_v2(controller) {
            return self.unified_dir();
        }
        self.dir_for_v1(v1_name)
    }

    fn dir_for_v1(&self, name: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(controllers, _)| controllers.iter().any(|c| c == name))
            .map(|(_, dir)| dir.as_path())
    }
}

fn ensure_dir(dir: &Path) -> Result<(), CgroupError> {
    existing_is_fine(dir, std::fs::create_dir(dir))
}

/// Creates alcove's parent cgroup `parent` if missing; `true` when it did,
/// and then records where it is for `gc` (see [`registry`]).
fn make_parent(parent: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(parent) {
        Ok(()) => {
            registry::remember(parent);
            Ok(true)
        }
        other => existing_is_fine(parent, other).map(|()| false),
    }
}

/// Creates `dir`, making its parent first only when that is missing (twice,
/// should `alcove gc` remove an empty parent in between). `true` when it had
/// to make the parent.
fn create_in_parent(dir: &Path) -> Result<bool, CgroupError> {
    let mut created = std::fs::create_dir(dir);
    let mut made_parent = false;
    for _ in 0..2 {
        match created {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                made_parent |= make_parent(dir.parent().expect("has a parent"))?;
                created = std::fs::create_dir(dir);
            }
            _ => break,
        }
    }
    existing_is_fine(dir, created).map(|()| made_parent)
}

/// Each directory, preceded by its run leaf where one exists.
fn with_leaves(dirs: impl Iterator<Item = PathBuf>) -> Vec<(Vec<String>, PathBuf)> {
    let mut out = Vec::new();
    for dir in dirs {
        let leaf = dir.join(RUN_LEAF);
        if leaf.is_dir() {
            out.push((Vec::new(), leaf));
        }
        out.push((Vec::new(), dir));
    }
    out
}

fn existing_is_fine(dir: &Path, created: io::Result<()>) -> Result<(), CgroupError> {
    match created {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Create {
            path: dir.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn remove_dir(dir: &Path) -> Result<(), CgroupError> {
    // A just-reaped sandbox can keep a cgroup busy for a moment.
    let mut last = None;
    for attempt in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_micros(100 << attempt.min(6)));
            }
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    Err(CgroupError::Remove {
        path: dir.to_owned(),
        source: last.expect("an error was recorded"),
    })
}
