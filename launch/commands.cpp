#include "launch/commands.h"

#include "framework/data.h"
#include "framework/h5.h"
#include "framework/logging.h"
#include "framework/model_file.h"
#include "launch/cli.h"
#include "models/zoo.h"
#include "trainers/evaluate.h"
#include "trainers/teacher.h"

#include <ATen/Parallel.h>

#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>

namespace zsq::cli {
namespace fs = std::filesystem;
namespace {

Split parse_split(const std::string& text) {
  if (text == "train") return Split::kTrain;
  if (text == "test") return Split::kTest;
  throw UsageError("--split must be 'train' or 'test', got '" + text + "'");
}

template <typename T>
T get(const po::variables_map& vm, const char* name) {
  return vm[name].as<T>();
}

std::string percent(double fraction) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(2) << 100.0 * fraction << "%";
  return out.str();
}

void add_data_options(po::options_description& desc, const char* default_data) {
  desc.add_options()
      ("data", po::value<std::string>()->default_value(default_data),
       "'fashion-mnist' or an HDF5 data set (images N×C×H×W uint8/float, labels N)")
      ("data-dir", po::value<std::string>()->default_value(kFashionMnistDir),
       "folder with the Fashion-MNIST IDX files (.gz or plain)");
}

// Flags that describe a model file lacking attributes (e.g. a torchvision export).
void add_model_overrides(po::options_description& desc) {
  desc.add_options()
      ("arch", po::value<std::string>(), "architecture, when the file does not say it")
      ("num-classes", po::value<int64_t>(), "number of classes, when the file does not say it")
      ("input-shape", po::value<std::string>(), "C,H,W of the input, when the file does not say it")
      ("input-mean", po::value<std::string>(), "per-channel mean of [0,1] pixels (overrides the file)")
      ("input-std", po::value<std::string>(), "per-channel std of [0,1] pixels (overrides the file)")
      ("width", po::value<int64_t>(), "base width of a CIFAR-style ResNet, when the file does not say it");
}

trainers::ModelOverrides read_overrides(const po::variables_map& vm) {
  trainers::ModelOverrides o;
  if (vm.count("arch")) o.arch = get<std::string>(vm, "arch");
  if (vm.count("num-classes")) {
    o.num_classes = get<int64_t>(vm, "num-classes");
    if (o.num_classes < 2) throw UsageError("--num-classes must be >= 2");
  }
  if (vm.count("input-shape")) {
    o.input_shape = parse_int_list(get<std::string>(vm, "input-shape"), "--input-shape");
    if (o.input_shape.size() != 3) throw UsageError("--input-shape expects C,H,W");
  }
  if (vm.count("input-mean")) o.input_mean = parse_double_list(get<std::string>(vm, "input-mean"), "--input-mean");
  if (vm.count("input-std")) o.input_std = parse_double_list(get<std::string>(vm, "input-std"), "--input-std");
  if (vm.count("width")) {
    o.width = get<int64_t>(vm, "width");
    if (o.width < 1) throw UsageError("--width must be >= 1");
  }
  return o;
}

} // namespace

