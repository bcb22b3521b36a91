//! The accelerator: this host's devices, their calibrated profiles, and
//! the scheduler, behind one call that runs an operation where it is
//! placed (or where the model says it finishes first) and learns from it.

use crate::cpu::Cpu;
use crate::devices::{CpuInfo, Gpus};
use crate::elements::{from_f32, to_f32, view, with_out};
use crate::gpu::{Gpu, GpuError};
use crate::model::DeviceProfile;
use crate::scheduler::Scheduler;
use crate::{calibrate, DType, DeviceKind, Op};
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
    /// Which CPU path ran it (none on a GPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_path: Option<crate::cpu::CpuPath>,
}

pub struct Accel {
    pub cpu: CpuInfo,
    /// The CPU's paths (oneDNN for bf16 where installed).
    pub cpu_paths: Cpu,
    pub gpus: Gpus,
    gpu: Option<Mutex<Gpu>>,
    scheduler: Mutex<Scheduler>,
}

impl Accel {
    /// Finds the devices and calibrates the model (a second or two).
    pub fn start() -> Accel {
        let cpu = CpuInfo::detect();
        let cpu_paths = Cpu::detect();
        let mut gpus = Gpus::discover();
        let mut profiles = vec![calibrate::cpu_profile(
            &cpu_paths,
            &format!("{} ({} threads)", cpu.model, cpu.cores),
        )];
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
            cpu_paths,
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
        let mut cpu_path = None;
        match device {
            DeviceKind::Cpu => cpu_path = Some(self.cpu_paths.run(op, a, b, c)),
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
            cpu_path,
        })
    }

    fn no_gpu_reason(&self) -> String {
        match &self.gpus {
            Gpus::Absent { reason } => reason.clone(),
            Gpus::Present { .. } => "the GPU could not be opened".into(),
        }
    }
}

pub use crate::elements::{decode, encode};

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
        (_, DType::F64) => typed!(f64),
        (_, DType::F16) => typed!(f16),
        (_, DType::Bf16) => typed!(bf16),
    }
    Ok(())
}
