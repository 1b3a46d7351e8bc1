#include "launch/commands.h"

#include "distributed/communicator.h"
#include "framework/data.h"
#include "framework/h5.h"
#include "framework/logging.h"
#include "framework/model_file.h"
#include "framework/png.h"
#include "generators/report.h"
#include "generators/synthesizer.h"
#include "launch/cli.h"
#include "models/extract.h"
#include "models/quant_factory.h"
#include "models/zoo.h"
#include "trainers/evaluate.h"
#include "trainers/quantize.h"
#include "trainers/teacher.h"

#include <ATen/Parallel.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <set>

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

// "key = value" lines of a resolved config.
std::map<std::string, std::string> config_values(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const size_t eq = line.find(" = ");
    if (eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 3);
  }
  return out;
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
      ("test-data", po::value<std::string>(), "test set: HDF5 file or 'fashion-mnist' (needed when --data is an HDF5 file)")
      ("distill-from", po::value<std::string>(), "train by distillation from this FP32 model (e.g. on a synthetic pool); "
                                                "inputs use its normalization")
      ("temperature", po::value<double>()->default_value(4.0), "distillation temperature")
      ("mixup", po::value<double>()->default_value(0.0), "mixup: mix each batch with a permutation of itself, λ ~ Beta(α, α) (0: off); "
       "with --distill-from the teacher labels the mixed images")
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
      ("out", po::value<std::string>()->default_value("teacher.h5"), "model file to write")
      ("collective-timeout", po::value<double>()->default_value(600),
       "under mpirun: seconds a collective may take before the job is ended (0: no limit)")
      ("check-replicas", po::bool_switch(), "under mpirun: check after every epoch that all ranks hold the same model");
  add_common_options(desc);
  Common common;
  auto parsed = parse("train-teacher", "zsq train-teacher [--arch resnet20] [--data fashion-mnist] [--out teacher.h5]",
                      desc, argc, argv, &common);
  if (!parsed) return 0;
  const po::variables_map& vm = *parsed;
  const double timeout = get<double>(vm, "collective-timeout");
  if (timeout < 0) throw UsageError("--collective-timeout must be >= 0 seconds");

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
  o.mixup = get<double>(vm, "mixup");
  o.warmup_epochs = get<double>(vm, "warmup-epochs");
  o.crop_padding = get<int64_t>(vm, "crop-padding");
  o.horizontal_flip = get<bool>(vm, "flip");
  o.train_limit = get<int64_t>(vm, "train-limit");
  o.seed = get<uint64_t>(vm, "seed");
  o.out = get<std::string>(vm, "out");
  o.recipe = resolved_config(desc, vm);
  o.comm = distributed::Communicator::create({timeout});
  o.check_replicas = vm["check-replicas"].as<bool>();
  // Validate the architecture before any work.
  if (std::find(models::known_archs().begin(), models::known_archs().end(), o.model.arch) ==
      models::known_archs().end()) {
    models::build(o.model, models::Fp32Factory());  // throws the list of known names
  }

  Normalization norm;
  trainers::LoadedModel distill;
  if (vm.count("distill-from")) {
    distill = trainers::load_model(get<std::string>(vm, "distill-from"));
    o.distill_from = distill.model;
    o.temperature = get<double>(vm, "temperature");
    if (distill.meta.arch.empty() || distill.meta.input_shape != train.image_shape()) {
      throw UsageError("--distill-from model expects inputs " + c10::str(c10::IntArrayRef(distill.meta.input_shape)) +
                       ", the data has " + c10::str(c10::IntArrayRef(train.image_shape())));
    }
    norm = distill.norm();
    if (classes == 0) o.model.num_classes = distill.meta.num_classes;  // a pool may miss some classes
    if (o.model.num_classes != distill.meta.num_classes) {
      throw UsageError("--num-classes " + std::to_string(o.model.num_classes) + " differs from the --distill-from model's " +
                       std::to_string(distill.meta.num_classes));
    }
  } else if (data_spec == "fashion-mnist") {
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
                       << ", " << at::get_num_threads() << " threads"
                       << (o.comm->size() > 1 ? " per process, " + std::to_string(o.comm->size()) +
                                                     " processes (data parallel)"
                                              : std::string());
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
  if (o.comm->rank() != 0) return 0;
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

namespace {

// Loads --data (or its --split) and keeps the first --limit images.
Dataset eval_data(const po::variables_map& vm) {
  const int64_t limit = get<int64_t>(vm, "limit");
  if (limit < 0) throw UsageError("--limit must be >= 0");
  const Split split = parse_split(get<std::string>(vm, "split"));
  Dataset data = load_dataset(get<std::string>(vm, "data"), get<std::string>(vm, "data-dir"), split);
  if (limit > 0 && limit < data.size()) {
    data.images = data.images.narrow(0, 0, limit);
    data.labels = data.labels.narrow(0, 0, limit);
  }
  return data;
}

// Top-1 of every bit-width of a once-for-all student (fake-quantized).
int eval_checkpoint(const po::variables_map& vm, const Common& common, int64_t batch) {
  const std::string path = get<std::string>(vm, "checkpoint");
  models::LoadedStudent student = models::load_student(path);
  const Dataset data = eval_data(vm);
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
  for (const int64_t b : bits) {
    models::set_bits(*student.model, b);
    const trainers::EvalResult r = trainers::evaluate(*student.model, data, norm, batch);
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
      ("limit", po::value<int64_t>()->default_value(0), "evaluate only the first N images (0: all)");
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
  if (vm.count("checkpoint")) return eval_checkpoint(vm, common, batch);

  const std::string path = get<std::string>(vm, "model");
  trainers::ModelOverrides overrides = read_overrides(vm);
  if (vm.count("bits")) overrides.bits = get<int64_t>(vm, "bits");
  const trainers::LoadedModel loaded = trainers::load_model(path, overrides);
  const Dataset data = eval_data(vm);
  trainers::check_data_fits(loaded.meta, data);
  const trainers::EvalResult r = trainers::evaluate(*loaded.model, data, loaded.norm(), batch);
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

namespace {

void check_output_folder(const std::string& out) {
  const fs::path folder = fs::path(out).has_parent_path() ? fs::path(out).parent_path() : fs::path(".");
  if (!fs::is_directory(folder)) throw UsageError("output folder '" + folder.string() + "' does not exist");
}

void add_student_options(po::options_description& desc) {
  desc.add_options()
      ("bits", po::value<std::string>()->default_value("2,3,4,8"), "the model's bit-widths, comma-separated")
      ("wbits", po::value<std::string>(), "weight bits of the middle layers at each bit-width (default: --bits)")
      ("abits", po::value<std::string>(), "activation bits of the middle layers at each bit-width (default: --bits)")
      ("first-last-bits", po::value<std::string>()->default_value("8"),
       "weight and activation bits of the first and last layer: N, 'same' (the middle layers' bits at every "
       "bit-width: every layer quantized alike) or FIRST,LAST")
      ("top-bits", po::value<int64_t>()->default_value(8), "precision of the stored weight codes (>= every weight bit-width)")
      ("nesting", po::value<std::string>()->default_value("shift"),
       "how lower weight codes nest in higher ones: shift (bit-planes) or round");
}

models::StudentConfig read_student_config(const po::variables_map& vm) {
  models::StudentConfig c;
  c.bits = parse_int_list(get<std::string>(vm, "bits"), "--bits");
  if (vm.count("wbits")) c.wbits = parse_int_list(get<std::string>(vm, "wbits"), "--wbits");
  if (vm.count("abits")) c.abits = parse_int_list(get<std::string>(vm, "abits"), "--abits");
  c.top_bits = get<int64_t>(vm, "top-bits");
  const std::string nesting = get<std::string>(vm, "nesting");
  if (nesting != "shift" && nesting != "round") throw UsageError("--nesting must be 'shift' or 'round', got '" + nesting + "'");
  c.nesting = quant::parse_nesting(nesting);
  try {
    std::tie(c.first_bits, c.last_bits) = models::parse_first_last_bits(get<std::string>(vm, "first-last-bits"));
    c.check();
  } catch (const c10::Error& e) {
    throw UsageError(e.what_without_backtrace());
  }
  return c;
}

// How the quantizers start (init-student, quantize).
void add_quant_init_options(po::options_description& desc) {
  desc.add_options()
      ("input-range", po::value<std::string>()->default_value("pixel"),
       "the first layer's input steps: pixel (set from the known range of pixels in [0, 1] under the model's "
       "normalization; neither calibrated nor trained) or calibrated (calibrated and trained like every other step)")
      ("weight-init", po::value<std::string>()->default_value("lsq"),
       "weight steps: lsq (LSQ's 2*mean|w|/sqrt(Qp) at the lowest weight bit-width) or mse (per channel, the least "
       "squared error summed over the layer's weight bit-widths; better for one bit-width, worse for a shared lattice)");
}

models::QuantizerInit read_quant_init(const po::variables_map& vm) {
  const std::string weight = get<std::string>(vm, "weight-init");
  if (weight != "mse" && weight != "lsq") throw UsageError("--weight-init must be 'mse' or 'lsq', got '" + weight + "'");
  const std::string range = get<std::string>(vm, "input-range");
  if (range != "pixel" && range != "calibrated") {
    throw UsageError("--input-range must be 'pixel' or 'calibrated', got '" + range + "'");
  }
  models::QuantizerInit init;
  init.weight_init = quant::parse_weight_init(weight);
  return init;
}

// --input-range pixel: the student's input range from the teacher's normalization of pixels in [0, 1].
void set_input_range(const po::variables_map& vm, const Normalization& norm, models::StudentConfig* config) {
  if (get<std::string>(vm, "input-range") == "pixel") config->input_range = models::pixel_input_range(norm.mean, norm.std);
}

// BatchNorm re-estimation during calibration (init-student: none, shift; quantize: auto, absolute).
void add_bn_options(po::options_description& desc, const char* reestimate = "none", const char* mode = "shift") {
  desc.add_options()
      ("bn-reestimate", po::value<std::string>()->default_value(reestimate),
       "bit-widths whose BatchNorm running statistics calibration re-estimates on its images through the "
       "quantized network: none, all, auto (the bit-widths of 2 or fewer) or a comma-separated list (e.g. 2)")
      ("bn-mode", po::value<std::string>()->default_value(mode),
       "re-estimation: shift (the teacher's statistics moved by the quantized network's difference to the teacher "
       "on the images) or absolute (the images' own statistics)");
}

// A bit-width option: none, all (the model's), or a list of the model's bit-widths.
std::vector<int64_t> read_bit_list(const po::variables_map& vm, const std::string& name,
                                   const models::StudentConfig& config) {
  std::vector<int64_t> bits;
  const std::string text = get<std::string>(vm, name.c_str());
  if (text == "all") {
    bits = config.bits;
  } else if (text != "none") {
    bits = parse_int_list(text, "--" + name);
    for (const int64_t b : bits) {
      if (std::find(config.bits.begin(), config.bits.end(), b) == config.bits.end()) {
        throw UsageError("--" + name + " " + std::to_string(b) + ": not one of the model's bit-widths (" +
                         models::bits_text(config.bits) + ")");
      }
    }
  }
  std::sort(bits.begin(), bits.end());
  bits.erase(std::unique(bits.begin(), bits.end()), bits.end());
  return bits;
}

// `auto` of --bn-reestimate and --ce-weight: the model's bit-widths of 2 or fewer. Their quantized network's
// BatchNorm inputs are far from the teacher's statistics and its classes drift (measured on ResNet-20: 2-bit
// re-estimation 84.7 vs 73.4 % calibrated, 2-bit cross-entropy +1.1 points); at 3 bits and above both cost.
std::vector<int64_t> low_bits(const models::StudentConfig& config) {
  std::vector<int64_t> out;
  for (const int64_t b : config.bits) {
    if (b <= 2) out.push_back(b);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// ", cross-entropy ×w at bits ..." for the header line ("" when off everywhere); weights in ascending bit order.
std::string ce_text(const std::vector<double>& weights, std::vector<int64_t> bits) {
  std::sort(bits.begin(), bits.end());
  std::ostringstream out;
  for (size_t i = 0; i < bits.size(); ++i) {
    const double w = weights.empty() ? 0.0 : weights.size() == 1 ? weights.front() : weights[i];
    if (w > 0) out << (out.tellp() > 0 ? ", " : "") << bits[i] << " (×" << w << ")";
  }
  return out.tellp() > 0 ? ", cross-entropy to the labels at bits " + out.str() : "";
}

// A list of one value per bit-width in --bits order (or, with `one_for_all`, a single value for
// every bit-width), returned as the trainer takes it: in ascending bit order. Empty if not given.
std::vector<double> read_per_bit_values(const po::variables_map& vm, const std::string& name,
                                        const models::StudentConfig& config, bool one_for_all) {
  if (!vm.count(name)) return {};
  const std::vector<double> values = parse_double_list(get<std::string>(vm, name.c_str()), "--" + name);
  const std::vector<int64_t>& bits = config.bits;
  if (one_for_all && values.size() == 1) return values;
  if (values.size() != bits.size()) {
    throw UsageError("--" + name + " needs one value " + (one_for_all ? "or one " : "") + "per bit-width (" +
                     std::to_string(bits.size()) + "), got " + std::to_string(values.size()));
  }
  std::vector<size_t> order(bits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return bits[x] < bits[y]; });
  std::vector<double> out;
  for (const size_t i : order) out.push_back(values[i]);
  return out;
}

std::pair<std::vector<int64_t>, std::string> read_bn_options(const po::variables_map& vm,
                                                             const models::StudentConfig& config) {
  const std::vector<int64_t> bits = get<std::string>(vm, "bn-reestimate") == "auto" ? low_bits(config)
                                                                                  : read_bit_list(vm, "bn-reestimate", config);
  const std::string mode = get<std::string>(vm, "bn-mode");
  if (mode != "shift" && mode != "absolute") throw UsageError("--bn-mode must be 'shift' or 'absolute', got '" + mode + "'");
  return {bits, mode};
}

} // namespace

int init_student(int argc, char** argv) {
  po::options_description desc("zsq init-student options");
  desc.add_options()("teacher", po::value<std::string>(), "FP32 teacher model file");
  add_student_options(desc);
  desc.add_options()
      ("calib-data", po::value<std::string>()->default_value("noise"),
       "images that set the activation steps: 'noise' (Gaussian, data-free), 'fashion-mnist' (training images) "
       "or an HDF5 data set")
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
  const auto [bn_bits, bn_mode] = read_bn_options(vm, config);
  const int64_t count = get<int64_t>(vm, "calib-count");
  if (count < 1) throw UsageError("--calib-count must be >= 1");
  const std::string out = get<std::string>(vm, "out");
  check_output_folder(out);
  const std::string calib = get<std::string>(vm, "calib-data");

  const trainers::LoadedModel teacher = trainers::load_model(get<std::string>(vm, "teacher"), read_overrides(vm));
  torch::manual_seed(get<uint64_t>(vm, "seed"));
  torch::Tensor images;  // normalized
  const auto& shape = teacher.meta.input_shape;
  if (calib == "noise") {
    images = torch::randn({count, shape[0], shape[1], shape[2]});
  } else {
    Dataset data = load_dataset(calib, get<std::string>(vm, "data-dir"), Split::kTrain);
    trainers::check_data_fits(teacher.meta, data);
    const torch::Tensor pick = torch::randperm(data.size()).narrow(0, 0, std::min(count, data.size()));
    images = normalize(data.images.index_select(0, pick), teacher.norm());
  }
  models::ModelSpec spec{teacher.meta.arch, shape[0], teacher.meta.num_classes,
                         teacher.meta.width > 0 ? teacher.meta.width : 16};
  set_input_range(vm, teacher.norm(), &config);
  models::Classifier student = models::build(spec, models::QuantFactory(config));
  models::init_student(*student, *teacher.model, images, bn_bits, bn_mode == "shift", quant_init);
  ModelMeta meta = teacher.meta;
  meta.recipe = resolved_config(desc, vm);
  models::save_student(out, *student, config, meta);
  std::cout << "student " << spec.arch << " at bits " << models::bits_text(config.bits) << " from "
            << get<std::string>(vm, "teacher") << ", steps calibrated on " << images.size(0) << " "
            << (calib == "noise" ? "noise images (data-free)" : "images of " + calib)
            << (bn_bits.empty() ? "" : ", BatchNorm re-estimated (" + bn_mode + ") at bits " + models::bits_text(bn_bits))
            << "; wrote " << out << std::endl;
  if (common.json) {
    std::cout << Json().add("command", "init-student").add("out", out).add("bits", config.bits).str() << std::endl;
  }
  return 0;
}

// The synthesizer's options; `prefix` ("" for generate, "gen-" for quantize,
// whose own --lr, --ce-weight ... train the student) starts every name.
void add_synth_options(po::options_description& desc, const std::string& prefix) {
  // Boost copies the names; the temporaries live until the end of the statement.
  const auto key = [&](const char* n) { return prefix + n; };
  desc.add_options()
      (key("iterations").c_str(), po::value<int64_t>()->default_value(-1),
       "optimization steps (zeroq: per batch; gdfq: generator training); -1: the recipe's")
      (key("lr").c_str(), po::value<double>()->default_value(-1), "learning rate; -1: the recipe's")
      (key("bns").c_str(), po::value<std::string>()->default_value(""), "BN-statistics loss: zeroq, genie or gdfq (default: the recipe's)")
      (key("bns-weight").c_str(), po::value<double>()->default_value(-1), "weight of the BN-statistics loss; -1: the recipe's (zsq quantize: 1 for a generator trained beside the student)")
      (key("ce-weight").c_str(), po::value<double>()->default_value(-1), "weight of the cross-entropy to the target labels; -1: the recipe's")
      (key("prior-weight").c_str(), po::value<double>()->default_value(-1), "weight of the image prior; -1: the recipe's")
      (key("margin").c_str(), po::value<double>()->default_value(-1), "DSG slack on the BN statistics, in running stds (0: off; -1: the recipe's)")
      (key("layerwise").c_str(), po::value<std::string>()->default_value(""), "DSG layerwise sample enhancement: on or off (default: the recipe's)")
      (key("lor").c_str(), po::value<std::string>()->default_value(""), "IntraQ local object reinforcement: on or off (default: the recipe's)")
      (key("soft-target").c_str(), po::value<double>()->default_value(-1), "IntraQ soft inception target floor in [0, 1) (0: off; -1: the recipe's)")
      (key("margin-low").c_str(), po::value<double>()->default_value(-2), "IntraQ marginal distance, lower bound (-1: off; -2: the recipe's)")
      (key("margin-up").c_str(), po::value<double>()->default_value(-2), "IntraQ marginal distance, upper bound (-2: the recipe's)")
      (key("superpose-prob").c_str(), po::value<double>()->default_value(-1), "Qimera: chance per generator step of superposed samples (-1: the recipe's)")
      (key("superpose-k").c_str(), po::value<int64_t>()->default_value(0), "Qimera: classes mixed per superposed sample (0: the recipe's)")
      (key("mapping").c_str(), po::value<std::string>()->default_value(""), "Qimera's disentanglement mapping layer: on or off (default: the recipe's)")
      (key("adversarial").c_str(), po::value<double>()->default_value(-1), "weight of the adversarial term (0: off; -1: the recipe's); zsq generate: against a proxy student, ramped up over the warm-up; zsq quantize online: against the student at its lowest bit-width")
      (key("student-steps").c_str(), po::value<int64_t>()->default_value(0), "adversarial: proxy-student steps per generator step (0: the recipe's)")
      (key("stride").c_str(), po::value<int64_t>()->default_value(0), "adversarial: generator steps per written batch (0: the recipe's)")
      (key("latent-dim").c_str(), po::value<int64_t>()->default_value(100), "generator noise size");
}

void read_synth_options(const po::variables_map& vm, const std::string& prefix, generators::SynthesizerOptions* out) {
  generators::SynthesizerOptions& so = *out;
  const auto flag = [&](const char* n) { return prefix + n; };
  so.iterations = get<int64_t>(vm, flag("iterations").c_str());
  so.lr = get<double>(vm, flag("lr").c_str());
  so.bns = get<std::string>(vm, flag("bns").c_str());
  so.bns_weight = get<double>(vm, flag("bns-weight").c_str());
  so.ce_weight = get<double>(vm, flag("ce-weight").c_str());
  so.prior_weight = get<double>(vm, flag("prior-weight").c_str());
  so.margin = get<double>(vm, flag("margin").c_str());
  so.latent_dim = get<int64_t>(vm, flag("latent-dim").c_str());
  so.adversarial = get<double>(vm, flag("adversarial").c_str());
  so.student_steps = get<int64_t>(vm, flag("student-steps").c_str());
  if (so.student_steps < 0) throw UsageError("--" + flag("student-steps") + " must be >= 1");
  so.stride = get<int64_t>(vm, flag("stride").c_str());
  if (so.stride < 0) throw UsageError("--" + flag("stride") + " must be >= 1");
  const std::string lor = get<std::string>(vm, flag("lor").c_str());
  if (lor != "" && lor != "on" && lor != "off") throw UsageError("--" + flag("lor") + " must be 'on' or 'off', got '" + lor + "'");
  so.lor = lor.empty() ? -1 : lor == "on" ? 1 : 0;
  so.soft_target = get<double>(vm, flag("soft-target").c_str());
  so.superpose_prob = get<double>(vm, flag("superpose-prob").c_str());
  so.superpose_k = get<int64_t>(vm, flag("superpose-k").c_str());
  const std::string mapping = get<std::string>(vm, flag("mapping").c_str());
  if (mapping != "" && mapping != "on" && mapping != "off") {
    throw UsageError("--" + flag("mapping") + " must be 'on' or 'off', got '" + mapping + "'");
  }
  so.mapping = mapping.empty() ? -1 : mapping == "on" ? 1 : 0;
  const std::string layerwise = get<std::string>(vm, flag("layerwise").c_str());
  if (layerwise != "" && layerwise != "on" && layerwise != "off") {
    throw UsageError("--" + flag("layerwise") + " must be 'on' or 'off', got '" + layerwise + "'");
  }
  so.layerwise = layerwise.empty() ? -1 : layerwise == "on" ? 1 : 0;
  so.margin_low = get<double>(vm, flag("margin-low").c_str());
  so.margin_up = get<double>(vm, flag("margin-up").c_str());
}

int generate(int argc, char** argv) {
  po::options_description desc("zsq generate options");
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
  so.teacher_spec = {teacher.meta.arch, teacher.meta.input_shape[0], teacher.meta.num_classes,
                     teacher.meta.width > 0 ? teacher.meta.width : 16};
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
  std::vector<torch::Tensor> images, labels;
  int64_t made = 0;
  // A recipe that trains while it samples reports one step per batch: count them against all batches.
  const int64_t batches = (per_rank + so.batch_size - 1) / so.batch_size;
  const auto batch_progress = progress("batch");
  const auto on_batch = [&](const generators::StepReport& r) {
    generators::StepReport shown = r;
    if (synth->trains_while_sampling()) shown.steps = batches;
    batch_progress(shown);
  };
  while (made < per_rank) {
    auto [x, y] = synth->next_batch(on_batch);
    images.push_back(x);
    labels.push_back(y);
    made += x.size(0);
    if (root && (recipe.variables == "pixels" || recipe.variables == "generator+latents")) {
      std::cout << "images " << std::min(made * comm->size(), count) << "/" << count << "  elapsed "
                << format_duration(elapsed()) << std::endl;
    }
  }
  const torch::Tensor mine_x = torch::cat(images).narrow(0, 0, per_rank).contiguous();
  const torch::Tensor mine_y = torch::cat(labels).narrow(0, 0, per_rank).contiguous();
  const torch::Tensor all_x = comm->all_gather(mine_x).flatten(0, 1).narrow(0, 0, count);
  const torch::Tensor all_y = comm->all_gather(mine_y).flatten(0, 1).narrow(0, 0, count);
  const double seconds = elapsed();
  if (!root) return 0;

  // Pixels in [0, 1] units (unclipped), so that the data set normalizes back exactly.
  const int64_t channels = teacher.meta.input_shape[0];
  const torch::Tensor mean = torch::tensor(teacher.meta.input_mean, torch::kFloat64).to(torch::kFloat32).view({1, channels, 1, 1});
  const torch::Tensor std = torch::tensor(teacher.meta.input_std, torch::kFloat64).to(torch::kFloat32).view({1, channels, 1, 1});
  const torch::Tensor pixels = all_x * std + mean;
  h5::atomic_write(out, [&](h5::File& file) {
    file.write_tensor("images", pixels);
    file.write_tensor("labels", all_y.to(torch::kInt64));
    file.set_attr("format", std::string("zsq-synthetic"));
    file.set_attr("version", int64_t(1));
    file.set_attr("teacher", get<std::string>(vm, "teacher"));
    file.set_attr("arch", teacher.meta.arch);
    file.set_attr("recipe", resolved_config(desc, vm));
    file.set_attr("parts", recipe.describe());
  });
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
  if (vm.count("png")) {
    write_png(get<std::string>(vm, "png"), image_grid(all_x));
    std::cout << "wrote " << get<std::string>(vm, "png") << std::endl;
  }
  if (common.json) {
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
  return 0;
}

namespace {

// A resumed run must train with the recipe it started with; only options that
// do not change the numbers may differ.
// An option the checkpoint does not know (added to zsq after it was written) matches when it is
// left at its default.
void check_same_recipe(const std::string& checkpoint, const std::string& stored, const std::string& now,
                       const po::variables_map& vm) {
  static const std::set<std::string> free = {"out", "resume", "log-every", "eval-data", "data-dir", "threads",
                                             "log-level", "json", "config", "collective-timeout",
                                             "checkpoint-every", "stop-after"};
  const auto a = config_values(stored), b = config_values(now);
  std::vector<std::string> diffs;
  for (const auto& [key, value] : b) {
    if (free.count(key)) continue;
    const auto it = a.find(key);
    if (it == a.end() && vm.count(key) && vm[key].defaulted()) continue;
    const std::string was = it == a.end() ? "(unset)" : it->second;
    if (was != value) diffs.push_back("--" + key + " " + value + " (the checkpoint has " + was + ")");
  }
  for (const auto& [key, value] : a) {
    if (!free.count(key) && !b.count(key)) diffs.push_back("--" + key + " unset (the checkpoint has " + value + ")");
  }
  if (diffs.empty()) return;
  std::string msg = "'" + checkpoint + "' was trained with another recipe; resume with the same options:";
  for (const auto& d : diffs) msg += "\n  " + d;
  throw UsageError(msg);
}

// Keeps the metrics lines of steps <= `step` (a killed run may have logged further).
void truncate_metrics(const fs::path& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    const size_t at = line.find("\"step\":");
    if (at == std::string::npos) continue;
    if (std::stoll(line.substr(at + 7)) <= step) kept += line + "\n";
  }
  in.close();
  std::ofstream(path, std::ios::trunc) << kept;
}

} // namespace

int quantize(int argc, char** argv) {
  po::options_description desc("zsq quantize options");
  desc.add_options()
      ("teacher", po::value<std::string>(), "FP32 teacher model file")
      ("pool", po::value<std::string>(),
       "train on this fixed set of images instead of generating online: an HDF5 data set (e.g. from zsq generate), "
       "or 'fashion-mnist' for the real-data baseline")
      ("recipe", po::value<std::string>()->default_value("gdfq"),
       "online generation (without --pool): gdfq or qimera alternate a generator with the student; "
       "noise, zeroq, dsg, genie, intraq make fresh batches");
  add_student_options(desc);
  desc.add_options()
      ("steps", po::value<int64_t>()->default_value(400), "student optimizer steps")
      ("batch-size", po::value<int64_t>()->default_value(64), "images per step, over all processes")
      ("lr", po::value<double>()->default_value(1e-4), "peak learning rate (SGD, Nesterov momentum 0.9, cosine to 0)")
      ("weight-decay", po::value<double>()->default_value(0.0), "weight decay on the latent weights")
      ("weight-step-lr", po::value<double>()->default_value(1.0),
       "learning-rate multiplier of the shared weight steps (0: frozen at their initial values, the latent weights "
       "still train)")
      ("temperature", po::value<double>()->default_value(4.0), "distillation temperature")
      ("ce-weight", po::value<std::string>()->default_value("auto"),
       "weight of the cross-entropy to the images' labels: one value, one per bit-width (e.g. 1,0,0,0), or auto "
       "(1 at the bit-widths of 2 or fewer, 0 at the others)")
      ("feature-weight", po::value<double>()->default_value(0.0),
       "weight of the squared error of the penultimate features to the teacher's")
      ("weighting", po::value<std::string>()->default_value("min-norm"),
       "bit-widths per step: sum (all, weighted by --bit-weights), sandwich (highest, lowest, one random middle), "
       "min-norm (MGDA combination of the per-bit gradients), normalized (all, each bit-width's gradient on the "
       "shared weights rescaled to their mean norm)")
      ("bit-weights", po::value<std::string>(), "loss weight per bit-width, comma-separated (default: all 1)")
      ("recursive", po::value<std::string>()->default_value("off"),
       "on: each bit-width learns from the next higher one instead of the teacher")
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
      ("bn-train", po::value<std::string>()->default_value("none"),
       "bit-widths whose BatchNorms use batch statistics while training and update their running statistics: "
       "none, all, or a comma-separated list");
  add_bn_options(desc, "auto", "absolute");
  add_quant_init_options(desc);
  add_synth_options(desc, "gen-");
  desc.add_options()
      ("checkpoint-every", po::value<int64_t>()->default_value(100), "steps between checkpoints (0: only at the end)")
      ("stop-after", po::value<int64_t>()->default_value(0),
       "end after this many steps with a checkpoint (0: run to the end); --resume continues")
      ("resume", po::bool_switch(), "continue the run in --out from its checkpoint")
      ("eval-data", po::value<std::string>()->default_value("fashion-mnist"),
       "labelled test set for the final table ('fashion-mnist', an HDF5 file, or 'none')")
      ("data-dir", po::value<std::string>()->default_value(kFashionMnistDir), "folder with the Fashion-MNIST IDX files")
      ("log-every", po::value<int64_t>()->default_value(50), "steps between progress lines")
      ("collective-timeout", po::value<double>()->default_value(600), "under mpirun: seconds a collective may take")
      ("seed", po::value<uint64_t>()->default_value(0), "random seed")
      ("out", po::value<std::string>()->default_value("run"), "run folder (created): checkpoint.h5, metrics.jsonl");
  add_common_options(desc);
  Common common;
  auto parsed = parse("quantize", "zsq quantize --teacher teacher.h5 [--pool synth.h5 | --recipe gdfq] [--bits 2,3,4,8] [--out run/]",
                      desc, argc, argv, &common);
  if (!parsed) return 0;
  const po::variables_map& vm = *parsed;
  if (!vm.count("teacher")) throw UsageError("--teacher is required");
  models::StudentConfig config = read_student_config(vm);
  trainers::QuantizeOptions q;
  q.quant_init = read_quant_init(vm);
  q.steps = get<int64_t>(vm, "steps");
  q.batch_size = get<int64_t>(vm, "batch-size");
  q.lr = get<double>(vm, "lr");
  q.weight_decay = get<double>(vm, "weight-decay");
  q.weight_step_lr = get<double>(vm, "weight-step-lr");
  if (!(q.weight_step_lr >= 0) || !std::isfinite(q.weight_step_lr)) {
    throw UsageError("--weight-step-lr must be a finite number >= 0");
  }
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
  for (const double w : q.ce_weight) {
    if (w < 0) throw UsageError("--ce-weight must be >= 0");
  }
  if (q.feature_weight < 0) throw UsageError("--feature-weight must be >= 0");
  q.weighting = get<std::string>(vm, "weighting");
  q.calib_count = get<int64_t>(vm, "calib-count");
  q.checkpoint_every = get<int64_t>(vm, "checkpoint-every");
  q.stop_after = get<int64_t>(vm, "stop-after");
  q.resume = vm["resume"].as<bool>();
  q.seed = get<uint64_t>(vm, "seed");
  const std::string recursive = get<std::string>(vm, "recursive");
  if (recursive != "on" && recursive != "off") throw UsageError("--recursive must be 'on' or 'off', got '" + recursive + "'");
  q.recursive = recursive == "on";
  const std::string clamp = get<std::string>(vm, "clamp-pixels");
  if (clamp != "on" && clamp != "off") throw UsageError("--clamp-pixels must be 'on' or 'off', got '" + clamp + "'");
  q.clamp_pixels = clamp == "on";
  const std::string bn_end = get<std::string>(vm, "bn-reestimate-end");
  if (bn_end != "on" && bn_end != "off") throw UsageError("--bn-reestimate-end must be 'on' or 'off', got '" + bn_end + "'");
  q.bn_reestimate_end = bn_end == "on";
  q.train = get<std::string>(vm, "train");
  if (q.train != "all" && q.train != "per-bit") throw UsageError("--train must be 'all' or 'per-bit', got '" + q.train + "'");
  q.weights = read_per_bit_values(vm, "bit-weights", config, /*one_for_all=*/false);
  std::tie(q.bn_bits, q.bn_mode) = read_bn_options(vm, config);
  if (q.bn_reestimate_end && q.bn_bits.empty()) {
    throw UsageError("--bn-reestimate-end on needs the bit-widths to re-estimate (--bn-reestimate)");
  }
  q.bn_train = read_bit_list(vm, "bn-train", config);
  const int64_t every = get<int64_t>(vm, "log-every");
  if (q.steps < 1) throw UsageError("--steps must be >= 1");
  if (q.batch_size < 1) throw UsageError("--batch-size must be >= 1");
  if (q.calib_count < 1) throw UsageError("--calib-count must be >= 1");
  if (every < 1) throw UsageError("--log-every must be >= 1");
  if (q.checkpoint_every < 0) throw UsageError("--checkpoint-every must be >= 0");
  if (q.stop_after < 0) throw UsageError("--stop-after must be >= 0");
  if (std::find(trainers::known_weightings().begin(), trainers::known_weightings().end(), q.weighting) ==
      trainers::known_weightings().end()) {
    throw UsageError("unknown --weighting '" + q.weighting + "' (sum, sandwich, min-norm)");
  }
  if (q.weighting == "min-norm" && !q.weights.empty()) throw UsageError("--bit-weights has no meaning with --weighting min-norm");
  const double timeout = get<double>(vm, "collective-timeout");
  if (timeout < 0) throw UsageError("--collective-timeout must be >= 0 seconds");
  const bool online = !vm.count("pool");
  generators::SynthesizerOptions so;
  so.recipe = get<std::string>(vm, "recipe");
  read_synth_options(vm, "gen-", &so);
  so.seed = q.seed;
  so.external_adversary = true;  // online, --gen-adversarial works against the student being quantized
  q.generator_warmup = get<int64_t>(vm, "generator-warmup");
  if (q.generator_warmup < 0) throw UsageError("--generator-warmup must be >= 0");
  if (online) {
    try {
      const generators::Recipe recipe = generators::resolve_recipe(so);
      if (recipe.variables != "generator") q.generator_warmup = 0;  // only a trained generator warms up
      // A generator trained beside the student weighs the BN-statistics loss 1 unless told (GDFQ: 0.1;
      // measured on ResNet-20, 2-bit: 79.8 vs 74.7 %, and on the demo teacher with the rest of the recipe).
      if (recipe.variables == "generator" && so.bns_weight < 0) so.bns_weight = 1;
    } catch (const c10::Error& e) {
      throw UsageError(e.what_without_backtrace());
    }
  } else {
    q.generator_warmup = 0;
  }

  const fs::path run = get<std::string>(vm, "out");
  check_output_folder(run.string());  // its parent must exist; the run folder itself is created
  const fs::path checkpoint = run / "checkpoint.h5";
  q.checkpoint = checkpoint.string();
  const std::string recipe_text = resolved_config(desc, vm);
  int64_t resume_step = 0;
  bool calibrated_input = false;
  if (q.resume) {
    if (!fs::exists(checkpoint)) {
      throw UsageError("--resume: there is no '" + checkpoint.string() + "' to continue; start the run without --resume");
    }
    const h5::File file = h5::File::open_read(checkpoint.string());
    resume_step = trainers::read_checkpoint_info(file).step;  // also: it is a checkpoint at all
    const std::string stored = read_meta_attrs(file).recipe;
    check_same_recipe(checkpoint.string(), stored, recipe_text, vm);
    // A checkpoint from before these options trained with a calibrated input step on unclamped images.
    const auto values = config_values(stored);
    if (!values.count("input-range")) calibrated_input = true;
    if (!values.count("clamp-pixels")) q.clamp_pixels = false;
  } else if (fs::exists(checkpoint)) {
    throw UsageError("'" + checkpoint.string() + "' exists; add --resume to continue that run, or choose another --out");
  }

  auto comm = distributed::Communicator::create({timeout});
  const bool root = comm->rank() == 0;
  if (root) {
    fs::create_directories(run);
    // Temporary files of a write that a killed run left behind.
    for (const auto& entry : fs::directory_iterator(run)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind(".checkpoint.h5.tmp.", 0) == 0) fs::remove(entry.path());
    }
  }
  const trainers::LoadedModel teacher = trainers::load_model(get<std::string>(vm, "teacher"));
  if (!calibrated_input) set_input_range(vm, teacher.norm(), &config);
  const auto& shape = teacher.meta.input_shape;
  models::ModelSpec spec{teacher.meta.arch, shape[0], teacher.meta.num_classes,
                         teacher.meta.width > 0 ? teacher.meta.width : 16};
  std::optional<Dataset> pool;
  std::unique_ptr<generators::Synthesizer> synth;
  if (online) {
    if (q.batch_size % comm->size() != 0) {
      throw UsageError("--batch-size " + std::to_string(q.batch_size) + " must be a multiple of the number of processes (" +
                       std::to_string(comm->size()) + ")");
    }
    so.batch_size = q.batch_size / comm->size();
    so.teacher_spec = spec;
    // The synthesizer gets its own copy of the teacher: its BN taps must not disturb the distillation.
    models::Classifier copy = models::build(spec, models::Fp32Factory());
    load_state(h5::File::open_read(get<std::string>(vm, "teacher")), *copy);
    synth = generators::make_synthesizer(copy, shape, teacher.meta.num_classes, so, comm);
  } else {
    const std::string spec_text = get<std::string>(vm, "pool");
    pool = load_dataset(spec_text, spec_text == "fashion-mnist" ? get<std::string>(vm, "data-dir") : "", Split::kTrain);
    trainers::check_data_fits(teacher.meta, *pool);
  }
  const std::string eval_spec = get<std::string>(vm, "eval-data");
  models::Classifier student = models::build(spec, models::QuantFactory(config));

  ModelMeta meta = teacher.meta;
  meta.recipe = recipe_text;
  const trainers::CheckpointStudent write_student = [&](h5::File& file) {
    models::write_student(file, *student, config, meta);
  };

  if (root) {
    std::cout << "quantize: " << spec.arch << " at bits " << models::bits_text(config.bits) << " on "
              << (online ? "images generated online (" + synth->recipe().describe() + ")"
                         : pool->name + " (" + std::to_string(pool->size()) + " images)")
              << ", " << q.steps << " steps, batch " << q.batch_size << ", lr " << q.lr << ", T " << q.temperature
              << ", weighting " << q.weighting << (q.recursive ? " (recursive)" : "")
              << (q.train == "per-bit" ? ", shared weights frozen (per-bit training)" : "")
              << (q.bn_bits.empty() ? ""
                                    : ", BatchNorm re-estimated (" + q.bn_mode + ") at bits " + models::bits_text(q.bn_bits) +
                                          (q.bn_reestimate_end ? " at the start and the end" : ""))
              << (q.bn_train.empty() ? "" : ", BatchNorm on batch statistics at bits " + models::bits_text(q.bn_train))
              << ce_text(q.ce_weight, config.bits)
              << (comm->size() > 1 ? ", " + std::to_string(comm->size()) + " processes" : std::string()) << std::endl;
  }
  const fs::path metrics_path = run / "metrics.jsonl";
  if (root && q.resume) truncate_metrics(metrics_path, resume_step);
  std::ofstream metrics;
  if (root) metrics.open(metrics_path, q.resume ? std::ios::app : std::ios::trunc);
  trainers::QuantizeData data;
  data.pool = pool ? &*pool : nullptr;
  data.norm = teacher.norm();
  data.synthesizer = synth.get();
  const auto on_step = [&](const trainers::QuantizeStep& r) {
    if (!root) return;
    if (r.step == 0) {  // generator warm-up
      if (r.warmup_step % every == 0 || r.warmup_step == r.warmup_steps) {
        std::cout << "generator warm-up " << r.warmup_step << "/" << r.warmup_steps << "  loss " << std::fixed
                  << std::setprecision(4) << r.generator_loss << std::endl;
      }
      return;
    }
    Json line;
    line.add("step", r.step).add("lr", r.lr).add("bits", r.bits).add("loss", r.losses);
    if (!r.alphas.empty()) line.add("alpha", r.alphas);
    if (!r.grad_norms.empty()) line.add("grad_norm", r.grad_norms);
    if (r.generator_loss >= 0) line.add("generator_loss", r.generator_loss);
    if (r.generator_adversarial != 0) line.add("generator_adversarial", r.generator_adversarial);
    line.add("images_per_second", r.images_per_second);
    metrics << line.str() << "\n";
    if (r.checkpointed) metrics.flush();
    if (r.step % every != 0 && r.step != r.steps && !(r.checkpointed && q.stop_after > 0)) return;
    std::cout << "step " << r.step << "/" << r.steps << "  loss";
    for (size_t i = 0; i < r.losses.size(); ++i) {
      std::cout << " b" << r.bits[i] << " " << std::fixed << std::setprecision(4) << r.losses[i];
    }
    if (r.generator_loss >= 0) std::cout << "  generator " << std::setprecision(4) << r.generator_loss;
    if (r.generator_adversarial != 0) std::cout << " (adversarial " << std::setprecision(4) << r.generator_adversarial << ")";
    std::cout << "  lr " << std::defaultfloat << std::setprecision(3) << r.lr << "  " << std::fixed << std::setprecision(0) << r.images_per_second
              << " img/s  elapsed " << format_duration(r.elapsed_seconds) << "  ETA " << format_duration(r.eta_seconds)
              << std::endl;
  };
  const auto start = std::chrono::steady_clock::now();
  trainers::QuantizeResult result;
  try {
    result = trainers::quantize(*student, *teacher.model, data, q, write_student, comm, on_step);
  } catch (...) {
    if (metrics.is_open()) metrics.flush();
    throw;
  }
  metrics.close();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!root) return 0;
  if (result.resumed_from >= 0) std::cout << "resumed from step " << result.resumed_from << std::endl;
  if (result.changed_codes >= 0) {
    std::cout << "top-precision (" << config.top_bits << "-bit) weight codes changed by training: " << std::fixed
              << std::setprecision(2) << 100 * result.changed_codes << " %" << std::defaultfloat << std::endl;
  }
  std::cout << "wrote " << checkpoint.string() << " (step " << result.steps_done << "/" << q.steps << ") and "
            << metrics_path.string() << " in " << format_duration(seconds) << std::endl;
  Json json;
  json.add("command", "quantize").add("checkpoint", checkpoint.string()).add("bits", config.bits)
      .add("steps_done", result.steps_done).add("complete", result.complete).add("seconds", seconds);
  if (result.changed_codes >= 0) json.add("changed_codes", result.changed_codes);
  if (!result.complete) {
    std::cout << "stopped after " << result.steps_done << " of " << q.steps << " steps; continue with the same command and --resume"
              << std::endl;
  } else if (eval_spec != "none") {
    const Dataset test = load_dataset(eval_spec, get<std::string>(vm, "data-dir"), Split::kTest);
    trainers::check_data_fits(teacher.meta, test);
    const trainers::EvalResult t = trainers::evaluate(*teacher.model, test, teacher.norm());
    std::cout << "top-1 on " << test.name << ": teacher (fp32) " << percent(t.top1);
    json.add("teacher_top1", t.top1);
    for (const int64_t b : config.bits) {
      models::set_bits(*student, b);
      const trainers::EvalResult r = trainers::evaluate(*student, test, teacher.norm());
      std::cout << ", " << b << "-bit " << percent(r.top1);
      json.add("top1_b" + std::to_string(b), r.top1);
    }
    std::cout << std::endl;
  }
  if (common.json) std::cout << json.str() << std::endl;
  return 0;
}

int extract(int argc, char** argv) {
  po::options_description desc("zsq extract options");
  desc.add_options()
      ("checkpoint", po::value<std::string>(), "once-for-all student (zsq-student)")
      ("bits", po::value<int64_t>(), "extract the fixed-precision model of this bit-width; "
                                     "without it, the vertical-layered file of all of them")
      ("out", po::value<std::string>(), "file to write");
  add_common_options(desc);
  Common common;
  auto parsed = parse("extract", "zsq extract --checkpoint student.h5 [--bits 4] --out model-w4.h5", desc, argc, argv,
                      &common);
  if (!parsed) return 0;
  const po::variables_map& vm = *parsed;
  if (!vm.count("checkpoint")) throw UsageError("--checkpoint is required");
  if (!vm.count("out")) throw UsageError("--out is required");
  const std::string out = get<std::string>(vm, "out");
  check_output_folder(out);
  models::LoadedStudent student = models::load_student(get<std::string>(vm, "checkpoint"));
  ModelMeta meta = student.meta;
  meta.recipe = student.meta.recipe;
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
  const std::map<std::string, std::string> kinds = {
      {kModelFormat, "ZSQ FP32 model file"},
      {models::kStudentFormat, "ZSQ once-for-all student"},
      {models::kFixedFormat, "ZSQ fixed-precision integer model"},
      {models::kVerticalFormat, "ZSQ vertical-layered integer model"}};
  std::cout << path << ": " << (kinds.count(format) ? kinds.at(format) : is_dataset ? "data set" : "HDF5 file")
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
  if (kinds.count(format)) {
    const ModelMeta meta = read_meta_attrs(file);
    json.add("arch", meta.arch).add("num_classes", meta.num_classes).add("input_shape", meta.input_shape);
  }
  std::cout << std::flush;
  if (common.json) std::cout << json.str() << std::endl;
  return 0;
}

} // namespace zsq::cli
