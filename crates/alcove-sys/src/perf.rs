//! perf_event_open(2), for the software cpu-clock events BPF programs sample on.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// The head of the kernel's `struct perf_event_attr` (PERF_ATTR_SIZE_VER8).
#[repr(C)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    rest: [u64; 14],
}

/// Opens a cpu-clock software event on `cpu` for every task, firing every
/// `period_ns` of CPU time, for a BPF program to attach to.
pub fn cpu_clock(cpu: i32, period_ns: u64) -> io::Result<OwnedFd> {
    const PERF_TYPE_SOFTWARE: u32 = 1;
    const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
    let attr = PerfEventAttr {
        type_: PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: PERF_COUNT_SW_CPU_CLOCK,
        sample_period: period_ns,
        rest: [0; 14],
    };
    // SAFETY: `attr` is a valid perf_event_attr (version 8, 136 bytes, all
    // later fields zero: enabled, no sampling output) for the duration of the
    // call; pid -1 with a cpu means every task on that CPU.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1,
            cpu,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    let fd = crate::cvt(fd)?;
    // SAFETY: perf_event_open returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
