//! `alcove-probe`: run inside a sandbox to see what it allows. It tries the
//! calls a hostile program would, and the behaviours limits must stop, and
//! prints what happened. alcove's integration tests drive it; operators can run
//! it too (`alcove run --bind $(command -v alcove-probe):/probe -- /probe syscalls`).

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("syscalls") => syscalls(),
        Some("hog") => hog(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1 << 30)),
        Some("segv") => segv(),
        Some("getpid") => getpid(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000)),
        Some("spin") => loop {
            std::hint::black_box(0u64);
        },
        _ => {
            eprintln!("usage: alcove-probe syscalls | hog BYTES | segv | getpid N | spin");
            std::process::exit(2);
        }
    }
}

/// Tries each dangerous call and prints `name errno` (0 when it succeeded).
fn syscalls() {
    let mut out = std::io::stdout().lock();
    let null = std::ptr::null::<libc::c_void>();
    let calls: Vec<(&str, i32)> =
    // SAFETY: every call below is a raw syscall with null or constant
    // arguments that the kernel (or the seccomp filter) rejects before it
    // touches memory; none can corrupt this process.
    unsafe {
        vec![
            ("getpid", errno_of(libc::syscall(libc::SYS_getpid))),
            (
                "mount",
                errno_of(libc::syscall(
                    libc::SYS_mount,
                    c"none".as_ptr(),
                    c"/tmp".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    null,
                )),
            ),
            (
                "umount2",
                errno_of(libc::syscall(libc::SYS_umount2, c"/proc".as_ptr(), 0)),
            ),
            (
                "unshare_user",
                errno_of(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)),
            ),
            (
                "unshare_net",
                errno_of(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNET)),
            ),
            ("bpf", errno_of(libc::syscall(libc::SYS_bpf, 0, null, 0))),
            (
                "ptrace",
                errno_of(libc::syscall(
                    libc::SYS_ptrace,
                    libc::PTRACE_ATTACH,
                    1,
                    null,
                    null,
                )),
            ),
            (
                "keyctl",
                errno_of(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0)),
            ),
            (
                "kexec_load",
                errno_of(libc::syscall(libc::SYS_kexec_load, 0, 0, null, 0)),
            ),
            (
                "init_module",
                errno_of(libc::syscall(libc::SYS_init_module, null, 0, c"".as_ptr())),
            ),
            (
                "perf_event_open",
                errno_of(libc::syscall(libc::SYS_perf_event_open, null, 0, -1, -1, 0)),
            ),
            ("setns", errno_of(libc::syscall(libc::SYS_setns, 0, 0))),
            (
                "pivot_root",
                errno_of(libc::syscall(
                    libc::SYS_pivot_root,
                    c"/".as_ptr(),
                    c"/".as_ptr(),
                )),
            ),
            ("clone3", errno_of(libc::syscall(libc::SYS_clone3, null, 0))),
            (
                "clone_newuser",
                errno_of(libc::syscall(
                    libc::SYS_clone,
                    libc::CLONE_NEWUSER | libc::SIGCHLD,
                    0,
                    0,
                    0,
                    0,
                )),
            ),
            (
                "open_tree",
                errno_of(libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    c"/".as_ptr(),
                    0,
                )),
            ),
            (
                "io_uring_setup",
                errno_of(libc::syscall(libc::SYS_io_uring_setup, 1, null)),
            ),
            (
                "userfaultfd",
                errno_of(libc::syscall(libc::SYS_userfaultfd, 0)),
            ),
        ]
    };
    for (name, errno) in calls {
        let _ = writeln!(out, "{name} {errno}");
    }
}

/// The errno of a raw syscall's result, read at once (0 when it succeeded).
fn errno_of(ret: libc::c_long) -> i32 {
    if ret < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

/// Allocates and touches `bytes` in 1 MiB steps, reporting progress.
fn hog(bytes: usize) {
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut total = 0;
    while total < bytes {
        held.push(vec![1u8; 1 << 20]);
        total += 1 << 20;
        if total % (16 << 20) == 0 {
            println!("{} MiB", total >> 20);
        }
    }
    println!("allocated {} MiB", total >> 20);
}

/// Calls getpid `n` times with the raw syscall (libc may cache it).
fn getpid(n: u64) {
    let start = std::time::Instant::now();
    for _ in 0..n {
        // SAFETY: getpid takes no arguments.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    let ns = start.elapsed().as_nanos() as f64 / n.max(1) as f64;
    println!("called getpid {n} times, {ns:.1} ns each");
}

/// Dies of a real SIGSEGV (a fault, which even a pid namespace's init cannot ignore).
fn segv() {
    let p = std::hint::black_box(std::ptr::null_mut::<u8>());
    // SAFETY: deliberately not safe: the write faults and the kernel kills us.
    unsafe { p.write_volatile(1) };
}
