//! Mixed precision on CUDA. tch's `autocast` calls libtorch's deprecated device-less setters
//! (which print a warning on every call) and leaves the dtype at libtorch's fp16 default. Here the
//! current functions `at::autocast::{set,is}_autocast_enabled(DeviceType, …)` and
//! `set_autocast_dtype(DeviceType, ScalarType)` are called directly from libtorch_cpu (plain C++
//! functions taking `int8_t` enums and a bool), with tch's nesting and cache bookkeeping.

use crate::config::Precision;
use tch::Device;

/// `c10::DeviceType::CUDA`.
const DEVICE_CUDA: i8 = 1;
/// `c10::ScalarType::Half`.
const SCALAR_HALF: i8 = 5;
/// `c10::ScalarType::BFloat16`.
const SCALAR_BF16: i8 = 15;

extern "C" {
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
    fn at_get_autocast_dtype(device: i8) -> i8;
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn at_set_autocast_enabled(device: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn at_is_autocast_enabled(device: i8) -> bool;
}

/// Runs `f` with CUDA autocast set to `enabled` (and `dtype` when enabling), restoring the
/// previous state afterwards.
fn with_cuda_autocast<T>(enabled: bool, dtype: i8, f: impl FnOnce() -> T) -> T {
    // SAFETY: plain setters and getters of libtorch's thread-local autocast state; the enum
    // values are c10's; nesting and cache calls are tch's own C wrappers.
    let prev = unsafe {
        let prev = at_is_autocast_enabled(DEVICE_CUDA);
        if enabled {
            at_set_autocast_dtype(DEVICE_CUDA, dtype);
        }
        at_set_autocast_enabled(DEVICE_CUDA, enabled);
        torch_sys::at_autocast_increment_nesting();
        prev
    };
    let out = f();
    // SAFETY: as above.
    unsafe {
        if torch_sys::at_autocast_decrement_nesting() == 0 {
            torch_sys::at_autocast_clear_cache();
        }
        at_set_autocast_enabled(DEVICE_CUDA, prev);
    }
    out
}

/// The precision a run uses on `device`: `auto` is bf16 on CUDA and fp32 on CPU; half precisions
/// fall back to fp32 on CPU, where autocast is not used.
pub fn resolve(p: Precision, device: Device) -> Precision {
    match (p, device.is_cuda()) {
        (_, false) => Precision::Fp32,
        (Precision::Auto, true) => Precision::Bf16,
        (p, true) => p,
    }
}

/// Runs `f` under CUDA autocast with the dtype of `p` (fp32: no autocast).
pub fn autocast<T>(p: Precision, f: impl FnOnce() -> T) -> T {
    match p {
        Precision::Bf16 => with_cuda_autocast(true, SCALAR_BF16, f),
        Precision::Fp16 => with_cuda_autocast(true, SCALAR_HALF, f),
        _ => f(),
    }
}

/// Runs `f` in full precision even inside an autocast region (FFTs, complex arithmetic,
/// pseudo-inverses and long recurrences).
pub fn without_autocast<T>(f: impl FnOnce() -> T) -> T {
    with_cuda_autocast(false, SCALAR_HALF, f)
}

/// The dtype CUDA autocast would use now, as c10's scalar-type code.
pub fn cuda_autocast_dtype() -> i8 {
    // SAFETY: a plain getter of a global in libtorch_cpu.
    unsafe { at_get_autocast_dtype(DEVICE_CUDA) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_the_cuda_autocast_dtype() {
        assert_eq!(cuda_autocast_dtype(), SCALAR_HALF, "libtorch's default CUDA autocast dtype is fp16");
        // SAFETY: a getter of libtorch's thread-local state.
        let enabled = || unsafe { at_is_autocast_enabled(DEVICE_CUDA) };
        autocast(Precision::Bf16, || {
            assert!(enabled());
            without_autocast(|| assert!(!enabled()));
            assert!(enabled());
        });
        assert!(!enabled());
        assert_eq!(cuda_autocast_dtype(), SCALAR_BF16);
        assert_eq!(resolve(Precision::Auto, Device::Cpu), Precision::Fp32);
        assert_eq!(resolve(Precision::Auto, Device::Cuda(0)), Precision::Bf16);
    }
}
