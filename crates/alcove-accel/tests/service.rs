//! The accelerator service over its real socket protocol: a spawned
//! `alcove-accel serve`, connections granted through its control socket,
//! operands in sealed memfds.

mod common;
use alcove_accel::accel::Placement;
use alcove_accel::service::Grant;
use alcove_sys::unix::{recv_with_fd, send_with_fd, seqpacket_pair, SharedMapping};
use common::Service;
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};

#[test]
fn products_through_shared_memory_match_and_errors_are_clear() {
    let service = Service::start();
    let client = service.connect(Placement::Auto);
    let info = client.info().unwrap();
    assert_eq!(info["placement"], "auto");
    let (m, n, k) = (3, 2, 4);
    let a: Vec<f32> = (0..m * k).map(|i| i as f32 - 5.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i as f32) * 0.5).collect();
    let op = alcove_accel::Op::Matmul {
        m,
        n,
        k,
        dtype: alcove_accel::DType::F32,
    };
    let encode = |x: &[f32]| alcove_accel::accel::encode(alcove_accel::DType::F32, x);
    let (c, reply) = client
        .run_in_service(&op, &encode(&a), &encode(&b))
        .unwrap();
    let c = alcove_accel::accel::decode(alcove_accel::DType::F32, &c);
    assert_eq!(c, alcove_accel::cpu::naive_matmul(m, n, k, &a, &b));
    assert!(reply.ok && !reply.local && reply.seconds.unwrap() > 0.0);
    // Work this small stays in the caller's process (placement auto), same answer.
    let (here, reply) = client.matmul_f32(m, n, k, &a, &b).unwrap();
    assert!(reply.local, "{reply:?}");
    assert_eq!(here, c);
    if info["gpus"]["state"] == "absent" {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the GPU placement check: {}",
            info["gpus"]["reason"]
        );
        assert_eq!(reply.device, Some(alcove_accel::DeviceKind::Cpu));
        let gpu_only = service.connect(Placement::Gpu);
        let err = gpu_only
            .matmul_f32(m, n, k, &a, &b)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("no GPU: "), "{err}");
    }

    // An unsealed memfd, a short memfd, an unknown op: each answered, the connection still usable.
    let unsealed = {
        // SAFETY: memfd_create with a literal name returns a new fd we own.
        let fd = unsafe { libc::memfd_create(c"plain".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: as above; the fd is ours alone.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        // SAFETY: ftruncate on our own fd.
        let truncated = unsafe { libc::ftruncate(raw, 4096) };
        assert_eq!(truncated, 0);
        fd
    };
    let (sock_ours, sock_theirs) = seqpacket_pair().unwrap();
    let grant = serde_json::to_vec(&Grant::new(Placement::Cpu)).unwrap();
    send_with_fd(
        service.control.as_ref().unwrap().as_fd(),
        &grant,
        Some(sock_theirs.as_fd()),
    )
    .unwrap();
    let ask = |body: &str, fd: Option<&OwnedFd>| -> serde_json::Value {
        send_with_fd(sock_ours.as_fd(), body.as_bytes(), fd.map(AsFd::as_fd)).unwrap();
        let mut buf = vec![0u8; 65536];
        let (n, _) = recv_with_fd(sock_ours.as_fd(), &mut buf).unwrap();
        serde_json::from_slice(&buf[..n]).unwrap()
    };
    let r = ask(
        r#"{"op":"matmul","m":2,"n":2,"k":2,"a":0,"b":16,"c":32}"#,
        Some(&unsealed),
    );
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("sealed against shrinking"),
        "{r}"
    );
    let small = alcove_sys::unix::sealed_memfd(16).unwrap();
    let r = ask(
        r#"{"op":"matmul","m":2,"n":2,"k":2,"a":0,"b":16,"c":32}"#,
        Some(&small),
    );
    assert!(r["error"].as_str().unwrap().contains("do not fit"), "{r}");
    let r = ask(r#"{"op":"convolve"}"#, None);
    assert!(r["error"].as_str().unwrap().contains("unknown op"), "{r}");
    let r = ask("not json", None);
    assert!(
        r["error"].as_str().unwrap().contains("not valid JSON"),
        "{r}"
    );
    let r = ask(r#"{"op":"matmul","m":0,"n":2,"k":2}"#, None);
    assert!(r["error"].as_str().unwrap().contains("at least 1"), "{r}");
    // Dimensions whose sizes overflow, or exceed what cuBLAS takes: refused, not wrapped.
    let huge = r#"{"op":"matmul","m":4294967296,"n":4294967296,"k":4294967296,"a":0,"b":0,"c":0}"#;
    let r = ask(huge, Some(&small));
    assert!(
        r["error"].as_str().unwrap().contains("a dimension over"),
        "{r}"
    );
    let wraps = r#"{"op":"batched_matmul","batch":4611686018427387904,"m":2,"n":2,"k":2,"a":0,"b":0,"c":0}"#;
    let r = ask(wraps, Some(&small));
    assert!(
        r["error"].as_str().unwrap().contains("a dimension over"),
        "{r}"
    );
    let big = r#"{"op":"batched_matmul","batch":2147483647,"m":2147483647,"n":2147483647,"k":2,"a":0,"b":0,"c":0}"#;
    let r = ask(big, Some(&small));
    assert!(r["error"].as_str().unwrap().contains("over 64 GiB"), "{r}");
    // The connection still works after the errors.
    let memfd = alcove_sys::unix::sealed_memfd(48).unwrap();
    let mut map = SharedMapping::new(memfd.as_fd(), 48).unwrap();
    let ones = alcove_accel::accel::encode(alcove_accel::DType::F32, &[1.0, 2.0, 3.0, 4.0]);
    map.write(0, &ones);
    map.write(16, &ones);
    let r = ask(
        r#"{"op":"matmul","m":2,"n":2,"k":2,"a":0,"b":16,"c":32}"#,
        Some(&memfd),
    );
    assert_eq!(r["ok"], true, "{r}");
    let mut out = vec![0u8; 16];
    map.read(32, &mut out);
    assert_eq!(
        alcove_accel::accel::decode(alcove_accel::DType::F32, &out),
        [7.0, 10.0, 15.0, 22.0]
    );
}

#[test]
fn the_service_exits_when_its_control_socket_closes() {
    let mut service = Service::start();
    drop(service.control.take());
    let status = service.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn every_type_runs_in_the_confined_worker_and_bf16_stays_on_onednn() {
    use alcove_accel::accel::{decode, encode};
    use alcove_accel::cpu::{expected, max_relative_error, sample, tolerance, CpuPath};
    use alcove_accel::{DType, Op};
    let service = Service::start();
    let client = service.connect(Placement::Cpu);
    let info = client.info().unwrap();
    let onednn = info["cpu_paths"]["bf16"]
        .as_str()
        .unwrap()
        .starts_with("oneDNN");
    // Shapes the worker has not seen (its calibration runs squares), so that
    // oneDNN generates new kernels under the worker's seccomp filter.
    let mut paths_on_onednn = Vec::new();
    for dtype in DType::ALL {
        for (batch, m, n, k) in [(1, 70, 90, 110), (3, 40, 66, 50)] {
            let op = Op::product(batch, m, n, k, dtype);
            let (na, nb, _) = op.operands();
            let (a, b) = (encode(dtype, &sample(na, 1)), encode(dtype, &sample(nb, 2)));
            let (c, reply) = client.run_in_service(&op, &a, &b).unwrap();
            assert!(reply.ok);
            let path = reply.path.unwrap();
            match dtype {
                DType::Bf16 if onednn => paths_on_onednn.push(path),
                DType::Bf16 | DType::F16 => assert_eq!(path, CpuPath::Widened),
                _ => assert_eq!(path, CpuPath::Portable),
            }
            let err = max_relative_error(&decode(dtype, &c), &expected(&op, &a, &b));
            assert!(err <= tolerance(dtype), "{op:?}: error {err}");
        }
    }
    if onednn {
        assert_eq!(
            paths_on_onednn,
            [CpuPath::OneDnn; 2],
            "oneDNN declined a product under the worker's filter"
        );
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the oneDNN-under-seccomp check: bf16 runs {}",
            info["cpu_paths"]["bf16"]
        );
    }
}
