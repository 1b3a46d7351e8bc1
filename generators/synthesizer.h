// Synthetic training images from a teacher's BatchNorm statistics.
//
// A recipe is made of named parts (research/zsq_methods.md section 2):
//   variables  what is optimized: "noise" (nothing: Gaussian images),
//              "pixels" (the images themselves, ZeroQ), "generator" (a
//              class-conditional generator, GDFQ)
//   bns        BN-statistics loss variant (generators/bns_loss.h) and weight
//   ce         cross-entropy of the teacher to the target labels, and weight
//   prior      image prior (per-image mean 0 / std 1), and weight
//   margin     DSG slack on the statistics
// The named recipes fill the parts with their paper's code defaults; every
// part can be overridden (SynthesizerOptions).
//
//   noise  N(0, 1) images; labels = the teacher's prediction
//   zeroq  pixels from N(0, 1) (IntraQ's init; ZeroQ's code draws a much
//          narrower uniform), Adam lr 0.5, 500 steps per batch, loss-plateau
//          LR decay (patience 100, ×0.1, min 1e-4), zeroq BNS + prior, no labels
//   gdfq   generator z ⊙ Emb(y) -> Linear -> BN -> ×2 -> Conv -> BN(eps 0.8) ->
//          LReLU(0.2) -> ×2 -> Conv -> BN(eps 0.8) -> LReLU -> Conv -> Tanh ->
//          BN(affine off) (GDFQ's CIFAR generator), Adam lr 1e-3 betas
//          (0.5, 0.999), loss CE(teacher(G(z, y)), y) + 0.1·gdfq BNS, labels
//          uniform
//   dsg    zeroq + DSG's slack distribution alignment (margin 0.1 running std,
//          our choice: DSG publishes no rule) and layerwise sample enhancement
//   qimera gdfq + superposed embeddings: on 40 % of the generator steps every
//          sample mixes K = 2 classes, input Σ λ_k (z ⊙ Emb(y_k)), λ =
//          softmax(N(0, 1)), trained with soft cross-entropy to the same
//          mixture (Qimera's CIFAR-10 script; its mapping layer is off there and
//          here by default). Deviation: the mixture is of GDFQ's z ⊙ Emb(y)
//          inputs; Qimera standardizes Emb(y) + z before mixing.
//   intraq pixels from N(0, 1) with uniform target labels, gdfq BNS + soft
//          inception loss (targets U(0.95, 1) for half the samples) + marginal
//          distance to the class centroids of earlier batches (0.05, 0.8),
//          local object reinforcement (random resized crop 0.5-1 + flip on
//          half of the steps), Adam lr 0.5 with plateau decay (patience 50),
//          1000 steps per batch (IntraQ's CIFAR-10 script)
//   genie  per batch a fresh generator Linear -> BN -> ×2 -> Conv -> BN ->
//          LReLU -> ×2 -> Conv -> Tanh -> BN(affine off) and learned latents,
//          genie BNS + prior, swing convolutions in the teacher's strided
//          layers, Adam lr 0.1 (latents, plateau decay) / 0.01 (generator,
//          ×0.95 per 100 steps), 4000 steps per batch (Genie-D's code)
//   adversarial  gdfq's generator, losses and optimizer plus an adversarial
//          term against a proxy student (a fresh FP32 copy of the teacher's
//          architecture) trained alongside on everything the generator made so
//          far: the generator also maximizes the teacher-student divergence on
//          samples the student still classifies like the teacher (DFAD's
//          adversarial game; the masked KL is Fast-DFKD's fast_meta.py), so it
//          keeps moving to regions the student has not learned. Its pool is
//          the generator's trajectory after the warm-up (CMI/Fast-DFKD keep
//          every synthesized batch): each batch is `stride` more training
//          steps, of which the last one's images are kept. The adversarial
//          term's weight ramps up linearly over the warm-up steps (ours).
//
// Several ranks: each draws different noise (seed offset by rank); the
// generator is one shared model (its gradients averaged by a Reducer) and
// batch statistics are global, so N ranks act as one rank with N× the batch.
#pragma once

