//! The accelerator service: sandboxed functions reach the accelerator
//! through a SOCK_SEQPACKET socket alcove passes in. Each request is a small
//! JSON message with a sealed memfd attached that holds the operands and
//! room for the result; the service copies the operands out of it, runs the
//! operation where the connection's placement allows, writes the result
//! into the same memfd, and answers with a JSON message. Operands never
//! travel through the socket.
//!
//! Nothing a client declares is taken on trust: a request's operands and
//! result must fit in the memfd and in the connection's grant (its
//! function's memory limit), the operands must have been written (a sparse
//! memfd's holes cost its sender nothing), the work must end within the
//! invocation's time limit by the model's estimate, and the service's own
//! copies are reserved from its memory budget before they are allocated.
//! Every refusal is an error reply on that connection only.

use crate::accel::{Accel, Placement, Plan};
use crate::budget::{working_set, MemoryBudget, DEFAULT_GRANT_BYTES, DEFAULT_GRANT_MS};
use crate::elements::AlignedBytes;
use crate::{DType, DeviceKind, Op};
use alcove_sys::unix::{range_is_backed, recv_with_fd, sealed_size, send_with_fd};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Set by a client that ran the operation in its own process (work too
    /// small to be worth a call): never sent by the service.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceKind>,
    /// Which CPU path ran it (`portable`, `onednn`, `widened`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<crate::cpu::CpuPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// What the service keeps per connection, set by whoever made it (the
/// daemon, from the invoking function's limits).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Grant {
    pub placement: Placement,
    /// The function's memory limit: no request's operands and result may
    /// take more. [`DEFAULT_GRANT_BYTES`] when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The invocation's time limit, counted from when the connection is
    /// made: work the model says would end later is refused.
    /// [`DEFAULT_GRANT_MS`] when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl Grant {
    /// A grant with `placement` and the default limits.
    pub fn new(placement: Placement) -> Self {
        Grant {
            placement,
            memory_bytes: None,
            timeout_ms: None,
        }
    }
}

/// What every connection shares: the devices and the memory for requests.
pub struct Service {
    pub accel: Accel,
    pub memory: MemoryBudget,
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

/// One connection: its grant, turned into limits when it was made.
struct Connection<'a> {
    service: &'a Service,
    grant: Grant,
    memory_limit: u64,
    timeout: Duration,
    deadline: Instant,
}

impl<'a> Connection<'a> {
    fn new(service: &'a Service, grant: Grant) -> Self {
        let timeout = Duration::from_millis(grant.timeout_ms.unwrap_or(DEFAULT_GRANT_MS));
        let now = Instant::now();
        // A limit past what a clock can hold is as good as none: a year.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400));
        Connection {
            service,
            grant,
            memory_limit: grant.memory_bytes.unwrap_or(DEFAULT_GRANT_BYTES),
            timeout,
            deadline,
        }
    }

    fn answer(&self, request: &Request, memfd: Option<OwnedFd>) -> Result<Reply, String> {
        if request.op == "info" {
            let accel = &self.service.accel;
            let info = serde_json::json!({
                "placement": self.grant.placement, "memory_bytes": self.memory_limit,
                "cpu": accel.cpu, "gpus": accel.gpus,
                "cpu_paths": crate::DType::ALL.iter()
                    .map(|&d| (format!("{d:?}").to_lowercase(), accel.cpu_paths.path(d)))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            });
            return Ok(Reply {
                ok: true,
                info: Some(info),
                ..Reply::default()
            });
        }
        let op = request.to_op()?;
        let memfd = self.admit(&op, request, memfd)?;
        let plan = self.schedule(&op)?;
        let needed = working_set(&op, plan.device).unwrap_or(u64::MAX);
        let _held = self
            .service
            .memory
            .reserve(needed, self.deadline)
            .map_err(|e| e.to_string())?;
        let (la, lb, lc) = op.operand_bytes();
        let read = |offset: usize, len: usize| -> Result<AlignedBytes, String> {
            let mut bytes = zeroed(len)?;
            memfd
                .read_exact_at(&mut bytes, offset as u64)
                .map_err(|e| format!("reading the operands: {e}"))?;
            Ok(bytes)
        };
        let (a, b, mut c) = (read(request.a, la)?, read(request.b, lb)?, zeroed(lc)?);
        let ran = self
            .service
            .accel
            .run_planned(&op, plan, &a, &b, &mut c)
            .map_err(|e| e.to_string())?;
        memfd
            .write_all_at(&c, request.c as u64)
            .map_err(|e| format!("writing the result: {e}"))?;
        Ok(Reply {
            ok: true,
            device: Some(ran.device),
            path: ran.cpu_path,
            seconds: Some(ran.seconds),
            predicted: Some(ran.predicted),
            ..Reply::default()
        })
    }

