//! bf16 products through oneDNN, the library PyTorch's CPU matmul uses,
//! loaded at run time from Debian's `libdnnl2` (oneDNN 2.x, C API v2): on a
//! CPU with AMX tiles it runs them, with AVX512-BF16 those, and where it has
//! neither (or the library is not installed) the caller falls back to f32.
//!
//! oneDNN offers several implementations of one product; measured here
//! (Xeon with AMX, 2 threads) its first choice, `brg:avx512_core_amx_bf16`,
//! wins up to n~1024 and its AMX `gemm:jit` from n~2048 (1.7 against 1.2
//! TFLOP/s at n=4096), so [`OneDnn::load`] times both at those two sizes and
//! keeps the size from which the second wins.
//!
//! Everything oneDNN needs per shape (a primitive: code generated for it,
//! and three memory objects) is kept in a small cache, bounded so that a
//! client sending ever-new shapes costs a fixed amount of memory.

use libloading::Library;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The shared object Debian's `libdnnl2` installs.
pub const LIBRARY: &str = "libdnnl.so.2";
/// Shapes whose compiled primitive is kept.
const CACHED_SHAPES: usize = 16;

#[derive(Debug, Clone, thiserror::Error)]
pub enum OneDnnError {
    #[error("oneDNN is not installed ({LIBRARY} did not load: {0}); bf16 runs through f32: install it with `apt-get install libdnnl2`")]
    Missing(String),
    #[error("{LIBRARY} is oneDNN {0}.x, not the 2.x this build speaks; bf16 runs through f32")]
    Version(i32),
    #[error("oneDNN's {call} failed with status {status}")]
    Call { call: &'static str, status: i32 },
    #[error("oneDNN has only its reference implementation for bf16 products on this CPU ({0}); bf16 runs through f32")]
    NoFastPath(String),
}

type Status = c_int;
type Handle = *mut c_void;

const ENGINE_CPU: c_int = 1;
const STREAM_DEFAULT_FLAGS: c_uint = 1;
const DATA_BF16: c_int = 2;
const ARG_SRC: c_int = 1;
const ARG_WEIGHTS: c_int = 33;
const ARG_DST: c_int = 17;
const QUERY_IMPL_INFO_STR: c_int = 8;
const ITERATOR_ENDS: Status = 4;

/// `dnnl_memory_desc_t` of oneDNN 2.x (696 bytes in 2.6), with room to spare:
/// oneDNN writes it, alcove only passes it back.
#[repr(C, align(8))]
struct MemoryDesc([u8; 1024]);
/// `dnnl_matmul_desc_t` (2,800 bytes in 2.6), likewise.
#[repr(C, align(8))]
struct MatmulDesc([u8; 4096]);

#[repr(C)]
struct ExecArg {
    arg: c_int,
    memory: Handle,
}

#[repr(C)]
struct Version {
    major: c_int,
    minor: c_int,
    patch: c_int,
    hash: *const c_char,
    cpu_runtime: c_uint,
    gpu_runtime: c_uint,
}

/// The C functions used, resolved once from the library (which stays
/// loaded for the life of the process: its OpenMP threads outlive any call).
struct Api {
    version: unsafe extern "C" fn() -> *const Version,
    engine_create: unsafe extern "C" fn(*mut Handle, c_int, usize) -> Status,
    stream_create: unsafe extern "C" fn(*mut Handle, Handle, c_uint) -> Status,
    stream_wait: unsafe extern "C" fn(Handle) -> Status,
    memory_desc_init_by_strides:
        unsafe extern "C" fn(*mut MemoryDesc, c_int, *const i64, c_int, *const i64) -> Status,
    matmul_desc_init: unsafe extern "C" fn(
        *mut MatmulDesc,
        *const MemoryDesc,
        *const MemoryDesc,
        *const MemoryDesc,
        *const MemoryDesc,
    ) -> Status,
    iterator_create: unsafe extern "C" fn(
        *mut Handle,
        *const MatmulDesc,
        *const c_void,
        Handle,
        *const c_void,
    ) -> Status,
    iterator_next: unsafe extern "C" fn(Handle) -> Status,
    iterator_fetch: unsafe extern "C" fn(Handle) -> Handle,
    iterator_destroy: unsafe extern "C" fn(Handle) -> Status,
    desc_query: unsafe extern "C" fn(Handle, c_int, c_int, *mut c_void) -> Status,
    desc_destroy: unsafe extern "C" fn(Handle) -> Status,
    primitive_create: unsafe extern "C" fn(*mut Handle, Handle) -> Status,
    primitive_destroy: unsafe extern "C" fn(Handle) -> Status,
    primitive_execute: unsafe extern "C" fn(Handle, Handle, c_int, *const ExecArg) -> Status,
    memory_create: unsafe extern "C" fn(*mut Handle, *const MemoryDesc, Handle, Handle) -> Status,
    memory_set_data_handle: unsafe extern "C" fn(Handle, Handle) -> Status,
    memory_destroy: unsafe extern "C" fn(Handle) -> Status,
    set_primitive_cache_capacity: unsafe extern "C" fn(c_int) -> Status,
}

fn check(call: &'static str, status: Status) -> Result<(), OneDnnError> {
    if status == 0 {
        Ok(())
    } else {
        Err(OneDnnError::Call { call, status })
    }
}

impl Api {
    fn load() -> Result<&'static Api, OneDnnError> {
        // SAFETY: loading runs the library's initialisers: oneDNN's are
        // plain C++ static constructors, with no requirement on the caller.
        let lib =
            unsafe { Library::new(LIBRARY) }.map_err(|e| OneDnnError::Missing(e.to_string()))?;
        // Never unloaded: function pointers below are used for the life of
        // the process, and OpenMP threads started by it keep running.
        let lib: &'static Library = Box::leak(Box::new(lib));
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: each symbol's type above is its declaration in
                // oneDNN 2.x's dnnl.h (checked: version major 2 below, before
                // any other is called); the library is never unloaded.
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| OneDnnError::Missing(e.to_string()))?
            };
        }
        let api = Api {
            version: sym!("dnnl_version"),
            engine_create: sym!("dnnl_engine_create"),
            stream_create: sym!("dnnl_stream_create"),
            stream_wait: sym!("dnnl_stream_wait"),
            memory_desc_init_by_strides: sym!("dnnl_memory_desc_init_by_strides"),
            matmul_desc_init: sym!("dnnl_matmul_desc_init"),
            iterator_create: sym!("dnnl_primitive_desc_iterator_create"),
            iterator_next: sym!("dnnl_primitive_desc_iterator_next"),
            iterator_fetch: sym!("dnnl_primitive_desc_iterator_fetch"),
            iterator_destroy: sym!("dnnl_primitive_desc_iterator_destroy"),
            desc_query: sym!("dnnl_primitive_desc_query"),
            desc_destroy: sym!("dnnl_primitive_desc_destroy"),
            primitive_create: sym!("dnnl_primitive_create"),
            primitive_destroy: sym!("dnnl_primitive_destroy"),
            primitive_execute: sym!("dnnl_primitive_execute"),
            memory_create: sym!("dnnl_memory_create"),
            memory_set_data_handle: sym!("dnnl_memory_set_data_handle"),
            memory_destroy: sym!("dnnl_memory_destroy"),
            set_primitive_cache_capacity: sym!("dnnl_set_primitive_cache_capacity"),
        };
        Ok(Box::leak(Box::new(api)))
    }
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
    fn flops(&self) -> f64 {
        2.0 * self.batch as f64 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// One shape, ready to run: its primitive and memory objects (their data
/// pointers set on each run).
struct Prepared {
    primitive: Handle,
    memory: [Handle; 3],
    implementation: String,
    used: u64,
}

struct State {
    engine: Handle,
    stream: Handle,
    cache: HashMap<Shape, Prepared>,
    clock: u64,
    /// Work (flops) from which `gemm:jit` is chosen over oneDNN's first choice.
    jit_from_flops: f64,
}

// SAFETY: oneDNN engines, streams, primitives and memory objects may be used
// from any thread; alcove uses them from one at a time (the Mutex).
unsafe impl Send for State {}

/// oneDNN, loaded and ready for bf16 products on this CPU.
pub struct OneDnn {
    api: &'static Api,
    state: Mutex<State>,
    /// "2.6.3" and the like.
    pub version: String,
    /// The implementation that ran the calibration products, for reports.
    pub implementation: String,
    /// The square size from which the second implementation is chosen, if it ever is.
    pub jit_from_n: Option<usize>,
}

impl OneDnn {
    /// The process's oneDNN, loaded and tuned on first use (~0.1 s), or why
    /// there is none.
    pub fn get() -> Result<&'static OneDnn, OneDnnError> {
        static LOADED: OnceLock<Result<OneDnn, OneDnnError>> = OnceLock::new();
        LOADED
            .get_or_init(OneDnn::load)
            .as_ref()
            .map_err(Clone::clone)
    }

    fn load() -> Result<OneDnn, OneDnnError> {
        let api = Api::load()?;
        // SAFETY: dnnl_version returns a pointer to a static struct.
        let v = unsafe { &*(api.version)() };
        if v.major != 2 {
            return Err(OneDnnError::Version(v.major));
        }
        let version = format!("{}.{}.{}", v.major, v.minor, v.patch);
        let (mut engine, mut stream) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: out-pointers to locals; arguments as dnnl.h declares them.
        unsafe {
            check(
                "set_primitive_cache_capacity",
                (api.set_primitive_cache_capacity)(64),
            )?;
            check(
                "engine_create",
                (api.engine_create)(&mut engine, ENGINE_CPU, 0),
            )?;
            check(
                "stream_create",
                (api.stream_create)(&mut stream, engine, STREAM_DEFAULT_FLAGS),
            )?;
        }
        let dnn = OneDnn {
            api,
            state: Mutex::new(State {
                engine,
                stream,
                cache: HashMap::new(),
                clock: 0,
                jit_from_flops: f64::INFINITY,
            }),
            version,
            implementation: String::new(),
            jit_from_n: None,
        };
        let (implementation, jit_from_n) = dnn.tune()?;
        Ok(OneDnn {
            implementation,
            jit_from_n,
            ..dnn
        })
    }

    /// Times oneDNN's first choice against `gemm:jit` at n = 1024 and 2048
    /// and keeps the smaller size at which `gemm:jit` wins.
    fn tune(&self) -> Result<(String, Option<usize>), OneDnnError> {
        let mut state = self.lock();
        let mut from = None;
        let mut implementation = String::new();
        for n in [1024usize, 2048] {
            let shape = Shape {
                batch: 1,
                m: n,
                n,
                k: n,
            };
            let a = vec![0x3f80u16; n * n]; // 1.0
            let mut c = vec![0u16; n * n];
            let mut times = Vec::new();
            for jit in [false, true] {
                let Some(p) = self.prepare(&mut state, shape, jit)? else {
                    continue;
                };
                if n == 1024 && !jit {
                    implementation = p.implementation.clone();
                }
                let mut best = f64::INFINITY;
                for _ in 0..3 {
                    let t = Instant::now();
                    self.execute(&state, &p, &a, &a, &mut c)?;
                    best = best.min(t.elapsed().as_secs_f64());
                }
                self.release(p);
                times.push(best);
            }
            if let [first, jit] = times[..] {
                if jit < first && from.is_none() {
                    from = Some(n);
                }
            }
        }
        // Halfway, on a log scale, from the size below where it first won.
        let jit_from_n = from.map(|n: usize| if n == 1024 { 724 } else { 1448 });
        if let Some(n) = jit_from_n {
            state.jit_from_flops = 2.0 * (n as f64).powi(3);
        }
        if implementation.is_empty() {
            return Err(OneDnnError::NoFastPath(
                "no implementation but the reference one".into(),
            ));
        }
        Ok((implementation, jit_from_n))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A primitive for `shape`: oneDNN's first non-reference choice, or
    /// `gemm:jit` when `jit` and it is offered. `None` when only the
    /// reference implementation (or, for `jit`, no `gemm:jit`) is there.
    fn prepare(
        &self,
        state: &mut State,
        shape: Shape,
        jit: bool,
    ) -> Result<Option<Prepared>, OneDnnError> {
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
                    DATA_BF16,
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
        let mut iterator = std::ptr::null_mut();
        // SAFETY: op is initialised; no attributes and no hint.
        check("primitive_desc_iterator_create", unsafe {
            (api.iterator_create)(
                &mut iterator,
                &op,
                std::ptr::null(),
                state.engine,
                std::ptr::null(),
            )
        })?;
        let mut chosen = None;
        loop {
            // SAFETY: iterator is live; fetch gives a descriptor we own.
            let pd = unsafe { (api.iterator_fetch)(iterator) };
            if !pd.is_null() {
                let mut info: *const c_char = std::ptr::null();
                // SAFETY: the impl-info query writes a pointer to a string
                // owned by pd, read before pd is destroyed.
                let found = unsafe {
                    (api.desc_query)(
                        pd,
                        QUERY_IMPL_INFO_STR,
                        0,
                        (&mut info as *mut *const c_char).cast(),
                    )
                } == 0
                    && !info.is_null();
                let name = if found {
                    // SAFETY: as above: a NUL-terminated string owned by pd.
                    unsafe { CStr::from_ptr(info) }
                        .to_string_lossy()
                        .into_owned()
                } else {
                    String::new()
                };
                let wanted = !name.starts_with("ref") && (!jit || name.starts_with("gemm:jit"));
                if wanted && chosen.is_none() {
                    chosen = Some((pd, name));
                } else {
                    // SAFETY: pd came from fetch and is not used again.
                    unsafe { (api.desc_destroy)(pd) };
                }
            }
            // SAFETY: iterator is live.
            let next = unsafe { (api.iterator_next)(iterator) };
            if chosen.is_some() || next == ITERATOR_ENDS || next != 0 {
                break;
            }
        }
        // SAFETY: iterator is live and not used again.
        unsafe { (api.iterator_destroy)(iterator) };
        let Some((pd, implementation)) = chosen else {
            return Ok(None);
        };
        let mut primitive = std::ptr::null_mut();
        // SAFETY: pd is a live descriptor; it is destroyed after (the
        // primitive keeps its own copy).
        let created = unsafe { (api.primitive_create)(&mut primitive, pd) };
        // SAFETY: pd is not used again.
        unsafe { (api.desc_destroy)(pd) };
        check("primitive_create", created)?;
        let mut memory = [std::ptr::null_mut(); 3];
        for (slot, md) in memory.iter_mut().zip([&a_md, &b_md, &c_md]) {
            // SAFETY: md is initialised; a NULL handle (DNNL_MEMORY_NONE)
            // makes a memory object without a buffer, set per run.
            let status =
                unsafe { (api.memory_create)(slot, md, state.engine, std::ptr::null_mut()) };
            if status != 0 {
                self.release(Prepared {
                    primitive,
                    memory,
                    implementation,
                    used: 0,
                });
                return Err(OneDnnError::Call {
                    call: "memory_create",
                    status,
                });
            }
        }
        state.clock += 1;
        Ok(Some(Prepared {
            primitive,
            memory,
            implementation,
            used: state.clock,
        }))
    }

    fn release(&self, p: Prepared) {
        // SAFETY: each handle was created by oneDNN and is not used again
        // (null ones, from a failed creation, are skipped).
        unsafe {
            for m in p.memory.into_iter().filter(|m| !m.is_null()) {
                (self.api.memory_destroy)(m);
            }
            (self.api.primitive_destroy)(p.primitive);
        }
    }

    fn execute(
        &self,
        state: &State,
        p: &Prepared,
        a: &[u16],
        b: &[u16],
        c: &mut [u16],
    ) -> Result<(), OneDnnError> {
        let api = self.api;
        let pointers = [
            a.as_ptr().cast_mut().cast(),
            b.as_ptr().cast_mut().cast(),
            c.as_mut_ptr().cast(),
        ];
        for (m, ptr) in p.memory.iter().zip(pointers) {
            // SAFETY: m is a live memory object; the pointer is to a buffer
            // the caller checked holds its descriptor's elements, alive until
            // this function returns (the stream is waited on below).
            check("memory_set_data_handle", unsafe {
                (api.memory_set_data_handle)(*m, ptr)
            })?;
        }
        let args = [
            ExecArg {
                arg: ARG_SRC,
                memory: p.memory[0],
            },
            ExecArg {
                arg: ARG_WEIGHTS,
                memory: p.memory[1],
            },
            ExecArg {
                arg: ARG_DST,
                memory: p.memory[2],
            },
        ];
        // SAFETY: the primitive and memory objects are live; oneDNN reads
        // a and b and writes c only (the weights and source are const to it).
        unsafe {
            check(
                "primitive_execute",
                (api.primitive_execute)(p.primitive, state.stream, 3, args.as_ptr()),
            )?;
            check("stream_wait", (api.stream_wait)(state.stream))
        }
    }

    /// `batch` bf16 products (as bits), row-major, packed one after another;
    /// the result rounded to bf16. `Ok(false)` when oneDNN has no fast
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
        let Shape { batch, m, n, k } = shape;
        assert!(
            a.len() >= batch * m * k && b.len() >= batch * k * n && c.len() >= batch * m * n,
            "operands shorter than their dimensions"
        );
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        if !state.cache.contains_key(&shape) {
            let jit = shape.flops() >= state.jit_from_flops;
            let prepared = match self.prepare(&mut state, shape, jit)? {
                Some(p) => p,
                None if jit => match self.prepare(&mut state, shape, false)? {
                    Some(p) => p,
                    None => return Ok(false),
                },
                None => return Ok(false),
            };
            if state.cache.len() >= CACHED_SHAPES {
                let oldest = state
                    .cache
                    .iter()
                    .min_by_key(|(_, p)| p.used)
                    .map(|(s, _)| *s);
                if let Some(p) = oldest.and_then(|s| state.cache.remove(&s)) {
                    self.release(p);
                }
            }
            state.cache.insert(shape, prepared);
        }
        if let Some(p) = state.cache.get_mut(&shape) {
            p.used = now;
        }
        let state: &State = &state;
        self.execute(state, &state.cache[&shape], a, b, c)?;
        Ok(true)
    }
}
