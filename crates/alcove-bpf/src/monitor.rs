//! Loading the monitor programs, registering sandboxes, and reading back what
//! the programs saw.

use crate::events::Event;
use crate::events::KillReason;
use crate::intf::{
    bytes_of, from_bytes, DevKey, Net4Key, Net6Key, SandboxEntry, StatsEntry, SyscallKey, LEARN,
    SYSCALL_BITS, SYSCALL_POLICY, TRACE_SYSCALLS,
};
use crate::skel::{MonitorSkel, MonitorSkelBuilder};
use crate::BpfError;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, RingBuffer, RingBufferBuilder};
use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

/// Values of a network rule (monitor.bpf.c's ALCOVE_NET_ALLOW and _DENY).
const NET_ALLOW: u8 = 1;
const NET_DENY: u8 = 2;

/// Whether `net` goes in the IPv6 rule map, and its key in sandbox
/// `cgroup_id`'s rules.
fn net_rule_key(cgroup_id: u64, net: &IpNet) -> (bool, Vec<u8>) {
    match net.addr {
        std::net::IpAddr::V4(a) => {
            let key = Net4Key {
                prefixlen: 64 + net.prefix as u32,
                cgroup_id,
                addr: a.octets(),
            };
            (false, bytes_of(&key).to_vec())
        }
        std::net::IpAddr::V6(a) => {
            let key = Net6Key {
                prefixlen: 64 + net.prefix as u32,
                cgroup_id,
                addr: a.octets(),
            };
            (true, bytes_of(&key).to_vec())
        }
    }
}

/// The period of the cpu-clock events that drive CPU budgets.
pub const TICK: Duration = Duration::from_millis(1);

/// What alcove asks of the kernel for one sandbox.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxPolicy {
    /// Count syscalls by number, and context switches, page faults and bytes
    /// read and written (attaches per-syscall programs while on).
    pub trace: bool,
    /// Kill the sandbox past this many syscalls.
    pub syscall_budget: Option<u64>,
    /// Kill the sandbox past this much CPU time: its tasks' own run time,
    /// checked every [`TICK`] of CPU and as each task exits.
    pub cpu_budget: Option<Duration>,
    /// The syscalls a seccomp allow-list lets the sandbox make: a refused
    /// call outside it is reported as a [`Denial::Syscall`](crate::Denial).
    pub syscall_policy: Option<Vec<u32>>,
    /// The character devices the sandbox may open (`None`: no device rule).
    /// Anything else, and every block device, is refused with EPERM.
    pub devices: Option<Vec<DeviceId>>,
    /// Where the sandbox may connect, send or bind besides loopback (`None`:
    /// no network rule). Anything else is refused with EPERM.
    pub net_allow: Option<Vec<IpNet>>,
    /// Holes in `net_allow` (only with it): refused even inside an allowed
    /// range, as the longest matching rule decides (the host's own
    /// addresses inside an agent sandbox's "anywhere").
    pub net_deny: Vec<IpNet>,
    /// Report every file opened and every network peer (for `--learn`).
    pub learn: bool,
}

/// A character device: `major:minor`, or every minor of `major` when `minor` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceId {
    pub major: u32,
    pub minor: Option<u32>,
}

/// An address range: `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// The bits in its family's address: 32 or 128.
    pub fn width(&self) -> u8 {
        if self.addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// Parses `10.0.0.0/8`, `192.0.2.7`, `2001:db8::/32` or `::1`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("{text:?} is not an address or CIDR range, such as 10.0.0.0/8 or 2001:db8::/32")
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNet { addr, prefix })
    }
}

