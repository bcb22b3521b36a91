//! What the operator allows a function (`alcove serve --max-...`), what a
//! deploy that sets nothing gets, and the check every deployed number passes.

use crate::model::FunctionConfig;

/// Defaults and maxima for every function's limits. A deploy above a maximum
/// is refused; a version deployed before the operator lowered one runs
/// clamped to it.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionLimits {
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub default_memory_bytes: u64,
    pub max_memory_bytes: u64,
    pub default_pids: u64,
    pub max_pids: u64,
    pub max_output_bytes: u64,
    pub max_cpus: f64,
}

/// The smallest memory limit a sandbox starts with (its own page tables and
/// the handler's first pages): below it every run would be an OOM.
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;

impl Default for FunctionLimits {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        FunctionLimits {
            default_timeout_ms: 60_000,
            max_timeout_ms: 15 * 60_000,
            default_memory_bytes: 256 << 20,
            max_memory_bytes: alcove_sys::process::memory_total_bytes()
                .map_or(8 << 30, |m| m.min(8 << 30)),
            default_pids: 256,
            max_pids: 4096,
            max_output_bytes: 64 << 20,
            max_cpus: cpus as f64,
        }
    }
}

impl FunctionLimits {
    /// Checks the operator's own settings: each default within its maximum.
    pub fn check(&self) -> Result<(), String> {
        let pairs = [
            (
                "timeout",
                self.default_timeout_ms,
                self.max_timeout_ms,
                "--max-timeout",
            ),
            (
                "memory",
                self.default_memory_bytes,
                self.max_memory_bytes,
                "--max-memory",
            ),
            ("pids", self.default_pids, self.max_pids, "--max-pids"),
        ];
        for (what, default, max, flag) in pairs {
            if max == 0 || default > max {
                return Err(format!(
                    "{flag} {max}: it must be at least the default {what} ({default})"
                ));
            }
        }
        if self.max_memory_bytes < MIN_MEMORY_BYTES {
            return Err(format!(
                "--max-memory {}: use at least {MIN_MEMORY_BYTES} bytes",
                self.max_memory_bytes
            ));
        }
        if !(self.max_cpus.is_finite() && self.max_cpus >= 0.01) {
            return Err(format!("--max-cpus {}: use 0.01 or more", self.max_cpus));
        }
        Ok(())
    }

    /// Checks a deploy's numbers against the maxima, naming the field and the
    /// allowed range, and fills in the defaults it left out.
    pub fn check_and_fill(&self, c: &mut FunctionConfig) -> Result<(), String> {
        let range = |field: &str, value: u64, min: u64, max: u64, flag: &str| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "{field} {value}: use {min} to {max} (this daemon's maximum, set by `alcove serve {flag}`)"
                ))
            }
        };
        let timeout = *c.timeout_ms.get_or_insert(self.default_timeout_ms);
        range(
            "timeout_ms",
            timeout,
            1,
            self.max_timeout_ms,
            "--max-timeout",
        )?;
        let memory = *c.memory_bytes.get_or_insert(self.default_memory_bytes);
        range(
            "memory_bytes",
            memory,
            MIN_MEMORY_BYTES,
            self.max_memory_bytes,
            "--max-memory",
        )?;
        let pids = *c.pids.get_or_insert(self.default_pids);
        range("pids", pids, 1, self.max_pids, "--max-pids")?;
        range(
            "output_bytes",
            c.output_bytes,
            0,
            self.max_output_bytes,
            "--max-output",
        )?;
        if let Some(cpu_time) = c.cpu_time_ms {
            // CPU time can outrun the wall clock by the CPUs it may use.
            let most = self
                .max_timeout_ms
                .saturating_mul(self.max_cpus.ceil().max(1.0) as u64);
            range("cpu_time_ms", cpu_time, 1, most, "--max-timeout")?;
        }
        if let Some(tmpfs) = c.tmpfs_bytes {
            // tmpfs pages are charged to the memory limit: more is never usable.
            range(
                "tmpfs_bytes",
                tmpfs,
                4096,
                self.max_memory_bytes,
                "--max-memory",
            )?;
        }
        if let Some(cpus) = c.cpus {
            if !(cpus.is_finite() && (0.01..=self.max_cpus).contains(&cpus)) {
                return Err(format!(
                    "cpus {cpus}: use 0.01 to {} (this daemon's maximum, set by `alcove serve --max-cpus`)",
                    self.max_cpus
                ));
            }
        }
        Ok(())
    }

    /// The limits a stored version runs with: its own, with the defaults for
    /// what it left out (versions deployed before defaults existed) and
    /// clamped to today's maxima.
    pub fn effective(&self, c: &FunctionConfig) -> Effective {
        Effective {
            timeout_ms: c
                .timeout_ms
                .unwrap_or(self.default_timeout_ms)
                .clamp(1, self.max_timeout_ms),
            memory_bytes: c
                .memory_bytes
                .unwrap_or(self.default_memory_bytes)
                .clamp(MIN_MEMORY_BYTES, self.max_memory_bytes),
            pids: c.pids.unwrap_or(self.default_pids).clamp(1, self.max_pids),
            output_bytes: c.output_bytes.min(self.max_output_bytes),
            cpus: c.cpus.map(|n| n.clamp(0.01, self.max_cpus)),
            cpu_time_ms: c.cpu_time_ms.map(|t| t.max(1)),
            tmpfs_bytes: c
                .tmpfs_bytes
                .map(|t| t.clamp(4096, self.max_memory_bytes.max(4096))),
        }
    }
}

