// zsq extract: integer models (fixed, mixed-precision or vertical-layered) from a student.
#include "launch/commands.h"
#include "launch/options.h"

#include "framework/h5.h"
#include "framework/logging.h"
#include "framework/model_file.h"
#include "models/extract.h"
#include "models/mixed.h"
#include "models/quant_factory.h"
#include "models/zoo.h"
#include "trainers/evaluate.h"
#include "trainers/mixed_precision.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>

namespace zsq::cli {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The synthetic images mixed precision measures on: a pool file, or the run's own online generator.
torch::Tensor mix_images(const po::variables_map& vm, const std::string& checkpoint, const ModelMeta& meta,
                         std::string* source) {
  const int64_t count = get<int64_t>(vm, "images");
  if (count < 2) throw UsageError("--images must be at least 2, got " + std::to_string(count));
  const Normalization norm{meta.input_mean, meta.input_std};
  if (vm.count("pool")) {
    const std::string spec = get<std::string>(vm, "pool");
    Dataset pool = load_dataset(spec, spec == "fashion-mnist" ? kFashionMnistDir : "", Split::kTrain,
                                meta.input_shape);
    trainers::check_data_fits(meta, pool);
    const int64_t n = std::min(count, pool.size());
    *source = pool.name + " (" + std::to_string(n) + " images)";
    return normalize(pool.images.narrow(0, 0, n), norm);
  }
  *source = "the run's generator (" + std::to_string(count) + " images)";
  return trainers::sample_checkpoint_generator(checkpoint, meta.num_classes, meta.input_shape, norm, count,
                                               static_cast<uint64_t>(get<int64_t>(vm, "seed")));
}

// The sensitivity table, from the run folder's cache when it was measured the same way.
trainers::Sensitivity cached_sensitivity(trainers::MixedPrecision& mp, const std::string& checkpoint,
                                         const std::string& key, trainers::BnAdapt bn, bool* cached) {
  const fs::path cache = fs::path(checkpoint).parent_path() / "sensitivity.h5";
  *cached = false;
  if (fs::exists(cache)) {
    try {
      const h5::File file = h5::File::open_read(cache.string());
      if (file.attr_string("key").value_or("") == key) {
        trainers::Sensitivity s;
        s.bits = *file.attr_ints("bits");
        s.base = file.attr_doubles("base").value().at(0);
        const torch::Tensor kl = file.read_tensor("kl").to(torch::kFloat64).contiguous();
        for (const auto& l : mp.layers()) s.layers.push_back(l.name);
        if (kl.dim() == 2 && kl.size(0) == static_cast<int64_t>(s.layers.size()) &&
            kl.size(1) == static_cast<int64_t>(s.bits.size())) {
          for (int64_t i = 0; i < kl.size(0); ++i) {
            s.kl.emplace_back(kl[i].data_ptr<double>(), kl[i].data_ptr<double>() + kl.size(1));
          }
          *cached = true;
          return s;
        }
      }
    } catch (const std::exception& e) {
      ZSQ_LOG(kWarn) << "ignoring the sensitivity cache '" << cache.string() << "': " << e.what();
    }
  }
  trainers::Sensitivity s = mp.sensitivity(bn);
  torch::Tensor kl = torch::empty({static_cast<int64_t>(s.kl.size()), static_cast<int64_t>(s.bits.size())},
                                  torch::kFloat64);
  for (size_t i = 0; i < s.kl.size(); ++i) {
    for (size_t k = 0; k < s.bits.size(); ++k) kl[i][k] = s.kl[i][k];
  }
  try {
    h5::atomic_write(cache.string(), [&](h5::File& file) {
      file.write_tensor("kl", kl);
      file.set_attr("key", key);
      file.set_attr("bits", s.bits);
      file.set_attr("base", std::vector<double>{s.base});
    });
  } catch (const std::exception& e) {
    ZSQ_LOG(kWarn) << "could not cache the sensitivity in '" << cache.string() << "': " << e.what();
  }
  return s;
}

void write_front_csv(const std::string& path, const std::vector<trainers::FrontPoint>& front) {
  std::ofstream out(path + ".tmp");
  out << "bytes,mean_wbits,bops,predicted_kl,mix\n" << std::setprecision(10);
  for (const auto& p : front) {
    out << p.cost.bytes << "," << p.cost.mean_wbits << "," << p.cost.bops << "," << p.predicted_kl << ",\""
        << models::mix_text(p.mix) << "\"\n";
  }
  out.close();
  if (!out) throw std::runtime_error("could not write '" + path + "'");
  fs::rename(path + ".tmp", path);
}

// --budget: the sensitivity (from the run folder's cache when it is there), the exact front, the point
// with the least predicted KL within the budget.
trainers::FrontPoint allocate(const po::variables_map& vm, const std::string& checkpoint, const std::string& source,
                              trainers::MixedPrecision& mp, const std::vector<models::MixLayer>& layers,
                              trainers::BnAdapt bn, bool with_teacher,
                              const std::vector<std::pair<trainers::Budget, double>>& budget) {
  bool cached = false;
  const std::string key = fs::absolute(checkpoint).string() + "|" +
                          std::to_string(fs::last_write_time(checkpoint).time_since_epoch().count()) + "|" + source +
                          "|seed " + std::to_string(get<int64_t>(vm, "seed")) + "|" + trainers::bn_adapt_name(bn) +
                          "|" + (with_teacher ? get<std::string>(vm, "teacher") : "top");
  const auto ts = Clock::now();
  const trainers::Sensitivity s = cached_sensitivity(mp, checkpoint, key, bn, &cached);
  std::cout << "sensitivity of " << layers.size() << " layers x " << s.bits.size() << " bit-widths: "
            << (cached ? "from the run folder's cache" : "measured in " + std::to_string(seconds_since(ts)) + " s")
            << " (base KL " << s.base << ")" << std::endl;
  const std::vector<trainers::FrontPoint> front = trainers::pareto_front(
      layers, s, budget.front().first, budget.size() > 1 ? std::make_optional(budget[1]) : std::nullopt);
  if (vm.count("front")) write_front_csv(get<std::string>(vm, "front"), front);
  // The front, thinned to about ten points: what each budget buys, as the sensitivity predicts it.
  const size_t every = std::max<size_t>(1, front.size() / 10);
  std::cout << "Pareto front (" << front.size() << " mixes; every " << every
            << "th):\n  weight bytes  mean bits  GBOPs/image  predicted KL" << std::endl;
  for (size_t i = 0; i < front.size(); i += every) {
    const auto& c = front[i].cost;
    std::cout << std::fixed << "  " << std::setw(12) << std::setprecision(0) << c.bytes << std::setw(11)
              << std::setprecision(3) << c.mean_wbits << std::setw(13) << std::setprecision(4) << c.bops / 1e9
              << std::setw(14) << std::setprecision(5) << front[i].predicted_kl << std::defaultfloat << std::endl;
  }
  return trainers::choose(front, budget.front().first, budget.front().second);
}

int extract_mixed(const po::variables_map& vm, const Common& common, const std::string& checkpoint,
                  const std::string& out) {
  const auto t0 = Clock::now();
  const trainers::BnAdapt bn = trainers::parse_bn_adapt(get<std::string>(vm, "mix-bn"));
  std::vector<std::pair<trainers::Budget, double>> budget;
  if (vm.count("budget")) budget = trainers::parse_budgets(get<std::string>(vm, "budget"));
  if (vm.count("front")) check_output_folder(get<std::string>(vm, "front"));
  models::LoadedStudent student = models::load_student(checkpoint);
  const std::vector<models::MixLayer> layers = models::mix_layers(*student.model, student.meta.input_shape);
  std::optional<models::Mix> given;
  if (vm.count("mix")) given = models::parse_mix(get<std::string>(vm, "mix"), layers, student.config.bits);
  std::optional<trainers::LoadedModel> teacher;
  if (vm.count("teacher")) {
    teacher = trainers::load_model(get<std::string>(vm, "teacher"));
    if (teacher->meta.input_shape != student.meta.input_shape || teacher->meta.num_classes != student.meta.num_classes) {
      throw UsageError("--teacher does not fit the checkpoint (input shape or classes differ)");
    }
  }
  std::string source;
  const torch::Tensor images = mix_images(vm, checkpoint, student.meta, &source);
  const int64_t top = *std::max_element(student.config.bits.begin(), student.config.bits.end());
  torch::Tensor reference;
  {
    torch::NoGradGuard no_grad;
    models::set_bits(*student.model, top);
    if (teacher) {
      teacher->model->eval();
      reference = teacher->model->forward(images);
    } else {
      reference = student.model->forward(images);
    }
  }
  trainers::MixedPrecision mp(*student.model, layers, images, reference);
  std::cout << "mixed precision on " << source << ", reference: "
            << (teacher ? "the teacher" : "the student at " + std::to_string(top) + " bits")
            << ", BatchNorm " << trainers::bn_adapt_name(bn) << std::endl;
  models::Mix mix;
  double predicted = 0;
  Json json;
  if (given) {
    mix = *given;
  } else {
    const trainers::FrontPoint p = allocate(vm, checkpoint, source, mp, layers, bn, teacher.has_value(), budget);
    mix = p.mix;
    predicted = p.predicted_kl;
  }
  trainers::BnSnapshot snapshot(*student.model);
  mp.adapt_batch_norms(mix, bn);
  const double measured = mp.kl(mix);
  const models::Classifier model =
      models::extract_mixed(*student.model, student.spec, student.config, layers, mix);
  const models::MixCost cost = models::mix_cost(layers, mix);
  int64_t code_bits = 0;
  for (const auto& l : mix) code_bits = std::max(code_bits, l.w);
  models::save_fixed(out, model, student.meta, student.config, code_bits, models::mix_text(mix));
  snapshot.restore();
  std::cout << "mix " << models::mix_text(mix) << "\n  weights " << std::fixed << std::setprecision(0) << cost.bytes
            << " bytes, mean weight bits " << std::setprecision(3) << cost.mean_wbits << ", " << std::setprecision(4)
            << cost.bops / 1e9 << " GBOPs per image; KL to the reference " << measured << std::defaultfloat
            << (given ? "" : " (predicted " + std::to_string(predicted) + ")") << "\nwrote " << out << " ("
            << fs::file_size(out) << " bytes) in " << std::setprecision(3) << seconds_since(t0) << " s" << std::endl;
  if (common.json) {
    std::cout << json.add("command", "extract").add("out", out).add("bytes", static_cast<int64_t>(fs::file_size(out)))
                     .add("mix", models::mix_text(mix)).add("weight_bytes", cost.bytes)
                     .add("mean_wbits", cost.mean_wbits).add("bops", cost.bops).add("kl", measured)
                     .add("seconds", seconds_since(t0)).str()
              << std::endl;
  }
  return 0;
}

} // namespace

