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
