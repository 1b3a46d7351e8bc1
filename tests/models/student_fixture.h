// A small once-for-all student initialised from a random teacher with meaningful BatchNorm statistics,
// for the extraction and mixed-precision tests.
#pragma once

#include "models/extract.h"
#include "models/quant_factory.h"
#include "models/zoo.h"

#include "tests/support.h"

namespace zsq::test {

using models::Classifier;
using models::ModelSpec;
using models::StudentConfig;

class StudentFixture : public SeedingFixture {
 protected:
  // A teacher with meaningful BN statistics and a student initialised from it.
  void make(const ModelSpec& spec, std::vector<int64_t> bits, int64_t size = 28) {
    spec_ = spec;
    config_.bits = std::move(bits);
    teacher_ = models::build(spec, models::Fp32Factory());
    {
      torch::NoGradGuard no_grad;
      for (int i = 0; i < 10; ++i) teacher_->forward(torch::randn({32, spec.in_channels, size, size}));
    }
    teacher_->eval();
    student_ = models::build(spec, models::QuantFactory(config_));
    models::init_student(*student_, *teacher_, torch::randn({64, spec.in_channels, size, size}));
    student_->eval();
    meta_.arch = spec.arch;
    meta_.num_classes = spec.num_classes;
    meta_.input_shape = {spec.in_channels, size, size};
    meta_.input_mean = {0.5};
    meta_.input_std = {0.25};
    meta_.width = spec.width;
  }
  torch::Tensor student_logits(int64_t bits, const torch::Tensor& x) {
    torch::NoGradGuard no_grad;
    models::set_bits(*student_, bits);
    return student_->forward(x);
  }
  ModelSpec spec_;
  StudentConfig config_;
  Classifier teacher_, student_;
  ModelMeta meta_;
};

} // namespace zsq::test
