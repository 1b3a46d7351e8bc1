// zsq ptq: zero-shot post-training quantization (Genie-M's block reconstruction on synthetic images, with
// PD-Quant's prediction-difference loss as an option), one fixed-precision integer model per bit-width.
#include "launch/commands.h"
#include "launch/options.h"
#include "launch/quantize_options.h"

#include "distributed/communicator.h"
#include "framework/data.h"
#include "framework/errors.h"
#include "framework/h5.h"
#include "framework/model_file.h"
#include "generators/synthesizer.h"
#include "models/extract.h"
#include "models/quant_factory.h"
#include "models/zoo.h"
#include "trainers/evaluate.h"
#include "trainers/ptq.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <optional>

namespace zsq::cli {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void add_ptq_options(po::options_description& desc) {
  po::options_description data("Teacher and images"), student("Quantized models"), recon("Reconstruction"),
      generator("Generator (without --pool)"), common("Common");
  data.add_options()
      ("teacher", po::value<std::string>(), "FP32 teacher model file")
      ("pool", po::value<std::string>(),
       "reconstruct on these images instead of generating them: an HDF5 data set (e.g. from zsq generate), an "
       "image folder, or 'fashion-mnist' (real training images: not data-free)")
      ("recipe", po::value<std::string>()->default_value("gdfq"),
       "synthesis without --pool: gdfq or qimera train a generator (--gen-iterations steps) and sample it; noise, "
       "zeroq, dsg, genie, intraq optimize each batch")
      ("images", po::value<int64_t>()->default_value(1024), "images to reconstruct on (Genie, BRECQ: 1024)")
      ("clamp-pixels", po::value<std::string>()->default_value("on"),
       "on: the images are clamped to the pixel range [0, 1] under the teacher's normalization; off: as given")
      ("eval-data", po::value<std::string>()->default_value("fashion-mnist"),
       "labelled test set for the final table ('fashion-mnist', an HDF5 file, an image folder, or 'none')")
      ("data-dir", po::value<std::string>()->default_value(kFashionMnistDir), "folder with the Fashion-MNIST IDX files");
  add_model_overrides(data);
  student.add_options()
      ("bits", po::value<std::string>()->default_value("4"),
       "weight bits of the middle layers, one model per entry, comma-separated (e.g. 4,3,2)")
      ("abits", po::value<std::string>(), "activation bits of the middle layers, one per --bits entry (default: --bits)")
      ("first-last-bits", po::value<std::string>()->default_value("8"),
       "weight and activation bits of the first and last layer: N, 'same' or FIRST,LAST")
      ("input-bits", po::value<std::string>()->default_value("same"),
       "bits of the network input: N, or 'same' (the first layer's activation bits)")
      ("input-range", po::value<std::string>()->default_value("pixel"),
       "the first layer's input steps: pixel (from the pixel range; fixed) or calibrated");
  recon.add_options()
      ("iterations", po::value<int64_t>()->default_value(1000), "iterations per unit (Genie, BRECQ: 20000)")
      ("batch-size", po::value<int64_t>()->default_value(32), "images per iteration")
      ("rounding-lr", po::value<double>()->default_value(1e-3), "Adam learning rate of AdaRound's rounding variables")
      ("weight-step-lr", po::value<double>()->default_value(1e-4),
       "Adam learning rate of the weight steps, cosine to 0 (0: frozen)")
      ("act-step-lr", po::value<double>()->default_value(4e-5),
       "Adam learning rate of the activation steps, cosine to 0 (0: frozen)")
      ("round-weight", po::value<double>()->default_value(1.0),
       "weight of AdaRound's rounding regulariser (Genie: 1; BRECQ, QDrop, PD-Quant: 0.01)")
      ("drop", po::value<double>()->default_value(0.5),
       "QDrop: probability that an activation element (and the unit's input) stays full precision (0: off)")
      ("pd-weight", po::value<double>()->default_value(0.0),
       "PD-Quant: weight of the KL between the teacher's logits and the teacher's upper layers run on the "
       "reconstructed output (its code: 10; 0: off)")
      ("pd-temperature", po::value<double>()->default_value(4.0), "PD-Quant: softmax temperature")
      ("border", po::value<std::string>()->default_value("off"),
       "on: AQuant's learned rounding border for every layer's input, one linear function of the activation per "
       "input channel (stored in the fixed model; the integer path applies it)")
      ("border-lr", po::value<double>()->default_value(1e-3), "Adam learning rate of the rounding borders, cosine to 0");
  add_synth_options(generator, "gen-");
  common.add_options()
      ("out", po::value<std::string>()->default_value("ptq"),
       "output folder (created): w<W>a<A>.h5 (zsq-fixed) per model, result.json")
      ("seed", po::value<uint64_t>()->default_value(0), "random seed");
  add_common_options(common);
  desc.add(data).add(student).add(recon).add(generator).add(common);
}

trainers::PtqOptions read_ptq_options(const po::variables_map& vm) {
  trainers::PtqOptions o;
  o.iterations = get<int64_t>(vm, "iterations");
  o.batch_size = get<int64_t>(vm, "batch-size");
  o.rounding_lr = get<double>(vm, "rounding-lr");
  o.weight_step_lr = get<double>(vm, "weight-step-lr");
  o.act_step_lr = get<double>(vm, "act-step-lr");
  o.round_weight = get<double>(vm, "round-weight");
  o.drop = get<double>(vm, "drop");
  o.pd_weight = get<double>(vm, "pd-weight");
  o.pd_temperature = get<double>(vm, "pd-temperature");
  o.border_lr = get<double>(vm, "border-lr");
  o.seed = get<uint64_t>(vm, "seed");
  o.check();
  return o;
}

// One student configuration per --bits entry: one bit-width whose codes are its weight bits.
std::vector<models::StudentConfig> read_configs(const po::variables_map& vm) {
  const std::vector<int64_t> w = parse_int_list(get<std::string>(vm, "bits"), "--bits");
  const std::vector<int64_t> a = vm.count("abits") ? parse_int_list(get<std::string>(vm, "abits"), "--abits") : w;
  if (a.size() != w.size()) {
    throw UsageError("--abits needs one value per --bits entry (" + std::to_string(w.size()) + "), got " +
                     std::to_string(a.size()));
  }
  std::vector<models::StudentConfig> configs;
  for (size_t i = 0; i < w.size(); ++i) {
    models::StudentConfig c;
    c.bits = {w[i]};
    c.abits = {a[i]};
    try {
      std::tie(c.first_bits, c.last_bits) = models::parse_first_last_bits(get<std::string>(vm, "first-last-bits"));
      c.input_bits = models::parse_input_bits(get<std::string>(vm, "input-bits"));
      c.top_bits = w[i];
      c.input_border = read_switch(vm, "border");
      c.check();
    } catch (const c10::Error& e) {
      throw UsageError(e.what_without_backtrace());
    }
    configs.push_back(c);
  }
  return configs;
}

std::string config_name(const models::StudentConfig& c) {
  return "w" + std::to_string(c.bits[0]) + "a" + std::to_string(c.abits[0]);
}

// The images to reconstruct on, normalized (a random pick of the pool, or synthesized).
torch::Tensor load_images(const po::variables_map& vm, const trainers::LoadedModel& teacher,
                          const models::ModelSpec& spec, int64_t count, uint64_t seed,
                          const std::shared_ptr<distributed::Communicator>& comm) {
  if (vm.count("pool")) {
    const std::string text = get<std::string>(vm, "pool");
    const Dataset pool = load_dataset(text, text == "fashion-mnist" ? get<std::string>(vm, "data-dir") : "",
                                      Split::kTrain, teacher.meta.input_shape);
    trainers::check_data_fits(teacher.meta, pool);
    if (pool.size() < count) {
      throw UsageError("--pool has " + std::to_string(pool.size()) + " images, fewer than --images " + std::to_string(count));
    }
    const torch::Tensor pick = torch::randperm(pool.size(), at::make_generator<at::CPUGeneratorImpl>(seed), torch::kLong)
                                   .narrow(0, 0, count);
    return normalize(pool.images.index_select(0, pick), teacher.norm());
  }
  generators::SynthesizerOptions so;
  so.recipe = get<std::string>(vm, "recipe");
  read_synth_options(vm, "gen-", &so);
  so.seed = seed;
  so.teacher_spec = spec;
  models::Classifier copy = models::build(spec, models::Fp32Factory());
  load_state(h5::File::open_read(get<std::string>(vm, "teacher")), *copy);
  std::unique_ptr<generators::Synthesizer> synth;
  try {
    synth = generators::make_synthesizer(copy, teacher.meta.input_shape, teacher.meta.num_classes, so, comm);
  } catch (const c10::Error& e) {
    throw UsageError(e.what_without_backtrace());
  }
  const auto report = [](const generators::StepReport& r) {
    if (r.step % 100 == 0 || r.step == r.steps) {
      std::cout << "synthesis " << r.step << "/" << r.steps << "  loss " << std::fixed << std::setprecision(4) << r.total
                << std::defaultfloat << std::endl;
    }
  };
  synth->fit(report);
  std::vector<torch::Tensor> parts;
  int64_t have = 0;
  while (have < count) {
    parts.push_back(synth->next_batch(report).first.detach());
    have += parts.back().size(0);
  }
  return torch::cat(parts).narrow(0, 0, count);
}

void print_unit(const trainers::UnitReport& r) {
  std::cout << "  unit " << r.index << "/" << r.units << " " << std::left << std::setw(9) << r.name << std::right;
  if (r.layers == 0) {
    std::cout << " (nothing quantized)" << std::endl;
    return;
  }
  std::cout << " error " << std::scientific << std::setprecision(3) << r.error_before << " -> " << r.error_after
            << std::fixed << std::setprecision(1) << "  codes changed " << 100 * r.changed << " %  "
            << format_duration(r.seconds) << std::defaultfloat << std::endl;
}

}  // namespace

