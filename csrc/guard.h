// The shims' calling convention: each extern "C" function runs its body in `guard`, which turns a
// C++ exception (libtorch's `c10::Error`, a standard exception, or anything else thrown) into
// `false` with the message in the caller's buffer instead of unwinding into Rust (`src/ffi.rs`
// reads it back).
//
// Tensors cross the boundary as tch's handles: a `C_tensor *` on the Rust side is an
// `at::Tensor *` here. A shim may change the data or the gradient of a tensor that Rust holds as
// `&Tensor` (an `at::Tensor` is a reference-counted handle to shared storage, as in PyTorch); it
// never frees or replaces the handle itself.

#pragma once

#include <cstdio>
#include <exception>

namespace pixelseq {

template <typename F>
bool guard(char *err, size_t err_len, F f) {
  try {
    f();
    return true;
  } catch (const std::exception &e) {
    std::snprintf(err, err_len, "%s", e.what());
    return false;
  } catch (...) {
    std::snprintf(err, err_len, "%s", "an unknown C++ exception");
    return false;
  }
}

}  // namespace pixelseq
