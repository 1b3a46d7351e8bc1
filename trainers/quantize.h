// Once-for-all quantization-aware training without the training data: one
// vertical-layered student is distilled from the FP32 teacher at every
// bit-width, on a fixed pool of images (e.g. from `zsq generate`) or on images
// a generator synthesizes online, trained in alternation with the student
// (GDFQ's scheme: one generator step, then one student step on the same,
// detached images).
//
//   KD_b = T² · KL(softmax(t/T) || softmax(s_b/T)), summed over classes and
//   averaged over the batch ('batchmean', as IntraQ/FDDA's KLDivLoss), plus
//   optionally ce · CE(s_b, y) to the pool's or generator's labels and
//   feature · MSE(f_b, f_t) of the penultimate (pooled) features, mean over
//   elements (feature matching, our choice of layer);
//   L = Σ_b λ_b · KD_b, one backward pass per bit-width into one optimizer step.
//
// Weighting of the bit-widths (QuantizeOptions::weighting):
//   sum       every bit-width every step, fixed weights λ_b (default 1)
//   sandwich  each step the highest, the lowest and one random middle
//             bit-width (the same draw on every rank), with their λ_b
//   min-norm  MGDA: the per-bit gradients g_b on the shared tensors (latent
//             weights, weight steps, biases), α = argmin ||Σ α_b g_b|| on the
//             simplex (Frank-Wolfe, Sener & Koltun's MinNormSolver), the shared
//             step uses K · Σ α_b g_b so that its scale matches the sum of K
//             losses; per-bit tensors (activation steps, BatchNorm) step on
//             their own gradients, as MGDA's task-specific parameters
//   normalized  every bit-width every step; on the shared tensors (latent
//             weights, weight steps) each bit-width's gradient is rescaled to
//             the mean norm of all of them, so no bit-width's loss scale sets
//             the direction; per-bit tensors keep their own gradients
//   pcgrad    every bit-width every step; on the shared tensors each lower
//             bit-width's gradient loses its component along every higher
//             bit-width's gradient it conflicts with (PCGrad, higher first),
//             then they are summed; per-bit tensors keep their own gradients
// step_weighting (--weight-step-grad): the shared weight steps combine the
// per-bit gradients by their own rule (sum, min-norm, normalized, pcgrad), on
// their own gradients; the latent weights and biases follow `weighting`. The
// 2-bit loss's gradient on a step is about 2^(top-2) times the 8-bit one's (its
// levels are that many top-precision steps apart): under sum or pcgrad it can
// collapse a channel's step, which kills the channel at every bit-width.
// Trained for mixing (mix_samples > 0): each step also distils that many random per-layer mixes
// (trainers/mix_sampling.h), each one more task for the weighting after the bit-widths, to the teacher.
// Recursive distillation (recursive = true): the top bit-width learns from the
// teacher, every other one from the student at the next higher bit-width in
// this step's set (its logits detached).
//
// train = TrainScope::kPerBit (--train per-bit) freezes what the bit-widths share (latent weights, weight
// steps) and trains only each bit-width's own activation steps and BatchNorm:
// a bit-width's accuracy then depends on its own loss only.
//
// As GDFQ's trainer, the student stays in eval mode: every BatchNorm keeps the
// teacher's running statistics while its affine parameters train.
//
// Data parallel (comm with several ranks): the pool is sharded and the global
// batch split over the ranks, gradients averaged by a Reducer (min-norm,
// normalized: the per-bit gradients on the shared tensors are averaged before
// they are combined, so every rank takes the same step); a generator is shared (generators/synthesizer.h). Rank 0 writes
// the checkpoints: the student (a zsq-student file, so `zsq eval
// --checkpoint` and `zsq extract` read it) plus, in group "train/", the SGD
// momenta, the synthesizer's generator and optimizer, and every rank's random
// state, and the top-precision weight codes at the start (train/initial_codes/,
// for QuantizeResult::changed_codes); attributes train_step, train_steps,
// train_world_size. Resuming restores
// all of it, so a resumed run ends bit-for-bit where an uninterrupted one ends
// (same world size). Writes are atomic: a run killed at any moment leaves the
// previous checkpoint intact.
#pragma once

