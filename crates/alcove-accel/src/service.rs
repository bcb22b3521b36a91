//! The accelerator service: sandboxed functions reach the accelerator
//! through a SOCK_SEQPACKET socket alcove passes in. Each request is a small
//! JSON message with a sealed memfd attached that holds the operands and
//! room for the result; the service maps it, runs the operation where the
//! connection's placement allows, writes the result into the same memory,
//! and answers with a JSON message. Operands never travel through the socket.

use crate::accel::{Accel, Placement};
use crate::{DType, DeviceKind, Op};
use alcove_sys::unix::{recv_with_fd, sealed_size, send_with_fd, SharedMapping};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

/// One request. Offsets are byte offsets into the attached memfd.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Request {
    /// `matmul`, `batched_matmul`, `relu`, or `info`.
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<DType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<usize>,
    #[serde(default)]
    pub a: usize,
    #[serde(default)]
    pub b: usize,
    #[serde(default)]
    pub c: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// What the service keeps per connection, set by whoever made it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Grant {
    pub placement: Placement,
}

const MAX_MESSAGE: usize = 64 << 10;

impl Request {
    pub fn to_op(&self) -> Result<Op, String> {
        let dtype = self.dtype.unwrap_or(DType::F32);
        let need =
            |v: Option<usize>, name: &str| v.ok_or_else(|| format!("{} needs {name}", self.op));
        let op = match self.op.as_str() {
            "matmul" => Op::Matmul {
                m: need(self.m, "m")?,
                n: need(self.n, "n")?,
                k: need(self.k, "k")?,
                dtype,
            },
            "batched_matmul" => Op::BatchedMatmul {
                batch: need(self.batch, "batch")?,
                m: need(self.m, "m")?,
                n: need(self.n, "n")?,
                k: need(self.k, "k")?,
                dtype,
            },
            "relu" => Op::Relu {
                len: need(self.len, "len")?,
                dtype,
            },
            other => {
                return Err(format!(
                    "unknown op {other:?}: use matmul, batched_matmul, relu or info"
                ))
            }
        };
        op.check()?;
        Ok(op)
    }
}

fn fail(error: String) -> Reply {
    Reply {
        ok: false,
        error: Some(error),
        ..Reply::default()
    }
}

fn answer(accel: &Accel, grant: Grant, request: &Request, memfd: Option<OwnedFd>) -> Reply {
    if request.op == "info" {
        let info = serde_json::json!({ "placement": grant.placement, "cpu": accel.cpu, "gpus": accel.gpus });
        return Reply {
            ok: true,
            info: Some(info),
            ..Reply::default()
        };
    }
    let op = match request.to_op() {
        Ok(op) => op,
        Err(e) => return fail(e),
    };
    let Some(memfd) = memfd else {
        return fail(
            "attach the operands: a memfd sealed against shrinking (F_SEAL_SHRINK)".into(),
        );
    };
    let size = match sealed_size(memfd.as_fd()) {
        Ok(Some(size)) => size,
        Ok(None) => {
            return fail(
                "the memfd must be sealed against shrinking (fcntl F_ADD_SEALS, F_SEAL_SHRINK)"
                    .into(),
            )
        }
        Err(e) => return fail(format!("the attached descriptor: {e}")),
    };
    let (la, lb, lc) = op.operand_bytes();
    let fits = |off: usize, len: usize| off.checked_add(len).is_some_and(|end| end <= size);
    if !(fits(request.a, la) && fits(request.b, lb) && fits(request.c, lc)) {
        return fail(format!("the operands (a {la}, b {lb}, c {lc} bytes at offsets {}, {}, {}) do not fit in the {size}-byte memfd", request.a, request.b, request.c));
    }
    let mut map = match SharedMapping::new(memfd.as_fd(), size) {
        Ok(m) => m,
        Err(e) => return fail(format!("mapping the operands: {e}")),
    };
    let (mut a, mut b, mut c) = (vec![0u8; la], vec![0u8; lb], vec![0u8; lc]);
    map.read(request.a, &mut a);
    map.read(request.b, &mut b);
    match accel.run(&op, grant.placement, &a, &b, &mut c) {
        Ok(ran) => {
            map.write(request.c, &c);
            Reply {
                ok: true,
                device: Some(ran.device),
                seconds: Some(ran.seconds),
                predicted: Some(ran.predicted),
                ..Reply::default()
            }
        }
        Err(e) => fail(e.to_string()),
    }
}

/// Serves one connection until its other end closes.
pub fn serve_connection(accel: &Accel, grant: Grant, conn: OwnedFd) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, memfd) = match recv_with_fd(conn.as_fd(), &mut buf) {
            Ok((0, _)) | Err(_) => return,
            Ok(got) => got,
        };
        let reply = match serde_json::from_slice::<Request>(&buf[..n]) {
            Ok(request) => answer(accel, grant, &request, memfd),
            Err(e) => fail(format!("the request is not valid JSON: {e}")),
        };
        let bytes = serde_json::to_vec(&reply).expect("a reply serializes");
        if send_with_fd(conn.as_fd(), &bytes, None).is_err() {
            return;
        }
    }
}

/// Reads connections from `control`: each message is a [`Grant`] with the
/// connection's socket attached. Returns when `control` closes (its owner,
/// the daemon, is gone), so the service never outlives it.
pub fn serve_control(accel: Arc<Accel>, control: OwnedFd) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, conn) = match recv_with_fd(control.as_fd(), &mut buf) {
            Ok((0, _)) | Err(_) => return,
            Ok(got) => got,
        };
        let (Ok(grant), Some(conn)) = (serde_json::from_slice::<Grant>(&buf[..n]), conn) else {
            continue;
        };
        let accel = Arc::clone(&accel);
        std::thread::spawn(move || serve_connection(&accel, grant, conn));
    }
}