int train_teacher(int argc, char** argv) {
  po::options_description desc("zsq train-teacher options");
  add_data_options(desc, "fashion-mnist");
  desc.add_options()
      ("test-data", po::value<std::string>(), "HDF5 test set (needed when --data is an HDF5 file)")
      ("arch", po::value<std::string>()->default_value("resnet20"),
       "resnet8, resnet20, resnet32, resnet56, resnet18, resnet50, mobilenet_v2")
      ("width", po::value<int64_t>()->default_value(16), "base width of CIFAR-style ResNets")
      ("num-classes", po::value<int64_t>()->default_value(0), "classes (0: from the data)")
      ("epochs", po::value<int64_t>()->default_value(15), "training epochs")
      ("batch-size", po::value<int64_t>()->default_value(128), "images per step")
      ("lr", po::value<double>()->default_value(0.1), "peak learning rate (cosine schedule to 0)")
      ("momentum", po::value<double>()->default_value(0.9), "SGD momentum")
      ("nesterov", po::value<bool>()->default_value(true), "Nesterov momentum")
      ("weight-decay", po::value<double>()->default_value(5e-4), "L2 weight decay (not on BN and biases)")
      ("label-smoothing", po::value<double>()->default_value(0.0), "label smoothing in [0, 1)")
      ("warmup-epochs", po::value<double>()->default_value(0.0), "linear learning-rate warm-up")
      ("crop-padding", po::value<int64_t>()->default_value(2), "random-crop padding in pixels (0: off)")
      ("flip", po::value<bool>()->default_value(true), "random horizontal flips")
      ("train-limit", po::value<int64_t>()->default_value(0), "use only the first N training images (0: all)")
      ("input-mean", po::value<std::string>(), "per-channel mean of [0,1] pixels (default: from the data)")
      ("input-std", po::value<std::string>(), "per-channel std of [0,1] pixels (default: from the data)")
      ("seed", po::value<uint64_t>()->default_value(0), "random seed (initialisation, shuffling, augmentation)")
      ("out", po::value<std::string>()->default_value("teacher.h5"), "model file to write");
  add_common_options(desc);
  Common common;
  auto parsed = parse("train-teacher", "zsq train-teacher [--arch resnet20] [--data fashion-mnist] [--out teacher.h5]",
                      desc, argc, argv, &common);
  if (!parsed) return 0;
  const po::variables_map& vm = *parsed;
  if (log_world_size() > 1) {
    throw UsageError("train-teacher runs on one process in this version; run it without mpirun");
  }

  const std::string data_spec = get<std::string>(vm, "data");
  const std::string data_dir = get<std::string>(vm, "data-dir");
  const Dataset train = load_dataset(data_spec, data_dir, Split::kTrain);  // rejects unknown names first
  if (data_spec != "fashion-mnist" && !vm.count("test-data")) {
    throw UsageError("--data is an HDF5 file; pass --test-data with the test set too");
  }
  const Dataset test = vm.count("test-data") ? load_dataset(get<std::string>(vm, "test-data"), data_dir, Split::kTest)
                                             : load_dataset(data_spec, data_dir, Split::kTest);

  trainers::TeacherOptions o;
  o.model.arch = get<std::string>(vm, "arch");
  o.model.width = get<int64_t>(vm, "width");
  const int64_t classes = get<int64_t>(vm, "num-classes");
  if (classes < 0 || classes == 1) throw UsageError("--num-classes must be 0 (from the data) or >= 2");
  o.model.num_classes = classes > 0 ? classes : std::max(train.num_classes(), test.num_classes());
  o.epochs = get<int64_t>(vm, "epochs");
  o.batch_size = get<int64_t>(vm, "batch-size");
  o.lr = get<double>(vm, "lr");
  o.momentum = get<double>(vm, "momentum");
  o.nesterov = get<bool>(vm, "nesterov");
  o.weight_decay = get<double>(vm, "weight-decay");
  o.label_smoothing = get<double>(vm, "label-smoothing");
  o.warmup_epochs = get<double>(vm, "warmup-epochs");
  o.crop_padding = get<int64_t>(vm, "crop-padding");
  o.horizontal_flip = get<bool>(vm, "flip");
  o.train_limit = get<int64_t>(vm, "train-limit");
  o.seed = get<uint64_t>(vm, "seed");
  o.out = get<std::string>(vm, "out");
  o.recipe = resolved_config(desc, vm);
  // Validate the architecture before any work.
  if (std::find(models::known_archs().begin(), models::known_archs().end(), o.model.arch) ==
      models::known_archs().end()) {
    models::build(o.model, models::Fp32Factory());  // throws the list of known names
  }

  Normalization norm;
  if (data_spec == "fashion-mnist") {
    norm = fashion_mnist_normalization();
  } else {
    const torch::Tensor x = normalize(train.images, {{0.0}, {1.0}});
    const torch::Tensor mean = x.mean({0, 2, 3}), std = x.std({0, 2, 3});
    norm.mean.assign(mean.data_ptr<float>(), mean.data_ptr<float>() + mean.numel());
    norm.std.assign(std.data_ptr<float>(), std.data_ptr<float>() + std.numel());
  }
  if (vm.count("input-mean")) norm.mean = parse_double_list(get<std::string>(vm, "input-mean"), "--input-mean");
  if (vm.count("input-std")) norm.std = parse_double_list(get<std::string>(vm, "input-std"), "--input-std");
  norm.check(train.image_shape()[0]);
  trainers::check_teacher_options(o, train, test);

  const int64_t used = o.train_limit > 0 ? std::min(o.train_limit, train.size()) : train.size();
  ZSQ_LOG_RANK0(kInfo) << "train-teacher: " << o.model.arch << " on " << train.name << " (" << used
                       << " images, shape " << c10::IntArrayRef(train.image_shape()) << ", " << o.model.num_classes
                       << " classes), " << o.epochs << " epochs, batch " << o.batch_size << ", lr " << o.lr
                       << ", " << at::get_num_threads() << " threads";
  const auto on_epoch = [&](const trainers::EpochReport& r) {
    std::ostringstream line;
    line << "epoch " << r.epoch << "/" << r.epochs << "  loss " << std::fixed << std::setprecision(4)
         << r.train_loss << "  train " << percent(r.train_acc);
    if (r.test_acc >= 0) line << "  test " << percent(r.test_acc);
    line << "  lr " << std::setprecision(4) << r.lr << "  " << std::setprecision(0) << r.images_per_second
         << " img/s  elapsed " << format_duration(r.elapsed_seconds) << "  ETA " << format_duration(r.eta_seconds);
    if (log_rank() == 0) std::cout << line.str() << std::endl;
  };
  const trainers::TeacherResult result = trainers::train_teacher(o, train, test, norm, on_epoch);
  std::cout << "test top-1 " << percent(result.test_acc) << " after " << o.epochs << " epochs in "
            << format_duration(result.seconds) << " (" << std::fixed << std::setprecision(0)
            << result.images_per_second << " img/s); wrote " << o.out << std::endl;
  if (common.json) {
    std::cout << Json()
                     .add("command", "train-teacher")
                     .add("arch", o.model.arch)
                     .add("top1", result.test_acc)
                     .add("test_loss", result.test_loss)
                     .add("epochs", o.epochs)
                     .add("seconds", result.seconds)
                     .add("images_per_second", result.images_per_second)
                     .add("parameters", result.parameters)
                     .add("out", o.out)
                     .str()
              << std::endl;
  }
  return 0;
}

