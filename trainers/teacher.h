// FP32 teacher training: SGD with momentum (Nesterov optional), weight decay,
// a per-step cosine schedule after an optional linear warm-up, optional label
// smoothing, random-crop/flip augmentation; evaluates on the test split after
// each epoch and writes the model file atomically at the end.
#pragma once

#include "distributed/communicator.h"
#include "framework/data.h"
#include "framework/nn/losses.h"
#include "models/zoo.h"
#include "trainers/evaluate.h"

#include <torch/optim/sgd.h>

#include <functional>
#include <memory>
#include <string>

namespace zsq::trainers {

struct TeacherOptions {
  models::ModelSpec model;          ///< arch, in_channels, num_classes, width
  int64_t epochs = 30;
  int64_t batch_size = 128;
  double lr = 0.1;                  ///< peak learning rate
  double momentum = 0.9;
  bool nesterov = true;
  double weight_decay = 5e-4;
  double label_smoothing = 0.0;     ///< in [0, 1)
  double warmup_epochs = 0.0;       ///< linear warm-up length (fractional epochs allowed)
  int64_t crop_padding = 2;         ///< random-crop padding in pixels (0: off)
  bool horizontal_flip = true;
  uint64_t seed = 0;
  int64_t train_limit = 0;          ///< use only the first N training images (0: all)
  bool eval_each_epoch = true;
  std::string out;                  ///< model file to write ("" : do not write)
  std::string recipe;               ///< stored in the model file
  /// Data parallel over this communicator's ranks (null: a world of one).
  /// batch_size is the global batch; each rank trains on batch_size / ranks
  /// images of its own shard, gradients are averaged by a Reducer.
  std::shared_ptr<distributed::Communicator> comm;
  /// Debug: after every epoch, check that all ranks hold identical models.
  bool check_replicas = false;
  /// Knowledge distillation: when set, the loss is T²·KL(softmax(t/T) ||
  /// softmax(s/T)) to this (FP32, frozen) model's logits on the same batch,
  /// summed over classes and averaged over the batch ('batchmean'); the
  /// data's labels are not used for the loss.
  models::Classifier distill_from;
  double temperature = 4.0;
  /// mixup (Zhang et al. 2018): each batch is mixed with a permutation of
  /// itself, x' = λx + (1−λ)x[π], λ ~ Beta(α, α) per batch (0: off). With
  /// cross-entropy the loss is λ·CE(y) + (1−λ)·CE(y[π]); with distillation the
  /// teacher labels the mixed images itself ("function matching", Beyer et
  /// al. 2022), which widens a small synthetic pool.
  double mixup = 0.0;
  /// Checkpoint file ("" : none), written atomically by rank 0 after every
  /// `checkpoint_every` epochs (0: never) and removed once `out` is written:
  /// the model's tensors by module path, the SGD momenta under
  /// train/optimizer/, attributes format "zsq-teacher-checkpoint",
  /// train_epoch, train_epochs, train_world_size, train_seconds, train_images.
  std::string checkpoint;
  int64_t checkpoint_every = 1;
  /// Continue from `checkpoint`: bit for bit where an uninterrupted run ends
  /// at the same number of processes (the loader's order and augmentation
  /// depend only on seed, epoch and batch); re-sharded at another.
  bool resume = false;
  /// Test hook, called in the middle of every checkpoint write with the epoch.
  std::function<void(int64_t)> checkpoint_hook;
  /// Throws zsq::OptionError (naming the flag) on a value out of range; what depends on the data
  /// check_teacher_options adds.
  void check() const;
};

/// λ ~ Beta(α, α) and a permutation of n for step `step` of the run: a pure
/// function of (seed, rank, step), so resumed or repeated runs mix alike.
struct MixPlan {
  double lambda = 1;
  torch::Tensor permutation;
};
MixPlan mix_plan(double alpha, int64_t n, uint64_t seed, int rank, int64_t step);

/// Called after every epoch with a one-line summary (rank 0 prints it).
struct EpochReport {
  int64_t epoch = 0, epochs = 0;
  double train_loss = 0, train_acc = 0;
  double test_acc = -1;  ///< -1 when not evaluated this epoch
  double images_per_second = 0, elapsed_seconds = 0, eta_seconds = 0;
  double lr = 0;
};

struct TeacherResult {
  double test_acc = 0;
  double test_loss = 0;
  double seconds = 0;
  double images_per_second = 0;  ///< training throughput
  int64_t parameters = 0;
  int64_t resumed_from = -1;     ///< epochs done in the checkpoint resumed from (-1: fresh)
  models::Classifier model;
};

inline constexpr const char* kTeacherCheckpointFormat = "zsq-teacher-checkpoint";

/// The epoch a train-teacher checkpoint was written after, and its plan
/// (throws when `path` is not one).
struct TeacherCheckpointInfo {
  int64_t epoch = 0, epochs = 0, world_size = 1;
};
TeacherCheckpointInfo read_teacher_checkpoint_info(const std::string& path);

/// Validates the options against the data (throws a clear message).
void check_teacher_options(const TeacherOptions& options, const Dataset& train, const Dataset& test);

TeacherResult train_teacher(const TeacherOptions& options, const Dataset& train, const Dataset& test,
                            const Normalization& norm, const std::function<void(const EpochReport&)>& on_epoch);

/// lr at step `step` of `total`: linear warm-up over `warmup` steps, then
/// cosine from `peak` to 0.
double cosine_lr(double peak, int64_t step, int64_t total, int64_t warmup);

/// SGD over every parameter of `model`, without weight decay on the
/// one-dimensional ones (BatchNorm, biases, quantizer steps).
std::unique_ptr<torch::optim::SGD> make_sgd(const torch::nn::Module& model, double lr, double momentum, bool nesterov,
                                            double weight_decay);
/// Sets the learning rate of every parameter group.
void set_lr(torch::optim::SGD& optimizer, double lr);

/// The distillation loss (framework/nn/losses.h), also used by the generators.
using zsq::nn::kd_loss;

} // namespace zsq::trainers
