// Dropout masks on the CPU from a counter-based generator, on all threads.
//
// libtorch's CPU dropout draws its mask with `bernoulli_`, which on non-Intel CPUs runs one
// Mersenne Twister on one thread: 20 ms for 4M elements on this project's 2-core AMD machine,
// where this file's mask takes 0.5 ms and the whole dropout 4 ms. That made dropout the largest
// single cost of a CPU training step of the attention models (47% of transformer-lra's at
// L = 256). Here element i's keep/drop decision is a 32-bit half of splitmix64's value number i/2
// for a per-call seed, so any slice of the mask can be computed independently: the work splits
// over threads, vectorises, and the mask depends neither on the number of threads nor on the
// instruction set. The seed comes from libtorch's default CPU generator, so `manual_seed` makes
// masks reproducible exactly as it does for libtorch's own dropout.
//
// splitmix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014)
// passes BigCrush; each output is a bijective mix of seed + (i + 1)·γ.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
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

// On x86-64 with GCC, one copy of `fill` per instruction set, chosen at load time: with AVX-512DQ
// the 64-bit multiplications vectorise. Elsewhere (aarch64, clang) one portable copy.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PIXELSEQ_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PIXELSEQ_CLONES
#endif

// Mask values for word indices [begin, end): word w decides elements 2w and 2w + 1.
PIXELSEQ_CLONES
void fill(float *data, int64_t begin, int64_t end, uint64_t seed, uint64_t threshold, float keep) {
  for (int64_t w = begin; w < end; w++) {
    const uint64_t r = splitmix64(seed, (uint64_t)w);
    data[2 * w] = (r & 0xffffffffull) < threshold ? 0.0f : keep;
    data[2 * w + 1] = (r >> 32) < threshold ? 0.0f : keep;
  }
}

uint64_t next_seed() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
}

}  // namespace

extern "C" {

// A new contiguous tensor of `like`'s shape, floating-point dtype and (CPU) device holding 0 with
// probability `p` and 1/(1 − p) otherwise, independently per element: inverted dropout is
// `x · mask`. Made in float32 (converted for other dtypes).
// p is in [0, 1); element i is dropped when its 32-bit uniform u satisfies u < round(p · 2^32).
bool pixelseq_dropout_mask(const at::Tensor *like, double p, at::Tensor **out, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    TORCH_CHECK(like->device().is_cpu(), "dropout masks are made on the CPU, not on ", like->device());
    TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout probability ", p, " is outside [0, 1)");
    TORCH_CHECK(at::isFloatingType(like->scalar_type()), "dropout needs a floating-point tensor, not ",
                like->scalar_type());
    const int64_t n = like->numel();
    auto mask = at::empty({n + n % 2}, like->options().dtype(at::kFloat));
    const uint64_t seed = next_seed();
    const uint64_t threshold = (uint64_t)std::llround(p * 4294967296.0);
    const float keep = (float)(1.0 / (1.0 - p));
    float *data = mask.data_ptr<float>();
    at::parallel_for(0, (n + 1) / 2, 32768,
                     [&](int64_t begin, int64_t end) { fill(data, begin, end, seed, threshold, keep); });
    *out = new at::Tensor(mask.narrow(0, 0, n).view(like->sizes()).to(like->scalar_type()));
  });
}

}  // extern "C"
