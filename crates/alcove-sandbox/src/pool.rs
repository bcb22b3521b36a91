//! A bounded pool of prepared sandbox pieces: network namespaces and cgroups.
//!
//! Creating a network namespace is the most expensive part of a sandbox's start
//! (0.4-0.6 ms here, serialised in the kernel, with seconds of deferred
//! teardown), and creating and removing a sandbox's cgroups (a directory in each
//! hierarchy, whose kernel files are built each time) cost ~0.25 ms more. So
//! `alcove run` keeps up to [`SLOTS`] slots under `/run/alcove/pool`. A slot is
//! a lock file, a network namespace holding only loopback (up), bind-mounted at
//! `net-N`, and cgroups named `slot-N` under alcove's own cgroup. A run takes a
//! free slot under an exclusive `flock`; the lock dies with the process, so a
//! killed run frees its slot, and the next holder sees from the slot's record
//! that it was not released cleanly and kills whatever is left in its cgroups.
//! The record also lists the slot's cgroup directories, so an alcove started
//! from another cgroup, which makes the slot's cgroups under its own, removes
//! the ones the earlier holder made.
//!
//! What is reused is safe to reuse. A sandbox cannot change a pooled network
//! namespace (it has no CAP_NET_ADMIN there) and none of its sockets outlive its
//! processes, which are all dead before the slot is released. The cgroups get
//! the new run's limits (unlimited ones too), and usage is measured against the
//! baselines the record keeps: CPU time and OOM kills as differences, peak
//! memory restarted before the run (it includes page cache earlier runs left
//! charged, reported separately), and the pids directory re-created when an
//! earlier run's peak would hide this one's. When every slot is busy, the run
//! makes fresh pieces of its own. `alcove gc` removes the pool.

use alcove_cgroup::{CgroupLayout, Controller, CpuQuota, Limits, SandboxCgroup};
use alcove_sys::{fd, mount, net, ns};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where pooled namespaces and the slots' locks live.
pub const POOL_DIR: &str = "/run/alcove/pool";
/// How many slots the pool keeps at most.
pub const SLOTS: usize = 16;
/// Every pooled cgroup's name starts with this.
pub const CGROUP_PREFIX: &str = "slot-";

/// What a slot's lock file records between runs.
#[derive(Debug, Clone, Default, PartialEq)]
struct Record {
    clean: bool,
    /// Identifies where the slot's cgroups are (alcove's own cgroup).
    place: u64,
    limits: Limits,
    /// Cumulative (user, system) CPU microseconds.
    cpu_us: Option<(u64, u64)>,
    oom_kills: u64,
    pids_peak: Option<u64>,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        let cpu = self
            .limits
            .cpu
            .map(|q| format!("{}/{}", q.quota_us, q.period_us));
        let mut text = format!(
            "alcove-slot-v1 {} {:x} {} {} {} {} {} {}",
            if self.clean { "clean" } else { "busy" },
            self.place,
            opt(self.limits.memory_bytes),
            cpu.as_deref().unwrap_or("-"),
            opt(self.limits.pids_max),
            self.cpu_us
                .map_or("-".to_owned(), |(u, s)| format!("{u}/{s}")),
            self.oom_kills,
            opt(self.pids_peak),
        )
        .into_bytes();
        text.resize(RECORD_LEN, b' ');
        text[RECORD_LEN - 1] = b'\n';
        text
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let f: Vec<&str> = text.split_whitespace().collect();
        if f.len() != 9 || f[0] != "alcove-slot-v1" {
            return None;
        }
        let opt = |s: &str| {
            if s == "-" {
                Some(None)
            } else {
                s.parse().ok().map(Some)
            }
        };
        let cpu = match f[4] {
            "-" => None,
            q => {
                let (quota, period) = q.split_once('/')?;
                Some(CpuQuota {
                    quota_us: quota.parse().ok()?,
                    period_us: period.parse().ok()?,
                })
            }
        };
        Some(Record {
            clean: f[1] == "clean",
            place: u64::from_str_radix(f[2], 16).ok()?,
            limits: Limits {
                memory_bytes: opt(f[3])?,
                cpu,
                pids_max: opt(f[5])?,
            },
            cpu_us: match f[6] {
                "-" => None,
                pair => {
                    let (u, s) = pair.split_once('/')?;
                    Some((u.parse().ok()?, s.parse().ok()?))
                }
            },
            oom_kills: f[7].parse().ok()?,
            pids_peak: opt(f[8])?,
        })
    }
}

const RECORD_LEN: usize = 160;

/// Usage counters as they stood when the run began.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Baseline {
    /// (user, system) CPU microseconds.
    pub cpu_us: (u64, u64),
    pub oom_kills: u64,
    /// Memory still charged from earlier runs when the peak was restarted.
    pub memory_leftover: u64,
    /// Whether pids.peak will show this run's peak alone.
    pub pids_exact: bool,
    /// Whether the peak-memory record was restarted for this run.
    pub memory_exact: bool,
}

