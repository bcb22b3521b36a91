//! The portable CPU path: f32 and f64 products with the `gemm` crate (the
//! kernels under faer), dispatched at run time to AVX-512 (its `x86-v4`
//! feature), AVX2/FMA or plain SIMD, whichever this CPU has; batches and
//! elementwise ops spread over the cores with rayon. Measured on this
//! machine's Xeon (2 threads, `bench/accel-cpu.sh`): f32 at n=1024 within a
//! few percent of numpy's OpenBLAS; without `x86-v4` it ran at half that.

use gemm::Parallelism;
use rayon::prelude::*;

/// Below ~1 MFLOP, threads cost more than they save.
const PARALLEL_FLOPS: f64 = 1e6;

fn parallelism(work_flops: f64) -> Parallelism {
    if work_flops < PARALLEL_FLOPS {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    }
}

/// The element types the `gemm` crate multiplies here.
pub trait Real: Copy + Send + Sync + 'static {
    const ZERO: Self;
    const ONE: Self;
    fn relu(self) -> Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn relu(self) -> Self {
        self.max(0.0)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn relu(self) -> Self {
        self.max(0.0)
    }
}

fn product<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
    threads: Parallelism,
) {
    assert!(
        fits(1, m, n, k, a.len(), b.len(), c.len()),
        "operands shorter than their dimensions"
    );
    // SAFETY: the assert above keeps every access inside the slices: row-major
    // strides (column stride 1, row stride = columns) over m x k, k x n and
    // m x n elements; `c` is not aliased by `a` or `b` (a &mut borrow); `T`
    // is f32 or f64, both of which `gemm` implements.
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
            T::ZERO,
            T::ONE,
            false,
            false,
            false,
            threads,
        );
    }
}

/// Whether slices of these lengths hold `batch` products' operands (no
/// product of the sizes overflowing).
fn fits(batch: usize, m: usize, n: usize, k: usize, a: usize, b: usize, c: usize) -> bool {
    let per = |x: usize, y: usize| x.checked_mul(y).and_then(|v| v.checked_mul(batch));
    matches!((per(m, k), per(k, n), per(m, n)), (Some(x), Some(y), Some(z)) if a >= x && b >= y && c >= z)
}

/// `c = a * b` for row-major `a` (m x k) and `b` (k x n) into `c` (m x n).
///
/// # Panics
/// If a slice is shorter than its dimensions say.
pub fn matmul<T: Real>(m: usize, n: usize, k: usize, a: &[T], b: &[T], c: &mut [T]) {
    let flops = 2.0 * m as f64 * n as f64 * k as f64;
    product(m, n, k, a, b, c, parallelism(flops));
}

/// `batch` products packed one after another in `a`, `b` and `c`. Small
/// products run one per core at a time; large ones one after another, each
/// on every core.
///
/// # Panics
/// If a slice is shorter than its dimensions say.
pub fn batched_matmul<T: Real>(
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
) {
    assert!(
        fits(batch, m, n, k, a.len(), b.len(), c.len()),
        "operands shorter than their dimensions"
    );
    let (sa, sb, sc) = (m * k, k * n, m * n);
    let flops = 2.0 * m as f64 * n as f64 * k as f64;
    if flops >= PARALLEL_FLOPS * 4.0 || batch == 1 {
        for i in 0..batch {
            let (a, b) = (&a[i * sa..(i + 1) * sa], &b[i * sb..(i + 1) * sb]);
            product(
                m,
                n,
                k,
                a,
                b,
                &mut c[i * sc..(i + 1) * sc],
                parallelism(flops),
            );
        }
        return;
    }
    c[..batch * sc]
        .par_chunks_mut(sc.max(1))
        .enumerate()
        .for_each(|(i, c)| {
            let (a, b) = (&a[i * sa..(i + 1) * sa], &b[i * sb..(i + 1) * sb]);
            product(m, n, k, a, b, c, Parallelism::None);
        });
}

/// `c = max(a, 0)`, elementwise; NaN becomes 0 (as `f32::max` makes it).
pub fn relu<T: Real>(a: &[T], c: &mut [T]) {
    const CHUNK: usize = 1 << 16;
    let len = a.len().min(c.len());
    if len <= CHUNK {
        c.iter_mut().zip(a).for_each(|(out, &x)| *out = x.relu());
        return;
    }
    c[..len]
        .par_chunks_mut(CHUNK)
        .zip(a[..len].par_chunks(CHUNK))
        .for_each(|(out, x)| out.iter_mut().zip(x).for_each(|(o, &x)| *o = x.relu()));
}
