//! The cost model: a device's predicted time for an operation is
//! host->device transfer + launch overhead + compute + device->host
//! transfer. Compute speed is a curve of achieved FLOP/s against the
//! operation's size (measured at a few sizes, interpolated on log scales),
//! because small products reach a fraction of a device's peak.

use crate::{DType, DeviceKind, Op};
use serde::{Deserialize, Serialize};

/// Achieved speed at one size: `flops` of work ran at `gflops`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpeedPoint {
    pub flops: f64,
    pub gflops: f64,
}

/// What a device costs, calibrated on this host or given as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub name: String,
    pub kind: DeviceKind,
    /// Host to device through pinned buffers, GB/s (unused for CPUs).
    pub h2d_pinned_gbps: f64,
    /// Host to device from ordinary (pageable) memory, GB/s.
    pub h2d_pageable_gbps: f64,
    /// Device to host, GB/s.
    pub d2h_gbps: f64,
    /// Fixed cost of starting an operation, microseconds.
    pub launch_us: f64,
    /// Achieved speed by size, per element type it supports, ascending by flops.
    pub speed: Vec<(DType, Vec<SpeedPoint>)>,
}

/// A predicted time and its parts, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prediction {
    pub transfer_in: f64,
    pub launch: f64,
    pub compute: f64,
    pub transfer_out: f64,
}

impl Prediction {
    pub fn total(&self) -> f64 {
        self.transfer_in + self.launch + self.compute + self.transfer_out
    }
}

impl DeviceProfile {
    /// Achieved GFLOP/s for `flops` of work in `dtype`, or `None` if the
    /// device does not run that type.
    pub fn gflops_at(&self, dtype: DType, flops: f64) -> Option<f64> {
        let points = &self.speed.iter().find(|(t, _)| *t == dtype)?.1;
        let first = points.first()?;
        let last = points.last()?;
        if flops <= first.flops {
            // Below the smallest measured size, time stays about flat: speed scales down.
            return Some(first.gflops * flops / first.flops);
        }
        if flops >= last.flops {
            return Some(last.gflops);
        }
        let i = points.iter().position(|p| p.flops >= flops)?;
        let (lo, hi) = (points[i - 1], points[i]);
        let t = (flops.ln() - lo.flops.ln()) / (hi.flops.ln() - lo.flops.ln());
        Some((lo.gflops.ln() + t * (hi.gflops.ln() - lo.gflops.ln())).exp())
    }

    /// Predicted time for `op`, or `None` if this device cannot run it.
    pub fn predict(&self, op: &Op, pinned: bool) -> Option<Prediction> {
        let gflops = self.gflops_at(op.dtype(), op.flops())?;
        let compute = op.flops() / (gflops * 1e9);
        let (bytes_in, bytes_out) = op.bytes();
        let (transfer_in, transfer_out) = match self.kind {
            DeviceKind::Cpu => (0.0, 0.0),
            DeviceKind::Gpu => {
                let h2d = if pinned {
                    self.h2d_pinned_gbps
                } else {
                    self.h2d_pageable_gbps
                };
                (
                    bytes_in as f64 / (h2d * 1e9),
                    bytes_out as f64 / (self.d2h_gbps * 1e9),
                )
            }
        };
        Some(Prediction {
            transfer_in,
            launch: self.launch_us * 1e-6,
            compute,
            transfer_out,
        })
    }

    /// An NVIDIA H100 SXM over PCIe 5 as data (public figures, rounded): for
    /// tests and for reasoning without a GPU.
    pub fn h100_pcie5() -> Self {
        let curve = |peak| {
            speed_curve(
                peak,
                &[(256, 0.02), (1024, 0.35), (4096, 0.75), (16384, 0.85)],
            )
        };
        DeviceProfile {
            name: "NVIDIA H100 (profile)".into(),
            kind: DeviceKind::Gpu,
            h2d_pinned_gbps: 50.0,
            h2d_pageable_gbps: 20.0,
            d2h_gbps: 50.0,
            launch_us: 8.0,
            speed: vec![
                (DType::F32, curve(60_000.0)),
                (DType::F64, curve(30_000.0)),
                (DType::F16, curve(700_000.0)),
                (DType::Bf16, curve(700_000.0)),
            ],
        }
    }

    /// A CPU of `cores` cores reaching `per_core_gflops` each on large f32
    /// products, as data.
    pub fn cpu(cores: usize, per_core_gflops: f64) -> Self {
        let peak = cores as f64 * per_core_gflops;
        DeviceProfile {
            name: format!("{cores}-core CPU (profile)"),
            kind: DeviceKind::Cpu,
            h2d_pinned_gbps: 0.0,
            h2d_pageable_gbps: 0.0,
            d2h_gbps: 0.0,
            launch_us: 2.0,
            speed: vec![(
                DType::F32,
                speed_curve(peak, &[(16, 0.05), (128, 0.5), (1024, 0.9)]),
            )],
        }
    }
}

