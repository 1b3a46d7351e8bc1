#include "trainers/quantize.h"

#include "trainers/checkpoint.h"
#include "trainers/weighting.h"

#include "distributed/reducer.h"
#include "distributed/sync.h"
#include "framework/errors.h"
#include "framework/model_file.h"
#include "framework/optim_state.h"
#include "framework/quant/layers.h"
#include "models/extract.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <regex>

namespace zsq::trainers {
namespace {

// The normalized value of `pixel` per channel of `norm`, shaped 1×C×1×1 (C = 1 broadcasts).
torch::Tensor normalized_pixel(double pixel, const Normalization& norm) {
  ZSQ_CHECK_OPTION(!norm.mean.empty() && norm.mean.size() == norm.std.size(), "--clamp-pixels needs the teacher's normalization");
  std::vector<float> v(norm.mean.size());
  for (size_t c = 0; c < v.size(); ++c) v[c] = static_cast<float>((pixel - norm.mean[c]) / norm.std[c]);
  return torch::tensor(v).reshape({1, static_cast<int64_t>(v.size()), 1, 1});
}

// What the checkpoints of a run need from its options.
CheckpointPlan plan_of(const QuantizeOptions& o) { return {o.checkpoint, o.steps, o.generator_warmup, o.checkpoint_hook}; }

// The parameters that train (all, or the per-bit ones with --train per-bit).
NamedTensors trained_parameters(torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& item : module.named_parameters()) {
    if (item.value().requires_grad()) out.emplace_back(item.key(), item.value());
  }
  return out;
}

} // namespace

bool is_per_bit_tensor(const std::string& name) {
  static const std::regex per_bit(R"((^|\.)act_step_b\d+$|\.b\d+\.[^.]+$)");
  return std::regex_search(name, per_bit);
}

bool is_weight_step(const std::string& name) {
  static const std::regex weight_step(R"((^|\.)weight_step$)");
  return std::regex_search(name, weight_step);
}

void QuantizeOptions::check() const {
  ZSQ_CHECK_OPTION(steps > 0, "--steps must be > 0, got ", steps);
  ZSQ_CHECK_OPTION(batch_size > 0, "--batch-size must be > 0, got ", batch_size);
  ZSQ_CHECK_OPTION(lr > 0 && std::isfinite(lr), "--lr must be > 0, got ", lr);
  ZSQ_CHECK_OPTION(weight_decay >= 0, "--weight-decay must be >= 0, got ", weight_decay);
  ZSQ_CHECK_OPTION(weight_step_lr >= 0 && std::isfinite(weight_step_lr), "--weight-step-lr must be a finite number >= 0, got ",
                   weight_step_lr);
  ZSQ_CHECK_OPTION(temperature > 0, "--temperature must be > 0, got ", temperature);
  for (const double w : ce_weight) ZSQ_CHECK_OPTION(w >= 0, "--ce-weight must be >= 0, got ", w);
  ZSQ_CHECK_OPTION(feature_weight >= 0, "--feature-weight must be >= 0, got ", feature_weight);
  ZSQ_CHECK_OPTION(std::find(known_weightings().begin(), known_weightings().end(), weighting) != known_weightings().end(),
                   "unknown --weighting '", weighting, "' (sum, sandwich, min-norm, normalized)");
  ZSQ_CHECK_OPTION(weights.empty() || (weighting != "min-norm" && weighting != "normalized"),
                   "--bit-weights has no meaning with --weighting ", weighting);
  for (const double w : weights) ZSQ_CHECK_OPTION(w >= 0, "--bit-weights must be >= 0, got ", w);
  ZSQ_CHECK_OPTION(train == "all" || train == "per-bit", "--train must be 'all' or 'per-bit', got '", train, "'");
  ZSQ_CHECK_OPTION(bn_mode == "shift" || bn_mode == "absolute", "--bn-mode must be 'shift' or 'absolute', got '",
                   bn_mode, "'");
  ZSQ_CHECK_OPTION(calib_count >= 1, "--calib-count must be >= 1, got ", calib_count);
  ZSQ_CHECK_OPTION(!bn_reestimate_end || !bn_bits.empty(),
                   "--bn-reestimate-end on needs the bit-widths to re-estimate (--bn-reestimate)");
  ZSQ_CHECK_OPTION(generator_warmup >= 0, "--generator-warmup must be >= 0, got ", generator_warmup);
  ZSQ_CHECK_OPTION(checkpoint_every >= 0, "--checkpoint-every must be >= 0, got ", checkpoint_every);
  ZSQ_CHECK_OPTION(stop_after >= 0, "--stop-after must be >= 0, got ", stop_after);
}

