#include "framework/optim_state.h"
#include "framework/torch_compat.h"

#include <set>

namespace zsq {
namespace {

void check_member(torch::optim::Optimizer& optimizer, const NamedTensors& params) {
  std::set<torch::TensorImpl*> owned;
  for (const auto& group : optimizer.param_groups()) {
    for (const auto& p : group.params()) owned.insert(p.unsafeGetTensorImpl());
  }
  for (const auto& [name, p] : params) {
    TORCH_CHECK(owned.count(p.unsafeGetTensorImpl()), "optimizer state: '", name, "' is not one of its parameters");
  }
}

} // namespace

NamedTensors optimizer_state(torch::optim::Optimizer& optimizer, const NamedTensors& params) {
  check_member(optimizer, params);
  NamedTensors out;
  auto& state = optimizer.state();
  for (const auto& [name, p] : params) {
    const auto it = state.find(compat::optimizer_state_key(state, p));
    if (it == state.end()) continue;
    if (const auto* sgd = dynamic_cast<const torch::optim::SGDParamState*>(it->second.get())) {
      if (sgd->momentum_buffer().defined()) out.emplace_back(name + ".momentum_buffer", sgd->momentum_buffer());
    } else if (const auto* adam = dynamic_cast<const torch::optim::AdamParamState*>(it->second.get())) {
      out.emplace_back(name + ".step", torch::tensor(adam->step(), torch::kInt64));
      out.emplace_back(name + ".exp_avg", adam->exp_avg());
      out.emplace_back(name + ".exp_avg_sq", adam->exp_avg_sq());
      if (adam->max_exp_avg_sq().defined()) out.emplace_back(name + ".max_exp_avg_sq", adam->max_exp_avg_sq());
    } else {
      TORCH_CHECK(false, "optimizer state: only SGD and Adam are supported");
    }
  }
  return out;
}

void load_optimizer_state(torch::optim::Optimizer& optimizer, const NamedTensors& params,
                          const std::map<std::string, torch::Tensor>& state) {
  check_member(optimizer, params);
  const bool is_sgd = dynamic_cast<torch::optim::SGD*>(&optimizer) != nullptr;
  const bool is_adam = dynamic_cast<torch::optim::Adam*>(&optimizer) != nullptr;
  TORCH_CHECK(is_sgd || is_adam, "optimizer state: only SGD and Adam are supported");
  const auto get = [&](const std::string& name, const torch::Tensor& like) -> torch::Tensor {
    const auto it = state.find(name);
    if (it == state.end()) return {};
    TORCH_CHECK(it->second.sizes() == like.sizes(), "optimizer state '", name, "' has shape ", it->second.sizes(),
                ", the parameter has ", like.sizes());
    return it->second.to(like.scalar_type()).clone();
  };
  std::set<std::string> used;
  auto& target = optimizer.state();
  target.clear();
  for (const auto& [name, p] : params) {
    if (is_sgd) {
      torch::Tensor m = get(name + ".momentum_buffer", p);
      if (!m.defined()) continue;
      auto s = std::make_unique<torch::optim::SGDParamState>();
      s->momentum_buffer(m);
      target[compat::optimizer_state_key(target, p)] = std::move(s);
      used.insert(name + ".momentum_buffer");
    } else {
      const auto step = state.find(name + ".step");
      if (step == state.end()) continue;
      auto s = std::make_unique<torch::optim::AdamParamState>();
      s->step(step->second.to(torch::kInt64).item<int64_t>());
      const torch::Tensor m = get(name + ".exp_avg", p), v = get(name + ".exp_avg_sq", p);
      TORCH_CHECK(m.defined() && v.defined(), "optimizer state of '", name, "' is incomplete");
      s->exp_avg(m);
      s->exp_avg_sq(v);
      const torch::Tensor vmax = get(name + ".max_exp_avg_sq", p);
      if (vmax.defined()) s->max_exp_avg_sq(vmax);
      target[compat::optimizer_state_key(target, p)] = std::move(s);
      for (const char* f : {".step", ".exp_avg", ".exp_avg_sq", ".max_exp_avg_sq"}) used.insert(name + f);
    }
  }
  for (const auto& [name, tensor] : state) {
    TORCH_CHECK(used.count(name), "optimizer state '", name, "' names no parameter of the optimizer");
  }
}

} // namespace zsq
