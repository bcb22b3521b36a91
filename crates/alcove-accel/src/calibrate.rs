//! Short measurements on this host that give the cost model its constants:
//! the CPU's achieved FLOP/s by size and element type (each on its own path), and for a GPU its pinned and pageable
//! bandwidth, the fixed cost of a call, and its FLOP/s by size and type.

use crate::cpu::Cpu;
use crate::elements::encode;
use crate::gpu::{Gpu, GpuError};
use crate::model::{DeviceProfile, SpeedPoint};
use crate::{DType, DeviceKind, Op};
use std::time::Instant;

/// Runs `f` until `budget` seconds have passed (at least `min_runs` times)
/// and returns the fastest run, in seconds.
fn best_of<T>(min_runs: usize, budget: f64, mut f: impl FnMut() -> T) -> f64 {
    let started = Instant::now();
    let mut best = f64::INFINITY;
    let mut runs = 0;
    while runs < min_runs || started.elapsed().as_secs_f64() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
        if runs > 10_000 {
            break;
        }
    }
    best
}

pub(crate) fn ramp(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect()
}

/// The CPU's profile: each element type's products measured on its own
/// path ([`Cpu::path`]) at a few sizes, and the fixed cost of a call.
pub fn cpu_profile(cpu: &Cpu, name: &str) -> DeviceProfile {
    let speed = DType::ALL
        .iter()
        .map(|&dtype| {
            let points = [16usize, 64, 256, 1024]
                .iter()
                .map(|&n| {
                    let op = Op::Matmul {
                        m: n,
                        n,
                        k: n,
                        dtype,
                    };
                    let (a, b) = (encode(dtype, &ramp(n * n)), encode(dtype, &ramp(n * n)));
                    let mut c = vec![0u8; op.operand_bytes().2];
                    let t = best_of(2, 0.05, || cpu.run(&op, &a, &b, &mut c));
                    SpeedPoint {
                        flops: op.flops(),
                        gflops: op.flops() / t / 1e9,
                    }
                })
                .collect();
            (dtype, points)
        })
        .collect();
    let one = Op::Matmul {
        m: 1,
        n: 1,
        k: 1,
        dtype: DType::F32,
    };
    let (a, b) = (encode(DType::F32, &[1.0]), encode(DType::F32, &[1.0]));
    let mut c = [0u8; 4];
    let launch = best_of(100, 0.02, || cpu.run(&one, &a, &b, &mut c));
    DeviceProfile {
        name: name.to_owned(),
        kind: DeviceKind::Cpu,
        h2d_pinned_gbps: 0.0,
        h2d_pageable_gbps: 0.0,
        d2h_gbps: 0.0,
        launch_us: launch * 1e6,
        speed,
    }
}

/// A GPU's profile, measured through the executor's own paths.
pub fn gpu_profile(gpu: &mut Gpu, name: &str) -> Result<DeviceProfile, GpuError> {
    let bytes = 64usize << 20;
    let (pinned, pageable, d2h) = gpu.measure_bandwidth(bytes)?;
    // The fixed cost of a call: a 1x1x1 product, host to host.
    let (a, b) = (ramp(1), ramp(1));
    let mut c = [0.0f32];
    gpu.matmul(1, 1, 1, &a, &b, &mut c)?;
    let mut err = None;
    let launch = best_of(20, 0.05, || {
        if let Err(e) = gpu.matmul(1, 1, 1, &a, &b, &mut c) {
            err = Some(e);
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let mut speed = Vec::new();
    for dtype in DType::ALL {
        let mut points = Vec::new();
        for n in [256usize, 1024, 4096, 8192] {
            let seconds = gpu.time_device_gemm(dtype, n)?;
            let flops = 2.0 * (n as f64).powi(3);
            points.push(SpeedPoint {
                flops,
                gflops: flops / seconds / 1e9,
            });
        }
        speed.push((dtype, points));
    }
    Ok(DeviceProfile {
        name: name.to_owned(),
        kind: DeviceKind::Gpu,
        h2d_pinned_gbps: bytes as f64 / pinned / 1e9,
        h2d_pageable_gbps: bytes as f64 / pageable / 1e9,
        d2h_gbps: bytes as f64 / d2h / 1e9,
        launch_us: launch * 1e6,
        speed,
    })
}
