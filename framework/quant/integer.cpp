#include "framework/quant/integer.h"

#include "framework/quant/fake_quant.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <limits>

namespace zsq::quant {

IntLayerImpl::IntLayerImpl(IntLayerOptions opts) : options(std::move(opts)) { reset(); }

void IntLayerImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.in() > 0 && o.out() > 0 && o.groups() > 0 && o.in() % o.groups() == 0,
              "integer layer: bad sizes ", o.in(), " -> ", o.out(), " (groups ", o.groups(), ")");
  TORCH_CHECK(o.weight_bits() >= 2 && o.weight_bits() <= 16, "integer layer: weight bits must be in [2, 16], got ",
              o.weight_bits());
  const auto code_type = o.weight_bits() <= 8 ? torch::kInt8 : torch::kInt16;
  const std::vector<int64_t> shape = o.conv() ? std::vector<int64_t>{o.out(), o.in() / o.groups(), o.kernel_size(),
                                                                     o.kernel_size()}
                                              : std::vector<int64_t>{o.out(), o.in()};
  weight_codes = register_buffer("weight_codes", torch::zeros(shape, code_type));
  weight_step = register_buffer("weight_step", torch::ones({o.out()}));
  weight_shift = register_buffer("weight_shift", torch::zeros({}, torch::kInt64));
  weight_offset = register_buffer("weight_offset", torch::zeros({}, torch::kInt64));
  act_step = register_buffer("act_step", torch::ones({}));
  act_range = register_buffer("act_range", torch::tensor({int64_t(0), int64_t(255)}));
  scale = register_buffer("scale", torch::ones({o.out()}));
  bias = register_buffer("bias", torch::zeros({o.out()}));
  act_border = o.input_border() ? register_buffer("act_border", torch::zeros({2, o.in()})) : torch::Tensor();
}

void IntLayerImpl::pretty_print(std::ostream& stream) const {
  stream << "zsq::quant::IntLayer(" << (options.conv() ? "conv " : "linear ") << options.in() << " -> "
         << options.out();
  if (options.conv()) stream << ", kernel_size=" << options.kernel_size() << ", stride=" << options.stride();
  stream << ", weight_bits=" << options.weight_bits() << ")";
}

torch::Tensor IntLayerImpl::accumulate(const torch::Tensor& x) const {
  const int64_t lo = act_range[0].item<int64_t>(), hi = act_range[1].item<int64_t>();
  // Input codes: the same float ops as the fake quantizer (x/s, clamp, round half to even).
  const torch::Tensor in = act_border.defined() ? apply_border(x, act_border, act_step, hi) : x;
  const torch::Tensor codes = torch::round(torch::clamp(in / act_step, static_cast<double>(lo), static_cast<double>(hi)));
  const int64_t shift = weight_shift.item<int64_t>();
  const torch::Tensor levels = weight_codes.to(torch::kInt64) * (int64_t(1) << (shift + 1)) + weight_offset.item<int64_t>();
  // Integer products summed exactly. float32 represents every integer below
  // 2^24, so when max|code| · max over outputs of Σ|level| stays below that,
  // every partial sum is exact in float32 (the fast path); otherwise float64
  // (exact below 2^53, far above the int32 range checked below).
  const double max_code = static_cast<double>(std::max(std::abs(lo), std::abs(hi)));
  const double max_row = levels.abs().reshape({levels.size(0), -1}).sum(1).max().item<double>();
  const auto type = max_code * max_row < 16777216.0 ? torch::kFloat32 : torch::kFloat64;
  const torch::Tensor a = codes.to(type), w = levels.to(type);
  const torch::Tensor acc = options.conv() ? torch::conv2d(a, w, {}, options.stride(), options.padding(), 1,
                                                           options.groups())
                                           : torch::linear(a, w);
  if (acc.numel() > 0) {
    const double peak = acc.abs().max().item<double>();
    TORCH_CHECK(peak <= std::numeric_limits<int32_t>::max(), "integer layer: accumulator ", peak,
                " overflows 32 bits");
  }
  return acc.to(torch::kInt64);
}

torch::Tensor IntLayerImpl::forward(const torch::Tensor& x) {
  const torch::Tensor acc = accumulate(x).to(torch::kFloat64);
  const std::vector<int64_t> per_channel = options.conv() ? std::vector<int64_t>{1, options.out(), 1, 1}
                                                          : std::vector<int64_t>{1, options.out()};
  return (acc * scale.to(torch::kFloat64).reshape(per_channel) + bias.to(torch::kFloat64).reshape(per_channel))
      .to(torch::kFloat32);
}

} // namespace zsq::quant
