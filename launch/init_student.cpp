// zsq init-student: the once-for-all student initialised and calibrated from a teacher.
#include "launch/commands.h"
#include "launch/options.h"

#include "framework/data.h"
#include "framework/model_file.h"
#include "framework/seed.h"
#include "models/extract.h"
#include "models/quant_factory.h"
#include "models/zoo.h"
#include "trainers/evaluate.h"
#include "trainers/quantize.h"  // bn_modes_text

#include <filesystem>
#include <iostream>

namespace zsq::cli {
namespace fs = std::filesystem;

int init_student(int argc, char** argv) {
  po::options_description desc("zsq init-student options");
  desc.add_options()("teacher", po::value<std::string>(), "FP32 teacher model file");
  add_student_options(desc);
  desc.add_options()
      ("calib-data", po::value<std::string>()->default_value("noise"),
       "images that set the activation steps: 'noise' (Gaussian, data-free), 'fashion-mnist' (training images) "
       "an HDF5 data set or an image folder")
      ("data-dir", po::value<std::string>()->default_value(kFashionMnistDir), "folder with the Fashion-MNIST IDX files")
      ("calib-count", po::value<int64_t>()->default_value(256), "calibration images")
      ("seed", po::value<uint64_t>()->default_value(0), "random seed (noise, choice of images)")
      ("out", po::value<std::string>()->default_value("student.h5"), "student file to write");
  add_bn_options(desc);
  add_quant_init_options(desc);
  add_model_overrides(desc);
  add_common_options(desc);
  Common common;
  auto parsed = parse("init-student", "zsq init-student --teacher teacher.h5 [--bits 2,3,4,8] [--out student.h5]",
                      desc, argc, argv, &common);
  if (!parsed) return 0;
  const po::variables_map& vm = *parsed;
  if (!vm.count("teacher")) throw UsageError("--teacher is required");
  models::StudentConfig config = read_student_config(vm);
  const models::QuantizerInit quant_init = read_quant_init(vm);
  const BnOptions bn = read_bn_options(vm, config);
  const int64_t count = get<int64_t>(vm, "calib-count");
  if (count < 1) throw UsageError("--calib-count must be >= 1");
  const std::string out = get<std::string>(vm, "out");
  check_output_folder(out);
  const std::string calib = get<std::string>(vm, "calib-data");

  const trainers::LoadedModel teacher = trainers::load_model(get<std::string>(vm, "teacher"), read_overrides(vm));
  const uint64_t seed = get<uint64_t>(vm, "seed");
  const at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::Tensor images;  // normalized
  const auto& shape = teacher.meta.input_shape;
  if (calib == "noise") {
    images = torch::randn({count, shape[0], shape[1], shape[2]}, gen);
  } else {
    Dataset data = load_dataset(calib, get<std::string>(vm, "data-dir"), Split::kTrain, shape);
    trainers::check_data_fits(teacher.meta, data);
    const torch::Tensor pick = torch::randperm(data.size(), gen, torch::kLong).narrow(0, 0, std::min(count, data.size()));
    images = normalize(data.images.index_select(0, pick), teacher.norm());
  }
  const models::ModelSpec spec = teacher.spec();
  set_input_range(vm, teacher.norm(), &config);
  models::Classifier student = [&] {
    ScopedSeed scoped(seed);
    return models::build(spec, models::QuantFactory(config));
  }();
  models::init_student(*student, *teacher.model, images, bn.bits, bn.modes, quant_init);
  ModelMeta meta = teacher.meta;
  meta.recipe = resolved_config(desc, vm);
  models::save_student(out, *student, config, meta);
  std::cout << "student " << spec.arch << " at bits " << models::bits_text(config.bits) << " from "
            << get<std::string>(vm, "teacher") << ", steps calibrated on " << images.size(0) << " "
            << (calib == "noise" ? "noise images (data-free)" : "images of " + calib)
            << (bn.bits.empty() ? ""
                                : ", BatchNorm re-estimated (" + trainers::bn_modes_text(bn.modes, bn.bits) + ") at bits " +
                                      models::bits_text(bn.bits))
            << "; wrote " << out << std::endl;
  if (common.json) {
    std::cout << Json().add("command", "init-student").add("out", out).add("bits", config.bits).str() << std::endl;
  }
  return 0;
}

// The synthesizer's options; `prefix` ("" for generate, "gen-" for quantize,
// whose own --lr, --ce-weight ... train the student) starts every name.

} // namespace zsq::cli