/// A speed curve as data: at each square size n, `fraction` of `peak` GFLOP/s.
fn speed_curve(peak: f64, points: &[(u32, f64)]) -> Vec<SpeedPoint> {
    points
        .iter()
        .map(|&(n, fraction)| SpeedPoint {
            flops: 2.0 * f64::from(n).powi(3),
            gflops: peak * fraction,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Scheduler;

    fn square(n: usize) -> Op {
        Op::Matmul {
            m: n,
            n,
            k: n,
            dtype: DType::F32,
        }
    }

    /// The smallest square size (power of two) the scheduler sends to the GPU.
    fn crossover(s: &Scheduler) -> usize {
        (0..16)
            .map(|p| 1usize << p)
            .find(|&n| s.choose(&square(n)).device.kind == DeviceKind::Gpu)
            .unwrap()
    }

    #[test]
    fn tiny_products_stay_on_the_cpu_and_large_ones_go_to_the_gpu() {
        let s = Scheduler::new(vec![
            DeviceProfile::cpu(16, 40.0),
            DeviceProfile::h100_pcie5(),
        ]);
        for n in [1, 8, 32, 64] {
            assert_eq!(s.choose(&square(n)).device.kind, DeviceKind::Cpu, "{n}x{n}");
        }
        for n in [2048, 4096, 8192] {
            assert_eq!(s.choose(&square(n)).device.kind, DeviceKind::Gpu, "{n}x{n}");
        }
        // A long elementwise op moves 8 bytes per flop: the link costs more than the CPU.
        let relu = Op::Relu {
            len: 1 << 26,
            dtype: DType::F32,
        };
        assert_eq!(s.choose(&relu).device.kind, DeviceKind::Cpu);
        // f16 is only on the GPU.
        let half = Op::Matmul {
            m: 8,
            n: 8,
            k: 8,
            dtype: DType::F16,
        };
        assert_eq!(s.choose(&half).device.kind, DeviceKind::Gpu);
    }

    #[test]
    fn the_crossover_moves_the_right_way() {
        let base = crossover(&Scheduler::new(vec![
            DeviceProfile::cpu(16, 40.0),
            DeviceProfile::h100_pcie5(),
        ]));
        let mut slow_link = DeviceProfile::h100_pcie5();
        slow_link.h2d_pinned_gbps = 2.0;
        slow_link.d2h_gbps = 2.0;
        let with_slow_link = crossover(&Scheduler::new(vec![
            DeviceProfile::cpu(16, 40.0),
            slow_link,
        ]));
        let with_fast_cpu = crossover(&Scheduler::new(vec![
            DeviceProfile::cpu(128, 60.0),
            DeviceProfile::h100_pcie5(),
        ]));
        let with_slow_cpu = crossover(&Scheduler::new(vec![
            DeviceProfile::cpu(2, 20.0),
            DeviceProfile::h100_pcie5(),
        ]));
        assert!(
            with_slow_link > base,
            "a slower link keeps more work on the CPU: {with_slow_link} vs {base}"
        );
        assert!(
            with_fast_cpu > base,
            "a faster CPU keeps more work: {with_fast_cpu} vs {base}"
        );
        assert!(
            with_slow_cpu < base,
            "a slower CPU sends work sooner: {with_slow_cpu} vs {base}"
        );
    }

    #[test]
    fn a_busy_gpu_loses_work_it_would_otherwise_win() {
        let mut s = Scheduler::new(vec![
            DeviceProfile::cpu(16, 40.0),
            DeviceProfile::h100_pcie5(),
        ]);
        let op = square(512);
        assert_eq!(s.choose(&op).device.kind, DeviceKind::Gpu);
        s.enqueue(1, 1.0); // a second of queued work ahead on the GPU
        assert_eq!(s.choose(&op).device.kind, DeviceKind::Cpu);
        s.dequeue(1, 1.0); // that work done, the GPU wins again
        assert_eq!(s.choose(&op).device.kind, DeviceKind::Gpu);
    }

    #[test]
    fn observed_runs_correct_the_model() {
        let mut s = Scheduler::new(vec![
            DeviceProfile::cpu(16, 40.0),
            DeviceProfile::h100_pcie5(),
        ]);
        let op = square(512);
        assert_eq!(s.choose(&op).device.kind, DeviceKind::Gpu);
        let predicted = s.choose(&op).predicted;
        // The GPU turns out 50x slower than modelled at this size, repeatedly.
        for _ in 0..20 {
            s.observe(&op, 1, predicted * 50.0);
        }
        assert_eq!(
            s.choose(&op).device.kind,
            DeviceKind::Cpu,
            "history moved the decision"
        );
        // Other size classes keep their own history.
        assert_eq!(s.choose(&square(8192)).device.kind, DeviceKind::Gpu);
    }

    #[test]
    fn speed_is_interpolated_between_measured_sizes() {
        let p = DeviceProfile::cpu(1, 100.0);
        let at = |n: f64| p.gflops_at(DType::F32, 2.0 * n * n * n).unwrap();
        assert!(at(16.0) < at(64.0) && at(64.0) < at(128.0) && at(128.0) < at(512.0));
        assert!((at(1024.0) - 90.0).abs() < 1e-9 && (at(4096.0) - 90.0).abs() < 1e-9);
        assert!(p.gflops_at(DType::F16, 1e6).is_none());
    }
}
