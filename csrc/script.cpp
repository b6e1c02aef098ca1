// The TorchScript export: the model traced into a module, which becomes the submodule `model` of a
// module whose methods are compiled from TorchScript source (`Module::define`, what
// `torch.jit.script` compiles to). A trace records tensor operations only, so the checks of the
// input (dtype, shape, range, each with a message) cannot live in the trace; the source's
// `forward` checks and then calls `self.model.forward`. The result is serialised as
// `torch.jit.save` writes it, for tch's `CModule::load_data`.
//
// Tracing is done here rather than by tch's `CModule::create_by_tracing` for two reasons: tch keeps
// the module's handle private, and it names the traced method `forward` without its class, which
// serialisation refuses once another method calls it (python_print's
// `method.qualname() == QualifiedName(selfClass->name()->qualifiedName(), methodName)`). As
// `torch.jit.trace` does, the method here is named `<class>.forward`.

#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/frontend/resolver.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/csrc/jit/passes/fixup_trace_scope_blocks.h>
#include <torch/csrc/jit/passes/normalize_ops.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>

#include "guard.h"

using pixelseq::guard;

namespace {

// libtorch's resolver of names outside the source without Python (`torch.*` as ATen builtins),
// plus `ValueError` for `raise`: its message reads "ValueError: ...".
struct Resolver : torch::jit::NativeResolver {
  std::shared_ptr<torch::jit::SugaredValue> resolveValue(const std::string &name, torch::jit::GraphFunction &m,
                                                         const torch::jit::SourceRange &loc) override {
    if (name == "ValueError") return std::make_shared<torch::jit::ExceptionValue>("ValueError");
    return NativeResolver::resolveValue(name, m, loc);
  }
};

}  // namespace

extern "C" {

// Starts tracing the tensors `inputs[0..n]` (tch handles) into a new module of class `name`, returned
// in `*out` (free with pixelseq_module_free); the operations on them until pixelseq_trace_end are
// recorded. Tracing state is per thread.
bool pixelseq_trace_begin(const char *name, at::Tensor **inputs, size_t n, torch::jit::Module **out, char *err,
                          size_t err_len) {
  return guard(err, err_len, [&] {
    if (torch::jit::tracer::isTracing()) throw std::invalid_argument("cannot nest tracing calls");
    auto module = std::make_unique<torch::jit::Module>(name);
    module->register_attribute("training", c10::BoolType::get(), false);
    auto state = std::make_shared<torch::jit::tracer::TracingState>();
    torch::jit::tracer::setTracingState(state);
    try {
      state->graph->insertInput(0, "self")->setType(module->_ivalue()->type());
      for (size_t i = 0; i < n; ++i) {
        auto value = state->graph->addInput();
        value->setType(torch::jit::TensorType::get());
        state->setValue(*inputs[i], value);
      }
    } catch (...) {
      torch::jit::tracer::abandon();
      throw;
    }
    *out = module.release();
  });
}

// Ends the trace begun on this thread with `outputs[0..n]` as the results of the method `forward`
// of `module`. On failure the trace is abandoned.
bool pixelseq_trace_end(torch::jit::Module *module, at::Tensor **outputs, size_t n, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    auto state = torch::jit::tracer::getTracingState();
    if (state == nullptr) throw std::invalid_argument("not tracing");
    try {
      for (size_t i = 0; i < n; ++i) state->graph->registerOutput(state->getOutput(*outputs[i], i));
      torch::jit::FixupTraceScopeBlocks(state->graph, module);
      torch::jit::NormalizeOps(state->graph);
    } catch (...) {
      torch::jit::tracer::abandon();
      throw;
    }
    torch::jit::tracer::setTracingState(nullptr);
    auto name = c10::QualifiedName(*module->type()->name(), "forward");
    auto fn = module->_ivalue()->compilation_unit()->create_function(name, state->graph);
    module->type()->addMethod(fn);
  });
}

void pixelseq_module_free(torch::jit::Module *module) { delete module; }

// `model` (borrowed) as the submodule `model` of a new module of class `name`, in evaluation mode,
// whose methods are compiled from the TorchScript `source`. `*data` (`*len` bytes) is what
// `torch.jit.save` writes, malloc'd; release it with pixelseq_free.
bool pixelseq_script_wrap(const torch::jit::Module *model, const char *name, const char *source, char **data,
                          size_t *len, char *err, size_t err_len) {
  return guard(err, err_len, [&] {
    torch::jit::Module outer(name);
    outer.register_attribute("training", c10::BoolType::get(), false);
    outer.register_module("model", *model);
    outer.define(source, std::make_shared<Resolver>());
    std::ostringstream out;
    outer.save(out);
    const std::string bytes = out.str();
    *len = bytes.size();
    *data = static_cast<char *>(std::malloc(bytes.empty() ? 1 : bytes.size()));
    if (*data == nullptr) throw std::bad_alloc();
    std::memcpy(*data, bytes.data(), bytes.size());
  });
}

}  // extern "C"
