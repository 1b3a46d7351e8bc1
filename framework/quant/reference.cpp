#include "framework/quant/reference.h"

#include <torch/torch.h>

namespace zsq::quant {
namespace {

// Forward: s exactly; backward: g · dL/ds. (LSQ's code writes
// (s - s·g).detach() + s·g, whose forward can differ from s in the last bit
// and then moves rounding ties; this form is exact.)
torch::Tensor grad_scaled(const torch::Tensor& s, double g) {
  const torch::Tensor d = s.detach();
  return d + (s - d) * g;
}

// Forward: round half to even; backward: identity (straight-through).
torch::Tensor round_ste(const torch::Tensor& v) { return (torch::round(v) - v).detach() + v; }
torch::Tensor floor_ste(const torch::Tensor& v) { return (torch::floor(v) - v).detach() + v; }

// The step shaped to broadcast against x: [C, 1, 1, ...] per channel.
torch::Tensor broadcast_step(const torch::Tensor& x, const torch::Tensor& step, double g) {
  std::vector<int64_t> shape(x.dim(), 1);
  if (step.numel() > 1) shape[0] = step.numel();
  return grad_scaled(step, g).reshape(shape);
}

} // namespace

torch::Tensor lsq_fake_quant_reference(const torch::Tensor& x, const torch::Tensor& step, const QuantRange& range,
                                       double grad_scale) {
  const torch::Tensor s = broadcast_step(x, step, grad_scale);
  const torch::Tensor v = torch::clamp(x / s, static_cast<double>(-range.qn), static_cast<double>(range.qp));
  return round_ste(v) * s;
}

torch::Tensor vl_fake_quant_reference(const torch::Tensor& w, const torch::Tensor& step, int64_t top_bits,
                                      int64_t bits, Nesting nesting, double grad_scale) {
  const QuantRange top = signed_range(top_bits);
  TORCH_CHECK(bits >= 2 && bits <= top_bits, "bits must be in [2, top bits = ", top_bits, "], got ", bits);
  const torch::Tensor s = broadcast_step(w, step, grad_scale);
  torch::Tensor q = round_ste(torch::clamp(w / s, static_cast<double>(-top.qn), static_cast<double>(top.qp)));
  const int64_t shift = top_bits - bits;
  const double scale = static_cast<double>(int64_t(1) << shift);
  if (nesting == Nesting::kShift) {
    q = floor_ste(q / scale);
    return (q * scale + (scale - 1) / 2) * s;
  }
  for (int64_t j = top_bits; j > bits; --j) {
    const torch::Tensor half = q / 2;
    const torch::Tensor down = torch::clamp_max(torch::floor(half + 0.5), static_cast<double>((int64_t(1) << (j - 2)) - 1));
    q = (down - half).detach() + half;
  }
  return q * scale * s;
}

} // namespace zsq::quant
