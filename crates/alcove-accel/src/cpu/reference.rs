//! The textbook triple loop and the error measure every fast path is
//! checked against.

/// `a * b` accumulated in f64, for row-major `a` (m x k) and `b` (k x n).
pub fn naive_matmul_f64(m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p];
            for j in 0..n {
                c[i * n + j] += x * b[p * n + j];
            }
        }
    }
    c
}

/// The same for f32 operands, rounded to f32 once at the end.
pub fn naive_matmul(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let wide = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
    naive_matmul_f64(m, n, k, &wide(a), &wide(b))
        .into_iter()
        .map(|x| x as f32)
        .collect()
}

/// Largest |x - y| / (1 + |y|) over two results: the relative error measure
/// results are compared with. A NaN in either counts as infinitely wrong.
pub fn max_relative_error(x: &[f32], y: &[f32]) -> f32 {
    let worst = x
        .iter()
        .zip(y)
        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
        .fold(
            0.0f32,
            |w, e| if e.is_nan() { f32::INFINITY } else { w.max(e) },
        );
    if x.len() != y.len() {
        return f32::INFINITY;
    }
    worst
}

/// Deterministic values in [-1, 1), different for each `seed`: operands for
/// checks that must repeat exactly.
pub fn sample(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5) - 1.0)
        .collect()
}

/// How far from the f64 reference each type's result may land (relative to
/// 1 + |y|): the result's own rounding, and f32 accumulation for the narrow
/// types.
pub fn tolerance(dtype: crate::DType) -> f32 {
    match dtype {
        crate::DType::F64 => 1e-9,
        crate::DType::F32 => 1e-4,
        crate::DType::F16 => 2e-3,
        crate::DType::Bf16 => 1e-2,
    }
}

/// The exact product (f64 triple loop) of `op`'s operands as `dtype` bytes,
/// rounded to f32 once: `batch` products packed one after another.
///
/// # Panics
/// For ReLU, or operands shorter than `op` says.
pub fn expected(op: &crate::Op, a: &[u8], b: &[u8]) -> Vec<f32> {
    let dtype = op.dtype();
    let (batch, m, n, k) = match *op {
        crate::Op::Matmul { m, n, k, .. } => (1, m, n, k),
        crate::Op::BatchedMatmul { batch, m, n, k, .. } => (batch, m, n, k),
        crate::Op::Relu { .. } => panic!("ReLU has no product to check"),
    };
    let wide = |bytes: &[u8]| -> Vec<f64> {
        crate::elements::decode(dtype, bytes)
            .into_iter()
            .map(f64::from)
            .collect()
    };
    let (wa, wb) = (wide(a), wide(b));
    let mut out = Vec::with_capacity(batch * m * n);
    for i in 0..batch {
        let (a, b) = (&wa[i * m * k..][..m * k], &wb[i * k * n..][..k * n]);
        out.extend(
            naive_matmul_f64(m, n, k, a, b)
                .into_iter()
                .map(|x| x as f32),
        );
    }
    out
}
