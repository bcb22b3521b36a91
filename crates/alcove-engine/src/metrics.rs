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

/// The engine's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    pub invocations: Family<InvocationLabels, Counter>,
    pub duration: Family<FunctionLabel, Histogram>,
    pub starts: Family<StartLabel, Counter>,
    pub sandboxes_alive: Gauge,
    pub queued: Gauge,
    pub pool_slots: Gauge,
    pub pool_prepared: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("alcove");
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
        Metrics {
            registry,
            invocations,
            duration,
            starts,
            sandboxes_alive,
            queued,
            pool_slots,
            pool_prepared,
        }
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
