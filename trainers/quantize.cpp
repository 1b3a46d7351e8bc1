#include "trainers/quantize.h"

#include "trainers/checkpoint.h"
#include "trainers/engine.h"
#include "trainers/mix_sampling.h"
#include "trainers/weighting.h"

#include "distributed/reducer.h"
#include "distributed/sync.h"
#include "framework/errors.h"
#include "framework/quant/layers.h"
#include "models/extract.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace zsq::trainers {
namespace {

// What the checkpoints of a run need from its options.
CheckpointPlan plan_of(const QuantizeOptions& o) { return {o.checkpoint, o.steps, o.generator_warmup, o.checkpoint_hook}; }

// One quantize() call: the set-up in the constructor, then the student steps.
class OfaTrainer {
 public:
  OfaTrainer(models::ClassifierImpl& student, models::ClassifierImpl& teacher, const QuantizeData& data,
             const QuantizeOptions& o, const CheckpointStudent& write_student,
             std::shared_ptr<distributed::Communicator> comm, const std::function<void(const QuantizeStep&)>& on_step);
  ~OfaTrainer();
  QuantizeResult run();

 private:
  void select_trained();
  void start();
  void install_adversary();
  void enable_bn_train();
  torch::Tensor calibration_images(uint64_t stream = 0);
  std::pair<torch::Tensor, torch::Tensor> synthetic_batch(QuantizeStep* report);
  std::pair<torch::Tensor, torch::Tensor> training_batch(int64_t step, QuantizeStep* report);
  std::vector<double> backward_tasks(const torch::Tensor& images, const torch::Tensor& labels, int64_t step,
                                     const std::vector<int64_t>& now, std::vector<torch::Tensor>* shared_gradients);
  void train_step(int64_t step, QuantizeStep* report);
  void finish_step(int64_t step, int64_t done_here, QuantizeStep* report);
  double value_at(const std::vector<double>& values, double unset, int64_t b) const;