/// A claimed slot: its cgroups, its network namespace, and the lock that makes them ours.
pub(crate) struct Slot {
    pub cgroup: SandboxCgroup,
    pub netns: Option<OwnedFd>,
    pub baseline: Baseline,
    record: Record,
    lock: File,
}

impl Slot {
    /// Records the counters as the run left them and frees the slot. Call only
    /// once every process of the sandbox is gone.
    pub(crate) fn release(
        mut self,
        cpu_us: Option<(u64, u64)>,
        oom_kills: u64,
        pids_peak: Option<u64>,
    ) {
        if self.cgroup.end_run_leaf().is_err() {
            return; // left busy: the next holder kills and replaces the leaf
        }
        self.record.clean = true;
        self.record.cpu_us = cpu_us;
        self.record.oom_kills = oom_kills;
        self.record.pids_peak = pids_peak;
        let _ = self.lock.write_at(&self.record.encode(), 0);
    }
}

/// Which usage baselines the run needs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Needs {
    /// CPU time (for the report or the CPU-time limit).
    pub cpu: bool,
    /// Peak memory and tasks (for the report).
    pub peaks: bool,
}

/// Claims a free slot, creating its pieces on first use. `None` when every slot
/// is busy or the pool cannot be used; the caller then makes fresh pieces.
pub(crate) fn claim(
    layout: &CgroupLayout,
    limits: &Limits,
    want_netns: bool,
    needs: Needs,
) -> Option<Slot> {
    for i in 0..SLOTS {
        let lock = match open_lock(i) {
            Ok(lock) => lock,
            Err(_) => {
                std::fs::create_dir_all(POOL_DIR).ok()?;
                match open_lock(i) {
                    Ok(lock) => lock,
                    Err(_) => return None,
                }
            }
        };
        if !fd::flock(lock.as_fd(), fd::Lock::TryExclusive).unwrap_or(false) {
            continue;
        }
        return prepare(i, lock, layout, limits, want_netns, needs).ok();
    }
    None
}

fn prepare(
    i: usize,
    lock: File,
    layout: &CgroupLayout,
    limits: &Limits,
    want_netns: bool,
    needs: Needs,
) -> Result<Slot, Box<dyn std::error::Error>> {
    let place = place_of(layout);
    let (recorded, recorded_dirs) = read_record(&lock, i);
    if recorded.as_ref().is_some_and(|r| r.place != place) {
        // Last claimed from another cgroup: remove the pieces it left there.
        let old = SandboxCgroup::open_dirs(recorded_dirs.iter().cloned());
        old.kill_all();
        let _ = old.remove();
    }
    let previous = recorded.filter(|r| r.clean && r.place == place);
    let controllers = [Controller::Memory, Controller::Pids, Controller::Cpu];
    let mut cgroup = SandboxCgroup::create(layout, &format!("{CGROUP_PREFIX}{i}"), &controllers)?;
    let dirs = cgroup.dirs();
    if dirs != recorded_dirs {
        write_dirs(&lock, &dirs)?;
    }
    if previous.is_none() {
        // A holder died mid-run: its sandbox may still be dying, or frozen
        // (an agent sandbox paused when its daemon was killed), which would
        // freeze this one. A clean release thawed the slot already.
        cgroup.thaw();
        cgroup.kill_all();
    }
    cgroup.apply(limits, previous.as_ref().map(|r| &r.limits))?;
    if cgroup.begin_run_leaf(limits)? {
        // v2: every run gets a fresh child, whose counters are all its own.
        // Always, not only when usage is wanted: once the slot enables
        // controllers for its children, no process may live in the slot.
        let record = Record {
            clean: false,
            place,
            limits: limits.clone(),
            ..Record::default()
        };
        lock.write_at(&record.encode(), 0)?;
        return Ok(Slot {
            cgroup,
            netns: slot_netns(i, want_netns)?,
            baseline: Baseline {
                pids_exact: true,
                memory_exact: true,
                ..Baseline::default()
            },
            record,
            lock,
        });
    }
    let mut baseline = Baseline {
        oom_kills: match &previous {
            Some(r) => r.oom_kills,
            None => cgroup.oom_kills()?,
        },
        ..Baseline::default()
    };
    if needs.cpu {
        baseline.cpu_us = match previous.as_ref().and_then(|r| r.cpu_us) {
            Some(cpu) => cpu,
            None => cgroup.cpu_usage_us()?,
        };
    }
    if needs.peaks {
        let stale_pids = previous.as_ref().is_none_or(|r| r.pids_peak != Some(1));
        baseline.pids_exact = cgroup.pids_peak_resettable();
        baseline.memory_leftover = cgroup.restart_peaks(stale_pids, limits.pids_max)?;
        baseline.memory_exact = cgroup.memory_peak_restarted();
    }
    let record = Record {
        clean: false,
        place,
        limits: limits.clone(),
        ..previous.unwrap_or_default()
    };
    lock.write_at(&record.encode(), 0)?;
    Ok(Slot {
        cgroup,
        netns: slot_netns(i, want_netns)?,
        baseline,
        record,
        lock,
    })
}

