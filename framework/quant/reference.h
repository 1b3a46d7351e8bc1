// The fake quantizers of fake_quant.h written as plain chains of ATen ops, the
// way the PyTorch reference codes write them (LSQ's grad_scale and round_pass,
// zhutmost/lsq-net). Autograd derives the gradients. Slow; used by the tests
// as the reference, by the benchmarks as the baseline, and on devices without
// a fused kernel.
#pragma once

#include "framework/quant/fake_quant.h"

namespace zsq::quant {

/// Same contract as lsq_fake_quant.
torch::Tensor lsq_fake_quant_reference(const torch::Tensor& x, const torch::Tensor& step, const QuantRange& range,
                                       double grad_scale);

/// Same contract as vl_fake_quant.
torch::Tensor vl_fake_quant_reference(const torch::Tensor& w, const torch::Tensor& step, int64_t top_bits,
                                      int64_t bits, Nesting nesting, double grad_scale);

} // namespace zsq::quant
