//! oneDNN's engine, stream and compiled products, owned by the one thread
//! that runs them (see the module above for why one thread).

use super::api::{self, check, Api, ExecArg, Handle, MatmulDesc, MemoryDesc};
use super::{OneDnnError, Shape};
use crate::elements::AlignedBytes;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Shapes whose compiled primitive is kept.
const CACHED_SHAPES: usize = 16;
/// Scratch memory kept between products at most, unless lowered with
/// [`limit_kept_scratch`] (the service sets it from its memory limit and
/// counts it as part of its own start-up cost); more is allocated per
/// product. 160 MiB holds gemm:jit's scratch at n=4096 (128 MiB): faulting
/// that in afresh cost ~50 ms a product here, against ~85 ms of work.
pub const KEPT_SCRATCH: usize = 160 << 20;

static KEPT: AtomicUsize = AtomicUsize::new(KEPT_SCRATCH);

/// Lowers the scratch kept between products to `bytes` (at most
/// [`KEPT_SCRATCH`]); returns the bound now in force.
pub fn limit_kept_scratch(bytes: usize) -> usize {
    let bound = bytes.min(KEPT_SCRATCH);
    KEPT.store(bound, Ordering::Relaxed);
    bound
}

/// The square size from which `gemm:jit` runs when tuning finds it faster.
const JIT_FROM_N: usize = 1448;

/// Scratch memory comes in cache lines: oneDNN's kernels expect 64-byte
/// alignment.
#[repr(C, align(64))]
struct Line([u8; 64]);

fn lines(bytes: usize) -> usize {
    bytes.div_ceil(64)
}

/// One shape, ready to run: its primitive, memory objects (their data
/// pointers set on each run) and the scratch memory it needs per run.
struct Prepared {
    primitive: Handle,
    /// Source, weights, destination, scratchpad.
    memory: [Handle; 4],
    scratch_bytes: usize,
    implementation: String,
    used: u64,
}

pub struct Engine {
    api: &'static Api,
    engine: Handle,
    stream: Handle,
    cache: HashMap<Shape, Prepared>,
    clock: u64,
    scratch: Vec<Line>,
    /// The square size from which `gemm:jit` is chosen over oneDNN's first
    /// choice, for unbatched products whose every side is at least that.
    pub jit_from_n: Option<usize>,
    pub version: String,
    pub implementation: String,
}

impl Drop for Engine {
    fn drop(&mut self) {
        for (_, p) in self.cache.drain() {
            release(self.api, p);
        }
        // SAFETY: both were created by oneDNN and are not used again.
        unsafe {
            (self.api.stream_destroy)(self.stream);
            (self.api.engine_destroy)(self.engine);
        }
    }
}

fn release(api: &Api, p: Prepared) {
    // SAFETY: each handle was created by oneDNN and is not used again
    // (null ones, from a failed creation, are skipped).
    unsafe {
        for m in p.memory.into_iter().filter(|m| !m.is_null()) {
            (api.memory_destroy)(m);
        }
        (api.primitive_destroy)(p.primitive);
    }
}

impl Engine {
    /// Loads oneDNN, makes its engine and stream, and tunes the choice of
    /// implementation on this CPU (~0.2 s).
    pub fn start() -> Result<Engine, OneDnnError> {
        let api = Api::load()?;
        // SAFETY: dnnl_version returns a pointer to a static struct.
        let v = unsafe { &*(api.version)() };
        if v.major != 2 {
            return Err(OneDnnError::Version(v.major));
        }
        let (mut engine, mut stream) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: out-pointers to locals; arguments as dnnl.h declares them.
        unsafe {
            check(
                "set_primitive_cache_capacity",
                (api.set_primitive_cache_capacity)(64),
            )?;
            check(
                "engine_create",
                (api.engine_create)(&mut engine, api::ENGINE_CPU, 0),
            )?;
        }
        let mut this = Engine {
            api,
            engine,
            stream,
            cache: HashMap::new(),
            clock: 0,
            scratch: Vec::new(),
            jit_from_n: None,
            version: format!("{}.{}.{}", v.major, v.minor, v.patch),
            implementation: String::new(),
        };
        // SAFETY: the engine is live; out-pointer to a local.
        check("stream_create", unsafe {
            (api.stream_create)(&mut stream, engine, api::STREAM_DEFAULT_FLAGS)
        })?;
        this.stream = stream;
        this.tune()?;
        Ok(this)
    }