impl IpNet {
    /// Whether every address of `other` lies in this range.
    pub fn contains(&self, other: &IpNet) -> bool {
        use std::net::IpAddr::{V4, V6};
        if other.prefix < self.prefix {
            return false;
        }
        let (mine, theirs, width) = match (self.addr, other.addr) {
            (V4(a), V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
            (V6(a), V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return false,
        };
        let host_bits = width - u32::from(self.prefix);
        mine.checked_shr(host_bits).unwrap_or(0) == theirs.checked_shr(host_bits).unwrap_or(0)
    }
}

impl SandboxPolicy {
    fn needs_syscalls(&self) -> bool {
        self.trace || self.learn || self.syscall_budget.is_some()
    }

    fn needs_sys_exit(&self) -> bool {
        self.trace || self.syscall_policy.is_some()
    }

    /// Whether it needs programs that run on every syscall of the host.
    pub fn taxes_syscalls(&self) -> bool {
        self.needs_syscalls() || self.needs_sys_exit()
    }

    fn needs_sock_addr(&self) -> bool {
        self.net_allow.is_some() || self.learn
    }

    fn needs_ticks(&self) -> bool {
        self.cpu_budget.is_some()
    }

    /// A policy asking for everything a policy can ask for: what a monitor
    /// that will serve any sandbox loads.
    pub fn everything() -> Self {
        SandboxPolicy {
            trace: true,
            syscall_budget: Some(1),
            cpu_budget: Some(TICK),
            syscall_policy: Some(Vec::new()),
            devices: Some(Vec::new()),
            net_allow: Some(Vec::new()),
            net_deny: Vec::new(),
            learn: true,
        }
    }

    /// Whether anything needs BPF at all.
    pub fn is_empty(&self) -> bool {
        *self == SandboxPolicy::default()
    }
}

/// One sandbox's counters, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub syscalls: u64,
    pub ctx_switches: u64,
    pub page_faults: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub execs: u64,
    /// Syscalls refused outside the sandbox's syscall policy.
    pub denied_syscalls: u64,
}

/// Which of the costly programs are attached now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Attached {
    /// raw_syscalls/sys_enter: runs on every syscall of the host.
    pub sys_enter: bool,
    /// raw_syscalls/sys_exit: runs on every syscall of the host.
    pub sys_exit: bool,
    /// The cpu-clock sampling program (one perf event per CPU), with the
    /// program that charges a freed task's last run time.
    pub cpu_ticks: bool,
}

/// The loaded monitor: programs, maps, the event ring, and which sandboxes
/// it watches. Dropping it detaches and unloads everything.
pub struct Monitor {
    // Fields drop in order: the ring and links go before the skeleton.
    ring: RingBuffer<'static>,
    received: Rc<RefCell<Vec<Event>>>,
    always: Vec<Link>,
    syscall_link: Option<Link>,
    tracing_links: Vec<Link>,
    tick_links: Vec<Link>,
    watched: HashMap<u64, SandboxPolicy>,
    /// Sandboxes that may have per-syscall counts in the maps: only these
    /// are looked for there (each look walks every key of the map).
    counted: std::collections::HashSet<u64>,
    /// When each on-demand set (sys_enter, sys_exit, CPU ticks) was first
    /// found unneeded, while it stays attached.
    unneeded_since: [Option<std::time::Instant>; 3],
    /// Per sandbox: its cgroup programs (device and network rules).
    cgroup_links: HashMap<u64, Vec<Link>>,
    skel: MonitorSkel<'static>,
}

