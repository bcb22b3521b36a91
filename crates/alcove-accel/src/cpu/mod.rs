//! The CPU executor. Each element type takes the fastest path this host
//! has, chosen by measurement (`bench/accel-cpu.sh` against numpy and
//! PyTorch in one run; README "The accelerator"):
//!
//! - f32 and f64: the `gemm` crate ([`portable`]), AVX-512 where present;
//! - bf16: oneDNN ([`onednn`]) on AMX or AVX512-BF16 where the library is
//!   installed, else widened to f32;
//! - f16: widened to f32 (F16C), as PyTorch's CPU matmul also runs it:
//!   no library within reach multiplies f16 faster on this CPU.
//!
//! `ALCOVE_ACCEL_CPU=portable` turns oneDNN off (the fallback, tested).

pub mod onednn;
pub mod portable;
pub mod reference;

use crate::elements::{from_f32, to_f32, view, with_out};
use crate::{DType, Op};
use onednn::{OneDnn, Shape};
pub use portable::{batched_matmul, matmul, relu};
pub use reference::{
    expected, max_relative_error, naive_matmul, naive_matmul_f64, sample, tolerance,
};

/// bf16 work up to which widening to f32 on the calling thread beats
/// handing the product to oneDNN's thread: waking a sleeping thread costs
/// 5-60 us on this machine's virtual CPUs, a 64^3 product widened ~10 us.
const SMALL_BF16_FLOPS: f64 = 2.0 * 64.0 * 64.0 * 64.0;

/// The variable that forces the portable path (`portable`).
pub const FORCE_ENV: &str = "ALCOVE_ACCEL_CPU";

/// This host's CPU paths.
pub struct Cpu {
    onednn: Result<&'static OneDnn, String>,
}

/// Which path ran an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuPath {
    /// The gemm crate (f32, f64) or 16-bit ReLU on bits.
    Portable,
    /// oneDNN (bf16 products).
    OneDnn,
    /// Widened to f32: f16, or bf16 that oneDNN is missing for or declined.
    Widened,
}

impl Cpu {
    /// The fastest paths this host has (loads and tunes oneDNN on first use,
    /// ~0.1 s), unless `ALCOVE_ACCEL_CPU=portable`.
    pub fn detect() -> Cpu {
        if std::env::var(FORCE_ENV).is_ok_and(|v| v == "portable") {
            return Cpu::portable(&format!("{FORCE_ENV}=portable"));
        }
        Cpu::with(OneDnn::get().map_err(|e| e.to_string()))
    }

    fn with(onednn: Result<&'static OneDnn, String>) -> Cpu {
        Cpu { onednn }
    }

    /// Whether bf16 runs through oneDNN (whose generated kernels need
    /// memory it can make executable: see [`crate::seccomp`]).
    pub fn uses_onednn(&self) -> bool {
        self.onednn.is_ok()
    }

    /// The `gemm` crate only, for every type; `why` is reported.
    pub fn portable(why: &str) -> Cpu {
        Cpu::with(Err(format!("oneDNN off: {why}")))
    }

    /// Which path runs `dtype` products, in words, for reports.
    pub fn path(&self, dtype: DType) -> String {
        let simd = simd_level();
        match (dtype, &self.onednn) {
            (DType::F32 | DType::F64, _) => format!("gemm crate ({simd})"),
            (DType::Bf16, Ok(d)) => {
                let jit = d
                    .jit_from_n
                    .map(|n| format!(", gemm:jit from n~{n}"))
                    .unwrap_or_default();
                format!("oneDNN {} ({}{jit})", d.version, d.implementation)
            }
            (DType::Bf16, Err(why)) => format!("widened to f32, gemm crate ({simd}); {why}"),
            (DType::F16, _) => format!("widened to f32, gemm crate ({simd})"),
        }
    }

    /// Runs `op` on operands given as bytes of its element type (lengths
    /// checked by the caller: at least [`Op::operand_bytes`]); says which
    /// path ran it.
    ///
    /// # Panics
    /// If an operand is shorter than `op` says.
    pub fn run(&self, op: &Op, a: &[u8], b: &[u8], c: &mut [u8]) -> CpuPath {
        let (na, nb, nc) = op.operands();
        match op.dtype() {
            DType::F32 => with_out::<f32, _>(c, nc, |c| real(op, &view(a, na), &view(b, nb), c)),
            DType::F64 => with_out::<f64, _>(c, nc, |c| real(op, &view(a, na), &view(b, nb), c)),
            DType::Bf16 | DType::F16 if matches!(op, Op::Relu { .. }) => {
                let nan = nan_test(op.dtype());
                with_out::<u16, _>(c, nc, |c| relu_bits(&view(a, na), c, nan))
            }
            DType::Bf16 if self.bf16_product(op, a, b, c) => return CpuPath::OneDnn,
            dtype => {
                let mut out = vec![0.0f32; nc];
                real(op, &to_f32(dtype, a, na), &to_f32(dtype, b, nb), &mut out);
                from_f32(dtype, c, &out);
                return CpuPath::Widened;
            }
        }
        CpuPath::Portable
    }

    /// A bf16 product through oneDNN; false if it could not run there or
    /// is too small to be worth the hand-over to oneDNN's thread.
    fn bf16_product(&self, op: &Op, a: &[u8], b: &[u8], c: &mut [u8]) -> bool {
        let Ok(dnn) = self.onednn else {
            return false;
        };
        if op.flops() <= SMALL_BF16_FLOPS {
            return false;
        }
        let shape = match *op {
            Op::Matmul { m, n, k, .. } => Shape { batch: 1, m, n, k },
            Op::BatchedMatmul { batch, m, n, k, .. } => Shape { batch, m, n, k },
            Op::Relu { .. } => return false,
        };
        let (na, nb, nc) = op.operands();
        with_out::<u16, _>(c, nc, |c| {
            dnn.batched_matmul(shape, &view(a, na), &view(b, nb), c)
                .unwrap_or(false)
        })
    }
}

/// An f32 or f64 operation on typed operands.
fn real<T: portable::Real>(op: &Op, a: &[T], b: &[T], c: &mut [T]) {
    match *op {
        Op::Matmul { m, n, k, .. } => matmul(m, n, k, a, b, c),
        Op::BatchedMatmul { batch, m, n, k, .. } => batched_matmul(batch, m, n, k, a, b, c),
        Op::Relu { .. } => relu(a, c),
    }
}

/// Which 16-bit patterns are NaN: (exponent mask, mantissa mask).
fn nan_test(dtype: DType) -> (u16, u16) {
    match dtype {
        DType::F16 => (0x7c00, 0x03ff),
        _ => (0x7f80, 0x007f),
    }
}

/// ReLU on the bits of a 16-bit float: negatives and NaN become +0, as
/// `f32::max(x, 0.0)` makes them.
fn relu_bits(a: &[u16], c: &mut [u16], (exponent, mantissa): (u16, u16)) {
    for (out, &x) in c.iter_mut().zip(a) {
        let nan = x & exponent == exponent && x & mantissa != 0;
        *out = if x & 0x8000 != 0 || nan { 0 } else { x };
    }
}

/// The widest SIMD the `gemm` crate dispatches to here.
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "AVX2+FMA";
        }
    }
    "baseline SIMD"
}

#[cfg(test)]
mod tests;
