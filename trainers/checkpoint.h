// Checkpoints of zsq quantize: what they hold, writing them atomically and
// restoring a run from one.
#pragma once

#include "distributed/communicator.h"
#include "framework/h5.h"
#include "framework/optim_state.h"
#include "generators/synthesizer.h"
#include "models/zoo.h"

#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

namespace zsq::trainers {

/// Writes the student as a zsq-student file (tensors and attributes, e.g.
/// models::write_student) into a checkpoint, which then adds the training state.
using CheckpointStudent = std::function<void(h5::File&)>;

/// What a run's checkpoints are: where, the schedule they belong to, and a
/// test hook called in the middle of every write with the step.
struct CheckpointPlan {
  std::string path;
  int64_t steps = 0, generator_warmup = 0;
  std::function<void(int64_t)> hook;
};

/// The step and world size a checkpoint was written at (throws when `path` is
/// not a checkpoint).
struct CheckpointInfo {
  int64_t step = 0, steps = 0, world_size = 1;
};
CheckpointInfo read_checkpoint_info(const std::string& path);
/// The datasets of `file` under `group` (e.g. "train/optimizer/"), by name without the group.
std::map<std::string, torch::Tensor> read_group(const h5::File& file, const std::string& group);
CheckpointInfo read_checkpoint_info(const h5::File& file);

/// Writes checkpoints: collective when several ranks (the random states are
/// gathered), rank 0 writes.
class Checkpointer {
 public:
  Checkpointer(CheckpointPlan plan, CheckpointStudent write_student, std::shared_ptr<distributed::Communicator> comm);
  void write(torch::optim::SGD& optimizer, const NamedTensors& params, generators::Synthesizer* synth,
             const NamedTensors& initial_codes, int64_t step);

 private:
  CheckpointPlan o_;
  CheckpointStudent write_student_;
  std::shared_ptr<distributed::Communicator> comm_;
};

/// Restores a checkpoint into the student, its optimizer, the synthesizer (this
/// rank's random stream) and the start codes; returns the step it was written at.
/// Another number of processes may continue it (not bit for bit).
int64_t restore(const CheckpointPlan& plan, models::ClassifierImpl& student, torch::optim::SGD& optimizer,
                const NamedTensors& params, generators::Synthesizer* synth, NamedTensors* initial_codes, int rank);

} // namespace zsq::trainers
