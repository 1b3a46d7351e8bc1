// Internal to models/extract*.cpp: the integer-layer buffers of one quantized layer, folded.
#pragma once

#include "framework/quant/integer.h"
#include "models/extract.h"

namespace zsq::models::detail {

// The integer-layer buffers of one pair at the student's current bit-width.
struct Folded {
  torch::Tensor codes, weight_step, act_step, act_range, scale, bias;
  torch::Tensor act_border;  ///< undefined without input_border
  int64_t shift = 0, offset = 0;
};

Folded fold(const LayerPair& p);
void fill(quant::IntLayerImpl& layer, const Folded& f);
quant::IntLayerImpl& int_layer(const Classifier& model, const std::string& name);

} // namespace zsq::models::detail
