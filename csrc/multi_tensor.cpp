// Multi-tensor kernels of libtorch that tch does not wrap: the fused AdamW update, the global
// gradient norm and its rescaling over a whole list of tensors, and setting gradients to none.
// One call covers every parameter of a group, where a per-tensor loop launches several kernels per
// parameter; this is what `torch.optim.AdamW(fused=True)`, `clip_grad_norm_(foreach=True)` and
// `zero_grad(set_to_none=True)` do in PyTorch.
//
// Tensors arrive as tch's handles (`at::Tensor *`); errors come back through `guard.h`.

#include <ATen/ATen.h>

#include <vector>

#include "guard.h"

using pixelseq::guard;

namespace {

std::vector<at::Tensor> list(at::Tensor *const *ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; i++) out.push_back(*ts[i]);
  return out;
}

}  // namespace

extern "C" {

// One AdamW step (decoupled weight decay, bias-corrected moments, eps outside the square root) of
// n parameters of one dtype and device; `step` holds the step count, starting at 1, as a float32
// scalar on that device. The learning rate is `lr`, or when `lr_tensor` is given the float32
// scalar it holds on that device (the kernel's capturable form: a CUDA graph replays it with
// whatever value the tensor holds then).
bool pixelseq_fused_adamw(at::Tensor *const *params, at::Tensor *const *grads, at::Tensor *const *exp_avgs,
                          at::Tensor *const *exp_avg_sqs, const at::Tensor *step, size_t n, double lr,
                          const at::Tensor *lr_tensor, double beta1, double beta2, double weight_decay, double eps,
                          char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    std::vector<at::Tensor> steps(n, *step);
    auto ps = list(params, n), gs = list(grads, n), ms = list(exp_avgs, n), vs = list(exp_avg_sqs, n);
    if (lr_tensor)
      at::_fused_adamw_(ps, gs, ms, vs, {}, steps, *lr_tensor, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                        /*maximize=*/false);
    else
      at::_fused_adamw_(ps, gs, ms, vs, {}, steps, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                        /*maximize=*/false);
  });
}

// The 2-norm of the n tensors taken together, as a new float32 scalar on their device.
bool pixelseq_total_norm(at::Tensor *const *ts, size_t n, at::Tensor **out, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    auto norms = at::_foreach_norm(list(ts, n), 2, at::kFloat);
    *out = new at::Tensor(at::linalg_vector_norm(at::stack(norms), 2));
  });
}

// Multiplies each of the n tensors in place by the scalar tensor `factor`.
bool pixelseq_mul_(at::Tensor *const *ts, size_t n, const at::Tensor *factor, char *err, size_t err_len) {
  return guard(err, err_len, [&] { at::_foreach_mul_(list(ts, n), *factor); });
}

// Drops the gradients of the n tensors: the next backward pass writes fresh ones instead of
// accumulating into zeroed buffers.
bool pixelseq_clear_grads(at::Tensor *const *ts, size_t n, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    for (size_t i = 0; i < n; i++) ts[i]->mutable_grad().reset();
  });
}

}  // extern "C"
