use super::*;
use crate::elements::{decode, encode};

/// The operands of `op` in its type, and the exact product of those
/// (already rounded) values.
fn case(op: &Op) -> (Vec<u8>, Vec<u8>, Vec<f32>) {
    let (na, nb, _) = op.operands();
    let (a, b) = (
        encode(op.dtype(), &sample(na, 1)),
        encode(op.dtype(), &sample(nb, 2)),
    );
    let want = expected(op, &a, &b);
    (a, b, want)
}

fn shapes(dtype: DType) -> Vec<Op> {
    let mut ops: Vec<Op> = [
        (1, 1, 1),
        (3, 5, 7),
        (64, 64, 64),
        (127, 33, 250),
        (17, 1, 513),
        (1, 300, 9),
        (300, 200, 100),
    ]
    .iter()
    .map(|&(m, n, k)| Op::Matmul { m, n, k, dtype })
    .collect();
    for (batch, m, n, k) in [(4, 17, 9, 13), (3, 70, 90, 50), (2, 1, 1, 1)] {
        ops.push(Op::BatchedMatmul {
            batch,
            m,
            n,
            k,
            dtype,
        });
    }
    ops
}

fn check_products(cpu: &Cpu) {
    for dtype in [DType::F32, DType::F64, DType::F16, DType::Bf16] {
        for op in shapes(dtype) {
            let (a, b, expected) = case(&op);
            let mut c = vec![0xffu8; op.operand_bytes().2];
            cpu.run(&op, &a, &b, &mut c);
            let err = max_relative_error(&decode(dtype, &c), &expected);
            assert!(
                err <= tolerance(dtype),
                "{op:?} on {}: error {err}",
                cpu.path(dtype)
            );
        }
    }
}

#[test]
fn every_type_and_shape_agrees_with_the_f64_reference() {
    let cpu = Cpu::detect();
    eprintln!("bf16 path: {}", cpu.path(DType::Bf16));
    check_products(&cpu);
}

#[test]
fn the_portable_fallback_agrees_with_the_f64_reference() {
    let cpu = Cpu::portable("forced by the test");
    assert!(cpu.path(DType::Bf16).starts_with("widened to f32"));
    check_products(&cpu);
}

/// Whether this CPU has bf16 instructions oneDNN runs fast.
fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[test]
fn bf16_runs_through_onednn_where_installed_and_agrees_at_large_sizes() {
    let cpu = Cpu::detect();
    let path = cpu.path(DType::Bf16);
    let installed = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libdnnl.so.2").exists();
    if !installed && cpu_has_bf16() && std::env::var("ALCOVE_CI").is_ok_and(|v| v == "1") {
        panic!(
            "libdnnl2 is not installed on a CPU with AVX512-BF16: scripts/packages.sh installs it"
        );
    }
    if !installed || !cpu_has_bf16() {
        eprintln!(
            "SKIPPED: oneDNN's bf16 path (libdnnl.so.2 installed: {installed}, CPU with AVX512-BF16: {}); bf16 here runs: {path}",
            cpu_has_bf16()
        );
        return;
    }
    assert!(path.starts_with("oneDNN 2."), "bf16 path: {path}");
    let dnn = OneDnn::get().expect("oneDNN loaded");
    // Both of oneDNN's implementations: below and above the size where
    // the tuning switches (a naive loop at this size is too slow, so the
    // f32 product of the same rounded operands is the reference).
    let sizes = [300usize, dnn.jit_from_n.map_or(1100, |n| n + 100)];
    for n in sizes {
        let op = Op::Matmul {
            m: n,
            n,
            k: n,
            dtype: DType::Bf16,
        };
        let a = encode(DType::Bf16, &sample(n * n, 3));
        let b = encode(DType::Bf16, &sample(n * n, 4));
        let mut c = vec![0u8; n * n * 2];
        cpu.run(&op, &a, &b, &mut c);
        let mut reference = vec![0.0f32; n * n];
        matmul(
            n,
            n,
            n,
            &decode(DType::Bf16, &a),
            &decode(DType::Bf16, &b),
            &mut reference,
        );
        let err = max_relative_error(&decode(DType::Bf16, &c), &reference);
        assert!(err <= 1e-2, "n={n}: error {err} on {path}");
    }
}

#[test]
fn relu_for_every_type_zeroes_negatives_and_nan() {
    let x = [
        -2.0f32,
        -0.0,
        0.5,
        3.0,
        f32::NAN,
        f32::NEG_INFINITY,
        f32::INFINITY,
    ];
    let want = [0.0f32, 0.0, 0.5, 3.0, 0.0, 0.0, f32::INFINITY];
    for cpu in [Cpu::detect(), Cpu::portable("test")] {
        for dtype in [DType::F32, DType::F64, DType::F16, DType::Bf16] {
            let op = Op::Relu {
                len: x.len(),
                dtype,
            };
            let mut c = vec![0xffu8; x.len() * dtype.size()];
            cpu.run(&op, &encode(dtype, &x), &[], &mut c);
            assert_eq!(decode(dtype, &c), want, "{dtype:?}");
        }
    }
    // Long enough to be split over threads.
    let long = sample(300_000, 9);
    let mut out = vec![1.0f32; long.len()];
    relu(&long, &mut out);
    assert!(long.iter().zip(&out).all(|(&x, &y)| y == x.max(0.0)));
}

#[test]
fn unaligned_operands_are_copied_not_misread() {
    let cpu = Cpu::detect();
    for dtype in [DType::F32, DType::F64, DType::Bf16] {
        let op = Op::Matmul {
            m: 5,
            n: 6,
            k: 7,
            dtype,
        };
        let (a, b, expected) = case(&op);
        // One byte in: no longer aligned for any type but u8.
        let shift = |v: &[u8]| [&[0u8][..], v].concat();
        let (a1, b1) = (shift(&a), shift(&b));
        let mut c = vec![0u8; op.operand_bytes().2 + 1];
        cpu.run(&op, &a1[1..], &b1[1..], &mut c[1..]);
        let err = max_relative_error(&decode(dtype, &c[1..]), &expected);
        assert!(err <= tolerance(dtype), "{dtype:?}: {err}");
    }
}
