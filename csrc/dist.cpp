// Data-parallel training through c10d, PyTorch's own distributed engine, as compiled into
// libtorch: its TCPStore for the rendezvous, its Gloo backend (ProcessGroupGloo) for CPU tensors,
// and collectives (all-reduce, broadcast) of any c10d backend, NCCL's included (created in
// `dist_nccl.cpp`). Nothing here moves a byte between processes itself.
//
// The gradient reducer follows PyTorch's DistributedDataParallel (torch/csrc/distributed/c10d/
// reducer.cpp): parameters in reverse creation order (roughly the order backward produces their
// gradients) are packed into flat buckets of 25 MiB, the first 1 MiB so that communication starts
// early; a hook after gradient accumulation copies each gradient into its bucket, and a full
// bucket is all-reduced asynchronously while backward goes on, buckets always launched in the same
// order on every rank. Each bucket ends with one flag per parameter (1 where this rank has a
// gradient), all-reduced with it, so that a parameter without a gradient on any rank keeps none,
// as in single-process training. Gradients are divided by the world size before the sum, as DDP's
// default communication hook does, and end as views of the bucket (DDP's gradient_as_bucket_view).
//
// `ProcessGroupGloo.hpp` needs gloo's own headers, which libtorch's wheel does not ship;
// `gloo_decls/` declares the few gloo names it mentions (see gloo_decls/README.md).
//
// Tensors arrive as tch's handles (`at::Tensor *`); errors come back through `guard.h`.

// libtorch is built with the Gloo backend; its header is guarded by this macro.
#define USE_C10D_GLOO 1

#include <ATen/ATen.h>
#include <c10/util/Logging.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dist.h"
#include "guard.h"

using pixelseq::guard;

// The one c10d object allocated here rather than in libtorch: it must have libtorch's size.
// 0x1e8 is what libtorch 2.11.0's own ProcessGroupGloo::split allocates (`mov $0x1e8,%edi` before
// `operator new` in libtorch_cpu.so).
static_assert(sizeof(c10d::ProcessGroupGloo) == 0x1e8,
              "ProcessGroupGloo's size differs from libtorch 2.11.0's: check csrc/gloo_decls against this libtorch");

namespace {

std::chrono::milliseconds ms(int64_t n) { return std::chrono::milliseconds(n); }

// Raises c10's log threshold to FATAL for a scope: c10d logs every failed connection attempt, with
// a stack trace, before the exception that pixelseq reports in one line.
class QuietLogs {
 public:
  QuietLogs() : prev_(FLAGS_caffe2_log_level) { FLAGS_caffe2_log_level = 3; }
  ~QuietLogs() { FLAGS_caffe2_log_level = prev_; }
  QuietLogs(const QuietLogs &) = delete;
  QuietLogs &operator=(const QuietLogs &) = delete;

 private:
  int prev_;
};

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0:
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case 1:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
    case 2:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    default:
      throw std::invalid_argument("unknown reduction " + std::to_string(op));
  }
}

}  // namespace

namespace pixelseq {

class Reducer;

// Calls the reducer when parameter `index`'s gradient has been accumulated.
struct Hook : torch::autograd::PostAccumulateGradHook {
  Hook(Reducer *reducer, size_t index) : reducer(reducer), index(index) {}
  void operator()(const torch::autograd::Variable &) override;
  Reducer *reducer;
  size_t index;
};

class Reducer {
 public:
  Reducer(c10::intrusive_ptr<c10d::Backend> backend, std::vector<at::Tensor> params, int64_t first_cap,
          int64_t cap)
      : backend_(std::move(backend)), params_(std::move(params)), where_(params_.size()),
        marked_(params_.size(), false), has_grad_(params_.size(), false) {
    scale_ = 1.0 / backend_->getSize();
    std::vector<std::pair<size_t, int64_t>> open;  // (bucket, bytes) per dtype and device, by key
    std::vector<std::pair<at::ScalarType, at::Device>> keys;
    for (size_t k = params_.size(); k-- > 0;) {
      const at::Tensor &p = params_[k];
      std::pair<at::ScalarType, at::Device> key{p.scalar_type(), p.device()};
      size_t slot = 0;
      while (slot < keys.size() && keys[slot] != key) slot++;
      if (slot == keys.size()) {
        keys.push_back(key);
        open.emplace_back(SIZE_MAX, 0);
      }
      int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
      auto &[b, used] = open[slot];
      int64_t limit = b == 0 ? first_cap : cap;
      if (b == SIZE_MAX || (used > 0 && used + bytes > limit)) {
        buckets_.emplace_back();
        b = buckets_.size() - 1;
        used = 0;
      }
      used += bytes;
      Bucket &bucket = buckets_[b];
      where_[k] = {b, bucket.params.size()};
      bucket.params.push_back(k);
      bucket.offsets.push_back(bucket.numel);
      bucket.numel += p.numel();
    }
    for (Bucket &b : buckets_) {
      const at::Tensor &p = params_[b.params.front()];
      b.flat = at::zeros({b.numel + static_cast<int64_t>(b.params.size())}, p.options().requires_grad(false));
      b.pending = b.params.size();
    }
    for (size_t k = 0; k < params_.size(); k++) {
      torch::autograd::impl::set_post_acc_grad_hooks(params_[k], std::make_unique<Hook>(this, k));
    }
  }