int eval(int argc, char** argv) {
  po::options_description desc("zsq eval options");
  desc.add_options()("model", po::value<std::string>(), "model file (HDF5) to evaluate");
  add_data_options(desc, "fashion-mnist");
  desc.add_options()
      ("split", po::value<std::string>()->default_value("test"), "fashion-mnist split: test or train")
      ("batch-size", po::value<int64_t>()->default_value(256), "images per forward pass")
      ("limit", po::value<int64_t>()->default_value(0), "evaluate only the first N images (0: all)");
  add_model_overrides(desc);
  add_common_options(desc);
  Common common;
  auto parsed = parse("eval", "zsq eval --model teacher.h5 [--data fashion-mnist]", desc, argc, argv, &common);
  if (!parsed) return 0;
  const po::variables_map& vm = *parsed;
  if (!vm.count("model")) throw UsageError("--model is required");
  const int64_t batch = get<int64_t>(vm, "batch-size");
  if (batch < 1) throw UsageError("--batch-size must be >= 1");
  const int64_t limit = get<int64_t>(vm, "limit");
  if (limit < 0) throw UsageError("--limit must be >= 0");
  const Split split = parse_split(get<std::string>(vm, "split"));

  const std::string path = get<std::string>(vm, "model");
  const trainers::LoadedModel loaded = trainers::load_model(path, read_overrides(vm));
  Dataset data = load_dataset(get<std::string>(vm, "data"), get<std::string>(vm, "data-dir"), split);
  if (limit > 0 && limit < data.size()) {
    data.images = data.images.narrow(0, 0, limit);
    data.labels = data.labels.narrow(0, 0, limit);
  }
  trainers::check_data_fits(loaded.meta, data);
  const trainers::EvalResult r = trainers::evaluate(*loaded.model, data, loaded.norm(), batch);
  std::cout << path << " (" << loaded.meta.arch << ") on " << data.name << ": top-1 " << percent(r.top1) << " ("
            << r.count << " images, loss " << std::fixed << std::setprecision(4) << r.loss << ", "
            << std::setprecision(1) << r.seconds << " s)" << std::endl;
  if (common.json) {
    std::cout << Json()
                     .add("command", "eval")
                     .add("model", path)
                     .add("arch", loaded.meta.arch)
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

int inspect(int argc, char** argv) {
  po::options_description desc("zsq inspect options");
  desc.add_options()("file", po::value<std::string>(), "HDF5 file to describe (also the first positional argument)")(
      "all", po::bool_switch(), "list every tensor (default: the first 40)");
  add_common_options(desc);
  po::positional_options_description positional;
  positional.add("file", 1);
  Common common;
  auto parsed = parse("inspect", "zsq inspect FILE.h5", desc, argc, argv, &common, &positional);
  if (!parsed) return 0;
  const po::variables_map& vm = *parsed;
  if (!vm.count("file")) throw UsageError("give the file to inspect: zsq inspect FILE.h5");
  const std::string path = get<std::string>(vm, "file");
  const h5::File file = h5::File::open_read(path);
  const auto names = file.dataset_names();
  const auto attrs = file.attr_names();
  const std::string format = file.attr_string("format").value_or("");
  const bool is_dataset = file.has("images") && file.has("labels");
  const std::string kind = format == kModelFormat ? "model" : is_dataset ? "dataset" : format.empty() ? "tensors" : format;

  Json json;
  json.add("command", "inspect").add("file", path).add("kind", kind);
  std::cout << path << ": " << (format == kModelFormat ? "ZSQ model file" : is_dataset ? "data set" : "HDF5 file")
            << " (" << fs::file_size(path) << " bytes)\n";
  if (!attrs.empty()) std::cout << "attributes:\n";
  for (const auto& key : attrs) {
    std::string value = file.attr_as_text(key);
    const bool multi_line = value.find('\n') != std::string::npos;
    if (multi_line) {
      std::string indented;
      for (char c : value) indented += c == '\n' ? std::string("\n      ") : std::string(1, c);
      std::cout << "  " << key << ":\n      " << indented << "\n";
    } else {
      std::cout << "  " << key << " = " << value << "\n";
    }
    json.add("attr." + key, value);
  }
  int64_t elements = 0;
  const bool all = vm["all"].as<bool>();
  std::cout << "tensors (" << names.size() << "):\n";
  for (size_t i = 0; i < names.size(); ++i) {
    const auto shape = file.shape(names[i]);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    elements += n;
    if (all || i < 40) {
      std::cout << "  " << std::left << std::setw(44) << names[i] << " " << std::setw(8)
                << c10::toString(file.dtype(names[i])) << " " << c10::IntArrayRef(shape) << "\n";
    } else if (i == 40) {
      std::cout << "  ... " << names.size() - 40 << " more (--all lists them)\n";
    }
  }
  std::cout << "total elements: " << elements << "\n";
  json.add("tensors", static_cast<int64_t>(names.size())).add("elements", elements);
  if (is_dataset) {
    const Dataset data = load_h5_dataset(path);
    const torch::Tensor counts = torch::bincount(data.labels);
    std::vector<int64_t> histogram(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel());
    std::cout << "images: " << data.size() << " of shape " << c10::IntArrayRef(data.image_shape()) << " ("
              << c10::toString(data.images.scalar_type()) << ")\nlabel histogram: " << c10::IntArrayRef(histogram)
              << "\n";
    json.add("images", data.size()).add("label_histogram", histogram);
  }
  if (format == kModelFormat) {
    const ModelMeta meta = read_model_meta(file);
    json.add("arch", meta.arch).add("num_classes", meta.num_classes).add("input_shape", meta.input_shape);
  }
  std::cout << std::flush;
  if (common.json) std::cout << json.str() << std::endl;
  return 0;
}

} // namespace zsq::cli
