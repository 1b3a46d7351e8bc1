// Mixed precision from one once-for-all checkpoint, data-free: per-layer sensitivity on synthetic
// images, an exact allocation under a budget (size, mean weight bits or BOPs), and the mixed model's
// BatchNorm statistics adapted on the same images.
//
//   MixedPrecision mp(student, layers, images, reference_logits);
//   Sensitivity s = mp.sensitivity(BnAdapt::kRelative);
//   std::vector<FrontPoint> front = pareto_front(layers, s, Budget::kBytes);
//   const FrontPoint& p = choose(front, 40000);
//   mp.adapt_batch_norms(p.mix, BnAdapt::kRelative);  // then extract_mixed; restore with a BnSnapshot
#pragma once

#include "framework/data.h"
#include "models/mixed.h"

#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace zsq::trainers {

/// How the BatchNorms of a mixed model get their running statistics.
enum class BnAdapt {
  kKeep,      ///< each layer's BatchNorm of its bit-width as trained
  kRelative,  ///< that BatchNorm, moved by how the mix changes its input on the images: mean += mix batch
              ///< mean - uniform batch mean, var *= mix var / uniform var (the uniform model of its bit-width)
  kAbsolute,  ///< set to the images' statistics through the mix
};
BnAdapt parse_bn_adapt(const std::string& name);
const char* bn_adapt_name(BnAdapt mode);

/// Every BatchNorm running statistic of a module, copied; restore() puts them back.
class BnSnapshot {
 public:
  explicit BnSnapshot(torch::nn::Module& module);
  void restore();

 private:
  std::vector<std::pair<torch::Tensor, torch::Tensor>> saved_;  ///< (live buffer, copy)
};

/// KL(reference ‖ student) per free layer and bit-width, with that one layer lowered from the top
/// model bit-width (weights and input) and every other layer at the top.
struct Sensitivity {
  std::vector<int64_t> bits;            ///< the model's bit-widths
  std::vector<std::string> layers;      ///< every quantized layer's name (mix_layers order)
  std::vector<std::vector<double>> kl;  ///< [layer][bit]; the top bit-width's and non-free layers' entries: base
  double base = 0;                      ///< the whole model at its top bit-width
};

class MixedPrecision {
 public:
  /// `images`: normalized N×C×H×W; `reference_logits`: the teacher's (or the top bit-width's) on them.
  MixedPrecision(torch::nn::Module& student, std::vector<models::MixLayer> layers, torch::Tensor images,
                 torch::Tensor reference_logits);
  /// Measures every free layer at every lower bit-width (the BatchNorm after the lowered layer adapted as
  /// `bn` says); the student's statistics are left as they were.
  Sensitivity sensitivity(BnAdapt bn);
  /// Switches the student to `mix` and adapts its BatchNorms on the images (in place: take a BnSnapshot
  /// first to get the uniform model back).
  void adapt_batch_norms(const models::Mix& mix, BnAdapt bn);
  /// KL(reference ‖ student in `mix`) on the images, BatchNorms as they are.
  double kl(const models::Mix& mix);
  const std::vector<models::MixLayer>& layers() const { return layers_; }

 private:
  torch::Tensor forward();
  /// Per BatchNorm (by position in layers_), the input moments of the uniform model of bit-width b.
  const std::vector<std::pair<torch::Tensor, torch::Tensor>>& uniform_moments(int64_t b);

  torch::nn::Module& student_;
  std::vector<models::MixLayer> layers_;
  torch::Tensor images_, reference_log_probs_;
  std::map<int64_t, std::vector<std::pair<torch::Tensor, torch::Tensor>>> moments_;
};

/// The budget's measure.
enum class Budget { kBytes, kMeanWeightBits, kBops };
/// "size=40KB" (B, KB, MB: powers of 1000; KiB, MiB), "wbits=3.5", "bops=1.2G" (K, M, G); throws naming
/// what is wrong.
std::pair<Budget, double> parse_budget(const std::string& text);
/// One measure or two, comma-separated ("size=100KB,bops=0.3G": both hold); throws on a measure given
/// twice or more than two.
std::vector<std::pair<Budget, double>> parse_budgets(const std::string& text);
double budget_value(Budget kind, const models::MixCost& cost);
/// "size", "bops", "wbits".
const char* budget_name(Budget kind);

struct FrontPoint {
  models::Mix mix;
  models::MixCost cost;
  double predicted_kl = 0;  ///< base + the sum of the lowered layers' KL increases
};

/// The exact Pareto front of (cost in `kind`, predicted KL) over every mix whose free layers each take one
/// model bit-width (weights and input alike; the others follow their free neighbour), by merging the
/// layers' choices and keeping the non-dominated points; cheapest first. With `also` = {measure, limit},
/// only the mixes within that limit too: the merge then keeps the points no other dominates in (cost,
/// the other measure, KL), drops the partial mixes that cannot end within the limit, and the front is
/// that set's (cost, KL) front (still exact).
std::vector<FrontPoint> pareto_front(const std::vector<models::MixLayer>& layers, const Sensitivity& s, Budget kind,
                                     std::optional<std::pair<Budget, double>> also = std::nullopt);
/// The point with the least predicted KL whose cost fits `budget`; throws when none does (naming the
/// cheapest).
const FrontPoint& choose(const std::vector<FrontPoint>& front, Budget kind, double budget);

/// Fills in the layers that are not free (first and last at fixed bits): each takes the model bit-width
/// of the nearest free layer before it, or after it when none is before.
models::Mix complete_mix(const std::vector<models::MixLayer>& layers, models::Mix mix);

/// Images from a run's online generator (a zsq quantize checkpoint with a gdfq/qimera generator), as the
/// run sampled them: generator in training mode, batches of 64, classes drawn uniformly, then clamped
/// to the pixel range of `norm`. Throws when the checkpoint holds no generator.
torch::Tensor sample_checkpoint_generator(const std::string& checkpoint, int64_t num_classes,
                                          const std::vector<int64_t>& input_shape, const Normalization& norm,
                                          int64_t count, uint64_t seed);

} // namespace zsq::trainers
