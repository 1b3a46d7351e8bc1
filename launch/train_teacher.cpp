// zsq train-teacher: an FP32 teacher, also data parallel and by distillation.
#include "launch/commands.h"
#include "launch/options.h"

#include "distributed/communicator.h"
#include "framework/data.h"
#include "framework/h5.h"
#include "framework/model_file.h"
#include "framework/logging.h"
#include "models/extract.h"
#include "models/zoo.h"
#include "trainers/evaluate.h"
#include "trainers/teacher.h"

#include <ATen/Parallel.h>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <set>
#include <sstream>

namespace zsq::cli {
namespace fs = std::filesystem;

namespace {

void add_train_teacher_options(po::options_description& desc) {
  add_data_options(desc, "fashion-mnist");
  desc.add_options()
      ("test-data", po::value<std::string>(), "test set: HDF5 file, image folder or 'fashion-mnist' (needed when --data is not 'fashion-mnist')")
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
      ("check-replicas", po::bool_switch(), "under mpirun: check after every epoch that all ranks hold the same model")
      ("checkpoint-every", po::value<int64_t>()->default_value(1),
       "epochs between checkpoints (OUT with the extension .checkpoint.h5, removed once OUT is written; 0: none)")
      ("resume", po::bool_switch(), "continue an interrupted run from its checkpoint (same options)");
  add_common_options(desc);
}

trainers::TeacherOptions read_teacher_options(const po::variables_map& vm, const Dataset& train, const Dataset& test) {
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
  o.check_replicas = vm["check-replicas"].as<bool>();
  o.checkpoint_every = get<int64_t>(vm, "checkpoint-every");
  o.resume = vm["resume"].as<bool>();
  if (o.checkpoint_every > 0 || o.resume) o.checkpoint = fs::path(o.out).replace_extension(".checkpoint.h5").string();
  // Validate the architecture before any work.
  if (std::find(models::known_archs().begin(), models::known_archs().end(), o.model.arch) ==
      models::known_archs().end()) {
    models::build(o.model, models::Fp32Factory());  // throws the list of known names
  }
  return o;
}

// The input normalization: the --distill-from model's (which also sets the classes), Fashion-MNIST's, or the data's
// own; --input-mean / --input-std override it.
Normalization read_normalization(const po::variables_map& vm, const Dataset& train, trainers::TeacherOptions* options,
                                 trainers::LoadedModel* distill) {
  trainers::TeacherOptions& o = *options;
  const int64_t classes = get<int64_t>(vm, "num-classes");
  Normalization norm;
  if (vm.count("distill-from")) {
    *distill = trainers::load_model(get<std::string>(vm, "distill-from"));
    o.distill_from = distill->model;
    o.temperature = get<double>(vm, "temperature");
    if (distill->meta.arch.empty() || distill->meta.input_shape != train.image_shape()) {
      throw UsageError("--distill-from model expects inputs " + c10::str(c10::IntArrayRef(distill->meta.input_shape)) +
                       ", the data has " + c10::str(c10::IntArrayRef(train.image_shape())));
    }
    norm = distill->norm();
    if (classes == 0) o.model.num_classes = distill->meta.num_classes;  // a pool may miss some classes
    if (o.model.num_classes != distill->meta.num_classes) {
      throw UsageError("--num-classes " + std::to_string(o.model.num_classes) + " differs from the --distill-from model's " +
                       std::to_string(distill->meta.num_classes));
    }
  } else if (get<std::string>(vm, "data") == "fashion-mnist") {
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
  return norm;
}

// An interrupted run's checkpoint: continued with --resume (same recipe), never overwritten by a fresh run.
void check_checkpoint(const trainers::TeacherOptions& o, const po::variables_map& vm) {
  if (o.checkpoint.empty()) return;
  if (!o.resume) {
    if (fs::exists(o.checkpoint)) {
      throw UsageError("'" + o.checkpoint + "' exists (an interrupted run); add --resume to continue it, or remove it");
    }
    return;
  }
  if (!fs::exists(o.checkpoint)) {
    throw UsageError("--resume: there is no '" + o.checkpoint + "' to continue; start the run without --resume");
  }
  const trainers::TeacherCheckpointInfo info = trainers::read_teacher_checkpoint_info(o.checkpoint);
  static const std::set<std::string> free = {"resume", "data-dir", "threads", "log-level", "json", "config",
                                             "collective-timeout", "checkpoint-every", "check-replicas"};
  check_same_recipe(o.checkpoint, read_meta_attrs(h5::File::open_read(o.checkpoint)).recipe, o.recipe, vm, free);
  if (info.world_size != o.comm->size() && o.comm->rank() == 0) {
    std::cout << "resuming a checkpoint of " << info.world_size << " process(es) on " << o.comm->size()
              << ": the data are re-sharded, so the run will not end bit for bit where an uninterrupted one would"
              << std::endl;
  }
}

void print_result(const trainers::TeacherResult& result, const trainers::TeacherOptions& o, bool json) {
  if (result.resumed_from >= 0) std::cout << "resumed after epoch " << result.resumed_from << std::endl;
  std::cout << "test top-1 " << percent(result.test_acc) << " after " << o.epochs << " epochs in "
            << format_duration(result.seconds) << " (" << std::fixed << std::setprecision(0)
            << result.images_per_second << " img/s); wrote " << o.out << std::endl;
  if (json) {
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
}

} // namespace

int train_teacher(int argc, char** argv) {
  po::options_description desc("zsq train-teacher options");
  add_train_teacher_options(desc);
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
    throw UsageError("--data is not 'fashion-mnist'; pass --test-data with the test set too");
  }
  const Dataset test = vm.count("test-data") ? load_dataset(get<std::string>(vm, "test-data"), data_dir, Split::kTest,
                                                            train.image_shape())
                                             : load_dataset(data_spec, data_dir, Split::kTest);

  trainers::TeacherOptions o = read_teacher_options(vm, train, test);
  o.recipe = resolved_config(desc, vm);
  o.comm = distributed::Communicator::create({timeout});
  trainers::LoadedModel distill;
  const Normalization norm = read_normalization(vm, train, &o, &distill);
  trainers::check_teacher_options(o, train, test);
  check_checkpoint(o, vm);

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
  print_result(result, o, common.json);
  return 0;
}

} // namespace zsq::cli
