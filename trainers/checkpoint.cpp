// Checkpoints of zsq quantize: the student file plus the training state under
// models::kTrainingStateGroup (optimizer momenta, generator and its optimizer,
// every rank's random stream, the start codes), written atomically by rank 0.
#include "trainers/checkpoint.h"

#include "framework/model_file.h"
#include "framework/optim_state.h"
#include "models/extract.h"

#include <map>

namespace zsq::trainers {
namespace {

constexpr const char* kOptimizerGroup = "train/optimizer/";
constexpr const char* kSynthesizerGroup = "train/synthesizer/";
constexpr const char* kRngGroup = "train/rng/";
constexpr const char* kInitialCodesGroup = "train/initial_codes/";

} // namespace

Checkpointer::Checkpointer(CheckpointPlan plan, CheckpointStudent write_student,
                           std::shared_ptr<distributed::Communicator> comm)
    : o_(std::move(plan)), write_student_(std::move(write_student)), comm_(std::move(comm)) {}

void Checkpointer::write(torch::optim::SGD& optimizer, const NamedTensors& params, generators::Synthesizer* synth,
                         const NamedTensors& initial_codes, int64_t step) {
  const int world = comm_ ? comm_->size() : 1;
  torch::Tensor rng;
  if (synth) {
    rng = synth->rng_state().contiguous();
    rng = world > 1 ? comm_->all_gather(rng) : rng.unsqueeze(0);
  }
  if (comm_ && comm_->rank() != 0) return;
  const NamedTensors momenta = optimizer_state(optimizer, params);
  const NamedTensors synth_state = synth ? synth->state() : NamedTensors{};
  h5::atomic_write(o_.path, [&](h5::File& file) {
    write_student_(file);
    for (const auto& [name, t] : momenta) file.write_tensor(kOptimizerGroup + name, t);
    if (o_.hook) o_.hook(step);  // a test kills the process here
    for (const auto& [name, t] : synth_state) file.write_tensor(kSynthesizerGroup + name, t);
    for (const auto& [name, t] : initial_codes) file.write_tensor(kInitialCodesGroup + name, t);
    if (rng.defined()) {
      for (int r = 0; r < world; ++r) file.write_tensor(kRngGroup + ("rank" + std::to_string(r)), rng[r]);
    }
    file.set_attr("train_step", step);
    file.set_attr("train_steps", o_.steps);
    file.set_attr("train_generator_warmup", o_.generator_warmup);
    file.set_attr("train_world_size", static_cast<int64_t>(world));
  });
}

int64_t restore(const CheckpointPlan& o, models::ClassifierImpl& student, torch::optim::SGD& optimizer,
                const NamedTensors& params, generators::Synthesizer* synth, NamedTensors* initial_codes, int rank) {
  const h5::File file = h5::File::open_read(o.path);
  const CheckpointInfo info = read_checkpoint_info(file);
  // Another number of processes than wrote the checkpoint may continue it: the model, optimizer and
  // generator state are the same on every rank, the pool is re-sharded by the loader, and a rank the
  // checkpoint has no random state for keeps its fresh stream (so the run is not bit for bit).
  TORCH_CHECK(info.steps == o.steps, "'", o.path, "' plans ", info.steps, " steps, this run ", o.steps,
              "; a resumed run keeps its schedule");
  TORCH_CHECK(file.attr_int("train_generator_warmup").value_or(0) == o.generator_warmup, "'", o.path,
              "' was made with another --generator-warmup");
  load_state(file, student, {models::kTrainingStateGroup});
  load_optimizer_state(optimizer, params, read_group(file, kOptimizerGroup));
  const auto synth_state = read_group(file, kSynthesizerGroup);
  const auto rng = read_group(file, kRngGroup);
  initial_codes->clear();
  for (const auto& [name, t] : read_group(file, kInitialCodesGroup)) initial_codes->emplace_back(name, t);
  if (synth) {
    synth->load_state(synth_state);
    TORCH_CHECK(!rng.empty(), "'", o.path, "' has no random states (it was made from a pool, not with online "
                "generation)");
    const auto it = rng.find("rank" + std::to_string(rank));
    TORCH_CHECK(it != rng.end() || rank >= info.world_size, "'", o.path, "' has no random state for rank ", rank);
    if (it != rng.end()) synth->set_rng_state(it->second);
  } else {
    TORCH_CHECK(synth_state.empty() && rng.empty(), "'", o.path,
                "' was made with online generation; resume it with the same --recipe, not a --pool");
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