/// One invocation's limits, every one of them set and within the maxima.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effective {
    pub timeout_ms: u64,
    pub memory_bytes: u64,
    pub pids: u64,
    pub output_bytes: u64,
    pub cpus: Option<f64>,
    pub cpu_time_ms: Option<u64>,
    pub tmpfs_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FunctionConfig {
        serde_json::from_str(r#"{"handler": ["true"]}"#).unwrap()
    }

    #[test]
    fn a_deploy_without_limits_gets_the_defaults() {
        let limits = FunctionLimits::default();
        let mut c = config();
        limits.check_and_fill(&mut c).unwrap();
        assert_eq!(c.timeout_ms, Some(limits.default_timeout_ms));
        assert_eq!(c.memory_bytes, Some(limits.default_memory_bytes));
        assert_eq!(c.pids, Some(limits.default_pids));
    }

    #[test]
    fn numbers_beyond_the_maxima_are_refused_naming_the_field_and_range() {
        let limits = FunctionLimits::default();
        type Case = (&'static str, fn(&mut FunctionConfig));
        let cases: [Case; 7] = [
            ("timeout_ms", |c| c.timeout_ms = Some(u64::MAX)),
            ("timeout_ms", |c| c.timeout_ms = Some(0)),
            ("memory_bytes", |c| c.memory_bytes = Some(u64::MAX)),
            ("memory_bytes", |c| c.memory_bytes = Some(1)),
            ("pids", |c| c.pids = Some(1 << 40)),
            ("output_bytes", |c| c.output_bytes = u64::MAX),
            ("cpus", |c| c.cpus = Some(f64::INFINITY)),
        ];
        for (field, set) in cases {
            let mut c = config();
            set(&mut c);
            let message = limits.check_and_fill(&mut c).unwrap_err();
            assert!(message.starts_with(field), "{message}");
            assert!(message.contains(" to "), "no range in: {message}");
        }
    }

    #[test]
    fn stored_versions_run_clamped_to_todays_maxima() {
        let limits = FunctionLimits {
            max_timeout_ms: 1000,
            ..FunctionLimits::default()
        };
        let mut c = config();
        c.timeout_ms = Some(u64::MAX);
        c.output_bytes = u64::MAX;
        let e = limits.effective(&c);
        assert_eq!(e.timeout_ms, 1000);
        assert_eq!(e.output_bytes, limits.max_output_bytes);
        assert_eq!(e.memory_bytes, limits.default_memory_bytes);
    }

    #[test]
    fn an_operator_default_above_its_maximum_is_refused() {
        let limits = FunctionLimits {
            max_pids: 10,
            ..FunctionLimits::default()
        };
        assert!(limits.check().unwrap_err().contains("--max-pids"));
        assert!(FunctionLimits::default().check().is_ok());
    }
}
