//! What one request may cost the service, and the memory all requests share.
//!
//! A request's operands and result must fit in its grant (the invoking
//! function's memory limit): the function itself had to be able to hold
//! them. The service's own copies and scratch for it, its working set, are
//! a small multiple of that, and are reserved from the service's memory
//! before anything is allocated, so that many connections at once wait for
//! each other instead of running the service's cgroup out of memory.

use crate::{DType, DeviceKind, Op};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

/// The memory budget of a connection whose function sets no memory limit.
pub const DEFAULT_GRANT_BYTES: u64 = 512 << 20;

/// The time budget of a connection whose function sets no time limit.
pub const DEFAULT_GRANT_MS: u64 = 60_000;

/// Host bytes the service holds while it runs `op` on `device`: its copies
/// of the operands and result, and the scratch its executors allocate
/// (f32 conversions of f16 and bf16 on the CPU; pinned staging, two tiles
/// per operand, on the GPU). `None` if it overflows, which [`Op::check`]
/// refuses anyway.
pub fn working_set(op: &Op, device: DeviceKind) -> Option<u64> {
    let (a, b, c) = op.checked_operands()?;
    let (a, b, c) = (a as u64, b as u64, c as u64);
    let s = op.dtype().size() as u64;
    let copies = a.checked_add(b)?.checked_add(c)?.checked_mul(s)?;
    // f16, and bf16 where oneDNN is missing, are widened to f32 on the CPU.
    let half = matches!(op.dtype(), DType::F16 | DType::Bf16);
    let f32s = |n: u64| n.checked_mul(4);
    let scratch = match (device, op) {
        (DeviceKind::Cpu, _) if !half => 0,
        // a and b converted to f32, the result computed in f32, then converted back.
        (DeviceKind::Cpu, _) => f32s(a.checked_add(b)?.checked_add(c)?)?.checked_add(c * s)?,
        // ReLU runs in f32 through two pinned buffers per side.
        (DeviceKind::Gpu, Op::Relu { .. }) => f32s(a.checked_add(c)?)?
            .checked_mul(3)?
            .checked_add(c * s)?,
        // Two pinned tiles per operand, each at most half of it (B whole).
        (DeviceKind::Gpu, _) => copies.checked_mul(2)?,
    };
    copies.checked_add(scratch)
}

/// Why a reservation was not made.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "the operation needs {needed} bytes of the accelerator service's memory, more than \
         all it has ({total}): use smaller operands"
    )]
    TooLarge { needed: u64, total: u64 },
    #[error("the accelerator service's memory stayed in use by other requests until this invocation's time limit: try again")]
    Busy,
}

/// The service's memory for requests, shared by every connection.
#[derive(Debug)]
pub struct MemoryBudget {
    total: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// Bytes held from a [`MemoryBudget`] until dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a MemoryBudget,
    bytes: u64,
}

impl MemoryBudget {
    pub fn new(total: u64) -> Self {
        MemoryBudget {
            total,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `bytes`, waiting while other requests hold too much, until
    /// `deadline` at the latest.
    pub fn reserve(&self, bytes: u64, deadline: Instant) -> Result<Reservation<'_>, BudgetError> {
        if bytes > self.total {
            return Err(BudgetError::TooLarge {
                needed: bytes,
                total: self.total,
            });
        }
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + bytes > self.total {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BudgetError::Busy);
            }
            used = self
                .freed
                .wait_timeout(used, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *used += bytes;
        Ok(Reservation {
            budget: self,
            bytes,
        })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.bytes;
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn working_sets_cover_copies_and_scratch() {
        let op = Op::Matmul {
            m: 4,
            n: 8,
            k: 2,
            dtype: DType::F32,
        };
        let copies = (4 * 2 + 2 * 8 + 4 * 8) * 4;
        assert_eq!(working_set(&op, DeviceKind::Cpu), Some(copies));
        assert_eq!(working_set(&op, DeviceKind::Gpu), Some(3 * copies));
        let half = Op::Relu {
            len: 10,
            dtype: DType::F16,
        };
        // Copies 2 x 10 x 2; f32 in and out 2 x 10 x 4; the f16 result 10 x 2.
        assert_eq!(working_set(&half, DeviceKind::Cpu), Some(40 + 80 + 20));
        let wraps = Op::BatchedMatmul {
            batch: usize::MAX / 2,
            m: 4,
            n: 4,
            k: 4,
            dtype: DType::F32,
        };
        assert_eq!(working_set(&wraps, DeviceKind::Cpu), None);
    }

    #[test]
    fn reservations_wait_for_each_other_and_refuse_the_impossible() {
        let budget = MemoryBudget::new(100);
        let soon = || Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            budget.reserve(101, soon()),
            Err(BudgetError::TooLarge { needed: 101, .. })
        ));
        let first = budget.reserve(60, soon()).unwrap();
        assert!(matches!(budget.reserve(60, soon()), Err(BudgetError::Busy)));
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let far = Instant::now() + Duration::from_secs(60);
                budget.reserve(60, far).map(|r| r.bytes)
            });
            std::thread::sleep(Duration::from_millis(20));
            assert!(!waiter.is_finished(), "it waits while the memory is held");
            drop(first);
            assert_eq!(waiter.join().unwrap().unwrap(), 60);
        });
        assert_eq!(budget.in_use(), 0);
    }
}
