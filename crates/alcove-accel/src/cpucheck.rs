//! `alcove-accel check-cpu`: this host's CPU paths (oneDNN's bf16 on AMX or
//! AVX512-BF16, the gemm crate's AVX-512 kernels) against reference results
//! for every element type, odd, non-square and batched shapes, and sizes on
//! both sides of oneDNN's implementation switch. Run it under
//! `ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16` to check the path CPUs without AMX
//! take, or `ALCOVE_ACCEL_CPU=portable` for the fallback.

use alcove_accel::cpu::{self, expected, max_relative_error, sample, tolerance, Cpu};
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

/// The reference result for `op`: the f64 triple loop up to
/// [`NAIVE_FLOPS`], else the portable f32 product of the same (rounded)
/// operands.
fn reference(op: &Op, a: &[u8], b: &[u8]) -> Vec<f32> {
    if op.flops() <= NAIVE_FLOPS {
        return expected(op, a, b);
    }
    let (dtype, (_, _, nc)) = (op.dtype(), op.operands());
    let mut c = vec![0.0f32; nc];
    match *op {
        Op::Matmul { m, n, k, .. } => {
            cpu::matmul(m, n, k, &decode(dtype, a), &decode(dtype, b), &mut c)
        }
        Op::BatchedMatmul { batch, m, n, k, .. } => {
            cpu::batched_matmul(batch, m, n, k, &decode(dtype, a), &decode(dtype, b), &mut c)
        }
        Op::Relu { .. } => unreachable!("only products are checked"),
    }
    c
}

/// Runs the checks; whether all passed, and the cases for the caller to
/// print unless `json` printed them already.
pub fn check_cpu(json: bool) -> (bool, Option<Vec<serde_json::Value>>) {
    let host = Cpu::detect();
    let mut all_ok = true;
    let mut results = Vec::new();
    for dtype in DType::ALL {
        for shape in shapes(dtype) {
            let (batch, m, n, k) = shape;
            let op = Op::product(batch, m, n, k, dtype);
            let (na, nb, _) = op.operands();
            let (a, b) = (encode(dtype, &sample(na, 1)), encode(dtype, &sample(nb, 2)));
            let mut c = vec![0xffu8; op.operand_bytes().2];
            let ran = host.run(&op, &a, &b, &mut c);
            let error = max_relative_error(&decode(dtype, &c), &reference(&op, &a, &b));
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
        return (all_ok, None);
    }
    for dtype in DType::ALL {
        println!("{dtype:?}: {}", host.path(dtype));
    }
    (all_ok, Some(results))
}
