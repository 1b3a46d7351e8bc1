#include "distributed/sync.h"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/torch.h>

#include <sstream>

namespace zsq::distributed {
namespace {

std::vector<std::pair<std::string, torch::Tensor>> state_in_name_order(const torch::nn::Module& module,
                                                                       bool buffers_only) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  if (!buffers_only) {
    for (const auto& p : module.named_parameters()) out.emplace_back(p.key(), p.value());
  }
  for (const auto& b : module.named_buffers()) out.emplace_back(b.key(), b.value());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

// FNV-1a over the tensor's bytes.
int64_t hash_bytes(const torch::Tensor& t) {
  const torch::Tensor c = t.detach().contiguous();
  const auto* bytes = static_cast<const uint8_t*>(c.data_ptr());
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < c.nbytes(); ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  return static_cast<int64_t>(h);
}

// Sum over ranks forward; identity backward (each rank's gradient is that of
// the replicated loss with respect to its own contribution).
class AllReduceSum : public torch::autograd::Function<AllReduceSum> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& x, Communicator* comm) {
    torch::Tensor out = x.detach().clone().contiguous();
    comm->all_reduce(out, ReduceOp::kSum);
    return out;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext*,
                                               torch::autograd::tensor_list grads) {
    return {grads[0], torch::Tensor()};
  }
};

} // namespace

void broadcast_state(Communicator& comm, const torch::nn::Module& module, int root, bool buffers_only) {
  if (comm.size() == 1) return;
  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : state_in_name_order(module, buffers_only)) {
    if (tensor.is_contiguous() && tensor.scalar_type() != torch::kBool) {
      comm.broadcast(tensor, root);
    } else {  // bool flags travel as uint8
      torch::Tensor copy = tensor.scalar_type() == torch::kBool ? tensor.to(torch::kUInt8) : tensor.contiguous();
      comm.broadcast(copy, root);
      tensor.copy_(copy);
    }
  }
}

void check_replicas(Communicator& comm, const torch::nn::Module& module) {
  const auto state = state_in_name_order(module, false);
  torch::Tensor hashes = torch::empty({static_cast<int64_t>(state.size())}, torch::kInt64);
  for (size_t i = 0; i < state.size(); ++i) hashes[i] = hash_bytes(state[i].second);
  const torch::Tensor all = comm.all_gather(hashes);
  std::ostringstream problems;
  int count = 0;
  for (int r = 1; r < comm.size(); ++r) {
    for (size_t i = 0; i < state.size(); ++i) {
      if (all[r][i].item<int64_t>() != all[0][i].item<int64_t>()) {
        if (count++ < 8) problems << "\n  rank " << r << ": '" << state[i].first << "'";
      }
    }
  }
  TORCH_CHECK(count == 0, "the ranks hold different models (", count, " tensors differ from rank 0's):",
              problems.str());
}

Moments global_moments(Communicator& comm, const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 || x.dim() == 2, "global_moments expects N×C×H×W or N×C, got ", x.sizes());
  const std::vector<int64_t> dims = x.dim() == 4 ? std::vector<int64_t>{0, 2, 3} : std::vector<int64_t>{0};
  const torch::Tensor x64 = x.to(torch::kFloat64);
  const torch::Tensor local = torch::stack({x64.sum(dims), (x64 * x64).sum(dims)});
  torch::Tensor count = torch::tensor({x.numel() / x.size(1)}, torch::kInt64);
  comm.all_reduce(count, ReduceOp::kSum);
  const torch::Tensor sums = AllReduceSum::apply(local, &comm);
  Moments m;
  m.count = count.item<int64_t>();
  TORCH_CHECK(m.count > 0, "global_moments: no values on any rank");
  const torch::Tensor mean = sums[0] / static_cast<double>(m.count);
  m.mean = mean.to(torch::kFloat32);
  m.var = (sums[1] / static_cast<double>(m.count) - mean * mean).clamp_min(0).to(torch::kFloat32);
  return m;
}

} // namespace zsq::distributed
