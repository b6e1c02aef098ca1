//! Every foreign function pixelseq calls, and the calling convention of its C++ shims (`csrc/`).
//!
//! Each shim returns false on a C++ exception and leaves the message in an error buffer
//! (`csrc/guard.h`); [`call`] and [`call_for_tensor`] turn that into an error. Two invariants hold
//! wherever these functions are called:
//! - a `*mut C_tensor` handed to a shim is tch's handle, which on the C++ side is an
//!   `at::Tensor *` (torch-sys allocates it with `new at::Tensor`); a handle a shim returns through
//!   an out pointer is a new `at::Tensor` that the Rust [`Tensor`] made from it owns;
//! - a shim may change the data or the gradient of a tensor that Rust holds as `&Tensor`, as
//!   PyTorch's in-place operations do through shared storage (the optimizer's update, gradient
//!   scaling, clearing gradients); it never frees or replaces the handle. Callers wrap such calls
//!   in `tch::no_grad` where autograd must not record them.

use std::ffi::{c_char, c_int, c_ulong, c_void, CStr};

use anyhow::{bail, Result};
use tch::Tensor;
use torch_sys::C_tensor;

/// c10d's rendezvous store (csrc/dist.cpp), owned by `dist::Store`.
#[repr(C)]
pub(crate) struct PixelseqStore {
    _opaque: [u8; 0],
}

/// A c10d process group (csrc/dist.cpp), owned by `dist::Group`.
#[repr(C)]
pub(crate) struct PixelseqGroup {
    _opaque: [u8; 0],
}

/// A TorchScript module (`torch::jit::Module`, csrc/script.cpp), owned by [`Module`].
#[repr(C)]
pub(crate) struct PixelseqModule {
    _opaque: [u8; 0],
}

/// A CUDA graph and its side stream (csrc/cuda_graph.cpp), owned by `train::graph::CudaGraph`.
#[repr(C)]
pub(crate) struct PixelseqGraph {
    _opaque: [u8; 0],
}

/// The bucketed gradient reducer (csrc/dist.cpp), owned by `dist::GradReducer`.
#[repr(C)]
pub(crate) struct PixelseqReducer {
    _opaque: [u8; 0],
}