    /// Times oneDNN's first choice against `gemm:jit` at n = 2048 (medians
    /// of nine runs each, in alternating blocks) and, if `gemm:jit` is
    /// faster, chooses it from [`JIT_FROM_N`]. Measured here: at 2048 it wins by 15-25%, at
    /// 1024 the two are within 20% in either order from run to run (tuning
    /// there picked the slower one on noisy starts), so the switch sits
    /// between the two on a log scale.
    fn tune(&mut self) -> Result<(), OneDnnError> {
        {
            let n = 2048usize;
            let shape = Shape {
                batch: 1,
                m: n,
                n,
                k: n,
            };
            // Aligned as the service aligns operands; values in [-1, 1).
            let mut a = AlignedBytes::zeroed(2 * n * n).expect("allocating tuning operands");
            let mut c = AlignedBytes::zeroed(2 * n * n).expect("allocating tuning operands");
            for (i, x) in a.chunks_exact_mut(2).enumerate() {
                let value = ((i * 7919 % 2003) as f32 / 1001.5) - 1.0;
                x.copy_from_slice(&half::bf16::from_f32(value).to_bits().to_ne_bytes());
            }
            let (a, c): (&[u16], &mut [u16]) = (cast(&a), cast_mut(&mut c));
            let candidates: Vec<Prepared> = [false, true]
                .into_iter()
                .map(|jit| self.prepare(shape, jit))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect();
            if let Some(first) = candidates.first() {
                self.implementation = first.implementation.clone();
            }
            // Blocks of runs alternate between the candidates, so that
            // whatever else the machine does meanwhile falls on both; within
            // a block a candidate runs back to back, as a stream of products
            // would (run by run alternation measured gemm:jit ~15% slower
            // than it then runs), and the first run of each block, which
            // refills the caches for it, is not counted.
            let mut times = vec![Vec::new(); candidates.len()];
            let mut timed = Ok(());
            for _ in 0..3 {
                for (p, times) in candidates.iter().zip(&mut times) {
                    for run in 0..4 {
                        let t = Instant::now();
                        timed = timed.and(self.execute(p, a, a, c));
                        if run > 0 {
                            times.push(t.elapsed().as_secs_f64());
                        }
                    }
                }
            }
            for p in candidates {
                release(self.api, p);
            }
            timed?;
            let medians: Vec<f64> = times
                .iter_mut()
                .map(|t| {
                    t.sort_by(f64::total_cmp);
                    t[t.len() / 2]
                })
                .collect();
            if let [first, jit] = medians[..] {
                if jit < first {
                    self.jit_from_n = Some(JIT_FROM_N);
                }
            }
        }
        if self.implementation.is_empty() {
            return Err(OneDnnError::NoFastPath(
                "no implementation but the reference one".into(),
            ));
        }
        Ok(())
    }