QuantizeResult quantize(models::ClassifierImpl& student, models::ClassifierImpl& teacher, const QuantizeData& data,
                        const QuantizeOptions& o, const CheckpointStudent& write_student,
                        std::shared_ptr<distributed::Communicator> comm,
                        const std::function<void(const QuantizeStep&)>& on_step) {
  const std::vector<int64_t> bits = [&] {
    std::vector<int64_t> b = models::model_bits(student);
    std::sort(b.begin(), b.end());
    return b;
  }();
  const int rank = comm ? comm->rank() : 0;
  const int world = comm ? comm->size() : 1;
  TORCH_CHECK(!bits.empty(), "quantize: the student has no quantized layers");
  TORCH_CHECK((data.pool != nullptr) != (data.synthesizer != nullptr), "quantize: give a pool or a synthesizer");
  o.check();
  TORCH_CHECK(!o.resume || !o.checkpoint.empty(), "resuming needs a checkpoint path");
  ZSQ_CHECK_OPTION(o.batch_size % world == 0, "--batch-size (", o.batch_size,
                   ") must be a multiple of the number of processes (", world, ")");
  if (data.pool) {
    ZSQ_CHECK_OPTION(o.batch_size <= data.pool->size(), "--batch-size must be at most the pool's size (",
                     data.pool->size(), "), got ", o.batch_size);
  }
  ZSQ_CHECK_OPTION(o.ce_weight.size() <= 1 || o.ce_weight.size() == bits.size(),
                   "--ce-weight needs one value or one per bit-width (", bits.size(), "), got ", o.ce_weight.size());
  ZSQ_CHECK_OPTION(o.weights.empty() || o.weights.size() == bits.size(),
                   "--bit-weights needs one value per bit-width (", bits.size(), "), got ", o.weights.size());
  for (const auto* list : {&o.bn_bits, &o.bn_train}) {
    for (const int64_t b : *list) {
      ZSQ_CHECK_OPTION(std::find(bits.begin(), bits.end(), b) != bits.end(),
                       list == &o.bn_bits ? "--bn-reestimate " : "--bn-train ", b, ": not one of the model's bit-widths (",
                       models::bits_text(bits), ")");
    }
  }
  ZSQ_CHECK_OPTION(o.generator_warmup == 0 || (data.synthesizer && data.synthesizer->trains_generator()),
                   "--generator-warmup needs a recipe that trains a generator (gdfq, qimera)");
  TORCH_CHECK(!data.synthesizer || !data.synthesizer->trains_while_sampling(),
              "recipe '", data.synthesizer ? data.synthesizer->recipe().name : "", "' trains a proxy student while it samples "
              "and cannot be checkpointed: write a pool with zsq generate and quantize with --pool");
  const int64_t local_batch = o.batch_size / world;
  // --clamp-pixels: the normalized images of pixels 0 and 1, per channel.
  const torch::Tensor pixel_lo = o.clamp_pixels ? normalized_pixel(0.0, data.norm) : torch::Tensor();
  const torch::Tensor pixel_hi = o.clamp_pixels ? normalized_pixel(1.0, data.norm) : torch::Tensor();
  // A per-bit option's value at bit-width b: `unset` for an empty list, its one value, or b's entry.
  const auto value_at = [&](const std::vector<double>& values, double unset, int64_t b) {
    if (values.empty()) return unset;
    if (values.size() == 1) return values.front();
    return values[std::find(bits.begin(), bits.end(), b) - bits.begin()];
  };
  const auto ce_weight_of = [&](int64_t b) { return value_at(o.ce_weight, 0.0, b); };
  const auto weight_of = [&](int64_t b) { return value_at(o.weights, 1.0, b); };

  teacher.eval();
  for (const auto& p : teacher.parameters()) p.set_requires_grad(false);
  student.eval();  // GDFQ: BatchNorm keeps the teacher's statistics, its affine parameters train
  generators::Synthesizer* synth = data.synthesizer;
  const bool online_generator = synth && synth->trains_generator();

  std::unique_ptr<BatchLoader> loader;
  if (data.pool) {
    LoaderOptions lo;
    lo.batch_size = local_batch;
    lo.shuffle = true;
    lo.seed = o.seed;
    lo.rank = rank;
    lo.world_size = world;
    lo.drop_last = true;
    lo.crop_padding = o.crop_padding;
    lo.horizontal_flip = o.horizontal_flip;
    loader = std::make_unique<BatchLoader>(*data.pool, data.norm, lo);
    TORCH_CHECK(loader->num_batches() > 0, "the pool is too small for --batch-size ", o.batch_size, " on ", world,
                " process(es)");
  }
  auto next_images = [&](QuantizeStep* report) -> std::pair<torch::Tensor, torch::Tensor> {
    if (online_generator) {
      generators::StepReport g;
      auto batch = synth->train_step(&g);
      report->generator_loss = g.total;
      report->generator_adversarial = g.adversarial;
      return batch;
    }
    return synth->next_batch(nullptr);
  };

  // Weight decay on the latent weights only (make_sgd spares every 1-D tensor: steps, BatchNorm, biases).
  const std::unique_ptr<torch::optim::SGD> optimizer = make_sgd(student, o.lr, 0.9, /*nesterov=*/true, o.weight_decay);
  int64_t trained = 0;
  std::vector<torch::Tensor> weight_steps;  // scaled by --weight-step-lr
  for (const auto& item : student.named_parameters()) {
    const bool weight_step = is_weight_step(item.key());
    const bool trains = (o.train == "all" || is_per_bit_tensor(item.key())) && !(weight_step && o.weight_step_lr == 0);
    item.value().set_requires_grad(trains);
    trained += trains;
    if (trains && weight_step) weight_steps.push_back(item.value());
  }
  // Input steps derived from a known input range neither calibrate nor train.
  for (auto& step : models::fixed_input_steps(student)) step.set_requires_grad(false);
  ZSQ_CHECK_OPTION(trained > 0, "--train ", o.train, ": the student has nothing to train");
  const NamedTensors params = trained_parameters(student);
  NamedTensors shared;  // what the bit-widths share: latent weights, weight steps, biases
  for (const auto& item : params) {
    if (!is_per_bit_tensor(item.first)) shared.push_back(item);
  }
  std::unique_ptr<distributed::Reducer> reducer;
  if (world > 1) {
    std::vector<torch::Tensor> list;
    for (const auto& [name, p] : params) list.push_back(p);
    reducer = std::make_unique<distributed::Reducer>(comm, list);
  }
  Checkpointer checkpointer(plan_of(o), write_student, comm);

  // Images that calibrate the student: a random pick of the pool, or fresh synthetic batches.
  const auto calibration_images = [&]() {
    torch::Tensor calibration;
    if (data.pool) {
      const torch::Tensor pick =
          torch::randperm(data.pool->size()).narrow(0, 0, std::min(o.calib_count, data.pool->size()));
      calibration = normalize(data.pool->images.index_select(0, pick), data.norm);
    } else {
      torch::NoGradGuard no_grad;
      std::vector<torch::Tensor> parts;
      int64_t have = 0;
      while (have < o.calib_count) {
        parts.push_back(synth->next_batch(nullptr).first);
        have += parts.back().size(0);
      }
      calibration = torch::cat(parts).narrow(0, 0, o.calib_count);
    }
    if (o.clamp_pixels) calibration = torch::max(torch::min(calibration, pixel_hi), pixel_lo);
    return calibration;
  };
  QuantizeResult result;
  int64_t first = 0;
  NamedTensors initial_codes;  // top-precision weight codes at the start, by layer
  if (o.resume) {
    first = restore(plan_of(o), student, *optimizer, params, synth, &initial_codes, rank);
    result.resumed_from = first;
  } else {
    torch::manual_seed(o.seed);
    for (int64_t w = 0; w < o.generator_warmup; ++w) {
      QuantizeStep report;
      report.warmup_step = w + 1;
      report.warmup_steps = o.generator_warmup;
      report.steps = o.steps;
      next_images(&report);
      if (on_step) on_step(report);
    }
    models::init_student(student, teacher, calibration_images(), o.bn_bits, o.bn_mode == "shift", o.quant_init);
    if (world > 1) distributed::broadcast_state(*comm, student);  // rank 0's calibration for every rank
    initial_codes = models::top_weight_codes(student);
  }
  std::shared_ptr<void> clear_adversary;
  if (synth && synth->wants_adversary()) {
    // The generator's adversarial term works against this student at its lowest bit-width (the one furthest
    // from the teacher), from the first student step on (the warm-up ran without it: the student was not
    // calibrated yet). Its parameters are kept out of the generator's graph: the gradient reaches the images.
    TORCH_CHECK(std::find(o.bn_train.begin(), o.bn_train.end(), bits.front()) == o.bn_train.end(),
                "the generator's adversarial term uses the ", bits.front(), "-bit student, whose BatchNorm "
                "statistics --bn-train ", bits.front(), " would update: drop one of the two");
    struct ClearOnExit {  // the callable refers to this call's student
      generators::Synthesizer* synth;
      ~ClearOnExit() { synth->set_adversary(nullptr); }
    };
    clear_adversary = std::make_shared<ClearOnExit>(ClearOnExit{synth});
    synth->set_adversary([&student, lowest = bits.front()](const torch::Tensor& images) {
      std::vector<std::pair<torch::Tensor, bool>> saved;
      for (auto& p : student.parameters()) {
        saved.emplace_back(p, p.requires_grad());
        p.set_requires_grad(false);
      }
      models::set_bits(student, lowest);
      torch::Tensor logits = student.forward(images);
      for (auto& [p, on] : saved) p.set_requires_grad(on);
      return logits;
    });
  }
  // --bn-train: these bit-widths' BatchNorms normalize with batch statistics and update their running ones
  // (momentum 0.1) while training; under mpirun each rank uses its own batch's statistics and the running
  // ones are averaged over the ranks after every step, so the replicas stay identical.
  std::vector<torch::Tensor> bn_running;
  for (const auto& m : student.modules()) {
    auto* n = m->as<quant::SwitchableBatchNorm2dImpl>();
    if (!n) continue;
    for (const int64_t b : o.bn_train) {
      nn::BatchNorm2d norm = n->norm_at(b);
      norm->train(true);
      bn_running.push_back(norm->running_mean);
      bn_running.push_back(norm->running_var);
    }
  }
  struct EvalOnExit {  // no BatchNorm stays in training mode, also when training throws
    torch::nn::Module& module;
    ~EvalOnExit() { module.eval(); }
  } eval_on_exit{student};
  int64_t last_checkpoint = o.resume ? first : -1;
  result.steps_done = first;

  const auto start = std::chrono::steady_clock::now();
  int64_t epoch = -1;
  int64_t done_here = 0;
  for (int64_t step = first; step < o.steps; ++step) {
    QuantizeStep report;
    torch::Tensor images, labels;
    if (loader) {
      const int64_t e = step / loader->num_batches();
      if (e != epoch) loader->set_epoch(epoch = e);
      const Batch batch = loader->batch(step % loader->num_batches());
      images = batch.images;
      labels = batch.labels;
    } else {
      std::tie(images, labels) = next_images(&report);
      TORCH_CHECK(images.size(0) == local_batch, "the synthesizer gave ", images.size(0), " images, expected ",
                  local_batch);
    }
    // Teacher and student see the same images, inside the pixel range a fixed input quantizer covers.
    if (o.clamp_pixels) images = torch::max(torch::min(images, pixel_hi), pixel_lo);
    const double lr = cosine_lr(o.lr, step, o.steps, 0);
    set_lr(*optimizer, lr);
    torch::Tensor teacher_logits, teacher_features;
    {
      torch::NoGradGuard no_grad;
      teacher_features = teacher.features(images);
      teacher_logits = teacher.head(teacher_features);
    }
    const std::vector<int64_t> now = step_bits(bits, o.weighting, o.seed, step);
    std::vector<double> losses(now.size());
    std::vector<torch::Tensor> shared_gradients(now.size());  // each bit-width's gradient on the shared tensors
    optimizer->zero_grad();
    torch::Tensor shared_before = shared.empty() ? torch::Tensor() : flat_gradient(shared);
    torch::Tensor higher;  // logits of the next higher bit-width (recursive distillation)
    for (size_t i = now.size(); i-- > 0;) {
      models::set_bits(student, now[i]);
      const torch::Tensor features = student.features(images);
      const torch::Tensor logits = student.head(features);
      torch::Tensor loss = kd_loss(logits, o.recursive && higher.defined() ? higher : teacher_logits, o.temperature);
      if (ce_weight_of(now[i]) > 0) loss = loss + ce_weight_of(now[i]) * torch::cross_entropy_loss(logits, labels);
      if (o.feature_weight > 0) loss = loss + o.feature_weight * torch::mse_loss(features, teacher_features);
      losses[i] = loss.item<double>();
      // Backward per bit-width: the graphs do not stay alive together; gradients accumulate.
      (loss * weight_of(now[i])).backward();
      if (!shared.empty()) {
        const torch::Tensor shared_now = flat_gradient(shared);
        shared_gradients[i] = shared_now - shared_before;
        shared_before = shared_now;
      }
      higher = logits.detach();
    }
    // Every rank decides on the same (global mean) losses, so a divergence stops all of them together.
    torch::Tensor global = torch::tensor(losses, torch::kFloat64);
    if (world > 1) comm->all_reduce(global, distributed::ReduceOp::kAverage);
    for (size_t i = 0; i < now.size(); ++i) {
      losses[i] = global[static_cast<int64_t>(i)].item<double>();
      TORCH_CHECK(std::isfinite(losses[i]), "training diverged: the ", now[i], "-bit loss is ", losses[i],
                  " at step ", step + 1, "; ",
                  last_checkpoint >= 0 ? "the checkpoint of step " + std::to_string(last_checkpoint) + " is kept"
                                       : std::string("no checkpoint was written"),
                  "; lower --lr");
    }
    if (!shared.empty()) {
      torch::Tensor d = torch::stack(shared_gradients);  // K × S, float64
      if (o.weighting == "normalized" || o.weighting == "min-norm") {
        // Both combine the global per-bit gradients on the shared tensors (the same on every rank); the
        // per-bit tensors keep their own gradients, averaged by the reducer below (which leaves the
        // already global shared ones as they are).
        if (world > 1) comm->all_reduce(d, distributed::ReduceOp::kAverage);
        if (o.weighting == "normalized") {
          // Each rescaled to the mean norm: the lowest bit-width's large loss no longer sets the direction.
          set_flat_gradient(shared, normalized_sum(d));
        } else {
          // MGDA (Sener & Koltun): α from the shared parameters' gradients only, task-specific ones
          // (here: per-bit activation steps and BatchNorm) step on their own gradients.
          const std::vector<double> alpha = min_norm_weights(d.matmul(d.t()));
          const torch::Tensor a = torch::tensor(alpha, torch::kFloat64) * static_cast<double>(now.size());
          set_flat_gradient(shared, a.matmul(d));
          report.alphas = alpha;
        }
      }
      const torch::Tensor norms = d.norm(2, 1);
      report.grad_norms.assign(norms.data_ptr<double>(), norms.data_ptr<double>() + norms.numel());
    }
    if (reducer) reducer->reduce();
    if (o.weight_step_lr != 1) {
      // SGD is linear in the gradient (no weight decay on 1-D tensors): scaling it scales the step's rate.
      torch::NoGradGuard no_grad;
      for (auto& s : weight_steps) {
        if (s.grad().defined()) s.grad().mul_(o.weight_step_lr);
      }
    }
    optimizer->step();
    if (world > 1 && !bn_running.empty()) {
      torch::NoGradGuard no_grad;
      for (auto& t : bn_running) comm->all_reduce(t, distributed::ReduceOp::kAverage);
    }
    ++done_here;

    const bool stop = o.stop_after > 0 && done_here >= o.stop_after;
    const bool last = step + 1 == o.steps;
    if (last && o.bn_reestimate_end) {
      // The weights moved since the start: the bn_bits' statistics again, through the trained network.
      models::calibrate(student, calibration_images(), o.bn_bits, o.bn_mode == "shift" ? &teacher : nullptr,
                        /*activation_steps=*/false);
      if (world > 1) distributed::broadcast_state(*comm, student);
    }
    if (!o.checkpoint.empty() && (last || stop || (o.checkpoint_every > 0 && (step + 1) % o.checkpoint_every == 0))) {
      checkpointer.write(*optimizer, params, synth, initial_codes, step + 1);
      last_checkpoint = step + 1;
      report.checkpointed = true;
    }
    report.step = step + 1;
    report.steps = o.steps;
    report.warmup_steps = o.generator_warmup;
    report.bits = now;
    report.losses = losses;
    report.lr = lr;
    report.elapsed_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report.images_per_second = static_cast<double>(done_here * o.batch_size) / report.elapsed_seconds;
    report.eta_seconds = report.elapsed_seconds / static_cast<double>(done_here) * static_cast<double>(o.steps - step - 1);
    if (on_step) on_step(report);
    result.steps_done = step + 1;
    if (stop) break;
  }
  result.complete = result.steps_done == o.steps;
  if (!initial_codes.empty()) {
    std::map<std::string, torch::Tensor> now;
    for (const auto& [name, t] : models::top_weight_codes(student)) now.emplace(name, t);
    int64_t changed = 0, total = 0;
    for (const auto& [name, start] : initial_codes) {
      const auto it = now.find(name);
      TORCH_CHECK(it != now.end() && it->second.sizes() == start.sizes(), "the start codes of layer '", name,
                  "' do not fit the student");
      changed += it->second.ne(start).sum().item<int64_t>();
      total += start.numel();
    }
    result.changed_codes = total > 0 ? static_cast<double>(changed) / static_cast<double>(total) : 0.0;
  }
  models::set_bits(student, bits.front());
  return result;
}

} // namespace zsq::trainers
