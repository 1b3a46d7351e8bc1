// Checkpoints of zsq quantize: the student file plus the training state under
// models::kTrainingStateGroup (optimizer momenta, generator and its optimizer,
// every rank's random stream, the start codes), written atomically by rank 0.
#include "trainers/checkpoint.h"

#include "framework/model_file.h"
#include "framework/optim_state.h"
#include "models/extract.h"

#include <algorithm>
#include <map>

namespace zsq::trainers {

void write_part(h5::File& file, const std::string& group, Stateful& part) {
  for (const auto& [name, t] : part.state()) file.write_tensor(group + name, t);
}

void load_part(const h5::File& file, const std::string& group, Stateful& part) {
  part.load_state(read_group(file, group));
}

NamedTensors RankStreams::state() {
  const int world = comm_ ? comm_->size() : 1;
  const torch::Tensor mine = synth_.rng_state().contiguous();
  const torch::Tensor all = world > 1 ? comm_->all_gather(mine) : mine.unsqueeze(0);
  NamedTensors out;
  for (int r = 0; r < world; ++r) out.emplace_back("rank" + std::to_string(r), all[r]);
  return out;
}

void RankStreams::load_state(const TensorMap& state) {
  TORCH_CHECK(!state.empty(), "the checkpoint has no random states (it was made from a pool, not with online "
              "generation)");
  const int rank = comm_ ? comm_->rank() : 0;
  const auto it = state.find("rank" + std::to_string(rank));
  TORCH_CHECK(it != state.end() || rank >= static_cast<int>(state.size()), "the checkpoint has no random state for "
              "rank ", rank);
  if (it != state.end()) synth_.set_rng_state(it->second);
}

RunState::RunState(torch::optim::Optimizer& optimizer, const NamedTensors& params, NamedTensors* initial_codes,
                   generators::Synthesizer* synth, distributed::Communicator* comm)
    : optimizer_(optimizer, params), codes_(initial_codes) {
  parts_ = {{kOptimizerGroup, &optimizer_}, {kInitialCodesGroup, &codes_}};
  if (synth) {
    streams_ = std::make_unique<RankStreams>(*synth, comm);
    parts_.push_back({kSynthesizerGroup, synth});
    parts_.push_back({kRngGroup, streams_.get()});
  }
}

Checkpointer::Checkpointer(CheckpointPlan plan, CheckpointStudent write_student,
                           std::shared_ptr<distributed::Communicator> comm)
    : o_(std::move(plan)), write_student_(std::move(write_student)), comm_(std::move(comm)) {}

void Checkpointer::write(const std::vector<CheckpointPart>& parts, int64_t step) {
  // Every rank takes every state (RankStreams gathers); rank 0 writes them.
  std::vector<NamedTensors> states;
  for (const CheckpointPart& p : parts) states.push_back(p.part->state());
  if (comm_ && comm_->rank() != 0) return;
  h5::atomic_write(o_.path, [&](h5::File& file) {
    write_student_(file);
    if (o_.hook) o_.hook(step);  // a test kills the process here, half-way
    for (size_t i = 0; i < parts.size(); ++i) {
      for (const auto& [name, t] : states[i]) file.write_tensor(parts[i].group + name, t);
    }
    file.set_attr("train_step", step);
    file.set_attr("train_steps", o_.steps);
    file.set_attr("train_generator_warmup", o_.generator_warmup);
    file.set_attr("train_world_size", static_cast<int64_t>(comm_ ? comm_->size() : 1));
  });
}

int64_t restore(const CheckpointPlan& o, models::ClassifierImpl& student, const std::vector<CheckpointPart>& parts) {
  const h5::File file = h5::File::open_read(o.path);
  const CheckpointInfo info = read_checkpoint_info(file);
  // Another number of processes than wrote the checkpoint may continue it: the model, optimizer and
  // generator state are the same on every rank, the pool is re-sharded by the loader, and a rank the
  // checkpoint has no random state for keeps its fresh stream (so the run is not bit for bit).
  TORCH_CHECK(info.steps == o.steps, "'", o.path, "' plans ", info.steps, " steps, this run ", o.steps,
              "; a resumed run keeps its schedule");
  TORCH_CHECK(file.attr_int("train_generator_warmup").value_or(0) == o.generator_warmup, "'", o.path,
              "' was made with another --generator-warmup");
  const std::string state_group = models::kTrainingStateGroup;
  for (const std::string& name : file.dataset_names()) {
    if (name.rfind(state_group, 0) != 0) continue;
    const bool known = std::any_of(parts.begin(), parts.end(),
                                   [&](const CheckpointPart& p) { return name.rfind(p.group, 0) == 0; });
    TORCH_CHECK(known, "'", o.path, "' holds training state this run has none of ('", name, "'): ",
                name.rfind(kSynthesizerGroup, 0) == 0 || name.rfind(kRngGroup, 0) == 0
                    ? "it was made with online generation; resume it with the same --recipe, not a --pool"
                    : "it was made by another version or recipe");
  }
  load_state(file, student, {state_group});
  for (const CheckpointPart& p : parts) {
    try {
      load_part(file, p.group, *p.part);
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "'", o.path, "': ", e.what_without_backtrace());
    }
  }
  return info.step;
}

std::map<std::string, torch::Tensor> read_group(const h5::File& file, const std::string& group) {
  std::map<std::string, torch::Tensor> out;
  for (const std::string& name : file.dataset_names()) {
    if (name.rfind(group, 0) == 0) out.emplace(name.substr(group.size()), file.read_tensor(name));
  }
  return out;
}

CheckpointInfo read_checkpoint_info(const std::string& path) { return read_checkpoint_info(h5::File::open_read(path)); }

CheckpointInfo read_checkpoint_info(const h5::File& file) {
  const std::string& path = file.path();
  TORCH_CHECK(file.attr_string("format").value_or("") == models::kStudentFormat && file.has_attr("train_step"),
              "'", path, "' is not a checkpoint of zsq quantize (no training state)");
  CheckpointInfo info;
  info.step = file.attr_int("train_step").value_or(0);
  info.steps = file.attr_int("train_steps").value_or(0);
  info.world_size = file.attr_int("train_world_size").value_or(1);
  TORCH_CHECK(info.step >= 0 && info.step <= info.steps && info.world_size >= 1, "'", path,
              "' has an inconsistent training state (step ", info.step, " of ", info.steps, ")");
  return info;
}

} // namespace zsq::trainers