    /// The request's memfd, once its operands and result are known to fit
    /// in it and in the grant, and its operands to have been written.
    fn admit(
        &self,
        op: &Op,
        request: &Request,
        memfd: Option<OwnedFd>,
    ) -> Result<std::fs::File, String> {
        let memfd = memfd.ok_or(
            "attach the operands: a memfd sealed against shrinking (F_SEAL_SHRINK)".to_owned(),
        )?;
        let size = match sealed_size(memfd.as_fd()) {
            Ok(Some(size)) => size,
            Ok(None) => {
                return Err("the memfd must be sealed against shrinking \
                            (fcntl F_ADD_SEALS, F_SEAL_SHRINK)"
                    .into())
            }
            Err(e) => return Err(format!("the attached descriptor: {e}")),
        };
        let (la, lb, lc) = op.operand_bytes();
        let total = (la + lb + lc) as u64; // at most 64 GiB: `to_op` checked
        if total > self.memory_limit {
            return Err(format!(
                "the operands and result take {total} bytes, over this function's memory \
                 limit of {} bytes: use smaller operands, or deploy the function with more memory",
                self.memory_limit
            ));
        }
        let fits = |off: usize, len: usize| off.checked_add(len).is_some_and(|end| end <= size);
        if !(fits(request.a, la) && fits(request.b, lb) && fits(request.c, lc)) {
            return Err(format!(
                "the operands (a {la}, b {lb}, c {lc} bytes at offsets {}, {}, {}) do not fit \
                 in the {size}-byte memfd",
                request.a, request.b, request.c
            ));
        }
        // The result's pages too: written into holes, they would be charged
        // to the service rather than to the function that asked.
        for (name, offset, len) in [
            ("a", request.a, la),
            ("b", request.b, lb),
            ("c", request.c, lc),
        ] {
            match range_is_backed(memfd.as_fd(), offset as u64, len as u64) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(format!(
                        "region {name} ({len} bytes at offset {offset}) is not allocated: the \
                         memfd has a hole there; write the operands and fallocate the result before sending"
                    ))
                }
                Err(e) => return Err(format!("checking the memfd: {e}")),
            }
        }
        Ok(std::fs::File::from(memfd))
    }

    /// Where `op` runs, once the model says it ends within the time left.
    fn schedule(&self, op: &Op) -> Result<Plan, String> {
        let plan = self
            .service
            .accel
            .plan(op, self.grant.placement)
            .map_err(|e| e.to_string())?;
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "this invocation's time limit ({:.3} s) is used up",
                self.timeout.as_secs_f64()
            ));
        }
        if plan.predicted > left.as_secs_f64() {
            let device = match plan.device {
                DeviceKind::Cpu => "CPU",
                DeviceKind::Gpu => "GPU",
            };
            return Err(format!(
                "the {device} would take about {:.3} s, more than the {:.3} s left of this \
                 invocation's time limit: split the work, or raise the function's timeout",
                plan.predicted,
                left.as_secs_f64()
            ));
        }
        Ok(plan)
    }

    fn reply(&self, message: &[u8], memfd: Option<OwnedFd>) -> Reply {
        let request = match serde_json::from_slice::<Request>(message) {
            Ok(request) => request,
            Err(e) => return fail(format!("the request is not valid JSON: {e}")),
        };
        // A panic is a bug, but it must cost this request only. (Where
        // panics abort, as in alcove's release builds, the process ends and
        // the daemon starts a new one on the next connection.)
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.answer(&request, memfd))) {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => fail(error),
            Err(_) => fail("the accelerator service failed on this request (a bug)".into()),
        }
    }
}

/// `len` zero bytes, or an error where the allocator has no room.
fn zeroed(len: usize) -> Result<AlignedBytes, String> {
    AlignedBytes::zeroed(len)
        .ok_or_else(|| format!("the accelerator service cannot allocate {len} bytes"))
}

/// Serves one connection until its other end closes.
pub fn serve_connection(service: &Service, grant: Grant, conn: OwnedFd) {
    let connection = Connection::new(service, grant);
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, memfd) = match recv_with_fd(conn.as_fd(), &mut buf) {
            Ok((0, _)) | Err(_) => return,
            Ok(got) => got,
        };
        let reply = connection.reply(&buf[..n], memfd);
        let bytes = serde_json::to_vec(&reply)
            .unwrap_or_else(|_| br#"{"ok":false,"error":"the reply did not serialize"}"#.to_vec());
        if send_with_fd(conn.as_fd(), &bytes, None).is_err() {
            return;
        }
    }
}

/// Reads connections from `control`: each message is a [`Grant`] with the
/// connection's socket attached. Returns when `control` closes (its owner,
/// the daemon, is gone), so the service never outlives it.
pub fn serve_control(service: Arc<Service>, control: OwnedFd) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut refused = 0u64;
    loop {
        let (n, conn) = match recv_with_fd(control.as_fd(), &mut buf) {
            Ok((0, _)) | Err(_) => return,
            Ok(got) => got,
        };
        let (Ok(grant), Some(conn)) = (serde_json::from_slice::<Grant>(&buf[..n]), conn) else {
            continue;
        };
        let service = Arc::clone(&service);
        let spawned =
            std::thread::Builder::new().spawn(move || serve_connection(&service, grant, conn));
        if let Err(e) = spawned {
            // At the task limit: this connection is closed unanswered; the
            // others, and the next ones once some end, are served. Logged
            // sparsely: a flood must not flood the daemon's log too.
            refused += 1;
            if refused.is_power_of_two() {
                eprintln!("alcove accel: refused {refused} connection(s) so far: cannot start a thread: {e}");
            }
        }
    }
}
