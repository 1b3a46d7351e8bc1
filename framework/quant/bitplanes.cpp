#include "framework/quant/bitplanes.h"

#include <torch/torch.h>

namespace zsq::quant {

torch::Tensor pack_bits(const torch::Tensor& bits) {
  TORCH_CHECK(!bits.is_floating_point(), "pack_bits expects an integer tensor of 0/1 values");
  const torch::Tensor flat = bits.reshape({-1}).to(torch::kUInt8).contiguous();
  TORCH_CHECK(flat.numel() == 0 || flat.max().item<int64_t>() <= 1, "pack_bits: values must be 0 or 1");
  const int64_t n = flat.numel();
  torch::Tensor packed = torch::zeros({(n + 7) / 8}, torch::kUInt8);
  const uint8_t* in = flat.data_ptr<uint8_t>();
  uint8_t* out = packed.data_ptr<uint8_t>();
  for (int64_t i = 0; i < n; ++i) out[i >> 3] |= static_cast<uint8_t>(in[i] << (i & 7));
  return packed;
}

torch::Tensor pack_codes(const torch::Tensor& codes, int64_t bits) {
  TORCH_CHECK(bits >= 1 && bits <= 16, "pack_codes: bits must be in [1, 16], got ", bits);
  TORCH_CHECK(!codes.is_floating_point(), "pack_codes expects integer codes");
  const int64_t half = int64_t(1) << (bits - 1);
  const torch::Tensor flat = codes.reshape({-1}).to(torch::kInt64).contiguous();
  if (flat.numel() > 0) {
    const int64_t lo = flat.min().item<int64_t>(), hi = flat.max().item<int64_t>();
    TORCH_CHECK(lo >= -half && hi < half, "pack_codes: codes in [", lo, ", ", hi, "] do not fit ", bits, " bits");
  }
  const torch::Tensor shifts = torch::arange(bits, torch::kInt64);
  const torch::Tensor planes = (flat.unsqueeze(1) + half).bitwise_right_shift(shifts).bitwise_and(1);  // [n, bits]
  return pack_bits(planes);
}

torch::Tensor unpack_codes(const torch::Tensor& packed, int64_t bits, int64_t count) {
  TORCH_CHECK(bits >= 1 && bits <= 16, "unpack_codes: bits must be in [1, 16], got ", bits);
  TORCH_CHECK(count >= 0, "unpack_codes: negative count");
  const torch::Tensor planes = unpack_bits(packed, count * bits).to(torch::kInt64).reshape({count, bits});
  const torch::Tensor weights = torch::ones({bits}, torch::kInt64).bitwise_left_shift(torch::arange(bits, torch::kInt64));
  return ((planes * weights).sum(1) - (int64_t(1) << (bits - 1))).to(torch::kInt16);
}

torch::Tensor unpack_bits(const torch::Tensor& packed, int64_t count) {
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.dim() == 1, "unpack_bits expects uint8 [bytes]");
  TORCH_CHECK(count >= 0 && (count + 7) / 8 == packed.numel(), "unpack_bits: ", packed.numel(),
              " bytes cannot hold exactly ", count, " bits");
  const torch::Tensor in_c = packed.contiguous();
  torch::Tensor bits = torch::empty({count}, torch::kUInt8);
  const uint8_t* in = in_c.data_ptr<uint8_t>();
  uint8_t* out = bits.data_ptr<uint8_t>();
  for (int64_t i = 0; i < count; ++i) out[i] = (in[i >> 3] >> (i & 7)) & 1;
  return bits;
}

VerticalLayers make_vertical_layers(const torch::Tensor& top_codes, int64_t top_bits, int64_t min_bits) {
  TORCH_CHECK(min_bits >= 2 && min_bits <= top_bits && top_bits <= 16, "need 2 <= min_bits <= top_bits <= 16, got ",
              min_bits, ", ", top_bits);
  const torch::Tensor q = top_codes.to(torch::kInt32);
  const int64_t lo = -(int64_t(1) << (top_bits - 1)), hi = (int64_t(1) << (top_bits - 1)) - 1;
  TORCH_CHECK(q.numel() == 0 || (q.min().item<int64_t>() >= lo && q.max().item<int64_t>() <= hi),
              "codes do not fit ", top_bits, " signed bits");
  VerticalLayers layers;
  layers.min_bits = min_bits;
  layers.top_bits = top_bits;
  layers.shape = top_codes.sizes().vec();
  layers.basic = torch::bitwise_right_shift(q, top_bits - min_bits).to(torch::kInt16);
  for (int64_t k = min_bits + 1; k <= top_bits; ++k) {
    // Bit (top_bits - k) of q is the plane that takes q_{k-1} to q_k.
    const torch::Tensor plane = torch::bitwise_and(torch::bitwise_right_shift(q, top_bits - k), 1);
    layers.planes.push_back(pack_bits(plane));
  }
  return layers;
}

torch::Tensor rebuild_codes(const VerticalLayers& layers, int64_t bits) {
  TORCH_CHECK(bits >= layers.min_bits && bits <= layers.top_bits, "bits must be in [", layers.min_bits, ", ",
              layers.top_bits, "], got ", bits);
  TORCH_CHECK(static_cast<int64_t>(layers.planes.size()) == layers.top_bits - layers.min_bits,
              "vertical layers hold ", layers.planes.size(), " planes, expected ", layers.top_bits - layers.min_bits);
  torch::Tensor q = layers.basic.to(torch::kInt32).reshape({-1});
  for (int64_t k = layers.min_bits + 1; k <= bits; ++k) {
    const torch::Tensor e = unpack_bits(layers.planes[k - layers.min_bits - 1], q.numel()).to(torch::kInt32);
    q = q * 2 + e;
  }
  return q.reshape(layers.shape).to(torch::kInt16);
}

} // namespace zsq::quant
