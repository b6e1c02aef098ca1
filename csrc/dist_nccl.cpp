// c10d's NCCL backend (ProcessGroupNCCL, compiled into libtorch_cuda) for data-parallel training on
// CUDA. Its header needs the CUDA runtime's and NCCL's headers: NCCL's and the runtime's own come
// with the torch wheel's dependencies (nvidia/nccl, nvidia/cu13), the CUDA C runtime and CCCL
// headers they include are installed beside them by scripts/env.sh (nvidia-cuda-crt and
// nvidia-cuda-cccl of the same CUDA release). build.rs defines PIXELSEQ_NCCL when it finds them;
// without them this file only reports that the binary was built without NCCL.

#include "dist.h"
#include "guard.h"

#include <cstdint>
#include <stdexcept>

using pixelseq::guard;

#ifdef PIXELSEQ_NCCL

// libtorch_cuda is built with the NCCL backend; its header is guarded by this macro.
#define USE_C10D_NCCL 1

#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

// Objects allocated here rather than in libtorch must have libtorch's sizes: 0x458 and 0xf8 are
// what libtorch 2.11.0's own ProcessGroupNCCL::split allocates for the group and its options (in
// libtorch_cuda.so), with NCCL 2.28 and CUDA 13.0 headers.
static_assert(sizeof(c10d::ProcessGroupNCCL) == 0x458,
              "ProcessGroupNCCL's size differs from libtorch 2.11.0's: are the CUDA/NCCL headers the wheel's?");
static_assert(sizeof(c10d::ProcessGroupNCCL::Options) == 0xf8,
              "ProcessGroupNCCL::Options' size differs from libtorch 2.11.0's: are the CUDA/NCCL headers the wheel's?");

#endif

extern "C" {

// An NCCL process group of `world` ranks over `store` (keys under `prefix`), its communicator
// bound to CUDA device `device` (made this thread's current device) and created now rather than
// at the first collective.
bool pixelseq_group_nccl(pixelseq_store *s, const char *prefix, int rank, int world, int64_t timeout_ms, int device,
                         pixelseq_group **out, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
#ifdef PIXELSEQ_NCCL
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    auto store = c10::make_intrusive<c10d::PrefixStore>(prefix, s->store);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
    at::Device dev(at::kCUDA, static_cast<c10::DeviceIndex>(device));
    pg->setBoundDeviceId(dev);
    pg->eagerConnectSingleDevice(dev);
    *out = new pixelseq_group{pg};
#else
    (void)s, (void)prefix, (void)rank, (void)world, (void)timeout_ms, (void)device, (void)out;
    throw std::runtime_error(
        "this pixelseq was built without NCCL (the CUDA runtime headers were not found at build time; scripts/env.sh "
        "installs them): use train.backend = \"gloo\" or rebuild through ./pixelseq");
#endif
  });
}

}  // extern "C"
