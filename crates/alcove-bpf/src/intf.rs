//! Rust mirrors of the layouts in bpf/intf.h. Keep both in step.

/// Mirrors `struct alcove_sandbox`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SandboxEntry {
    pub syscall_budget: u64,
    pub cpu_budget_ns: u64,
    pub syscalls: u64,
    pub cpu_ns: u64,
    pub flags: u32,
    pub armed: u32,
    pub killed: u64,
    pub denied: u64,
    pub reports: u64,
    pub allowed_syscalls: [u64; SYSCALL_BITS / 64],
    pub armed_ns: u64,
}

pub(crate) const TRACE_SYSCALLS: u32 = 1;
pub(crate) const LEARN: u32 = 1 << 1;
pub(crate) const SYSCALL_POLICY: u32 = 1 << 2;
/// Syscall numbers the allow-list bitmap covers.
pub(crate) const SYSCALL_BITS: usize = 512;

/// Mirrors `struct alcove_stats` (one CPU's share).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StatsEntry {
    pub syscalls: u64,
    pub ctx_switches: u64,
    pub page_faults: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub execs: u64,
}

/// Mirrors `struct alcove_syscall_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SyscallKey {
    pub cgroup_id: u64,
    pub nr: u32,
    pub pad: u32,
}

pub(crate) const FILENAME_LEN: usize = 128;
pub(crate) const ARGS_LEN: usize = 128;
pub(crate) const COMM_LEN: usize = 16;

/// Mirrors `struct alcove_dev_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DevKey {
    pub cgroup_id: u64,
    pub major: u32,
    pub minor: u32,
}

/// Mirrors `struct alcove_net4_key` (packed).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Net4Key {
    pub prefixlen: u32,
    pub cgroup_id: u64,
    pub addr: [u8; 4],
}

/// Mirrors `struct alcove_net6_key` (packed).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Net6Key {
    pub prefixlen: u32,
    pub cgroup_id: u64,
    pub addr: [u8; 16],
}

// `struct alcove_event` (312 bytes) is decoded field by field in events.rs.

/// Views a plain-old-data value as bytes, for map keys and values.
pub(crate) fn bytes_of<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is a repr(C) Copy type without padding-sensitive invariants;
    // reading its bytes is always defined for these integer-only structs.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
}

/// Reads a plain-old-data value from the start of `bytes`.
pub(crate) fn from_bytes<T: Copy + Default>(bytes: &[u8]) -> T {
    let mut value = T::default();
    let n = bytes.len().min(std::mem::size_of::<T>());
    // SAFETY: `value` is valid for writes of size_of::<T>() bytes, `n` does not
    // exceed it, and every bit pattern is valid for these integer-only structs.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut value as *mut T).cast::<u8>(), n)
    };
    value
}
