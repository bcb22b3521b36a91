//! What operators scrape at /metrics (Prometheus text format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvocationLabels {
    pub function: String,
    /// The `alcove run` vocabulary: exited, signaled, timeout, oom...
    pub status: String,
    /// `success` (exited 0) or `failure`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabel {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabel {
    /// `sys_enter`, `sys_exit` or `cpu_ticks`.
    pub program: String,
}

/// Per-function counters from the kernel (eBPF), labelled by function only.
#[derive(Default)]
pub struct KernelCounters {
    pub syscalls: Family<FunctionLabel, Counter>,
    pub cpu_seconds: Family<FunctionLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub bytes_read: Family<FunctionLabel, Counter>,
    pub bytes_written: Family<FunctionLabel, Counter>,
    pub denials: Family<FunctionLabel, Counter>,
    pub policy_kills: Family<FunctionLabel, Counter>,
    /// Whether each per-syscall or sampling program is attached (1) or not (0).
    pub attached: Family<ProgramLabel, Gauge>,
    pub watched: Gauge,
    pub events_dropped: Gauge,
}

/// The engine's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    pub kernel: KernelCounters,
    pub invocations: Family<InvocationLabels, Counter>,
    pub duration: Family<FunctionLabel, Histogram>,
    pub starts: Family<StartLabel, Counter>,
    pub sandboxes_alive: Gauge,
    pub queued: Gauge,
    pub pool_slots: Gauge,
    pub pool_prepared: Gauge,
    /// gVisor functions' sandboxes booted ahead and ready now.
    pub gvisor_pool_ready: Family<FunctionLabel, Gauge>,
    /// Agent sandboxes started ahead of creates and ready now.
    pub agent_sandbox_pool_ready: Gauge,
}

