// libtorch's Kineto profiler around a region of `pixelseq bench`: the same profiler that
// `torch.profiler` drives from Python, so both implementations are profiled alike. The Chrome trace
// goes to a file; a summary table (CPU operators by self time, device kernels by device time)
// comes back as text. Errors come back through `guard.h`.

#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "guard.h"

using pixelseq::guard;

namespace prof = torch::autograd::profiler;
namespace impl = torch::profiler::impl;

namespace {

struct Total {
  uint64_t calls = 0;
  uint64_t ns = 0;
};

// The `limit` largest totals as "ms<TAB>calls<TAB>name" lines under a header.
void table(std::ostringstream &out, const char *title, const std::map<std::string, Total> &totals, size_t limit) {
  std::vector<std::pair<std::string, Total>> rows(totals.begin(), totals.end());
  std::sort(rows.begin(), rows.end(), [](const auto &a, const auto &b) { return a.second.ns > b.second.ns; });
  uint64_t all = 0;
  for (const auto &r : rows) all += r.second.ns;
  char line[64];
  std::snprintf(line, sizeof line, "%.3f", all / 1e6);
  out << "# " << title << " (total " << line << " ms)\nms\tcalls\tname\n";
  for (size_t i = 0; i < rows.size() && i < limit; i++) {
    std::snprintf(line, sizeof line, "%.3f\t%llu\t", rows[i].second.ns / 1e6, (unsigned long long)rows[i].second.calls);
    out << line << rows[i].first << "\n";
  }
  out << "\n";
}

}  // namespace

extern "C" {

bool pixelseq_profile_start(bool cuda, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    impl::ProfilerConfig config(impl::ProfilerState::KINETO);
    std::set<impl::ActivityType> activities{impl::ActivityType::CPU};
    if (cuda) activities.insert(impl::ActivityType::CUDA);
    prof::prepareProfiler(config, activities);
    prof::enableProfiler(config, activities);
  });
}

// Stops the profiler, saves the Chrome trace at `trace_path` and returns the summary in `*summary`
// (malloc'd; release with pixelseq_free). With a null `trace_path` the profile is discarded.
bool pixelseq_profile_stop(const char *trace_path, char **summary, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    auto result = prof::disableProfiler();
    if (trace_path == nullptr) return;
    result->save(trace_path);
    std::vector<const prof::KinetoEvent *> ops;
    std::map<std::string, Total> device;
    for (const auto &e : result->events()) {
      if (e.deviceType() == c10::DeviceType::CPU) {
        ops.push_back(&e);
      } else {
        auto &t = device[e.name()];
        t.calls++;
        t.ns += e.durationNs();
      }
    }
    // Self time: an operator's duration less that of the operators nested in it on its thread.
    std::sort(ops.begin(), ops.end(), [](const auto *a, const auto *b) {
      if (a->startThreadId() != b->startThreadId()) return a->startThreadId() < b->startThreadId();
      if (a->startNs() != b->startNs()) return a->startNs() < b->startNs();
      return a->durationNs() > b->durationNs();
    });
    std::map<std::string, Total> self;
    std::vector<std::pair<const prof::KinetoEvent *, int64_t>> stack;
    auto close = [&](const std::pair<const prof::KinetoEvent *, int64_t> &top) {
      auto &t = self[top.first->name()];
      t.calls++;
      t.ns += std::max<int64_t>(top.second, 0);
    };
    uint64_t thread = 0;
    for (const auto *e : ops) {
      if (e->startThreadId() != thread) {
        for (const auto &top : stack) close(top);
        stack.clear();
        thread = e->startThreadId();
      }
      while (!stack.empty() && stack.back().first->endNs() <= e->startNs()) {
        close(stack.back());
        stack.pop_back();
      }
      if (!stack.empty()) stack.back().second -= (int64_t)e->durationNs();
      stack.emplace_back(e, (int64_t)e->durationNs());
    }
    for (const auto &top : stack) close(top);
    std::ostringstream out;
    table(out, "CPU operators by self time", self, 40);
    if (!device.empty()) table(out, "Device kernels and copies by device time", device, 40);
    *summary = strdup(out.str().c_str());
  });
}

void pixelseq_free(char *p) { std::free(p); }

}  // extern "C"
