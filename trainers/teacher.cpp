#include "trainers/teacher.h"

#include "trainers/checkpoint.h"  // write_part, load_part
#include "trainers/engine.h"

#include "distributed/reducer.h"
#include "distributed/sync.h"
#include "framework/errors.h"
#include "framework/h5.h"
#include "framework/model_file.h"
#include "framework/optim_state.h"
#include "framework/seed.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <filesystem>
#include <random>

#include <torch/torch.h>

namespace zsq::trainers {

double cosine_lr(double peak, int64_t step, int64_t total, int64_t warmup) {
  if (warmup > 0 && step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double t = static_cast<double>(step - warmup) / span;
  return 0.5 * peak * (1.0 + std::cos(M_PI * std::min(1.0, t)));
}

std::unique_ptr<torch::optim::SGD> make_sgd(const torch::nn::Module& model, double lr, double momentum, bool nesterov,
                                            double weight_decay) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& p : model.parameters()) (p.dim() <= 1 ? no_decay : decay).push_back(p);
  auto options = [&](double wd) {
    return torch::optim::SGDOptions(lr).momentum(momentum).nesterov(nesterov).weight_decay(wd);
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::SGDOptions>(options(weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::SGDOptions>(options(0.0)));
  return std::make_unique<torch::optim::SGD>(groups, options(weight_decay));
}

void set_lr(torch::optim::SGD& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) static_cast<torch::optim::SGDOptions&>(group.options()).lr(lr);
}

MixPlan mix_plan(double alpha, int64_t n, uint64_t seed, int rank, int64_t step) {
  TORCH_CHECK(alpha > 0, "mixup alpha must be > 0, got ", alpha);
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(rank) * 0xBF58476D1CE4E5B9ull +
                      static_cast<uint64_t>(step));
  std::gamma_distribution<double> gamma(alpha, 1.0);
  const double a = gamma(rng), b = gamma(rng);
  MixPlan plan;
  plan.lambda = a + b > 0 ? a / (a + b) : 0.5;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(rng());
  plan.permutation = torch::randperm(n, gen, torch::kLong);
  return plan;
}

void TeacherOptions::check() const {
  const TeacherOptions& o = *this;
  ZSQ_CHECK_OPTION(o.epochs > 0, "--epochs must be > 0, got ", o.epochs);
  ZSQ_CHECK_OPTION(o.batch_size > 0, "--batch-size must be > 0, got ", o.batch_size);
  ZSQ_CHECK_OPTION(o.lr > 0 && std::isfinite(o.lr), "--lr must be > 0, got ", o.lr);
  ZSQ_CHECK_OPTION(o.momentum >= 0 && o.momentum < 1, "--momentum must be in [0, 1), got ", o.momentum);
  ZSQ_CHECK_OPTION(!o.nesterov || o.momentum > 0, "--nesterov needs --momentum > 0");
  ZSQ_CHECK_OPTION(o.weight_decay >= 0, "--weight-decay must be >= 0, got ", o.weight_decay);
  ZSQ_CHECK_OPTION(o.label_smoothing >= 0 && o.label_smoothing < 1, "--label-smoothing must be in [0, 1), got ",
                   o.label_smoothing);
  ZSQ_CHECK_OPTION(o.warmup_epochs >= 0 && o.warmup_epochs < o.epochs, "--warmup-epochs must be in [0, epochs), got ",
                   o.warmup_epochs);
  ZSQ_CHECK_OPTION(o.crop_padding >= 0, "--crop-padding must be >= 0, got ", o.crop_padding);
  ZSQ_CHECK_OPTION(o.train_limit >= 0, "--train-limit must be >= 0, got ", o.train_limit);
  ZSQ_CHECK_OPTION(o.temperature > 0, "--temperature must be > 0, got ", o.temperature);
  ZSQ_CHECK_OPTION(o.mixup >= 0 && std::isfinite(o.mixup), "--mixup must be >= 0, got ", o.mixup);
  ZSQ_CHECK_OPTION(o.checkpoint_every >= 0, "--checkpoint-every must be >= 0, got ", o.checkpoint_every);
  ZSQ_CHECK_OPTION(!o.resume || !o.checkpoint.empty(), "--resume needs a checkpoint file");
}

