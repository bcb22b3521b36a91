//! The Rust client for the accelerator service, for programs inside a
//! sandbox: `Client::from_env()` takes the socket alcove passed in
//! (`ALCOVE_ACCEL_FD`).
//!
//! Work smaller than [`LOCAL_FLOPS`] runs in the caller's own process, on
//! the same portable kernels, unless the connection is placed on the GPU: a
//! call to the service costs more than such a product (a socket round trip
//! alone is ~4 us here; a 64x64x64 f32 product ~3 us), so the cost model's
//! answer for it is always "here".

use crate::service::{Reply, Request};
use crate::{DType, Op};
use alcove_sys::unix::{allocate, recv_with_fd, sealed_memfd, send_with_fd, SharedMapping};
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

pub struct Client {
    sock: OwnedFd,
    /// The connection's placement, asked once: whether small work may stay here.
    local_allowed: std::sync::OnceLock<bool>,
}

/// Work (flops) up to which an operation runs in the caller's process: a
/// 64x64x64 product.
pub const LOCAL_FLOPS: f64 = 2.0 * 64.0 * 64.0 * 64.0;

fn other(e: impl ToString) -> io::Error {
    io::Error::other(e.to_string())
}

impl Client {
    pub fn new(sock: OwnedFd) -> Client {
        Client {
            sock,
            local_allowed: std::sync::OnceLock::new(),
        }
    }

    /// The socket alcove passed in; an error says how to get one.
    pub fn from_env() -> io::Result<Client> {
        let value = std::env::var("ALCOVE_ACCEL_FD").map_err(|_| {
            other("ALCOVE_ACCEL_FD is not set: deploy the function with --accel auto|cpu|gpu")
        })?;
        let fd: i32 = value.parse().map_err(|_| {
            other(format!(
                "ALCOVE_ACCEL_FD={value:?} is not a descriptor number"
            ))
        })?;
        // SAFETY: alcove passes this descriptor to the program for it alone;
        // from_env takes it once, and the caller does not close it elsewhere.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Client::new(sock))
    }

    fn call(&self, request: &Request, memfd: Option<&OwnedFd>) -> io::Result<Reply> {
        let bytes = serde_json::to_vec(request).map_err(other)?;
        send_with_fd(self.sock.as_fd(), &bytes, memfd.map(AsFd::as_fd))?;
        let mut buf = vec![0u8; 64 << 10];
        let (n, _) = recv_with_fd(self.sock.as_fd(), &mut buf)?;
        if n == 0 {
            return Err(other("the accelerator service closed the connection"));
        }
        serde_json::from_slice(&buf[..n]).map_err(other)
    }

    /// The devices and this connection's placement.
    pub fn info(&self) -> io::Result<serde_json::Value> {
        let reply = self.call(
            &Request {
                op: "info".into(),
                ..Request::default()
            },
            None,
        )?;
        reply
            .info
            .ok_or_else(|| other(reply.error.unwrap_or_default()))
    }

    /// Runs `op` on operands `a` and `b` (bytes of its element type) and
    /// returns the result's bytes and the service's reply.
    pub fn run(&self, op: &Op, a: &[u8], b: &[u8]) -> io::Result<(Vec<u8>, Reply)> {
        let (_, _, lc) = sizes(op, a, b)?;
        if op.flops() <= LOCAL_FLOPS && self.may_run_here()? {
            let started = std::time::Instant::now();
            let mut c = vec![0u8; lc];
            let path = local_cpu().run(op, a, b, &mut c);
            let reply = Reply {
                ok: true,
                local: true,
                device: Some(crate::DeviceKind::Cpu),
                path: Some(path),
                seconds: Some(started.elapsed().as_secs_f64()),
                ..Reply::default()
            };
            return Ok((c, reply));
        }
        self.run_in_service(op, a, b)
    }

    /// Whether this connection's placement lets work run on this CPU.
    fn may_run_here(&self) -> io::Result<bool> {
        if let Some(&allowed) = self.local_allowed.get() {
            return Ok(allowed);
        }
        let allowed = self.info()?["placement"] != "gpu";
        Ok(*self.local_allowed.get_or_init(|| allowed))
    }

    /// Runs `op` in the service, whatever its size.
    pub fn run_in_service(&self, op: &Op, a: &[u8], b: &[u8]) -> io::Result<(Vec<u8>, Reply)> {
        let (la, lb, lc) = sizes(op, a, b)?;
        let memfd = sealed_memfd(la + lb + lc)?;
        // Pages for the result too, charged here: the service writing it
        // then allocates nothing on this program's behalf.
        allocate(memfd.as_fd(), la + lb + lc)?;
        let mut map = SharedMapping::new(memfd.as_fd(), la + lb + lc)?;
        map.write(0, a);
        map.write(la, b);
        // A write to every page of the result: tmpfs reports pages that were
        // only fallocated as holes, and the service refuses holes.
        if lc > 0 {
            let (start, end) = (la + lb, la + lb + lc);
            for at in (start..end).step_by(4096).chain([end - 1]) {
                map.write(at, &[0]);
            }
        }
        let (kind, batch, m, n, k, len) = match *op {
            Op::Matmul { m, n, k, .. } => ("matmul", None, Some(m), Some(n), Some(k), None),
            Op::BatchedMatmul { batch, m, n, k, .. } => (
                "batched_matmul",
                Some(batch),
                Some(m),
                Some(n),
                Some(k),
                None,
            ),
            Op::Relu { len, .. } => ("relu", None, None, None, None, Some(len)),
        };
        let request = Request {
            op: kind.into(),
            dtype: Some(op.dtype()),
            batch,
            m,
            n,
            k,
            len,
            a: 0,
            b: la,
            c: la + lb,
        };
        let reply = self.call(&request, Some(&memfd))?;
        if !reply.ok {
            return Err(other(reply.error.clone().unwrap_or_default()));
        }
        let mut c = vec![0u8; lc];
        map.read(la + lb, &mut c);
        Ok((c, reply))
    }

    /// `a * b` for f32 row-major matrices (in this process when small).
    pub fn matmul_f32(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
    ) -> io::Result<(Vec<f32>, Reply)> {
        let op = Op::Matmul {
            m,
            n,
            k,
            dtype: DType::F32,
        };
        let (c, reply) = self.run(
            &op,
            &crate::accel::encode(DType::F32, a),
            &crate::accel::encode(DType::F32, b),
        )?;
        Ok((crate::accel::decode(DType::F32, &c), reply))
    }
}

/// The byte sizes of `op`'s operands and result, once `op` is sound and the
/// operands given are those sizes.
fn sizes(op: &Op, a: &[u8], b: &[u8]) -> io::Result<(usize, usize, usize)> {
    op.check().map_err(other)?;
    let (la, lb, lc) = op.operand_bytes();
    if a.len() != la || b.len() != lb {
        return Err(other(format!(
            "operands of {} and {} bytes; {op:?} takes {la} and {lb}",
            a.len(),
            b.len()
        )));
    }
    Ok((la, lb, lc))
}

/// The CPU path for work kept in the caller's process: the portable kernels
/// (no oneDNN to load in a sandbox for a product this small).
fn local_cpu() -> &'static crate::cpu::Cpu {
    static CPU: std::sync::OnceLock<crate::cpu::Cpu> = std::sync::OnceLock::new();
    CPU.get_or_init(|| crate::cpu::Cpu::portable("small work runs in the caller's process"))
}
