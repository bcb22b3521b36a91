//! oneDNN 2.x's C API, as far as alcove uses it: the functions resolved
//! once from `libdnnl.so.2`, and the constants and structures of its
//! headers (checked against Debian's 2.6.3 `dnnl_types.h`).

use super::{OneDnnError, LIBRARY};
use libloading::Library;
use std::ffi::{c_char, c_int, c_uint, c_void};

pub type Status = c_int;
pub type Handle = *mut c_void;

pub const ENGINE_CPU: c_int = 1;
pub const STREAM_DEFAULT_FLAGS: c_uint = 1;
pub const DATA_BF16: c_int = 2;
pub const ARG_SRC: c_int = 1;
pub const ARG_WEIGHTS: c_int = 33;
pub const ARG_DST: c_int = 17;
pub const ARG_SCRATCHPAD: c_int = 80;
pub const QUERY_IMPL_INFO_STR: c_int = 8;
pub const QUERY_SCRATCHPAD_MD: c_int = 136;
pub const SCRATCHPAD_MODE_USER: c_int = 1;

/// `dnnl_memory_desc_t` of oneDNN 2.x (696 bytes in 2.6), with room to spare:
/// oneDNN writes it, alcove only passes it back.
#[repr(C, align(8))]
pub struct MemoryDesc(pub [u8; 1024]);
/// `dnnl_matmul_desc_t` (2,800 bytes in 2.6), likewise.
#[repr(C, align(8))]
pub struct MatmulDesc(pub [u8; 4096]);

#[repr(C)]
pub struct ExecArg {
    pub arg: c_int,
    pub memory: Handle,
}

#[repr(C)]
pub struct Version {
    pub major: c_int,
    pub minor: c_int,
    pub patch: c_int,
    pub hash: *const c_char,
    pub cpu_runtime: c_uint,
    pub gpu_runtime: c_uint,
}

/// The C functions used. The library stays loaded for the life of the
/// process: its OpenMP threads outlive any call.
pub struct Api {
    pub version: unsafe extern "C" fn() -> *const Version,
    pub engine_create: unsafe extern "C" fn(*mut Handle, c_int, usize) -> Status,
    pub engine_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub stream_create: unsafe extern "C" fn(*mut Handle, Handle, c_uint) -> Status,
    pub stream_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub stream_wait: unsafe extern "C" fn(Handle) -> Status,
    pub memory_desc_init_by_strides:
        unsafe extern "C" fn(*mut MemoryDesc, c_int, *const i64, c_int, *const i64) -> Status,
    pub memory_desc_get_size: unsafe extern "C" fn(*const MemoryDesc) -> usize,
    pub matmul_desc_init: unsafe extern "C" fn(
        *mut MatmulDesc,
        *const MemoryDesc,
        *const MemoryDesc,
        *const MemoryDesc,
        *const MemoryDesc,
    ) -> Status,
    pub attr_create: unsafe extern "C" fn(*mut Handle) -> Status,
    pub attr_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub attr_set_scratchpad_mode: unsafe extern "C" fn(Handle, c_int) -> Status,
    pub iterator_create: unsafe extern "C" fn(
        *mut Handle,
        *const MatmulDesc,
        *const c_void,
        Handle,
        *const c_void,
    ) -> Status,
    pub iterator_next: unsafe extern "C" fn(Handle) -> Status,
    pub iterator_fetch: unsafe extern "C" fn(Handle) -> Handle,
    pub iterator_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub desc_query: unsafe extern "C" fn(Handle, c_int, c_int, *mut c_void) -> Status,
    pub desc_query_md: unsafe extern "C" fn(Handle, c_int, c_int) -> *const MemoryDesc,
    pub desc_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub primitive_create: unsafe extern "C" fn(*mut Handle, Handle) -> Status,
    pub primitive_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub primitive_execute: unsafe extern "C" fn(Handle, Handle, c_int, *const ExecArg) -> Status,
    pub memory_create:
        unsafe extern "C" fn(*mut Handle, *const MemoryDesc, Handle, Handle) -> Status,
    pub memory_set_data_handle: unsafe extern "C" fn(Handle, Handle) -> Status,
    pub memory_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub set_primitive_cache_capacity: unsafe extern "C" fn(c_int) -> Status,
}

pub fn check(call: &'static str, status: Status) -> Result<(), OneDnnError> {
    if status == 0 {
        Ok(())
    } else {
        Err(OneDnnError::Call { call, status })
    }
}

impl Api {
    /// Loads the library (once per process) and resolves every function.
    pub fn load() -> Result<&'static Api, OneDnnError> {
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
                // oneDNN 2.x's dnnl.h (the caller checks the version is 2
                // before calling anything else); the library is never unloaded.
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| OneDnnError::Missing(e.to_string()))?
            };
        }
        let api = Api {
            version: sym!("dnnl_version"),
            engine_create: sym!("dnnl_engine_create"),
            engine_destroy: sym!("dnnl_engine_destroy"),
            stream_create: sym!("dnnl_stream_create"),
            stream_destroy: sym!("dnnl_stream_destroy"),
            stream_wait: sym!("dnnl_stream_wait"),
            memory_desc_init_by_strides: sym!("dnnl_memory_desc_init_by_strides"),
            memory_desc_get_size: sym!("dnnl_memory_desc_get_size"),
            matmul_desc_init: sym!("dnnl_matmul_desc_init"),
            attr_create: sym!("dnnl_primitive_attr_create"),
            attr_destroy: sym!("dnnl_primitive_attr_destroy"),
            attr_set_scratchpad_mode: sym!("dnnl_primitive_attr_set_scratchpad_mode"),
            iterator_create: sym!("dnnl_primitive_desc_iterator_create"),
            iterator_next: sym!("dnnl_primitive_desc_iterator_next"),
            iterator_fetch: sym!("dnnl_primitive_desc_iterator_fetch"),
            iterator_destroy: sym!("dnnl_primitive_desc_iterator_destroy"),
            desc_query: sym!("dnnl_primitive_desc_query"),
            desc_query_md: sym!("dnnl_primitive_desc_query_md"),
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
