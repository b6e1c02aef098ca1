//! Peak memory of a measurement: the process's peak resident set on the CPU, device memory in use
//! on CUDA (see the module doc of `bench`).

use std::ffi::c_int;

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use crate::ffi::{cuda_runtime, CudaMemGetInfo};

/// Peak resident set of this process (`VmHWM`), MiB.
pub(super) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Device memory in use through the CUDA runtime that libtorch already loaded.
pub(super) struct CudaMemory {
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
