// Vertical-layered storage of integer weights (shift nesting): the basic
// layer holds the codes at the lowest bit-width, and each enhance layer one
// bit-plane, so that q_{k+1} = 2·q_k + e_{k+1} with e in {0, 1}. Rebuilding
// bit-width k reads the basic layer and the first k - min_bits planes.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace zsq::quant {

/// Packs a tensor of 0/1 values (any integer dtype) 8 per byte, first value
/// in the lowest bit. Returns uint8 [ceil(n/8)].
torch::Tensor pack_bits(const torch::Tensor& bits);
/// Inverse of pack_bits: the first `count` bits as uint8 0/1 values.
torch::Tensor unpack_bits(const torch::Tensor& packed, int64_t count);

/// Packs signed `bits`-bit codes (any integer dtype, values in [-2^(bits-1), 2^(bits-1) - 1]) as `bits` bits
/// each, value + 2^(bits-1) least significant bit first, one code after the other (numpy's
/// packbits(bitorder='little') of the codes' bits): uint8 [ceil(n·bits/8)]. Throws when a code does not fit.
torch::Tensor pack_codes(const torch::Tensor& codes, int64_t bits);
/// Inverse of pack_codes: `count` codes as int16.
torch::Tensor unpack_codes(const torch::Tensor& packed, int64_t bits, int64_t count);

/// Codes of one layer at every bit-width from min_bits to top_bits, stored as
/// layers. shape: the weight's shape.
struct VerticalLayers {
  int64_t min_bits = 0, top_bits = 0;
  std::vector<int64_t> shape;
  torch::Tensor basic;                ///< int16, the codes at min_bits (values fit min_bits bits)
  std::vector<torch::Tensor> planes;  ///< planes[i]: packed bit-plane e_{min_bits + 1 + i}
};

/// Splits top-precision codes (int16, signed top_bits range) into layers.
VerticalLayers make_vertical_layers(const torch::Tensor& top_codes, int64_t top_bits, int64_t min_bits);

/// The codes at `bits` (min_bits <= bits <= top_bits), int16, from the basic
/// layer and the first bits - min_bits planes.
torch::Tensor rebuild_codes(const VerticalLayers& layers, int64_t bits);

} // namespace zsq::quant
