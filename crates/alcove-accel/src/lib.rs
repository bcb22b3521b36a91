//! alcove-accel owns heterogeneous compute: the devices this host has (CPU
//! cores and SIMD; NVIDIA GPUs found at run time through the driver and
//! cuBLAS loaded dynamically), executors for the same operations on each
//! (matrix multiply, batched matrix multiply, an elementwise op), the cost
//! model that predicts each device's time for an operation, and the
//! scheduler that sends work where it finishes first.
//!
//! No GPU is the normal case and a clean state: [`devices::Gpus::discover`]
//! says why there is none.
//!
//! It also owns the accelerator service sandboxes reach ([`service`]),
//! which must never do work its caller's limits would not allow: each
//! request is bounded by the connection's grant ([`budget`]), and the
//! service runs confined ([`confine`], [`seccomp`]).

pub mod accel;
pub mod budget;
pub mod calibrate;
pub mod client;
pub mod confine;
pub mod cpu;
pub mod devices;
pub mod elements;
pub mod gpu;
pub mod model;
pub mod scheduler;
pub mod seccomp;
pub mod service;

/// What to compute. Matrices are row-major; `a` is m x k, `b` is k x n.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// `c = a * b`.
    Matmul {
        m: usize,
        n: usize,
        k: usize,
        dtype: DType,
    },
    /// `batch` independent products, operands packed one after another.
    BatchedMatmul {
        batch: usize,
        m: usize,
        n: usize,
        k: usize,
        dtype: DType,
    },
    /// `c = max(a, 0)` over `len` elements (ReLU).
    Relu { len: usize, dtype: DType },
}

/// Element types. Every device runs all four; how each is computed is in
/// [`cpu`] and [`gpu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    F16,
    Bf16,
}

impl DType {
    pub const ALL: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::Bf16];

    pub fn size(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }
}

impl Op {
    /// `batch` products of (m x k) by (k x n): a plain product when `batch` is 1.
    pub fn product(batch: usize, m: usize, n: usize, k: usize, dtype: DType) -> Op {
        if batch == 1 {
            Op::Matmul { m, n, k, dtype }
        } else {
            Op::BatchedMatmul {
                batch,
                m,
                n,
                k,
                dtype,
            }
        }
    }

    /// Floating-point operations it performs.
    pub fn flops(&self) -> f64 {
        match *self {
            Op::Matmul { m, n, k, .. } => 2.0 * m as f64 * n as f64 * k as f64,
            Op::BatchedMatmul { batch, m, n, k, .. } => {
                2.0 * batch as f64 * m as f64 * n as f64 * k as f64
            }
            Op::Relu { len, .. } => len as f64,
        }
    }

    /// Elements of `a`, `b` and `c`; `None` if they overflow.
    pub(crate) fn checked_operands(&self) -> Option<(usize, usize, usize)> {
        let mul = |x: usize, y: usize| x.checked_mul(y);
        match *self {
            Op::Matmul { m, n, k, .. } => Some((mul(m, k)?, mul(k, n)?, mul(m, n)?)),
            Op::BatchedMatmul { batch, m, n, k, .. } => Some((
                mul(batch, mul(m, k)?)?,
                mul(batch, mul(k, n)?)?,
                mul(batch, mul(m, n)?)?,
            )),
            Op::Relu { len, .. } => Some((len, 0, len)),
        }
    }

    /// Elements of `a`, `b` (none for ReLU) and `c`. Call [`Op::check`] first
    /// on untrusted dimensions.
    ///
    /// # Panics
    /// If the sizes overflow (which `check` refuses).
    pub fn operands(&self) -> (usize, usize, usize) {
        self.checked_operands()
            .expect("operand sizes overflow: check() refuses these")
    }

    /// Bytes of `a`, `b` and `c`.
    pub fn operand_bytes(&self) -> (usize, usize, usize) {
        let (a, b, c) = self.operands();
        let s = self.dtype().size();
        (a * s, b * s, c * s)
    }

    pub fn dtype(&self) -> DType {
        match *self {
            Op::Matmul { dtype, .. } | Op::BatchedMatmul { dtype, .. } | Op::Relu { dtype, .. } => {
                dtype
            }
        }
    }

    /// Bytes in (both operands) and out.
    pub fn bytes(&self) -> (u64, u64) {
        let (a, b, c) = self.operand_bytes();
        ((a + b) as u64, c as u64)
    }

    /// Whether the arguments make sense (non-zero, not absurdly large).
    pub fn check(&self) -> Result<(), String> {
        let dims: &[usize] = match self {
            Op::Matmul { m, n, k, .. } => &[*m, *n, *k],
            Op::BatchedMatmul { batch, m, n, k, .. } => &[*batch, *m, *n, *k],
            Op::Relu { len, .. } => &[*len],
        };
        if dims.contains(&0) {
            return Err("every dimension must be at least 1".into());
        }
        // cuBLAS takes 32-bit dimensions.
        if dims.iter().any(|&d| d > i32::MAX as usize) {
            return Err(format!("a dimension over {}", i32::MAX));
        }
        let total = self.checked_operands().and_then(|(a, b, c)| {
            a.checked_add(b)?
                .checked_add(c)?
                .checked_mul(self.dtype().size())
        });
        match total {
            Some(bytes) if bytes <= 64 << 30 => Ok(()),
            _ => Err("operands over 64 GiB".into()),
        }
    }
}

/// Which kind of device runs an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Gpu,
}
