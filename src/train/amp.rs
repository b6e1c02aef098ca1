//! Mixed precision on CUDA. tch's `autocast` turns libtorch's CUDA autocast on, whose default
//! dtype is fp16; bf16 needs `at::autocast::set_autocast_dtype`, which tch does not wrap, so it is
//! called here directly from libtorch_cpu (a plain C++ function taking two `int8_t` enums).

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
        Precision::Bf16 | Precision::Fp16 => {
            let dtype = if p == Precision::Bf16 { SCALAR_BF16 } else { SCALAR_HALF };
            // SAFETY: a plain setter of a global in libtorch_cpu; the enum values are c10's.
            unsafe { at_set_autocast_dtype(DEVICE_CUDA, dtype) };
            tch::autocast(true, f)
        }
        _ => f(),
    }
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
        autocast(Precision::Bf16, || ());
        assert_eq!(cuda_autocast_dtype(), SCALAR_BF16);
        assert_eq!(resolve(Precision::Auto, Device::Cpu), Precision::Fp32);
        assert_eq!(resolve(Precision::Auto, Device::Cuda(0)), Precision::Bf16);
    }
}