int extract(int argc, char** argv) {
  po::options_description desc("zsq extract options");
  desc.add_options()
      ("checkpoint", po::value<std::string>(), "once-for-all student (zsq-student)")
      ("bits", po::value<int64_t>(), "extract the fixed-precision model of this bit-width; "
                                     "without it (and without --budget/--mix), the vertical-layered file of all of them")
      ("budget", po::value<std::string>(), "mixed precision: the per-layer bit-widths with the least predicted loss "
                                           "within size=40KB (B, KB, MB, KiB, MiB), wbits=3.5 (mean weight bits) or "
                                           "bops=1.2G (weight x activation bits x MACs per image; K, M, G), or two "
                                           "of them at once, comma-separated (size=100KB,bops=0.3G: the front is "
                                           "by the first, the second is a limit too)")
      ("mix", po::value<std::string>(), "mixed precision: the model bit-width of each quantized layer, in module "
                                        "order, comma-separated; 'w/a' splits weights and input (as a --front file "
                                        "lists them)")
      ("images", po::value<int64_t>()->default_value(256), "mixed precision: synthetic images to measure on")
      ("pool", po::value<std::string>(), "mixed precision: take the images from this set (zsq generate's pool); "
                                         "default: sample the run's own online generator from the checkpoint")
      ("teacher", po::value<std::string>(), "mixed precision: the FP32 teacher as the reference (default: the "
                                            "student at its top bit-width)")
      ("mix-bn", po::value<std::string>()->default_value("keep"),
       "mixed precision BatchNorm statistics: keep (each layer's BatchNorm of its bit-width as it is; measured best "
       "on two seeds), relative (moved by how the mix changes its input on the synthetic images) or absolute (the "
       "images' statistics)")
      ("front", po::value<std::string>(), "mixed precision with --budget: write the whole Pareto front here (CSV)")
      ("seed", po::value<int64_t>()->default_value(0), "mixed precision: seed of the generator's images")
      ("out", po::value<std::string>(), "file to write");
  add_common_options(desc);
  Common common;
  auto parsed = parse("extract", "zsq extract --checkpoint student.h5 [--bits 4 | --budget size=40KB | --mix ...] "
                                 "--out model.h5", desc, argc, argv, &common);
  if (!parsed) return 0;
  const po::variables_map& vm = *parsed;
  if (!vm.count("checkpoint")) throw UsageError("--checkpoint is required");
  if (!vm.count("out")) throw UsageError("--out is required");
  const int modes = static_cast<int>(vm.count("bits") + vm.count("budget") + vm.count("mix"));
  if (modes > 1) throw UsageError("--bits, --budget and --mix exclude each other");
  if (vm.count("front") && !vm.count("budget")) throw UsageError("--front needs --budget");
  const std::string out = get<std::string>(vm, "out");
  check_output_folder(out);
  const std::string checkpoint = get<std::string>(vm, "checkpoint");
  if (vm.count("budget") || vm.count("mix")) return extract_mixed(vm, common, checkpoint, out);
  models::LoadedStudent student = models::load_student(checkpoint);
  ModelMeta meta = student.meta;
  if (vm.count("bits")) {
    const int64_t bits = get<int64_t>(vm, "bits");
    const models::Classifier model = models::extract_fixed(*student.model, student.spec, student.config, bits);
    models::save_fixed(out, model, meta, student.config, bits);
    std::cout << "extracted the " << bits << "-bit model; wrote " << out << " (" << fs::file_size(out) << " bytes)"
              << std::endl;
  } else {
    models::save_vertical(out, *student.model, student.spec, student.config, meta);
    std::cout << "extracted the vertical-layered model (bits " << models::bits_text(student.config.bits)
              << "); wrote " << out << " (" << fs::file_size(out) << " bytes)" << std::endl;
  }
  if (common.json) {
    std::cout << Json().add("command", "extract").add("out", out).add("bytes", static_cast<int64_t>(fs::file_size(out)))
                     .str()
              << std::endl;
  }
  return 0;
}

} // namespace zsq::cli
