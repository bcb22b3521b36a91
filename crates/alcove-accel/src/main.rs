//! `alcove-accel`: the accelerator as a command (`alcove accel ...` runs
//! it). It is linked dynamically, unlike `alcove`, because it loads the
//! NVIDIA driver and cuBLAS at run time.

use alcove_accel::accel::{Accel, Placement};
use alcove_accel::devices::Gpus;
use alcove_accel::{DType, DeviceKind, Op};
use clap::{Parser, Subcommand, ValueEnum};

mod cpucheck;
mod serve;
mod timing;

#[derive(Parser)]
#[command(
    name = "alcove accel",
    version,
    about = "alcove's accelerator: devices, cost model, benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the devices found and the cost model calibrated on them.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Check GPU results against the CPU executor (f32, f16, bf16, batched,
    /// ReLU) across shapes that exercise the tiling; exits 1 on a mismatch,
    /// 2 without a GPU.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Check this host's CPU paths (oneDNN's bf16, AVX-512 kernels) against
    /// reference results for every element type; exits 1 on a mismatch.
    CheckCpu {
        #[arg(long)]
        json: bool,
    },
    /// Serve sandboxes (started by `alcove serve`): connections arrive on
    /// stdin, a SOCK_SEQPACKET socket, each with its grant (placement and
    /// the function's limits); exits when stdin closes. The work runs in a
    /// worker process confined to a cgroup of its own with these limits,
    /// without privileges and under seccomp.
    Serve {
        /// The service's memory limit in bytes [default: half of the host's memory].
        #[arg(long)]
        memory_max: Option<u64>,
        /// The service's task (thread) limit [default: 1024].
        #[arg(long)]
        pids_max: Option<u64>,
    },
    /// The confined worker `serve` starts (not for direct use).
    #[command(hide = true)]
    Worker {
        /// A cgroup directory to join, one per hierarchy.
        #[arg(long = "cgroup")]
        cgroups: Vec<std::path::PathBuf>,
        #[arg(long)]
        memory_max: u64,
    },
    /// Time square products from tiny to large on every device; print the
    /// model's choice and its regret (chosen time / best time).
    Bench {
        /// Largest size (n for n x n x n) [default: 2048 without a GPU, 8192 with one].
        #[arg(long)]
        max: Option<usize>,
        #[arg(long, value_enum, default_value_t = Dt::F32)]
        dtype: Dt,
        #[arg(long)]
        json: bool,
    },
    /// Time the CPU path alone on square products (JSON, one line): each
    /// run timed on its own after one warm-up run, for benchmarks.
    Time {
        #[arg(long, value_enum, default_value_t = Dt::F32)]
        dtype: Dt,
        /// Sizes n (n x n x n), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "64,256,1024")]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Products per call (a batched product when over 1).
        #[arg(long, default_value_t = 1)]
        batch: usize,
    },
}

#[derive(ValueEnum, Clone, Copy)]
enum Dt {
    F32,
    F64,
    F16,
    Bf16,
}

impl From<Dt> for DType {
    fn from(d: Dt) -> DType {
        match d {
            Dt::F32 => DType::F32,
            Dt::F64 => DType::F64,
            Dt::F16 => DType::F16,
            Dt::Bf16 => DType::Bf16,
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { json } => info(json),
        Command::Serve {
            memory_max,
            pids_max,
        } => serve::supervise(serve::limits(memory_max, pids_max)),
        Command::Worker {
            cgroups,
            memory_max,
        } => serve::work(&cgroups, memory_max),
        Command::Check { json } => return check(json),
        Command::CheckCpu { json } => {
            let (all_ok, printed) = cpucheck::check_cpu(json);
            if let Some(results) = printed {
                print_cases(&results);
            }
            return verdict(all_ok);
        }
        Command::Bench { max, dtype, json } => bench(max, dtype, json),
        Command::Time {
            dtype,
            sizes,
            reps,
            batch,
        } => timing::time(dtype.into(), &sizes, reps, batch),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("alcove: error: {e:#}");
            std::process::ExitCode::from(125)
        }
    }
}

