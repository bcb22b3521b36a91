//! The accelerator: this host's devices, their calibrated profiles, and
//! the scheduler, behind one call that runs an operation where it is
//! placed (or where the model says it finishes first) and learns from it.

use crate::devices::{CpuInfo, Gpus};
use crate::gpu::{Gpu, GpuError};
use crate::model::DeviceProfile;
use crate::scheduler::Scheduler;
use crate::{calibrate, cpu, DType, DeviceKind, Op};
use half::{bf16, f16};
use std::sync::Mutex;
use std::time::Instant;

/// Where an operation may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Where the cost model predicts it finishes first.
    Auto,
    Cpu,
    Gpu,
}

#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    #[error("{0}")]
    Invalid(String),
    #[error("no GPU: {0}")]
    NoGpu(String),
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// Where an operation will run, decided before it runs.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub device: DeviceKind,
    /// The model's seconds for it on that device, queue excluded.
    pub predicted: f64,
}

/// What one run did.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Ran {
    pub device: DeviceKind,
    /// The model's prediction for the device it ran on, seconds.
    pub predicted: f64,
    pub seconds: f64,
}

pub struct Accel {
    pub cpu: CpuInfo,
    pub gpus: Gpus,
    gpu: Option<Mutex<Gpu>>,
    scheduler: Mutex<Scheduler>,
}

impl Accel {
    /// Finds the devices and calibrates the model (a second or two).
    pub fn start() -> Accel {
        let cpu = CpuInfo::detect();
        let mut gpus = Gpus::discover();
        let mut profiles = vec![calibrate::cpu_profile(&format!(
            "{} ({} threads)",
            cpu.model, cpu.cores
        ))];
        let mut gpu = None;
        if let Gpus::Present { devices } = &gpus {
            let first = &devices[0];
            match Gpu::open(first.ordinal)
                .and_then(|mut g| calibrate::gpu_profile(&mut g, &first.name).map(|p| (g, p)))
            {
                Ok((g, profile)) => {
                    profiles.push(profile);
                    gpu = Some(Mutex::new(g));
                }
                Err(e) => {
                    gpus = Gpus::Absent {
                        reason: format!("{} found but not usable: {e}", first.name),
                    }
                }
            }
        }
        Accel {
            cpu,
            gpus,
            gpu,
            scheduler: Mutex::new(Scheduler::new(profiles)),
        }
    }

    pub fn profiles(&self) -> Vec<DeviceProfile> {
        self.lock_scheduler().profiles().to_vec()
    }

