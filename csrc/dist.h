// What `dist.cpp` and `dist_nccl.cpp` share: the objects behind the opaque handles that
// `src/ffi.rs` declares.

#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

// A rendezvous store (c10d's TCPStore, maybe behind a PrefixStore).
struct pixelseq_store {
  c10::intrusive_ptr<c10d::Store> store;
};

// One c10d backend (ProcessGroupGloo or ProcessGroupNCCL) over all ranks of the run.
struct pixelseq_group {
  c10::intrusive_ptr<c10d::Backend> backend;
};
