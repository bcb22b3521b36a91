//! `alcove-accel check-cpu`: this host's CPU paths (oneDNN's bf16 on AMX or
//! AVX512-BF16, the gemm crate's AVX-512 kernels) against reference results
//! for every element type, odd, non-square and batched shapes, and sizes on
//! both sides of oneDNN's implementation switch. Run it under
//! `ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16` to check the path CPUs without AMX
//! take, or `ALCOVE_ACCEL_CPU=portable` for the fallback.

use alcove_accel::cpu::{self, max_relative_error, naive_matmul_f64, Cpu};
use alcove_accel::elements::{decode, encode};
use alcove_accel::{DType, Op};

/// Work up to which the reference is the f64 triple loop; above it, the
/// portable f32 product of the same (rounded) operands.
const NAIVE_FLOPS: f64 = 2e8;

fn shapes(dtype: DType) -> Vec<(usize, usize, usize, usize)> {
    let mut shapes = vec![
        (1, 1, 1, 1),
        (1, 17, 33, 65),
        (1, 300, 200, 100),
        (1, 1, 513, 77),
        (5, 31, 17, 23),
        (3, 120, 64, 96),
    ];
    if dtype == DType::Bf16 {
        // Either side of the switch to oneDNN's gemm:jit (tuned at ~1448).
        shapes.extend([
            (1, 1024, 1024, 1024),
            (1, 1600, 1600, 1600),
            (2, 700, 500, 900),
        ]);
    }
    shapes
}

fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F64 => 1e-9,
        DType::F32 => 1e-4,
        DType::F16 => 2e-3,
        DType::Bf16 => 1e-2,
    }
}

fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5) - 1.0)
        .collect()
}

/// The reference result for `batch` products of the rounded operands.
fn reference(dtype: DType, shape: (usize, usize, usize, usize), a: &[u8], b: &[u8]) -> Vec<f32> {
    let (batch, m, n, k) = shape;
    let (wa, wb) = (decode(dtype, a), decode(dtype, b));
    let mut out = Vec::with_capacity(batch * m * n);
    for i in 0..batch {
        let (a, b) = (&wa[i * m * k..][..m * k], &wb[i * k * n..][..k * n]);
        if 2.0 * (m * n * k) as f64 <= NAIVE_FLOPS {
            let wide = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
            let c = naive_matmul_f64(m, n, k, &wide(a), &wide(b));
            out.extend(c.into_iter().map(|x| x as f32));
        } else {
            let mut c = vec![0.0f32; m * n];
            cpu::matmul(m, n, k, a, b, &mut c);
            out.extend(c);
        }
    }
    out
}

pub fn check_cpu(json: bool) -> std::process::ExitCode {
    let host = Cpu::detect();
    let mut all_ok = true;
    let mut results = Vec::new();
    for dtype in DType::ALL {
        for shape in shapes(dtype) {
            let (batch, m, n, k) = shape;
            let op = if batch == 1 {
                Op::Matmul { m, n, k, dtype }
            } else {
                Op::BatchedMatmul {
                    batch,
                    m,
                    n,
                    k,
                    dtype,
                }
            };
            let (na, nb, _) = op.operands();
            let (a, b) = (encode(dtype, &values(na, 1)), encode(dtype, &values(nb, 2)));
            let mut c = vec![0xffu8; op.operand_bytes().2];
            let ran = host.run(&op, &a, &b, &mut c);
            let error = max_relative_error(&decode(dtype, &c), &reference(dtype, shape, &a, &b));
            let ok = error <= tolerance(dtype);
            all_ok &= ok;
            results.push(serde_json::json!({
                "op": op, "path": host.path(dtype), "ran": ran, "max_relative_error": error,
                "tolerance": tolerance(dtype), "ok": ok,
            }));
        }
    }
    if json {
        println!("{}", serde_json::json!({ "ok": all_ok, "cases": results }));
    } else {
        for dtype in DType::ALL {
            println!("{dtype:?}: {}", host.path(dtype));
        }
        for r in &results {
            println!(
                "{} {} on {} (error {}, tolerance {})",
                if r["ok"] == true { "ok  " } else { "FAIL" },
                r["op"],
                r["ran"],
                r["max_relative_error"],
                r["tolerance"]
            );
        }
    }
    if all_ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}
