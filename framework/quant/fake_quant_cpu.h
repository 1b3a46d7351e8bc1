// CPU kernels behind fake_quant.h (internal). Each op walks its tensor in
// fixed tasks (a task is a slice of one step's group), so the partial sums of
// the step gradient, and therefore the result, do not depend on the thread
// count.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <utility>

namespace zsq::quant::detail {

/// What the element loops need to know about one quantizer.
struct KernelParams {
  float lo = 0, hi = 0;     ///< clamp bounds of x/s: -qn, qp (top range for vl)
  int shift = 0;            ///< vl: Δ = top_bits - bits
  bool round_nesting = false;
  int top_bits = 0;         ///< vl with round nesting: the cascade starts here
  float centre = 0;         ///< vl shift: (2^Δ - 1) / 2
  bool vl = false;          ///< vertical-layered (else LSQ)
};

/// x contiguous float32; step [1] or [groups] contiguous float32, groups
/// dividing x.numel() into equal contiguous blocks. Returns x̂.
torch::Tensor forward_cpu(const torch::Tensor& x, const torch::Tensor& step, const KernelParams& p);

/// Returns (dL/dx, dL/ds) with dL/ds of shape [groups], not yet times the
/// gradient scale.
std::pair<torch::Tensor, torch::Tensor> backward_cpu(const torch::Tensor& x, const torch::Tensor& step,
                                                     const torch::Tensor& grad_y, const KernelParams& p);

} // namespace zsq::quant::detail
