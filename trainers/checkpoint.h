// Checkpoints of zsq quantize: what they hold, writing them atomically and
// restoring a run from one.
#pragma once

#include "distributed/communicator.h"
#include "framework/h5.h"
#include "framework/optim_state.h"
#include "framework/state.h"
#include "generators/synthesizer.h"
#include "models/zoo.h"

#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

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

/// One stateful part of a run and the group of the checkpoint that holds it (e.g. "train/optimizer/").
struct CheckpointPart {
  std::string group;
  Stateful* part;
};
/// The groups of zsq quantize's checkpoints.
inline constexpr const char* kOptimizerGroup = "train/optimizer/";
inline constexpr const char* kSynthesizerGroup = "train/synthesizer/";
inline constexpr const char* kRngGroup = "train/rng/";
inline constexpr const char* kInitialCodesGroup = "train/initial_codes/";

/// Writes `part`'s state under `group` of `file`.
void write_part(h5::File& file, const std::string& group, Stateful& part);
/// Restores `part` from `group` of `file` (an absent group is an empty state).
void load_part(const h5::File& file, const std::string& group, Stateful& part);

/// Every rank's random stream of a synthesizer, as "rank<r>": state() gathers
/// them (a collective: every rank calls it), load_state() takes this rank's. A
/// rank the checkpoint has no stream for (more processes than wrote it) keeps
/// its fresh one.
class RankStreams final : public Stateful {
 public:
  RankStreams(generators::Synthesizer& synth, distributed::Communicator* comm) : synth_(synth), comm_(comm) {}
  NamedTensors state() override;
  void load_state(const TensorMap& state) override;

 private:
  generators::Synthesizer& synth_;
  distributed::Communicator* comm_;
};

/// What zsq quantize's checkpoints hold besides the student: the optimizer's
/// momenta, the weight codes it started from, and with online generation the
/// synthesizer's state and every rank's random stream.
class RunState {
 public:
  RunState(torch::optim::Optimizer& optimizer, const NamedTensors& params, NamedTensors* initial_codes,
           generators::Synthesizer* synth, distributed::Communicator* comm);
  RunState(const RunState&) = delete;  // parts_ points into this object
  RunState& operator=(const RunState&) = delete;
  const std::vector<CheckpointPart>& parts() const { return parts_; }

 private:
  OptimizerState optimizer_;
  HeldTensors codes_;
  std::unique_ptr<RankStreams> streams_;
  std::vector<CheckpointPart> parts_;
};

/// Writes checkpoints: the student, then every part's state under its group.
/// Collective when several ranks (RankStreams gathers); rank 0 writes.
class Checkpointer {
 public:
  Checkpointer(CheckpointPlan plan, CheckpointStudent write_student, std::shared_ptr<distributed::Communicator> comm);
  void write(const std::vector<CheckpointPart>& parts, int64_t step);

 private:
  CheckpointPlan o_;
  CheckpointStudent write_student_;
  std::shared_ptr<distributed::Communicator> comm_;
};

/// Restores a checkpoint into the student and every part; returns the step it
/// was written at. Training state this run has no part for (e.g. a generator's,
/// resumed from a pool) is refused. Another number of processes may continue
/// it (not bit for bit).
int64_t restore(const CheckpointPlan& plan, models::ClassifierImpl& student, const std::vector<CheckpointPart>& parts);

} // namespace zsq::trainers