void check_teacher_options(const TeacherOptions& o, const Dataset& train, const Dataset& test) {
  o.check();
  TORCH_CHECK(train.size() > 0, "training set '", train.name, "' is empty");
  TORCH_CHECK(test.size() > 0, "test set '", test.name, "' is empty");
  TORCH_CHECK(train.image_shape() == test.image_shape(), "training images have shape ",
              c10::IntArrayRef(train.image_shape()), ", test images ", c10::IntArrayRef(test.image_shape()));
  const int64_t used = o.train_limit > 0 ? std::min(o.train_limit, train.size()) : train.size();
  ZSQ_CHECK_OPTION(used >= o.batch_size, "--batch-size ", o.batch_size, " is larger than the ", used,
                   " training images");
  TORCH_CHECK(std::max(train.num_classes(), test.num_classes()) <= o.model.num_classes, "the data has ",
              std::max(train.num_classes(), test.num_classes()), " classes, the model ", o.model.num_classes);
  if (!o.out.empty()) h5::check_writable(o.out);
}

namespace {

// Each rank evaluates a contiguous slice of `test`; the results are combined.
EvalResult evaluate_sharded(distributed::Communicator& comm, models::ClassifierImpl& model, const Dataset& test,
                            const Normalization& norm) {
  if (comm.size() == 1) return evaluate(model, test, norm);
  const int64_t n = test.size(), begin = n * comm.rank() / comm.size(), end = n * (comm.rank() + 1) / comm.size();
  Dataset part = test;
  part.images = test.images.narrow(0, begin, end - begin);
  part.labels = test.labels.narrow(0, begin, end - begin);
  EvalResult mine;
  if (end > begin) mine = evaluate(model, part, norm);
  torch::Tensor totals = torch::tensor(
      {mine.top1 * mine.count, mine.loss * mine.count, static_cast<double>(mine.count), mine.seconds}, torch::kFloat64);
  comm.all_reduce(totals, distributed::ReduceOp::kSum);
  EvalResult all;
  all.count = static_cast<int64_t>(totals[2].item<double>());
  all.top1 = totals[0].item<double>() / all.count;
  all.loss = totals[1].item<double>() / all.count;
  all.seconds = totals[3].item<double>() / comm.size();
  return all;
}

} // namespace