#include "distributed/communicator.h"
#include "framework/data.h"
#include "framework/state.h"
#include "generators/bns_loss.h"
#include "models/zoo.h"

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace zsq::generators {

struct SynthesizerOptions {
  std::string recipe = "gdfq";   ///< noise, zeroq, dsg, gdfq, qimera, genie, intraq
  int64_t batch_size = 64;       ///< images per step and rank
  int64_t iterations = -1;       ///< optimization steps (zeroq: per batch; gdfq: generator training); -1: recipe's
  double lr = -1;                ///< -1: recipe's
  std::string bns;               ///< "": recipe's; else zeroq, genie, gdfq
  double bns_weight = -1, ce_weight = -1, prior_weight = -1;  ///< -1: recipe's
  double margin = -1;            ///< DSG slack in running stds (0: off; -1: the recipe's)
  int lor = -1;                  ///< IntraQ local object reinforcement: 1 on, 0 off, -1 the recipe's
  double soft_target = -1;       ///< IntraQ soft inception target floor; -1: the recipe's
  double margin_low = -2, margin_up = -2;  ///< IntraQ marginal distance; -2: the recipe's, -1: off
  double superpose_prob = -1;    ///< Qimera superposition probability; -1: the recipe's
  int64_t superpose_k = 0;       ///< classes per superposed sample; 0: the recipe's
  int mapping = -1;              ///< Qimera mapping layer: 1 on, 0 off, -1 the recipe's
  int layerwise = -1;            ///< DSG layerwise sample enhancement: 1 on, 0 off, -1 the recipe's
  int64_t latent_dim = 100;      ///< generator noise size (genie's code uses 256)
  double adversarial = -1;       ///< weight of the adversarial term (0: off; -1: the recipe's)
  int64_t student_steps = 0;     ///< proxy-student steps per generator step (0: the recipe's)
  int64_t stride = 0;            ///< adversarial: generator steps per sampled batch (0: the recipe's)
  /// The adversarial term works against a student the caller supplies (set_adversary: zsq quantize's own
  /// student, online) instead of a proxy student trained here: no proxy, no bank, no ramp.
  bool external_adversary = false;
  /// The teacher's architecture (needed by genie, which builds a swinging copy).
  models::ModelSpec teacher_spec{"", 1, 10, 16};
  /// What the losses see of an image (zsq quantize --gen-clamp-pixels): the generated images clamped to the
  /// pixel range, as the teacher and student see them after --clamp-pixels; the clamp passes no gradient to
  /// the clipped pixels. Default-constructed: the images as generated (GDFQ's code, which clamps nowhere).
  PixelClamp loss_clamp;
  uint64_t seed = 0;
};

/// The parts of a recipe after defaults and overrides.
struct Recipe {
  std::string name, variables;
  BnsVariant bns = BnsVariant::kGdfq;
  double bns_weight = 0, ce_weight = 0, prior_weight = 0, margin = 0, lr = 0;
  int64_t iterations = 0;
  int64_t patience = 100;     ///< pixel recipes: plateau steps before the learning rate drops (ZeroQ 100, IntraQ 50)
  // IntraQ's parts (off by default):
  bool lor = false;          ///< local object reinforcement: random resized crop + flip half of the steps
  double soft_target = 0;    ///< soft inception loss: target p* ~ U(soft_target, 1) for half the samples (0: off)
  double margin_low = -1, margin_up = -1;  ///< marginal distance constraint on 1 - cos(feature, class centroid) (<0: off)
  // Qimera's parts (off by default):
  double superpose_prob = 0;  ///< per generator step, the chance that the batch mixes K classes per sample
  int64_t superpose_k = 2;
  bool mapping = false;       ///< the disentanglement mapping layer
  bool layerwise = false;     ///< DSG's layerwise sample enhancement (zeroq BNS)
  // The adversarial part (off by default):
  double adversarial = 0;     ///< weight of −KL(teacher || proxy student), masked to agreeing samples
  int64_t student_steps = 2;  ///< proxy-student distillation steps per generator step
  int64_t stride = 1;         ///< generator steps per sampled batch (the last one's images are kept)
  std::string describe() const;
};
/// Throws on an unknown recipe or an impossible part.
Recipe resolve_recipe(const SynthesizerOptions& options);
const std::vector<std::string>& known_recipes();

/// One optimization step's losses, for progress lines.
struct StepReport {
  int64_t step = 0, steps = 0;
  double total = 0, bns = 0, ce = 0, prior = 0, confidence = 0;  ///< confidence: mean teacher p(target)
  double adversarial = 0;  ///< the adversarial term (≤ 0), 0 without one
  double adversarial_weight = 0;  ///< its weight this step (ramped up over the warm-up)
  double student_kd = 0;   ///< the proxy student's distillation loss after this step (adversarial recipe)
};

class Synthesizer : public Stateful {
 public:
  virtual ~Synthesizer() = default;
  /// Trains what the recipe learns once (the generator); no-op otherwise.
  virtual void fit(const std::function<void(const StepReport&)>& progress) {}
  /// The next batch: normalized images N×C×H×W and labels N.
  virtual std::pair<torch::Tensor, torch::Tensor> next_batch(const std::function<void(const StepReport&)>& progress) = 0;
  /// The generator's parameters (empty when there is none).
  virtual std::vector<torch::Tensor> parameters() const { return {}; }
  /// True when every batch is one more training step of the generator (the
  /// adversarial recipe): such a recipe cannot be checkpointed mid-run.
  virtual bool trains_while_sampling() const { return false; }
  /// The adversarial part's proxy student (null without one).
  virtual models::Classifier proxy_student() const { return nullptr; }
  /// Recipes with one generator trained for the whole run (gdfq, qimera) can
  /// alternate with a student: one generator step, returning the (detached)
  /// images and labels it was trained on. Others throw.
  virtual bool trains_generator() const { return false; }
  virtual std::pair<torch::Tensor, torch::Tensor> train_step(StepReport* report);
  /// What a checkpoint needs to continue bit-for-bit: the generator's tensors
  /// and its optimizer's state (identical on every rank), by name.
  NamedTensors state() override { return {}; }
  void load_state(const TensorMap& state) override;
  /// This rank's random stream (uint8 tensor), for checkpoints.
  virtual torch::Tensor rng_state() const = 0;
  virtual void set_rng_state(const torch::Tensor& state) = 0;
  const Recipe& recipe() const { return recipe_; }
  /// With external_adversary and an adversarial weight: the student's logits of a batch of images. Until it
  /// is set the generator trains without the adversarial term. Gradients must reach the images; the callable
  /// decides what else (trainers::quantize keeps them off the student's parameters).
  using Adversary = std::function<torch::Tensor(const torch::Tensor&)>;
  void set_adversary(Adversary adversary) { adversary_ = std::move(adversary); }
  /// True when the recipe's adversarial term waits for set_adversary.
  bool wants_adversary() const { return external_ && recipe_.adversarial > 0; }

 protected:
  Recipe recipe_;
  bool external_ = false;
  Adversary adversary_;
};

/// teacher: FP32, put in eval mode with its BN taps used while synthesizing.
/// input_shape: C, H, W. comm may be null (one process).
std::unique_ptr<Synthesizer> make_synthesizer(models::Classifier teacher, std::vector<int64_t> input_shape,
                                              int64_t num_classes, const SynthesizerOptions& options,
                                              std::shared_ptr<distributed::Communicator> comm = nullptr);

} // namespace zsq::generators
