//! What a sandbox's commands cost the daemon, bounded: the output it keeps
//! for clients that attach later (per sandbox and across the daemon), and
//! the commands whose output it reads at once (each holds its descriptors).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// What one sandbox's commands keep in all, and what all of the daemon's
/// do: a sandbox's 256 running commands and 128 finished ones would
/// otherwise keep 384 MiB of the daemon's memory, none of it charged to
/// the sandbox. Past either, a command keeps less of its oldest output.
pub const KEPT_PER_SANDBOX: usize = 32 << 20;
pub const KEPT_IN_DAEMON: usize = 512 << 20;
/// What a sandbox keeps past the daemon's bound: the sandboxes that keep
/// more give way, not one that keeps little (before, 16 sandboxes at their
/// share left every other command only its latest chunk). It lets the
/// daemon keep this much more per sandbox at most.
pub const KEPT_FLOOR: usize = 256 << 10;
/// What a kept chunk costs besides its bytes (its `Arc`'s counts, its
/// slot in the queue, the allocator's rounding): a command that prints a
/// byte at a time must not keep 64 times what it is charged.
pub(super) const CHUNK_COST: usize = 64;
/// The memory kept output takes across the daemon.
static KEPT_ALL: AtomicUsize = AtomicUsize::new(0);

/// The output one sandbox's commands keep, in memory (bytes and [`CHUNK_COST`]s).
#[derive(Default)]
pub struct OutputBudget {
    kept: AtomicUsize,
    /// Its commands whose output the daemon reads now ([`ReadingSlot`]s).
    reading: AtomicUsize,
}

/// Commands of one sandbox whose output the daemon reads at once: counted
/// apart from its table of commands, which a reused pid overwrites.
pub const READING_PER_SANDBOX: usize = 256;

impl OutputBudget {
    pub(super) fn over(&self) -> bool {
        over(self.kept.load(Relaxed), KEPT_ALL.load(Relaxed))
    }

    pub(super) fn charge(&self, cost: usize) {
        self.kept.fetch_add(cost, Relaxed);
        KEPT_ALL.fetch_add(cost, Relaxed);
    }

    pub(super) fn refund(&self, cost: usize) {
        self.kept.fetch_sub(cost, Relaxed);
        KEPT_ALL.fetch_sub(cost, Relaxed);
    }

    /// The memory its commands' kept output takes now.
    pub fn kept(&self) -> usize {
        self.kept.load(Relaxed)
    }
}

/// Whether a sandbox keeping `kept` must let some go while the daemon's
/// sandboxes keep `all`.
fn over(kept: usize, all: usize) -> bool {
    kept > KEPT_PER_SANDBOX || (kept > KEPT_FLOOR && all > KEPT_IN_DAEMON)
}

/// One of the commands whose output the daemon reads, across its
/// sandboxes: each holds three of its descriptors (and a terminal's one)
/// until its output ends, so there are no more than its open-file limit
/// leaves room for, and the next is refused with why.
pub struct ReadingSlot {
    /// Its sandbox's, which the command's kept output is charged to.
    budget: Arc<OutputBudget>,
}

static READING: AtomicUsize = AtomicUsize::new(0);

impl ReadingSlot {
    pub fn take(budget: &Arc<OutputBudget>) -> Result<ReadingSlot, super::SandboxesError> {
        let (most, limit) = most_reading();
        if budget.reading.fetch_add(1, Relaxed) >= READING_PER_SANDBOX {
            budget.reading.fetch_sub(1, Relaxed);
            return Err(super::SandboxesError::Conflict(format!(
                "{READING_PER_SANDBOX} commands of this sandbox (or what they started) still \
                 hold their output open; wait for or kill some"
            )));
        }
        if READING.fetch_add(1, Relaxed) >= most {
            budget.reading.fetch_sub(1, Relaxed);
            READING.fetch_sub(1, Relaxed);
            return Err(super::SandboxesError::Busy(format!(
                "the daemon reads the output of {most} commands across its sandboxes already, \
                 as many as its open-file limit ({limit}) leaves room for: wait for some to \
                 end, or raise the limit (LimitNOFILE)"
            )));
        }
        Ok(ReadingSlot {
            budget: Arc::clone(budget),
        })
    }
}

