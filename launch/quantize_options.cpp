// zsq quantize's training options (launch/quantize_options.h).
#include "launch/quantize_options.h"

#include "framework/errors.h"

#include <algorithm>

namespace zsq::cli {

void add_training_options(po::options_description& desc) {
  desc.add_options()
      ("steps", po::value<int64_t>()->default_value(400), "student optimizer steps")
      ("batch-size", po::value<int64_t>()->default_value(64), "images per step, over all processes")
      ("lr", po::value<double>()->default_value(1e-4), "peak learning rate (SGD, Nesterov momentum 0.9, cosine to 0)")
      ("weight-decay", po::value<double>()->default_value(0.0), "weight decay on the latent weights")
      ("weight-step-lr", po::value<double>()->default_value(1.0),
       "learning-rate multiplier of the shared weight steps (0: frozen at their initial values, the latent weights "
       "still train)")
      ("per-bit-lr", po::value<std::string>(),
       "learning-rate multiplier of each bit-width's own tensors (activation steps, BatchNorm): one value or one "
       "per bit-width in the order of --bits (default: 1)")
      ("weight-step-grad", po::value<std::string>()->default_value("weighting"),
       "how the shared weight steps combine the bit-widths' gradients: weighting (as --weighting says), or "
       "their own rule: sum, min-norm, normalized, pcgrad (e.g. --weighting pcgrad --weight-step-grad min-norm)")
      ("temperature", po::value<double>()->default_value(4.0), "distillation temperature")
      ("ce-weight", po::value<std::string>()->default_value("auto"),
       "weight of the cross-entropy to the images' labels: one value, one per bit-width (e.g. 1,0,0,0), or auto "
       "(1 at the bit-widths of 2 or fewer, 0 at the others)")
      ("feature-weight", po::value<double>()->default_value(0.0),
       "weight of the squared error of the penultimate features to the teacher's")
      ("weighting", po::value<std::string>()->default_value("min-norm"),
       "bit-widths per step: sum (all, weighted by --bit-weights), sandwich (highest, lowest, one random middle), "
       "min-norm (MGDA combination of the per-bit gradients), normalized (all, each bit-width's gradient on the "
       "shared weights rescaled to their mean norm), pcgrad (all; on the shared weights each lower bit-width's "
       "gradient loses its component against every higher one's where they conflict, then summed)")
      ("bit-weights", po::value<std::string>(), "loss weight per bit-width, comma-separated (default: all 1)")
      ("recursive", po::value<std::string>()->default_value("off"),
       "on: each bit-width learns from the next higher one instead of the teacher")
      ("mix-samples", po::value<int64_t>()->default_value(0),
       "random per-layer mixes of the bit-widths distilled each step besides the uniform bit-widths, each one more "
       "task for --weighting (Bit-Mixer's idea: trains the model for zsq extract --budget; 0: none)")
      ("mix-weight", po::value<double>()->default_value(1.0), "loss weight of each random mix (--mix-samples)")
      ("train", po::value<std::string>()->default_value("all"),
       "what trains: all, or per-bit (only each bit-width's activation steps and BatchNorm; shared weights frozen)")
      ("calib-count", po::value<int64_t>()->default_value(256), "images that calibrate the initial steps")
      ("generator-warmup", po::value<int64_t>()->default_value(400),
       "online gdfq/qimera: generator-only steps before the student trains")
      ("clamp-pixels", po::value<std::string>()->default_value("on"),
       "on: the training and calibration images are clamped to the pixel range [0, 1] (under the teacher's "
       "normalization) before teacher and student see them (synthetic images stray outside it); off: as given")
      ("bn-reestimate-end", po::value<std::string>()->default_value("off"),
       "on: after the last step the --bn-reestimate bit-widths' BatchNorm statistics are re-estimated again "
       "(--bn-mode, --calib-count fresh images) through the trained network; off: only at the start")
      ("bn-track", po::value<double>()->default_value(0),
       "after every step, move the --bn-reestimate bit-widths' BatchNorm statistics this far (0 to 1) towards their "
       "re-estimate (--bn-mode) on the step's images through the network as trained so far; 0: off")
      ("bn-train", po::value<std::string>()->default_value("none"),
       "bit-widths whose BatchNorms use batch statistics while training and update their running statistics: "
       "none, all, or a comma-separated list");
}

bool read_switch(const po::variables_map& vm, const char* name) {
  const std::string v = get<std::string>(vm, name);
  if (v != "on" && v != "off") throw UsageError(std::string("--") + name + " must be 'on' or 'off', got '" + v + "'");
  return v == "on";
}

trainers::QuantizeOptions read_quantize_options(const po::variables_map& vm, const models::StudentConfig& config) {
  trainers::QuantizeOptions q;
  q.quant_init = read_quant_init(vm);
  q.steps = get<int64_t>(vm, "steps");
  q.batch_size = get<int64_t>(vm, "batch-size");
  q.lr = get<double>(vm, "lr");
  q.weight_decay = get<double>(vm, "weight-decay");
  q.weight_step_lr = get<double>(vm, "weight-step-lr");
  const std::string step_grad = get<std::string>(vm, "weight-step-grad");
  if (step_grad != "weighting") {
    try {
      q.step_weighting = trainers::parse_weighting(step_grad);
    } catch (const zsq::OptionError&) {
      throw UsageError("--weight-step-grad must be weighting, sum, min-norm, normalized or pcgrad, got '" + step_grad + "'");
    }
  }
  q.per_bit_lr = read_per_bit_values(vm, "per-bit-lr", config, /*one_for_all=*/true);
  q.temperature = get<double>(vm, "temperature");
  if (get<std::string>(vm, "ce-weight") == "auto") {
    const std::vector<int64_t> low = low_bits(config);
    std::vector<int64_t> ascending = config.bits;
    std::sort(ascending.begin(), ascending.end());
    for (const int64_t b : ascending) q.ce_weight.push_back(std::count(low.begin(), low.end(), b) ? 1.0 : 0.0);
  } else {
    q.ce_weight = read_per_bit_values(vm, "ce-weight", config, /*one_for_all=*/true);
  }
  q.feature_weight = get<double>(vm, "feature-weight");
  q.weighting = trainers::parse_weighting(get<std::string>(vm, "weighting"));
  q.calib_count = get<int64_t>(vm, "calib-count");
  q.checkpoint_every = get<int64_t>(vm, "checkpoint-every");
  q.stop_after = get<int64_t>(vm, "stop-after");
  q.resume = vm["resume"].as<bool>();
  q.seed = get<uint64_t>(vm, "seed");
  q.recursive = read_switch(vm, "recursive");
  q.mix_samples = get<int64_t>(vm, "mix-samples");
  q.mix_weight = get<double>(vm, "mix-weight");
  q.clamp_pixels = read_switch(vm, "clamp-pixels");
  q.lowpass = get<double>(vm, "lowpass");
  q.bn_reestimate_end = read_switch(vm, "bn-reestimate-end");
  q.bn_track = get<double>(vm, "bn-track");
  q.train = trainers::parse_train_scope(get<std::string>(vm, "train"));
  q.weights = read_per_bit_values(vm, "bit-weights", config, /*one_for_all=*/false);
  const BnOptions bn = read_bn_options(vm, config);
  q.bn_bits = bn.bits;
  q.bn_modes = bn.modes;
  q.bn_train = read_bit_list(vm, "bn-train", config);
  q.generator_warmup = get<int64_t>(vm, "generator-warmup");
  return q;
}

} // namespace zsq::cli