  ~Reducer() {
    for (const at::Tensor &p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
  }

  Reducer(const Reducer &) = delete;
  Reducer &operator=(const Reducer &) = delete;

  size_t buckets() const { return buckets_.size(); }

  int64_t bytes() const {
    int64_t total = 0;
    for (const Bucket &b : buckets_) total += b.flat.numel() * static_cast<int64_t>(b.flat.element_size());
    return total;
  }

  // From now until `finish`, each accumulated gradient goes into its bucket and a full bucket is
  // all-reduced at once (in bucket order).
  void arm() {
    std::lock_guard<std::mutex> lock(mu_);
    armed_ = true;
  }

  // Called by the hook of parameter `k` (on the thread running backward).
  void ready(size_t k) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!armed_ || !error_.empty()) return;
    try {
      Bucket &b = buckets_[where_[k].first];
      if (b.launched) {
        throw std::runtime_error("a gradient arrived after its bucket's all-reduce began (backward ran twice?)");
      }
      copy_in(k);
      if (!marked_[k]) {
        marked_[k] = true;
        b.pending--;
      }
      while (next_ < buckets_.size() && buckets_[next_].pending == 0) launch(buckets_[next_++]);
    } catch (const std::exception &e) {
      error_ = e.what();
    }
  }

  // Launches the buckets still waiting (gradients the hooks did not deliver: parameters without
  // one, or everything when `arm` was not called), waits for every all-reduce and leaves each
  // parameter with the averaged gradient, or none where no rank had one.
  void finish() {
    std::lock_guard<std::mutex> lock(mu_);
    armed_ = false;
    if (!error_.empty()) {
      std::string e = error_;
      reset();
      throw std::runtime_error(e);
    }
    at::NoGradGuard no_grad;
    for (; next_ < buckets_.size(); next_++) {
      Bucket &b = buckets_[next_];
      for (size_t s = 0; s < b.params.size(); s++) {
        size_t k = b.params[s];
        if (marked_[k]) continue;
        if (params_[k].grad().defined()) {
          copy_in(k);
        } else {
          slot(k).zero_();
        }
        marked_[k] = true;
      }
      launch(b);
    }
    for (Bucket &b : buckets_) {
      auto work = std::move(b.work);
      work->wait();
    }
    for (Bucket &b : buckets_) {
      bool all_local = true;
      for (size_t k : b.params) all_local = all_local && has_grad_[k];
      // Reading the flags waits for the device; only needed where this rank lacked a gradient.
      at::Tensor flags;
      if (!all_local) flags = b.flat.narrow(0, b.numel, static_cast<int64_t>(b.params.size())).to(at::kCPU, at::kDouble);
      for (size_t s = 0; s < b.params.size(); s++) {
        size_t k = b.params[s];
        at::Tensor &p = params_[k];
        if (!all_local && flags.data_ptr<double>()[s] == 0.0) {
          p.mutable_grad().reset();
          continue;
        }
        at::Tensor view = slot(k);
        p.mutable_grad() = p.is_contiguous() ? view : at::empty_like(p).copy_(view);
      }
    }
    reset();
  }