    fn lock_scheduler(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        self.scheduler.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn has_gpu(&self) -> bool {
        self.gpu.is_some()
    }

    /// The device the model picks for `op`, and its predicted seconds.
    pub fn choose(&self, op: &Op) -> (DeviceKind, f64) {
        let s = self.lock_scheduler();
        let c = s.choose(op);
        (c.device.kind, c.predicted)
    }

    /// Runs `op` on operands given as raw bytes of its element type;
    /// `c` receives the result.
    pub fn run(
        &self,
        op: &Op,
        placement: Placement,
        a: &[u8],
        b: &[u8],
        c: &mut [u8],
    ) -> Result<Ran, AccelError> {
        let plan = self.plan(op, placement)?;
        self.run_planned(op, plan, a, b, c)
    }

    /// Where `op` will run under `placement`, and the model's time for it
    /// there (without the work queued ahead of it), so that a caller can
    /// refuse work before any of it is done.
    pub fn plan(&self, op: &Op, placement: Placement) -> Result<Plan, AccelError> {
        op.check().map_err(AccelError::Invalid)?;
        let device = match placement {
            Placement::Cpu => DeviceKind::Cpu,
            Placement::Gpu if self.gpu.is_none() => {
                return Err(AccelError::NoGpu(self.no_gpu_reason()))
            }
            Placement::Gpu => DeviceKind::Gpu,
            Placement::Auto => self.choose(op).0,
        };
        let index = usize::from(device == DeviceKind::Gpu);
        let predicted = self.lock_scheduler().predict(op, index).unwrap_or(0.0);
        Ok(Plan { device, predicted })
    }

    /// Runs `op` where `plan` (from [`Accel::plan`]) says.
    pub fn run_planned(
        &self,
        op: &Op,
        plan: Plan,
        a: &[u8],
        b: &[u8],
        c: &mut [u8],
    ) -> Result<Ran, AccelError> {
        op.check().map_err(AccelError::Invalid)?;
        let (na, nb, nc) = op.operand_bytes();
        if a.len() < na || b.len() < nb || c.len() < nc {
            return Err(AccelError::Invalid(format!(
                "operands too short: {} bytes in and {nc} out are needed",
                na + nb
            )));
        }
        let Plan { device, predicted } = plan;
        let index = usize::from(device == DeviceKind::Gpu);
        // Work waiting for a device counts against it for the next decision.
        self.lock_scheduler().enqueue(index, predicted);
        let started = Instant::now();
        match device {
            DeviceKind::Cpu => run_cpu(op, a, b, c),
            DeviceKind::Gpu => {
                let Some(gpu) = self.gpu.as_ref() else {
                    self.lock_scheduler().dequeue(index, predicted);
                    return Err(AccelError::NoGpu(self.no_gpu_reason()));
                };
                let mut gpu = gpu.lock().unwrap_or_else(|e| e.into_inner());
                let ran = run_gpu(&mut gpu, op, a, b, c);
                drop(gpu);
                if let Err(e) = ran {
                    self.lock_scheduler().dequeue(index, predicted);
                    return Err(e.into());
                }
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let mut scheduler = self.lock_scheduler();
        scheduler.dequeue(index, predicted);
        scheduler.observe(op, index, seconds);
        Ok(Ran {
            device,
            predicted,
            seconds,
        })
    }

    fn no_gpu_reason(&self) -> String {
        match &self.gpus {
            Gpus::Absent { reason } => reason.clone(),
            Gpus::Present { .. } => "the GPU could not be opened".into(),
        }
    }
}

/// Plain numbers every bit pattern of which is a value.
trait Plain: Copy + Default {}
impl Plain for f32 {}
impl Plain for f16 {}
impl Plain for bf16 {}

/// `len` values of `T` in `bytes`: borrowed when aligned (the usual case:
/// allocations and mappings are), else copied.
fn view<T: Plain>(bytes: &[u8], len: usize) -> std::borrow::Cow<'_, [T]> {
    let bytes = &bytes[..len * std::mem::size_of::<T>()];
    // SAFETY: T is plain data (every bit pattern is a value), so any aligned
    // middle part of the bytes is a valid [T].
    let (head, middle, _) = unsafe { bytes.align_to::<T>() };
    if head.is_empty() && middle.len() == len {
        std::borrow::Cow::Borrowed(middle)
    } else {
        std::borrow::Cow::Owned(values(bytes, len))
    }
}

/// Runs `f` on `len` values of `T` over `out`: in place when aligned, else
/// through a buffer copied back.
fn with_out<T: Plain, R>(out: &mut [u8], len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
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
fn values<T: Copy + Default>(bytes: &[u8], len: usize) -> Vec<T> {
    let mut out = vec![T::default(); len];
    let size = std::mem::size_of::<T>();
    // SAFETY: `out` holds len * size bytes and `bytes` at least that many
    // (checked by the caller); T is a plain numeric type (f32, f16, bf16)
    // for which every bit pattern is a value.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().cast::<u8>(), len * size)
    };
    out
}

fn store<T: Copy>(out: &mut [u8], data: &[T]) {
    let size = std::mem::size_of_val(data);
    // SAFETY: `out` holds at least `size` bytes (checked by the caller) and
    // T is plain data.
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

fn to_f32(dtype: DType, bytes: &[u8], len: usize) -> Vec<f32> {
    match dtype {
        DType::F32 => values::<f32>(bytes, len),
        DType::F16 => values::<f16>(bytes, len)
            .iter()
            .map(|x| x.to_f32())
            .collect(),
        DType::Bf16 => values::<bf16>(bytes, len)
            .iter()
            .map(|x| x.to_f32())
            .collect(),
    }
}

fn from_f32(dtype: DType, out: &mut [u8], data: &[f32]) {
    match dtype {
        DType::F32 => store(out, data),
        DType::F16 => store(
            out,
            &data.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(),
        ),
        DType::Bf16 => store(
            out,
            &data.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(),
        ),
    }
}

fn run_cpu(op: &Op, a: &[u8], b: &[u8], c: &mut [u8]) {
    let dtype = op.dtype();
    let (_, _, outs) = op.operands();
    if dtype == DType::F32 {
        with_out::<f32, _>(c, outs, |out| match *op {
            Op::Matmul { m, n, k, .. } => {
                cpu::matmul(m, n, k, &view(a, m * k), &view(b, k * n), out)
            }
            Op::BatchedMatmul { batch, m, n, k, .. } => cpu::batched_matmul(
                batch,
                m,
                n,
                k,
                &view(a, batch * m * k),
                &view(b, batch * k * n),
                out,
            ),
            Op::Relu { len, .. } => cpu::relu(&view(a, len), out),
        });
        return;
    }
    // f16 and bf16 compute in f32 on the CPU.
    let mut out = vec![0.0f32; outs];
    match *op {
        Op::Matmul { m, n, k, .. } => cpu::matmul(
            m,
            n,
            k,
            &to_f32(dtype, a, m * k),
            &to_f32(dtype, b, k * n),
            &mut out,
        ),
        Op::BatchedMatmul { batch, m, n, k, .. } => cpu::batched_matmul(
            batch,
            m,
            n,
            k,
            &to_f32(dtype, a, batch * m * k),
            &to_f32(dtype, b, batch * k * n),
            &mut out,
        ),
        Op::Relu { len, .. } => cpu::relu(&to_f32(dtype, a, len), &mut out),
    }
    from_f32(dtype, c, &out);
}

fn run_gpu(gpu: &mut Gpu, op: &Op, a: &[u8], b: &[u8], c: &mut [u8]) -> Result<(), GpuError> {
    macro_rules! typed {
        ($t:ty) => {{
            let (_, _, outs) = op.operands();
            with_out::<$t, _>(c, outs, |out| match *op {
                Op::Matmul { m, n, k, .. } => {
                    gpu.matmul::<$t>(m, n, k, &view(a, m * k), &view(b, k * n), out)
                }
                Op::BatchedMatmul { batch, m, n, k, .. } => gpu.batched_matmul::<$t>(
                    batch,
                    m,
                    n,
                    k,
                    &view(a, batch * m * k),
                    &view(b, batch * k * n),
                    out,
                ),
                Op::Relu { .. } => unreachable!("relu runs as f32"),
            })?;
        }};
    }
    match (op, op.dtype()) {
        (Op::Relu { len, .. }, dtype) => {
            let mut out = vec![0.0f32; *len];
            gpu.relu(&to_f32(dtype, a, *len), &mut out)?;
            from_f32(dtype, c, &out);
        }
        (_, DType::F32) => typed!(f32),
        (_, DType::F16) => typed!(f16),
        (_, DType::Bf16) => typed!(bf16),
    }
    Ok(())
}