int ptq(int argc, char** argv) {
  po::options_description desc("zsq ptq options");
  add_ptq_options(desc);
  Common common;
  auto parsed = parse("ptq", "zsq ptq --teacher teacher.h5 [--bits 4,2 --abits 4,4] [--pool synth.h5] [--out ptq/]",
                      desc, argc, argv, &common);
  if (!parsed) return 0;
  const po::variables_map& vm = *parsed;
  if (!vm.count("teacher")) throw UsageError("--teacher is required");
  const auto comm = distributed::Communicator::create();
  if (comm->size() > 1) throw UsageError("zsq ptq runs in one process; start it without mpirun");
  const std::vector<models::StudentConfig> configs = read_configs(vm);
  const trainers::PtqOptions o = read_ptq_options(vm);
  const int64_t count = get<int64_t>(vm, "images");
  if (count < o.batch_size) {
    throw UsageError("--images (" + std::to_string(count) + ") must be at least --batch-size (" +
                     std::to_string(o.batch_size) + ")");
  }
  const bool clamp = read_switch(vm, "clamp-pixels");
  check_input_range(vm);
  const fs::path out = get<std::string>(vm, "out");
  if (fs::exists(out) && !fs::is_directory(out)) throw UsageError("--out '" + out.string() + "' is a file, not a folder");
  h5::check_writable(fs::exists(out) ? (out / "result.json").string() : out.string());

  const trainers::LoadedModel teacher = trainers::load_model(get<std::string>(vm, "teacher"), read_overrides(vm));
  const std::optional<Dataset> test = load_eval_data(vm, teacher.meta);
  const models::ModelSpec spec = teacher.spec();
  const auto start = Clock::now();
  torch::Tensor images = load_images(vm, teacher, spec, count, o.seed, comm);
  if (clamp) images = PixelClamp(teacher.norm())(images);
  const double synthesis_seconds = seconds_since(start);
  std::cout << "ptq: " << spec.arch << ", " << count << " images ("
            << (vm.count("pool") ? get<std::string>(vm, "pool") : get<std::string>(vm, "recipe") + ", synthesized in " +
                                                                       format_duration(synthesis_seconds))
            << "), " << o.iterations << " iterations per unit, batch " << o.batch_size
            << (o.drop > 0 ? ", QDrop" : "") << (o.pd_weight > 0 ? ", PD-Quant loss" : "")
            << (configs.front().input_border ? ", AQuant borders" : "") << std::endl;
  fs::create_directories(out);
  Json json;
  json.add("command", "ptq").add("images", count).add("iterations", o.iterations).add("synthesis_seconds", synthesis_seconds);
  if (test) {
    const double t = trainers::evaluate(*teacher.model, *test, teacher.norm()).top1;
    std::cout << "teacher (fp32) top-1 on " << test->name << ": " << percent(t) << std::endl;
    json.add("teacher_top1", t);
  }
  for (models::StudentConfig config : configs) {
    set_input_range(vm, teacher.norm(), &config);
    const std::string name = config_name(config);
    const auto t0 = Clock::now();
    std::cout << name << ":" << std::endl;
    models::Classifier student = models::build(spec, models::QuantFactory(config));
    models::init_student(*student, *teacher.model, images, {}, {models::BnEstimate::kShift},
                         {quant::WeightInit::kMse});
    trainers::reconstruct(*student, *teacher.model, images, o, print_unit);
    const models::Classifier fixed = models::extract_fixed(*student, spec, config, config.bits[0]);
    const std::string path = (out / (name + ".h5")).string();
    ModelMeta meta = teacher.meta;
    meta.recipe = resolved_config(desc, vm);
    models::save_fixed(path, fixed, meta, config, config.bits[0]);
    const double seconds = seconds_since(t0);
    json.add(name + "_seconds", seconds);
    std::cout << "wrote " << path << " in " << format_duration(seconds);
    if (test) {
      const trainers::EvalResult r = trainers::evaluate(*fixed, *test, teacher.norm());
      std::cout << "; integer model top-1 on " << test->name << ": " << percent(r.top1);
      json.add(name + "_top1", r.top1);
    }
    std::cout << std::endl;
  }
  json.add("seconds", seconds_since(start));
  const std::string result = (out / "result.json").string();
  std::ofstream(result + ".tmp") << json.str() << "\n";
  fs::rename(result + ".tmp", result);
  if (common.json) std::cout << json.str() << std::endl;
  return 0;
}

} // namespace zsq::cli
