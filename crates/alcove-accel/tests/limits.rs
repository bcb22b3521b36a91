//! A hostile client against the real accelerator service: each test tries
//! an attack through the socket protocol and checks that it was refused,
//! that the service did not pay for it, and that it keeps serving.

mod common;
use alcove_sys::unix::{sealed_memfd, SharedMapping};
use common::{ask, peak_rss, status_field, wait_ready, Service};
use serde_json::json;
use std::os::fd::{AsFd, OwnedFd};

const MIB: u64 = 1 << 20;

/// A sealed memfd of `len` bytes, every byte written (so no page is a hole).
fn written_memfd(len: usize) -> OwnedFd {
    let memfd = sealed_memfd(len).unwrap();
    let mut map = SharedMapping::new(memfd.as_fd(), len).unwrap();
    let ones = alcove_accel::accel::encode(alcove_accel::DType::F32, &vec![1.0; len / 4]);
    map.write(0, &ones);
    memfd
}

fn error(reply: &serde_json::Value) -> &str {
    assert_eq!(reply["ok"], false, "expected a refusal: {reply}");
    reply["error"].as_str().unwrap()
}

#[test]
fn a_sparse_memfd_declaring_huge_operands_is_refused_without_cost() {
    let service = Service::start();
    wait_ready(&service);
    let worker = service.worker_pid();
    // A generous grant: what stops this request must be that nothing was sent.
    let sock = service.connect_raw(&json!({ "placement": "cpu", "memory_bytes": 4u64 << 30 }));
    let before = peak_rss(worker);
    // 1 GiB that costs its sender nothing: a 512 MiB operand and room for the result, all holes.
    let len = 128usize << 20; // f32 elements
    let sparse = sealed_memfd(len * 8).unwrap();
    let body = json!({ "op": "relu", "len": len, "a": 0, "c": len * 4 }).to_string();
    let r = ask(&sock, &body, Some(&sparse));
    let after = peak_rss(worker);
    let message = error(&r);
    assert!(message.contains("not allocated"), "{r}");
    assert!(
        after - before < 64 * MIB,
        "the service's peak memory grew from {} MiB to {} MiB on a refused request",
        before / MIB,
        after / MIB
    );
    // The same connection still works.
    let memfd = written_memfd(32);
    let r = ask(&sock, r#"{"op":"relu","len":4,"a":0,"c":16}"#, Some(&memfd));
    assert_eq!(r["ok"], true, "{r}");
}

#[test]
fn requests_beyond_the_grant_are_refused() {
    let service = Service::start();
    let sock = service.connect_raw(&json!({ "placement": "cpu", "memory_bytes": MIB }));
    // 512 x 512 x 512 f32: a, b and c are 1 MiB each, 3 MiB in all, over the 1 MiB granted.
    let memfd = written_memfd(3 << 20);
    let over = r#"{"op":"matmul","m":512,"n":512,"k":512,"a":0,"b":1048576,"c":2097152}"#;
    let message = error(&ask(&sock, over, Some(&memfd))).to_owned();
    assert!(
        message.contains("memory limit") && message.contains("1048576"),
        "{message}"
    );
    // Offsets whose end overflows: refused, not wrapped.
    let wraps = r#"{"op":"matmul","m":2,"n":2,"k":2,"a":18446744073709551615,"b":0,"c":0}"#;
    assert!(error(&ask(&sock, wraps, Some(&memfd))).contains("do not fit"));
    // Within the grant: served on the same connection.
    let fits = r#"{"op":"matmul","m":128,"n":128,"k":128,"a":0,"b":65536,"c":131072}"#;
    let r = ask(&sock, fits, Some(&memfd));
    assert_eq!(r["ok"], true, "{r}");
}

#[test]
fn work_beyond_the_invocations_time_limit_is_refused() {
    let service = Service::start();
    // 2048^3 f32 takes this CPU a good fraction of a second or more: far
    // beyond a 20 ms time limit, well within a minute's.
    let memfd = written_memfd(48 << 20);
    let big = r#"{"op":"matmul","m":2048,"n":2048,"k":2048,"a":0,"b":16777216,"c":33554432}"#;
    let tight = service.connect_raw(&json!({
        "placement": "cpu", "memory_bytes": 1u64 << 30, "timeout_ms": 20
    }));
    let message = error(&ask(&tight, big, Some(&memfd))).to_owned();
    assert!(message.contains("time limit"), "{message}");
    std::thread::sleep(std::time::Duration::from_millis(30));
    let small = written_memfd(48);
    let tiny = r#"{"op":"matmul","m":2,"n":2,"k":2,"a":0,"b":16,"c":32}"#;
    let message = error(&ask(&tight, tiny, Some(&small))).to_owned();
    assert!(message.contains("time limit"), "{message}");
    let roomy = service.connect_raw(&json!({
        "placement": "cpu", "memory_bytes": 1u64 << 30, "timeout_ms": 600_000
    }));
    let r = ask(&roomy, big, Some(&memfd));
    assert_eq!(r["ok"], true, "{r}");
}

/// The cgroup directory of `pid` that holds `controller`'s files.
fn cgroup_dir(pid: u32, controller: &str) -> std::path::PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let v2 = controllers.is_empty();
        let wanted = v2 || controllers.split(',').any(|c| c == controller);
        if !wanted {
            continue;
        }
        for m in mountinfo.lines() {
            let fields: Vec<&str> = m.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-").unwrap();
            let (fstype, options) = (fields[sep + 1], fields[sep + 3]);
            let matches = if v2 {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && options.split(',').any(|o| o == controller)
            };
            let dir = std::path::Path::new(fields[4]).join(path.trim_start_matches('/'));
            if matches && dir.join(format!("{controller}.max")).exists() {
                return dir;
            }
            if matches && !v2 {
                return dir;
            }
        }
    }
    panic!("no {controller} cgroup for {pid} in {membership}");
}

