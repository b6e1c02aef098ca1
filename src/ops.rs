//! Safe wrappers of the C++ shims that models call (`csrc/fourier.cpp`, `csrc/dropout.cpp`), so
//! that no model file holds `unsafe`.

use anyhow::Result;
use tch::{Kind, Tensor};

use crate::ffi::{call_for_tensor, pixelseq_dropout_mask, pixelseq_fourier_mix};

/// Re(FFT₂(x)) over the last two axes (sequence, hidden), unnormalised as `jnp.fft.fftn`, in
/// float32 whatever the autocast kind: (B, L, D) → (B, L, D). `csrc/fourier.cpp` computes it from
/// a real FFT over the hidden axis and a complex one over the sequence axis on half the columns
/// (Hermitian symmetry gives the rest), and its gradient as the same map of the incoming gradient
/// (the map is symmetric): half the transforms of `fft2(x).real()` and of its autograd backward.
pub fn fourier_mix(xs: &Tensor) -> Tensor {
    let xs = xs.to_kind(Kind::Float);
    // SAFETY: a live tensor handle and an out pointer.
    let mixed = call_for_tensor("Fourier mixing", |out, err, len| unsafe {
        pixelseq_fourier_mix(xs.as_ptr(), out, err, len)
    });
    // Like tch's own tensor operations, a libtorch failure here (out of memory) is a panic.
    mixed.expect("Fourier mixing") // (B, L, D)
}

/// A CPU dropout mask of `like`'s shape and dtype: 0 with probability `p` ∈ [0, 1), else
/// 1/(1 − p) (`csrc/dropout.cpp`: all threads, seeded from libtorch's default CPU generator).
pub fn dropout_mask(like: &Tensor, p: f64) -> Result<Tensor> {
    // SAFETY: a live tensor handle and an out pointer.
    call_for_tensor("dropout mask", |out, err, len| unsafe {
        pixelseq_dropout_mask(like.as_ptr(), p, out, err, len)
    })
}
