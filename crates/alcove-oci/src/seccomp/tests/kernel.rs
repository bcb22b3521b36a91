//! Filters installed for real. Each case re-runs this test binary as a
//! child (only `probe`, with the case in the environment): the child sets
//! no_new_privs, installs a filter on its test thread, makes the calls
//! and prints what they returned as `@probe key=value` lines, which the
//! parent checks. A filter cannot be removed, so it never runs in the
//! parent.

use super::cases::{podman_profile, PODMAN_CAPS};
use super::*;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const CASE: &str = "ALCOVE_SECCOMP_PROBE";
const DIR: &str = "ALCOVE_SECCOMP_DIR";

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn install_in_probe(p: &LinuxSeccomp) -> Option<OwnedFd> {
    let compiled = compile(p).unwrap();
    alcove_sys::process::set_no_new_privs().unwrap();
    install(&compiled).unwrap()
}

/// What a probe child does; returns at once in an ordinary test run.
#[test]
fn probe() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var(DIR).unwrap());
    match case.as_str() {
        "rules" => probe_rules(&dir),
        "notify" => probe_notify(&dir),
        "podman" => probe_podman(),
        op if op.starts_with("op ") => probe_op(&op[3..]),
        act if act.starts_with("die ") => {
            install_in_probe(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["getppid"], "action": &act[4..]}]})));
            println!("@probe ppid={}", std::os::unix::process::parent_id());
        }
        other => panic!("no probe {other}"),
    }
}

fn spawn(case: &str, dir: &std::path::Path) -> std::process::Child {
    // module_path! is "alcove_oci::seccomp::tests::kernel"; libtest names
    // tests without the crate.
    let path = module_path!().split_once("::").unwrap().1;
    Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("{path}::probe"),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CASE, case)
        .env(DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The probe's `key=value` lines.
fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit_once("@probe ").map(|(_, kv)| kv.to_string()))
        .collect()
}

fn run_probe(case: &str) -> (Output, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = spawn(case, dir.path()).wait_with_output().unwrap();
    let found = lines(&out);
    (out, found)
}

fn probe_rules(dir: &std::path::Path) {
    let blocked = std::fs::File::open("/dev/null").unwrap();
    let other = std::fs::File::open("/dev/null").unwrap();
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS},
        {"names": ["getpid", "sched_yield"], "action": "SCMP_ACT_LOG"},
        {"names": ["fcntl"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EAGAIN, "args": [
            {"index": 0, "value": blocked.as_raw_fd(), "op": "SCMP_CMP_EQ"},
            {"index": 1, "value": libc::F_DUPFD_CLOEXEC, "op": "SCMP_CMP_EQ"}]},
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES, "args": [
            {"index": 1, "value": 0o002, "valueTwo": 0o002, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EFBIG, "args": [
            {"index": 1, "value": 7, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
        {"names": ["readlink"], "action": "SCMP_ACT_TRACE", "errnoRet": 5},
        {"names": ["not_a_syscall", "arm_fadvise64_64"], "action": "SCMP_ACT_KILL_PROCESS"}]}));
    assert!(install_in_probe(&p).is_none());
    let pid = std::process::id();
    std::thread::yield_now();
    println!("@probe getpid={}", pid > 0);
    println!("@probe getcwd={}", errno_of(std::env::current_dir()));
    println!("@probe dup_blocked={}", errno_of(blocked.try_clone()));
    println!("@probe dup_other={}", errno_of(other.try_clone()));
    let mkdir =
        |name: &str, mode| errno_of(std::fs::DirBuilder::new().mode(mode).create(dir.join(name)));
    println!("@probe mkdir_777={}", mkdir("a", 0o777));
    println!("@probe mkdir_755={}", mkdir("b", 0o755));
    let mut f = &other;
    for off in [7u64, 8, 9] {
        println!(
            "@probe seek_{off}={}",
            errno_of(f.seek(SeekFrom::Start(off)))
        );
    }
    println!(
        "@probe readlink={}",
        errno_of(std::fs::read_link("/proc/self/exe"))
    );
}

#[test]
fn rules_act_on_real_syscalls() {
    let (out, found) = run_probe("rules");
    assert!(out.status.success(), "{out:?}");
    let expect = [
        "getpid=true",
        "getcwd=38",
        "dup_blocked=11",
        "dup_other=0",
        "mkdir_777=13",
        "mkdir_755=0",
        "seek_7=27",
        "seek_8=0",
        "seek_9=27",
        // SECCOMP_RET_TRACE with no tracer attached fails the call with ENOSYS.
        "readlink=38",
    ];
    assert_eq!(found, expect, "{}", String::from_utf8_lossy(&out.stderr));
}

const OP_DATUM: u64 = 0x1_0000_0005;
const OP_MASK: u64 = 0x00ff_00ff_0000_000f;

fn probe_op(op: &str) {
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EFBIG, "args": [
            {"index": 1, "value": if op == "SCMP_CMP_MASKED_EQ" { OP_MASK } else { OP_DATUM },
             "valueTwo": OP_DATUM, "op": op}]}]}));
    let mut null = std::fs::File::open("/dev/null").unwrap();
    install_in_probe(&p);
    // /dev/null accepts any offset, so only the filter can refuse one.
    for &off in &VALUES {
        println!(
            "@probe {off:#x}={}",
            errno_of(null.seek(SeekFrom::Start(off)))
        );
    }
}