    /// A primitive for `shape`, in user scratchpad mode (so that a cached
    /// primitive holds no scratch memory): oneDNN's first non-reference
    /// choice, or `gemm:jit` when `jit` and it is offered. `None` when only
    /// the reference implementation (or, for `jit`, no `gemm:jit`) is there.
    fn prepare(&mut self, shape: Shape, jit: bool) -> Result<Option<Prepared>, OneDnnError> {
        let api = self.api;
        let Shape { batch, m, n, k } = shape;
        let desc = |rows: usize, cols: usize| -> Result<MemoryDesc, OneDnnError> {
            let mut md = MemoryDesc([0; 1024]);
            let (dims, strides, ndims): ([i64; 3], [i64; 3], c_int) = if batch == 1 {
                ([rows as i64, cols as i64, 0], [cols as i64, 1, 0], 2)
            } else {
                (
                    [batch as i64, rows as i64, cols as i64],
                    [(rows * cols) as i64, cols as i64, 1],
                    3,
                )
            };
            // SAFETY: md has room for a dnnl_memory_desc_t; dims and strides
            // hold ndims values (oneDNN reads that many).
            let status = unsafe {
                (api.memory_desc_init_by_strides)(
                    &mut md,
                    ndims,
                    dims.as_ptr(),
                    api::DATA_BF16,
                    strides.as_ptr(),
                )
            };
            check("memory_desc_init_by_strides", status)?;
            Ok(md)
        };
        let (a_md, b_md, c_md) = (desc(m, k)?, desc(k, n)?, desc(m, n)?);
        let mut op = MatmulDesc([0; 4096]);
        // SAFETY: every pointer is to a live, initialised descriptor; no bias.
        check("matmul_desc_init", unsafe {
            (api.matmul_desc_init)(&mut op, &a_md, &b_md, std::ptr::null(), &c_md)
        })?;
        let mut attr = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; attr is live until destroyed below.
        unsafe {
            check("primitive_attr_create", (api.attr_create)(&mut attr))?;
            let set = (api.attr_set_scratchpad_mode)(attr, api::SCRATCHPAD_MODE_USER);
            if set != 0 {
                (api.attr_destroy)(attr);
                check("primitive_attr_set_scratchpad_mode", set)?;
            }
        }
        let chosen = self.choose(&op, attr, jit);
        // SAFETY: the iterator kept its own copy of the attributes.
        unsafe { (api.attr_destroy)(attr) };
        let Some((pd, implementation)) = chosen? else {
            return Ok(None);
        };
        // SAFETY: pd is live; the scratchpad query returns a descriptor
        // owned by pd, read before pd is destroyed.
        let scratch_md = unsafe { (api.desc_query_md)(pd, api::QUERY_SCRATCHPAD_MD, 0) };
        let scratch_bytes = if scratch_md.is_null() {
            0
        } else {
            // SAFETY: as above.
            unsafe { (api.memory_desc_get_size)(scratch_md) }
        };
        let mut primitive = std::ptr::null_mut();
        // SAFETY: pd is a live descriptor (the primitive keeps its own copy).
        let created = unsafe { (api.primitive_create)(&mut primitive, pd) };
        let mut memory = [std::ptr::null_mut(); 4];
        let mut made = check("primitive_create", created);
        if made.is_ok() {
            let scratch = (!scratch_md.is_null()).then_some(scratch_md);
            let mds = [Some(&a_md as *const _), Some(&b_md), Some(&c_md), scratch];
            for (slot, md) in memory.iter_mut().zip(mds) {
                let Some(md) = md else { continue };
                // SAFETY: md is an initialised descriptor (the scratchpad's
                // still owned by the live pd); a NULL handle makes a memory
                // object without a buffer, set per run.
                let status =
                    unsafe { (api.memory_create)(slot, md, self.engine, std::ptr::null_mut()) };
                made = made.and(check("memory_create", status));
            }
        }
        // SAFETY: pd is not used again.
        unsafe { (api.desc_destroy)(pd) };
        self.clock += 1;
        let prepared = Prepared {
            primitive,
            memory,
            scratch_bytes,
            implementation,
            used: self.clock,
        };
        match made {
            Ok(()) => Ok(Some(prepared)),
            Err(e) => {
                release(api, prepared);
                Err(e)
            }
        }
    }

    /// The descriptor of the implementation wanted, and its name.
    fn choose(
        &self,
        op: &MatmulDesc,
        attr: Handle,
        jit: bool,
    ) -> Result<Option<(Handle, String)>, OneDnnError> {
        let api = self.api;
        let mut iterator = std::ptr::null_mut();
        // SAFETY: op and attr are initialised and live; no hint.
        check("primitive_desc_iterator_create", unsafe {
            (api.iterator_create)(&mut iterator, op, attr, self.engine, std::ptr::null())
        })?;
        let mut chosen = None;
        loop {
            // SAFETY: iterator is live; fetch gives a descriptor we own.
            let pd = unsafe { (api.iterator_fetch)(iterator) };
            if !pd.is_null() {
                let name = implementation_name(api, pd);
                let wanted = !name.starts_with("ref") && (!jit || name.starts_with("gemm:jit"));
                if wanted {
                    chosen = Some((pd, name));
                    break;
                }
                // SAFETY: pd came from fetch and is not used again.
                unsafe { (api.desc_destroy)(pd) };
            }
            // SAFETY: iterator is live.
            if unsafe { (api.iterator_next)(iterator) } != 0 {
                break; // the end (dnnl_iterator_ends) or a failure: nothing more to try
            }
        }
        // SAFETY: iterator is live and not used again.
        unsafe { (api.iterator_destroy)(iterator) };
        Ok(chosen)
    }