 private:
  struct Bucket {
    std::vector<size_t> params;    // indices into params_
    std::vector<int64_t> offsets;  // where each starts in `flat`
    int64_t numel = 0;             // gradient elements; the flags follow
    at::Tensor flat;
    size_t pending = 0;  // parameters whose gradient has not arrived
    bool launched = false;
    c10::intrusive_ptr<c10d::Work> work;
  };

  at::Tensor slot(size_t k) {
    auto [b, s] = where_[k];
    const at::Tensor &p = params_[k];
    return buckets_[b].flat.narrow(0, buckets_[b].offsets[s], p.numel()).view(p.sizes());
  }

  void copy_in(size_t k) {
    at::NoGradGuard no_grad;
    slot(k).copy_(params_[k].grad());
    has_grad_[k] = true;
  }

  void launch(Bucket &b) {
    at::NoGradGuard no_grad;
    b.flat.narrow(0, 0, b.numel).mul_(scale_);
    at::Tensor flags = b.flat.narrow(0, b.numel, static_cast<int64_t>(b.params.size()));
    bool all = true;
    for (size_t k : b.params) all = all && has_grad_[k];
    if (all) {
      flags.fill_(1);
    } else {
      std::vector<double> host(b.params.size());
      for (size_t s = 0; s < b.params.size(); s++) host[s] = has_grad_[b.params[s]] ? 1.0 : 0.0;
      flags.copy_(at::tensor(host, at::kDouble));
    }
    std::vector<at::Tensor> tensors{b.flat};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp(c10d::ReduceOp::SUM);
    b.work = backend_->allreduce(tensors, opts);
    b.launched = true;
  }

  void reset() {
    next_ = 0;
    error_.clear();
    std::fill(marked_.begin(), marked_.end(), false);
    std::fill(has_grad_.begin(), has_grad_.end(), false);
    for (Bucket &b : buckets_) {
      b.pending = b.params.size();
      b.launched = false;
      b.work.reset();
    }
  }

  c10::intrusive_ptr<c10d::Backend> backend_;
  std::vector<at::Tensor> params_;
  std::vector<std::pair<size_t, size_t>> where_;  // (bucket, position) of each parameter
  std::vector<Bucket> buckets_;
  std::vector<bool> marked_;    // gradient already in its bucket this step
  std::vector<bool> has_grad_;  // this rank had a gradient this step
  size_t next_ = 0;             // first bucket not launched
  bool armed_ = false;
  double scale_;
  std::string error_;  // a failure inside a hook, reported by `finish`
  std::mutex mu_;
};

void Hook::operator()(const torch::autograd::Variable &) { reducer->ready(index); }

}  // namespace pixelseq

struct pixelseq_reducer {
  std::unique_ptr<pixelseq::Reducer> reducer;
};

extern "C" {

// Connects to the TCPStore at host:port, or with `server` starts it there and waits for `world`
// processes to connect; `prefix`, when not empty, is put before every key (a store of torchrun's
// agent is shared by its restarts). Every wait is bounded by `timeout_ms`.
bool pixelseq_store_new(const char *host, uint16_t port, bool server, int world, const char *prefix, int64_t timeout_ms,
                        pixelseq_store **out, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = server;
    opts.numWorkers = static_cast<size_t>(world);  // every process counts itself in; the server waits for all
    opts.waitWorkers = true;
    opts.timeout = ms(timeout_ms);
    c10::intrusive_ptr<c10d::Store> store;
    {
      QuietLogs quiet;
      store = c10::make_intrusive<c10d::TCPStore>(host, opts);
    }
    if (std::strlen(prefix) > 0) store = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
    *out = new pixelseq_store{store};
  });
}

void pixelseq_store_free(pixelseq_store *s) { delete s; }

bool pixelseq_store_set(pixelseq_store *s, const char *key, const uint8_t *data, size_t len, char *err,
                        size_t err_len) {
  return guard(err, err_len, [&] { s->store->set(key, std::vector<uint8_t>(data, data + len)); });
}