impl Monitor {
    /// Loads the programs that sandboxes with `capabilities` could need (any
    /// policy they combine; loading fewer verifies faster) and attaches the
    /// always-on ones (exec, exit, OOM).
    pub fn load(capabilities: &SandboxPolicy) -> Result<Self, BpfError> {
        // libbpf's own messages (the verifier's log among them) only with
        // ALCOVE_BPF_DEBUG=1; errors are reported through BpfError either way.
        if std::env::var_os("ALCOVE_BPF_DEBUG").is_none() {
            libbpf_rs::set_print(None);
        }
        // The skeleton borrows its object storage for as long as it lives;
        // a monitor is loaded once per process, so the storage is leaked.
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = MonitorSkelBuilder::default()
            .open(storage)
            .map_err(|e| BpfError::load("opening the monitor programs", e))?;
        let c = capabilities;
        let progs = &mut open.progs;
        progs.on_sys_enter.set_autoload(c.needs_syscalls());
        progs.on_sys_exit.set_autoload(c.needs_sys_exit());
        progs.on_tick.set_autoload(c.needs_ticks());
        progs.on_task_free.set_autoload(c.needs_ticks());
        progs.device_policy.set_autoload(c.devices.is_some());
        for prog in [
            &mut progs.connect4,
            &mut progs.connect6,
            &mut progs.sendmsg4,
            &mut progs.sendmsg6,
            &mut progs.bind4,
            &mut progs.bind6,
        ] {
            prog.set_autoload(c.needs_sock_addr());
        }
        let skel = open
            .load()
            .map_err(|e| BpfError::load("loading the monitor programs", e))?;
        let mut always = Vec::new();
        for (name, prog) in [
            ("exec", &skel.progs.on_exec),
            ("exit", &skel.progs.on_exit),
            ("oom", &skel.progs.on_oom),
        ] {
            always.push(prog.attach().map_err(|e| BpfError::attach(name, e))?);
        }
        let received = Rc::new(RefCell::new(Vec::new()));
        let sink = Rc::clone(&received);
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&skel.maps.events, move |data: &[u8]| {
                if let Some(event) = Event::decode(data) {
                    sink.borrow_mut().push(event);
                }
                0
            })
            .map_err(|e| BpfError::load("opening the event ring", e))?;
        let ring = builder
            .build()
            .map_err(|e| BpfError::load("opening the event ring", e))?;
        Ok(Monitor {
            ring,
            received,
            always,
            syscall_link: None,
            tracing_links: Vec::new(),
            tick_links: Vec::new(),
            watched: HashMap::new(),
            counted: std::collections::HashSet::new(),
            unneeded_since: [None; 3],
            cgroup_links: HashMap::new(),
            skel,
        })
    }

    /// Starts watching the sandbox whose cgroup2 id is `cgroup_id` (directory
    /// `cgroup_dir`, where its rules attach), with fresh counters. Call before
    /// its first process runs; the policy must fit what [`load`](Self::load)
    /// was told. Counting starts at the sandbox's first exec, or at once when
    /// `running` (a process adopted after its setup, which execs nothing).
    pub fn watch(
        &mut self,
        cgroup_id: u64,
        cgroup_dir: &std::path::Path,
        policy: &SandboxPolicy,
        running: bool,
    ) -> Result<(), BpfError> {
        self.clear(cgroup_id);
        if policy.needs_sys_exit() {
            self.counted.insert(cgroup_id);
        }
        let mut allowed_syscalls = [0u64; SYSCALL_BITS / 64];
        for nr in policy.syscall_policy.iter().flatten() {
            if let Some(word) = allowed_syscalls.get_mut(*nr as usize / 64) {
                *word |= 1 << (nr % 64);
            }
        }
        let entry = SandboxEntry {
            syscall_budget: policy.syscall_budget.unwrap_or(0),
            cpu_budget_ns: policy.cpu_budget.map_or(0, |d| d.as_nanos() as u64),
            flags: (if policy.trace { TRACE_SYSCALLS } else { 0 })
                | (if policy.learn { LEARN } else { 0 })
                | (if policy.syscall_policy.is_some() {
                    SYSCALL_POLICY
                } else {
                    0
                }),
            armed: running.into(),
            allowed_syscalls,
            // Tasks already running are charged from now on, not for the
            // setup they did before.
            armed_ns: if running {
                alcove_sys::process::monotonic_ns()
            } else {
                0
            },
            ..SandboxEntry::default()
        };
        let ncpus =
            libbpf_rs::num_possible_cpus().map_err(|e| BpfError::load("counting CPUs", e))?;
        let zeroes = vec![bytes_of(&StatsEntry::default()).to_vec(); ncpus];
        let key = cgroup_id.to_ne_bytes();
        self.skel
            .maps
            .stats
            .update_percpu(&key, &zeroes, MapFlags::ANY)
            .map_err(|e| BpfError::map("stats", e))?;
        self.skel
            .maps
            .sandboxes
            .update(&key, bytes_of(&entry), MapFlags::ANY)
            .map_err(|e| BpfError::map("sandboxes", e))?;
        self.watched.insert(cgroup_id, policy.clone());
        self.attach_rules(cgroup_id, cgroup_dir, policy)?;
        self.attach_on_demand()
    }

    /// Fills the device and network maps for one sandbox and attaches the rule
    /// programs to its cgroup.
    fn attach_rules(
        &mut self,
        cgroup_id: u64,
        cgroup_dir: &std::path::Path,
        policy: &SandboxPolicy,
    ) -> Result<(), BpfError> {
        if policy.devices.is_none() && !policy.needs_sock_addr() {
            return Ok(());
        }
        let dir = std::fs::File::open(cgroup_dir).map_err(BpfError::Cgroup)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
        let maps = &self.skel.maps;
        let progs = &self.skel.progs;
        let mut links = Vec::new();
        if let Some(devices) = &policy.devices {
            for d in devices {
                let key = DevKey {
                    cgroup_id,
                    major: d.major,
                    minor: d.minor.unwrap_or(u32::MAX),
                };
                maps.allowed_devices
                    .update(bytes_of(&key), &[1], MapFlags::ANY)
                    .map_err(|e| BpfError::map("allowed_devices", e))?;
            }
            links.push(
                progs
                    .device_policy
                    .attach_cgroup(fd)
                    .map_err(|e| BpfError::attach("cgroup/dev", e))?,
            );
        }
        if policy.needs_sock_addr() {
            let allowed = policy.net_allow.iter().flatten().map(|n| (n, NET_ALLOW));
            let denied = policy.net_deny.iter().map(|n| (n, NET_DENY));
            for (net, rule) in allowed.chain(denied) {
                let (v6, key) = net_rule_key(cgroup_id, net);
                let map = if v6 {
                    &maps.allowed_net6
                } else {
                    &maps.allowed_net4
                };
                map.update(&key, &[rule], MapFlags::ANY)
                    .map_err(|e| BpfError::map("allowed_net", e))?;
            }
            if policy.net_allow.is_some() {
                maps.net_restricted
                    .update(&cgroup_id.to_ne_bytes(), &[1], MapFlags::ANY)
                    .map_err(|e| BpfError::map("net_restricted", e))?;
            }
            for (name, prog) in [
                ("cgroup/connect4", &progs.connect4),
                ("cgroup/connect6", &progs.connect6),
                ("cgroup/sendmsg4", &progs.sendmsg4),
                ("cgroup/sendmsg6", &progs.sendmsg6),
                ("cgroup/bind4", &progs.bind4),
                ("cgroup/bind6", &progs.bind6),
            ] {
                links.push(
                    prog.attach_cgroup(fd)
                        .map_err(|e| BpfError::attach(name, e))?,
                );
            }
        }
        self.cgroup_links.insert(cgroup_id, links);
        Ok(())
    }

    /// Lets the restricted sandbox `cgroup_id` reach `net` too (an address a
    /// name it may reach resolved to), unless a rule of its own refuses it:
    /// false then. The sandbox must be watched with a network rule.
    pub fn allow_net(&self, cgroup_id: u64, net: &IpNet) -> Result<bool, BpfError> {
        let maps = &self.skel.maps;
        let restricted = maps
            .net_restricted
            .lookup(&cgroup_id.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| BpfError::map("net_restricted", e))?;
        if restricted.is_none() {
            return Ok(false);
        }
        let (v6, key) = net_rule_key(cgroup_id, net);
        let map = if v6 {
            &maps.allowed_net6
        } else {
            &maps.allowed_net4
        };
        // A lookup in an LPM trie is a longest-prefix match: what decides now.
        match map
            .lookup(&key, MapFlags::ANY)
            .map_err(|e| BpfError::map("allowed_net", e))?
        {
            Some(rule) if rule.first() == Some(&NET_DENY) => Ok(false),
            Some(rule) if rule.first() == Some(&NET_ALLOW) && net.prefix >= net.width() => Ok(true),
            _ => map
                .update(&key, &[NET_ALLOW], MapFlags::ANY)
                .map(|()| true)
                .map_err(|e| BpfError::map("allowed_net", e)),
        }
    }

    /// Detaches a sandbox's rule programs and forgets its rules.
    fn detach_rules(&mut self, cgroup_id: u64) {
        self.cgroup_links.remove(&cgroup_id);
        let maps = &self.skel.maps;
        let _ = maps.net_restricted.delete(&cgroup_id.to_ne_bytes());
        for map in [
            &maps.allowed_devices,
            &maps.allowed_net4,
            &maps.allowed_net6,
        ] {
            let offset = if std::ptr::eq(map, &maps.allowed_devices) {
                0
            } else {
                4
            };
            let stale: Vec<Vec<u8>> = map
                .keys()
                .filter(|k| {
                    k.get(offset..offset + 8)
                        .is_some_and(|id| id == cgroup_id.to_ne_bytes())
                })
                .collect();
            for key in stale {
                let _ = map.delete(&key);
            }
        }
    }

    /// Why the kernel killed the watched sandbox `cgroup_id`, if it did: the
    /// reason, and the budget it passed.
    pub fn killed(&self, cgroup_id: u64) -> Option<(KillReason, u64)> {
        let entry = self.entry(cgroup_id)?;
        let reason = match entry.killed {
            0 => return None,
            1 => KillReason::Syscalls,
            _ => KillReason::CpuTime,
        };
        let limit = match reason {
            KillReason::Syscalls => entry.syscall_budget,
            KillReason::CpuTime => entry.cpu_budget_ns,
        };
        Some((reason, limit))
    }

    fn entry(&self, cgroup_id: u64) -> Option<SandboxEntry> {
        let bytes = self
            .skel
            .maps
            .sandboxes
            .lookup(&cgroup_id.to_ne_bytes(), MapFlags::ANY)
            .ok()??;
        Some(from_bytes(&bytes))
    }

    /// Which costly programs are attached now.
    pub fn attached(&self) -> Attached {
        Attached {
            sys_enter: self.syscall_link.is_some(),
            sys_exit: !self.tracing_links.is_empty(),
            cpu_ticks: !self.tick_links.is_empty(),
        }
    }

    /// How many sandboxes are watched now.
    pub fn watched(&self) -> usize {
        self.watched.len()
    }

    /// Stops watching `cgroup_id`, forgets its counters (read them first),
    /// and detaches what no watched sandbox needs.
    pub fn unwatch(&mut self, cgroup_id: u64) {
        let _ = self.skel.maps.sandboxes.delete(&cgroup_id.to_ne_bytes());
        self.clear(cgroup_id);
        self.watched.remove(&cgroup_id);
        self.detach_rules(cgroup_id);
        let _ = self.attach_on_demand();
    }

    /// The descriptor that becomes readable when events are waiting.
    pub fn event_fd(&self) -> RawFd {
        self.ring.epoll_fd()
    }

    /// Every event received so far, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        let _ = self.ring.consume();
        std::mem::take(&mut self.received.borrow_mut())
    }

    /// Events the ring had no room for.
    pub fn dropped(&self) -> u64 {
        let key = 0u32.to_ne_bytes();
        match self.skel.maps.dropped.lookup_percpu(&key, MapFlags::ANY) {
            Ok(Some(per_cpu)) => per_cpu.iter().map(|v| from_bytes::<u64>(v)).sum(),
            _ => 0,
        }
    }

    /// The sandbox's counters, summed over CPUs.
    pub fn stats(&self, cgroup_id: u64) -> Stats {
        let mut total = match self
            .skel
            .maps
            .stats
            .lookup_percpu(&cgroup_id.to_ne_bytes(), MapFlags::ANY)
        {
            Ok(Some(per_cpu)) => sum_stats(&per_cpu),
            _ => Stats::default(),
        };
        let counted: u64 = self.syscall_counts(cgroup_id).iter().map(|(_, n)| n).sum();
        let entry = self.entry(cgroup_id).unwrap_or_default();
        // Traced sandboxes count by number; a budget alone keeps one total.
        total.syscalls = counted.max(entry.syscalls);
        total.denied_syscalls = entry.denied;
        total
    }

    /// Handles any thread may use to count sandboxes that need no program
    /// attached (see [`FastPath`](crate::FastPath)).
    pub fn fast_path(&self) -> Result<crate::FastPath, BpfError> {
        let handle =
            |map, name| libbpf_rs::MapHandle::try_from(map).map_err(|e| BpfError::map(name, e));
        crate::FastPath::new(
            handle(&self.skel.maps.sandboxes, "sandboxes")?,
            handle(&self.skel.maps.stats, "stats")?,
        )
    }

    /// Whether routine events (exec, exit) wake the reader at once: only
    /// while someone follows the events live.
    pub fn set_live(&self, on: bool) -> Result<(), BpfError> {
        self.skel
            .maps
            .live
            .update(
                &0u32.to_ne_bytes(),
                &u32::from(on).to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(|e| BpfError::map("live", e))
    }

    /// Syscall counts of a traced sandbox, by syscall number, most frequent first.
    pub fn syscall_counts(&self, cgroup_id: u64) -> Vec<(u32, u64)> {
        if !self.counted.contains(&cgroup_id) {
            return Vec::new();
        }
        counts_of(&self.skel.maps.syscall_counts, cgroup_id)
    }

    /// Syscalls of a traced sandbox that returned EPERM, by number: what
    /// seccomp or a rule refused (and what the kernel refused for its own reasons).
    pub fn refused_counts(&self, cgroup_id: u64) -> Vec<(u32, u64)> {
        if !self.counted.contains(&cgroup_id) {
            return Vec::new();
        }
        counts_of(&self.skel.maps.eperm_counts, cgroup_id)
    }

    /// Removes a sandbox's counters and syscall counts.
    fn clear(&mut self, cgroup_id: u64) {
        let _ = self.skel.maps.stats.delete(&cgroup_id.to_ne_bytes());
        if !self.counted.remove(&cgroup_id) {
            return;
        }
        for map in [&self.skel.maps.syscall_counts, &self.skel.maps.eperm_counts] {
            let stale: Vec<Vec<u8>> = map
                .keys()
                .filter(|key| from_bytes::<SyscallKey>(key).cgroup_id == cgroup_id)
                .collect();
            for key in stale {
                let _ = map.delete(&key);
            }
        }
        let _ = self.skel.maps.stats.delete(&cgroup_id.to_ne_bytes());
    }
}

