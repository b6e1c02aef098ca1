//! Safe calls into `csrc/multi_tensor.cpp`: libtorch's fused multi-tensor kernels (AdamW, the
//! global gradient norm, in-place scaling) and setting gradients to none, one call per list of
//! tensors instead of several kernels per tensor.

use anyhow::Result;
use tch::Tensor;

use crate::ffi::{call, call_for_tensor, handles, pixelseq_clear_grads, pixelseq_fused_adamw, pixelseq_mul_, pixelseq_total_norm};

/// Hyperparameters of one fused AdamW call.
pub struct AdamWStep<'a> {
    /// The learning rate: a number, or a float32 scalar on the parameters' device that the kernel
    /// reads when it runs (what a CUDA graph replays).
    pub lr: Lr<'a>,
    pub betas: [f64; 2],
    pub weight_decay: f64,
    pub eps: f64,
}

/// Where the fused kernel takes its learning rate from.
pub enum Lr<'a> {
    Value(f64),
    Tensor(&'a Tensor),
}

/// One AdamW update of `params` in place (PyTorch's `AdamW(fused=True)` kernel). All tensors
/// share one dtype and device; `step` is the float32 step count (from 1) on that device.
pub fn fused_adamw(params: &[Tensor], grads: &[Tensor], m: &[Tensor], v: &[Tensor], step: &Tensor, h: &AdamWStep) -> Result<()> {
    let n = params.len();
    assert!(
        grads.len() == n && m.len() == n && v.len() == n,
        "fused_adamw: lists of different lengths"
    );
    let (p, g, m, v) = (handles(params), handles(grads), handles(m), handles(v));
    let (lr, lr_tensor) = match h.lr {
        Lr::Value(lr) => (lr, std::ptr::null()),
        Lr::Tensor(t) => (0.0, t.as_ptr() as *const _),
    };
    call("fused AdamW", |err, len| {
        // SAFETY: four arrays of n live tensor handles and one or two scalar tensors (or null),
        // borrowed for the call.
        unsafe {
            pixelseq_fused_adamw(
                p.as_ptr(),
                g.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                step.as_ptr(),
                n,
                lr,
                lr_tensor,
                h.betas[0],
                h.betas[1],
                h.weight_decay,
                h.eps,
                err,
                len,
            )
        }
    })
}

/// The 2-norm of all of `ts` together, a float32 scalar on their device (no host synchronisation).
pub fn total_norm(ts: &[Tensor]) -> Result<Tensor> {
    let hs = handles(ts);
    // SAFETY: an array of live handles and an out pointer.
    call_for_tensor("gradient norm", |out, err, len| unsafe {
        pixelseq_total_norm(hs.as_ptr(), hs.len(), out, err, len)
    })
}

/// Multiplies each of `ts` in place by the scalar tensor `factor`.
pub fn mul_(ts: &[Tensor], factor: &Tensor) -> Result<()> {
    let hs = handles(ts);
    // SAFETY: an array of live handles and a live scalar tensor.
    call("gradient scaling", |err, len| unsafe {
        pixelseq_mul_(hs.as_ptr(), hs.len(), factor.as_ptr(), err, len)
    })
}

/// Sets the gradients of `ts` to none, as PyTorch's `zero_grad(set_to_none=True)`.
pub fn clear_grads(ts: &[Tensor]) -> Result<()> {
    let hs = handles(ts);
    // SAFETY: an array of live handles.
    call("clearing gradients", |err, len| unsafe {
        pixelseq_clear_grads(hs.as_ptr(), hs.len(), err, len)
    })
}
