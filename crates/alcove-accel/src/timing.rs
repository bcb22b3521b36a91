//! `alcove-accel time`: the CPU path's own time for square products, each
//! run timed separately, for benchmarks that put it beside numpy and
//! PyTorch (`bench/accel-cpu.sh`). No calibration, no scheduler: the
//! product alone, as the service runs it once the operands are in memory.

use alcove_accel::cpu::Cpu;
use alcove_accel::elements::{encode, AlignedBytes};
use alcove_accel::{DType, Op};
use std::time::Instant;

/// Largest n accepted: 8192^2 f64 operands are 1.5 GiB.
const MAX_N: usize = 8192;
/// Operands and result together, at most (a batch can multiply them).
const MAX_BYTES: usize = 4 << 30;

pub fn time(dtype: DType, sizes: &[usize], reps: usize, batch: usize) -> anyhow::Result<()> {
    if let Some(n) = sizes.iter().find(|&&n| n == 0 || n > MAX_N) {
        anyhow::bail!("size {n} is outside 1..={MAX_N}");
    }
    if !(1..=10_000).contains(&reps) || !(1..=4096).contains(&batch) {
        anyhow::bail!("--reps must be 1..=10000 and --batch 1..=4096");
    }
    let cpu = Cpu::detect();
    let mut results = Vec::new();
    for &n in sizes {
        let op = Op::product(batch, n, n, n, dtype);
        op.check().map_err(anyhow::Error::msg)?;
        let (la, lb, lc) = op.operand_bytes();
        if la + lb + lc > MAX_BYTES {
            anyhow::bail!(
                "n={n}, batch {batch} of {dtype:?} needs {} MiB of operands, over this command's {} MiB: use smaller sizes",
                (la + lb + lc) >> 20,
                MAX_BYTES >> 20
            );
        }
        let (na, nb, _) = op.operands();
        let values = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (((i * 7 + seed) % 97) as f32 - 48.0) / 97.0)
                .collect()
        };
        // Aligned as the service aligns what it reads.
        let a = AlignedBytes::copy_of(&encode(dtype, &values(na, 1)));
        let b = AlignedBytes::copy_of(&encode(dtype, &values(nb, 5)));
        let mut c = AlignedBytes::zeroed(op.operand_bytes().2).expect("allocating the result");
        cpu.run(&op, &a, &b, &mut c); // warm: first-use set-up (oneDNN compiles per shape)
        let seconds: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                cpu.run(&op, &a, &b, &mut c);
                t.elapsed().as_secs_f64()
            })
            .collect();
        results.push(serde_json::json!({ "n": n, "batch": batch, "seconds": seconds }));
    }
    let out = serde_json::json!({ "dtype": dtype, "path": cpu.path(dtype), "results": results });
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