impl Metrics {
    /// With `node` (daemons on a shared store), every sample carries
    /// `node="NAME"`, so one scrape config and one dashboard cover every
    /// daemon; one daemon alone keeps its samples as they were.
    pub(crate) fn new(node: Option<&str>) -> Self {
        let labels = node.map(|node| {
            (
                std::borrow::Cow::Borrowed("node"),
                std::borrow::Cow::Owned(node.to_owned()),
            )
        });
        let mut registry = Registry::with_prefix_and_labels("alcove", labels.into_iter());
        let invocations = Family::<InvocationLabels, Counter>::default();
        let duration = Family::<FunctionLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
            ])
        });
        let starts = Family::<StartLabel, Counter>::default();
        let sandboxes_alive = Gauge::default();
        let queued = Gauge::default();
        let pool_slots = Gauge::default();
        let pool_prepared = Gauge::default();
        let gvisor_pool_ready = Family::<FunctionLabel, Gauge>::default();
        let agent_sandbox_pool_ready = Gauge::default();
        registry.register(
            "agent_sandbox_pool_ready",
            "Default agent sandboxes started ahead of creates and ready now (--sandbox-pool)",
            agent_sandbox_pool_ready.clone(),
        );
        registry.register(
            "gvisor_pool_ready",
            "gVisor sandboxes booted ahead of requests and ready now, by function",
            gvisor_pool_ready.clone(),
        );
        registry.register(
            "invocations",
            "Invocations by function, final status and outcome (success: exited 0)",
            invocations.clone(),
        );
        registry.register(
            "invocation_duration_seconds",
            "Invocation wall time, sandbox start to end",
            duration.clone(),
        );
        registry.register(
            "sandbox_starts",
            "Sandbox starts by kind (cold: a fresh sandbox per invocation)",
            starts.clone(),
        );
        registry.register(
            "sandboxes_alive",
            "Sandboxes running now",
            sandboxes_alive.clone(),
        );
        registry.register(
            "invocations_queued",
            "Invocations waiting for a concurrency slot",
            queued.clone(),
        );
        registry.register(
            "pool_slots",
            "Prepared sandbox pieces (network namespace and cgroups) the pool keeps at most",
            pool_slots.clone(),
        );
        registry.register(
            "pool_prepared",
            "Pool slots prepared now (network namespace and cgroups ready), idle or in use",
            pool_prepared.clone(),
        );
        let kernel = KernelCounters::default();
        let k = &kernel;
        for (name, help, family) in [
            ("function_syscalls", "Syscalls made by a function's invocations, where a per-syscall program watched them (a syscall budget or learning)", &k.syscalls),
            ("function_bytes_read", "Bytes a function's invocations read through syscalls (files, pipes, sockets), counted by the kernel as each process exits", &k.bytes_read),
            ("function_bytes_written", "Bytes a function's invocations wrote through syscalls, counted by the kernel as each process exits", &k.bytes_written),
            ("function_denials", "Rule decisions against a function's invocations: refused syscalls, devices and addresses", &k.denials),
            ("function_policy_kills", "Invocations the kernel killed for a syscall or CPU budget", &k.policy_kills),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "function_cpu_seconds",
            "CPU time (user and system) a function's invocations used",
            k.cpu_seconds.clone(),
        );
        registry.register(
            "monitor_program_attached",
            "Whether alcove's per-syscall (sys_enter, sys_exit) and CPU-sampling programs are attached now: they tax every syscall on the host, so they are attached only while a watched sandbox needs them",
            k.attached.clone(),
        );
        registry.register(
            "monitor_sandboxes_watched",
            "Sandboxes the eBPF monitor watches now",
            k.watched.clone(),
        );
        registry.register(
            "monitor_events_dropped",
            "Events the kernel's ring buffer had no room for since the monitor loaded",
            k.events_dropped.clone(),
        );
        Metrics {
            registry,
            kernel,
            invocations,
            duration,
            starts,
            sandboxes_alive,
            queued,
            pool_slots,
            pool_prepared,
            gvisor_pool_ready,
            agent_sandbox_pool_ready,
        }
    }

    /// Counts what the kernel saw of one invocation of `function`.
    pub(crate) fn count_kernel(&self, function: &str, k: &crate::KernelRecord) {
        let label = FunctionLabel {
            function: function.to_owned(),
        };
        let c = &self.kernel;
        if let Some(n) = k.syscalls {
            c.syscalls.get_or_create(&label).inc_by(n);
        }
        c.bytes_read.get_or_create(&label).inc_by(k.bytes_read);
        c.bytes_written
            .get_or_create(&label)
            .inc_by(k.bytes_written);
        let denials = k.refused_syscalls.max(k.denials.len() as u64);
        if denials > 0 {
            c.denials.get_or_create(&label).inc_by(denials);
        }
        if k.policy_kill.is_some() {
            c.policy_kills.get_or_create(&label).inc();
        }
    }

    /// Drops a removed function's series, so labels stay bounded by the
    /// functions that exist.
    pub(crate) fn forget_function(&self, function: &str) {
        let label = FunctionLabel {
            function: function.to_owned(),
        };
        let c = &self.kernel;
        for family in [
            &c.syscalls,
            &c.bytes_read,
            &c.bytes_written,
            &c.denials,
            &c.policy_kills,
        ] {
            family.remove(&label);
        }
        c.cpu_seconds.remove(&label);
        self.duration.remove(&label);
        self.gvisor_pool_ready.remove(&label);
    }

    /// Sets the monitor's gauges from its status (none: not loaded).
    pub(crate) fn set_monitor(&self, status: Option<&alcove_monitor::ServiceStatus>) {
        let c = &self.kernel;
        let a = status.map(|s| s.attached).unwrap_or_default();
        for (program, on) in [
            ("sys_enter", a.sys_enter),
            ("sys_exit", a.sys_exit),
            ("cpu_ticks", a.cpu_ticks),
        ] {
            c.attached
                .get_or_create(&ProgramLabel {
                    program: program.into(),
                })
                .set(on.into());
        }
        c.watched.set(status.map_or(0, |s| s.watched as i64));
        c.events_dropped
            .set(status.map_or(0, |s| s.events_dropped as i64));
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        self.pool_prepared
            .set(alcove_sandbox::pool_prepared() as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
