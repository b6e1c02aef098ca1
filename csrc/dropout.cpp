// Dropout masks on the CPU from a counter-based generator, on all threads.
//
// libtorch's CPU dropout draws its mask with `bernoulli_`, which on non-Intel CPUs runs one
// Mersenne Twister on one thread: about 4 ns per element on this project's machines, where the
// multiplication by the mask costs 0.15 ns. That made dropout the largest single cost of a CPU
// training step of the attention models (47% of transformer-lra's at L = 256). Here element i's
// keep/drop decision is a 32-bit half of splitmix64's value number i/2 for a per-call seed, so any
// slice of the mask can be computed independently: the work splits over threads, and the mask
// does not depend on how many there are. The seed comes from libtorch's default CPU generator, so
// `manual_seed` makes masks reproducible exactly as it does for libtorch's own dropout.
//
// splitmix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014)
// passes BigCrush; each output is a bijective mix of seed + (i + 1)·γ.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <mutex>

#include "guard.h"

using pixelseq::guard;

namespace {

inline uint64_t splitmix64(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t next_seed() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
}

}  // namespace

extern "C" {

// A new contiguous tensor of `like`'s shape, dtype and (CPU) device holding 0 with probability
// `p` and 1/(1 − p) otherwise, independently per element: inverted dropout is `x · mask`.
// p is in [0, 1); element i is dropped when its 32-bit uniform u satisfies u < round(p · 2^32).
bool pixelseq_dropout_mask(const at::Tensor *like, double p, at::Tensor **out, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    TORCH_CHECK(like->device().is_cpu(), "dropout masks are made on the CPU, not on ", like->device());
    TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout probability ", p, " is outside [0, 1)");
    auto mask = at::empty(like->sizes(), like->options().memory_format(at::MemoryFormat::Contiguous));
    const uint64_t seed = next_seed();
    const uint64_t threshold = (uint64_t)std::llround(p * 4294967296.0);
    const int64_t n = mask.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, mask.scalar_type(), "dropout_mask", [&] {
      scalar_t *data = mask.data_ptr<scalar_t>();
      const scalar_t keep = static_cast<scalar_t>(1.0 / (1.0 - p));
      const scalar_t drop = static_cast<scalar_t>(0.0);
      at::parallel_for(0, (n + 1) / 2, 32768, [&](int64_t begin, int64_t end) {
        for (int64_t w = begin; w < end; w++) {
          const uint64_t r = splitmix64(seed, (uint64_t)w);
          data[2 * w] = (r & 0xffffffffull) < threshold ? drop : keep;
          if (2 * w + 1 < n) data[2 * w + 1] = (r >> 32) < threshold ? drop : keep;
        }
      });
    });
    *out = new at::Tensor(mask);
  });
}

}  // extern "C"
