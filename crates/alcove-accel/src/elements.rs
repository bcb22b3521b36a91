//! Operands as bytes of their element type: typed views over them (borrowed
//! when aligned), and conversions to and from f32 for the paths that
//! compute a narrow type in f32.

use crate::DType;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use std::borrow::Cow;

/// Plain numbers every bit pattern of which is a value.
pub(crate) trait Plain: Copy + Default + Send + Sync {}
impl Plain for f32 {}
impl Plain for f64 {}
impl Plain for f16 {}
impl Plain for bf16 {}
impl Plain for u16 {}

/// `len` values of `T` in `bytes`: borrowed when aligned (the usual case:
/// allocations and mappings are), else copied.
///
/// # Panics
/// If `bytes` holds fewer than `len` values (callers check lengths first).
pub(crate) fn view<T: Plain>(bytes: &[u8], len: usize) -> Cow<'_, [T]> {
    let bytes = &bytes[..len * std::mem::size_of::<T>()];
    // SAFETY: T is plain data (every bit pattern is a value), so any aligned
    // middle part of the bytes is a valid [T].
    let (head, middle, _) = unsafe { bytes.align_to::<T>() };
    if head.is_empty() && middle.len() == len {
        Cow::Borrowed(middle)
    } else {
        Cow::Owned(values(bytes, len))
    }
}

/// Runs `f` on `len` values of `T` over `out`: in place when aligned, else
/// through a buffer copied back.
pub(crate) fn with_out<T: Plain, R>(
    out: &mut [u8],
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let bytes = &mut out[..len * std::mem::size_of::<T>()];
    // SAFETY: as in `view`; every value the callee writes is plain data.
    let (head, middle, _) = unsafe { bytes.align_to_mut::<T>() };
    if head.is_empty() && middle.len() == len {
        return f(middle);
    }
    let mut buffer = vec![T::default(); len];
    let result = f(&mut buffer);
    store(bytes, &buffer);
    result
}

/// Reinterprets bytes as `T` values (copied: the bytes may be unaligned).
fn values<T: Plain>(bytes: &[u8], len: usize) -> Vec<T> {
    let mut out = vec![T::default(); len];
    let size = std::mem::size_of::<T>();
    assert!(bytes.len() >= len * size, "fewer bytes than values");
    // SAFETY: `out` holds len * size bytes and `bytes` at least that many
    // (asserted); T is plain data, for which every bit pattern is a value.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().cast::<u8>(), len * size)
    };
    out
}

fn store<T: Plain>(out: &mut [u8], data: &[T]) {
    let size = std::mem::size_of_val(data);
    assert!(out.len() >= size, "fewer bytes than values");
    // SAFETY: `out` holds at least `size` bytes (asserted) and T is plain data.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().cast::<u8>(), out.as_mut_ptr(), size) };
}

/// `data` as bytes of `dtype` (for callers building operands).
pub fn encode(dtype: DType, data: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; data.len() * dtype.size()];
    from_f32(dtype, &mut out, data);
    out
}

/// Bytes of `dtype` as f32 values.
pub fn decode(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    to_f32(dtype, bytes, bytes.len() / dtype.size())
}

/// `len` values of `dtype` in `bytes`, widened (or, for f64, narrowed) to f32.
pub(crate) fn to_f32(dtype: DType, bytes: &[u8], len: usize) -> Vec<f32> {
    match dtype {
        DType::F32 => view::<f32>(bytes, len).into_owned(),
        DType::F64 => view::<f64>(bytes, len).iter().map(|&x| x as f32).collect(),
        DType::F16 => widen(&view::<f16>(bytes, len)),
        DType::Bf16 => widen(&view::<bf16>(bytes, len)),
    }
}

/// 16-bit floats as f32, with the CPU's conversion instructions (F16C)
/// where it has them.
fn widen<T: Plain>(x: &[T]) -> Vec<f32>
where
    [T]: HalfFloatSliceExt,
{
    let mut out = vec![0.0f32; x.len()];
    x.convert_to_f32_slice(&mut out);
    out
}

/// Writes `data` into `out` as values of `dtype` (rounded to nearest).
pub(crate) fn from_f32(dtype: DType, out: &mut [u8], data: &[f32]) {
    let len = data.len();
    match dtype {
        DType::F32 => store(out, data),
        DType::F64 => with_out::<f64, _>(out, len, |o| {
            o.iter_mut().zip(data).for_each(|(o, &x)| *o = f64::from(x))
        }),
        DType::F16 => with_out::<f16, _>(out, len, |o| o.convert_from_f32_slice(data)),
        DType::Bf16 => with_out::<bf16, _>(out, len, |o| o.convert_from_f32_slice(data)),
    }
}

/// One cache line: the unit [`AlignedBytes`] allocate in.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Zeroed bytes on a 64-byte boundary: AMX and AVX-512 kernels read
/// operands at that alignment ~15% faster (oneDNN bf16 at n=1024, measured
/// here), and the allocator gives large buffers only 16.
pub struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes, or `None` if they cannot be allocated.
    pub fn zeroed(len: usize) -> Option<AlignedBytes> {
        let mut lines = Vec::new();
        lines.try_reserve_exact(len.div_ceil(64)).ok()?;
        lines.resize(len.div_ceil(64), Line([0; 64]));
        Some(AlignedBytes { lines, len })
    }

    /// A copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> AlignedBytes {
        let mut out = AlignedBytes::zeroed(bytes.len()).expect("allocating a copy");
        out.copy_from_slice(bytes);
        out
    }
}

impl std::ops::Deref for AlignedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `lines` holds at least `len` initialised bytes (whole
        // lines, zeroed at allocation); u8 has no alignment requirement.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), self.len) }
    }
}