namespace {

// One epoch's training totals over every rank.
struct EpochTotals {
  double loss_sum = 0;
  int64_t correct = 0, seen = 0;
  double lr = 0;  // the last step's
};

// The loss of one batch: distillation from o.distill_from, mixup's mixed cross-entropy, or cross-entropy.
torch::Tensor batch_loss(const TeacherOptions& o, const torch::Tensor& logits, const Batch& batch, const MixPlan& mix) {
  const auto ce_options = torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(o.label_smoothing);
  if (o.distill_from) {
    torch::Tensor teacher_logits;
    {
      torch::NoGradGuard no_grad;
      teacher_logits = o.distill_from->forward(batch.images);
    }
    return kd_loss(logits, teacher_logits, o.temperature);
  }
  if (o.mixup > 0) {
    return mix.lambda * torch::nn::functional::cross_entropy(logits, batch.labels, ce_options) +
           (1 - mix.lambda) *
               torch::nn::functional::cross_entropy(logits, batch.labels.index_select(0, mix.permutation), ce_options);
  }
  return torch::nn::functional::cross_entropy(logits, batch.labels, ce_options);
}

EpochTotals train_epoch(const TeacherOptions& o, models::ClassifierImpl& model, BatchLoader& loader,
                        torch::optim::SGD& optimizer, distributed::Reducer& reducer, distributed::Communicator& comm,
                        int64_t epoch) {
  const int64_t steps_per_epoch = loader.num_batches();
  const int64_t total_steps = steps_per_epoch * o.epochs;
  const int64_t warmup_steps = static_cast<int64_t>(o.warmup_epochs * steps_per_epoch);
  model.train();
  loader.set_epoch(epoch);
  EpochTotals t;
  t.lr = o.lr;
  for (int64_t b = 0; b < steps_per_epoch; ++b) {
    t.lr = cosine_lr(o.lr, epoch * steps_per_epoch + b, total_steps, warmup_steps);
    set_lr(optimizer, t.lr);
    Batch batch = loader.batch(b);
    MixPlan mix;
    if (o.mixup > 0) {
      mix = mix_plan(o.mixup, batch.images.size(0), o.seed, comm.rank(), epoch * steps_per_epoch + b);
      batch.images = batch.images * mix.lambda + batch.images.index_select(0, mix.permutation) * (1 - mix.lambda);
    }
    optimizer.zero_grad();
    const torch::Tensor logits = model.forward(batch.images);
    const torch::Tensor loss = batch_loss(o, logits, batch, mix);
    const double loss_value = loss.item<double>();
    check_not_diverged(loss_value, "loss", "epoch " + std::to_string(epoch + 1) + ", step " + std::to_string(b + 1));
    loss.backward();
    reducer.reduce();
    optimizer.step();
    t.loss_sum += loss_value * batch.labels.size(0);
    t.correct += logits.detach().argmax(1).eq(batch.labels).sum().item<int64_t>();
    t.seen += batch.labels.size(0);
  }
  torch::Tensor totals = torch::tensor({t.loss_sum, static_cast<double>(t.correct), static_cast<double>(t.seen)},
                                       torch::kFloat64);
  comm.all_reduce(totals, distributed::ReduceOp::kSum);
  t.loss_sum = totals[0].item<double>();
  t.correct = static_cast<int64_t>(totals[1].item<double>());
  t.seen = static_cast<int64_t>(totals[2].item<double>());
  return t;
}

// Rank 0 writes the model file; every rank returns once it exists.
void save_teacher(const TeacherOptions& o, models::ClassifierImpl& model, const models::ModelSpec& spec,
                  const Dataset& train, const Normalization& norm, distributed::Communicator& comm) {
  ModelMeta meta;
  meta.arch = spec.arch;
  meta.num_classes = spec.num_classes;
  meta.input_shape = train.image_shape();
  meta.input_mean = norm.mean;
  meta.input_std = norm.std;
  if (meta.input_mean.size() == 1 && meta.input_shape[0] > 1) {
    meta.input_mean.assign(meta.input_shape[0], norm.mean[0]);
    meta.input_std.assign(meta.input_shape[0], norm.std[0]);
  }
  meta.width = spec.width;
  meta.precision = "fp32";
  meta.recipe = o.recipe;
  if (comm.rank() == 0) save_model(o.out, model, meta);
  comm.barrier();
}

// Where a run stands after its last finished epoch.
struct TeacherProgress {
  int64_t epoch = 0, images = 0;
  double seconds = 0;  // training time (evaluation excluded)
};

void write_teacher_checkpoint(const TeacherOptions& o, const models::ClassifierImpl& model, torch::optim::SGD& optimizer,
                              const NamedTensors& params, const TeacherProgress& at, int world) {
  OptimizerState momenta(optimizer, params);
  h5::atomic_write(o.checkpoint, [&](h5::File& file) {
    for (const auto& [name, t] : named_state(model)) file.write_tensor(name, t);
    write_part(file, kOptimizerGroup, momenta);
    if (o.checkpoint_hook) o.checkpoint_hook(at.epoch);  // a test interrupts the write here
    file.set_attr("format", std::string(kTeacherCheckpointFormat));
    file.set_attr("version", int64_t(1));
    file.set_attr("arch", o.model.arch);
    file.set_attr("recipe", o.recipe);
    file.set_attr("train_epoch", at.epoch);
    file.set_attr("train_epochs", o.epochs);
    file.set_attr("train_world_size", static_cast<int64_t>(world));
    file.set_attr("train_seconds", at.seconds);
    file.set_attr("train_images", at.images);
  });
}

TeacherProgress restore_teacher(const TeacherOptions& o, models::ClassifierImpl& model, torch::optim::SGD& optimizer,
                                const NamedTensors& params) {
  const TeacherCheckpointInfo info = read_teacher_checkpoint_info(o.checkpoint);
  TORCH_CHECK(info.epochs == o.epochs, "'", o.checkpoint, "' plans ", info.epochs, " epochs, this run ", o.epochs,
              "; a resumed run keeps its schedule");
  const h5::File file = h5::File::open_read(o.checkpoint);
  load_state(file, model, {"train/"});
  OptimizerState momenta(optimizer, params);
  load_part(file, kOptimizerGroup, momenta);
  const double seconds = file.attr_doubles("train_seconds").value_or(std::vector<double>{0}).at(0);
  return {info.epoch, file.attr_int("train_images").value_or(0), seconds};
}

} // namespace

