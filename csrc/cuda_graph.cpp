// CUDA graphs for the training step (`src/train/graph.rs`): libtorch's `at::cuda::CUDAGraph`,
// which tch does not wrap, and the side stream that capture needs (CUDA refuses to capture the
// legacy default stream). This is PyTorch's whole-network capture: warm-up steps and the capture
// run on a side stream that first waits for the current one, and the current stream then waits
// for it; replays run on the current stream, after the copies of each step's batch.
//
// Before a capture the caching allocator returns its free blocks to the device, so that the graph's
// private pool can use the memory the eager warm-up steps held. While a graph captures, autocast's cast cache is off (PyTorch asks for
// `autocast(cache_enabled=False)` around capture: a cached cast made inside the capture would
// live in the graph's memory pool and be read outside it). libtorch's CUDA generators take part
// by themselves: capture_begin registers the default generator, so dropout in a replay draws from
// the generator's seed and offset at the time of the replay, as the same kernels run eagerly would.
//
// Streams wait for each other through c10's device-generic events (libc10_cuda implements them),
// not ATen's inline CUDA events, which would call the CUDA runtime from this file. Built only where
// build.rs finds the CUDA runtime headers (PIXELSEQ_CUDA); elsewhere every call
// reports that this binary has no CUDA graphs.

#include <cstdint>
#include <optional>
#include <stdexcept>

#include "guard.h"

using pixelseq::guard;

#ifdef PIXELSEQ_CUDA

#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/core/Event.h>
#include <c10/cuda/CUDAStream.h>

struct pixelseq_graph {
  at::cuda::CUDAGraph graph;
  c10::cuda::CUDAStream side;
  std::optional<c10::cuda::CUDAStream> outer;  // the current stream while the side one is
  bool cache = true;                           // autocast's cache flag before the capture

  explicit pixelseq_graph(c10::DeviceIndex device) : side(c10::cuda::getStreamFromPool(false, device)) {}

  // Work after this point runs on the side stream, after everything queued so far.
  void enter() {
    if (outer) throw std::runtime_error("the side stream is already current");
    auto current = c10::cuda::getCurrentCUDAStream(side.device_index());
    c10::Event ready(c10::DeviceType::CUDA);
    ready.record(current.unwrap());
    ready.block(side.unwrap());
    outer = current;
    c10::cuda::setCurrentCUDAStream(side);
  }

  // Back to the stream that was current at `enter`, which waits for the side stream's work.
  void leave() {
    if (!outer) throw std::runtime_error("the side stream is not current");
    c10::Event done(c10::DeviceType::CUDA);
    done.record(side.unwrap());
    done.block(outer->unwrap());
    c10::cuda::setCurrentCUDAStream(*outer);
    outer.reset();
  }
};

#else

struct pixelseq_graph {};

[[noreturn]] static void no_graphs() {
  throw std::runtime_error(
      "this pixelseq was built without CUDA graphs (the CUDA runtime headers were not found at build time; "
      "scripts/env.sh installs them): set train.cuda_graphs = false or rebuild through ./pixelseq");
}

#endif

extern "C" {

// Whether this binary was built with CUDA graphs.
bool pixelseq_graph_built() {
#ifdef PIXELSEQ_CUDA
  return true;
#else
  return false;
#endif
}

// A graph to capture on CUDA device `device`, with its side stream.
bool pixelseq_graph_new(int device, pixelseq_graph **out, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
#ifdef PIXELSEQ_CUDA
    *out = new pixelseq_graph(static_cast<c10::DeviceIndex>(device));
#else
    (void)device, (void)out;
    no_graphs();
#endif
  });
}

void pixelseq_graph_free(pixelseq_graph *g) { delete g; }

// Makes the side stream current (warm-up steps run there), or the outer one again (`side`
// false).
bool pixelseq_graph_side(pixelseq_graph *g, bool side, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
#ifdef PIXELSEQ_CUDA
    side ? g->enter() : g->leave();
#else
    (void)g, (void)side;
    no_graphs();
#endif
  });
}

// Starts capturing on the side stream: kernels from here to `pixelseq_graph_capture_end` are
// recorded, not run, and what they allocate comes from the graph's private memory pool.
bool pixelseq_graph_capture_begin(pixelseq_graph *g, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
#ifdef PIXELSEQ_CUDA
    // The warm-up's cached blocks go back to the device, for the graph's own pool to take.
    c10::cuda::CUDACachingAllocator::emptyCache();
    g->enter();
    g->cache = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);
    try {
      g->graph.capture_begin();
    } catch (...) {
      at::autocast::set_autocast_cache_enabled(g->cache);
      g->leave();
      throw;
    }
#else
    (void)g;
    no_graphs();
#endif
  });
}

// Ends the capture and instantiates the graph; the side stream stops being current whether or
// not that succeeds.
bool pixelseq_graph_capture_end(pixelseq_graph *g, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
#ifdef PIXELSEQ_CUDA
    struct Restore {
      pixelseq_graph *g;
      ~Restore() {
        at::autocast::set_autocast_cache_enabled(g->cache);
        if (g->outer) c10::cuda::setCurrentCUDAStream(*g->outer), g->outer.reset();
      }
    };
    Restore restore{g};
    g->graph.capture_end();
    g->leave();
#else
    (void)g;
    no_graphs();
#endif
  });
}

// Runs the captured kernels once more, on the current stream.
bool pixelseq_graph_replay(pixelseq_graph *g, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
#ifdef PIXELSEQ_CUDA
    g->graph.replay();
#else
    (void)g;
    no_graphs();
#endif
  });
}

}  // extern "C"
