//! The seccomp filters the service's worker runs under once its devices are
//! open, built with seccompiler and installed on every thread (TSYNC), with
//! `no_new_privs`.
//!
//! Without a GPU the worker only receives messages and descriptors, reads
//! and writes memfds, allocates, computes and starts threads, so it gets an
//! allow-list: everything else (opening files, sockets, exec, namespaces,
//! new executable memory) answers ENOSYS, as if the kernel lacked it. glibc
//! falls back from clone3 (whose flags a filter cannot see) to clone on
//! ENOSYS, and clone is allowed only for threads. With oneDNN loaded (bf16
//! on AMX), which generates a kernel for each new product shape into pages
//! it makes read-write-execute with mprotect, that one call may make memory
//! executable; mmap still may not, so no file can be mapped as code.
//!
//! With a GPU the NVIDIA driver and CUDA need much more and never say
//! exactly what: ioctls on /dev/nvidia* (and /dev/nvidia-uvm, which CUDA may
//! open lazily), mmap of device and UVM memory, executable mappings for the
//! libraries cuBLAS and NVRTC load on first use, eventfds, poll, reading
//! /proc and /sys. So a worker with a GPU runs under a deny-list instead:
//! exec, ptrace and other processes' memory, mounts, namespaces, module and
//! BPF loading, keyrings, network sockets, io_uring (which bypasses seccomp),
//! identity and ownership changes, and file-system changes answer EPERM.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the accelerator's seccomp filter failed")]
    Build(#[source] seccompiler::BackendError),
    #[error("installing the accelerator's seccomp filter failed")]
    Install(#[source] seccompiler::Error),
}

const NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u64;

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(SeccompError::Build)
}

fn masked(arg: u8, mask: u64, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
    .map_err(SeccompError::Build)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conditions).map_err(SeccompError::Build)
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let filter =
        SeccompFilter::new(rules, mismatch, matched, arch()?).map_err(SeccompError::Build)?;
    BpfProgram::try_from(filter).map_err(SeccompError::Build)
}

/// The allow-list for a worker without a GPU.
/// The allow-list for a worker without a GPU; `jit` lets mprotect make
/// memory executable (for oneDNN's generated kernels).
pub fn cpu_filter(jit: bool) -> Result<BpfProgram, SeccompError> {
    let plain = [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_lseek,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_fcntl,
        libc::SYS_close,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_futex,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_sched_getaffinity,
        libc::SYS_sched_yield,
        libc::SYS_getrandom,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_tgkill,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_restart_syscall,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ];
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        plain.iter().map(|&nr| (nr, Vec::new())).collect();
    // Memory, but never new executable mappings (nor, without `jit`,
    // executable memory at all).
    let no_exec = rule(vec![masked(2, libc::PROT_EXEC as u64, 0)?])?;
    rules.insert(libc::SYS_mmap, vec![no_exec.clone()]);
    rules.insert(
        libc::SYS_mprotect,
        if jit { Vec::new() } else { vec![no_exec] },
    );
    // Threads, never processes or namespaces.
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![
            masked(0, thread, thread)?,
            masked(0, NAMESPACES, 0)?,
        ])?],
    );
    compile(
        rules,
        SeccompAction::Errno(libc::ENOSYS as u32),
        SeccompAction::Allow,
    )
}

