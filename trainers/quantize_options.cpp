// QuantizeOptions' checks: on their own (check()), and against the student's
// bit-widths, the data and the number of processes (check_quantize_inputs).
#include "trainers/quantize.h"

#include "framework/errors.h"
#include "models/extract.h"  // bits_text

#include <algorithm>
#include <cmath>
#include <regex>

namespace zsq::trainers {

int64_t per_bit_tensor_bits(const std::string& name) {
  static const std::regex per_bit(R"((?:^|\.)act_step_b(\d+)$|\.b(\d+)\.[^.]+$)");
  std::smatch m;
  if (!std::regex_search(name, m, per_bit)) return -1;
  return std::stoll(m[1].matched ? m[1].str() : m[2].str());
}

bool is_per_bit_tensor(const std::string& name) { return per_bit_tensor_bits(name) >= 0; }

bool is_weight_step(const std::string& name) {
  static const std::regex weight_step(R"((^|\.)weight_step$)");
  return std::regex_search(name, weight_step);
}

const char* train_scope_name(TrainScope scope) { return scope == TrainScope::kAll ? "all" : "per-bit"; }

TrainScope parse_train_scope(const std::string& name) {
  ZSQ_CHECK_OPTION(name == "all" || name == "per-bit", "--train must be 'all' or 'per-bit', got '", name, "'");
  return name == "all" ? TrainScope::kAll : TrainScope::kPerBit;
}

const char* bn_mode_name(BnMode mode) {
  return mode == BnMode::kShift    ? "shift"
         : mode == BnMode::kAlign  ? "align"
         : mode == BnMode::kCenter ? "center"
                                   : "absolute";
}

BnMode parse_bn_mode(const std::string& name) {
  ZSQ_CHECK_OPTION(name == "shift" || name == "absolute" || name == "align" || name == "center",
                   "--bn-mode must be 'shift', 'absolute', 'align' or 'center', got '", name, "'");
  return name == "shift" ? BnMode::kShift : name == "align" ? BnMode::kAlign : name == "center" ? BnMode::kCenter
                                                                                                : BnMode::kAbsolute;
}

std::string bn_modes_text(const std::vector<BnMode>& modes, const std::vector<int64_t>& bits) {
  if (modes.size() == 1) return bn_mode_name(modes.front());
  std::string text;
  for (size_t i = 0; i < modes.size() && i < bits.size(); ++i) {
    text += (i ? ", " : "") + std::string(bn_mode_name(modes[i])) + " at " + std::to_string(bits[i]);
  }
  return text;
}

void QuantizeOptions::check() const {
  ZSQ_CHECK_OPTION(steps > 0, "--steps must be > 0, got ", steps);
  ZSQ_CHECK_OPTION(batch_size > 0, "--batch-size must be > 0, got ", batch_size);
  ZSQ_CHECK_OPTION(lr > 0 && std::isfinite(lr), "--lr must be > 0, got ", lr);
  ZSQ_CHECK_OPTION(weight_decay >= 0, "--weight-decay must be >= 0, got ", weight_decay);
  ZSQ_CHECK_OPTION(weight_step_lr >= 0 && std::isfinite(weight_step_lr), "--weight-step-lr must be a finite number >= 0, got ",
                   weight_step_lr);
  ZSQ_CHECK_OPTION(temperature > 0, "--temperature must be > 0, got ", temperature);
  for (const double v : per_bit_lr) {
    ZSQ_CHECK_OPTION(v >= 0 && std::isfinite(v), "--per-bit-lr must be a finite number >= 0, got ", v);
  }
  for (const double w : ce_weight) ZSQ_CHECK_OPTION(w >= 0, "--ce-weight must be >= 0, got ", w);
  ZSQ_CHECK_OPTION(lowpass >= 0 && std::isfinite(lowpass), "--lowpass must be >= 0, got ", lowpass);
  ZSQ_CHECK_OPTION(feature_weight >= 0, "--feature-weight must be >= 0, got ", feature_weight);
  ZSQ_CHECK_OPTION(weights.empty() || (weighting != Weighting::kMinNorm && weighting != Weighting::kNormalized),
                   "--bit-weights has no meaning with --weighting ", weighting_name(weighting));
  ZSQ_CHECK_OPTION(!step_weighting || *step_weighting != Weighting::kSandwich,
                   "--weight-step-grad cannot be sandwich (it picks the bit-widths of a step, not how they combine)");
  ZSQ_CHECK_OPTION(!step_weighting || (train == TrainScope::kAll && weight_step_lr > 0),
                   "--weight-step-grad needs the weight steps to train (--train all, --weight-step-lr > 0)");
  for (const double w : weights) ZSQ_CHECK_OPTION(w >= 0, "--bit-weights must be >= 0, got ", w);
  ZSQ_CHECK_OPTION(mix_samples >= 0, "--mix-samples must be >= 0, got ", mix_samples);
  ZSQ_CHECK_OPTION(mix_weight >= 0 && std::isfinite(mix_weight), "--mix-weight must be a finite number >= 0, got ",
                   mix_weight);
  ZSQ_CHECK_OPTION(mix_samples == 0 || (weighting != Weighting::kPcGrad && step_weighting != Weighting::kPcGrad),
                   "--mix-samples does not combine with pcgrad (it orders the tasks by bit-width; a mix has none)");
  ZSQ_CHECK_OPTION(calib_count >= 1, "--calib-count must be >= 1, got ", calib_count);
  ZSQ_CHECK_OPTION(bn_modes.size() == 1 || bn_modes.size() == bn_bits.size(), "--bn-mode gives ", bn_modes.size(),
                   " modes for ", bn_bits.size(), " --bn-reestimate bit-widths (give one, or one per bit-width)");
  ZSQ_CHECK_OPTION(!bn_reestimate_end || !bn_bits.empty(),
                   "--bn-reestimate-end on needs the bit-widths to re-estimate (--bn-reestimate)");
  ZSQ_CHECK_OPTION(bn_track >= 0 && bn_track <= 1, "--bn-track must be in [0, 1], got ", bn_track);
  ZSQ_CHECK_OPTION(bn_track == 0 || !bn_bits.empty(), "--bn-track needs the bit-widths to re-estimate (--bn-reestimate)");
  ZSQ_CHECK_OPTION(bn_track == 0 || bn_train.empty(),
                   "--bn-track and --bn-train both move BatchNorm statistics while training: use one of them");
  ZSQ_CHECK_OPTION(generator_warmup >= 0, "--generator-warmup must be >= 0, got ", generator_warmup);
  ZSQ_CHECK_OPTION(checkpoint_every >= 0, "--checkpoint-every must be >= 0, got ", checkpoint_every);
  ZSQ_CHECK_OPTION(stop_after >= 0, "--stop-after must be >= 0, got ", stop_after);
}

void check_quantize_inputs(const QuantizeOptions& o, const std::vector<int64_t>& bits, const QuantizeData& data,
                           int world) {
  TORCH_CHECK(!bits.empty(), "quantize: the student has no quantized layers");
  TORCH_CHECK((data.pool != nullptr) != (data.synthesizer != nullptr), "quantize: give a pool or a synthesizer");
  o.check();
  TORCH_CHECK(!o.resume || !o.checkpoint.empty(), "resuming needs a checkpoint path");
  ZSQ_CHECK_OPTION(o.batch_size % world == 0, "--batch-size (", o.batch_size,
                   ") must be a multiple of the number of processes (", world, ")");
  if (data.pool) {
    ZSQ_CHECK_OPTION(o.batch_size <= data.pool->size(), "--batch-size must be at most the pool's size (",
                     data.pool->size(), "), got ", o.batch_size);
  }
  ZSQ_CHECK_OPTION(o.ce_weight.size() <= 1 || o.ce_weight.size() == bits.size(),
                   "--ce-weight needs one value or one per bit-width (", bits.size(), "), got ", o.ce_weight.size());
  ZSQ_CHECK_OPTION(o.per_bit_lr.size() <= 1 || o.per_bit_lr.size() == bits.size(),
                   "--per-bit-lr needs one value or one per bit-width (", bits.size(), "), got ", o.per_bit_lr.size());
  ZSQ_CHECK_OPTION(o.weights.empty() || o.weights.size() == bits.size(),
                   "--bit-weights needs one value per bit-width (", bits.size(), "), got ", o.weights.size());
  for (const auto* list : {&o.bn_bits, &o.bn_train}) {
    for (const int64_t b : *list) {
      ZSQ_CHECK_OPTION(std::find(bits.begin(), bits.end(), b) != bits.end(),
                       list == &o.bn_bits ? "--bn-reestimate " : "--bn-train ", b, ": not one of the model's bit-widths (",
                       models::bits_text(bits), ")");
    }
  }
  ZSQ_CHECK_OPTION(o.generator_warmup == 0 || (data.synthesizer && data.synthesizer->trains_generator()),
                   "--generator-warmup needs a recipe that trains a generator (gdfq, qimera)");
  TORCH_CHECK(!data.synthesizer || !data.synthesizer->trains_while_sampling(),
              "recipe '", data.synthesizer ? data.synthesizer->recipe().name : "", "' trains a proxy student while it samples "
              "and cannot be checkpointed: write a pool with zsq generate and quantize with --pool");
}

} // namespace zsq::trainers
