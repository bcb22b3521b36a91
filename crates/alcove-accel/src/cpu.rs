//! The CPU executor: f32 products with the `gemm` crate (the kernels under
//! faer), on every core through rayon; ReLU with plain loops the compiler
//! vectorises.

use gemm::Parallelism;

fn parallelism(work_flops: f64) -> Parallelism {
    // Below ~1 MFLOP, threads cost more than they save.
    if work_flops < 1e6 {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    }
}

/// `c = a * b` for row-major `a` (m x k) and `b` (k x n) into `c` (m x n).
///
/// # Panics
/// If a slice is shorter than its dimensions say.
pub fn matmul(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "operands shorter than their dimensions"
    );
    // SAFETY: the asserts above keep every access inside the slices: row-major
    // strides (column stride 1, row stride = columns) over m x k, k x n and
    // m x n elements; `c` is not aliased by `a` or `b` (a &mut borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism(2.0 * m as f64 * n as f64 * k as f64),
        );
    }
}

/// `batch` products packed one after another in `a`, `b` and `c`.
pub fn batched_matmul(
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    for i in 0..batch {
        matmul(
            m,
            n,
            k,
            &a[i * m * k..(i + 1) * m * k],
            &b[i * k * n..(i + 1) * k * n],
            &mut c[i * m * n..(i + 1) * m * n],
        );
    }
}

/// `c = max(a, 0)`.
pub fn relu(a: &[f32], c: &mut [f32]) {
    for (out, x) in c.iter_mut().zip(a) {
        *out = x.max(0.0);
    }
}

/// The textbook triple loop, for checking the fast path.
pub fn naive_matmul(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut sum = 0.0f64;
            for p in 0..k {
                sum += a[i * k + p] as f64 * b[p * n + j] as f64;
            }
            c[i * n + j] = sum as f32;
        }
    }
    c
}

/// Largest |x - y| / (1 + |y|) over two results: the relative error measure
/// results are compared with.
pub fn max_relative_error(x: &[f32], y: &[f32]) -> f32 {
    x.iter()
        .zip(y)
        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
        .fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matmul_agrees_with_the_naive_loop_across_shapes() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (64, 64, 64),
            (127, 33, 250),
            (300, 200, 100),
        ] {
            let (a, b) = (data(m * k, 1), data(k * n, 2));
            let mut c = vec![f32::NAN; m * n];
            matmul(m, n, k, &a, &b, &mut c);
            let expected = naive_matmul(m, n, k, &a, &b);
            let err = max_relative_error(&c, &expected);
            assert!(err < 1e-4, "{m}x{n}x{k}: error {err}");
        }
    }

    #[test]
    fn batches_and_relu() {
        let (batch, m, n, k) = (4, 17, 9, 13);
        let (a, b) = (data(batch * m * k, 3), data(batch * k * n, 4));
        let mut c = vec![0.0; batch * m * n];
        batched_matmul(batch, m, n, k, &a, &b, &mut c);
        for i in 0..batch {
            let expected = naive_matmul(
                m,
                n,
                k,
                &a[i * m * k..(i + 1) * m * k],
                &b[i * k * n..(i + 1) * k * n],
            );
            assert!(max_relative_error(&c[i * m * n..(i + 1) * m * n], &expected) < 1e-4);
        }
        let x = [-2.0, -0.0, 0.5, 3.0];
        let mut y = [9.0; 4];
        relu(&x, &mut y);
        assert_eq!(y, [0.0, 0.0, 0.5, 3.0]);
    }
}
