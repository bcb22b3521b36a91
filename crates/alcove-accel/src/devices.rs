//! What this host has: CPU cores and SIMD features, and NVIDIA GPUs found at
//! run time. The driver (libcuda) and cuBLAS are loaded dynamically, so
//! alcove builds and runs without CUDA; a host without them reports why.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct CpuInfo {
    pub model: String,
    /// Threads this process may run on.
    pub cores: usize,
    pub simd: Vec<&'static str>,
}

impl CpuInfo {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = Some(cpuinfo.as_str())
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut simd = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("sse4.2") {
                simd.push("sse4.2");
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                simd.push("avx2");
            }
            if std::arch::is_x86_feature_detected!("fma") {
                simd.push("fma");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                simd.push("avx512f");
            }
            // The bf16 paths' instructions, from the kernel's flags (AMX
            // detection is not stable in std).
            let flags: Vec<&str> = cpuinfo
                .lines()
                .find(|l| l.starts_with("flags"))
                .map(|l| l.split_whitespace().collect())
                .unwrap_or_default();
            for flag in ["avx512_bf16", "avx512_fp16", "amx_bf16"] {
                if flags.contains(&flag) {
                    simd.push(flag);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        simd.push("neon");
        CpuInfo { model, cores, simd }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub memory_bytes: usize,
    pub compute_capability: (i32, i32),
}

/// The GPUs alcove can use, or why there are none.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Gpus {
    Present { devices: Vec<GpuInfo> },
    Absent { reason: String },
}

impl Gpus {
    /// Looks for NVIDIA GPUs. Never fails: no driver, no device or no
    /// cuBLAS is the `Absent` state with its reason.
    pub fn discover() -> Self {
        let absent = |reason: String| Gpus::Absent { reason };
        // SAFETY: only tries to dlopen the driver library by its usual names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return absent("no NVIDIA driver: libcuda.so.1 is not installed".into());
        }
        let count = match cudarc::driver::CudaContext::device_count() {
            Ok(n) => n.max(0) as usize,
            Err(e) => return absent(format!("the NVIDIA driver did not start: {e:?}")),
        };
        if count == 0 {
            return absent("the NVIDIA driver sees no GPU".into());
        }
        // SAFETY: as above, for libcublas.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return absent(format!(
                "{count} GPU(s), but cuBLAS (libcublas.so.12) is not installed"
            ));
        }
        let mut devices = Vec::new();
        for ordinal in 0..count {
            match cudarc::driver::CudaContext::new(ordinal) {
                Ok(ctx) => devices.push(GpuInfo {
                    ordinal,
                    name: ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                    memory_bytes: ctx.total_mem().unwrap_or(0),
                    compute_capability: ctx.compute_capability().unwrap_or((0, 0)),
                }),
                Err(e) => return absent(format!("GPU {ordinal} could not be opened: {e:?}")),
            }
        }
        Gpus::Present { devices }
    }
}