impl ReadingSlot {
    /// Its sandbox's budget, for the command's kept output.
    pub(super) fn budget(&self) -> Arc<OutputBudget> {
        Arc::clone(&self.budget)
    }
}

impl Drop for ReadingSlot {
    fn drop(&mut self) {
        READING.fetch_sub(1, Relaxed);
        self.budget.reading.fetch_sub(1, Relaxed);
    }
}

/// How many commands' output the daemon may read at once, and its
/// open-file limit: a quarter of what the limit leaves after 1,024 for
/// everything else (sandboxes, connections, files), at least 64.
fn most_reading() -> (usize, u64) {
    static MOST: std::sync::OnceLock<(usize, u64)> = std::sync::OnceLock::new();
    *MOST.get_or_init(|| {
        let limit = alcove_sys::process::open_files_limit().unwrap_or(1024);
        let most = usize::try_from(limit.saturating_sub(1024) / 4).unwrap_or(usize::MAX);
        (most.clamp(64, 1 << 20), limit)
    })
}

#[cfg(test)]
mod tests {
    use super::{OutputBudget, ReadingSlot};
    use std::sync::Arc;

    #[test]
    fn past_the_daemons_bound_the_sandboxes_that_keep_more_give_way() {
        use super::{over, KEPT_FLOOR, KEPT_IN_DAEMON, KEPT_PER_SANDBOX};
        let full = KEPT_IN_DAEMON + 1;
        assert!(
            !over(KEPT_FLOOR, full),
            "a sandbox at the floor was squeezed"
        );
        assert!(over(KEPT_FLOOR + 1, full));
        assert!(!over(KEPT_PER_SANDBOX, KEPT_IN_DAEMON), "under both bounds");
        assert!(over(KEPT_PER_SANDBOX + 1, 0), "its own bound holds alone");
    }

    /// The daemon-wide count is one for the whole test binary: one test at a time.
    static READING_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn reading_test() -> std::sync::MutexGuard<'static, ()> {
        // Room for more than one sandbox's share, where the hard limit allows.
        let _ = alcove_sys::process::raise_open_files_limit();
        READING_TESTS.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn one_sandbox_reads_no_more_than_its_share_of_commands() {
        let _one = reading_test();
        let (most, limit) = super::most_reading();
        if most <= super::READING_PER_SANDBOX {
            eprintln!(
                "SKIPPED one_sandbox_reads_no_more_than_its_share_of_commands: the open-file \
                 limit ({limit}) leaves the daemon-wide bound ({most}) under one sandbox's share"
            );
            return;
        }
        let budget = Arc::new(OutputBudget::default());
        let held: Vec<_> = (0..super::READING_PER_SANDBOX)
            .map(|_| ReadingSlot::take(&budget).unwrap())
            .collect();
        let refused = ReadingSlot::take(&budget)
            .err()
            .expect("refused past its share");
        assert_eq!(refused.code(), "conflict", "{refused}");
        // Another sandbox is not held back by this one's.
        assert!(ReadingSlot::take(&Arc::new(OutputBudget::default())).is_ok());
        drop(held);
        assert!(ReadingSlot::take(&budget).is_ok());
    }

    #[test]
    fn commands_past_the_open_file_limits_room_are_refused_with_why() {
        let _one = reading_test();
        let mut held = Vec::new();
        let refused = loop {
            // Across sandboxes: each within its own share.
            let budget = Arc::new(OutputBudget::default());
            match ReadingSlot::take(&budget) {
                Ok(slot) => held.push(slot),
                Err(e) => break e,
            }
            assert!(held.len() <= 1 << 20, "never refused");
        };
        assert_eq!(refused.code(), "daemon_busy");
        assert!(refused.to_string().contains("open-file limit"), "{refused}");
        held.pop();
        let budget = Arc::new(OutputBudget::default());
        assert!(
            ReadingSlot::take(&budget).is_ok(),
            "a slot given back is not taken again"
        );
    }
}
