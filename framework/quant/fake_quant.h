// Fake quantization as fused autograd functions: LSQ (learned step size) for
// activations and plain weights, and the vertical-layered weight quantizer
// whose lower bit-widths are nested in the top one (DESIGN.md, "Core semantics
// that must be exact"; research/anyprecision.md sections 0 and (d)).
//
// Each op runs one fused loop forward and one fused loop backward on CPU
// (`fake_quant_cpu.cpp`), never a chain of ATen ops: the chain costs more than
// the convolution it guards. The same math as an ATen chain lives in
// `reference.h`; tests compare the two and benchmarks time them.
//
// Rounding is round-half-to-even (as torch.round). "Inside the range" is
// inclusive, -Qn <= x/s <= Qp, because that is what the reference codes get
// from torch.clamp's backward (LSQ's paper writes a strict inequality; the two
// differ only on the bounds themselves, where dx̂/ds is discontinuous).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>

namespace zsq::quant {

/// Integer range [-qn, qp] of a quantizer.
struct QuantRange {
  int64_t qn = 0;
  int64_t qp = 0;
};

/// Signed b-bit two's complement: [-2^(b-1), 2^(b-1) - 1]. bits in [2, 16].
QuantRange signed_range(int64_t bits);
/// Unsigned b-bit: [0, 2^b - 1]. bits in [1, 16].
QuantRange unsigned_range(int64_t bits);

/// LSQ's gradient scale g = 1 / sqrt(numel · qp). As the reference codes
/// (zhutmost/lsq-net, RFQuant), numel is the whole tensor, batch included.
double lsq_grad_scale(int64_t numel, const QuantRange& range);

/// LSQ's initial step 2·mean|x| / sqrt(qp), per tensor (a 0-dim tensor) or per
/// output channel (dim 0; a [C] tensor). Never below `min_step` (keeps s > 0
/// for all-zero inputs).
torch::Tensor lsq_init_step(const torch::Tensor& x, const QuantRange& range, bool per_channel,
                            double min_step = 1e-8);

/// LSQ fake quantization x̂ = clamp(round(x/s), -qn, qp) · s.
///   x:    float32, any shape (per channel: dim 0 is the channel)
///   step: float32, 0-dim or [1] (per tensor) or [x.size(0)] (per channel); every entry > 0
/// Backward: dx̂/dx = 1 inside the range, 0 outside; dx̂/ds = round(x/s) - x/s
/// inside, -qn below, qp above, times `grad_scale`.
torch::Tensor lsq_fake_quant(const torch::Tensor& x, const torch::Tensor& step, const QuantRange& range,
                             double grad_scale);

/// How a lower-precision code derives from the adjacent higher one.
enum class Nesting {
  kShift,  ///< q_k = floor(q_{k+1} / 2): every dropped bit is exactly one bit-plane (default)
  kRound,  ///< q_k = clamp(floor(q_{k+1} / 2 + 1/2)): round half up, as Double Rounding / MatQuant
};
Nesting parse_nesting(const std::string& name);  ///< "shift" or "round"
std::string nesting_name(Nesting nesting);

/// Vertical-layered weight quantization at `bits` (2 <= bits <= top_bits <= 16):
/// q_top = clamp(round(w/s), signed_range(top_bits)), then the cascade
/// q_k = D(q_{k+1}) down to `bits`, dequantized with Δ = top_bits - bits as
///   shift:  (2^Δ·q + (2^Δ - 1)/2) · s   (the centre of the q_top values that map to q)
///   round:  2^Δ·q · s                   (the step inherited as s·2^Δ, as Double Rounding)
///   w:    float32 [C, ...]; step: float32 [C], every entry > 0 (the top-precision step)
/// Backward: STE through the cascade, so dŵ/dw = 1 inside the top range, 0
/// outside; dŵ/ds = ŵ/s - w/s inside, ŵ/s outside, times `grad_scale` (for
/// bits == top_bits this is exactly LSQ's gradient).
torch::Tensor vl_fake_quant(const torch::Tensor& w, const torch::Tensor& step, int64_t top_bits, int64_t bits,
                            Nesting nesting, double grad_scale);

/// The integer codes q_bits of vl_fake_quant (no autograd), int16, same shape as w.
torch::Tensor vl_codes(const torch::Tensor& w, const torch::Tensor& step, int64_t top_bits, int64_t bits,
                       Nesting nesting);

/// AQuant's rounding border, per input channel (QuantLayerOptions::input_border), applied before the input
/// quantizer rounds: x·(1 + γ/qp) + δ·step, `border` [2, C] holding δ and γ, broadcast over dim 1 of x (N×C or
/// N×C×H×W). The fake quantizer and the integer path both call it, so their codes agree.
torch::Tensor apply_border(const torch::Tensor& x, const torch::Tensor& border, const torch::Tensor& step, int64_t qp);

/// Dequantized value of code q at `bits` in units of the top step: the factor
/// vl_fake_quant multiplies s by.
double vl_level(int64_t q, int64_t top_bits, int64_t bits, Nesting nesting);

} // namespace zsq::quant
