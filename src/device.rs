//! Devices: parsing `--device`, naming a device in records, waiting for its queued work, the CPU's
//! tensor allocator, and how much memory a device has and uses.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::ffi::c_int;

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use crate::ffi::{
    call, cuda_runtime, pixelseq_cpu_allocator_configure, pixelseq_cpu_allocator_install, pixelseq_cpu_allocator_stats,
    pixelseq_cpu_allocator_trim, CudaMemGetInfo,
};

/// Environment variable choosing libtorch's CPU allocator: `caching` (the default) or `system`.
pub const CPU_ALLOCATOR_ENV: &str = "PIXELSEQ_CPU_ALLOCATOR";

/// Memory kept free for the rest of the process (libtorch's code, small blocks, the data) when
/// the caching allocator's limit is set from the memory available.
const HEADROOM: u64 = 512 << 20;

/// The limit the caching allocator was given (0: none).
static CPU_LIMIT: AtomicU64 = AtomicU64::new(0);
/// How many times its peak the caching allocator's live + cached memory may reach.
static CPU_PEAKS: AtomicU64 = AtomicU64::new(1);
/// Whether the caching allocator is installed in this process.
static CACHING: AtomicBool = AtomicBool::new(false);

/// Makes `csrc/cpu_allocator.cpp` libtorch's CPU allocator, unless `$PIXELSEQ_CPU_ALLOCATOR` is
/// `system`: blocks of 64 KiB and more are kept on free and reused for the next request of the
/// same size, so a training step does not page-fault its activations again (see that file);
/// live + cached memory stays within the highest live total seen plus the largest block (see
/// [`cache_for_inference`]). Tensors are limited to the
/// memory available now (less 512 MiB): one that does not fit is libtorch's out-of-memory error,
/// not the kernel's OOM killer.
pub fn install_cpu_allocator() -> Result<()> {
    match std::env::var(CPU_ALLOCATOR_ENV).as_deref() {
        Err(_) | Ok("caching") => {
            // SAFETY: registers a process-lifetime allocator object with libtorch.
            call("installing the caching CPU allocator", |err, len| unsafe {
                pixelseq_cpu_allocator_install(err, len)
            })?;
            let limit = cpu_memory_available().map_or(0, |a| a.saturating_sub(HEADROOM));
            CPU_LIMIT.store(limit, Ordering::Relaxed);
            CACHING.store(true, Ordering::Relaxed);
            configure_cpu_allocator();
            Ok(())
        }
        Ok("system") => Ok(()),
        Ok(other) => bail!("${CPU_ALLOCATOR_ENV} = `{other}`: expected `caching` or `system`"),
    }
}

fn configure_cpu_allocator() {
    let (limit, peaks) = (CPU_LIMIT.load(Ordering::Relaxed), CPU_PEAKS.load(Ordering::Relaxed));
    // SAFETY: sets three integers under the allocator's lock.
    call("configuring the CPU allocator", |err, len| unsafe {
        pixelseq_cpu_allocator_configure(limit, peaks, err, len)
    })
    .expect("configuring does not throw");
}

/// Restarts the caching allocator's peak from the memory in use now (for a measurement).
pub fn reset_cpu_peak() {
    configure_cpu_allocator();
}

/// For a process that only runs passes without gradients (`eval`, `predict`): lets the caching
/// CPU allocator keep up to twice its peak live memory (within its limit). Such a pass frees each
/// block soon after making it, so its peak is small while the blocks of different sizes it cycles
/// through add up to more; with room for one block beyond the peak it missed a quarter of its
/// large blocks on every batch (s4d-small scored at batch 256: 1.6× slower, 10× the kernel time).
pub fn cache_for_inference() {
    CPU_PEAKS.store(2, Ordering::Relaxed);
    if caching_cpu_allocator() {
        configure_cpu_allocator();
    }
}

/// Whether the caching CPU allocator is libtorch's CPU allocator in this process.
pub fn caching_cpu_allocator() -> bool {
    CACHING.load(Ordering::Relaxed)
}

