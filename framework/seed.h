// Module constructors (torch::nn's layers, the zoo's models) draw their initial
// weights from libtorch's global CPU generator and take none of their own.
// ScopedSeed seeds that generator for one construction and puts its previous
// state back afterwards, so building a model with a seed changes no draw that
// anything else makes later. Every other draw of the library takes its own
// generator.
//
//   models::Classifier model = [&] { ScopedSeed seed(o.seed); return models::build(spec, factory); }();
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cstdint>
#include <mutex>

namespace zsq {

class ScopedSeed {
 public:
  explicit ScopedSeed(uint64_t seed) : generator_(at::detail::getDefaultCPUGenerator()) {
    std::lock_guard<std::mutex> lock(generator_.mutex());
    saved_ = generator_.get_state();
    generator_.set_current_seed(seed);  // what torch::manual_seed does to the CPU generator
  }
  ~ScopedSeed() {
    std::lock_guard<std::mutex> lock(generator_.mutex());
    generator_.set_state(saved_);
  }
  ScopedSeed(const ScopedSeed&) = delete;
  ScopedSeed& operator=(const ScopedSeed&) = delete;

 private:
  at::Generator generator_;
  torch::Tensor saved_;
};

} // namespace zsq
