// zsq eval: top-1 of a model file or of every bit-width of a checkpoint.
#include "launch/commands.h"
#include "launch/options.h"

#include "framework/data.h"
#include "framework/h5.h"
#include "models/extract.h"
#include "models/quant_factory.h"
#include "trainers/evaluate.h"

#include <filesystem>
#include <iomanip>
#include <iostream>
#include <set>

namespace zsq::cli {
namespace fs = std::filesystem;

namespace {

// Loads --data (or its --split) and keeps the first --limit images.
Dataset eval_data(const po::variables_map& vm, const std::vector<int64_t>& shape) {
  const int64_t limit = get<int64_t>(vm, "limit");
  if (limit < 0) throw UsageError("--limit must be >= 0");
  const Split split = parse_split(get<std::string>(vm, "split"));
  Dataset data = load_dataset(get<std::string>(vm, "data"), get<std::string>(vm, "data-dir"), split, shape);
  if (limit > 0 && limit < data.size()) {
    data.images = data.images.narrow(0, 0, limit);
    data.labels = data.labels.narrow(0, 0, limit);
  }
  return data;
}

// --save-logits: every evaluated image's logits (`logits`, or `logits_b<k>` per bit-width of a checkpoint) and
// labels, in data order, written atomically.
void save_logits(const std::string& path, const Dataset& data, const std::vector<std::pair<std::string, torch::Tensor>>& logits) {
  h5::atomic_write(path, [&](h5::File& file) {
    file.set_attr("format", std::string("zsq-logits"));
    file.set_attr("data", data.name);
    file.write_tensor("labels", data.labels.to(torch::kInt64));
    for (const auto& [name, tensor] : logits) file.write_tensor(name, tensor);
  });
  std::cout << "logits written to " << path << std::endl;
}

// Top-1 of every bit-width of a once-for-all student (fake-quantized).
int eval_checkpoint(const po::variables_map& vm, const Common& common, int64_t batch) {
  const std::string path = get<std::string>(vm, "checkpoint");
  models::LoadedStudent student = models::load_student(path);
  const Dataset data = eval_data(vm, student.meta.input_shape);
  trainers::check_data_fits(student.meta, data);
  std::vector<int64_t> bits = student.config.bits;
  if (vm.count("bits")) bits = {get<int64_t>(vm, "bits")};
  const Normalization norm{student.meta.input_mean, student.meta.input_std};
  // The teacher: --teacher, else the one the checkpoint's recipe names, when it is still there.
  std::string teacher_path = vm.count("teacher") ? get<std::string>(vm, "teacher") : "";
  if (teacher_path.empty()) {
    const auto recipe = config_values(student.meta.recipe);
    if (recipe.count("teacher") && fs::exists(recipe.at("teacher"))) teacher_path = recipe.at("teacher");
  }
  std::cout << path << " (" << student.spec.arch << ", once-for-all " << models::bits_text(student.config.bits)
            << ") on " << data.name << ", " << data.size() << " images\n";
  Json json;
  json.add("command", "eval").add("checkpoint", path).add("arch", student.spec.arch).add("data", data.name);
  double teacher_top1 = -1;
  if (!teacher_path.empty()) {
    const trainers::LoadedModel teacher = trainers::load_model(teacher_path);
    teacher_top1 = trainers::evaluate(*teacher.model, data, teacher.norm(), batch).top1;
    json.add("teacher", teacher_path).add("teacher_top1", teacher_top1);
  }
  std::cout << "  bits   weights/acts   top-1     loss" << (teacher_top1 >= 0 ? "   vs fp32" : "") << "\n";
  if (teacher_top1 >= 0) {
    std::cout << "  fp32   teacher       " << std::setw(7) << percent(teacher_top1) << "       -   (" << teacher_path
              << ")\n";
  }
  std::vector<double> top1s;
  const std::string logits_path = vm.count("save-logits") ? get<std::string>(vm, "save-logits") : "";
  std::vector<std::pair<std::string, torch::Tensor>> logits;
  for (const int64_t b : bits) {
    models::set_bits(*student.model, b);
    const trainers::EvalResult r = trainers::evaluate(*student.model, data, norm, batch, !logits_path.empty());
    if (!logits_path.empty()) logits.emplace_back("logits_b" + std::to_string(b), r.logits);
    const size_t i = std::find(student.config.bits.begin(), student.config.bits.end(), b) - student.config.bits.begin();
    const std::string precision =
        "w" + std::to_string(student.config.wbits.at(i)) + "a" + std::to_string(student.config.abits.at(i));
    std::cout << "  " << std::setw(4) << b << "   " << std::left << std::setw(13) << precision << std::right
              << std::setw(7) << percent(r.top1) << "  " << std::fixed << std::setprecision(4) << r.loss;
    if (teacher_top1 >= 0) std::cout << "  " << std::showpos << std::setprecision(2) << std::setw(7) << 100 * (r.top1 - teacher_top1) << std::noshowpos;
    std::cout << "\n";
    json.add("top1_b" + std::to_string(b), r.top1);
    top1s.push_back(r.top1);
  }
  std::cout << std::flush;
  if (!logits_path.empty()) save_logits(logits_path, data, logits);
  if (common.json) std::cout << json.add("bits", bits).add("top1", top1s).str() << std::endl;
  return 0;
}

} // namespace

int eval(int argc, char** argv) {
  po::options_description desc("zsq eval options");
  desc.add_options()
      ("model", po::value<std::string>(), "model file: FP32 (zsq-model), fixed (zsq-fixed) or vertical-layered (zsq-vertical)")
      ("checkpoint", po::value<std::string>(), "once-for-all checkpoint or student (zsq-student): top-1 at every bit-width")
      ("teacher", po::value<std::string>(), "with --checkpoint: the FP32 teacher to compare with (default: the one the checkpoint's recipe names, if it exists)")
      ("bits", po::value<int64_t>(), "bit-width: required for vertical-layered files; with --checkpoint, only this one");
  add_data_options(desc, "fashion-mnist");
  desc.add_options()
      ("split", po::value<std::string>()->default_value("test"), "fashion-mnist split: test or train")
      ("batch-size", po::value<int64_t>()->default_value(256), "images per forward pass")
      ("limit", po::value<int64_t>()->default_value(0), "evaluate only the first N images (0: all)")
      ("save-logits", po::value<std::string>(), "write every image's logits and label to this HDF5 file (zsq-logits)");
  add_model_overrides(desc);
  add_common_options(desc);
  Common common;
  auto parsed = parse("eval", "zsq eval --model teacher.h5 | --checkpoint student.h5 [--data fashion-mnist]", desc,
                      argc, argv, &common);
  if (!parsed) return 0;
  const po::variables_map& vm = *parsed;
  if (vm.count("model") == vm.count("checkpoint")) throw UsageError("give exactly one of --model and --checkpoint");
  const int64_t batch = get<int64_t>(vm, "batch-size");
  if (batch < 1) throw UsageError("--batch-size must be >= 1");
  if (vm.count("bits") && get<int64_t>(vm, "bits") < 1) throw UsageError("--bits must be >= 1");
  parse_split(get<std::string>(vm, "split"));  // usage errors before any file is read
  if (get<int64_t>(vm, "limit") < 0) throw UsageError("--limit must be >= 0");
  if (vm.count("save-logits")) h5::check_writable(get<std::string>(vm, "save-logits"));
  if (vm.count("checkpoint")) return eval_checkpoint(vm, common, batch);

  const std::string path = get<std::string>(vm, "model");
  trainers::ModelOverrides overrides = read_overrides(vm);
  if (vm.count("bits")) overrides.bits = get<int64_t>(vm, "bits");
  const trainers::LoadedModel loaded = trainers::load_model(path, overrides);
  const Dataset data = eval_data(vm, loaded.meta.input_shape);
  trainers::check_data_fits(loaded.meta, data);
  const trainers::EvalResult r =
      trainers::evaluate(*loaded.model, data, loaded.norm(), batch, vm.count("save-logits") > 0);
  if (vm.count("save-logits")) save_logits(get<std::string>(vm, "save-logits"), data, {{"logits", r.logits}});
  const std::string precision = loaded.meta.precision.empty() ? "fp32" : loaded.meta.precision;
  std::cout << path << " (" << loaded.meta.arch << ", " << precision
            << (vm.count("bits") ? " at " + std::to_string(overrides.bits) + " bits" : "") << ") on " << data.name
            << ": top-1 " << percent(r.top1) << " (" << r.count << " images, loss " << std::fixed
            << std::setprecision(4) << r.loss << ", " << std::setprecision(1) << r.seconds << " s)" << std::endl;
  if (common.json) {
    std::cout << Json()
                     .add("command", "eval")
                     .add("model", path)
                     .add("arch", loaded.meta.arch)
                     .add("precision", precision)
                     .add("data", data.name)
                     .add("top1", r.top1)
                     .add("loss", r.loss)
                     .add("images", r.count)
                     .add("seconds", r.seconds)
                     .str()
              << std::endl;
  }
  return 0;
}

} // namespace zsq::cli
