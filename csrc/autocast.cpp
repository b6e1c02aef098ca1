// CUDA mixed precision for the Rust side. tch's `autocast` calls libtorch's deprecated device-less
// setters (which print a warning on every call) and leaves the dtype at libtorch's fp16 default;
// these shims call the current per-device functions of `ATen/autocast_mode.h` with tch's nesting
// and cache bookkeeping. `src/amp.rs` pairs every enter with an exit through a Drop guard.

#include <ATen/autocast_mode.h>

#include "guard.h"

using pixelseq::guard;

extern "C" {

// Enters a region with CUDA autocast `enabled`; when enabling, the autocast dtype becomes bf16
// (`bf16`) or fp16. The previous enabled flag goes to `*prev` for the matching exit.
bool pixelseq_autocast_enter(bool enabled, bool bf16, bool *prev, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    *prev = at::autocast::is_autocast_enabled(at::kCUDA);
    if (enabled) at::autocast::set_autocast_dtype(at::kCUDA, bf16 ? at::kBFloat16 : at::kHalf);
    at::autocast::set_autocast_enabled(at::kCUDA, enabled);
    at::autocast::increment_nesting();
  });
}

// Leaves the region: restores the enabled flag `prev` and clears the cast cache when the
// outermost region ends.
bool pixelseq_autocast_exit(bool prev, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(at::kCUDA, prev);
  });
}

// Whether CUDA autocast is on, and whether its dtype is bf16 (else fp16, libtorch's default).
bool pixelseq_autocast_state(bool *enabled, bool *bf16, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    *enabled = at::autocast::is_autocast_enabled(at::kCUDA);
    *bf16 = at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16;
  });
}

}  // extern "C"