fn check(json: bool) -> std::process::ExitCode {
    use alcove_accel::accel::{decode, encode};
    let accel = Accel::start();
    if let Gpus::Absent { reason } = &accel.gpus {
        eprintln!("alcove accel check: no GPU to check ({reason})");
        return std::process::ExitCode::from(2);
    }
    let data = |len: usize, seed: usize| -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7 + seed * 13) % 101) as f32 - 50.0) / 50.0)
            .collect()
    };
    let mut results = Vec::new();
    let mut all_ok = true;
    let cases: Vec<(Op, f32)> = vec![
        (
            Op::Matmul {
                m: 1,
                n: 1,
                k: 1,
                dtype: DType::F32,
            },
            1e-5,
        ),
        (
            Op::Matmul {
                m: 17,
                n: 33,
                k: 65,
                dtype: DType::F32,
            },
            1e-4,
        ),
        (
            Op::Matmul {
                m: 1000,
                n: 3000,
                k: 700,
                dtype: DType::F32,
            },
            1e-3,
        ),
        (
            Op::Matmul {
                m: 4096,
                n: 4096,
                k: 4096,
                dtype: DType::F32,
            },
            1e-3,
        ),
        (
            Op::Matmul {
                m: 2048,
                n: 2048,
                k: 2048,
                dtype: DType::F16,
            },
            2e-2,
        ),
        (
            Op::Matmul {
                m: 2048,
                n: 2048,
                k: 2048,
                dtype: DType::Bf16,
            },
            5e-2,
        ),
        (
            Op::BatchedMatmul {
                batch: 64,
                m: 128,
                n: 96,
                k: 80,
                dtype: DType::F32,
            },
            1e-4,
        ),
        (
            Op::Relu {
                len: 1 << 20,
                dtype: DType::F32,
            },
            0.0,
        ),
    ];
    for (op, tolerance) in cases {
        let (la, lb, _) = op.operand_bytes();
        let dt = op.dtype();
        let a = encode(dt, &data(la / dt.size(), 1));
        let b = encode(dt, &data(lb / dt.size(), 2));
        let (_, _, outs) = op.operands();
        let (mut on_cpu, mut on_gpu) = (vec![0u8; outs * dt.size()], vec![0u8; outs * dt.size()]);
        let cpu = accel.run(&op, Placement::Cpu, &a, &b, &mut on_cpu);
        let gpu = accel.run(&op, Placement::Gpu, &a, &b, &mut on_gpu);
        let (ok, error) = match (cpu, gpu) {
            (Ok(_), Ok(_)) => {
                let e = alcove_accel::cpu::max_relative_error(
                    &decode(dt, &on_gpu),
                    &decode(dt, &on_cpu),
                );
                (e <= tolerance, e.to_string())
            }
            (c, g) => (
                false,
                format!(
                    "cpu: {:?}, gpu: {:?}",
                    c.err().map(|e| e.to_string()),
                    g.err().map(|e| e.to_string())
                ),
            ),
        };
        all_ok &= ok;
        results.push(serde_json::json!({ "op": op, "tolerance": tolerance, "max_relative_error": error, "ok": ok }));
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "ok": all_ok, "cases": results, "gpus": accel.gpus })
        );
    } else {
        print_cases(&results);
    }
    verdict(all_ok)
}

/// One line per checked case: ok or FAIL, the operation, where it ran (when
/// known), its error and the tolerance.
fn print_cases(results: &[serde_json::Value]) {
    for r in results {
        let ran = r["ran"]
            .as_str()
            .map(|p| format!(" on {p}"))
            .unwrap_or_default();
        println!(
            "{} {}{ran} (error {}, tolerance {})",
            if r["ok"] == true { "ok  " } else { "FAIL" },
            r["op"],
            r["max_relative_error"],
            r["tolerance"]
        );
    }
}

/// 0 when every case passed, else 1.
fn verdict(all_ok: bool) -> std::process::ExitCode {
    if all_ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}

