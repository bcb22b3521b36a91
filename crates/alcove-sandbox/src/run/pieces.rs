//! The pieces a run holds: a pool slot or fresh cgroups, and the page the
//! child writes its phase timestamps to.

use crate::child::{PHASE_SLOTS, PROGRAM_STATUS_SLOT, SHARED_SLOTS};
use crate::pool;
use alcove_cgroup::SandboxCgroup;
use alcove_sys::process;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// The prefix of every fresh (unpooled) sandbox cgroup's name; `gc` removes
/// those whose alcove is gone.
pub(super) const CGROUP_PREFIX: &str = "sb-";

/// The cgroups and network namespace a run uses: a pool slot, or fresh ones.
pub(super) enum Pieces {
    Pooled(pool::Slot),
    Fresh(CgroupGuard),
}

impl Pieces {
    pub(super) fn cgroup(&self) -> &SandboxCgroup {
        match self {
            Pieces::Pooled(slot) => &slot.cgroup,
            Pieces::Fresh(guard) => guard.get(),
        }
    }

    pub(super) fn netns(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            Pieces::Pooled(slot) => slot.netns.as_ref().map(AsFd::as_fd),
            Pieces::Fresh(_) => None,
        }
    }

    pub(super) fn baseline(&self) -> pool::Baseline {
        match self {
            Pieces::Pooled(slot) => slot.baseline,
            Pieces::Fresh(_) => pool::Baseline {
                pids_exact: true,
                memory_exact: true,
                ..Default::default()
            },
        }
    }
}

/// Removes the cgroup on every path out of `run`, errors included.
pub(super) struct CgroupGuard(pub(super) Option<SandboxCgroup>);

impl CgroupGuard {
    pub(super) fn get(&self) -> &SandboxCgroup {
        self.0.as_ref().expect("present until removed")
    }

    pub(super) fn remove(mut self) -> Result<(), alcove_cgroup::CgroupError> {
        self.0.take().expect("present until removed").remove()
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cgroup) = self.0.take() {
            cgroup.kill_all();
            let _ = cgroup.remove();
        }
    }
}

/// A shared anonymous page the child writes its phase timestamps into.
pub(super) struct PhasePage {
    pub(super) ptr: *mut u64,
}

impl PhasePage {
    pub(super) fn new() -> std::io::Result<Self> {
        // SAFETY: an anonymous shared mapping with no address hint.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SHARED_SLOTS * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(PhasePage { ptr: ptr.cast() })
    }

    pub(super) fn read(&self) -> [u64; PHASE_SLOTS] {
        let mut out = [0; PHASE_SLOTS];
        for (i, slot) in out.iter_mut().enumerate() {
            // SAFETY: the mapping holds SHARED_SLOTS u64s and lives as long as self.
            *slot = unsafe { self.ptr.add(i).read_volatile() };
        }
        out
    }
}

impl PhasePage {
    /// The program's wait status, when `--init` left one.
    pub(super) fn program_status(&self) -> Option<i32> {
        // SAFETY: the mapping holds SHARED_SLOTS u64s and lives as long as self.
        let v = unsafe { self.ptr.add(PROGRAM_STATUS_SLOT).read_volatile() };
        (v >> 32 == 1).then_some(v as u32 as i32)
    }
}

impl Drop for PhasePage {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`.
        unsafe { libc::munmap(self.ptr.cast(), SHARED_SLOTS * 8) };
    }
}

pub(crate) fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{CGROUP_PREFIX}{}-{}-{n}",
        std::process::id(),
        process::monotonic_ns() % 1_000_000_000
    )
}
