#include "framework/state.h"

#include "framework/model_file.h"  // named_state


namespace zsq {

NamedTensors ModuleState::state() { return named_state(module_); }

void ModuleState::load_state(const TensorMap& state) {
  const NamedTensors mine = named_state(module_);
  for (const auto& [name, t] : mine) {
    const auto it = state.find(name);
    TORCH_CHECK(it != state.end(), "the checkpoint has no ", what_, " tensor '", name, "'");
    TORCH_CHECK(it->second.sizes() == t.sizes(), "the checkpoint's ", what_, " tensor '", name, "' has shape ",
                it->second.sizes(), ", the ", what_, " ", t.sizes());
  }
  TORCH_CHECK(state.size() == mine.size(), "the checkpoint's ", what_, " has ", state.size(), " tensors, this ",
              what_, " ", mine.size());
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : mine) t.copy_(state.at(name));
}

NamedTensors with_prefix(const std::string& prefix, const NamedTensors& parts) {
  NamedTensors out;
  out.reserve(parts.size());
  for (const auto& [name, t] : parts) out.emplace_back(prefix + name, t);
  return out;
}

TensorMap under_prefix(const TensorMap& state, const std::string& prefix) {
  TensorMap out;
  for (auto it = state.lower_bound(prefix); it != state.end() && it->first.rfind(prefix, 0) == 0; ++it) {
    out.emplace(it->first.substr(prefix.size()), it->second);
  }
  return out;
}

} // namespace zsq
