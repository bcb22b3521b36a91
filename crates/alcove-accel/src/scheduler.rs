//! The scheduler: for each operation, the device with the earliest
//! predicted finish (its queued work plus the model's time, corrected by
//! what runs of the same kind and size actually took, in the spirit of
//! StarPU's history-based models).

use crate::model::DeviceProfile;
use crate::{DType, Op};
use std::collections::HashMap;

/// How much each new observation moves the correction (in log space).
const LEARNING_RATE: f64 = 0.3;

/// A decision and what it was based on.
#[derive(Debug, Clone)]
pub struct Choice<'a> {
    pub index: usize,
    pub device: &'a DeviceProfile,
    /// Predicted seconds to finish on the chosen device (queue included).
    pub predicted: f64,
    /// Every device that can run it: (index, predicted seconds).
    pub candidates: Vec<(usize, f64)>,
}

pub struct Scheduler {
    profiles: Vec<DeviceProfile>,
    /// ln(observed / modelled) by (device, dtype, size class).
    corrections: HashMap<(usize, DType, i32), f64>,
    /// Seconds of work already queued on each device.
    queued: Vec<f64>,
    /// Whether operands arrive in pinned buffers.
    pub pinned: bool,
}

/// Operations within a factor of two of work share a history.
fn size_class(op: &Op) -> i32 {
    op.flops().max(1.0).log2().floor() as i32
}

impl Scheduler {
    pub fn new(profiles: Vec<DeviceProfile>) -> Self {
        let queued = vec![0.0; profiles.len()];
        Scheduler {
            profiles,
            corrections: HashMap::new(),
            queued,
            pinned: true,
        }
    }

    pub fn profiles(&self) -> &[DeviceProfile] {
        &self.profiles
    }

    /// The model's time for `op` on device `i`, corrected by history, without queue.
    pub fn predict(&self, op: &Op, i: usize) -> Option<f64> {
        let base = self.profiles.get(i)?.predict(op, self.pinned)?.total();
        let correction = self
            .corrections
            .get(&(i, op.dtype(), size_class(op)))
            .copied()
            .unwrap_or(0.0);
        Some(base * correction.exp())
    }

    /// The device where `op` would finish first.
    ///
    /// # Panics
    /// If no device can run `op` (a CPU runs every f32 operation).
    pub fn choose(&self, op: &Op) -> Choice<'_> {
        let candidates: Vec<(usize, f64)> = (0..self.profiles.len())
            .filter_map(|i| self.predict(op, i).map(|t| (i, t + self.queued[i])))
            .collect();
        let &(index, predicted) = candidates
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("some device runs every operation");
        Choice {
            index,
            device: &self.profiles[index],
            predicted,
            candidates,
        }
    }

    /// Records that `op` took `seconds` on device `i`.
    pub fn observe(&mut self, op: &Op, i: usize, seconds: f64) {
        let Some(base) = self
            .profiles
            .get(i)
            .and_then(|p| p.predict(op, self.pinned))
        else {
            return;
        };
        let ratio = (seconds.max(1e-9) / base.total().max(1e-12)).ln();
        let entry = self
            .corrections
            .entry((i, op.dtype(), size_class(op)))
            .or_insert(ratio);
        *entry += LEARNING_RATE * (ratio - *entry);
    }

    /// Adds `seconds` of work to device `i`'s queue (work started or waiting).
    pub fn enqueue(&mut self, i: usize, seconds: f64) {
        if let Some(q) = self.queued.get_mut(i) {
            *q += seconds.max(0.0);
        }
    }

    /// Takes `seconds` of work off device `i`'s queue (work finished).
    pub fn dequeue(&mut self, i: usize, seconds: f64) {
        if let Some(q) = self.queued.get_mut(i) {
            *q = (*q - seconds.max(0.0)).max(0.0);
        }
    }
}