impl Monitor {
    /// Attaches the costly programs while some watched sandbox needs them, and
    /// detaches them as soon as none does: while anything is attached to
    /// raw_syscalls, every syscall on the host pays for it.
    fn attach_on_demand(&mut self) -> Result<(), BpfError> {
        let policies = || self.watched.values();
        let want_syscalls = policies().any(SandboxPolicy::needs_syscalls);
        let want_tracing = policies().any(SandboxPolicy::needs_sys_exit);
        let want_ticks = policies().any(SandboxPolicy::needs_ticks);
        match (want_syscalls, self.syscall_link.is_some()) {
            (true, false) => {
                let link = self
                    .skel
                    .progs
                    .on_sys_enter
                    .attach()
                    .map_err(|e| BpfError::attach("raw_syscalls/sys_enter", e))?;
                self.syscall_link = Some(link);
            }
            (false, true) if self.lingered(0) => self.syscall_link = None,
            _ => {}
        }
        match (want_tracing, self.tracing_links.is_empty()) {
            (true, true) => {
                let progs = &self.skel.progs;
                let link = progs
                    .on_sys_exit
                    .attach()
                    .map_err(|e| BpfError::attach("raw_syscalls/sys_exit", e))?;
                self.tracing_links.push(link);
            }
            (false, false) if self.lingered(1) => self.tracing_links.clear(),
            _ => {}
        }
        match (want_ticks, self.tick_links.is_empty()) {
            (true, true) => {
                // A task's last run time is charged as it is freed.
                let freed = self
                    .skel
                    .progs
                    .on_task_free
                    .attach()
                    .map_err(|e| BpfError::attach("sched/sched_process_free", e))?;
                self.tick_links.push(freed);
                let ncpus = libbpf_rs::num_possible_cpus()
                    .map_err(|e| BpfError::load("counting CPUs", e))?;
                for cpu in 0..ncpus {
                    let event =
                        match alcove_sys::perf::cpu_clock(cpu as i32, TICK.as_nanos() as u64) {
                            Ok(fd) => fd,
                            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => continue, // offline CPU
                            Err(e) => {
                                self.tick_links.clear(); // all CPUs or none
                                return Err(BpfError::Perf(e));
                            }
                        };
                    let raw = std::os::fd::AsRawFd::as_raw_fd(&event);
                    match self.skel.progs.on_tick.attach_perf_event(raw) {
                        Ok(link) => {
                            // The link owns the perf event now (libbpf closes it).
                            let _ = std::os::fd::IntoRawFd::into_raw_fd(event);
                            self.tick_links.push(link);
                        }
                        Err(e) => {
                            drop(event); // the attach failed: still ours to close
                            self.tick_links.clear(); // all CPUs or none
                            return Err(BpfError::attach("cpu-clock perf event", e));
                        }
                    }
                }
            }
            (false, false) if self.lingered(2) => self.tick_links.clear(),
            _ => {}
        }
        for (i, wanted) in [want_syscalls, want_tracing, want_ticks]
            .into_iter()
            .enumerate()
        {
            if wanted {
                self.unneeded_since[i] = None;
            }
        }
        let _ = &self.always;
        Ok(())
    }