// Waits up to `timeout_ms` for `key`, then returns its value (malloc'd; release with
// pixelseq_free).
bool pixelseq_store_get(pixelseq_store *s, const char *key, int64_t timeout_ms, char **data, size_t *len, char *err,
                        size_t err_len) {
  return guard(err, err_len, [&] {
    s->store->wait({key}, ms(timeout_ms));
    std::vector<uint8_t> value = s->store->get(key);
    *len = value.size();
    *data = static_cast<char *>(std::malloc(value.empty() ? 1 : value.size()));
    if (*data == nullptr) throw std::bad_alloc();
    std::memcpy(*data, value.data(), value.size());
  });
}

// A Gloo process group of `world` ranks over `store` (keys under `prefix`), with PyTorch's default
// transport: the interfaces in $GLOO_SOCKET_IFNAME, else the address this host's name resolves to.
bool pixelseq_group_gloo(pixelseq_store *s, const char *prefix, int rank, int world, int64_t timeout_ms,
                         pixelseq_group **out, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    auto store = c10::make_intrusive<c10d::PrefixStore>(prefix, s->store);
    auto opts = c10d::ProcessGroupGloo::Options::create_default(ms(timeout_ms));
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    *out = new pixelseq_group{pg};
  });
}

void pixelseq_group_free(pixelseq_group *g) {
  try {
    g->backend->shutdown();
  } catch (...) {
    // A group that cannot shut down cleanly is being dropped on the way out of a failed run.
  }
  delete g;
}

// All-reduces `t` in place across the group (0 sum, 1 min, 2 max) and waits for the result.
bool pixelseq_all_reduce(pixelseq_group *g, at::Tensor *t, int op, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    std::vector<at::Tensor> tensors{*t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    g->backend->allreduce(tensors, opts)->wait();
  });
}

// Copies rank `root`'s values of the n tensors into every rank's, in one broadcast per dtype (the
// tensors packed into a flat buffer). Autograd does not record it.
bool pixelseq_broadcast(pixelseq_group *g, at::Tensor *const *ts, size_t n, int root, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    at::NoGradGuard no_grad;
    std::vector<at::ScalarType> kinds;
    for (size_t i = 0; i < n; i++) {
      if (std::find(kinds.begin(), kinds.end(), ts[i]->scalar_type()) == kinds.end()) kinds.push_back(ts[i]->scalar_type());
    }
    for (at::ScalarType kind : kinds) {
      std::vector<at::Tensor> parts;
      std::vector<at::Tensor *> targets;
      for (size_t i = 0; i < n; i++) {
        if (ts[i]->scalar_type() != kind || ts[i]->numel() == 0) continue;
        parts.push_back(ts[i]->detach().reshape({-1}));
        targets.push_back(ts[i]);
      }
      if (parts.empty()) continue;
      std::vector<at::Tensor> flat{at::cat(parts)};
      c10d::BroadcastOptions opts;
      opts.rootRank = root;
      g->backend->broadcast(flat, opts)->wait();
      int64_t offset = 0;
      for (at::Tensor *t : targets) {
        t->detach().copy_(flat[0].narrow(0, offset, t->numel()).view(t->sizes()));
        offset += t->numel();
      }
    }
  });
}

// A gradient reducer over the n parameters (see the top of this file); `first_cap` and `cap` are
// the byte sizes of the first and the other buckets.
bool pixelseq_reducer_new(pixelseq_group *g, at::Tensor *const *params, size_t n, int64_t first_cap, int64_t cap,
                          pixelseq_reducer **out, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    std::vector<at::Tensor> ps;
    for (size_t i = 0; i < n; i++) ps.push_back(*params[i]);
    if (ps.empty()) throw std::invalid_argument("no parameters to reduce gradients of");
    *out = new pixelseq_reducer{std::make_unique<pixelseq::Reducer>(g->backend, std::move(ps), first_cap, cap)};
  });
}

// The number of buckets and their bytes together.
void pixelseq_reducer_layout(const pixelseq_reducer *r, size_t *buckets, int64_t *bytes) {
  *buckets = r->reducer->buckets();
  *bytes = r->reducer->bytes();
}

bool pixelseq_reducer_arm(pixelseq_reducer *r, char *err, size_t err_len) {
  return guard(err, err_len, [&] { r->reducer->arm(); });
}

bool pixelseq_reducer_finish(pixelseq_reducer *r, char *err, size_t err_len) {
  return guard(err, err_len, [&] { r->reducer->finish(); });
}

void pixelseq_reducer_free(pixelseq_reducer *r) { delete r; }

}  // extern "C"