TeacherResult train_teacher(const TeacherOptions& o, const Dataset& full_train, const Dataset& test,
                            const Normalization& norm, const std::function<void(const EpochReport&)>& on_epoch) {
  check_teacher_options(o, full_train, test);
  Dataset train = full_train;
  if (o.train_limit > 0 && o.train_limit < train.size()) {
    train.images = train.images.narrow(0, 0, o.train_limit);
    train.labels = train.labels.narrow(0, 0, o.train_limit);
  }
  const std::shared_ptr<distributed::Communicator> comm = o.comm ? o.comm : distributed::Communicator::create();
  const int ranks = comm->size();
  ZSQ_CHECK_OPTION(o.batch_size % ranks == 0, "--batch-size ", o.batch_size, " must be a multiple of the ", ranks,
                   " processes");
  models::ModelSpec spec = o.model;
  spec.in_channels = train.image_shape()[0];
  models::Classifier model = [&] {
    ScopedSeed seed(o.seed);
    return models::build(spec, models::Fp32Factory());
  }();
  distributed::broadcast_state(*comm, *model);  // every rank starts from rank 0's initialisation
  distributed::Reducer reducer(comm, model->parameters());
  if (o.distill_from) {
    o.distill_from->eval();
    for (const auto& p : o.distill_from->parameters()) p.set_requires_grad(false);
  }
  BatchLoader loader(train, norm,
                     training_loader(o.batch_size / ranks, o.seed, comm->rank(), ranks, o.crop_padding, o.horizontal_flip));
  const std::unique_ptr<torch::optim::SGD> optimizer = make_sgd(*model, o.lr, o.momentum, o.nesterov, o.weight_decay);

  NamedTensors params;
  for (const auto& item : model->named_parameters()) params.emplace_back(item.key(), item.value());
  TeacherResult result;
  TeacherProgress done;
  if (o.resume) {
    done = restore_teacher(o, *model, *optimizer, params);
    result.resumed_from = done.epoch;
  }
  const int64_t first_epoch = done.epoch;
  const Progress progress;
  for (int64_t epoch = first_epoch; epoch < o.epochs; ++epoch) {
    const Progress epoch_clock;
    const EpochTotals t = train_epoch(o, *model, loader, *optimizer, reducer, *comm, epoch);
    // BatchNorm statistics differ per rank (each saw its own shard): use rank 0's.
    distributed::broadcast_state(*comm, *model, 0, /*buffers_only=*/true);
    if (o.check_replicas) distributed::check_replicas(*comm, *model);
    done.seconds += epoch_clock.elapsed();
    done.images += t.seen;
    done.epoch = epoch + 1;
    if (!o.checkpoint.empty() && o.checkpoint_every > 0 && done.epoch % o.checkpoint_every == 0 && done.epoch < o.epochs) {
      if (comm->rank() == 0) write_teacher_checkpoint(o, *model, *optimizer, params, done, ranks);
      comm->barrier();
    }
    EpochReport report;
    report.epoch = epoch + 1;
    report.epochs = o.epochs;
    report.train_loss = t.loss_sum / t.seen;
    report.train_acc = static_cast<double>(t.correct) / t.seen;
    report.lr = t.lr;
    report.images_per_second = done.images / done.seconds;
    if (o.eval_each_epoch || epoch + 1 == o.epochs) {
      const EvalResult eval = evaluate_sharded(*comm, *model, test, norm);
      report.test_acc = eval.top1;
      result.test_acc = eval.top1;
      result.test_loss = eval.loss;
    }
    report.elapsed_seconds = progress.elapsed();
    report.eta_seconds = progress.eta(epoch + 1 - first_epoch, o.epochs - epoch - 1);
    if (on_epoch) on_epoch(report);
  }
  result.seconds = progress.elapsed();
  result.images_per_second = done.images / std::max(done.seconds, 1e-9);
  result.parameters = models::parameter_count(*model);
  result.model = model;
  model->eval();
  if (!o.out.empty()) save_teacher(o, *model, spec, train, norm, *comm);
  if (!o.checkpoint.empty() && comm->rank() == 0) {
    std::error_code ec;
    std::filesystem::remove(o.checkpoint, ec);  // the model file is complete: nothing left to resume
  }
  return result;
}

TeacherCheckpointInfo read_teacher_checkpoint_info(const std::string& path) {
  const h5::File file = h5::File::open_read(path);
  TORCH_CHECK(file.attr_string("format").value_or("") == kTeacherCheckpointFormat, "'", path,
              "' is not a checkpoint of zsq train-teacher");
  TeacherCheckpointInfo info;
  info.epoch = file.attr_int("train_epoch").value_or(-1);
  info.epochs = file.attr_int("train_epochs").value_or(0);
  info.world_size = file.attr_int("train_world_size").value_or(1);
  TORCH_CHECK(info.epoch >= 1 && info.epoch <= info.epochs && info.world_size >= 1, "'", path,
              "' has an inconsistent training state (epoch ", info.epoch, " of ", info.epochs, ")");
  return info;
}

} // namespace zsq::trainers
