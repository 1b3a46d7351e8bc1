#include "framework/quant/fake_quant.h"
#include "framework/quant/layers.h"

#include "framework/quant/fake_quant_cpu.h"
#include "framework/quant/reference.h"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <sstream>

namespace zsq::quant {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

void check_bits(int64_t bits, int64_t lo, const char* what) {
  TORCH_CHECK(bits >= lo && bits <= 16, what, " must be in [", lo, ", 16], got ", bits);
}

// Checks x and step, returns step flattened to [1] or [C].
torch::Tensor checked_step(const torch::Tensor& x, const torch::Tensor& step, const char* op) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, op, ": input must be float32, got ", x.scalar_type());
  TORCH_CHECK(step.scalar_type() == torch::kFloat32, op, ": step must be float32, got ", step.scalar_type());
  TORCH_CHECK(step.device() == x.device(), op, ": step is on ", step.device(), ", input on ", x.device());
  const int64_t n = step.numel();
  TORCH_CHECK(n == 1 || (x.dim() >= 1 && n == x.size(0) && step.dim() == 1), op,
              ": step must hold 1 value (per tensor) or x.size(0) values (per channel), got shape ", step.sizes(),
              " for input ", x.sizes());
  TORCH_CHECK(x.numel() > 0, op, ": empty input");
  const torch::Tensor flat = step.detach().reshape({n}).contiguous();
  // On the CPU the check costs nothing; on a GPU it would wait for the device on every call, so there the
  // steps are checked where they are set (calibration, load) and the layers pass positive_step(s) anyway.
  if (!flat.is_cuda()) {
    const float smallest = n == 1 ? flat.item<float>() : flat.min().item<float>();
    TORCH_CHECK(smallest > 0 && std::isfinite(smallest), op, ": step sizes must be positive, got ", smallest);
  }
  return flat;
}

// x̂ for both quantizers; the params say which.
class FakeQuantFunction : public torch::autograd::Function<FakeQuantFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& step,
                               const detail::KernelParams& params, double grad_scale) {
    const torch::Tensor xc = x.contiguous();
    const torch::Tensor sc = step.detach().reshape({step.numel()}).contiguous();
    ctx->save_for_backward({xc, sc});
    ctx->saved_data["lo"] = static_cast<double>(params.lo);
    ctx->saved_data["hi"] = static_cast<double>(params.hi);
    ctx->saved_data["shift"] = static_cast<int64_t>(params.shift);
    ctx->saved_data["round"] = params.round_nesting;
    ctx->saved_data["top"] = static_cast<int64_t>(params.top_bits);
    ctx->saved_data["centre"] = static_cast<double>(params.centre);
    ctx->saved_data["vl"] = params.vl;
    ctx->saved_data["g"] = grad_scale;
    ctx->saved_data["step_shape"] = step.sizes().vec();
    return detail::forward_cpu(xc, sc, params);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    detail::KernelParams p;
    p.lo = static_cast<float>(ctx->saved_data["lo"].toDouble());
    p.hi = static_cast<float>(ctx->saved_data["hi"].toDouble());
    p.shift = static_cast<int>(ctx->saved_data["shift"].toInt());
    p.round_nesting = ctx->saved_data["round"].toBool();
    p.top_bits = static_cast<int>(ctx->saved_data["top"].toInt());
    p.centre = static_cast<float>(ctx->saved_data["centre"].toDouble());
    p.vl = ctx->saved_data["vl"].toBool();
    auto [grad_x, grad_step] = detail::backward_cpu(saved[0], saved[1], grad_outputs[0].contiguous(), p);
    grad_step.mul_(ctx->saved_data["g"].toDouble());
    return {grad_x, grad_step.reshape(ctx->saved_data["step_shape"].toIntVector()), torch::Tensor(),
            torch::Tensor()};
  }
};

} // namespace

QuantRange signed_range(int64_t bits) {
  check_bits(bits, 2, "signed bits");
  return {int64_t(1) << (bits - 1), (int64_t(1) << (bits - 1)) - 1};
}

QuantRange unsigned_range(int64_t bits) {
  check_bits(bits, 1, "unsigned bits");
  return {0, (int64_t(1) << bits) - 1};
}

double lsq_grad_scale(int64_t numel, const QuantRange& range) {
  TORCH_CHECK(numel > 0 && range.qp > 0, "lsq_grad_scale needs numel > 0 and qp > 0, got ", numel, ", ", range.qp);
  return 1.0 / std::sqrt(static_cast<double>(numel) * static_cast<double>(range.qp));
}

torch::Tensor lsq_init_step(const torch::Tensor& x, const QuantRange& range, bool per_channel, double min_step) {
  TORCH_CHECK(x.numel() > 0, "lsq_init_step: empty tensor");
  TORCH_CHECK(range.qp > 0, "lsq_init_step: qp must be > 0");
  torch::NoGradGuard no_grad;
  const torch::Tensor a = x.detach().to(torch::kFloat32).abs();
  const torch::Tensor mean = per_channel ? a.reshape({a.size(0), -1}).mean(1) : a.mean();
  return (mean * (2.0 / std::sqrt(static_cast<double>(range.qp)))).clamp_min(min_step);
}