/// The slot's pooled network namespace, made on first use.
fn slot_netns(i: usize, want_netns: bool) -> io::Result<Option<OwnedFd>> {
    match want_netns {
        true => open_netns(&net_path(i))
            .or_else(|_| create_netns(&net_path(i)))
            .map(Some),
        false => Ok(None),
    }
}

/// A hash naming where alcove's own cgroups are, so a slot used from another
/// cgroup starts from scratch.
fn place_of(layout: &CgroupLayout) -> u64 {
    let mut h = crate::template::Fnv::default();
    let dirs = layout
        .unified_own_dir
        .iter()
        .chain(layout.v1.iter().map(|v| &v.own_dir));
    for dir in dirs {
        h.add(dir.as_os_str().as_bytes());
    }
    h.0
}

/// How many slots are prepared now (their network namespace exists), out of
/// [`SLOTS`]; in use or idle.
pub fn prepared() -> usize {
    (0..SLOTS).filter(|&i| net_path(i).exists()).count()
}

/// Removes every slot nobody holds (its namespace, its cgroups wherever they
/// were made, and its lock); returns how many pieces it removed.
pub(crate) fn remove_all(layout: &CgroupLayout) -> usize {
    let mut removed = 0;
    for i in 0..SLOTS {
        let Ok(lock) = open_lock(i) else { continue };
        if !fd::flock(lock.as_fd(), fd::Lock::TryExclusive).unwrap_or(false) {
            continue; // in use
        }
        let (_, recorded_dirs) = read_record(&lock, i);
        let mut dirs = SandboxCgroup::open_existing(layout, &format!("{CGROUP_PREFIX}{i}")).dirs();
        dirs.extend(recorded_dirs);
        dirs.sort();
        dirs.dedup();
        let cgroup = SandboxCgroup::open_dirs(dirs);
        cgroup.kill_all();
        if cgroup.remove().is_ok() {
            removed += 1;
        }
        removed += crate::template::unpin(&net_path(i)) as usize;
        let _ = std::fs::remove_file(lock_path(i));
    }
    removed
}

/// Reads a slot's record and where its cgroups were (the lines after the
/// record). Only paths that can name this slot's cgroup are taken (and
/// [`SandboxCgroup::open_dirs`] takes only directories on a cgroup
/// filesystem): the file is root's, but a cleanup must never reach beyond
/// alcove's own cgroups.
fn read_record(lock: &File, i: usize) -> (Option<Record>, Vec<PathBuf>) {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = lock.read_at(&mut chunk, bytes.len() as u64) {
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() > 64 * 1024 {
            break;
        }
    }
    let record = Record::decode(&bytes[..bytes.len().min(RECORD_LEN)]);
    let name = format!("{CGROUP_PREFIX}{i}");
    let dirs = bytes
        .get(RECORD_LEN..)
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| PathBuf::from(std::ffi::OsStr::from_bytes(line)))
        .filter(|dir| is_slot_cgroup(dir, &name))
        .collect();
    (record, dirs)
}

fn is_slot_cgroup(dir: &Path, name: &str) -> bool {
    use std::path::Component;
    dir.is_absolute()
        && dir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && dir.file_name().is_some_and(|n| n == name)
        && dir
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|p| p == alcove_cgroup::PARENT_DIR)
}

fn write_dirs(lock: &File, dirs: &[PathBuf]) -> io::Result<()> {
    let mut text = Vec::new();
    for dir in dirs {
        text.extend_from_slice(dir.as_os_str().as_bytes());
        text.push(b'\n');
    }
    lock.write_at(&text, RECORD_LEN as u64)?;
    lock.set_len((RECORD_LEN + text.len()) as u64)
}

fn net_path(i: usize) -> PathBuf {
    Path::new(POOL_DIR).join(format!("net-{i}"))
}

fn lock_path(i: usize) -> PathBuf {
    Path::new(POOL_DIR).join(format!("slot-{i}.lock"))
}

fn open_lock(i: usize) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(lock_path(i))
}

/// Opens the slot's namespace, checking that a namespace really is mounted there.
fn open_netns(path: &Path) -> io::Result<OwnedFd> {
    ns::open_pinned(&CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?)
}

/// Makes a new namespace with loopback up and mounts it at `path`, from this
/// thread: unshare into it, bind-mount it, and return to the original one.
fn create_netns(path: &Path) -> io::Result<OwnedFd> {
    let original = File::open("/proc/thread-self/ns/net")?;
    File::create(path)?;
    ns::unshare(libc::CLONE_NEWNET)?;
    let result = net::loopback_up().and_then(|()| {
        let target = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        mount::mount(
            Some(c"/proc/thread-self/ns/net"),
            &target,
            None,
            mount::MS_BIND,
            None,
        )
    });
    ns::setns(original.as_fd(), libc::CLONE_NEWNET)
        .expect("return to alcove's own network namespace");
    result?;
    open_netns(path)
}