/// `MemAvailable` of `/proc/meminfo`, bytes: what can be allocated without swapping.
pub fn cpu_memory_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Memory a process may still take on `device`, bytes: `MemAvailable` on a CPU, free memory on a
/// GPU.
pub fn memory_available(device: Device) -> Result<f64> {
    match device {
        Device::Cuda(i) => Ok(CudaMemory::new(i)?.free()? as f64),
        _ => match cpu_memory_available() {
            Some(b) => Ok(b as f64),
            None => bail!("cannot read MemAvailable from /proc/meminfo to check what fits in memory"),
        },
    }
}

/// Runs `f` with the caching CPU allocator refusing any large block that would take the memory
/// in use more than `bytes` beyond what it is now (its own limit still holds): a measurement that
/// would not fit ends in libtorch's out-of-memory error there instead of taking the memory.
pub fn with_cpu_headroom<T>(bytes: f64, f: impl FnOnce() -> T) -> T {
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            CPU_LIMIT.store(self.0, Ordering::Relaxed);
            configure_cpu_allocator();
        }
    }
    if !caching_cpu_allocator() {
        return f();
    }
    let own = CPU_LIMIT.load(Ordering::Relaxed);
    let _restore = Restore(own);
    let limit = cpu_allocator_stats().live.saturating_add(bytes.max(0.0) as u64);
    CPU_LIMIT.store(if own == 0 { limit } else { limit.min(own) }, Ordering::Relaxed);
    configure_cpu_allocator();
    f()
}

/// What the caching CPU allocator holds, in bytes of large blocks, and how often it reused one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuAllocatorStats {
    pub live: u64,
    pub cached: u64,
    pub peak: u64,
    pub hits: u64,
    pub misses: u64,
}

/// The caching CPU allocator's counters (all zero when it is not installed).
pub fn cpu_allocator_stats() -> CpuAllocatorStats {
    let mut s = CpuAllocatorStats::default();
    // SAFETY: five out pointers to plain integers and an error buffer.
    call("reading the CPU allocator's counters", |err, len| unsafe {
        pixelseq_cpu_allocator_stats(&mut s.live, &mut s.cached, &mut s.peak, &mut s.hits, &mut s.misses, err, len)
    })
    .expect("reading counters does not throw");
    s
}

/// Returns the caching CPU allocator's free blocks to the system (memory in use stays).
pub fn trim_cpu_allocator() {
    // SAFETY: frees only blocks no tensor refers to.
    call("trimming the CPU allocator", |err, len| unsafe {
        pixelseq_cpu_allocator_trim(err, len)
    })
    .expect("trimming does not throw");
}

/// `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`; `flag` names the option in errors.
pub fn parse(s: &str, flag: &str) -> Result<Device> {
    let cuda = |i: usize| {
        if !tch::Cuda::is_available() {
            bail!("{flag} {s}: CUDA is not available on this machine (is LD_LIBRARY_PATH pointing at torch/lib?)");
        }
        let n = tch::Cuda::device_count() as usize;
        if i >= n {
            bail!("{flag} {s}: only {n} CUDA device(s) present");
        }
        Ok(Device::Cuda(i))
    };
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => cuda(i),
            None => bail!("{flag} {s}: expected auto, cpu, cuda or cuda:N"),
        },
    }
}