fn info(json: bool) -> anyhow::Result<()> {
    let accel = Accel::start();
    let profiles = accel.profiles();
    if json {
        let paths: serde_json::Map<_, _> = DType::ALL
            .iter()
            .map(|&d| {
                (
                    format!("{d:?}").to_lowercase(),
                    accel.cpu_paths.path(d).into(),
                )
            })
            .collect();
        let v = serde_json::json!({
            "cpu": accel.cpu, "cpu_paths": paths, "gpus": accel.gpus, "profiles": profiles,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "CPU: {} ({} threads; {})",
        accel.cpu.model,
        accel.cpu.cores,
        accel.cpu.simd.join(" ")
    );
    for dtype in DType::ALL {
        println!("  {dtype:?} products: {}", accel.cpu_paths.path(dtype));
    }
    match &accel.gpus {
        Gpus::Present { devices } => {
            for d in devices {
                println!(
                    "GPU {}: {} ({:.0} GiB, compute capability {}.{})",
                    d.ordinal,
                    d.name,
                    d.memory_bytes as f64 / (1u64 << 30) as f64,
                    d.compute_capability.0,
                    d.compute_capability.1
                );
            }
        }
        Gpus::Absent { reason } => {
            println!("GPU: none ({reason}); every operation runs on the CPU")
        }
    }
    println!();
    for p in &profiles {
        println!("{} [{:?}]", p.name, p.kind);
        if p.kind == DeviceKind::Gpu {
            println!(
                "  host->device {:.1} GB/s pinned, {:.1} GB/s pageable; device->host {:.1} GB/s",
                p.h2d_pinned_gbps, p.h2d_pageable_gbps, p.d2h_gbps
            );
        }
        println!("  fixed cost per call {:.2} us", p.launch_us);
        for (dtype, points) in &p.speed {
            let text: Vec<String> = points
                .iter()
                .map(|s| format!("n={}: {:.1}", (s.flops / 2.0).cbrt().round(), s.gflops))
                .collect();
            println!("  {dtype:?} GFLOP/s by size: {}", text.join(", "));
        }
    }
    Ok(())
}

fn bench(max: Option<usize>, dtype: Dt, json: bool) -> anyhow::Result<()> {
    let accel = Accel::start();
    let dtype = DType::from(dtype);
    let max = max.unwrap_or(if accel.has_gpu() { 8192 } else { 2048 });
    let mut rows = Vec::new();
    let mut n = 8;
    while n <= max {
        let op = Op::Matmul {
            m: n,
            n,
            k: n,
            dtype,
        };
        let (choice, predicted) = accel.choose(&op);
        let values: Vec<f32> = (0..n * n)
            .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
            .collect();
        let a = alcove_accel::accel::encode(dtype, &values);
        let b = a.clone();
        let mut c = vec![0u8; a.len()];
        let reps = if n <= 256 {
            20
        } else if n <= 1024 {
            5
        } else {
            2
        };
        let mut time = |placement, reps| -> anyhow::Result<f64> {
            let mut best = f64::INFINITY;
            for _ in 0..reps {
                best = best.min(accel.run(&op, placement, &a, &b, &mut c)?.seconds);
            }
            Ok(best)
        };
        // A large product takes the CPU seconds each time and varies little:
        // once is enough. The GPU keeps its repeats, since its first run at a
        // new size also allocates the buffers later runs reuse.
        let cpu = time(Placement::Cpu, if n >= 4096 { 1 } else { reps })?;
        let gpu = if accel.has_gpu() {
            Some(time(Placement::Gpu, reps)?)
        } else {
            None
        };
        let chosen = match choice {
            DeviceKind::Cpu => cpu,
            DeviceKind::Gpu => gpu.unwrap_or(cpu),
        };
        let best = gpu.map_or(cpu, |g| g.min(cpu));
        rows.push(serde_json::json!({
            "n": n, "cpu_ms": cpu * 1e3, "gpu_ms": gpu.map(|g| g * 1e3), "choice": choice,
            "predicted_ms": predicted * 1e3, "regret": chosen / best,
        }));
        n *= 2;
    }
    let mean_regret = rows
        .iter()
        .map(|r| r["regret"].as_f64().unwrap_or(1.0))
        .sum::<f64>()
        / rows.len().max(1) as f64;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "rows": rows, "mean_regret": mean_regret, "gpus": accel.gpus })
            )?
        );
        return Ok(());
    }
    if let Gpus::Absent { reason } = &accel.gpus {
        println!("(no GPU: {reason}; the GPU column is empty and every choice is the CPU)");
    }
    println!(
        "{:>6} {:>12} {:>12} {:>8} {:>14} {:>8}",
        "n", "cpu ms", "gpu ms", "choice", "predicted ms", "regret"
    );
    for r in &rows {
        let gpu = r["gpu_ms"]
            .as_f64()
            .map_or("-".into(), |g| format!("{g:.3}"));
        println!(
            "{:>6} {:>12.3} {:>12} {:>8} {:>14.3} {:>8.3}",
            r["n"].as_u64().unwrap_or(0),
            r["cpu_ms"].as_f64().unwrap_or(0.0),
            gpu,
            r["choice"].as_str().unwrap_or(""),
            r["predicted_ms"].as_f64().unwrap_or(0.0),
            r["regret"].as_f64().unwrap_or(0.0)
        );
    }
    println!("mean regret {mean_regret:.3}");
    Ok(())
}
