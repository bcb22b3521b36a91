//! bf16 products through oneDNN, the library PyTorch's CPU matmul uses,
//! loaded at run time from Debian's `libdnnl2` (oneDNN 2.x, C API v2): on a
//! CPU with AMX tiles it runs them, with AVX512-BF16 those, and where it has
//! neither (or the library is not installed) the caller falls back to f32.
//!
//! oneDNN offers several implementations of one product; measured here
//! (Xeon with AMX, 2 threads) its first choice, `brg:avx512_core_amx_bf16`,
//! wins up to n~1024 and its AMX `gemm:jit` from n~2048 on square products
//! (and loses on skinny or batched ones), so start-up times both and keeps
//! the size from which the second wins.
//!
//! Every oneDNN call runs on one thread of its own, fed by a queue. Debian's
//! oneDNN runs on OpenMP, which keeps a team of threads for every thread
//! that calls into it and ends the process when it cannot start one: calls
//! from each service connection's thread would let clients exhaust the
//! worker's task limit. One calling thread means one team.
//!
//! Primitives (the code generated for a shape) are kept for 16 shapes, in
//! oneDNN's "user scratchpad" mode: their scratch memory is lent per run,
//! not held while cached (one buffer of up to [`KEPT_SCRATCH`] is kept, less
//! where the service's memory limit is small), and
//! a product whose implementation wants more scratch than that and twice
//! its operands is left to the widened path, whose memory the service's
//! budget counts.

mod api;
mod engine;

pub use engine::{limit_kept_scratch, KEPT_SCRATCH};

use std::sync::mpsc;
use std::sync::OnceLock;

/// The shared object Debian's `libdnnl2` installs.
pub const LIBRARY: &str = "libdnnl.so.2";

#[derive(Debug, Clone, thiserror::Error)]
pub enum OneDnnError {
    #[error("oneDNN is not installed ({LIBRARY} did not load: {0}); bf16 runs through f32: install it with `apt-get install libdnnl2`")]
    Missing(String),
    #[error("{LIBRARY} is oneDNN {0}.x, not the 2.x this build speaks; bf16 runs through f32")]
    Version(i32),
    #[error("oneDNN's {call} failed with status {status}")]
    Call { call: &'static str, status: i32 },
    #[error("oneDNN has no fast implementation of bf16 products on this CPU ({0}); bf16 runs through f32")]
    NoFastPath(String),
    #[error("oneDNN's thread could not start or has stopped: {0}")]
    Thread(String),
}

/// A product's shape: `batch` products of (m x k) by (k x n).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl Shape {
    /// Elements of a, b and c; `None` if they overflow.
    fn elements(&self) -> Option<(usize, usize, usize)> {
        let per = |x: usize, y: usize| self.batch.checked_mul(x.checked_mul(y)?);
        Some((
            per(self.m, self.k)?,
            per(self.k, self.n)?,
            per(self.m, self.n)?,
        ))
    }
}

/// One product for oneDNN's thread. The pointers stay valid until `done`
/// is answered: the sender waits for it.
struct Job {
    shape: Shape,
    a: *const u16,
    b: *const u16,
    c: *mut u16,
    done: mpsc::SyncSender<Result<bool, OneDnnError>>,
}

// SAFETY: the buffers behind the pointers belong to the thread that sent the
// job, which blocks until `done` is answered; only oneDNN's thread touches
// them meanwhile.
unsafe impl Send for Job {}

/// oneDNN, loaded and ready for bf16 products on this CPU.
pub struct OneDnn {
    jobs: mpsc::Sender<Job>,
    /// "2.6.3" and the like.
    pub version: String,
    /// oneDNN's first choice for the calibration product, for reports.
    pub implementation: String,
    /// The square size from which `gemm:jit` is chosen, if it ever is.
    pub jit_from_n: Option<usize>,
}

impl OneDnn {
    /// The process's oneDNN, loaded and tuned on first use (~0.2 s), or why
    /// there is none.
    pub fn get() -> Result<&'static OneDnn, OneDnnError> {
        static LOADED: OnceLock<Result<OneDnn, OneDnnError>> = OnceLock::new();
        LOADED
            .get_or_init(OneDnn::load)
            .as_ref()
            .map_err(Clone::clone)
    }

    fn load() -> Result<OneDnn, OneDnnError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("alcove-onednn".into())
            .spawn(move || {
                let mut engine = match engine::Engine::start() {
                    Ok(engine) => engine,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let facts = (
                    engine.version.clone(),
                    engine.implementation.clone(),
                    engine.jit_from_n,
                );
                let _ = ready_tx.send(Ok(facts));
                for job in queue {
                    let (na, nb, nc) = job.shape.elements().expect("checked by the sender");
                    // SAFETY: the sender checked each buffer holds this many
                    // elements and keeps them alive, untouched, until `done`.
                    let (a, b, c) = unsafe {
                        (
                            std::slice::from_raw_parts(job.a, na),
                            std::slice::from_raw_parts(job.b, nb),
                            std::slice::from_raw_parts_mut(job.c, nc),
                        )
                    };
                    let _ = job.done.send(engine.run(job.shape, a, b, c));
                }
            })
            .map_err(|e| OneDnnError::Thread(e.to_string()))?;
        let (version, implementation, jit_from_n) = ready_rx
            .recv()
            .map_err(|_| OneDnnError::Thread("it ended while starting".into()))??;
        Ok(OneDnn {
            jobs,
            version,
            implementation,
            jit_from_n,
        })
    }

    /// `batch` bf16 products (as bits), row-major, packed one after another;
    /// the result rounded to bf16. `Ok(false)` when oneDNN has no fitting
    /// implementation for this shape (the caller computes it another way).
    ///
    /// # Panics
    /// If a slice is shorter than its dimensions say.
    pub fn batched_matmul(
        &self,
        shape: Shape,
        a: &[u16],
        b: &[u16],
        c: &mut [u16],
    ) -> Result<bool, OneDnnError> {
        let fits = shape
            .elements()
            .is_some_and(|(na, nb, nc)| a.len() >= na && b.len() >= nb && c.len() >= nc);
        assert!(fits, "operands shorter than their dimensions");
        if shape.elements().is_some_and(|(_, _, nc)| nc == 0) {
            return Ok(true);
        }
        let (done, answer) = mpsc::sync_channel(1);
        let job = Job {
            shape,
            a: a.as_ptr(),
            b: b.as_ptr(),
            c: c.as_mut_ptr(),
            done,
        };
        let gone = |_| OneDnnError::Thread("it has stopped".into());
        self.jobs.send(job).map_err(|_| gone(()))?;
        answer.recv().map_err(|_| gone(()))?
    }
}