    /// Whether on-demand program set `i` has been unneeded for [`LINGER`]
    /// (starting the count the first time it is found unneeded).
    fn lingered(&mut self, i: usize) -> bool {
        let since = self.unneeded_since[i].get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < LINGER {
            return false;
        }
        self.unneeded_since[i] = None;
        true
    }

    /// Detaches the on-demand programs no watched sandbox has needed for
    /// [`LINGER`]; call it now and then (the owner's loop does).
    pub fn tick(&mut self) {
        let _ = self.attach_on_demand();
    }
}

/// How long a costly program stays attached after the last sandbox that
/// needed it: attaching and detaching per run cost more than the programs
/// (a run a few milliseconds long would pay both each time).
pub const LINGER: Duration = Duration::from_secs(2);

/// One sandbox's per-CPU counters, summed.
pub(crate) fn sum_stats(per_cpu: &[Vec<u8>]) -> Stats {
    let mut total = Stats::default();
    for bytes in per_cpu {
        let s: StatsEntry = from_bytes(bytes);
        total.ctx_switches += s.ctx_switches;
        total.page_faults += s.page_faults;
        total.bytes_read += s.bytes_read;
        total.bytes_written += s.bytes_written;
        total.execs += s.execs;
    }
    total
}

/// Per-syscall counts of one sandbox from a per-CPU map, most frequent first.
fn counts_of(map: &libbpf_rs::MapMut<'_>, cgroup_id: u64) -> Vec<(u32, u64)> {
    let mut counts: Vec<(u32, u64)> = map
        .keys()
        .filter_map(|key| {
            let k: SyscallKey = from_bytes(&key);
            if k.cgroup_id != cgroup_id {
                return None;
            }
            let per_cpu = map.lookup_percpu(&key, MapFlags::ANY).ok()??;
            Some((k.nr, per_cpu.iter().map(|v| from_bytes::<u64>(v)).sum()))
        })
        .collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    counts
}
