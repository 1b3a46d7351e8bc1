// zsq generate: a pool of synthetic images from a teacher.
#include "launch/commands.h"
#include "launch/options.h"

#include "distributed/communicator.h"
#include "framework/h5.h"
#include "framework/png.h"
#include "generators/report.h"
#include "generators/synthesizer.h"
#include "models/extract.h"
#include "trainers/evaluate.h"

#include <chrono>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <set>

namespace zsq::cli {
namespace fs = std::filesystem;

namespace {

void add_generate_options(po::options_description& desc) {
  desc.add_options()
      ("teacher", po::value<std::string>(), "FP32 teacher model file")
      ("recipe", po::value<std::string>()->default_value("gdfq"), "noise, zeroq, dsg, gdfq, qimera, genie, intraq or adversarial (see the README)")
      ("count", po::value<int64_t>()->default_value(1024), "images to write")
      ("out", po::value<std::string>()->default_value("synth.h5"), "HDF5 data set to write")
      ("png", po::value<std::string>(), "also write a PNG grid of the first 64 images")
      ("batch-size", po::value<int64_t>()->default_value(64), "images per step and process");
  add_synth_options(desc, "");
  desc.add_options()
      ("seed", po::value<uint64_t>()->default_value(0), "random seed (each process adds an offset)")
      ("progress-every", po::value<int64_t>()->default_value(50), "steps between progress lines")
      ("collective-timeout", po::value<double>()->default_value(600), "under mpirun: seconds a collective may take");
  add_model_overrides(desc);
  add_common_options(desc);
}

// The pool file: pixels in [0, 1] units (unclipped), so that the data set normalizes back exactly.
void write_pool(const std::string& out, const torch::Tensor& all_x, const torch::Tensor& all_y,
                const trainers::LoadedModel& teacher, const std::string& teacher_path, const std::string& recipe_text,
                const generators::Recipe& recipe) {
  const int64_t channels = teacher.meta.input_shape[0];
  const torch::Tensor mean = torch::tensor(teacher.meta.input_mean, torch::kFloat64).to(torch::kFloat32).view({1, channels, 1, 1});
  const torch::Tensor std = torch::tensor(teacher.meta.input_std, torch::kFloat64).to(torch::kFloat32).view({1, channels, 1, 1});
  const torch::Tensor pixels = all_x * std + mean;
  h5::atomic_write(out, [&](h5::File& file) {
    file.write_tensor("images", pixels);
    file.write_tensor("labels", all_y.to(torch::kInt64));
    file.set_attr("format", std::string("zsq-synthetic"));
    file.set_attr("version", int64_t(1));
    file.set_attr("teacher", teacher_path);
    file.set_attr("arch", teacher.meta.arch);
    file.set_attr("recipe", recipe_text);
    file.set_attr("parts", recipe.describe());
  });
}

generators::PoolReport print_pool_report(const trainers::LoadedModel& teacher, const torch::Tensor& all_x,
                                         const torch::Tensor& all_y, const std::string& out, int64_t count,
                                         double seconds) {
  const generators::PoolReport report =
      generators::report_pool(*teacher.model, all_x, all_y, teacher.meta.num_classes);
  std::cout << "wrote " << out << ": " << count << " images in " << format_duration(seconds) << " ("
            << std::fixed << std::setprecision(1) << count / std::max(seconds, 1e-9) << " img/s)\n"
            << "pool report: teacher agrees with the labels on " << percent(report.agreement)
            << ", mean p(label) " << std::setprecision(3) << report.confidence << ", mean pairwise feature cosine "
            << report.feature_correlation << ", BN-statistics loss (gdfq) " << std::setprecision(4) << report.bns
            << "\n  labels per class: " << c10::IntArrayRef(report.label_histogram) << "\n  BN-statistics per layer:";
  for (double v : report.bns_per_layer) std::cout << " " << std::setprecision(3) << v;
  std::cout << std::endl;
  return report;
}

void print_json(const generators::PoolReport& report, const generators::Recipe& recipe, const std::string& out,
                int64_t count, double seconds) {
  std::cout << Json()
                   .add("command", "generate")
                   .add("recipe", recipe.name)
                   .add("out", out)
                   .add("images", count)
                   .add("seconds", seconds)
                   .add("images_per_second", count / std::max(seconds, 1e-9))
                   .add("agreement", report.agreement)
                   .add("confidence", report.confidence)
                   .add("feature_correlation", report.feature_correlation)
                   .add("bns", report.bns)
                   .add("label_histogram", report.label_histogram)
                   .str()
            << std::endl;
}

// `per_rank` images and labels from the synthesizer, batch by batch; `on_images` after each batch with the count so far.
std::pair<torch::Tensor, torch::Tensor> sample(generators::Synthesizer& synth, int64_t per_rank, int64_t batch_size,
                                               const std::function<void(const generators::StepReport&)>& progress,
                                               const std::function<void(int64_t)>& on_images) {
  std::vector<torch::Tensor> images, labels;
  int64_t made = 0;
  // A recipe that trains while it samples reports one step per batch: count them against all batches.
  const int64_t batches = (per_rank + batch_size - 1) / batch_size;
  const auto on_batch = [&](const generators::StepReport& r) {
    generators::StepReport shown = r;
    if (synth.trains_while_sampling()) shown.steps = batches;
    progress(shown);
  };
  while (made < per_rank) {
    auto [x, y] = synth.next_batch(on_batch);
    images.push_back(x);
    labels.push_back(y);
    made += x.size(0);
    on_images(made);
  }
  return {torch::cat(images).narrow(0, 0, per_rank).contiguous(), torch::cat(labels).narrow(0, 0, per_rank).contiguous()};
}

} // namespace

int generate(int argc, char** argv) {
  po::options_description desc("zsq generate options");
  add_generate_options(desc);
  Common common;
  auto parsed = parse("generate", "zsq generate --teacher teacher.h5 --recipe gdfq --count 1024 --out synth.h5 [--png grid.png]",
                      desc, argc, argv, &common);
  if (!parsed) return 0;
  const po::variables_map& vm = *parsed;
  if (!vm.count("teacher")) throw UsageError("--teacher is required");
  const int64_t count = get<int64_t>(vm, "count");
  if (count < 1) throw UsageError("--count must be >= 1");
  const int64_t every = get<int64_t>(vm, "progress-every");
  if (every < 1) throw UsageError("--progress-every must be >= 1");
  const std::string out = get<std::string>(vm, "out");
  check_output_folder(out);
  if (vm.count("png")) check_output_folder(get<std::string>(vm, "png"));
  const double timeout = get<double>(vm, "collective-timeout");
  if (timeout < 0) throw UsageError("--collective-timeout must be >= 0 seconds");
  generators::SynthesizerOptions so;
  so.recipe = get<std::string>(vm, "recipe");
  so.batch_size = get<int64_t>(vm, "batch-size");
  read_synth_options(vm, "", &so);
  so.seed = get<uint64_t>(vm, "seed");
  generators::Recipe recipe;
  try {
    recipe = generators::resolve_recipe(so);
  } catch (const c10::Error& e) {
    throw UsageError(e.what_without_backtrace());
  }

  auto comm = distributed::Communicator::create({timeout});
  const bool root = comm->rank() == 0;
  const trainers::LoadedModel teacher = trainers::load_model(get<std::string>(vm, "teacher"), read_overrides(vm));
  so.teacher_spec = teacher.spec();
  auto synth = generators::make_synthesizer(teacher.model, teacher.meta.input_shape, teacher.meta.num_classes, so, comm);
  if (root) {
    std::cout << "generate: " << recipe.describe() << "; " << count << " images of " << teacher.meta.arch << " "
              << c10::IntArrayRef(teacher.meta.input_shape)
              << (comm->size() > 1 ? ", " + std::to_string(comm->size()) + " processes" : std::string()) << std::endl;
  }
  const auto start = std::chrono::steady_clock::now();
  const auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  const auto progress = [&](const char* what) {
    return [&, what](const generators::StepReport& r) {
      if (!root || (r.step % every != 0 && r.step != r.steps)) return;
      std::cout << what << " step " << r.step << "/" << r.steps << "  loss " << std::fixed << std::setprecision(4)
                << r.total << "  bns " << r.bns << "  ce " << r.ce << "  prior " << r.prior;
      if (recipe.adversarial > 0) std::cout << "  adv " << r.adversarial << " ×" << r.adversarial_weight << "  student kd " << r.student_kd;
      std::cout << "  p(target) " << std::setprecision(3) << r.confidence << "  elapsed " << format_duration(elapsed())
                << std::endl;
    };
  };
  synth->fit(progress("generator"));
  const int64_t per_rank = (count + comm->size() - 1) / comm->size();
  const auto [mine_x, mine_y] = sample(*synth, per_rank, so.batch_size, progress("batch"), [&](int64_t made) {
    if (root && (recipe.variables == "pixels" || recipe.variables == "generator+latents")) {
      std::cout << "images " << std::min(made * comm->size(), count) << "/" << count << "  elapsed "
                << format_duration(elapsed()) << std::endl;
    }
  });
  const torch::Tensor all_x = comm->all_gather(mine_x).flatten(0, 1).narrow(0, 0, count);
  const torch::Tensor all_y = comm->all_gather(mine_y).flatten(0, 1).narrow(0, 0, count);
  const double seconds = elapsed();
  if (!root) return 0;

  write_pool(out, all_x, all_y, teacher, get<std::string>(vm, "teacher"), resolved_config(desc, vm), recipe);
  const generators::PoolReport report = print_pool_report(teacher, all_x, all_y, out, count, seconds);
  if (vm.count("png")) {
    write_png(get<std::string>(vm, "png"), image_grid(all_x));
    std::cout << "wrote " << get<std::string>(vm, "png") << std::endl;
  }
  if (common.json) print_json(report, recipe, out, count, seconds);
  return 0;
}

} // namespace zsq::cli