#[test]
fn the_service_runs_confined_in_a_cgroup_of_its_own() {
    let service = Service::start_with(&["--memory-max", "1073741824", "--pids-max", "64"]);
    wait_ready(&service);
    let worker = service.worker_pid();
    assert_ne!(
        worker,
        service.child.id(),
        "the work runs in a child of its own"
    );
    assert_eq!(status_field(worker, "Seccomp"), "2", "a seccomp filter");
    assert_eq!(status_field(worker, "NoNewPrivs"), "1");
    assert_eq!(status_field(worker, "CapEff"), "0000000000000000");
    assert_eq!(status_field(worker, "CapPrm"), "0000000000000000");
    let uid = status_field(worker, "Uid");
    let id = alcove_accel::confine::SERVICE_ID.to_string();
    assert!(uid.split_whitespace().all(|u| u == id), "Uid: {uid}");

    let memory = cgroup_dir(worker, "memory");
    let limit = std::fs::read_to_string(memory.join("memory.max"))
        .or_else(|_| std::fs::read_to_string(memory.join("memory.limit_in_bytes")))
        .unwrap();
    assert_eq!(limit.trim(), "1073741824", "in {}", memory.display());
    let pids = cgroup_dir(worker, "pids");
    let max = std::fs::read_to_string(pids.join("pids.max")).unwrap();
    assert_eq!(max.trim(), "64", "in {}", pids.display());
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", service.child.id())).unwrap();
    assert!(
        !own.contains(memory.file_name().unwrap().to_str().unwrap()),
        "the supervising process stays outside: {own}"
    );

    // A flood of connections meets the task limit: those over it are
    // closed unanswered, those under it are served, and once the flood
    // ends the service answers new ones again.
    let socks: Vec<OwnedFd> = (0..100)
        .map(|_| service.connect_raw(&json!({ "placement": "cpu" })))
        .collect();
    let info = |sock: &OwnedFd| {
        alcove_sys::unix::send_with_fd(sock.as_fd(), br#"{"op":"info"}"#, None).is_ok()
            && matches!(alcove_sys::unix::recv_with_fd(sock.as_fd(), &mut [0u8; 65536]), Ok((n, _)) if n > 0)
    };
    let served = socks.iter().filter(|s| info(s)).count();
    assert!(
        served > 0 && served < 100,
        "{served} of 100 connections served"
    );
    let events = std::fs::read_to_string(pids.join("pids.events")).unwrap();
    assert!(
        events
            .lines()
            .any(|l| l.starts_with("max ") && l != "max 0"),
        "the task limit was never reached: {events}"
    );
    drop(socks);
    wait_ready(&service);

    // Closing the control socket ends the service and removes its cgroup.
    let mut service = service;
    drop(service.control.take());
    let status = service.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!memory.exists(), "{} is left behind", memory.display());
    assert!(!pids.exists(), "{} is left behind", pids.display());
}

