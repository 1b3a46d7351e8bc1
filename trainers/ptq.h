// Zero-shot post-training quantization: block-wise reconstruction on synthetic images (Genie-M, after BRECQ
// and QDrop), with PD-Quant's prediction-difference loss as an option (research/zsq_methods.md 2.11, 3.2-3.4).
//
// The student is a single-bit-width student (models/quant_factory.h) whose stored codes are its weight bits
// (top_bits = weight bits, so a code is round(w/s) on the layer's own grid), initialised from the teacher
// (init_student: weight steps, calibrated activation steps, the teacher's BatchNorm). Then, for each unit of
// the network in forward order (the stem, every residual block, the head: ClassifierImpl::units):
//  - inputs: the teacher's input of the unit x (FP32 network below it) and the student's x_q (the quantized
//    units below it, already reconstructed); target: the teacher's unit output y = unit(x);
//  - with AQuant's rounding borders (StudentConfig::input_border), those train too (Adam, cosine to 0), through
//    the straight-through estimator of the rounding;
//  - trained: each quantized layer's rounding (AdaRound, framework/quant/adaround.h; Adam lr 1e-3), its weight
//    steps (Adam 1e-4, cosine to 0) and its input step (Adam 4e-5, cosine to 0), Genie's quantizer.py;
//  - loss: Σ_channels (ŷ - y)² averaged over images and positions (BRECQ's lp_loss, p 2) + λ·Σ(1 - |2h-1|^β)
//    (none in the first 20 % of the iterations, then β from 20 to 2) + with PD-Quant, w·KL(softmax(z/T) ||
//    softmax(z_q/T)) (batchmean), z_q the teacher's layers above the unit run on ŷ, z the teacher's logits;
//  - QDrop: the unit's input is x_q or x element by element (each with probability 1/2), and every quantized
//    layer in the unit keeps each input element unquantized with probability `drop`;
//  - then the rounding is made hard and written into the latent weights (codes · step), so that the student's
//    own quantizer, extraction and the integer path give exactly those codes.
// BatchNorm stays the teacher's (eval mode); the integer path folds it after the integer accumulation.
#pragma once

#include "models/zoo.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace zsq::trainers {

struct PtqOptions {
  int64_t iterations = 1000;    ///< per unit (Genie/BRECQ: 20 000; 1000 keeps a ResNet-20 model under 10 minutes here)
  int64_t batch_size = 32;      ///< images per iteration (Genie, BRECQ: 32)
  double rounding_lr = 1e-3;    ///< Adam on AdaRound's V (Genie, BRECQ)
  double weight_step_lr = 1e-4; ///< Adam on the weight steps, cosine to 0 (Genie); 0: frozen
  double act_step_lr = 4e-5;    ///< Adam on the input steps, cosine to 0 (Genie, QDrop); 0: frozen
  double border_lr = 1e-3;      ///< Adam on AQuant's rounding borders (students with input_border), cosine to 0
  double round_weight = 1.0;    ///< λ of the rounding regulariser (Genie's round_weight; BRECQ/QDrop 0.01)
  double drop = 0.5;            ///< QDrop probability of keeping an element unquantized (0: off)
  double pd_weight = 0;         ///< PD-Quant's prediction-difference loss weight (its code: 1/λ_r = 10); 0: off
  double pd_temperature = 4;    ///< PD-Quant's T (4 for ResNets)
  uint64_t seed = 0;
  /// Throws zsq::OptionError naming the first bad value.
  void check() const;
};

/// One unit's reconstruction.
struct UnitReport {
  std::string name;
  int64_t index = 0, units = 0;  ///< 1-based position among the units
  int64_t layers = 0;            ///< quantized layers it holds (0: nothing trained)
  /// Σ_channels (ŷ - y)² on the first images (up to 256), x_q in: with nearest rounding and the initial steps,
  /// and after reconstruction (hard rounding).
  double error_before = 0, error_after = 0;
  double changed = 0;  ///< share of weight codes that differ from nearest rounding at the initial steps
  double seconds = 0;
};

/// Reconstructs `student` (one bit-width, initialised from `teacher`, same architecture) unit by unit on
/// `images` (normalized N×C×H×W, N >= batch_size). Both models end in eval mode; the student's latent weights
/// then hold its final codes times its steps.
std::vector<UnitReport> reconstruct(models::ClassifierImpl& student, models::ClassifierImpl& teacher,
                                    const torch::Tensor& images, const PtqOptions& options,
                                    const std::function<void(const UnitReport&)>& progress = {});

} // namespace zsq::trainers