/// Cores this process may run on: physical cores (hyper-threads of one core counted once) among
/// the CPUs it is allowed to use.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut cores = std::collections::BTreeSet::new();
    let mut physical = "";
    for line in cpuinfo.lines() {
        let (key, value) = line.split_once(':').map_or(("", ""), |(k, v)| (k.trim(), v.trim()));
        match key {
            "physical id" => physical = value,
            "core id" => {
                cores.insert((physical, value));
            }
            _ => {}
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

/// The CPU threads for libtorch: `requested`, at most the cores this process may run on (more
/// only make every operation's threads wait for each other: a warning says so), else the
/// physical cores.
pub fn cpu_threads(requested: Option<i32>) -> Result<i32> {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
    match requested {
        Some(n) if n < 1 => bail!("--threads {n}: must be >= 1"),
        Some(n) if n > logical => {
            eprintln!(
                "warning: --threads {n} is more than the {logical} cores this process may use; using {logical}                  (oversubscribed threads wait for each other at every operation)"
            );
            Ok(logical)
        }
        Some(n) => Ok(n),
        None => Ok(physical_cores() as i32),
    }
}

/// `cpu` or `cuda:N`, as [`parse`] reads it back.
pub fn arg(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// A readable device name for records: `cuda:N`, or `cpu (T threads)` (`cpu (1 thread)`).
pub fn name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => cpu_name(tch::get_num_threads()),
    }
}

fn cpu_name(threads: i32) -> String {
    match threads {
        1 => "cpu (1 thread)".into(),
        _ => format!("cpu ({threads} threads)"),
    }
}

/// Waits for the device's queued work (nothing to wait for on CPU).
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`), bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Resident set of this process (`VmRSS`), bytes.
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// Peak resident set of this process since it started or since [`reset_peak_rss`] (`VmHWM`), bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// Restarts the peak resident set from the current one (Linux: `5` into `/proc/self/clear_refs`).
pub fn reset_peak_rss() {
    // Best effort: without it the peak only starts higher.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set of this process (`VmHWM`), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    peak_rss_bytes().map(|b| b as f64 / (1u64 << 20) as f64)
}

/// Device memory in use through the CUDA runtime that libtorch already loaded.
pub struct CudaMemory {
    mem_get_info: CudaMemGetInfo,
    /// Bytes in use before the model existed (the CUDA context, libtorch's first block).
    pub baseline: u64,
}

impl CudaMemory {
    /// Initialises CUDA on device `index`, makes it current for the runtime, and takes the baseline.
    pub fn new(index: usize) -> Result<CudaMemory> {
        let _ = Tensor::zeros([1], (Kind::Float, Device::Cuda(index)));
        tch::Cuda::synchronize(index as i64);
        let (mem_get_info, set_device) = cuda_runtime()?;
        // SAFETY: a valid device index (the tensor above was created on it).
        let rc = unsafe { set_device(index as c_int) };
        if rc != 0 {
            bail!("cudaSetDevice({index}) failed with error {rc}");
        }
        let mut m = CudaMemory { mem_get_info, baseline: 0 };
        m.baseline = m.used()?;
        Ok(m)
    }

    /// Free bytes on the current device.
    pub fn free(&self) -> Result<u64> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: two valid out-pointers.
        let rc = unsafe { (self.mem_get_info)(&mut free, &mut total) };
        if rc != 0 {
            bail!("cudaMemGetInfo failed with error {rc}");
        }
        Ok(free as u64)
    }

    /// Bytes in use on the current device: total − free.
    pub fn used(&self) -> Result<u64> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: two valid out-pointers.
        let rc = unsafe { (self.mem_get_info)(&mut free, &mut total) };
        if rc != 0 {
            bail!("cudaMemGetInfo failed with error {rc}");
        }
        Ok((total - free) as u64)
    }
}

/// The first line of libtorch's message in a panic raised by tch (`… Torch("message…")`), if the
/// panic is one.
pub(crate) fn libtorch_message(panic: &str) -> Option<String> {
    let start = panic.find("Torch(\"")? + "Torch(\"".len();
    let body = &panic[start..];
    // tch formats the message with `{:?}`: newlines and quotes are escaped.
    let first = body.split("\\n").next().unwrap_or(body);
    let first = first.strip_suffix("\")").unwrap_or(first);
    Some(first.replace("\\\"", "\"").replace("\\\\", "\\").trim().to_string())
}

/// Whether libtorch's message says an allocation failed (CPU or CUDA).
pub(crate) fn is_out_of_memory(msg: &str) -> bool {
    [
        "out of memory",
        "not enough memory",
        "DefaultCPUAllocator",
        "CUDA error: out of memory",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

/// Whether a caught panic is libtorch's out-of-memory error (an allocation refused).
pub(crate) fn is_out_of_memory_panic(payload: &(dyn std::any::Any + Send)) -> bool {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    libtorch_message(text).is_some_and(|m| is_out_of_memory(&m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_devices() {
        assert_eq!(parse("cpu", "--device").unwrap(), Device::Cpu);
        assert_eq!(arg(Device::Cuda(3)), "cuda:3");
        assert_eq!(name(Device::Cuda(1)), "cuda:1");
        assert_eq!((cpu_name(1).as_str(), cpu_name(2).as_str()), ("cpu (1 thread)", "cpu (2 threads)"));
        let err = parse("tpu", "--device").unwrap_err().to_string();
        assert_eq!(err, "--device tpu: expected auto, cpu, cuda or cuda:N");
    }
}