#include "distributed/communicator.h"
#include "framework/data.h"
#include "framework/h5.h"
#include "generators/synthesizer.h"
#include "models/quant_factory.h"
#include "models/zoo.h"
#include "trainers/checkpoint.h"  // CheckpointStudent, read_checkpoint_info
#include "trainers/teacher.h"  // kd_loss, make_sgd
#include "trainers/weighting.h"  // Weighting, min_norm_weights, normalized_sum

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace zsq::trainers {

/// What trains (--train): everything, or only each bit-width's own tensors.
enum class TrainScope { kAll, kPerBit };
/// BatchNorm re-estimation (--bn-mode): models::BnEstimate.
using BnMode = models::BnEstimate;
/// "all" / "per-bit" and "shift" / "absolute" / "align", and back; the parsers throw
/// zsq::OptionError naming the flag.
const char* train_scope_name(TrainScope scope);
TrainScope parse_train_scope(const std::string& name);
const char* bn_mode_name(BnMode mode);
BnMode parse_bn_mode(const std::string& name);
/// The re-estimation of `bits` for a summary: "absolute" or "absolute at 2, align at 3".
std::string bn_modes_text(const std::vector<BnMode>& modes, const std::vector<int64_t>& bits);

struct QuantizeOptions {
  int64_t steps = 1000;          ///< student optimizer steps
  int64_t batch_size = 64;       ///< global batch (split over the ranks)
  double lr = 1e-4;              ///< peak learning rate (SGD with Nesterov momentum 0.9, cosine to 0)
  double weight_decay = 0;       ///< on latent weights only
  double weight_step_lr = 1;     ///< learning-rate multiplier of the shared weight steps (0: frozen)
  /// Learning-rate multiplier of each bit-width's own tensors (activation steps, BatchNorm): one value for
  /// every bit-width, or one per bit-width in ascending bit order (empty: 1)
  std::vector<double> per_bit_lr;
  /// How the shared weight steps combine the bit-widths' gradients (--weight-step-grad; unset: as `weighting`)
  std::optional<Weighting> step_weighting;
  double temperature = 4;
  std::vector<double> ce_weight; ///< cross-entropy to the labels: one weight for every bit-width, or one per bit-width in ascending bit order (empty: 0)
  double feature_weight = 0;     ///< MSE of the penultimate features to the teacher's, per bit-width
  std::vector<double> weights;   ///< λ_b per bit-width in ascending bit order (empty: all 1)
  Weighting weighting = Weighting::kSum;
  bool recursive = false;        ///< each bit-width distilled from the next higher one
  /// Random per-layer mixes distilled each step besides the uniform bit-widths (trainers/mix_sampling.h;
  /// 0: none), each a task of its own in the weighting, with loss weight mix_weight
  int64_t mix_samples = 0;
  double mix_weight = 1;
  TrainScope train = TrainScope::kAll; ///< per-bit: only per-bit tensors (activation steps, switchable BN) train
  int64_t crop_padding = 2;      ///< augmentation of the pool's images
  bool horizontal_flip = true;
  int64_t calib_count = 256;     ///< images that calibrate the activation steps at the start
  std::vector<int64_t> bn_bits;  ///< bit-widths whose BatchNorm statistics calibration re-estimates
  std::vector<BnMode> bn_modes{BnMode::kShift};  ///< how: one for every bn_bits bit-width, or one per bit-width
  bool bn_reestimate_end = false; ///< re-estimate bn_bits' BatchNorm statistics again after the last step (fresh calibration images)
  /// > 0: after every step the bn_bits' statistics move this far towards their re-estimate (bn_modes) on the
  /// step's images through the network as it is now (the statistics track the training weights); 0: off.
  double bn_track = 0;
  std::vector<int64_t> bn_train; ///< bit-widths whose BatchNorms use batch statistics while training (running ones updated)
  models::QuantizerInit quant_init; ///< how the weight steps start
  bool clamp_pixels = false;     ///< images (training and calibration) clamped to pixels in [0, 1] under data.norm
  double lowpass = 0;            ///< > 0: SynQ's low-pass filter (cut-off in cycles per image) on the training and calibration images, before the clamp
  int64_t generator_warmup = 0;  ///< online generation: generator-only steps before the student trains
  int64_t checkpoint_every = 0;  ///< steps between checkpoints (0: only at the end)
  int64_t stop_after = 0;        ///< end (with a checkpoint) after this many steps of this process (0: run to the end)
  std::string checkpoint;        ///< checkpoint path ("": none)
  /// Test hook: called in the middle of every checkpoint write (the student and the optimizer state are
  /// in the temporary file, the rest is not) with the step the checkpoint is for; a test kills the
  /// process there.
  std::function<void(int64_t)> checkpoint_hook;
  bool resume = false;           ///< continue from `checkpoint`
  uint64_t seed = 0;
  /// Throws zsq::OptionError (naming the flag) on a value out of range or two that conflict; what depends
  /// on the model or the data (bit-widths, pool size, processes) quantize() checks.
  void check() const;
};

/// True for the tensors of one bit-width only (act_step_b<k>, <bn>.b<k>.<leaf>).
bool is_per_bit_tensor(const std::string& name);

/// The bit-width of a per-bit tensor (act_step_b<k>, <bn>.b<k>.<leaf>); -1 for any other name.
int64_t per_bit_tensor_bits(const std::string& name);

/// True for the shared top-precision weight steps (<layer>.weight_step).
bool is_weight_step(const std::string& name);


struct QuantizeStep {
  int64_t step = 0, steps = 0;   ///< student steps done / planned (0 during the generator warm-up)
  int64_t warmup_step = 0, warmup_steps = 0;
  std::vector<int64_t> bits;     ///< the bit-widths trained this step, then a 0 per random mix (--mix-samples)
  std::vector<double> losses;    ///< KD per entry of `bits` (global batch mean)
  std::vector<double> alphas;    ///< min-norm weights (empty otherwise)
  std::vector<double> grad_norms; ///< norm of each bit-width's gradient on the shared tensors (this process's batch; min-norm, normalized: global)
  double generator_loss = -1;    ///< online generation: the generator's loss (-1: none)
  double generator_adversarial = 0; ///< its adversarial term against the student (≤ 0; 0: none)
  double lr = 0, images_per_second = 0, elapsed_seconds = 0, eta_seconds = 0;
  bool checkpointed = false;     ///< a checkpoint was written after this step
};

struct QuantizeResult {
  int64_t steps_done = 0;        ///< student steps in the checkpoint at the end
  bool complete = false;         ///< all planned steps done (false: stopped by stop_after)
  int64_t resumed_from = -1;     ///< step the run resumed from (-1: fresh)
  /// Share of the top-precision weight codes that differ from the run's start
  /// (after initialisation from the teacher); -1 for a checkpoint written
  /// before the start codes were kept.
  double changed_codes = -1;
};

/// Where the images come from: a pool (sharded over the ranks, augmented) or a
/// synthesizer (a generator recipe alternates with the student; other recipes
/// give fresh batches of their kind).
struct QuantizeData {
  const Dataset* pool = nullptr;
  Normalization norm;                          ///< the teacher's (for the pool)
  generators::Synthesizer* synthesizer = nullptr;
};

/// QuantizeOptions::check(), then the options against the student's bit-widths
/// (ascending), the data and the number of processes; throws zsq::OptionError
/// naming the flag.
void check_quantize_inputs(const QuantizeOptions& options, const std::vector<int64_t>& bits, const QuantizeData& data,
                           int world);

/// Trains `student` (built by a QuantFactory; initialised from the teacher and
/// calibrated here unless resuming). Throws on bad options, on a checkpoint
/// that does not fit, and on a non-finite loss (naming step and bit-width; the
/// last checkpoint stays as it was). `comm` may be null (one process).
QuantizeResult quantize(models::ClassifierImpl& student, models::ClassifierImpl& teacher, const QuantizeData& data,
                        const QuantizeOptions& options, const CheckpointStudent& write_student,
                        std::shared_ptr<distributed::Communicator> comm,
                        const std::function<void(const QuantizeStep&)>& on_step);

} // namespace zsq::trainers
