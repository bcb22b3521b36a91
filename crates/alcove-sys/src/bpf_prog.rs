//! bpf(2) for programs built in-process from raw instructions: loading one,
//! and attaching it to, listing and detaching it from a cgroup (the OCI
//! runtime's cgroup v2 device filter). No libbpf: the instructions come from
//! the caller, as runc and crun build theirs.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `BPF_PROG_TYPE_CGROUP_DEVICE` from `enum bpf_prog_type`.
pub const PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE` from `enum bpf_attach_type`.
pub const ATTACH_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: other programs may stay attached beside this one
/// (in this cgroup and below); each must allow an access for it to pass.
pub const F_ALLOW_MULTI: u32 = 1 << 1;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    /// Opcode: class, size or source, and operation bits.
    pub code: u8,
    /// Destination register in the low nibble, source register in the high.
    pub regs: u8,
    /// Signed jump or memory offset.
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

impl BpfInsn {
    /// An instruction from its fields; registers are 0..=10.
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        BpfInsn {
            code,
            regs: (src << 4) | (dst & 0x0f),
            off,
            imm,
        }
    }
}

/// The head of `union bpf_attr` for BPF_PROG_LOAD, through `expected_attach_type`.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH and BPF_PROG_DETACH, through `replace_bpf_fd`.
#[repr(C)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// `union bpf_attr` for BPF_PROG_QUERY, through `prog_cnt` and its padding.
#[repr(C)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    pad: u32,
}

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Calls bpf(2) with `attr`, returning the non-negative result.
///
/// # Safety
/// `attr` must be the `union bpf_attr` layout `cmd` expects, and every
/// pointer inside it must be valid (for reads or writes, as `cmd` uses it)
/// for its stated length for the duration of the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller guarantees `attr` matches `cmd`; its size is passed
    // so the kernel reads no further than the struct (and zero-fills the rest).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    crate::cvt(ret)
}

/// Loads `insns` as a program of `prog_type` (for `expected_attach_type`),
/// under `license`. When `log` is non-empty the verifier writes its log there
/// (NUL-terminated), which is how a rejection is explained.
pub fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[BpfInsn],
    license: &std::ffi::CStr,
    name: &str,
    log: &mut [u8],
) -> io::Result<OwnedFd> {
    let insn_cnt = u32::try_from(insns.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
    let mut prog_name = [0u8; 16];
    // The kernel takes up to 15 bytes of [A-Za-z0-9_.]; others are dropped.
    for (slot, b) in prog_name.iter_mut().zip(
        name.bytes()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
            .take(15),
    ) {
        *slot = b;
    }
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: if log.is_empty() { 0 } else { log_size },
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type,
    };
    // SAFETY: `attr` is the BPF_PROG_LOAD layout; `insns` (insn_cnt entries
    // of the kernel's 8-byte bpf_insn) and the NUL-terminated `license` are
    // borrowed for the call; `log` is writable for `log_size` bytes or absent.
    let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr)? };
    // SAFETY: BPF_PROG_LOAD returned a fresh descriptor (O_CLOEXEC) we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches `prog` to the cgroup open at `cgroup` for `attach_type`, with
/// `flags` (for example [`F_ALLOW_MULTI`]). The cgroup keeps the program
/// alive; `prog` may be closed afterwards.
pub fn prog_attach(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
    flags: u32,
) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: flags,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is the BPF_PROG_ATTACH layout and holds no pointers; the
    // borrows keep both descriptors open for the call.
    unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }.map(drop)
}

/// Detaches `prog` from the cgroup open at `cgroup` for `attach_type`.
pub fn prog_detach(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: 0,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is the BPF_PROG_DETACH layout and holds no pointers; the
    // borrows keep both descriptors open for the call.
    unsafe { bpf(BPF_PROG_DETACH, &mut attr) }.map(drop)
}

/// The ids of the programs attached directly to the cgroup open at `cgroup`
/// for `attach_type` (not those inherited from its ancestors).
pub fn prog_query(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    // A cgroup holds at most 64 programs per attach type (BPF_CGROUP_MAX_PROGS).
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        pad: 0,
    };
    // SAFETY: `attr` is the BPF_PROG_QUERY layout; `prog_ids` points at
    // `ids`, writable for `prog_cnt` u32 entries for the call.
    unsafe { bpf(BPF_PROG_QUERY, &mut attr)? };
    let count = (attr.prog_cnt as usize).min(ids.len());
    Ok(ids[..count].to_vec())
}

/// Opens the loaded program with id `id`.
pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdAttr {
        prog_id: id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: `attr` is the BPF_PROG_GET_FD_BY_ID layout and holds no pointers.
    let fd = unsafe { bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)? };
    // SAFETY: BPF_PROG_GET_FD_BY_ID returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<BpfInsn>(), 8);
        let insn = BpfInsn::new(0xb4, 0, 3, -1, 7);
        assert_eq!(insn.regs, 0x30);
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(std::mem::size_of::<QueryAttr>(), 32);
    }
}