extern "C" {
    // csrc/autocast.cpp
    pub(crate) fn pixelseq_autocast_enter(enabled: bool, bf16: bool, prev: *mut bool, err: *mut c_char, err_len: usize) -> bool;
    pub(crate) fn pixelseq_autocast_exit(prev: bool, err: *mut c_char, err_len: usize) -> bool;
    pub(crate) fn pixelseq_autocast_state(enabled: *mut bool, bf16: *mut bool, err: *mut c_char, err_len: usize) -> bool;

    // csrc/cpu_allocator.cpp
    pub(crate) fn pixelseq_cpu_allocator_install(err: *mut c_char, err_len: usize) -> bool;
    pub(crate) fn pixelseq_cpu_allocator_stats(
        live: *mut u64,
        cached: *mut u64,
        peak: *mut u64,
        hits: *mut u64,
        misses: *mut u64,
        err: *mut c_char,
        err_len: usize,
    ) -> bool;
    pub(crate) fn pixelseq_cpu_allocator_trim(err: *mut c_char, err_len: usize) -> bool;
    pub(crate) fn pixelseq_cpu_allocator_configure(limit: u64, peaks: u64, err: *mut c_char, err_len: usize) -> bool;

    // csrc/cuda_graph.cpp
    pub(crate) fn pixelseq_graph_built() -> bool;
    pub(crate) fn pixelseq_graph_new(device: c_int, out: *mut *mut PixelseqGraph, err: *mut c_char, err_len: usize) -> bool;
    pub(crate) fn pixelseq_graph_free(graph: *mut PixelseqGraph);
    pub(crate) fn pixelseq_graph_side(graph: *mut PixelseqGraph, side: bool, err: *mut c_char, err_len: usize) -> bool;
    pub(crate) fn pixelseq_graph_capture_begin(graph: *mut PixelseqGraph, err: *mut c_char, err_len: usize) -> bool;
    pub(crate) fn pixelseq_graph_capture_end(graph: *mut PixelseqGraph, err: *mut c_char, err_len: usize) -> bool;
    pub(crate) fn pixelseq_graph_replay(graph: *mut PixelseqGraph, err: *mut c_char, err_len: usize) -> bool;

    // csrc/dist.cpp, csrc/dist_nccl.cpp
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pixelseq_store_new(
        host: *const c_char,
        port: u16,
        server: bool,
        world: c_int,
        prefix: *const c_char,
        timeout_ms: i64,
        out: *mut *mut PixelseqStore,
        err: *mut c_char,
        err_len: usize,
    ) -> bool;
    pub(crate) fn pixelseq_store_free(store: *mut PixelseqStore);
    pub(crate) fn pixelseq_store_set(
        store: *mut PixelseqStore,
        key: *const c_char,
        data: *const u8,
        len: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> bool;
    pub(crate) fn pixelseq_store_get(
        store: *mut PixelseqStore,
        key: *const c_char,
        timeout_ms: i64,
        data: *mut *mut c_char,
        len: *mut usize,
        err: *mut c_char,
        err_len: usize,
    ) -> bool;
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pixelseq_group_gloo(
        store: *mut PixelseqStore,
        prefix: *const c_char,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        out: *mut *mut PixelseqGroup,
        err: *mut c_char,
        err_len: usize,
    ) -> bool;
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pixelseq_group_nccl(
        store: *mut PixelseqStore,
        prefix: *const c_char,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        device: c_int,
        out: *mut *mut PixelseqGroup,
        err: *mut c_char,
        err_len: usize,
    ) -> bool;
    pub(crate) fn pixelseq_group_free(group: *mut PixelseqGroup);
    pub(crate) fn pixelseq_all_reduce(group: *mut PixelseqGroup, t: *mut C_tensor, op: c_int, err: *mut c_char, err_len: usize) -> bool;
    pub(crate) fn pixelseq_broadcast(
        group: *mut PixelseqGroup,
        ts: *const *mut C_tensor,
        n: usize,
        root: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> bool;
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pixelseq_reducer_new(
        group: *mut PixelseqGroup,
        params: *const *mut C_tensor,
        n: usize,
        first_cap: i64,
        cap: i64,
        out: *mut *mut PixelseqReducer,
        err: *mut c_char,
        err_len: usize,
    ) -> bool;
    pub(crate) fn pixelseq_reducer_layout(reducer: *const PixelseqReducer, buckets: *mut usize, bytes: *mut i64);
    pub(crate) fn pixelseq_reducer_arm(reducer: *mut PixelseqReducer, err: *mut c_char, err_len: usize) -> bool;
    pub(crate) fn pixelseq_reducer_finish(reducer: *mut PixelseqReducer, err: *mut c_char, err_len: usize) -> bool;
    pub(crate) fn pixelseq_reducer_free(reducer: *mut PixelseqReducer);

    // csrc/dropout.cpp
    pub(crate) fn pixelseq_dropout_mask(like: *const C_tensor, p: f64, out: *mut *mut C_tensor, err: *mut c_char, err_len: usize) -> bool;

    // csrc/fourier.cpp
    pub(crate) fn pixelseq_fourier_mix(x: *const C_tensor, out: *mut *mut C_tensor, err: *mut c_char, err_len: usize) -> bool;

    // csrc/multi_tensor.cpp
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pixelseq_fused_adamw(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        exp_avgs: *const *mut C_tensor,
        exp_avg_sqs: *const *mut C_tensor,
        step: *const C_tensor,
        n: usize,
        lr: f64,
        lr_tensor: *const C_tensor,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut c_char,
        err_len: usize,
    ) -> bool;
    pub(crate) fn pixelseq_total_norm(
        ts: *const *mut C_tensor,
        n: usize,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> bool;
    pub(crate) fn pixelseq_mul_(ts: *const *mut C_tensor, n: usize, factor: *const C_tensor, err: *mut c_char, err_len: usize) -> bool;
    pub(crate) fn pixelseq_clear_grads(ts: *const *mut C_tensor, n: usize, err: *mut c_char, err_len: usize) -> bool;

    // csrc/profile.cpp
    pub(crate) fn pixelseq_profile_start(cuda: bool, err: *mut c_char, err_len: usize) -> bool;
    pub(crate) fn pixelseq_profile_stop(trace_path: *const c_char, summary: *mut *mut c_char, err: *mut c_char, err_len: usize) -> bool;
    pub(crate) fn pixelseq_free(p: *mut c_char);

    // csrc/script.cpp
    pub(crate) fn pixelseq_trace_begin(
        name: *const c_char,
        inputs: *const *mut C_tensor,
        n: usize,
        out: *mut *mut PixelseqModule,
        err: *mut c_char,
        err_len: usize,
    ) -> bool;
    pub(crate) fn pixelseq_trace_end(
        module: *mut PixelseqModule,
        outputs: *const *mut C_tensor,
        n: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> bool;
    pub(crate) fn pixelseq_module_free(module: *mut PixelseqModule);
    pub(crate) fn pixelseq_script_wrap(
        model: *const PixelseqModule,
        name: *const c_char,
        source: *const c_char,
        data: *mut *mut c_char,
        len: *mut usize,
        err: *mut c_char,
        err_len: usize,
    ) -> bool;

    // glibc: a symbol of the libraries already loaded (the CUDA runtime, for memory figures).
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    // libc: a signal's disposition.
    fn signal(signum: c_int, handler: usize) -> usize;
    // libc: process attributes (the signal a process gets when its parent dies).
    fn prctl(option: c_int, arg2: c_ulong, arg3: c_ulong, arg4: c_ulong, arg5: c_ulong) -> c_int;
}

/// Restores SIGPIPE's default action (end the process) that the Rust runtime set to ignore.
pub(crate) fn default_sigpipe() {
    const SIGPIPE: c_int = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: setting a signal's disposition to the default has no other effect.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

/// Asks the kernel to send this process SIGKILL when its parent dies (`PR_SET_PDEATHSIG`): a
/// worker of `pixelseq --nproc` does not outlive its launcher. Async-signal-safe, so it may run
/// between fork and exec.
pub(crate) fn die_with_parent() -> std::io::Result<()> {
    const PR_SET_PDEATHSIG: c_int = 1;
    const SIGKILL: c_ulong = 9;
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets an attribute of the calling process.
    if unsafe { prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs one shim call with an error buffer; the first line of the C++ exception's message becomes
/// the error, prefixed with `what`.
pub(crate) fn call(what: &str, f: impl FnOnce(*mut c_char, usize) -> bool) -> Result<()> {
    let mut err = [0 as c_char; 1024];
    if f(err.as_mut_ptr(), err.len()) {
        return Ok(());
    }
    // SAFETY: the shim wrote a NUL-terminated message (snprintf) into the zeroed buffer.
    let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
    bail!("{what}: {}", msg.lines().find(|l| !l.trim().is_empty()).unwrap_or_default())
}

/// [`call`] for a shim that returns a new tensor through an out pointer: on success the shim
/// stored a heap tensor there, which the returned [`Tensor`] owns.
pub(crate) fn call_for_tensor(what: &str, f: impl FnOnce(*mut *mut C_tensor, *mut c_char, usize) -> bool) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    call(what, |err, len| f(&mut out, err, len))?;
    // SAFETY: the shim succeeded, so `out` is a tensor it allocated for us to own.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// tch handles of `ts`, borrowed for one shim call (the shim neither frees nor keeps them).
pub(crate) fn handles(ts: &[Tensor]) -> Vec<*mut C_tensor> {
    ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect()
}

/// A traced TorchScript module (csrc/script.cpp), freed on drop. tch's `CModule` keeps its handle
/// private, so a module that a shim must see is made here.
pub(crate) struct Module(*mut PixelseqModule);

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: the module came from pixelseq_trace_begin and is released once.
        unsafe { pixelseq_module_free(self.0) }
    }
}

/// Traces `f` on `inputs` into the method `forward` of a new module of class `name`, as
/// `torch.jit.trace` does (csrc/script.cpp).
pub(crate) fn trace(name: &str, inputs: &[Tensor], f: impl FnOnce(&[Tensor]) -> Vec<Tensor>) -> Result<Module> {
    let name = std::ffi::CString::new(name)?;
    let ins = handles(inputs);
    let mut raw: *mut PixelseqModule = std::ptr::null_mut();
    // SAFETY: a NUL-terminated name, live tensor handles (only read) and an out pointer.
    call("failed to start tracing", |err, len| unsafe {
        pixelseq_trace_begin(name.as_ptr(), ins.as_ptr(), ins.len(), &mut raw, err, len)
    })?;
    let module = Module(raw);
    let outputs = f(inputs);
    let outs = handles(&outputs);
    // SAFETY: the module being traced on this thread and live tensor handles (only read).
    call("failed to trace", |err, len| unsafe {
        pixelseq_trace_end(module.0, outs.as_ptr(), outs.len(), err, len)
    })?;
    Ok(module)
}

/// `model` as the submodule `model` of a new module `name` whose methods are compiled from the
/// TorchScript `source` (csrc/script.cpp), serialised as `torch.jit.save` writes it.
pub(crate) fn script_wrap(model: &Module, name: &str, source: &str) -> Result<Vec<u8>> {
    let (name, source) = (std::ffi::CString::new(name)?, std::ffi::CString::new(source)?);
    let (mut data, mut n): (*mut c_char, usize) = (std::ptr::null_mut(), 0);
    // SAFETY: a live module (borrowed), two NUL-terminated strings and two out pointers.
    call("failed to compile the TorchScript module", |err, len| unsafe {
        pixelseq_script_wrap(model.0, name.as_ptr(), source.as_ptr(), &mut data, &mut n, err, len)
    })?;
    // SAFETY: the shim malloc'd `n` bytes at `data`, which are ours to copy and free.
    let bytes = unsafe { std::slice::from_raw_parts(data as *const u8, n) }.to_vec();
    // SAFETY: `data` came from the shim's malloc and is freed once.
    unsafe { pixelseq_free(data) };
    Ok(bytes)
}

/// `cudaMemGetInfo(free, total)` of the CUDA runtime libtorch loaded.
pub(crate) type CudaMemGetInfo = unsafe extern "C" fn(free: *mut usize, total: *mut usize) -> c_int;
/// `cudaSetDevice(device)` of the CUDA runtime libtorch loaded.
pub(crate) type CudaSetDevice = unsafe extern "C" fn(device: c_int) -> c_int;

/// The CUDA runtime's `cudaMemGetInfo` and `cudaSetDevice`, looked up among the libraries already
/// loaded (`RTLD_DEFAULT`, the null handle on glibc).
pub(crate) fn cuda_runtime() -> Result<(CudaMemGetInfo, CudaSetDevice)> {
    let symbol = |name: &CStr| {
        // SAFETY: dlsym only reads the loaded libraries' symbol tables.
        let f = unsafe { dlsym(std::ptr::null_mut(), name.as_ptr()) };
        if f.is_null() {
            bail!("{name:?} not found: libcudart is not loaded, so CUDA memory cannot be measured");
        }
        Ok(f)
    };
    let (mem_get_info, set_device) = (symbol(c"cudaMemGetInfo")?, symbol(c"cudaSetDevice")?);
    // SAFETY: both symbols are the CUDA runtime's functions with exactly these signatures.
    Ok(unsafe {
        (
            std::mem::transmute::<*mut c_void, CudaMemGetInfo>(mem_get_info),
            std::mem::transmute::<*mut c_void, CudaSetDevice>(set_device),
        )
    })
}
