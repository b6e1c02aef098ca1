// A caching allocator for libtorch's CPU tensors.
//
// glibc's malloc serves large blocks with fresh mmap'd pages and unmaps them on free, so every
// training step page-faults and zeroes its activations again: on this project's 2-core machine
// half of a CPU run's time was kernel time. Raising glibc's mmap/trim thresholds removes the
// faults but keeps freed memory in a fragmenting heap (+50-70% peak RSS). Here blocks of 64 KiB
// and more are kept on free, by size, and handed out again for the next request of that size or
// a little less (at most a third of a block is left unused): a training step asks for the same
// sizes as the step before, so after the first step nearly every large block is reused. The
// cache is bounded: before fresh memory is taken, cached blocks are released (largest first)
// until live + cached + the new block fit in the highest live total seen so far plus the largest
// block, so the process holds at most one block more than its own peak working set. A pass whose
// blocks of different sizes need more than that (an evaluation pass at a larger batch than the
// training passes before it: 256 MB FFT buffers among 128 MB activations) misses some of them
// every time; the trainer therefore evaluates on a CPU in passes no larger than its micro-batch.
// A process that only runs passes without gradients (scoring, predicting) has a small peak, since
// each block is freed soon after it is made, while the blocks of different sizes a pass cycles
// through add up to more: there the cache may hold up to `peaks` times the peak (at most the
// limit). s4d-small scored at batch 256 missed a quarter of its large blocks on every batch with
// one peak and almost none with two (1.6x faster, 10x less kernel time, +36% peak RSS).
// Smaller blocks go straight to c10::alloc_cpu / free_cpu (glibc serves them from its arenas).
// With a limit set, a large block that would take the memory in use beyond it is refused with
// libtorch's out-of-memory error, as a GPU allocator does: on a CPU the kernel's OOM killer would
// otherwise end the process without a word.
//
// Every block carries a 64-byte header before the pointer handed out (the alignment libtorch
// uses), holding its rounded size, or 0 for a small block.

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <utility>

#include "guard.h"

using pixelseq::guard;

namespace {

constexpr size_t kHeader = 64;
constexpr size_t kSmall = 64 * 1024;

// Cached sizes: whole pages below 4 MiB, whole 64 KiB units above.
size_t rounded(size_t n) {
  const size_t unit = n < (4u << 20) ? 4096 : 65536;
  return (n + unit - 1) / unit * unit;
}

struct Cache {
  std::mutex mutex;
  std::multimap<size_t, char *> free;  // rounded size → block base
  size_t live = 0;                     // bytes of large blocks in use
  size_t cached = 0;                   // bytes of large blocks kept for reuse
  size_t peak = 0;                     // highest `live` seen
  size_t largest = 0;                  // largest block handed out
  size_t limit = 0;                    // most `live` may reach; 0: none
  size_t peaks = 1;                    // live + cached may reach this many times `peak`
  uint64_t hits = 0;
  uint64_t misses = 0;
};

Cache &cache() {
  static Cache *c = new Cache();  // never destroyed: tensors may be freed during exit
  return *c;
}

void release(void *ptr) {
  char *base = static_cast<char *>(ptr) - kHeader;
  size_t size;
  std::memcpy(&size, base, sizeof size);
  if (size == 0) {
    c10::free_cpu(base);
    return;
  }
  Cache &c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.live -= size;
  c.cached += size;
  c.free.emplace(size, base);
}

struct CachingCpuAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    char *base;
    if (n + kHeader < kSmall) {
      base = static_cast<char *>(c10::alloc_cpu(n + kHeader));
      const size_t zero = 0;
      std::memcpy(base, &zero, sizeof zero);
    } else {
      const auto block = take(rounded(n + kHeader));
      base = block.first;
      std::memcpy(base, &block.second, sizeof block.second);
    }
    char *data = base + kHeader;
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void *dest, const void *src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  // A block for `size` bytes: the smallest cached one of `size` to 1.5 × `size` bytes, else fresh
  // memory after releasing cached blocks beyond the budget. Returns the block and its size.
  static std::pair<char *, size_t> take(size_t size) {
    Cache &c = cache();
    std::unique_lock<std::mutex> lock(c.mutex);
    auto it = c.free.lower_bound(size);
    if (it != c.free.end() && it->first <= size + size / 2) {
      const auto block = *it;
      c.free.erase(it);
      c.cached -= block.first;
      c.live += block.first;
      c.peak = std::max(c.peak, c.live);
      c.hits++;
      return {block.second, block.first};
    }
    c.misses++;
    c.largest = std::max(c.largest, size);
    std::multimap<size_t, char *> evicted;
    const size_t room = c.limit > 0 ? std::min(c.peaks * c.peak, c.limit) : c.peaks * c.peak;
    const size_t budget = std::max({c.peak + c.largest, room, c.live + size});
    while (!c.free.empty() && c.live + c.cached + size > budget) {
      auto largest = std::prev(c.free.end());
      c.cached -= largest->first;
      evicted.insert(*largest);
      c.free.erase(largest);
    }
    if (c.limit > 0 && c.live + size > c.limit) {
      const size_t live = c.live, limit = c.limit;
      lock.unlock();
      for (auto &e : evicted) c10::free_cpu(e.second);
      TORCH_CHECK_WITH(OutOfMemoryError, false, "out of memory: a CPU tensor of ", size >> 20, " MiB does not fit (",
                       live >> 20, " MiB in use, limit ", limit >> 20, " MiB)");
    }
    c.live += size;
    c.peak = std::max(c.peak, c.live);
    lock.unlock();
    for (auto &e : evicted) c10::free_cpu(e.second);
    try {
      return {static_cast<char *>(c10::alloc_cpu(size)), size};
    } catch (...) {
      std::lock_guard<std::mutex> relock(c.mutex);
      c.live -= size;
      throw;
    }
  }
};

}  // namespace

extern "C" {

// Makes the caching allocator libtorch's CPU allocator (ahead of the default one). Tensors made
// before keep their own deleter, so switching at any time is safe.
bool pixelseq_cpu_allocator_install(char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    static CachingCpuAllocator *allocator = new CachingCpuAllocator();
    c10::SetCPUAllocator(allocator, /*priority=*/100);
  });
}

// Bytes of large blocks in use, kept for reuse and at their peak; cache hits and misses.
bool pixelseq_cpu_allocator_stats(uint64_t *live, uint64_t *cached, uint64_t *peak, uint64_t *hits, uint64_t *misses,
                                  char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    Cache &c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    *live = c.live;
    *cached = c.cached;
    *peak = c.peak;
    *hits = c.hits;
    *misses = c.misses;
  });
}

// Sets the most memory in large blocks that may be in use (0: no limit) and how many times the
// peak live + cached may reach (at least 1), and restarts the peak from the memory in use now.
bool pixelseq_cpu_allocator_configure(uint64_t limit, uint64_t peaks, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    Cache &c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    c.limit = limit;
    c.peaks = std::max<uint64_t>(peaks, 1);
    c.peak = c.live;
  });
}

// Releases every cached block (the memory in use stays).
bool pixelseq_cpu_allocator_trim(char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    Cache &c = cache();
    std::multimap<size_t, char *> blocks;
    {
      std::lock_guard<std::mutex> lock(c.mutex);
      blocks.swap(c.free);
      c.cached = 0;
    }
    for (auto &b : blocks) c10::free_cpu(b.second);
  });
}

}  // extern "C"
