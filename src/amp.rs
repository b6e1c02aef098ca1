//! Mixed precision on CUDA: the [`Precision`] a run asks for and CUDA autocast regions, set through
//! libtorch's current per-device autocast functions (`csrc/autocast.cpp`). A region is left by a
//! Drop guard, so a panic inside it leaves autocast as it found it.

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::ffi::{call, pixelseq_autocast_enter, pixelseq_autocast_exit, pixelseq_autocast_state};

/// Numeric precision of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// bf16 autocast on CUDA, fp32 on CPU.
    Auto,
    Fp32,
    Bf16,
    Fp16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Auto => "auto",
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        })
    }
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

/// An open CUDA autocast region; dropping it restores the previous state.
struct Region {
    prev: bool,
}

impl Region {
    fn enter(enabled: bool, bf16: bool) -> Region {
        let mut prev = false;
        // SAFETY: setters of libtorch's thread-local autocast state and an out pointer.
        call("entering a CUDA autocast region", |err, len| unsafe {
            pixelseq_autocast_enter(enabled, bf16, &mut prev, err, len)
        })
        .expect("libtorch's autocast setters do not throw");
        Region { prev }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: as in `enter`; pairs with the enter that made this region.
        call("leaving a CUDA autocast region", |err, len| unsafe {
            pixelseq_autocast_exit(self.prev, err, len)
        })
        .expect("libtorch's autocast setters do not throw");
    }
}

/// Runs `f` under CUDA autocast with the dtype of `p` (fp32: no autocast).
pub fn autocast<T>(p: Precision, f: impl FnOnce() -> T) -> T {
    let _region = match p {
        Precision::Bf16 => Region::enter(true, true),
        Precision::Fp16 => Region::enter(true, false),
        Precision::Auto | Precision::Fp32 => return f(),
    };
    f()
}

/// Runs `f` in full precision even inside an autocast region (FFTs, complex arithmetic,
/// pseudo-inverses and long recurrences).
pub fn without_autocast<T>(f: impl FnOnce() -> T) -> T {
    let _region = Region::enter(false, false);
    f()
}

/// Whether CUDA autocast is on now, and its dtype ([`Precision::Bf16`] or [`Precision::Fp16`]).
pub fn cuda_autocast_state() -> (bool, Precision) {
    let (mut enabled, mut bf16) = (false, false);
    // SAFETY: getters of libtorch's autocast state and two out pointers.
    call("reading the CUDA autocast state", |err, len| unsafe {
        pixelseq_autocast_state(&mut enabled, &mut bf16, err, len)
    })
    .expect("libtorch's autocast getters do not throw");
    (enabled, if bf16 { Precision::Bf16 } else { Precision::Fp16 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_the_cuda_autocast_dtype_and_restores_the_state() {
        let enabled = || cuda_autocast_state().0;
        autocast(Precision::Bf16, || {
            assert_eq!(cuda_autocast_state(), (true, Precision::Bf16));
            without_autocast(|| assert!(!enabled()));
            assert!(enabled());
        });
        assert!(!enabled());
        autocast(Precision::Fp16, || assert_eq!(cuda_autocast_state(), (true, Precision::Fp16)));
        assert_eq!(resolve(Precision::Auto, Device::Cpu), Precision::Fp32);
        assert_eq!(resolve(Precision::Auto, Device::Cuda(0)), Precision::Bf16);
        assert_eq!(Precision::Bf16.to_string(), "bf16");
    }

    #[test]
    fn a_panic_inside_a_region_leaves_autocast_off() {
        let caught = std::panic::catch_unwind(|| autocast(Precision::Bf16, || panic!("inside")));
        assert!(caught.is_err());
        assert!(!cuda_autocast_state().0, "autocast stayed on after a panic");
    }
}