#[test]
fn concurrent_requests_share_the_services_memory_instead_of_exhausting_it() {
    let limit = 256 * MIB;
    let service = Service::start_with(&["--memory-max", &limit.to_string()]);
    wait_ready(&service);
    let worker = service.worker_pid();
    // Each request holds 64 MiB in the service (its copy of a and its
    // result); eight at once are twice the service's whole limit.
    let len = 8usize << 20;
    let body = json!({ "op": "relu", "len": len, "a": 0, "c": len * 4 }).to_string();
    let barrier = std::sync::Barrier::new(8);
    let replies: Vec<serde_json::Value> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let memfd = written_memfd(len * 8);
                let sock =
                    service.connect_raw(&json!({ "placement": "cpu", "memory_bytes": limit }));
                let (body, barrier) = (&body, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    ask(&sock, body, Some(&memfd))
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for r in &replies {
        assert_eq!(r["ok"], true, "{r}");
    }
    assert_eq!(
        service.worker_pid(),
        worker,
        "the same worker served them all"
    );
    let oom = std::fs::read_to_string(cgroup_dir(worker, "memory").join("memory.oom_control"))
        .or_else(|_| std::fs::read_to_string(cgroup_dir(worker, "memory").join("memory.events")))
        .unwrap();
    assert!(
        oom.lines().any(|l| l == "oom_kill 0"),
        "the service's cgroup saw OOM kills: {oom}"
    );
}

#[test]
fn one_hostile_connection_does_not_disturb_another() {
    let service = Service::start();
    let good = service.connect_raw(&json!({ "placement": "cpu" }));
    let bad = service.connect_raw(&json!({ "placement": "cpu", "memory_bytes": 4u64 << 30 }));
    let memfd = written_memfd(48);
    let product = r#"{"op":"matmul","m":2,"n":2,"k":2,"a":0,"b":16,"c":32}"#;
    let sparse = sealed_memfd(1 << 30).unwrap();
    let attacks = [
        json!({ "op": "relu", "len": 1 << 27, "a": 0, "c": 1 << 29 }).to_string(),
        json!({ "op": "batched_matmul", "batch": 1u64 << 40, "m": 1, "n": 1, "k": 1 }).to_string(),
        r#"{"op":"matmul","m":-1}"#.to_owned(),
        "\u{0}".repeat(1000),
    ];
    for attack in &attacks {
        let r = ask(&bad, attack, Some(&sparse));
        assert_eq!(r["ok"], false, "{attack}: {r}");
        let r = ask(&good, product, Some(&memfd));
        assert_eq!(r["ok"], true, "after {attack}: {r}");
    }
    // A request whose sender leaves before the reply.
    alcove_sys::unix::send_with_fd(bad.as_fd(), product.as_bytes(), Some(memfd.as_fd())).unwrap();
    drop(bad);
    let r = ask(&good, product, Some(&memfd));
    assert_eq!(r["ok"], true, "{r}");
}
