// The shims' calling convention: each extern "C" function runs its body in `guard`, which turns a
// libtorch exception into `false` with the message in the caller's buffer instead of unwinding
// into Rust (`src/ffi.rs` reads it back).

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
  }
}

}  // namespace pixelseq