/// The deny-list for a worker with a GPU, and the filter that sends
/// clone3 back to clone.
pub fn gpu_filters() -> Result<[BpfProgram; 2], SeccompError> {
    #[cfg(target_arch = "x86_64")]
    let legacy = [
        libc::SYS_open,
        libc::SYS_creat,
        libc::SYS_chmod,
        libc::SYS_chown,
        libc::SYS_lchown,
        libc::SYS_unlink,
        libc::SYS_rmdir,
        libc::SYS_mkdir,
        libc::SYS_mknod,
        libc::SYS_link,
        libc::SYS_symlink,
        libc::SYS_rename,
        libc::SYS_iopl,
        libc::SYS_ioperm,
    ];
    #[cfg(not(target_arch = "x86_64"))]
    let legacy: [i64; 0] = [];
    let denied = [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_kill,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_userfaultfd,
        libc::SYS_fanotify_init,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_adjtimex,
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_setgroups,
        libc::SYS_setfsuid,
        libc::SYS_setfsgid,
        libc::SYS_capset,
        libc::SYS_fchown,
        libc::SYS_fchownat,
        libc::SYS_fchmod,
        libc::SYS_fchmodat,
        libc::SYS_unlinkat,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_mkdirat,
        libc::SYS_mknodat,
        libc::SYS_linkat,
        libc::SYS_symlinkat,
        libc::SYS_truncate,
    ];
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = denied
        .iter()
        .chain(&legacy)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    // Local (unix) sockets only; CUDA's MPS client talks through one.
    rules.insert(
        libc::SYS_socket,
        vec![rule(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Ne,
            libc::AF_UNIX as u64,
        )
        .map_err(SeccompError::Build)?])?],
    );
    // clone for a thread is fine; with any namespace flag it is refused.
    let namespace_rules = (0..64)
        .map(|bit| 1u64 << bit)
        .filter(|flag| NAMESPACES & flag != 0)
        .map(|flag| rule(vec![masked(0, flag, flag)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, namespace_rules);
    let deny = compile(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
    )?;
    let clone3 = compile(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    Ok([deny, clone3])
}

/// Installs the filter for a worker with or without a GPU (and, without
/// one, with or without oneDNN's `jit`) on every thread of the process (and
/// `no_new_privs` with it). It cannot be removed.
pub fn install(gpu: bool, jit: bool) -> Result<(), SeccompError> {
    let programs = if gpu {
        gpu_filters()?.to_vec()
    } else {
        vec![cpu_filter(jit)?]
    };
    for program in &programs {
        seccompiler::apply_filter_all_threads(program).map_err(SeccompError::Install)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `probe` in a forked child under `programs` (installed on the
    /// child's only thread) and returns its exit code: the probe's verdict.
    fn in_child(programs: &[BpfProgram], probe: fn() -> i32) -> i32 {
        // SAFETY: the child only installs the prepared filters and makes
        // raw calls (no allocation, no locks) before _exit.
        let pid = unsafe { alcove_sys::process::fork() }.unwrap();
        if pid == 0 {
            for program in programs {
                if seccompiler::apply_filter(program).is_err() {
                    alcove_sys::process::exit_now(100);
                }
            }
            alcove_sys::process::exit_now(probe());
        }
        let mut status = 0;
        // SAFETY: `status` is a valid out-parameter; `pid` is our child.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(libc::WIFEXITED(status), "the probe died: {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// A call's return value and errno, read at once.
    fn outcome(ret: i64) -> (i64, Option<i32>) {
        (ret, std::io::Error::last_os_error().raw_os_error())
    }

    /// 0 if the call failed with `errno`, else a code naming the probe step.
    fn refused((ret, got): (i64, Option<i32>), errno: i32, step: i32) -> i32 {
        if ret == -1 && got == Some(errno) {
            0
        } else {
            step
        }
    }

    #[test]
    fn without_a_gpu_files_sockets_exec_and_executable_memory_are_unavailable() {
        let code = in_child(&[cpu_filter(false).unwrap()], || {
            // SAFETY: raw calls with valid literal arguments; results are only inspected.
            unsafe {
                let open = outcome(libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) as i64);
                let socket = outcome(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) as i64);
                let exec = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                let exec = outcome(if exec == libc::MAP_FAILED { -1 } else { 0 });
                let fork = outcome(libc::syscall(
                    libc::SYS_clone,
                    libc::SIGCHLD as i64,
                    0,
                    0,
                    0,
                    0,
                ));
                let checks = [
                    refused(open, libc::ENOSYS, 1),
                    refused(socket, libc::ENOSYS, 2),
                    refused(exec, libc::ENOSYS, 3),
                    refused(fork, libc::ENOSYS, 4),
                ];
                if let Some(&failed) = checks.iter().find(|&&c| c != 0) {
                    return failed;
                }
                let data = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if data == libc::MAP_FAILED || libc::getpid() <= 0 {
                    return 5;
                }
                0
            }
        });
        assert_eq!(code, 0, "probe step {code} was not refused as it should be");
    }

    #[test]
    fn with_onednn_only_mprotect_may_make_memory_executable() {
        for jit in [false, true] {
            let probe = if jit { rwx_allowed } else { rwx_refused };
            let code = in_child(&[cpu_filter(jit).unwrap()], probe);
            assert_eq!(code, 0, "jit {jit}: probe step {code} went the wrong way");
        }
    }

    /// mmap of executable memory refused; mprotect to RWX per `allowed`.
    fn rwx_probe(allowed: bool) -> i32 {
        // SAFETY: raw calls with valid literal arguments on a fresh private
        // anonymous page; results are only inspected.
        unsafe {
            let rw = libc::PROT_READ | libc::PROT_WRITE;
            let exec = libc::mmap(
                std::ptr::null_mut(),
                4096,
                rw | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if refused(
                outcome(if exec == libc::MAP_FAILED { -1 } else { 0 }),
                libc::ENOSYS,
                1,
            ) != 0
            {
                return 1;
            }
            let page = libc::mmap(
                std::ptr::null_mut(),
                4096,
                rw,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if page == libc::MAP_FAILED {
                return 2;
            }
            let rwx = outcome(libc::mprotect(page, 4096, rw | libc::PROT_EXEC) as i64);
            match (allowed, rwx) {
                (true, (0, _)) => 0,
                (false, r) => refused(r, libc::ENOSYS, 3),
                _ => 4,
            }
        }
    }

    fn rwx_allowed() -> i32 {
        rwx_probe(true)
    }

    fn rwx_refused() -> i32 {
        rwx_probe(false)
    }

    #[test]
    fn with_a_gpu_the_dangerous_calls_are_refused_and_the_rest_allowed() {
        let code = in_child(&gpu_filters().unwrap(), || {
            // SAFETY: raw calls with valid literal arguments; results are only inspected.
            unsafe {
                // Should it run, /bin/false exits 1: the code of this step.
                let argv = [c"/bin/false".as_ptr(), std::ptr::null()];
                let exec = outcome(libc::execv(c"/bin/false".as_ptr(), argv.as_ptr()) as i64);
                let inet = outcome(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64);
                let kill = outcome(libc::kill(libc::getppid(), 0) as i64);
                let clone3 = outcome(libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0));
                let userns = outcome(libc::unshare(libc::CLONE_NEWUSER) as i64);
                let checks = [
                    refused(exec, libc::EPERM, 1),
                    refused(inet, libc::EPERM, 2),
                    refused(kill, libc::EPERM, 3),
                    refused(clone3, libc::ENOSYS, 4),
                    refused(userns, libc::EPERM, 5),
                ];
                if let Some(&failed) = checks.iter().find(|&&c| c != 0) {
                    return failed;
                }
                let unix = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                if unix < 0 || null < 0 {
                    return 6;
                }
                0
            }
        });
        assert_eq!(code, 0, "probe step {code} was not decided as it should be");
    }
}