    fn execute(
        &mut self,
        p: &Prepared,
        a: &[u16],
        b: &[u16],
        c: &mut [u16],
    ) -> Result<(), OneDnnError> {
        let api = self.api;
        // Scratch: the kept buffer when it is big enough, else one for this
        // run. Uninitialised (capacity, no length): only oneDNN touches it.
        let mut own;
        let kept = KEPT.load(Ordering::Relaxed);
        if self.scratch.capacity() > lines(kept) {
            self.scratch = Vec::new();
        }
        let scratch = if p.scratch_bytes <= kept {
            if self.scratch.capacity() < lines(p.scratch_bytes) {
                self.scratch = Vec::with_capacity(lines(p.scratch_bytes));
            }
            &mut self.scratch
        } else {
            own = Vec::with_capacity(lines(p.scratch_bytes));
            &mut own
        };
        let pointers = [
            a.as_ptr().cast_mut().cast(),
            b.as_ptr().cast_mut().cast(),
            c.as_mut_ptr().cast(),
            scratch.as_mut_ptr().cast(),
        ];
        let mut args = Vec::with_capacity(4);
        for ((m, ptr), arg) in p.memory.iter().zip(pointers).zip([
            api::ARG_SRC,
            api::ARG_WEIGHTS,
            api::ARG_DST,
            api::ARG_SCRATCHPAD,
        ]) {
            if m.is_null() {
                continue;
            }
            // SAFETY: m is a live memory object; the pointer is to a buffer
            // holding its descriptor's bytes (operands checked by the
            // caller, scratch sized from oneDNN's own query), alive until
            // this function returns (the stream is waited on below).
            check("memory_set_data_handle", unsafe {
                (api.memory_set_data_handle)(*m, ptr)
            })?;
            args.push(ExecArg { arg, memory: *m });
        }
        // SAFETY: the primitive and memory objects are live; oneDNN reads
        // a and b and writes c and the scratch only.
        unsafe {
            check(
                "primitive_execute",
                (api.primitive_execute)(
                    p.primitive,
                    self.stream,
                    args.len() as c_int,
                    args.as_ptr(),
                ),
            )?;
            check("stream_wait", (api.stream_wait)(self.stream))
        }
    }

    /// Runs one product; `Ok(false)` when oneDNN has no implementation for
    /// it that fits (only the reference one, or one that would need more
    /// scratch memory than the kept buffer and twice its operands: the
    /// widened path the caller falls back to is counted in the service's
    /// budget).
    pub fn run(
        &mut self,
        shape: Shape,
        a: &[u16],
        b: &[u16],
        c: &mut [u16],
    ) -> Result<bool, OneDnnError> {
        self.clock += 1;
        let now = self.clock;
        if !self.cache.contains_key(&shape) {
            let Some(prepared) = self.fitting(shape)? else {
                return Ok(false);
            };
            if self.cache.len() >= CACHED_SHAPES {
                let oldest = self
                    .cache
                    .iter()
                    .min_by_key(|(_, p)| p.used)
                    .map(|(s, _)| *s);
                if let Some(p) = oldest.and_then(|s| self.cache.remove(&s)) {
                    release(self.api, p);
                }
            }
            self.cache.insert(shape, prepared);
        }
        let mut p = self.cache.remove(&shape).expect("inserted above");
        p.used = now;
        let ran = self.execute(&p, a, b, c);
        self.cache.insert(shape, p);
        ran.map(|()| true)
    }

    /// The implementation for `shape`: `gemm:jit` for large unbatched
    /// products (as tuned), else oneDNN's first choice; either only if its
    /// scratch fits.
    fn fitting(&mut self, shape: Shape) -> Result<Option<Prepared>, OneDnnError> {
        let smallest_side = shape.m.min(shape.n).min(shape.k);
        let jit = shape.batch == 1 && self.jit_from_n.is_some_and(|n| smallest_side >= n);
        let operand_bytes =
            2 * shape.batch * (shape.m * shape.k + shape.k * shape.n + shape.m * shape.n);
        for try_jit in [jit, false].into_iter().take(if jit { 2 } else { 1 }) {
            if let Some(p) = self.prepare(shape, try_jit)? {
                let kept = KEPT.load(Ordering::Relaxed);
                if p.scratch_bytes <= (2 * operand_bytes).max(kept) {
                    return Ok(Some(p));
                }
                release(self.api, p);
            }
        }
        Ok(None)
    }
}

fn implementation_name(api: &Api, pd: Handle) -> String {
    let mut info: *const c_char = std::ptr::null();
    // SAFETY: the impl-info query writes a pointer to a string owned by pd,
    // read before pd is destroyed.
    let found = unsafe {
        (api.desc_query)(
            pd,
            api::QUERY_IMPL_INFO_STR,
            0,
            (&mut info as *mut *const c_char).cast(),
        )
    } == 0
        && !info.is_null();
    if found {
        // SAFETY: as above: a NUL-terminated string owned by pd.
        unsafe { CStr::from_ptr(info) }
            .to_string_lossy()
            .into_owned()
    } else {
        String::new()
    }
}

/// Bytes as 16-bit words (the buffer is 64-byte aligned, its length even).
fn cast(bytes: &[u8]) -> &[u16] {
    // SAFETY: u16 is plain data; align_to only yields aligned whole words.
    let (head, words, _) = unsafe { bytes.align_to::<u16>() };
    assert!(head.is_empty(), "an aligned buffer");
    words
}

fn cast_mut(bytes: &mut [u8]) -> &mut [u16] {
    // SAFETY: as in `cast`.
    let (head, words, _) = unsafe { bytes.align_to_mut::<u16>() };
    assert!(head.is_empty(), "an aligned buffer");
    words
}