  models::ClassifierImpl& student_;
  models::ClassifierImpl& teacher_;
  const QuantizeData& data_;
  const QuantizeOptions& o_;
  std::shared_ptr<distributed::Communicator> comm_;
  const std::function<void(const QuantizeStep&)>& on_step_;
  std::vector<int64_t> bits_;  // ascending
  int rank_ = 0, world_ = 1;
  int64_t local_batch_ = 0;
  PixelClamp clamped_;  // --clamp-pixels (off: images as given)
  LowPass lowpass_;     // --lowpass (off: images as given)
  generators::Synthesizer* synth_ = nullptr;
  bool online_generator_ = false, adversary_ = false;
  std::unique_ptr<MixSampler> mixes_;  // --mix-samples
  std::unique_ptr<BatchLoader> loader_;
  int64_t epoch_ = -1;
  std::unique_ptr<torch::optim::SGD> optimizer_;
  // Tensors whose learning rate is scaled, with the multiplier ≠ 1: the weight steps by --weight-step-lr,
  // each bit-width's own tensors by --per-bit-lr.
  std::vector<std::pair<torch::Tensor, double>> lr_scaled_;
  NamedTensors params_, shared_;             // trained; what the bit-widths share (latent weights, steps, biases)
  std::vector<bool> shared_is_step_;         // per tensor of shared_: a weight step
  std::unique_ptr<distributed::Reducer> reducer_;
  std::unique_ptr<Checkpointer> checkpointer_;
  NamedTensors initial_codes_;  // top-precision weight codes at the start, by layer
  std::unique_ptr<RunState> state_;  // what a checkpoint holds besides the student
  std::vector<torch::Tensor> bn_running_;  // --bn-train's running statistics
  int64_t first_ = 0, last_checkpoint_ = -1;
  Progress progress_;
  QuantizeResult result_;
};

OfaTrainer::OfaTrainer(models::ClassifierImpl& student, models::ClassifierImpl& teacher, const QuantizeData& data,
                       const QuantizeOptions& o, const CheckpointStudent& write_student,
                       std::shared_ptr<distributed::Communicator> comm,
                       const std::function<void(const QuantizeStep&)>& on_step)
    : student_(student), teacher_(teacher), data_(data), o_(o), comm_(std::move(comm)), on_step_(on_step) {
  bits_ = models::model_bits(student);
  std::sort(bits_.begin(), bits_.end());
  rank_ = comm_ ? comm_->rank() : 0;
  world_ = comm_ ? comm_->size() : 1;
  check_quantize_inputs(o, bits_, data, world_);
  local_batch_ = o.batch_size / world_;
  if (o.clamp_pixels) {
    ZSQ_CHECK_OPTION(!data.norm.mean.empty() && data.norm.mean.size() == data.norm.std.size(),
                     "--clamp-pixels needs the teacher's normalization");
    clamped_ = PixelClamp(data.norm);
  }
  lowpass_ = LowPass(o.lowpass);
  teacher.eval();
  for (const auto& p : teacher.parameters()) p.set_requires_grad(false);
  student.eval();  // GDFQ: BatchNorm keeps the teacher's statistics, its affine parameters train
  synth_ = data.synthesizer;
  online_generator_ = synth_ && synth_->trains_generator();
  if (data.pool) {
    loader_ = std::make_unique<BatchLoader>(
        *data.pool, data.norm, training_loader(local_batch_, o.seed, rank_, world_, o.crop_padding, o.horizontal_flip));
    TORCH_CHECK(loader_->num_batches() > 0, "the pool is too small for --batch-size ", o.batch_size, " on ", world_,
                " process(es)");
  }
  // Weight decay on the latent weights only (make_sgd spares every 1-D tensor: steps, BatchNorm, biases).
  optimizer_ = make_sgd(student, o.lr, 0.9, /*nesterov=*/true, o.weight_decay);
  select_trained();
  mixes_ = std::make_unique<MixSampler>(student, o.mix_samples, o.seed);
  checkpointer_ = std::make_unique<Checkpointer>(plan_of(o), write_student, comm_);
  state_ = std::make_unique<RunState>(*optimizer_, params_, &initial_codes_, synth_, comm_.get());
}

OfaTrainer::~OfaTrainer() {
  student_.eval();  // no BatchNorm stays in training mode, also when training throws
  if (adversary_) synth_->set_adversary(nullptr);  // the callable refers to this call's student
}

void OfaTrainer::select_trained() {
  int64_t trained = 0;
  for (const auto& item : student_.named_parameters()) {
    const bool weight_step = is_weight_step(item.key());
    const bool trains = (o_.train == TrainScope::kAll || is_per_bit_tensor(item.key())) && !(weight_step && o_.weight_step_lr == 0);
    item.value().set_requires_grad(trains);
    trained += trains;
    const int64_t b = per_bit_tensor_bits(item.key());
    const bool own = b > 0 && std::find(bits_.begin(), bits_.end(), b) != bits_.end();
    const double scale = weight_step ? o_.weight_step_lr : own ? value_at(o_.per_bit_lr, 1.0, b) : 1.0;
    if (trains && scale != 1) lr_scaled_.emplace_back(item.value(), scale);
  }
  // Input steps derived from a known input range neither calibrate nor train.
  for (auto& step : models::fixed_input_steps(student_)) step.set_requires_grad(false);
  ZSQ_CHECK_OPTION(trained > 0, "--train ", train_scope_name(o_.train), ": the student has nothing to train");
  params_ = trained_parameters(student_);
  for (const auto& item : params_) {
    if (is_per_bit_tensor(item.first)) continue;
    shared_.push_back(item);
    shared_is_step_.push_back(is_weight_step(item.first));
  }
  if (world_ > 1) {
    std::vector<torch::Tensor> list;
    for (const auto& [name, p] : params_) list.push_back(p);
    reducer_ = std::make_unique<distributed::Reducer>(comm_, list);
  }
}

double OfaTrainer::value_at(const std::vector<double>& values, double unset, int64_t b) const {
  if (values.empty()) return unset;
  if (values.size() == 1) return values.front();
  return values[std::find(bits_.begin(), bits_.end(), b) - bits_.begin()];
}

// Images that calibrate the student: a random pick of the pool, or fresh synthetic batches. `stream` picks another
// set of the pool (the end's re-estimation).
torch::Tensor OfaTrainer::calibration_images(uint64_t stream) {
  torch::Tensor calibration;
  if (data_.pool) {
    // Its own random stream (the seed's), not the global one: the same pick whatever ran before.
    const torch::Tensor pick = torch::randperm(data_.pool->size(),
                                               at::make_generator<at::CPUGeneratorImpl>(o_.seed + stream),
                                               torch::kLong)
                                   .narrow(0, 0, std::min(o_.calib_count, data_.pool->size()));
    calibration = normalize(data_.pool->images.index_select(0, pick), data_.norm);
  } else {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> parts;
    int64_t have = 0;
    while (have < o_.calib_count) {
      parts.push_back(synth_->next_batch(nullptr).first);
      have += parts.back().size(0);
    }
    calibration = torch::cat(parts).narrow(0, 0, o_.calib_count);
  }
  return clamped_(lowpass_(calibration));
}

std::pair<torch::Tensor, torch::Tensor> OfaTrainer::synthetic_batch(QuantizeStep* report) {
  if (!online_generator_) return synth_->next_batch(nullptr);
  generators::StepReport g;
  auto batch = synth_->train_step(&g);
  report->generator_loss = g.total;
  report->generator_adversarial = g.adversarial;
  return batch;
}

// Resumes from the checkpoint, or warms the generator up and initialises the student from the teacher.
void OfaTrainer::start() {
  if (o_.resume) {
    first_ = restore(plan_of(o_), student_, state_->parts());
    result_.resumed_from = first_;
    last_checkpoint_ = first_;
    return;
  }
  for (int64_t w = 0; w < o_.generator_warmup; ++w) {
    QuantizeStep report;
    report.warmup_step = w + 1;
    report.warmup_steps = o_.generator_warmup;
    report.steps = o_.steps;
    synthetic_batch(&report);
    if (on_step_) on_step_(report);
  }
  models::init_student(student_, teacher_, calibration_images(), o_.bn_bits, o_.bn_modes, o_.quant_init);
  if (world_ > 1) distributed::broadcast_state(*comm_, student_);  // rank 0's calibration for every rank
  initial_codes_ = models::top_weight_codes(student_);
}

// The generator's adversarial term works against this student at its lowest bit-width (the one furthest from the
// teacher), from the first student step on (the warm-up ran without it: the student was not calibrated yet).
void OfaTrainer::install_adversary() {
  if (!synth_ || !synth_->wants_adversary()) return;
  TORCH_CHECK(std::find(o_.bn_train.begin(), o_.bn_train.end(), bits_.front()) == o_.bn_train.end(),
              "the generator's adversarial term uses the ", bits_.front(), "-bit student, whose BatchNorm "
              "statistics --bn-train ", bits_.front(), " would update: drop one of the two");
  adversary_ = true;
  synth_->set_adversary([&student = student_, lowest = bits_.front()](const torch::Tensor& images) {
    return frozen_logits(student, lowest, images);
  });
}

// --bn-train: these bit-widths' BatchNorms normalize with batch statistics and update their running ones (momentum
// 0.1) while training; under mpirun each rank uses its own batch's statistics and the running ones are averaged
// over the ranks after every step, so the replicas stay identical. --bn-track's statistics are averaged alike.
void OfaTrainer::enable_bn_train() {
  const std::vector<int64_t>& moving = o_.bn_track > 0 ? o_.bn_bits : o_.bn_train;  // never both (QuantizeOptions)
  for (const auto& m : student_.modules()) {
    auto* n = m->as<quant::SwitchableBatchNorm2dImpl>();
    if (!n) continue;
    for (const int64_t b : moving) {
      nn::BatchNorm2d norm = n->norm_at(b);
      if (o_.bn_track == 0) norm->train(true);
      bn_running_.push_back(norm->running_mean);
      bn_running_.push_back(norm->running_var);
    }
  }
}

std::pair<torch::Tensor, torch::Tensor> OfaTrainer::training_batch(int64_t step, QuantizeStep* report) {
  torch::Tensor images, labels;
  if (loader_) {
    const int64_t e = step / loader_->num_batches();
    if (e != epoch_) loader_->set_epoch(epoch_ = e);
    const Batch batch = loader_->batch(step % loader_->num_batches());
    images = batch.images;
    labels = batch.labels;
  } else {
    std::tie(images, labels) = synthetic_batch(report);
    TORCH_CHECK(images.size(0) == local_batch_, "the synthesizer gave ", images.size(0), " images, expected ",
                local_batch_);
  }
  // Teacher and student see the same images, inside the pixel range a fixed input quantizer covers.
  return {clamped_(lowpass_(images)), labels};
}

// Forward and backward of every bit-width of `now` (highest first, so recursive distillation has the next higher
// bit-width's logits), then of the step's random mixes (--mix-samples); returns this rank's losses and each task's
// gradient on the shared tensors, in that order.
std::vector<double> OfaTrainer::backward_tasks(const torch::Tensor& images, const torch::Tensor& labels, int64_t step,
                                               const std::vector<int64_t>& now,
                                               std::vector<torch::Tensor>* shared_gradients) {
  torch::Tensor teacher_logits, teacher_features;
  {
    torch::NoGradGuard no_grad;
    teacher_features = teacher_.features(images);
    teacher_logits = teacher_.head(teacher_features);
  }
  const size_t uniform = now.size(), tasks = uniform + static_cast<size_t>(mixes_->samples());
  std::vector<double> losses(tasks);
  shared_gradients->assign(tasks, torch::Tensor());
  optimizer_->zero_grad();
  torch::Tensor shared_before = shared_.empty() ? torch::Tensor() : flat_gradient(shared_);
  torch::Tensor higher;  // logits of the next higher bit-width (recursive distillation)
  for (size_t k = 0; k < tasks; ++k) {
    const bool mixed = k >= uniform;
    const size_t i = mixed ? k : uniform - 1 - k;
    if (mixed) {
      mixes_->apply(step, static_cast<int64_t>(k - uniform));
    } else {
      models::set_bits(student_, now[i]);
    }
    const torch::Tensor features = student_.features(images);
    const torch::Tensor logits = student_.head(features);
    torch::Tensor loss = kd_loss(logits, o_.recursive && !mixed && higher.defined() ? higher : teacher_logits,
                                 o_.temperature);
    const double ce = mixed ? 0.0 : value_at(o_.ce_weight, 0.0, now[i]);
    if (ce > 0) loss = loss + ce * torch::cross_entropy_loss(logits, labels);
    if (o_.feature_weight > 0) loss = loss + o_.feature_weight * torch::mse_loss(features, teacher_features);
    losses[i] = loss.item<double>();
    // Backward per task: the graphs do not stay alive together; gradients accumulate.
    (loss * (mixed ? o_.mix_weight : value_at(o_.weights, 1.0, now[i]))).backward();
    if (!shared_.empty()) {
      const torch::Tensor shared_now = flat_gradient(shared_);
      (*shared_gradients)[i] = shared_now - shared_before;
      shared_before = shared_now;
    }
    if (!mixed) higher = logits.detach();
  }
  return losses;
}

void OfaTrainer::train_step(int64_t step, QuantizeStep* report) {
  const auto [images, labels] = training_batch(step, report);
  report->lr = cosine_lr(o_.lr, step, o_.steps, 0);
  set_lr(*optimizer_, report->lr);
  report->bits = step_bits(bits_, o_.weighting, o_.seed, step);
  std::vector<torch::Tensor> shared_gradients;
  std::vector<double> losses = backward_tasks(images, labels, step, report->bits, &shared_gradients);
  report->bits.resize(losses.size(), 0);  // 0: a random mix
  // Every rank decides on the same (global mean) losses, so a divergence stops all of them together.
  torch::Tensor global = torch::tensor(losses, torch::kFloat64);
  if (world_ > 1) comm_->all_reduce(global, distributed::ReduceOp::kAverage);
  for (size_t i = 0; i < losses.size(); ++i) {
    losses[i] = global[static_cast<int64_t>(i)].item<double>();
    if (std::isfinite(losses[i])) continue;  // the message is only built for a diverged loss
    check_not_diverged(losses[i], report->bits[i] > 0 ? "the " + std::to_string(report->bits[i]) + "-bit loss" : "a mix's loss",
                       "step " + std::to_string(step + 1),
                       last_checkpoint_ >= 0 ? "the checkpoint of step " + std::to_string(last_checkpoint_) + " is kept; "
                                             : std::string("no checkpoint was written; "));
  }
  report->losses = losses;
  if (!shared_.empty()) {
    torch::Tensor d = torch::stack(shared_gradients);  // K × S, float64
    report->alphas = combine_shared_gradients(o_.weighting, d, shared_, comm_.get(), shared_is_step_, o_.step_weighting);
    const torch::Tensor norms = d.norm(2, 1);
    report->grad_norms.assign(norms.data_ptr<double>(), norms.data_ptr<double>() + norms.numel());
  }
  if (reducer_) reducer_->reduce();
  {
    // SGD is linear in the gradient (no weight decay on 1-D tensors): scaling it scales the step's rate.
    torch::NoGradGuard no_grad;
    for (auto& [t, scale] : lr_scaled_) {
      if (t.grad().defined()) t.grad().mul_(scale);
    }
  }
  optimizer_->step();
  if (o_.bn_track > 0) {
    models::calibrate(student_, images, o_.bn_bits, &teacher_, /*activation_steps=*/false, o_.bn_modes, o_.bn_track);
  }
  if (world_ > 1 && !bn_running_.empty()) {
    torch::NoGradGuard no_grad;
    for (auto& t : bn_running_) comm_->all_reduce(t, distributed::ReduceOp::kAverage);
  }
}

// After a step: the end's BatchNorm re-estimation, the checkpoint, the progress report.
void OfaTrainer::finish_step(int64_t step, int64_t done_here, QuantizeStep* report) {
  const bool stop = o_.stop_after > 0 && done_here >= o_.stop_after;
  const bool last = step + 1 == o_.steps;
  if (last && o_.bn_reestimate_end) {
    // The weights moved since the start: the bn_bits' statistics again, through the trained network.
    models::calibrate(student_, calibration_images(/*stream=*/1), o_.bn_bits, &teacher_, /*activation_steps=*/false,
                      o_.bn_modes);
    if (world_ > 1) distributed::broadcast_state(*comm_, student_);
  }
  if (!o_.checkpoint.empty() && (last || stop || (o_.checkpoint_every > 0 && (step + 1) % o_.checkpoint_every == 0))) {
    checkpointer_->write(state_->parts(), step + 1);
    last_checkpoint_ = step + 1;
    report->checkpointed = true;
  }
  report->step = step + 1;
  report->steps = o_.steps;
  report->warmup_steps = o_.generator_warmup;
  report->elapsed_seconds = progress_.elapsed();
  report->images_per_second = static_cast<double>(done_here * o_.batch_size) / report->elapsed_seconds;
  report->eta_seconds = progress_.eta(done_here, o_.steps - step - 1);
  if (on_step_) on_step_(*report);
  result_.steps_done = step + 1;
}

QuantizeResult OfaTrainer::run() {
  start();
  install_adversary();
  enable_bn_train();
  result_.steps_done = first_;
  progress_ = Progress();
  int64_t done_here = 0;
  for (int64_t step = first_; step < o_.steps; ++step) {
    QuantizeStep report;
    train_step(step, &report);
    finish_step(step, ++done_here, &report);
    if (o_.stop_after > 0 && done_here >= o_.stop_after) break;
  }
  result_.complete = result_.steps_done == o_.steps;
  if (!initial_codes_.empty()) result_.changed_codes = models::changed_code_share(student_, initial_codes_);
  models::set_bits(student_, bits_.front());
  return result_;
}

} // namespace

QuantizeResult quantize(models::ClassifierImpl& student, models::ClassifierImpl& teacher, const QuantizeData& data,
                        const QuantizeOptions& o, const CheckpointStudent& write_student,
                        std::shared_ptr<distributed::Communicator> comm,
                        const std::function<void(const QuantizeStep&)>& on_step) {
  return OfaTrainer(student, teacher, data, o, write_student, std::move(comm), on_step).run();
}

} // namespace zsq::trainers