#[test]
fn every_comparison_in_the_kernel() {
    for op in OPS {
        let (out, found) = run_probe(&format!("op {op}"));
        assert!(out.status.success(), "{op}: {out:?}");
        let expect: Vec<String> = VALUES
            .iter()
            .map(|&v| {
                let hit = match op {
                    "SCMP_CMP_NE" => v != OP_DATUM,
                    "SCMP_CMP_LT" => v < OP_DATUM,
                    "SCMP_CMP_LE" => v <= OP_DATUM,
                    "SCMP_CMP_EQ" => v == OP_DATUM,
                    "SCMP_CMP_GE" => v >= OP_DATUM,
                    "SCMP_CMP_GT" => v > OP_DATUM,
                    _ => v & OP_MASK == OP_DATUM,
                };
                format!("{v:#x}={}", if hit { libc::EFBIG } else { 0 })
            })
            .collect();
        assert_eq!(found, expect, "{op}");
    }
}

#[test]
fn kill_and_trap_end_the_process() {
    for act in ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP"] {
        let (out, found) = run_probe(&format!("die {act}"));
        assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{act}: {out:?}");
        assert!(found.is_empty(), "{act}: {found:?}");
    }
    let (out, found) = run_probe("die SCMP_ACT_ALLOW");
    assert!(out.status.success() && found.len() == 1, "{out:?}");
}

const STATE: &[u8] =
    br#"{"ociVersion":"1.0.2","fds":["seccompFd"],"pid":1,"metadata":"m","state":{}}"#;

fn probe_notify(dir: &std::path::Path) {
    let agent = dir.join("agent.sock");
    let p = profile(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": agent,
        "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
        "syscalls": [{"names": ["getppid", "getcwd"], "action": "SCMP_ACT_NOTIFY"}]}),
    );
    let sock = std::os::unix::net::UnixStream::connect(&agent).unwrap();
    let listener = install_in_probe(&p).expect("a listener");
    send_listener(sock.as_fd(), listener, STATE).unwrap();
    println!("@probe ppid={}", std::os::unix::process::parent_id());
    println!("@probe getcwd={}", errno_of(std::env::current_dir()));
}

/// Waits (at most ten seconds) for the next notification.
fn next_notification(listener: BorrowedFd<'_>) -> alcove_sys::seccomp::Notification {
    let mut fds = [libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let ready = alcove_sys::fd::poll(&mut fds, Some(Duration::from_secs(10))).unwrap();
    assert_eq!(ready, 1, "no notification came");
    alcove_sys::seccomp::notif_recv(listener).unwrap()
}

#[test]
fn notify_hands_calls_to_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let agent = std::os::unix::net::UnixListener::bind(dir.path().join("agent.sock")).unwrap();
    let mut child = spawn("notify", dir.path());
    agent.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match agent.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                    let _ = child.kill();
                    panic!("the probe never connected: {:?}", child.wait_with_output());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let mut buf = [0u8; 4096];
    let (n, listener) = alcove_sys::unix::recv_with_fd(stream.as_fd(), &mut buf).unwrap();
    assert_eq!(&buf[..n], STATE, "one message with the state");
    let listener = listener.expect("the listener came with it");
    let first = next_notification(listener.as_fd());
    assert_eq!(first.nr as i64, libc::SYS_getppid);
    assert_eq!(first.arch, AUDIT_ARCH_X86_64);
    alcove_sys::seccomp::notif_send(listener.as_fd(), first.id, 4242, 0, 0).unwrap();
    let second = next_notification(listener.as_fd());
    assert_eq!(second.nr as i64, libc::SYS_getcwd);
    alcove_sys::seccomp::notif_send(listener.as_fd(), second.id, 0, libc::EACCES, 0).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(lines(&out), ["ppid=4242", "getcwd=13"]);
}

fn probe_podman() {
    // Without CAP_SYS_CHROOT chroot is refused with EPERM; getcwd, taken
    // out of the list, falls to the default (ENOSYS).
    let caps: Vec<&str> = PODMAN_CAPS
        .into_iter()
        .filter(|c| *c != "CAP_SYS_CHROOT")
        .collect();
    let p = profile(podman_profile(&caps, &["getcwd"]).unwrap());
    install_in_probe(&p);
    println!("@probe chroot={}", errno_of(std::os::unix::fs::chroot("/")));
    println!("@probe getcwd={}", errno_of(std::env::current_dir()));
    let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    let err = alcove_sys::process::execve(c"/bin/true", &argv, &envp);
    panic!("execve failed: {err}");
}

#[test]
fn podmans_profile_runs_true() {
    if podman_profile(&PODMAN_CAPS, &[]).is_none() {
        eprintln!("skipped: podman's profile is not installed");
        return;
    }
    let (out, found) = run_probe("podman");
    assert_eq!(found, ["chroot=1", "getcwd=38"], "{out:?}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "/bin/true ran under the filter: {out:?}"
    );
}