torch::Tensor lsq_fake_quant(const torch::Tensor& x, const torch::Tensor& step, const QuantRange& range,
                             double grad_scale) {
  checked_step(x, step, "lsq_fake_quant");
  TORCH_CHECK(range.qn >= 0 && range.qp > 0 && range.qp < (1 << 16) && range.qn <= (1 << 16),
              "lsq_fake_quant: range must satisfy 0 <= qn, 0 < qp <= 2^16, got [-", range.qn, ", ", range.qp, "]");
  if (!x.is_cpu()) return lsq_fake_quant_reference(x, step, range, grad_scale);  // no fused CUDA kernel yet
  detail::KernelParams p;
  p.lo = static_cast<float>(-range.qn);
  p.hi = static_cast<float>(range.qp);
  return FakeQuantFunction::apply(x, step, p, grad_scale);
}

Nesting parse_nesting(const std::string& name) {
  if (name == "shift") return Nesting::kShift;
  if (name == "round") return Nesting::kRound;
  TORCH_CHECK(false, "unknown nesting '", name, "': use 'shift' or 'round'");
}

std::string nesting_name(Nesting nesting) { return nesting == Nesting::kShift ? "shift" : "round"; }

namespace {

detail::KernelParams vl_params(int64_t top_bits, int64_t bits, Nesting nesting) {
  check_bits(top_bits, 2, "top bits");
  TORCH_CHECK(bits >= 2 && bits <= top_bits, "bits must be in [2, top bits = ", top_bits, "], got ", bits);
  const QuantRange top = signed_range(top_bits);
  detail::KernelParams p;
  p.vl = true;
  p.lo = static_cast<float>(-top.qn);
  p.hi = static_cast<float>(top.qp);
  p.shift = static_cast<int>(top_bits - bits);
  p.top_bits = static_cast<int>(top_bits);
  p.round_nesting = nesting == Nesting::kRound;
  p.centre = nesting == Nesting::kShift ? static_cast<float>(((1 << p.shift) - 1) / 2.0) : 0.0f;
  return p;
}

} // namespace

torch::Tensor vl_fake_quant(const torch::Tensor& w, const torch::Tensor& step, int64_t top_bits, int64_t bits,
                            Nesting nesting, double grad_scale) {
  checked_step(w, step, "vl_fake_quant");
  const detail::KernelParams p = vl_params(top_bits, bits, nesting);
  if (!w.is_cpu()) return vl_fake_quant_reference(w, step, top_bits, bits, nesting, grad_scale);
  return FakeQuantFunction::apply(w, step, p, grad_scale);
}

torch::Tensor vl_codes(const torch::Tensor& w, const torch::Tensor& step, int64_t top_bits, int64_t bits,
                       Nesting nesting) {
  const torch::Tensor s = checked_step(w, step, "vl_codes");
  const detail::KernelParams p = vl_params(top_bits, bits, nesting);
  torch::NoGradGuard no_grad;
  std::vector<int64_t> shape(w.dim(), 1);
  if (s.numel() > 1) shape[0] = s.numel();
  // Same float ops as the kernels: x/s, clamp, round half to even.
  torch::Tensor q = torch::round(torch::clamp(w.detach() / s.reshape(shape), p.lo, p.hi)).to(torch::kInt32);
  if (nesting == Nesting::kShift) {
    q = torch::bitwise_right_shift(q, p.shift);
  } else {
    for (int64_t j = top_bits; j > bits; --j) {
      q = torch::clamp_max(torch::bitwise_right_shift(q + 1, 1), (int64_t(1) << (j - 2)) - 1);
    }
  }
  return q.to(torch::kInt16);
}

double vl_level(int64_t q, int64_t top_bits, int64_t bits, Nesting nesting) {
  const detail::KernelParams p = vl_params(top_bits, bits, nesting);
  return static_cast<double>(q * (int64_t(1) << p.shift)) + p.centre;
}

torch::Tensor apply_border(const torch::Tensor& x, const torch::Tensor& border, const torch::Tensor& step, int64_t qp) {
  TORCH_CHECK(x.dim() >= 2 && border.dim() == 2 && border.size(0) == 2 && border.size(1) == x.size(1),
              "rounding border of shape ", border.sizes(), " does not fit an input of shape ", x.sizes());
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[1] = x.size(1);
  const torch::Tensor delta = border[0].reshape(shape), gamma = border[1].reshape(shape);
  return x * (1 + gamma / static_cast<double>(qp)) + delta * step;
}

// bits_text and bit_index (declared in layers.h).
std::string bits_text(const std::vector<int64_t>& bits) {
  std::ostringstream out;
  for (size_t i = 0; i < bits.size(); ++i) out << (i ? "," : "") << bits[i];
  return out.str();
}

size_t bit_index(const std::vector<int64_t>& bits, int64_t b) {
  const auto it = std::find(bits.begin(), bits.end(), b);
  TORCH_CHECK(it != bits.end(), "bit-width ", b, " is not one of this model's (", bits_text(bits), ")");
  return static_cast<size_t>(it - bits.begin());
}

} // namespace zsq::quant
